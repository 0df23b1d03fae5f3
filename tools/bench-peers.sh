#!/usr/bin/env bash
# percore side by side with its peers, in one run, each server capped at the same CPU share.
#
#   tools/bench-peers.sh                                 # 3 rounds of 3 s per cell (~11 min)
#   BASELINE_PERCORE=/path/to/old/percore tools/bench-peers.sh   # also today's build, as a ratio
#   RUNS=5 DURATION=5s SCENARIOS=get,set tools/bench-peers.sh    # longer, fewer cells
#
# Builds the workspace (percore, percore-load, peer-tokio, peer-echo), installs memcached and
# memcaslap (libmemcached-tools) if missing (apt-get), starts every server pinned to SERVER_CPUS
# with as many cores/threads as that has CPUs, each in its own cgroup allowed SERVER_CPU_QUOTA% of
# one CPU, and drives each with percore-load (and memcaslap) pinned to LOAD_CPUS. Every scenario
# runs for every server in turn (A B C, then B C A, ...), RUNS times, first closed loop, then open
# loop at one fixed rate per scenario: RATE_FRACTION of the slowest server's closed-loop median.
# Then the noisy neighbour: percore and peer-tokio each serving gets at NOISY_RATE/s open loop
# beside a Compute flood from a second percore-load at `nice 15`, and each of the two alone.
#
# The cap makes the server, not the generator, the bottleneck: percore-load has a whole CPU, the
# server half of one, so throughput is the server's capacity at that share. The servers' and the
# generators' cgroups get a high CPU_WEIGHT, so that other work on a shared machine takes only
# what they leave (the rest of the server's CPU beyond its quota). Each run records the
# CPU time of the server (/proc/PID/stat) and of every generator (its rusage); a cell whose
# generator used over 90% of its CPU is marked, as its figure may be the generator's. Under the
# cap it also records how long the server's cgroup was throttled (cpu.stat), which shows when a
# server loses capacity to how the quota is enforced rather than to its own work.
#
# Stalls: the machine is shared, so each run samples /proc/stat for the watched CPUs. CPU time
# spent on them by anything but the server and the generators (on the server's CPUs only past
# the time its cap leaves idle), plus steal time, divided by the run's wall time on those CPUs,
# is the run's "foreign" share; a run over STALL_LIMIT is discarded
# and retried (at most RETRIES extra runs per cell, and RETRY_SHARE of the planned runs in all, so
# a busy machine cannot stretch the run unboundedly). A cell that still has fewer than RUNS clean
# runs is reported from all its runs and marked with a dagger.
#
# Prints a markdown report (medians, ratios, goals met or not, requests per server CPU-second)
# and writes it, with every run's raw numbers, under OUT_DIR; the last open-loop round also draws
# one latency plot per scenario with every server on it (OUT_DIR/plots/SCENARIO.svg, from
# percore-load --hgrm, --plot and --plot-with). Every server it starts is killed, and every cgroup
# it makes removed, on exit.
#
# Settings (environment): RUNS [3], DURATION [3s], WARMUP [500ms], SERVER_CPUS [0], LOAD_CPUS [1],
# SERVER_CPU_QUOTA [50: % of one CPU per server; 0 for no cap], SERVER_CPU_PERIOD [2000: us],
# CPU_WEIGHT [10000: cgroup v2 weight of the servers' and generators' cgroups, other work 100],
# CONNECTIONS [32], KEYS [100000], RATE_FRACTION [0.7], STALL_LIMIT [0.05], RETRIES [1: per run],
# RETRY_SHARE [0.2: retries in all, as a share of the planned runs],
# SCENARIOS [all: ping-p1,ping-p16,get,multiget,set,mixed,compute,memcaslap,noisy],
# SERVERS [percore,percore-text,peer-tokio,peer-echo,peer-echo-uring,memcached, plus
# percore-baseline with BASELINE_PERCORE], BASELINE_PERCORE [unset: a percore binary to run as
# percore-baseline], PEER_ECHO_IDLE_POLL [100us: both echo engines' --idle-poll; 0 sleeps in the
# kernel at once], NOISY_RATE [20000], OUT_DIR [target/bench-peers], SKIP_BUILD [unset].
#
# The echo floor (peer-echo on epoll, peer-echo-uring on io_uring: no protocol, one recv or
# receive completion and one send per batch) is, in each ping cell, the faster of the two: the
# goal line says which.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUNS=${RUNS:-3} DURATION=${DURATION:-3s} WARMUP=${WARMUP:-500ms}
export SERVER_CPUS=${SERVER_CPUS:-0} LOAD_CPUS=${LOAD_CPUS:-1}
export SERVER_CPU_QUOTA=${SERVER_CPU_QUOTA:-50} SERVER_CPU_PERIOD=${SERVER_CPU_PERIOD:-2000}
export CPU_WEIGHT=${CPU_WEIGHT:-10000}
export CONNECTIONS=${CONNECTIONS:-32} KEYS=${KEYS:-100000} RATE_FRACTION=${RATE_FRACTION:-0.7}
export STALL_LIMIT=${STALL_LIMIT:-0.05} RETRIES=${RETRIES:-1} RETRY_SHARE=${RETRY_SHARE:-0.2}
export NOISY_RATE=${NOISY_RATE:-20000}
export SCENARIOS=${SCENARIOS:-ping-p1,ping-p16,get,multiget,set,mixed,compute,memcaslap,noisy}
export BASELINE_PERCORE=${BASELINE_PERCORE:-} PEER_ECHO_IDLE_POLL=${PEER_ECHO_IDLE_POLL:-100us}
default_servers=percore,percore-text,peer-tokio,peer-echo,peer-echo-uring,memcached
[[ -n "$BASELINE_PERCORE" ]] && default_servers+=,percore-baseline
export SERVERS=${SERVERS:-$default_servers}
export OUT_DIR=${OUT_DIR:-target/bench-peers}
export COMMAND_LINE="$0 $*"

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif need sudo; then sudo "$@"; else "$@"; fi; }
apt_install() { # package
  echo "bench-peers: installing $1" >&2
  if ! as_root apt-get install -y -qq "$1" >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq "$1" >/dev/null
  fi
}

