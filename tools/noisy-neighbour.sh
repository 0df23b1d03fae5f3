#!/usr/bin/env bash
# Noisy neighbour: get latency on a core that a flood of Compute shares, percore beside its peers.
#
#   tools/noisy-neighbour.sh                                   # percore and peer-tokio, 3 rounds
#   BEFORE=path/to/older/percore SERVERS=percore,before tools/noisy-neighbour.sh
#
# Each server runs alone on SERVER_CPU (--cores 1); both generators run on LOAD_CPU. Gets go
# open loop at RATE/s over 8 connections (100% hits); the flood is Compute (sha256, 200 rounds,
# 1 KiB input, 8 connections x 8 in flight), closed loop, its generator at `nice 15` so that it
# does not take the get generator's CPU. Per server and round: gets alone, the flood alone
# (solo compute throughput), then gets beside the flood. Servers take turns in a rotating order
# (A B C, B C A, ...), each started fresh per round. Prints per cell the median over the rounds
# of get p50/p99/p99.9 (ms, from the intended send time: a stalled server fills the tail) and
# compute ops/s, and the gets' service time (from the actual send: the server's own part, without
# the queueing behind a slow reply on the same connection that the intended-time latency adds).
# A run that never sent over 1% of its scheduled requests (their connections still waited for
# the server's reply to the one before) shows "inf": its percentiles would describe only the
# requests the server let through.
# Each round's line also gives "foreign", the share of the two CPUs that neither the server nor
# the generators used (other processes on a shared machine; a run with much of it is disturbed).
# "steal" is the share of the two CPUs' time the hypervisor gave to other guests while they
# had work: on a virtual machine the tails move with it. SERVERS may include "floor", peer-echo's
# epoll engine (the fastest echo this machine allows), measured alone with pings at the same rate
# and connections: its p99 is the tail this machine gives with no server work at all, under
# which no server's figure can go. Raw figures: OUT_DIR/rounds.json.
#
# Settings (environment): SERVERS [percore,peer-tokio] (also: before, the percore binary at
# BEFORE; floor, peer-echo), RUNS [3], DURATION [5s, of each measured run], RATE [20000],
# SERVER_CPU [0], LOAD_CPU [1], NICE [0: the niceness of the server and the get generator; the
# flood's generator runs at NICE+15. With the kernel's autogroups, niceness counts only within
# a session, so a negative NICE runs the script in a session of its own whose autogroup gets
# NICE too: on a machine shared with builds, NICE=-19 keeps them from taking the measured CPUs],
# GET_IDLE_POLL [20us, percore-load's default: how long the get generator polls after a reply;
# it shares its CPU with the flood's generator, so every reply it spins after is CPU the flood
# does not get], BIN [target/release], SKIP_BUILD [unset], OUT_DIR [target/noisy-neighbour].
set -euo pipefail
cd "$(dirname "$0")/.."

export SERVERS=${SERVERS:-percore,peer-tokio} RUNS=${RUNS:-3} DURATION=${DURATION:-5s}
export RATE=${RATE:-20000} SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
export OUT_DIR=${OUT_DIR:-target/noisy-neighbour} BEFORE=${BEFORE:-} NICE=${NICE:-0}
export GET_IDLE_POLL=${GET_IDLE_POLL:-20us}
export BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
if [ "$NICE" -lt 0 ] && [ -w /proc/self/autogroup ]; then
  if [ -z "${NOISY_NEIGHBOUR_SESSION:-}" ]; then
    NOISY_NEIGHBOUR_SESSION=1 exec setsid --wait "$0" "$@"
  fi
  echo "$NICE" >/proc/self/autogroup
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  echo "noisy-neighbour: cargo build --release (percore, percore-load, peer-tokio, peer-echo)" >&2
  cargo build --release --quiet -p percore -p percore-load -p peer-tokio -p peer-echo
fi
if [[ ",$SERVERS," == *,before,* ]] && [ ! -x "$BEFORE" ]; then
  echo "noisy-neighbour: SERVERS has 'before' but BEFORE=$BEFORE is not an executable" >&2
  exit 1
fi
mkdir -p "$OUT_DIR"

exec python3 - <<'PY'
"""Runs the rounds, prints the medians."""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, "tools/lib")
from bench import TICK, behind_schedule, cpu_times, free_port, seconds  # noqa: E402

