#!/usr/bin/env python3
"""Bounds on the lowest miss ratio any cache could reach in a tools/miss-ratio.sh cell.

The script measures a short window: after a fill of uniformly drawn keys (runs of F / 2 until
the memory is full), a warm-up of WARMUP x F gets, then MEASURE x F measured ones (F: the items
that fit). A key requested in the measured window for the first time since the fill began
misses in every cache, however large: those compulsory misses are the floor. This draws a
stream like the cell's (the same Zipf law, keyspace and windows; its own random draws, so not
the same keys as percore-load's) and prints, over the measured gets:

  compulsory  the misses of a cache that never evicts
  belady      an offline cache of the cell's memory that knows the future and, when full,
              evicts first what is never requested again, then the item whose next request
              (its position in the stream) times its size is largest: one offline policy, not
              the best one, so the best possible lies between compulsory and this
  lru         an LRU cache of the same memory, for reference (near memcached's figures)

  tools/miss-floor.py z0.99-mixed
  tools/miss-floor.py scan --warmup 16
Item sizes count the key, the value and 27 bytes of header and index entry; the memory is the
cell's, 97% of it for items. Pure Python, about 10 s a cell.
"""
import argparse
import bisect
import heapq
import itertools
import random
from collections import OrderedDict

KEY = 16
OVERHEAD = 50  # tools/miss-ratio.sh's estimate of memcached's per-item overhead, for F
ITEM_EXTRA = 27  # header and index entry, for the simulated caches


def cell(name):
    """(zipf, memory in MiB, value sizes (lo, hi), scan) as tools/miss-ratio.sh sets them."""
    if name == "scan":
        return 0.99, 16, (100, 100), True
    s, kind = name[1:].split("-")
    return (
        float(s),
        16 if kind == "fixed" else 64,
        (100, 100) if kind == "fixed" else (64, 4096),
        False,
    )


def stream(keys, zipf, n, rng):
    weights = [r**-zipf for r in range(1, keys + 1)]
    cum = list(itertools.accumulate(weights))
    total = cum[-1]
    return [bisect.bisect_left(cum, rng.random() * total) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cells = [f"z{s}-{k}" for s in ("0.9", "0.99", "1.2") for k in ("fixed", "mixed")]
    ap.add_argument("cell", choices=cells + ["scan"])
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--measure", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    zipf, mib, (lo, hi), scan = cell(a.cell)
    fits = mib * 2**20 // (KEY + (lo + hi) // 2 + OVERHEAD)
    keys = 10 * fits
    rng = random.Random(a.seed)
    size = [KEY + rng.randint(lo, hi) + ITEM_EXTRA for _ in range(keys + fits)]
    cap = mib * 2**20 * 0.97
    fill, filled, distinct = [], 0, set()
    while filled <= cap:
        run = [rng.randrange(keys) for _ in range(fits // 2)]
        fill += run
        for k in run:
            if k not in distinct:
                distinct.add(k)
                filled += size[k]
    warm, meas = len(fill) + a.warmup * fits, a.measure * fits
    seq = fill + stream(keys, zipf, a.warmup * fits + meas, rng)
    skip = set()
    if scan:
        # After one memory's worth of measured gets, a pass over `fits` cold keys, left out of
        # the ratio (percore-load --scan-after and --scan-keys); the window grows by it and
        # by one memory's worth, as in the script.
        at = warm + fits
        seq = seq[:at] + list(range(keys, keys + fits)) + seq[at:] + stream(keys, zipf, fits, rng)
        skip = set(range(at, at + fits))
    measured = [i >= warm and i not in skip for i in range(len(seq))]
    count = sum(measured)

    nxt, last = [0] * len(seq), {}
    for i in range(len(seq) - 1, -1, -1):
        nxt[i] = last.get(seq[i], float("inf"))
        last[seq[i]] = i

    seen, compulsory = set(), 0
    for i, k in enumerate(seq):
        compulsory += measured[i] and k not in seen
        seen.add(k)

    held, heap, used, belady = {}, [], 0, 0
    for i, k in enumerate(seq):
        if k not in held:
            belady += measured[i]
            used += size[k]
        held[k] = nxt[i]
        heapq.heappush(heap, (-nxt[i] * size[k], k, nxt[i]))
        while used > cap:
            _, victim, when = heapq.heappop(heap)
            if held.get(victim) == when:
                del held[victim]
                used -= size[victim]

    lru, used, lru_miss = OrderedDict(), 0, 0
    for i, k in enumerate(seq):
        if k in lru:
            lru.move_to_end(k)
            continue
        lru_miss += measured[i]
        lru[k] = True
        used += size[k]
        while used > cap:
            victim, _ = lru.popitem(last=False)
            used -= size[victim]

    print(f"{a.cell}: {keys:,} keys, {fits:,} fit, {count:,} measured gets")
    for name, misses in (("compulsory", compulsory), ("belady", belady), ("lru", lru_miss)):
        print(f"  {name:<10} {misses / count:.4f}")


if __name__ == "__main__":
    main()
