"""The same front end through a second, independent text-protocol client: python-memcached
(module `memcache`), which also pipelines set_multi and encodes Python types in the flags."""

from __future__ import annotations

import memcache
import pytest


@pytest.fixture
def mc(server):
    # dead_retry=0: a failed request must not make the client silently skip the server later.
    c = memcache.Client([server.address], cache_cas=True, socket_timeout=5, dead_retry=0)
    try:
        yield c
    finally:
        c.disconnect_all()


def test_set_get_types(mc, key):
    # python-memcached keeps the Python type in the flags (bytes 0, str 16, int 2, pickle 1),
    # so these round trips also check that the server returns the flags it was given.
    values = {
        "bytes": b"\x00\r\nEND\r\n",
        "str": "text \u00e9",
        "int": 12345,
        "list": [1, "two", b"three"],
    }
    for name, v in values.items():
        assert mc.set(key(name), v) is True, f"set of a {name}"
    for name, v in values.items():
        got = mc.get(key(name))
        assert got == v and type(got) is type(v), f"{name}: got {got!r}"


def test_set_multi_and_get_multi_200_keys(mc, key):
    mapping = {key(f"m{i}"): b"v%d" % i for i in range(200)}
    assert mc.set_multi(mapping) == [], "set_multi returns the keys it failed to store"
    got = mc.get_multi(list(mapping) + [key("absent")])
    assert got == mapping


def test_add_replace_append_prepend(mc, key):
    k = key()
    assert mc.replace(k, b"x") == 0
    assert mc.append(k, b"x") == 0
    assert mc.add(k, b"mid") is True
    assert mc.add(k, b"again") == 0
    assert mc.append(k, b">") is True and mc.prepend(k, b"<") is True
    assert mc.get(k) == b"<mid>"
    assert mc.replace(k, b"new") is True and mc.get(k) == b"new"


def test_gets_cas(mc, key, server):
    k = key()
    assert mc.set(k, b"one")
    assert mc.gets(k) == b"one"
    other = memcache.Client([server.address], cache_cas=True, socket_timeout=5, dead_retry=0)
    try:
        assert other.gets(k) == b"one"
        assert mc.cas(k, b"two") is True, "cas with the token from gets"
        assert other.cas(k, b"three") == 0, "cas with a token made stale by the other client"
    finally:
        other.disconnect_all()
    assert mc.get(k) == b"two"


def test_incr_decr_delete(mc, key):
    k = key()
    assert mc.set(k, "10")
    assert mc.incr(k, 5) == 15
    assert mc.decr(k, 20) == 0
    assert mc.incr(key("missing")) is None
    assert mc.delete(k) == 1
    assert mc.delete(k) == 0
    assert mc.get(k) is None


def test_touch(mc, key):
    k = key()
    assert mc.set(k, b"v")
    assert mc.touch(k, 100) == 1
    assert mc.touch(key("missing"), 100) == 0


def test_get_stats(mc, server):
    [(name, s)] = mc.get_stats()
    assert name.startswith(server.address), name
    for field in ("pid", "uptime", "curr_items", "cmd_get", "threads"):
        assert field in s, f"stats lacks {field}"