BIN, OUT = os.environ["BIN"], os.environ["OUT_DIR"]
SERVERS = [s for s in os.environ["SERVERS"].split(",") if s]
RUNS, RATE = int(os.environ["RUNS"]), int(os.environ["RATE"])
DURATION = os.environ["DURATION"]
SERVER_CPU, LOAD_CPU = os.environ["SERVER_CPU"], os.environ["LOAD_CPU"]
KEYS = "10000"
NICE = int(os.environ["NICE"])
# A TERM stops the server of the round in progress too (its `finally`).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def binary(name):
    if name == "before":
        return os.environ["BEFORE"]
    return os.path.join(BIN, "peer-echo" if name == "floor" else name)


def cpu_busy():
    """(user+nice+system, steal) seconds of the two CPUs."""
    times = cpu_times({int(SERVER_CPU), int(LOAD_CPU)}).values()
    return sum(b for b, _ in times), sum(s for _, s in times)


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


class Server:
    def __init__(self, name):
        self.port = free_port()
        self.log = open(os.path.join(OUT, f"{name}.log"), "w")
        cmd = ["nice", "-n", str(NICE), "taskset", "-c", SERVER_CPU, binary(name),
               "--listen", f"127.0.0.1:{self.port}", "--cores", "1"]
        if name == "floor":
            cmd += ["--engine", "epoll"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited at start-up; see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start listening")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def load(server, tag, args, nice=False, duration=DURATION, warmup="500ms"):
    json_path = os.path.join(OUT, f"{tag}.json")
    if os.path.exists(json_path):
        os.remove(json_path)
    cmd = ["nice", "-n", str(NICE + 15 if nice else NICE),
           "taskset", "-c", LOAD_CPU, os.path.join(BIN, "percore-load"),
           "--target", f"127.0.0.1:{server.port}", "--cores", "1", "--quiet",
           "--json", json_path, "--duration", duration, "--warmup", warmup] + args
    log = open(os.path.join(OUT, f"{tag}.log"), "w")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log), json_path


def result(proc, json_path, tag):
    if proc.wait() != 0:
        raise SystemExit(f"percore-load failed ({tag}); see {OUT}/{tag}.log")
    with open(json_path) as f:
        return json.load(f)


GETS = ["--workload", "get", "--keys", KEYS, "--connections", "8", "--rate", str(RATE),
        "--idle-poll", os.environ["GET_IDLE_POLL"]]
FLOOD = ["--workload", "compute", "--compute-algo", "sha256", "--compute-rounds", "200",
         "--value-size", "1024", "--connections", "8", "--pipeline", "8"]


PINGS = ["--workload", "ping"] + GETS[2:]


def get_figures(r, op="get"):
    lat, service = r["latency_us"][op], r["service_time_us"][op]
    figures = {"p50": lat["p50"] / 1000, "p99": lat["p99"] / 1000, "p999": lat["p999"] / 1000,
               "service_p99": service["p99"] / 1000, "late_sends": r["late_sends"]}
    # Requests the schedule asked for but never sent (their connection was still waiting for
    # the server) have no latency to record; over 1% of them, the run's percentiles describe
    # only the lucky rest, so the run counts as unbounded.
    if behind_schedule(r):
        figures.update({q: float("inf") for q in ("p50", "p99", "p999", "service_p99")})
    return figures


