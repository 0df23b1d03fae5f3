"""Meta commands (mn, ms, mg, md, ma, me) over a raw socket, as memcached 1.6.18 answers them
(protocol.txt, "Meta ..." sections). Reply flags come back in the order they were asked for."""

from __future__ import annotations

import base64
import re


def test_mn(raw):
    raw.request(b"mn\r\n", b"MN\r\n")


def test_ms_then_mg_with_return_flags(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 2 T0 F5\r\nhi\r\n", b"HD\r\n")
    raw.send(b"mg " + k + b" v f t c k s\r\n")
    line = raw.read_line()
    m = re.fullmatch(rb"VA 2 f5 t-1 c(\d+) k" + re.escape(k) + rb" s2\r\n", line)
    assert m, f"mg v f t c k s: {line!r}"
    assert int(m.group(1)) > 0
    raw.expect(b"hi\r\n", "the value block")
    raw.request(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")
    raw.request(b"mg " + k + b"\r\n", b"HD\r\n", "mg without v is a hit without a value")
    raw.request(b"mg " + k + b" s f\r\n", b"HD s2 f5\r\n", "flags in the order asked")


def test_ms_value_is_seen_by_classic_get(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 5 F9\r\na\r\nb\x00\r\n", b"HD\r\n")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 9 5\r\na\r\nb\x00\r\nEND\r\n")


def test_ms_cas_matches_gets(raw, key):
    k = key.b()
    raw.send(b"ms " + k + b" 1 c\r\nx\r\n")
    line = raw.read_line()
    m = re.fullmatch(rb"HD c(\d+)\r\n", line)
    assert m, f"ms with c: {line!r}"
    raw.send(b"gets " + k + b"\r\n")
    assert raw.read_line() == b"VALUE " + k + b" 0 1 " + m.group(1) + b"\r\n"
    raw.expect(b"x\r\nEND\r\n")
    raw.request(b"ms " + k + b" 1 C" + m.group(1) + b"\r\ny\r\n", b"HD\r\n", "ms with the right C")
    raw.request(b"ms " + k + b" 1 C" + m.group(1) + b"\r\nz\r\n", b"EX\r\n", "ms with a stale C")
    raw.request(b"mg " + k + b" v\r\n", b"VA 1\r\ny\r\n")


def test_mg_miss(raw, key):
    raw.request(b"mg " + key.b("missing") + b" v\r\n", b"EN\r\n")
    raw.request(b"mg " + key.b("missing") + b"\r\n", b"EN\r\n")


def test_mg_miss_echoes_opaque_and_key(raw, key):
    # memcached 1.6.18 returns O and k on a miss too, though protocol.txt shows a bare EN.
    m = key.b("missing")
    raw.request(b"mg " + m + b" O5 k v\r\n", b"EN O5 k" + m + b"\r\n")


def test_quiet_mode(raw, key):
    k, m = key.b("k"), key.b("missing")
    raw.request(b"mg " + m + b" v q\r\nmn\r\n", b"MN\r\n", "q hides EN")
    raw.request(b"ms " + k + b" 2 q\r\nhi\r\nmn\r\n", b"MN\r\n", "q hides ms's HD")
    raw.request(b"mg " + k + b" v q\r\nmn\r\n", b"VA 2\r\nhi\r\nMN\r\n", "q does not hide a hit")
    raw.request(b"md " + k + b" q\r\nmn\r\n", b"MN\r\n", "q hides md's HD")
    raw.request(b"md " + k + b" q\r\nmn\r\n", b"NF\r\nMN\r\n", "q does not hide md's NF")
    raw.request(b"mg " + k + b" v q\r\nmn\r\n", b"MN\r\n", "the quiet md deleted the key")


def test_md(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 1\r\nx\r\n", b"HD\r\n")
    raw.request(b"md " + k + b"\r\n", b"HD\r\n")
    raw.request(b"md " + k + b"\r\n", b"NF\r\n")
    raw.request(b"mg " + k + b" v\r\n", b"EN\r\n")
    raw.request(b"md " + k + b" O7 k\r\n", b"NF O7 k" + k + b"\r\n")


def test_ms_modes(raw, key):
    k, m = key.b("k"), key.b("missing")
    raw.request(b"ms " + k + b" 2 MA\r\nhi\r\n", b"NS\r\n", "append mode on a missing key")
    raw.request(b"ms " + k + b" 2 MR\r\nhi\r\n", b"NS\r\n", "replace mode on a missing key")
    raw.request(b"ms " + k + b" 2 ME\r\nhi\r\n", b"HD\r\n", "add mode on a missing key")
    raw.request(b"ms " + k + b" 2 ME\r\nzz\r\n", b"NS\r\n", "add mode on a present key")
    raw.request(b"ms " + k + b" 2 MA\r\n!!\r\n", b"HD\r\n")
    raw.request(b"ms " + k + b" 2 MP\r\n<<\r\n", b"HD\r\n")
    raw.request(b"mg " + k + b" v\r\n", b"VA 6\r\n<<hi!!\r\n")
    raw.request(b"ms " + k + b" 1 MR\r\nr\r\n", b"HD\r\n")
    raw.request(b"ms " + k + b" 1 MS\r\ns\r\n", b"HD\r\n")
    raw.request(b"mg " + k + b" v\r\n", b"VA 1\r\ns\r\n")
    raw.request(b"mg " + m + b" v\r\n", b"EN\r\n")


def test_ms_returns_opaque_key_and_cas(raw, key):
    k = key.b()
    raw.send(b"ms " + k + b" 2 O8 k c\r\nhi\r\n")
    line = raw.read_line()
    assert re.fullmatch(rb"HD O8 k" + re.escape(k) + rb" c\d+\r\n", line), f"ms O8 k c: {line!r}"


def test_mg_opaque(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 2\r\nhi\r\n", b"HD\r\n")
    raw.request(b"mg " + k + b" O123 v\r\n", b"VA 2 O123\r\nhi\r\n")
    raw.request(b"mg " + k + b" O123\r\n", b"HD O123\r\n")
    raw.request(b"mg " + key.b("missing") + b" O123 v\r\n", b"EN O123\r\n")


def test_mn_ignores_opaque(raw):
    # mn takes no flags; memcached 1.6.18 answers a bare MN even when given O.
    raw.request(b"mn O9\r\n", b"MN\r\n")


def test_ma(raw, key):
    k = key.b()
    raw.request(b"ma " + k + b"\r\n", b"NF\r\n", "ma on a missing key")
    raw.request(b"ms " + k + b" 2\r\n10\r\n", b"HD\r\n")
    raw.request(b"ma " + k + b"\r\n", b"HD\r\n", "ma increments by 1 by default")
    raw.request(b"mg " + k + b" v\r\n", b"VA 2\r\n11\r\n")
    raw.request(b"ma " + k + b" v\r\n", b"VA 2\r\n12\r\n")
    raw.request(b"ma " + k + b" D100 v\r\n", b"VA 3\r\n112\r\n")
    raw.request(b"ma " + k + b" MD D12 v\r\n", b"VA 3\r\n100\r\n")
    raw.request(b"ma " + k + b" M- D1 v\r\n", b"VA 2\r\n99\r\n", "M- is decrement")
    raw.request(b"ma " + k + b" M+ D1 v\r\n", b"VA 3\r\n100\r\n", "M+ is increment")
    raw.request(b"ma " + k + b" MD D1000 v\r\n", b"VA 1\r\n0\r\n", "decrement floors at 0")
    raw.request(b"ma " + k + b" MI D3 v t\r\n", b"VA 1 t-1\r\n3\r\n")


def test_ma_wraps_at_2_pow_64(raw, key):
    k = key.b()
    big = str(2**64 - 1).encode()
    raw.request(b"ms " + k + b" %d\r\n" % len(big) + big + b"\r\n", b"HD\r\n")
    raw.request(b"ma " + k + b" D2 v\r\n", b"VA 1\r\n1\r\n")


def test_ma_autovivify(raw, key):
    k = key.b()
    raw.request(b"ma " + k + b" N0 J7 v\r\n", b"VA 1\r\n7\r\n", "N creates the item with J's value")
    raw.request(b"ma " + k + b" N0 J7 v\r\n", b"VA 1\r\n8\r\n", "J only seeds a missing item")
    raw.request(b"mg " + k + b" v\r\n", b"VA 1\r\n8\r\n")


def test_ma_errors(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 3\r\nabc\r\n", b"HD\r\n")
    raw.request(b"ma " + k + b" v\r\n",
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
    raw.request(b"ma " + k + b" Dx\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n")
    raw.request(b"mg " + k + b" v\r\n", b"VA 3\r\nabc\r\n", "the value is untouched")


def test_me(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 2\r\nhi\r\n", b"HD\r\n")
    raw.send(b"me " + k + b"\r\n")
    line = raw.read_line()
    assert line.startswith(b"ME "), f"me of a present key: {line!r}"
    raw.request(b"me " + key.b("missing") + b"\r\n", b"EN\r\n", "me of a missing key")
    raw.sync()


def test_base64_keys(raw, key):
    k = key.b()
    k64 = base64.b64encode(k)
    raw.request(b"ms " + k64 + b" 2 b\r\nhi\r\n", b"HD\r\n")
    raw.request(b"mg " + k64 + b" b v k\r\n", b"VA 2 k" + k64 + b" b\r\nhi\r\n",
                "the key comes back base64-encoded, with a b flag")
    raw.request(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 2\r\nhi\r\nEND\r\n",
                "a b-flagged key is stored under its decoded bytes")
    raw.request(b"ma " + k64 + b" b N0 J5 v\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
    raw.request(b"md " + k64 + b" b\r\n", b"HD\r\n")
    raw.request(b"get " + k + b"\r\n", b"END\r\n")


def test_binary_key_via_base64(raw):
    # A key with bytes the text protocol cannot carry (space, NUL, CR LF) through the b flag.
    k = b"bin key \x00\r\n\xff"
    k64 = base64.b64encode(k)
    raw.request(b"ms " + k64 + b" 3 b\r\nbin\r\n", b"HD\r\n")
    raw.request(b"mg " + k64 + b" b v\r\n", b"VA 3\r\nbin\r\n", "b is echoed only along with k")
    raw.request(b"md " + k64 + b" b\r\n", b"HD\r\n")
    raw.request(b"mg " + k64 + b" b v\r\n", b"EN\r\n")


def test_meta_errors(raw, key):
    k = key.b()
    raw.request(b"ms " + k + b" 1\r\nx\r\n", b"HD\r\n")
    raw.request(b"mg\r\n", b"ERROR\r\n", "mg without a key")
    raw.request(b"mx\r\n", b"ERROR\r\n", "an unknown meta command")
    raw.request(b"mg " + k + b" v v\r\n", b"CLIENT_ERROR duplicate flag\r\n")
    raw.request(b"mg " + k + b" !\r\n", b"CLIENT_ERROR invalid flag\r\n")
    raw.request(b"mg " + b"m" * 251 + b" v\r\n", b"CLIENT_ERROR bad command line format\r\n")
    raw.send(b"ms " + k + b" 2\r\nabc\r\n")
    raw.expect(b"CLIENT_ERROR bad data chunk\r\n")
    raw.expect(b"ERROR\r\n", "the leftover \\n after the bad chunk")
    raw.request(b"ms " + k + b" 2 q\r\nabcd", b"CLIENT_ERROR bad data chunk\r\n",
                "ms reports a bad chunk even with q")
    raw.request(b"ms " + k + b" abc\r\n", b"CLIENT_ERROR bad command line format\r\n",
                "a non-numeric ms length")
    raw.sync()


def test_ms_too_large(server, raw, key):
    k = key.b()
    n = server.too_large
    raw.send(b"ms " + k + b" %d\r\n" % n + b"z" * n + b"\r\n")
    raw.expect(b"SERVER_ERROR object too large for cache\r\n")
    raw.request(b"mg " + k + b" v\r\n", b"EN\r\n", "the data was swallowed, not stored")


def test_meta_pipeline_with_quiet_gets(raw, key):
    keys = [key.b(f"p{i}") for i in range(50)]
    raw.send(b"".join(b"ms " + k + b" %d q\r\n" % len(k) + k + b"\r\n" for k in keys) + b"mn\r\n")
    raw.expect(b"MN\r\n", "50 quiet ms then mn")
    # Ask for the stored keys and as many missing ones, all quiet: only the hits come back.
    req = b""
    expected = b""
    for i, k in enumerate(keys):
        req += b"mg " + k + b" k v q\r\n" + b"mg " + key.b(f"absent{i}") + b" v q\r\n"
        expected += b"VA %d k" % len(k) + k + b"\r\n" + k + b"\r\n"
    raw.request(req + b"mn\r\n", expected + b"MN\r\n")
