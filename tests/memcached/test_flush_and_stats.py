"""flush_all (now, delayed, noreply) and the stats counters, each on a server of its own."""

from __future__ import annotations

import time

from conftest import MEMORY_BYTES, THREADS

# What any memcached-compatible server reports (and what percore's front end must).
REQUIRED_STATS = [
    "pid", "uptime", "time", "version", "curr_items", "total_items", "get_hits", "get_misses",
    "cmd_get", "cmd_set", "curr_connections", "total_connections", "threads", "limit_maxbytes",
]
# Per-command counters that monitoring (memcached exporters, memcstat) reads; checked apart.
COMMAND_STATS = [
    "bytes", "delete_hits", "delete_misses", "incr_hits", "incr_misses", "decr_hits",
    "decr_misses", "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses",
    "cmd_touch", "cmd_flush", "evictions",
]


def stats(c) -> dict[str, object]:
    return {k.decode(): v for k, v in c.stats().items()}


def settled_stats(c) -> dict[str, object]:
    """Stats once curr_connections has stopped changing: the server notices a closed connection
    (such as the fixture's readiness probe) a little after the client closed it."""
    s = stats(c)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = stats(c)
        if again["curr_connections"] == s["curr_connections"]:
            return again
        s = again
    return s


def test_flush_all(fresh_server):
    c = fresh_server.client()
    try:
        for i in range(20):
            assert c.set(f"f{i}", b"v")
        assert len(c.get_many([f"f{i}" for i in range(20)])) == 20
        assert c.flush_all() is True
        assert c.get_many([f"f{i}" for i in range(20)]) == {}, "flush_all empties the cache"
        assert c.set("after", b"v") and c.get("after") == b"v", "sets after a flush are kept"
        assert c.flush_all(noreply=True) is True
        assert c.get("after") is None, "flush_all noreply flushes too"
    finally:
        c.close()


def test_flush_all_with_delay(fresh_server):
    c = fresh_server.client()
    try:
        assert c.set("d1", b"v") and c.set("d2", b"v", expire=100)
        assert c.flush_all(delay=2) is True
        assert c.get_many(["d1", "d2"]) == {"d1": b"v", "d2": b"v"}, (
            "flush_all 2 leaves the items there for now"
        )
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and c.get_many(["d1", "d2"]):
            time.sleep(0.25)
        assert c.get_many(["d1", "d2"]) == {}, "flush_all 2 has flushed within 4 s"
    finally:
        c.close()


def test_stats_has_the_usual_fields(fresh_server):
    c = fresh_server.client()
    try:
        s = stats(c)
        missing = [name for name in REQUIRED_STATS if name not in s]
        assert not missing, f"stats lacks {missing}; it has {sorted(s)}"
        assert s["pid"] == fresh_server.proc.pid, (
            f"pid {s['pid']!r}: expected the server process's, {fresh_server.proc.pid}"
        )
        assert isinstance(s["uptime"], int) and 0 <= s["uptime"] < 60, (
            f"uptime of a server started just now: {s['uptime']!r}"
        )
        assert abs(s["time"] - time.time()) < 5, f"time {s['time']!r} is not the unix time now"
        assert s["threads"] == THREADS, (
            f"threads {s['threads']!r}: expected {THREADS}, the number of cores/threads given"
        )
        assert s["limit_maxbytes"] == MEMORY_BYTES, (
            f"limit_maxbytes {s['limit_maxbytes']!r}: expected {MEMORY_BYTES} (64 MiB was given)"
        )
        assert (s["curr_items"], s["total_items"]) == (0, 0), (
            f"a new server holds nothing: curr_items {s['curr_items']}, total_items {s['total_items']}"
        )
        assert s["curr_connections"] >= 1, f"curr_connections {s['curr_connections']} counts not even this one"
    finally:
        c.close()