if [[ ",$SERVERS," == *,memcached,* ]] && ! need memcached; then
  apt_install memcached
fi
if [[ ",$SCENARIOS," == *,memcaslap,* ]] && ! need memcaslap; then
  apt_install libmemcached-tools
fi
for tool in python3 taskset cargo nice timeout; do
  need "$tool" || { echo "bench-peers: $tool is needed" >&2; exit 1; }
done
if [[ ",$SERVERS," == *,percore-baseline,* ]] && [[ ! -x "$BASELINE_PERCORE" ]]; then
  echo "bench-peers: percore-baseline needs BASELINE_PERCORE=/path/to/percore (an executable)" >&2
  exit 1
fi
# shellcheck source=lib/server.sh
source tools/lib/server.sh
# Fail now, with the reason, if the cap cannot be made; the runner makes one cgroup per server.
if [[ "$SERVER_CPU_QUOTA" != 0 ]]; then
  cpu_cap_create "$SERVER_CPU_QUOTA" "$SERVER_CPU_PERIOD" || exit 1
  export CPU_CAP_KIND
  CPU_CAP_KIND=$(cpu_cap_kind)
  cpu_cap_remove
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  echo "bench-peers: cargo build --release --workspace" >&2
  cargo build --release --workspace --quiet
fi

mkdir -p "$OUT_DIR"
export PIDS_FILE="$OUT_DIR/server.pids" CAPS_FILE="$OUT_DIR/server.cgroups"
: >"$PIDS_FILE"
: >"$CAPS_FILE"
# The runner kills its servers and removes its cgroups itself; this catches whatever it could
# not (a kill -9 of it).
cleanup() {
  local pid cap
  while read -r pid; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done <"$PIDS_FILE"
  sleep 0.5
  while read -r cap; do
    CPU_CAP=$cap
    [ -n "$cap" ] && { cpu_cap_remove || true; }
  done <"$CAPS_FILE"
}
trap cleanup EXIT INT TERM

python3 - <<'PY'
"""The runner: starts the servers capped, runs the scenarios alternately, detects stalls,
reports medians, ratios and goals."""
import gzip
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, "tools/lib")
from bench import TICK, behind_schedule, cpu_times, free_port, seconds  # noqa: E402

env = os.environ


def setting(name, kind):
    """A numeric setting from the environment, or a clear error naming it."""
    try:
        value = kind(env[name])
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SystemExit(f"bench-peers: {name}={env[name]!r} is not {what}")
    if value < 0:
        raise SystemExit(f"bench-peers: {name}={env[name]!r} must not be negative")
    return value


RUNS = setting("RUNS", int)
DURATION = env["DURATION"]
WARMUP = env["WARMUP"]
SERVER_CPUS = env["SERVER_CPUS"]
LOAD_CPUS = env["LOAD_CPUS"]
QUOTA = setting("SERVER_CPU_QUOTA", int)
PERIOD = setting("SERVER_CPU_PERIOD", int)
WEIGHT = setting("CPU_WEIGHT", int)
CONNECTIONS = str(setting("CONNECTIONS", int))
KEYS = str(setting("KEYS", int))
RATE_FRACTION = setting("RATE_FRACTION", float)
STALL_LIMIT = setting("STALL_LIMIT", float)
RETRIES = setting("RETRIES", int)
RETRY_SHARE = setting("RETRY_SHARE", float)
NOISY_RATE = setting("NOISY_RATE", int)
OUT_DIR = env["OUT_DIR"]
PIDS_FILE = env["PIDS_FILE"]
CAPS_FILE = env["CAPS_FILE"]
BASELINE = env.get("BASELINE_PERCORE", "")
# Where `cargo build --release` put the binaries.
BIN = os.path.join(env.get("CARGO_TARGET_DIR") or "target", "release")
LIB = "tools/lib/server.sh"
# A generator over this share of its CPU may be what sets the pace, not the server.
GENERATOR_LIMIT = 0.9


def cpu_list(spec):
    cpus = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(f"bench-peers: {spec!r} is not a CPU list such as 0 or 0,2-3")
    if not cpus:
        raise SystemExit(f"bench-peers: the CPU list {spec!r} is empty")
    return cpus


SERVER_CPU_LIST = cpu_list(SERVER_CPUS)
LOAD_CPU_LIST = cpu_list(LOAD_CPUS)
WATCHED_CPUS = sorted(set(SERVER_CPU_LIST) | set(LOAD_CPU_LIST))
SPLIT_CPUS = not set(SERVER_CPU_LIST) & set(LOAD_CPU_LIST)
CORES = len(SERVER_CPU_LIST)
# CPU-seconds per second on the server's CPUs that a capped server leaves to others.
IDLE_UNDER_CAP = max(0.0, CORES - QUOTA / 100) if QUOTA else 0.0

# A target is what a generator talks to: a server process and one of its protocols. percore-text
# is the same percore process as `percore`, over its memcached listener (same store, same cap).
# target -> (process, protocol)
TARGET_ORDER = ["percore", "percore-text", "percore-baseline", "peer-tokio", "peer-echo",
                "peer-echo-uring", "memcached"]