def one_round(name, rnd):
    server = Server(name)
    try:
        if name != "floor":
            cmd = ["taskset", "-c", LOAD_CPU, os.path.join(BIN, "percore-load"), "--target",
                   f"127.0.0.1:{server.port}", "--cores", "1", "--quiet", "--workload", "get",
                   "--keys", KEYS, "--prefill", "--requests", "1", "--pipeline", "16"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = {"server": name, "round": rnd}
        # Children's CPU time counts the generators once waited for; the server is not yet.
        (busy0, steal0), srv0, t0 = cpu_busy(), proc_cpu(server.proc.pid), time.monotonic()
        usage0 = os.times()

        if name == "floor":
            # The echo has no store and no Compute: pings alone, the machine's own tail.
            p, j = load(server, f"{name}-{rnd}-pings-solo", PINGS)
            out["solo"] = get_figures(result(p, j, "pings-solo"), "ping")
        else:
            p, j = load(server, f"{name}-{rnd}-gets-solo", GETS)
            out["solo"] = get_figures(result(p, j, "gets-solo"))
            p, j = load(server, f"{name}-{rnd}-compute-solo", FLOOD, nice=True)
            out["compute_solo"] = result(p, j, "compute-solo")["throughput"]
            # The flood starts first and outlasts the gets by a second on each side.
            flood_time = f"{seconds(DURATION) + 2:.3f}s"
            fp, fj = load(server, f"{name}-{rnd}-flood", FLOOD, nice=True, duration=flood_time,
                          warmup="500ms")
            time.sleep(1.5)
            p, j = load(server, f"{name}-{rnd}-gets-noisy", GETS)
            out["noisy"] = get_figures(result(p, j, "gets-noisy"))
            out["compute_noisy"] = result(fp, fj, "flood")["throughput"]
        usage1 = os.times()
        load_cpu = (usage1.children_user + usage1.children_system
                    - usage0.children_user - usage0.children_system)
        wall = time.monotonic() - t0
        busy1, steal1 = cpu_busy()
        server_cpu = proc_cpu(server.proc.pid) - srv0
        out["foreign"] = max(0.0, busy1 - busy0 - server_cpu - load_cpu) / (2 * wall)
        out["steal"] = (steal1 - steal0) / (2 * wall)
        return out
    finally:
        server.stop()


rows = []
for rnd in range(RUNS):
    order = SERVERS[rnd % len(SERVERS):] + SERVERS[: rnd % len(SERVERS)]
    for name in order:
        r = one_round(name, rnd)
        rows.append(r)
        if "noisy" in r:
            figures = (f"get p99 solo {r['solo']['p99']:.3f} ms, beside the flood "
                       f"{r['noisy']['p99']:.3f} ms; compute {r['compute_noisy']:.0f}/s of "
                       f"{r['compute_solo']:.0f}/s solo")
        else:
            figures = f"ping p99 solo {r['solo']['p99']:.3f} ms"
        print(f"noisy-neighbour: round {rnd + 1}/{RUNS} {name}: {figures}; "
              f"foreign {r['foreign']:.0%}, steal {r['steal']:.1%}", flush=True)

med = statistics.median
print()
print(f"Gets at {RATE}/s open loop (8 connections), alone and beside a Compute flood "
      f"(sha256 x200, 1 KiB, 8 x 8 in flight, nice 15); server --cores 1 on CPU {SERVER_CPU}, "
      f"generators on CPU {LOAD_CPU}; medians of {RUNS} rounds, latency in ms")
print()
print("| server | get p50 alone | p99 alone | p50 flood | p99 flood | p99.9 flood "
      "| service p99 flood | compute/s alone | compute/s flood | kept | steal |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
summary = {}
for name in SERVERS:
    rs = [r for r in rows if r["server"] == name]
    s = {"solo_p50": med(r["solo"]["p50"] for r in rs),
         "solo_p99": med(r["solo"]["p99"] for r in rs),
         "steal": med(r["steal"] for r in rs)}
    if name == "floor":
        summary[name] = s
        print(f"| floor (peer-echo, pings) | {s['solo_p50']:.3f} | {s['solo_p99']:.3f} "
              f"| - | - | - | - | - | - | - | {s['steal']:.1%} |")
        continue
    s.update({
        "p50": med(r["noisy"]["p50"] for r in rs),
        "p99": med(r["noisy"]["p99"] for r in rs),
        "p999": med(r["noisy"]["p999"] for r in rs),
        "service_p99": med(r["noisy"]["service_p99"] for r in rs),
        "compute_solo": med(r["compute_solo"] for r in rs),
        "compute_noisy": med(r["compute_noisy"] for r in rs),
        "kept": med(r["compute_noisy"] / r["compute_solo"] for r in rs),
    })
    summary[name] = s
    print(f"| {name} | {s['solo_p50']:.3f} | {s['solo_p99']:.3f} | {s['p50']:.3f} "
          f"| {s['p99']:.3f} | {s['p999']:.3f} | {s['service_p99']:.3f} | {s['compute_solo']:.0f} "
          f"| {s['compute_noisy']:.0f} | {s['kept']:.0%} | {s['steal']:.1%} |")
if "percore" in summary:
    for other in ("peer-tokio", "before"):
        if other in summary and summary["percore"]["p99"] > 0:
            print(f"\nget p99 beside the flood, {other} / percore: "
                  f"{summary[other]['p99'] / summary['percore']['p99']:.1f}x")
if any(r[part]["p99"] == float("inf") for r in rows for part in ("solo", "noisy") if part in r):
    print("\ninf: over 1% of that run's scheduled requests were never sent, as the server had "
          "not answered their connection's last one: no latency bounds it")
with open(os.path.join(OUT, "rounds.json"), "w") as f:
    json.dump({"rows": rows, "medians": summary}, f, indent=1)
print(f"\nevery round: {OUT}/rounds.json")
PY
