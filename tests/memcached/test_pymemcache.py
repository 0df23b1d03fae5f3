"""Storage, retrieval, cas, arithmetic, touch, expiry and delete through pymemcache, a real
third-party text-protocol client (serde off: values are bytes, flags are raw)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from pymemcache.exceptions import MemcacheClientError

from conftest import MAX_VALUE_TESTED


class RawFlagsSerde:
    """pymemcache serde that stores bytes as they are and returns (value, flags) on reads, so
    the flags the server stored can be checked."""

    def serialize(self, key, value):
        return value, 0

    def deserialize(self, key, value, flags):
        return value, flags


def test_set_get_round_trip(client, key):
    k = key()
    assert client.set(k, b"hello") is True
    assert client.get(k) == b"hello"
    assert client.set(k, b"replaced") is True, "set must overwrite an existing key"
    assert client.get(k) == b"replaced"


def test_get_missing_returns_none(client, key):
    assert client.get(key("never-set")) is None
    assert client.get_many([key("a"), key("b")]) == {}


def test_empty_value(client, key):
    k = key()
    assert client.set(k, b"")
    assert client.get(k) == b"", "an empty value is a hit, not a miss"


def test_key_of_250_bytes_round_trips(client, key):
    k = (key() + "-" + "k" * 250)[:250]
    assert len(k) == 250
    assert client.set(k, b"longest key")
    assert client.get(k) == b"longest key"


def test_get_many_200_keys_in_one_request(client, key):
    # 200 keys in one `get k1 k2 ...` line: on a 2-core percore they live on both cores.
    expected = {key(f"many{i}"): f"value-{i}-".encode() * (i % 7 + 1) for i in range(200)}
    for k, v in expected.items():
        assert client.set(k, v), f"set {k}"
    missing = [key(f"absent{i}") for i in range(20)]
    got = client.get_many(list(expected) + missing)
    assert set(got) == set(expected), (
        f"get_many returned {len(got)} keys, expected the {len(expected)} that were set; "
        f"missing: {sorted(set(expected) - set(got))[:5]}, extra: {sorted(set(got) - set(expected))[:5]}"
    )
    for k, v in expected.items():
        assert got[k] == v, f"value of {k}"


def test_gets_many_200_keys_returns_values_and_cas(client, key):
    expected = {key(f"g{i}"): str(i).encode() for i in range(200)}
    for k, v in expected.items():
        assert client.set(k, v)
    got = client.gets_many(list(expected))
    assert set(got) == set(expected)
    # (CAS values need only be unique per key over time, not across keys: percore counts them
    # per core, memcached globally.)
    for k, (value, cas) in got.items():
        assert value == expected[k]
        assert cas is not None and cas.isdigit() and int(cas) > 0, f"cas token of {k}: {cas!r}"


@pytest.mark.parametrize(
    "size",
    [0, 1, 2, 100, 1000, 1023, 1024, 4096, 16383, 65535, 65536, 100_000, 500_000,
     MAX_VALUE_TESTED - 1, MAX_VALUE_TESTED],
)
def test_values_of_many_sizes(client, key, size):
    value = random.Random(size).randbytes(size)
    k = key()
    assert client.set(k, value) is True, f"a value of {size} bytes must be stored"
    got = client.get(k)
    assert got is not None, f"a value of {size} bytes was stored but not returned"
    assert len(got) == size and got == value, f"value of {size} bytes came back changed"


@pytest.mark.parametrize(
    "value",
    [
        b"\r\n",
        b"\r\nEND\r\n",
        b"END\r\n",
        b"\x00",
        b"\x00" * 100,
        b"a\x00b\r\nc\nd\re",
        b"VALUE fake 0 5\r\nhello\r\nEND\r\n",
        b"\r\n\r\n\r\n",
        bytes(range(256)) * 4,
    ],
    ids=["crlf", "crlf-END-crlf", "END-crlf", "nul", "nuls", "mixed", "fake-reply", "crlfs", "all-bytes"],
)
def test_binary_safe_values(client, key, value):
    k = key()
    assert client.set(k, value)
    assert client.get(k) == value
    # And inside a multi-get, where a value that looked like a reply line would desync a parser.
    k2 = key("2")
    assert client.set(k2, b"after")
    assert client.get_many([k, k2]) == {k: value, k2: b"after"}


@pytest.mark.parametrize("flags", [0, 1, 5, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_flags_round_trip(server, key, flags):
    c = server.client(serde=RawFlagsSerde())
    try:
        k = key()
        assert c.set(k, b"flagged", flags=flags)
        assert c.get(k) == (b"flagged", flags)
        (value, flags_back), cas = c.gets(k)
        assert (value, flags_back) == (b"flagged", flags)
        # append keeps the original item's flags
        assert c.append(k, b"!", flags=0)
        assert c.get(k) == (b"flagged!", flags)
    finally:
        c.close()


def test_add(client, key):
    k = key()
    assert client.add(k, b"first") is True
    assert client.add(k, b"second") is False, "add of an existing key is NOT_STORED"
    assert client.get(k) == b"first"


def test_replace(client, key):
    k = key()
    assert client.replace(k, b"x") is False, "replace of a missing key is NOT_STORED"
    assert client.get(k) is None, "a failed replace must not create the key"
    assert client.set(k, b"old")
    assert client.replace(k, b"new") is True
    assert client.get(k) == b"new"


def test_append_prepend(client, key):
    k = key()
    assert client.append(k, b"x") is False, "append to a missing key is NOT_STORED"
    assert client.prepend(k, b"x") is False, "prepend to a missing key is NOT_STORED"
    assert client.get(k) is None
    assert client.set(k, b"middle")
    assert client.append(k, b"-end") is True
    assert client.prepend(k, b"start-") is True
    assert client.get(k) == b"start-middle-end"
    assert client.append(k, b"\r\n\x00") is True
    assert client.get(k) == b"start-middle-end\r\n\x00"


def test_cas(client, key):
    k = key()
    assert client.set(k, b"v1")
    value, token = client.gets(k)
    assert value == b"v1" and token is not None
    assert client.cas(k, b"v2", token) is True, "cas with the current token is STORED"
    assert client.get(k) == b"v2"
    assert client.cas(k, b"v3", token) is False, "cas with a stale token is EXISTS"
    assert client.get(k) == b"v2"
    value, token2 = client.gets(k)
    assert value == b"v2" and token2 != token, "a successful cas gives the item a new cas value"


def test_cas_changes_after_any_write(client, key):
    k = key()
    assert client.set(k, b"a")
    _, t1 = client.gets(k)
    assert client.append(k, b"b")
    _, t2 = client.gets(k)
    assert client.set(k, b"c")
    _, t3 = client.gets(k)
    assert len({t1, t2, t3}) == 3, f"cas values must change on every write: {t1} {t2} {t3}"
    assert client.cas(k, b"d", t1) is False


def test_cas_on_missing_key_is_not_found(client, key):
    assert client.cas(key(), b"v", b"12345") is None, "cas on a missing key is NOT_FOUND"
    assert client.get(key()) is None


def test_cas_race_exactly_one_wins(server, key):
    k = key()
    a, b = server.client(), server.client()
    try:
        assert a.set(k, b"start")
        va, ta = a.gets(k)
        vb, tb = b.gets(k)
        assert va == vb == b"start" and ta == tb
        results = [a.cas(k, b"from-a", ta), b.cas(k, b"from-b", tb)]
        assert sorted(results) == [False, True], f"exactly one cas must win, got {results}"
        assert a.get(k) == b"from-a", "the first cas won, so its value is stored"
    finally:
        a.close()
        b.close()


def test_concurrent_cas_increments_are_not_lost(server, key):
    k = key()
    threads, per_thread = 4, 40
    setup = server.client()
    assert setup.set(k, b"0")
    setup.close()
    errors: list[str] = []
    conflicts = [0] * threads

    def work(i: int) -> None:
        c = server.client()
        try:
            done = 0
            while done < per_thread:
                value, token = c.gets(k)
                if c.cas(k, str(int(value) + 1).encode(), token):
                    done += 1
                else:
                    conflicts[i] += 1
        except Exception as e:  # reported below, with the thread that saw it
            errors.append(f"thread {i}: {e!r}")
        finally:
            c.close()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not errors, errors
    check = server.client()
    try:
        assert check.get(k) == str(threads * per_thread).encode(), (
            f"{threads} clients each won {per_thread} cas increments; conflicts seen: {conflicts}"
        )
    finally:
        check.close()


def test_incr_decr_basic(client, key):
    k = key()
    assert client.set(k, b"10")
    assert client.incr(k, 5) == 15
    assert client.incr(k, 0) == 15
    assert client.decr(k, 3) == 12
    assert client.get(k).rstrip(b" ") == b"12"
    assert client.incr(k, 88) == 100, "incr grows the number of digits"
    assert client.get(k) == b"100"


def test_decr_floors_at_zero(client, key):
    k = key()
    assert client.set(k, b"5")
    assert client.decr(k, 10) == 0
    assert client.decr(k, 1) == 0
    # memcached may space-pad a number that shrank in place (protocol.txt allows it).
    assert client.get(k).rstrip(b" ") == b"0"


def test_incr_wraps_at_2_pow_64(client, key):
    k = key()
    assert client.set(k, str(2**64 - 1).encode())
    assert client.incr(k, 1) == 0
    assert client.set(k, str(2**64 - 2).encode())
    assert client.incr(k, 5) == 3
    assert client.get(k).rstrip(b" ") == b"3"
    assert client.incr(k, 2**64 - 1) == 2, "a delta of 2**64-1 is allowed and wraps"


def test_incr_on_non_numeric_value_is_a_client_error(client, key):
    k = key()
    assert client.set(k, b"not a number")
    with pytest.raises(MemcacheClientError, match="cannot increment or decrement non-numeric value"):
        client.incr(k, 1)
    with pytest.raises(MemcacheClientError, match="cannot increment or decrement non-numeric value"):
        client.decr(k, 1)
    assert client.get(k) == b"not a number", "a failed incr leaves the value alone"


def test_incr_decr_on_missing_key_is_none(client, key):
    assert client.incr(key(), 1) is None
    assert client.decr(key(), 1) is None
    assert client.get(key()) is None, "incr does not create a missing key"


def test_touch(client, key):
    k = key()
    assert client.touch(k, 10) is False, "touch of a missing key is NOT_FOUND"
    assert client.set(k, b"v")
    assert client.touch(k, 100) is True
    assert client.get(k) == b"v"


def test_delete(client, key):
    k = key()
    assert client.set(k, b"v")
    assert client.delete(k) is True, "delete of a present key is DELETED"
    assert client.get(k) is None
    assert client.delete(k) is False, "delete of an absent key is NOT_FOUND"


def test_noreply_set_delete_incr(client, key):
    k, n = key("k"), key("n")
    assert client.set(k, b"quiet", noreply=True) is True
    assert client.get(k) == b"quiet", "a noreply set is stored"
    assert client.set(n, b"41", noreply=True)
    assert client.incr(n, 1, noreply=True) is None
    assert client.get(n) == b"42", "a noreply incr is applied"
    assert client.decr(n, 2, noreply=True) is None
    assert client.get(n).rstrip(b" ") == b"40", "a noreply decr is applied"
    assert client.add(k, b"no", noreply=True)
    assert client.get(k) == b"quiet", "a noreply add of a present key stores nothing"
    assert client.delete(k, noreply=True) is True
    assert client.get(k) is None, "a noreply delete is applied"
    assert client.delete(k, noreply=True) is True
    # Nothing stray came back from the noreply commands: the next reply is for the next command.
    assert client.get(n).rstrip(b" ") == b"40"


def test_version(client):
    version = client.version()
    assert isinstance(version, bytes) and version.strip() == version and version, (
        f"version: {version!r}"
    )


# --- expiry ------------------------------------------------------------------------------
# Every expiry case is set up at once and checked after one shared wait, so the suite sleeps
# once (about 4.5 s) rather than once per case.


class ExpiryScenario:
    def __init__(self, server, key) -> None:
        self.client = server.client()
        c = self.client
        now = time.time()
        self.k = {name: key(name) for name in (
            "ttl2", "ttl0", "neg", "abs_future", "abs_past", "touch_extend", "touch_shorten",
            "touch_clear",
        )}
        self.before: dict[str, bytes | None] = {}
        assert c.set(self.k["ttl2"], b"v", expire=2)
        assert c.set(self.k["ttl0"], b"v", expire=0)
        assert c.set(self.k["neg"], b"v", expire=-1)
        assert c.set(self.k["abs_future"], b"v", expire=int(now) + 3)
        assert c.set(self.k["abs_past"], b"v", expire=int(now) - 100)
        assert c.set(self.k["touch_extend"], b"v", expire=2)
        assert c.touch(self.k["touch_extend"], 100)
        assert c.set(self.k["touch_shorten"], b"v", expire=0)
        assert c.touch(self.k["touch_shorten"], 2)
        assert c.set(self.k["touch_clear"], b"v", expire=2)
        assert c.touch(self.k["touch_clear"], 0)
        for name, k in self.k.items():
            self.before[name] = c.get(k)
        self.set_at = now
        time.sleep(max(0.0, now + 4.5 - time.time()))
        self.after = {name: c.get(k) for name, k in self.k.items()}
        c.close()


@pytest.fixture(scope="module")
def expiry(server):
    class Keys:
        def __call__(self, suffix=""):
            return f"expiry-{time.time_ns()}-{suffix}"

    return ExpiryScenario(server, Keys())


def test_expiry_relative_ttl(expiry):
    assert expiry.before["ttl2"] == b"v", "an item with exptime 2 is there at once"
    assert expiry.after["ttl2"] is None, "an item with exptime 2 is gone after 4.5 s"
    assert expiry.after["ttl0"] == b"v", "exptime 0 never expires"


def test_expiry_negative_is_immediately_expired(expiry):
    assert expiry.before["neg"] is None, "a negative exptime means already expired"


def test_expiry_absolute_unix_time(expiry):
    assert expiry.before["abs_future"] == b"v", (
        "exptime above 30 days is an absolute unix time: now+3 s is still to come"
    )
    assert expiry.after["abs_future"] is None, "an absolute exptime of now+3 s is past after 4.5 s"
    assert expiry.before["abs_past"] is None, "an absolute exptime in the past is already expired"


def test_touch_changes_expiry(expiry):
    assert expiry.before["touch_extend"] == b"v"
    assert expiry.after["touch_extend"] == b"v", "touch to 100 s outlives the original 2 s"
    assert expiry.before["touch_shorten"] == b"v"
    assert expiry.after["touch_shorten"] is None, "touch to 2 s makes a permanent item expire"
    assert expiry.after["touch_clear"] == b"v", "touch to 0 makes the item permanent"
