"""Many commands in one write: every reply comes back, in request order."""

from __future__ import annotations


def test_classic_pipeline_in_one_write(raw, key):
    n = 300
    keys = [key.b(f"p{i}") for i in range(n)]
    req, expected = b"", b""
    for i, k in enumerate(keys):
        v = b"v%d" % i
        req += b"set " + k + b" %d 0 %d\r\n" % (i, len(v)) + v + b"\r\n"
        expected += b"STORED\r\n"
    for i, k in enumerate(keys):
        v = b"v%d" % i
        req += b"get " + k + b"\r\n"
        expected += b"VALUE " + k + b" %d %d\r\n" % (i, len(v)) + v + b"\r\nEND\r\n"
    for i, k in enumerate(keys[:50]):
        req += b"incr " + k + b" 1\r\n" + b"delete " + k + b"\r\n" + b"get " + k + b"\r\n"
        expected += b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        expected += b"DELETED\r\nEND\r\n"
    raw.request(req, expected, f"{len(req)} bytes of pipelined requests")
    raw.sync()


def test_pipeline_mixing_errors_noreply_and_multiget(raw, key):
    a, b, c = key.b("a"), key.b("b"), key.b("c")
    req = (
        b"set " + a + b" 0 0 1 noreply\r\n1\r\n"
        + b"bogus\r\n"
        + b"set " + b + b" 0 0 2\r\n22\r\n"
        + b"incr " + a + b" 9 noreply\r\n"
        + b"get " + a + b" " + c + b" " + b + b"\r\n"
        + b"mn\r\n"
        + b"delete " + c + b"\r\n"
        + b"gets " + c + b"\r\n"
    )
    expected = (
        b"ERROR\r\n"
        + b"STORED\r\n"
        + b"VALUE " + a + b" 0 2\r\n10\r\n" + b"VALUE " + b + b" 0 2\r\n22\r\nEND\r\n"
        + b"MN\r\n"
        + b"NOT_FOUND\r\n"
        + b"END\r\n"
    )
    raw.request(req, expected)


def test_pipeline_split_across_writes(raw, key):
    """A request cut at every byte boundary still parses: the same bytes, sent one at a time."""
    k = key.b()
    req = b"set " + k + b" 1 0 5\r\nab\r\nc\r\nget " + k + b"\r\ndelete " + k + b"\r\n"
    for i in range(len(req)):
        raw.send(req[i:i + 1])
    raw.expect(b"STORED\r\nVALUE " + k + b" 1 5\r\nab\r\nc\r\nEND\r\nDELETED\r\n")


def test_large_pipelined_values(raw, key):
    keys = [key.b(f"big{i}") for i in range(8)]
    values = [bytes([65 + i]) * (200_000 + i) for i in range(8)]
    req = b"".join(
        b"set " + k + b" 0 0 %d\r\n" % len(v) + v + b"\r\n" for k, v in zip(keys, values)
    ) + b"get " + b" ".join(keys) + b"\r\n"
    expected = b"STORED\r\n" * len(keys) + b"".join(
        b"VALUE " + k + b" 0 %d\r\n" % len(v) + v + b"\r\n" for k, v in zip(keys, values)
    ) + b"END\r\n"
    raw.request(req, expected, "8 values of ~200 KB and one multi-get, in one write")