# The echo engines, the floor under percore's protocol (no store, no protocol, ping only).
ECHOES = ["peer-echo", "peer-echo-uring"]
TARGETS = {
    "percore": ("percore", "percore"),
    "percore-text": ("percore", "memcached"),
    "percore-baseline": ("percore-baseline", "percore"),
    "peer-tokio": ("peer-tokio", "percore"),
    "peer-echo": ("peer-echo", "percore"),
    "peer-echo-uring": ("peer-echo-uring", "percore"),
    "memcached": ("memcached", "memcached"),
}
SERVERS = [t for t in TARGET_ORDER if t in env["SERVERS"].split(",")]
PROCESSES = list(dict.fromkeys(TARGETS[t][0] for t in SERVERS))
# The ratios every table shows: (numerator, denominator, what it compares).
RATIOS = [("percore", "peer-tokio"), ("percore", "peer-echo"), ("percore", "peer-echo-uring"),
          ("percore", "percore-baseline"),
          ("percore", "percore-text"), ("percore-text", "memcached")]
RATIOS = [(a, b) for a, b in RATIOS if a in SERVERS and b in SERVERS]

KV = ["--keys", KEYS, "--key-size", "16", "--value-size", "100"]
# name, title, targets that can run it, generator arguments, needs the keys prefilled.
# A memcaslap scenario's arguments are memcaslap's, after -s and -t.
SCENARIOS_ALL = [
    ("ping-p1", "ping, pipeline 1", ["percore", "percore-baseline", "peer-tokio"] + ECHOES,
     ["--workload", "ping", "--value-size", "16", "--pipeline", "1"], False),
    ("ping-p16", "ping, pipeline 16", ["percore", "percore-baseline", "peer-tokio"] + ECHOES,
     ["--workload", "ping", "--value-size", "16", "--pipeline", "16"], False),
    ("get", "get, 100% hits, p16 (single gets)",
     ["percore", "percore-text", "percore-baseline", "peer-tokio", "memcached"],
     ["--workload", "get", "--pipeline", "16"] + KV, True),
    # One multi-get of 16 keys in flight per connection: how memcached clients batch; ops = keys.
    ("multiget", "get, 100% hits, multi-get of 16 keys, p1", ["percore-text", "memcached"],
     ["--workload", "get", "--multiget", "16", "--pipeline", "1"] + KV, True),
    ("set", "set, p16", ["percore", "percore-text", "peer-tokio", "memcached"],
     ["--workload", "set", "--pipeline", "16"] + KV, False),
    ("mixed", "mixed get:90,set:10 zipf 0.99, p16", ["percore", "peer-tokio", "memcached"],
     ["--workload", "mixed", "--mix", "get:90,set:10", "--key-dist", "zipf:0.99",
      "--pipeline", "16"] + KV, True),
    # Pipeline 4: 128 requests in flight stay under percore's compute queue of 256 per core.
    ("compute", "compute sha256 1 KiB, p4", ["percore", "peer-tokio"],
     ["--workload", "compute", "--compute-algo", "sha256", "--value-size", "1024",
      "--pipeline", "4"], False),
    # memcaslap's own mix (get:set 9:1, its keys and 100-byte values), one request in flight per
    # concurrency; closed loop only.
    ("memcaslap", "memcaslap get:set 9:1, 100 B values", ["percore-text", "memcached"],
     ["-T", "1", "-c", CONNECTIONS, "-X", "100"], False),
]
wanted = env["SCENARIOS"].split(",")
unknown = [w for w in wanted if w not in [s[0] for s in SCENARIOS_ALL] + ["noisy"]]
unknown += [t for t in env["SERVERS"].split(",") if t not in TARGETS]
if unknown:
    raise SystemExit(f"bench-peers: unknown scenario or server {', '.join(unknown)}; see the "
                     "settings at the top of tools/bench-peers.sh")
SCENARIOS = [s for s in SCENARIOS_ALL if s[0] in wanted]
OPEN_SCENARIOS = [s for s in SCENARIOS if s[0] != "memcaslap"]
NOISY = "noisy" in wanted
# The noisy neighbour: gets open loop beside a Compute flood at nice 15 (both generators on
# LOAD_CPUS), on each of these.
NOISY_SERVERS = [s for s in ("percore", "peer-tokio") if s in SERVERS]
NOISY_GETS = ["--workload", "get", "--rate", str(NOISY_RATE), "--pipeline", "16"] + KV
NOISY_FLOOD = ["--workload", "compute", "--compute-algo", "sha256", "--compute-rounds", "200",
               "--value-size", "1024", "--pipeline", "8"]


def log(msg):
    print(f"bench-peers: {msg}", file=sys.stderr, flush=True)