def test_stats_counters_rise_by_the_requests_sent(fresh_server):
    c = fresh_server.client()
    try:
        s0 = stats(c)
        for i in range(7):
            assert c.set(f"s{i}", b"value")
        for i in range(5):
            assert c.get(f"s{i}") == b"value"
        for i in range(3):
            assert c.get(f"missing{i}") is None
        # A multi-get counts each key: 3 hits and 2 misses.
        assert len(c.get_many(["s0", "s1", "s2", "missing-a", "missing-b"])) == 3
        assert c.delete("s6") is True
        assert c.set("n", b"1")
        _, token = c.gets("s1")
        assert c.cas("s1", b"x", token) is True and c.cas("s1", b"y", token) is False
        assert c.cas("nope", b"z", b"1") is None
        s1 = stats(c)
    finally:
        c.close()
    assert_deltas(s0, s1, {
        # 5 + 3 single gets, 5 keys in the multi-get, 1 gets
        "cmd_get": 14, "get_hits": 9, "get_misses": 5,
        # 7 sets, 1 set of n, 3 cas (a cas counts as a set command)
        "cmd_set": 11,
        # s0..s5 and n remain (s6 deleted)
        "curr_items": 7,
        # 7 + n + the successful cas
        "total_items": 9,
    })


def test_stats_per_command_counters(fresh_server):
    c = fresh_server.client()
    try:
        s0 = stats(c)
        missing = [name for name in COMMAND_STATS if name not in s0]
        assert not missing, f"stats lacks {missing}"
        assert c.set("a", b"1") and c.set("n", b"1")
        assert c.delete("a") is True and c.delete("a") is False
        assert c.incr("n", 1) == 2 and c.incr("nope", 1) is None
        assert c.decr("n", 1) == 1 and c.decr("nope", 1) is None
        assert c.touch("n", 100) is True and c.touch("nope", 100) is False
        _, token = c.gets("n")
        assert c.cas("n", b"x", token) is True and c.cas("n", b"y", token) is False
        assert c.cas("nope", b"z", b"1") is None
        assert c.flush_all() is True
        s1 = stats(c)
    finally:
        c.close()
    assert_deltas(s0, s1, {
        "delete_hits": 1, "delete_misses": 1,
        "incr_hits": 1, "incr_misses": 1, "decr_hits": 1, "decr_misses": 1,
        "cmd_touch": 2, "touch_hits": 1, "touch_misses": 1,
        "cas_hits": 1, "cas_badval": 1, "cas_misses": 1,
        "cmd_flush": 1, "evictions": 0,
    })


def assert_deltas(s0, s1, expected: dict[str, int]) -> None:
    delta = {name: s1[name] - s0[name] for name in expected}
    assert delta == expected, "stats deltas differ: " + ", ".join(
        f"{k}: got +{delta[k]} expected +{expected[k]}" for k in expected if delta[k] != expected[k]
    )


def test_stats_counts_connections(fresh_server):
    c = fresh_server.client()
    others = [fresh_server.client() for _ in range(3)]
    try:
        s0 = settled_stats(c)
        for o in others:
            assert o.version()  # a round trip, so the server has surely accepted it
        s1 = stats(c)
        assert s1["curr_connections"] - s0["curr_connections"] == 3, (
            f"curr_connections {s0['curr_connections']} -> {s1['curr_connections']} after 3 more clients"
        )
        assert s1["total_connections"] - s0["total_connections"] == 3
        for o in others:
            o.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and stats(c)["curr_connections"] != s0["curr_connections"]:
            time.sleep(0.05)
        assert stats(c)["curr_connections"] == s0["curr_connections"], "closed connections are no longer counted"
    finally:
        c.close()
        for o in others:
            o.close()


def test_stats_flush_counter_and_items(fresh_server):
    c = fresh_server.client()
    try:
        for i in range(4):
            c.set(f"i{i}", b"v")
        s0 = stats(c)
        assert s0["curr_items"] == 4
        c.flush_all()
        s1 = stats(c)
        assert s1["cmd_flush"] - s0["cmd_flush"] == 1
        assert c.get_many([f"i{i}" for i in range(4)]) == {}
    finally:
        c.close()
