"""Malformed requests over a raw socket: the exact error replies memcached 1.6 sends, and that
the connection goes on working after each of them."""

from __future__ import annotations

import pytest


def test_unknown_command_is_error(raw):
    raw.request(b"bogus\r\n", b"ERROR\r\n")
    raw.request(b"bogus with args\r\n", b"ERROR\r\n")
    raw.request(b"GET upper-case\r\n", b"ERROR\r\n", "commands are case-sensitive")
    raw.sync()


def test_empty_line_is_error(raw):
    raw.request(b"\r\n", b"ERROR\r\n")
    raw.sync()


def test_get_without_key_is_error(raw):
    raw.request(b"get\r\n", b"ERROR\r\n")
    raw.sync()


def test_get_key_of_251_bytes_is_client_error(raw):
    raw.send(b"get " + b"k" * 251 + b"\r\n")
    line = raw.read_line()
    assert line.startswith(b"CLIENT_ERROR"), f"251-byte key: {line!r}"
    assert line == b"CLIENT_ERROR bad command line format\r\n"
    raw.sync()


def test_set_key_of_251_bytes_is_client_error(raw):
    # memcached rejects the line and does not swallow the data block: "x" then reads as a
    # command of its own, hence the ERROR.
    raw.send(b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n")
    line = raw.read_line()
    assert line.startswith(b"CLIENT_ERROR"), f"251-byte key: {line!r}"
    assert line == b"CLIENT_ERROR bad command line format\r\n"
    raw.expect(b"ERROR\r\n", "the data line 'x' of the rejected set read as a command")
    raw.sync()


@pytest.mark.parametrize("byte", [0x01, 0x09, 0x0B, 0x0C, 0x10, 0x1F, 0x7F, 0x80, 0xFF], ids=hex)
def test_keys_may_hold_control_and_high_bytes(raw, key, byte):
    # protocol.txt asks clients not to, but memcached takes any key byte except space, NUL and
    # the line end, and memcaslap's keys start with 8 raw bytes (e.g. 7f 10 10 10 10 10 10 10).
    k = bytes([byte]) + key.b() + bytes([byte])
    raw.request(b"set " + k + b" 0 0 1\r\nx\r\n", b"STORED\r\n", f"key with byte {byte:#04x}")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 1\r\nx\r\nEND\r\n")
    raw.request(b"delete " + k + b"\r\n", b"DELETED\r\n")


def test_key_of_250_bytes_is_accepted(raw):
    k = b"r" * 250
    raw.request(b"set " + k + b" 0 0 2\r\nok\r\n", b"STORED\r\n")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 2\r\nok\r\nEND\r\n")


def test_bad_data_chunk(raw, key):
    k = key.b()
    # 3 bytes where 2 were declared: the server reads 2 + 2 bytes ("abc\r"), finds no \r\n at
    # the end, answers CLIENT_ERROR bad data chunk, and the leftover "\n" is an empty command
    # line, which is an ERROR.
    raw.send(b"set " + k + b" 0 0 2\r\nabc\r\n")
    raw.expect(b"CLIENT_ERROR bad data chunk\r\n")
    raw.expect(b"ERROR\r\n", "the leftover \\n after the bad chunk")
    raw.request(b"get " + k + b"\r\n", b"END\r\n", "nothing was stored")
    # A chunk exactly as long as declared but not ending in \r\n leaves nothing behind.
    raw.request(b"set " + k + b" 0 0 2\r\nabcd", b"CLIENT_ERROR bad data chunk\r\n")
    raw.sync()


def test_bad_data_chunk_noreply_is_silent(raw, key):
    # memcached 1.6.18 keeps noreply even for this error (only a meta set always reports it).
    raw.send(b"set " + key.b() + b" 0 0 2 noreply\r\nabcd")
    raw.sync()
    raw.request(b"get " + key.b() + b"\r\n", b"END\r\n", "nothing was stored")


def test_value_over_the_item_limit_is_swallowed(server, raw, key):
    k = key.b()
    n = server.too_large
    raw.send(b"set " + k + b" 0 0 %d\r\n" % n + b"z" * n + b"\r\n")
    raw.expect(b"SERVER_ERROR object too large for cache\r\n", f"a {n}-byte value")
    # The data block was swallowed, not parsed as commands: the next reply is the next command's.
    raw.request(b"get " + k + b"\r\n", b"END\r\n", "nothing was stored")
    raw.request(b"set " + k + b" 0 0 2\r\nok\r\n", b"STORED\r\n")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 2\r\nok\r\nEND\r\n")


def test_refused_oversized_set_deletes_the_old_item(server, raw, key):
    k = key.b()
    raw.request(b"set " + k + b" 0 0 3\r\nold\r\n", b"STORED\r\n")
    n = server.too_large
    raw.send(b"set " + k + b" 0 0 %d\r\n" % n + b"z" * n + b"\r\n")
    raw.expect(b"SERVER_ERROR object too large for cache\r\n")
    # memcached also unlinks the old item when a set of it is refused as too large.
    raw.request(b"get " + k + b"\r\n", b"END\r\n", "a refused oversized set deletes the old item")


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"set k 0 0 abc\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set k 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set k 0 0 99999999999999999999\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set k 0 0\r\n", b"ERROR\r\n"),
        (b"cas k 0 0 1\r\n", b"ERROR\r\n"),
        (b"incr\r\n", b"ERROR\r\n"),
        (b"incr k abc\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
        (b"incr k -1\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
        (b"delete k 5\r\n", b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"),
        (b"flush_all abc\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
        (b"verbosity\r\n", b"ERROR\r\n"),
    ],
    ids=lambda v: v.decode().strip() if isinstance(v, bytes) else v,
)
def test_malformed_command_lines(raw, line, reply):
    raw.request(line, reply)
    raw.sync()


@pytest.mark.parametrize(
    "line",
    [
        b"verbosity foo bar my\r\n",
        b"stats noreply\r\n",
        b"delete\r\n",
        b"delete a b c d e\r\n",
        b"gets\r\n",
        b"touch k\r\n",
        b"incr k 1 2 3\r\n",
        b"flush_all 0 noreply extra\r\n",
    ],
    ids=lambda v: v.decode().strip(),
)
def test_wrong_number_of_tokens_is_error(raw, line):
    # memcached matches a command by name and token count; no match is a plain ERROR.
    # (memccapable sends several of these and accepts any ERROR/CLIENT_ERROR/SERVER_ERROR.)
    raw.request(line, b"ERROR\r\n")
    raw.sync()


def test_version_and_verbosity_with_extra_tokens(server, raw):
    # memcached 1.6 ignores tokens after "version", and "verbosity noreply" is silent.
    # memccapable (libmemcached 1.1.4) expects that only from a server whose version string
    # starts "1.6" or later; from any other it expects errors for "version foo bar",
    # "version noreply", "quit foo bar" and "quit noreply". percore reports its own version,
    # so it answers ERROR there (docs/memcached.md).
    for line in (b"version foo bar\r\n", b"version noreply\r\n"):
        raw.send(line)
        reply = raw.read_line()
        if server.mode == "memcached":
            assert reply.startswith(b"VERSION "), f"{line!r} answered {reply!r}"
        else:
            assert reply == b"ERROR\r\n", f"{line!r} answered {reply!r}"
    raw.send(b"verbosity noreply\r\n")
    raw.sync()


@pytest.mark.parametrize(
    "line",
    [b"set k abc 0 1\r\n", b"set k -1 0 1\r\n", b"add k 0 x 1\r\n"],
    ids=lambda v: v.decode().strip(),
)
def test_malformed_storage_line_with_a_readable_length(raw, line):
    # memcached does not skip the data block of a rejected storage line: "x" reads as a command.
    raw.send(line + b"x\r\n")
    raw.expect(b"CLIENT_ERROR bad command line format\r\n")
    raw.expect(b"ERROR\r\n", "the data line 'x' read as a command")
    raw.sync()


def test_incr_on_non_numeric_raw(raw, key):
    k = key.b()
    raw.request(b"set " + k + b" 0 0 3\r\nabc\r\n", b"STORED\r\n")
    raw.request(b"incr " + k + b" 1\r\n",
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
    raw.request(b"incr " + key.b("missing") + b" 1\r\n", b"NOT_FOUND\r\n")
    raw.sync()


def test_classic_replies_raw(raw, key):
    """The exact reply strings of the classic commands."""
    k, m = key.b("k"), key.b("missing")
    raw.request(b"set " + k + b" 7 0 1\r\n1\r\n", b"STORED\r\n")
    raw.request(b"add " + k + b" 0 0 1\r\n2\r\n", b"NOT_STORED\r\n")
    raw.request(b"replace " + m + b" 0 0 1\r\n2\r\n", b"NOT_STORED\r\n")
    raw.request(b"append " + m + b" 0 0 1\r\n2\r\n", b"NOT_STORED\r\n")
    raw.request(b"prepend " + m + b" 0 0 1\r\n2\r\n", b"NOT_STORED\r\n")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 7 1\r\n1\r\nEND\r\n")
    raw.request(b"incr " + k + b" 41\r\n", b"42\r\n")
    raw.request(b"decr " + k + b" 2\r\n", b"40\r\n")
    raw.request(b"touch " + k + b" 100\r\n", b"TOUCHED\r\n")
    raw.request(b"touch " + m + b" 100\r\n", b"NOT_FOUND\r\n")
    raw.request(b"cas " + m + b" 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n")
    raw.send(b"gets " + k + b"\r\n")
    line = raw.read_line()
    parts = line.split()
    assert parts[:4] == [b"VALUE", k, b"7", b"2"] and len(parts) == 5, f"gets: {line!r}"
    token = parts[4]
    raw.expect(b"40\r\nEND\r\n")
    raw.request(b"cas " + k + b" 0 0 1 " + token + b"\r\nx\r\n", b"STORED\r\n")
    raw.request(b"cas " + k + b" 0 0 1 " + token + b"\r\ny\r\n", b"EXISTS\r\n")
    raw.request(b"delete " + k + b"\r\n", b"DELETED\r\n")
    raw.request(b"delete " + k + b"\r\n", b"NOT_FOUND\r\n")
    raw.request(b"delete " + k + b" 0\r\n", b"NOT_FOUND\r\n", "the legacy time argument 0 is allowed")
    raw.send(b"version\r\n")
    line = raw.read_line()
    assert line.startswith(b"VERSION ") and len(line.split()) == 2, f"version: {line!r}"
    raw.request(b"verbosity 1\r\n", b"OK\r\n")
    raw.request(b"verbosity 0 noreply\r\n", b"", "verbosity noreply")
    raw.sync()


def test_gat_and_gats(raw, key):
    k, m = key.b("k"), key.b("missing")
    raw.request(b"set " + k + b" 3 0 2\r\nhi\r\n", b"STORED\r\n")
    raw.request(b"gat 100 " + k + b" " + m + b"\r\n", b"VALUE " + k + b" 3 2\r\nhi\r\nEND\r\n")
    raw.send(b"gats 100 " + k + b"\r\n")
    line = raw.read_line()
    assert line.startswith(b"VALUE " + k + b" 3 2 ") and len(line.split()) == 5, f"gats: {line!r}"
    raw.expect(b"hi\r\nEND\r\n")


def test_quit_closes_the_connection(server):
    with server.raw() as conn:
        conn.send(b"quit\r\n")
        conn.sock.settimeout(5)
        assert conn.sock.recv(100) == b"", "quit closes the connection without a reply"


def test_connection_survives_a_run_of_errors(raw, key):
    k = key.b()
    raw.request(b"bogus\r\n", b"ERROR\r\n")
    raw.request(b"get " + b"x" * 300 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n")
    raw.request(b"set " + k + b" 0 0 1\r\nxyz", b"CLIENT_ERROR bad data chunk\r\n")
    raw.request(b"incr " + k + b" z\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n")
    raw.request(b"set " + k + b" 0 0 1\r\nv\r\n", b"STORED\r\n")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 1\r\nv\r\nEND\r\n")