def lib(script, *args):
    """Runs SCRIPT in bash with tools/lib/server.sh sourced (the cap code is written once,
    there); returns its stdout, or exits with its stderr."""
    r = subprocess.run(["bash", "-c", f"source {LIB} && {script}", "lib"] + list(args),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench-peers: {r.stderr.strip() or script + ' failed'}")
    return r.stdout.strip()


def joined(cap, argv):
    """ARGV run inside the cgroup CAP from its first instruction: a shell joins it (through the
    library), then execs ARGV, so the pid, and so the rusage, stay ARGV's. No cgroup if CAP is
    empty."""
    return ["bash", "-c", f'source {LIB} && CPU_CAP="$1" && shift && cpu_cap_add $$ && exec "$@"',
            "cap", cap] + argv


def make_group(script, *args):
    cap = lib(f'{script} && cpu_weight_set "$CPU_WEIGHT" && echo "$CPU_CAP"', *args)
    with open(CAPS_FILE, "a") as f:
        f.write(f"{cap}\n")
    return cap


def remove_group(cap):
    if cap:
        lib('CPU_CAP="$1" && cpu_cap_remove', cap)


# The generators' cgroup: no quota, the same high weight as the servers', so that other work on
# LOAD_CPUS does not starve them (made in main when the servers are capped).
LOAD_GROUP = ""


def server_command(name, ports):
    addr = f"127.0.0.1:{ports[0]}"
    if name == "memcached":
        cmd = ["memcached", "-l", "127.0.0.1", "-p", str(ports[0]), "-t", str(CORES),
               "-m", "1024", "-c", "4096"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        return cmd
    if name in ECHOES:
        # The floor: a thread per core on epoll or io_uring, one recv (or receive completion)
        # and one send per batch, no protocol.
        engine = "uring" if name == "peer-echo-uring" else "epoll"
        return [f"{BIN}/peer-echo", "--listen", addr, "--cores", str(CORES), "--engine", engine,
                "--idle-poll", env["PEER_ECHO_IDLE_POLL"]]
    if name == "percore":
        return [f"{BIN}/percore", "--listen", addr, "--cores", str(CORES),
                "--memcached-listen", f"127.0.0.1:{ports[1]}"]
    if name == "percore-baseline":
        return [BASELINE, "--listen", addr, "--cores", str(CORES)]
    return [f"{BIN}/{name}", "--listen", addr, "--cores", str(CORES)]


class Server:
    """One server process, pinned to SERVER_CPUS, in its own capped cgroup from its first
    instruction (the wrapper joins the cgroup, then execs the server)."""

    def __init__(self, name):
        self.name = name
        self.ports = [free_port(), free_port()]
        self.cap = make_group('cpu_cap_create "$1" "$2"', str(QUOTA), str(PERIOD)) if QUOTA else ""
        self.log_path = os.path.join(OUT_DIR, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(joined(self.cap, ["taskset", "-c", SERVER_CPUS]
                                            + server_command(name, self.ports)),
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        with open(PIDS_FILE, "a") as f:
            f.write(f"{self.proc.pid}\n")
        listening = self.ports[:2] if name == "percore" else self.ports[:1]
        deadline = time.monotonic() + 20
        for port in listening:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{name} exited at start-up; see {self.log_path}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} did not start listening; see {self.log_path}")
                    time.sleep(0.05)

    def throttled_seconds(self):
        """Seconds the server's cgroup has spent throttled (its quota used up, waiting for the
        next period), or None without a cap: cpu.stat's throttled_usec (v2) or throttled_time
        (v1, ns)."""
        if not self.cap:
            return None
        try:
            with open(os.path.join(self.cap, "cpu.stat")) as f:
                stat = dict(line.split()[:2] for line in f if len(line.split()) >= 2)
        except OSError:
            return None
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1e6
        if "throttled_time" in stat:
            return int(stat["throttled_time"]) / 1e9
        return None

    def cpu_seconds(self):
        # utime + stime of the whole process (all threads): fields 14 and 15 of /proc/PID/stat.
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        remove_group(self.cap)


class Target:
    def __init__(self, name, server):
        self.name = name
        self.server = server
        self.protocol = TARGETS[name][1]
        uses_text = name == "percore-text"
        self.port = server.ports[1] if uses_text else server.ports[0]


def load_command(target, extra, json_path, rate=None, connections=CONNECTIONS):
    cmd = joined(LOAD_GROUP, ["taskset", "-c", LOAD_CPUS]) + [f"{BIN}/percore-load",
           "--target", f"127.0.0.1:{target.port}", "--cores", "1",
           "--connections", connections, "--quiet", "--json", json_path]
    if target.protocol != "percore":
        cmd += ["--protocol", target.protocol]
    if rate is not None:
        cmd += ["--rate", str(int(rate))]
    return cmd + extra


def memcaslap_command(target, extra):
    # memcaslap takes whole seconds; it has no warm-up (it fills its keys as it goes).
    secs = max(1, round(seconds(DURATION)))
    return ["timeout", str(secs + 30)] + joined(LOAD_GROUP, ["taskset", "-c", LOAD_CPUS]) + [
        "memcaslap", "-s", f"127.0.0.1:{target.port}", "-t", f"{secs}s"] + extra


def measure(server, jobs, tag):
    """Runs the generator commands JOBS [(name, argv, json_path or None)] at once against
    SERVER; returns per job its exit, rusage CPU and output, plus the run's CPU accounting."""
    out_path = os.path.join(OUT_DIR, "load.log")
    for _name, _args, json_path in jobs:
        if json_path and os.path.exists(json_path):
            os.remove(json_path)
    stat0, srv0, t0 = cpu_times(WATCHED_CPUS), server.cpu_seconds(), time.monotonic()
    throttled0 = server.throttled_seconds()
    procs = {}
    with open(out_path, "a") as out:
        for name, args, _ in jobs:
            out.write(f"\n=== {tag} [{name}]: {' '.join(args)}\n")
            out.flush()
            capture = subprocess.PIPE if args[0] == "timeout" else out
            procs[name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=capture,
                                           stderr=out, text=True)
        results = {}
        for name, args, json_path in jobs:
            p = procs[name]
            text = p.stdout.read() if p.stdout else ""
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            if text:
                out.write(text)
            r = {}
            if json_path and os.path.exists(json_path):
                with open(json_path) as f:
                    r = json.load(f)
            elif text:
                m = re.search(r"TPS:\s*(\d+)", text)
                if m:
                    r = {"throughput": float(m.group(1)), "mode": "closed"}
            r.update({"exit": p.returncode, "load_cpu_s": usage.ru_utime + usage.ru_stime})
            results[name] = r
    wall = time.monotonic() - t0
    stat1, srv1 = cpu_times(WATCHED_CPUS), server.cpu_seconds()
    throttled1 = server.throttled_seconds()
    def busy(cpus):
        return sum(stat1[c][0] - stat0[c][0] for c in cpus)
    steal = sum(stat1[c][1] - stat0[c][1] for c in WATCHED_CPUS)
    server_cpu = srv1 - srv0
    load_cpu = sum(r["load_cpu_s"] for r in results.values())
    if SPLIT_CPUS:
        # Server and generators pinned apart: other work on the server's CPUs counts only past
        # what the cap leaves idle, since the server could not have used that time anyway.
        on_server = max(0.0, busy(SERVER_CPU_LIST) - server_cpu)
        on_load = max(0.0, busy(LOAD_CPU_LIST) - load_cpu)
        foreign = max(0.0, on_server - wall * IDLE_UNDER_CAP) + on_load
    else:
        foreign = max(0.0, busy(WATCHED_CPUS) - server_cpu - load_cpu)
    run = {"wall_s": wall, "server_cpu_s": server_cpu, "foreign_s": foreign, "steal_s": steal,
           "foreign_share": (foreign + steal) / (wall * len(WATCHED_CPUS)),
           "throttled_s": (throttled1 - throttled0
                           if throttled0 is not None and throttled1 is not None else None)}
    for r in results.values():
        r.update(run)
    return results


def run_load(target, args, tag):
    json_path = os.path.join(OUT_DIR, "last.json")
    return measure(target.server, [("load", args, json_path)], tag)["load"]


def prefill(target):
    """Writes every key once over the target's protocol (percore-load --prefill)."""
    args = load_command(target, ["--workload", "get", "--prefill", "--requests", "1",
                                 "--pipeline", "16"] + KV, os.path.join(OUT_DIR, "prefill.json"))
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"prefill of {target.name} failed: {r.stdout[-500:]} {r.stderr[-500:]}")


def median(xs):
    return statistics.median(xs) if xs else None


def rotated(names, run):
    # Rotate who goes first, so no server always runs right after the same one.
    k = run % len(names) if names else 0
    return names[k:] + names[:k]


class RetryBudget:
    """Stalled runs are retried only while the retries stay under RETRY_SHARE of the planned
    runs, so a busy machine lengthens the whole run by at most that share."""

    def __init__(self):
        self.left = 0

    def plan(self, runs):
        self.left = int(runs * RETRY_SHARE)

    def take(self):
        if self.left <= 0:
            return False
        self.left -= 1
        return True


RETRY_BUDGET = RetryBudget()


def planned_runs():
    """Generator runs the settings ask for, before retries: closed, open and noisy."""
    def cells(scenarios):
        return sum(len([s for s in SERVERS if s in can]) for _n, _t, can, *_ in scenarios)
    return RUNS * (cells(SCENARIOS) + cells(OPEN_SCENARIOS) + (3 * len(NOISY_SERVERS) if NOISY else 0))


def classify(cell, r, tag):
    ok = r["exit"] == 0 and "throughput" in r
    stalled = r["foreign_share"] > STALL_LIMIT
    kind = "failed" if not ok else ("stalled" if stalled else "clean")
    cell[kind].append(r)
    log(f"{tag}: {r.get('throughput', 0):,.0f} ops/s, server CPU "
        f"{r['server_cpu_s'] / r['wall_s']:.0%}, generator CPU "
        f"{r['load_cpu_s'] / r['wall_s']:.0%}, foreign "
        f"{r['foreign_share']:.1%}{'' if kind == 'clean' else ' -> ' + kind}")
    return kind


def run_matrix(targets, mode, rates):
    """Every scenario for every target, RUNS times, targets alternating; returns cells."""
    cells = {}  # (scenario, target) -> {"clean": [...], "stalled": [...], "failed": [...]}
    scenarios = SCENARIOS if mode == "closed" else OPEN_SCENARIOS
    for run in range(RUNS):
        for name, _title, can, extra, _needs in scenarios:
            names = rotated([s for s in SERVERS if s in can], run)
            for sname in names:
                target = targets[sname]
                cell = cells.setdefault((name, sname), {"clean": [], "stalled": [], "failed": []})
                rate = rates.get(name) if mode == "open" else None
                warm = ["--duration", DURATION, "--warmup", WARMUP]
                if mode == "open" and run == RUNS - 1:
                    warm += plot_args(name, sname, names)
                for attempt in range(RETRIES + 1):
                    tag = f"{mode} {name} {sname} run {run + 1} attempt {attempt + 1}"
                    if name == "memcaslap":
                        cmd = memcaslap_command(target, extra)
                    else:
                        cmd = load_command(target, extra + warm,
                                           os.path.join(OUT_DIR, "last.json"), rate)
                    r = run_load(target, cmd, tag)
                    r["run"], r["attempt"] = run + 1, attempt + 1
                    if classify(cell, r, tag) != "stalled" or not RETRY_BUDGET.take():
                        break
    return cells


def run_noisy(targets):
    """For each of NOISY_SERVERS, RUNS rounds alternating: gets alone, the flood alone, both.
    Cells: (part, server) with part gets-solo, flood-solo, gets-flooded, flood-with-gets."""
    cells = {}
    warm = ["--duration", DURATION, "--warmup", WARMUP]
    for run in range(RUNS):
        for sname in rotated(NOISY_SERVERS, run):
            target = targets[sname]
            gets = ("gets", load_command(target, NOISY_GETS + warm,
                                         os.path.join(OUT_DIR, "gets.json"), connections="8"),
                    os.path.join(OUT_DIR, "gets.json"))
            flood_cmd = load_command(target, NOISY_FLOOD + warm,
                                     os.path.join(OUT_DIR, "flood.json"), connections="8")
            # The flood's generator at nice 15, as a background job would be.
            flood = ("flood", ["nice", "-n", "15"] + flood_cmd, os.path.join(OUT_DIR, "flood.json"))
            for part, jobs in (("solo", [gets]), ("solo", [flood]), ("both", [flood, gets])):
                for attempt in range(RETRIES + 1):
                    tag = f"noisy {part} {'+'.join(j[0] for j in jobs)} {sname} run {run + 1}"
                    rs = measure(target.server, jobs, tag)
                    kinds = []
                    for job, r in rs.items():
                        r["run"], r["attempt"] = run + 1, attempt + 1
                        key = (f"{job}-{part}", sname)
                        cell = cells.setdefault(key, {"clean": [], "stalled": [], "failed": []})
                        kinds.append(classify(cell, r, f"{tag} [{job}]"))
                    if "stalled" not in kinds or not RETRY_BUDGET.take():
                        break
    return cells


PLOTS = os.path.join(OUT_DIR, "plots")


def plot_args(scenario, sname, names):
    """The last open-loop round writes each server's distribution (--hgrm) under
    plots/SCENARIO/, and the round's last server draws plots/SCENARIO.svg with every earlier
    server's distribution overlaid (--plot-with): one picture per scenario, every server on it.
    Only files that exist are overlaid, so a failed run of one server cannot fail another's."""
    folder = os.path.join(PLOTS, scenario)
    os.makedirs(folder, exist_ok=True)
    args = ["--hgrm", os.path.join(folder, f"{sname}.hgrm")]
    if sname != names[-1]:
        return args
    overlays = []
    for other in names[:-1]:
        files = sorted(f for f in os.listdir(folder)
                       if f.startswith(other + ".") and f.endswith(".hgrm"))
        per_op = [f for f in files if f != f"{other}.hgrm"]
        overlays += [os.path.join(folder, f) for f in (per_op or files)]
    # A log latency axis: servers a scenario compares can differ by orders of magnitude.
    args += ["--plot", os.path.join(PLOTS, f"{scenario}.svg"), "--plot-label", sname,
             "--plot-y", "log"]
    if overlays:
        args += ["--plot-with", ",".join(overlays)]
    return args


def usable(cell):
    """The runs a cell's median is taken from, and whether it is short of clean runs."""
    if len(cell["clean"]) >= RUNS or not cell["stalled"]:
        return cell["clean"], False
    return cell["clean"] + cell["stalled"], True


def stat(cell, f):
    if cell is None:
        return None, False, 0
    runs, noisy = usable(cell)
    vals = [v for v in (f(r) for r in runs) if v is not None]
    return median(vals), noisy, len(runs)


def throughput(r):
    return r["throughput"]


def per_cpu_second(r):
    # Throughput over the measured window divided by the server's average CPU use over the
    # whole run (warm-up included, same load): requests per second of server CPU.
    used = r["server_cpu_s"] / r["wall_s"]
    return r["throughput"] / used if used > 0 else None


def kernel_tick():
    """The scheduler tick, from the running kernel's config if it is readable."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    hz = int(line.split("=")[1])
                    return f"every {1000 / hz:g} ms here, HZ={hz}"
    except (OSError, ValueError):
        pass
    return "every 1/HZ s"


def throttled_share(r):
    t = r.get("throttled_s")
    return 100 * t / r["wall_s"] if t is not None else None


def generator_share(r):
    return r["load_cpu_s"] / r["wall_s"]


def latency(q):
    # The operation with the most replies (get in the mixed workload) speaks for the run.
    def f(r):
        if "latency_us" not in r:
            return None
        main_op = max(r["latency_us"].values(), key=lambda v: v["count"])
        return main_op[q]
    return f


def behind(cell):
    """Whether an open-loop cell fell behind its schedule: over 1% of the requests it should
    have sent were never sent, so the rate was more than this server and generator sustain
    and its latencies are queueing, not service."""
    runs, _ = usable(cell)
    return any(r.get("mode") == "open" and behind_schedule(r) for r in runs)


def generator_bound(cell):
    share = stat(cell, generator_share)[0]
    return share is not None and share > GENERATOR_LIMIT


def fmt_num(v, unit=""):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}"


def table(cells, f, header, scenarios, marks=True):
    cols = ["scenario"] + SERVERS + [f"{a} ÷ {b}" for a, b in RATIOS]
    lines = [f"**{header}**", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for name, title, can, _extra, _needs in scenarios:
        row = [title]
        values = {}
        for s in SERVERS:
            cell = cells.get((name, s))
            if cell is None or s not in can:
                row.append("—")
                continue
            v, noisy, _n = stat(cell, f)
            values[s] = v
            mark = ""
            if marks:
                mark = ((" †" if noisy else "") + (" ‡" if behind(cell) else "")
                        + (" §" if generator_bound(cell) else ""))
            row.append("failed" if v is None else fmt_num(v) + mark)
        for a, b in RATIOS:
            va, vb = values.get(a), values.get(b)
            row.append(f"{va / vb:.2f}x" if va and vb else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def noisy_table(cells):
    head = ["server", "get p50 µs alone", "p99 alone", "p99.9 alone", "get p50 µs with flood",
            "p99 with flood", "p99.9 with flood", "compute ops/s alone", "compute with gets",
            "compute kept"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for s in NOISY_SERVERS:
        row = [s]
        for part in ("gets-solo", "gets-both"):
            cell = cells.get((part, s))
            for q in ("p50", "p99", "p999"):
                v, noisy, _ = stat(cell, latency(q))
                mark = (" †" if noisy else "") + (" ‡" if cell and behind(cell) else "")
                row.append(fmt_num(v) + (mark if v is not None else ""))
        solo = stat(cells.get(("flood-solo", s)), throughput)
        both = stat(cells.get(("flood-both", s)), throughput)
        row += [fmt_num(solo[0]) + (" †" if solo[1] else ""),
                fmt_num(both[0]) + (" †" if both[1] else ""),
                f"{both[0] / solo[0]:.0%}" if solo[0] and both[0] else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mc = subprocess.run(["memcached", "-V"], capture_output=True, text=True).stdout.strip() \
        if "memcached" in SERVERS else "not run"
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, {rustc}, {mc}; "
            f"load average at start {os.getloadavg()[0]:.2f}")


def goals(closed, opened, noisy):
    rows = []

    def value(cells, scen, target, f):
        return stat(cells.get((scen, target)), f)[0]

    def ratio(cells, scen, a, b, f=throughput):
        va, vb = value(cells, scen, a, f), value(cells, scen, b, f)
        return va / vb if va and vb else None

    def check(what, v, ok, unit="x"):
        if v is None:
            rows.append(f"| {what} | — | not run |")
        else:
            shown = f"{v:.2f}x" if unit == "x" else (f"{v:.0%}" if unit == "%" else fmt_num(v, unit))
            rows.append(f"| {what} | {shown} | {'met' if ok(v) else '**not met**'} |")

    flooded_p99 = value(noisy, "gets-both", "percore", latency("p99"))
    check("noisy neighbour: percore get p99 with the flood ≤ 2 ms", flooded_p99,
          lambda v: v <= 2000, " µs")
    check("noisy neighbour: percore ÷ peer-tokio get p99 with the flood ≤ 0.10",
          ratio(noisy, "gets-both", "percore", "peer-tokio", latency("p99")), lambda r: r <= 0.1)
    kept = None
    solo, both = value(noisy, "flood-solo", "percore", throughput), \
        value(noisy, "flood-both", "percore", throughput)
    if solo and both:
        kept = both / solo
    check("noisy neighbour: percore compute with gets ÷ alone ≥ 50%", kept,
          lambda r: r >= 0.5, "%")
    for scen, want in (("multiget", 1.3), ("set", 1.3), ("get", 5.0)):
        check(f"{scen}: percore-text ÷ memcached ≥ {want}",
              ratio(closed, scen, "percore-text", "memcached"), lambda r, w=want: r >= w)
    for scen in ("get", "set"):
        check(f"{scen}: percore (FlatBuffers) ÷ percore-text (memcached text) ≥ 1.2",
              ratio(closed, scen, "percore", "percore-text"), lambda r: r >= 1.2)
    for scen in ("ping-p1", "ping-p16"):
        # The floor is the faster echo engine of this cell.
        floors = [(value(closed, scen, e, throughput), e) for e in ECHOES]
        floors = [(v, e) for v, e in floors if v]
        floor = max(floors)[1] if floors else "the echo floor"
        check(f"{scen}: percore ÷ {floor} (the faster echo) ≥ 0.85",
              ratio(closed, scen, "percore", floor) if floors else None, lambda r: r >= 0.85)
    for scen in ("ping-p16", "get"):
        check(f"{scen}: percore ÷ percore-baseline (today's build) ≥ 1.2",
              ratio(closed, scen, "percore", "percore-baseline"), lambda r: r >= 1.2)
    for name, *_ in SCENARIOS:
        if (name, "percore") in closed and (name, "peer-tokio") in closed:
            check(f"{name}: percore ÷ peer-tokio ≥ 0.97 (never below)",
                  ratio(closed, name, "percore", "peer-tokio"), lambda r: r >= 0.97)
    return "\n".join(["| goal (closed loop throughput unless said) | measured | |",
                      "|---|---:|---|"] + rows)


def main():
    global LOAD_GROUP
    os.makedirs(OUT_DIR, exist_ok=True)
    started = datetime.now(timezone.utc)
    about = machine()
    servers = {}
    planned = planned_runs()
    RETRY_BUDGET.plan(planned)
    per_run = seconds(DURATION) + seconds(WARMUP) + 0.2
    log(f"{planned} runs planned, about {planned * per_run / 60:.0f} min, plus at most "
        f"{RETRY_BUDGET.left} retries of stalled runs")
    try:
        if QUOTA:
            LOAD_GROUP = make_group("cpu_group_create")
        for p in PROCESSES:
            servers[p] = Server(p)
            log(f"{p} listening on 127.0.0.1:{servers[p].ports[0]} (CPUs {SERVER_CPUS}"
                + (f", cgroup {servers[p].cap})" if servers[p].cap else ", no cap)"))
        targets = {t: Target(t, servers[TARGETS[t][0]]) for t in SERVERS}
        needs_keys = any(needs for *_, needs in SCENARIOS) or NOISY
        if needs_keys:
            for t in SERVERS:
                if t not in ECHOES:
                    prefill(targets[t])
        closed = run_matrix(targets, "closed", {})
        rates = {}
        for name, *_ in OPEN_SCENARIOS:
            meds = [stat(c, throughput)[0] for (n, _s), c in closed.items() if n == name]
            meds = [m for m in meds if m]
            if meds:
                rates[name] = max(1, int(min(meds) * RATE_FRACTION))
        opened = run_matrix(targets, "open", rates)
        noisy = run_noisy(targets) if NOISY else {}
    finally:
        for s in servers.values():
            s.stop()
        remove_group(LOAD_GROUP)
        # All stopped: the shell's exit trap must not signal these (possibly reused) pids.
        open(PIDS_FILE, "w").close()
        open(CAPS_FILE, "w").close()
    finished = datetime.now(timezone.utc)

    every = list(closed.values()) + list(opened.values()) + list(noisy.values())
    discarded = sum(len(c["stalled"]) for c in every)
    failed = sum(len(c["failed"]) for c in every)
    total = sum(len(c[k]) for c in every for k in ("clean", "stalled", "failed"))
    rate_line = ", ".join(f"{n} {fmt_num(r)}/s" for n, r in rates.items())
    cap = (f"each capped at **{QUOTA}% of one CPU** in its own cgroup "
           f"({env.get('CPU_CAP_KIND', '?')}, {QUOTA * PERIOD // 100} µs every {PERIOD} µs, "
           f"weight {WEIGHT} against other work's 100; the generators' cgroup has the same weight "
           "and no quota)"
           if QUOTA else "**uncapped** (SERVER_CPU_QUOTA=0)")
    baseline = f"; percore-baseline is `{BASELINE}`" if "percore-baseline" in SERVERS else ""
    report = [
        f"### tools/bench-peers.sh, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{env['COMMAND_LINE'].strip()}` with RUNS={RUNS} DURATION={DURATION} "
        f"WARMUP={WARMUP} CONNECTIONS={CONNECTIONS} SERVER_CPU_QUOTA={QUOTA} "
        f"SERVER_CPU_PERIOD={PERIOD} CPU_WEIGHT={WEIGHT} STALL_LIMIT={STALL_LIMIT}"
        + (f" BASELINE_PERCORE={BASELINE}" if BASELINE else ""),
        "",
        f"Started {started:%Y-%m-%d %H:%M} UTC, took "
        f"{(finished - started).total_seconds() / 60:.1f} min. Machine: {about}.",
        "",
        f"Servers on CPU(s) {SERVER_CPUS} (`--cores {CORES}`, memcached `-t {CORES}`), {cap}; "
        f"percore-load (and memcaslap) on CPU(s) {LOAD_CPUS}, {CONNECTIONS} connections. "
        f"percore-text is the same percore process over its `--memcached-listen` text "
        f"protocol{baseline}. {total} runs: {discarded} discarded as stalled (other work's CPU, "
        "on the server's CPU only past what its cap leaves idle, plus steal, over "
        f"{STALL_LIMIT:.0%} of the two CPUs' time), {failed} failed.",
        "",
        "Medians of the clean runs of alternating rounds; † = fewer than RUNS clean runs, median "
        "of all runs; ‡ = open loop fell behind (over 1% of scheduled requests unsent: "
        f"saturated); § = the generator used over {GENERATOR_LIMIT:.0%} of its CPU (the figure "
        "may be the generator's, not the server's). Ratios are A ÷ B: above 1, A is faster "
        "(throughput) or slower (latency). The machine is shared with other work: figures are "
        "noisy, ratios from the same run are what to compare.",
        "",
        table(closed, throughput, "Closed loop: throughput, ops/s (multi-get: keys/s)", SCENARIOS),
        "",
        table(closed, per_cpu_second,
              "Closed loop: requests per server CPU-second (throughput ÷ server CPU use)",
              SCENARIOS, marks=False),
        "",
        table(closed, lambda r: 100 * generator_share(r),
              "Closed loop: generator CPU use (rusage), % of one CPU", SCENARIOS, marks=False),
        "",
        table(closed, lambda r: 100 * r["server_cpu_s"] / r["wall_s"],
              "Closed loop: server CPU use, % of one CPU", SCENARIOS, marks=False),
        "",
    ]
    if QUOTA:
        report += [
            table(closed, throttled_share,
                  "Closed loop: time the server's cgroup spent throttled, % of the run",
                  SCENARIOS, marks=False),
            "",
            "A server that used its whole quota in every period would use "
            f"{QUOTA}% of a CPU and be throttled for {100 - QUOTA}% of the time. The kernel "
            "charges a running task's CPU to its cgroup's quota when the scheduler next looks: "
            f"at a sleep, a wake-up on its CPU, or a scheduler tick ({kernel_tick()}). A server "
            "that polls instead of sleeping can so overrun a period's quota and stay throttled "
            "past the period's end while the overrun is paid back; a throttled share over "
            f"{100 - QUOTA}% with CPU use under {QUOTA}% is what that looks like.",
            "",
        ]
    report += [
        f"Open loop at {RATE_FRACTION:.0%} of the slowest server's closed-loop median: "
        f"{rate_line}.",
        "",
        table(opened, latency("p50"), "Open loop: p50 latency, µs (from intended send time)",
              OPEN_SCENARIOS),
        "",
        table(opened, latency("p99"), "Open loop: p99 latency, µs", OPEN_SCENARIOS),
        "",
        table(opened, latency("p999"), "Open loop: p99.9 latency, µs", OPEN_SCENARIOS),
        "",
        table(opened, lambda r: 100 * r["server_cpu_s"] / r["wall_s"],
              "Open loop: server CPU use, % of one CPU", OPEN_SCENARIOS, marks=False),
        "",
    ]
    if NOISY:
        report += [
            f"**Noisy neighbour**: gets open loop at {NOISY_RATE:,}/s (8 connections, p16) alone, "
            "and beside a Compute flood (sha256, 200 rounds, 1 KiB input, 8 connections x 8 in "
            "flight, closed loop, its generator at `nice 15`), and the flood alone; both "
            f"generators on CPU(s) {LOAD_CPUS}, the server under the same cap.",
            "",
            noisy_table(noisy),
            "",
        ]
    report += [
        "**Goals** (same-run medians)",
        "",
        goals(closed, opened, noisy),
        "",
        "**Latency plots** (last open-loop round, written by the run, not committed: x the "
        "percentile on the 1/(1-p) scale, y the latency from the intended send time; the server "
        "drawn last also has its service time from the actual send, dashed)",
        "",
    ] + [f"- {title}: `{OUT_DIR}/plots/{name}.svg`"
         for name, title, *_ in OPEN_SCENARIOS
         if os.path.exists(os.path.join(PLOTS, f"{name}.svg"))]
    text = "\n".join(report) + "\n"
    print(text)
    with open(os.path.join(OUT_DIR, "report.md"), "w") as f:
        f.write(text)
    raw = {f"{mode} {n} {s}": c for mode, cells in
           (("closed", closed), ("open", opened), ("noisy", noisy))
           for (n, s), c in cells.items()}
    with open(os.path.join(OUT_DIR, "runs.json"), "w") as f:
        json.dump({"rates": rates, "cells": raw}, f, indent=1)
    log(f"report in {OUT_DIR}/report.md, every run in {OUT_DIR}/runs.json")


main()
PY
