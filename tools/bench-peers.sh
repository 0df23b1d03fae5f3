#!/usr/bin/env bash
# percore side by side with its peers, in one run, on the same CPU budget.
#
#   tools/bench-peers.sh                      # 3 runs of 5 s per scenario and server (~11 min)
#   RUNS=5 DURATION=10s tools/bench-peers.sh  # longer
#
# Builds the workspace (percore, percore-load, peer-tokio, peer-echo), installs memcached if it
# is missing (apt-get), starts every server pinned to SERVER_CPUS with as many cores/threads as
# that has CPUs, and drives each with percore-load pinned to LOAD_CPUS. Every scenario runs for
# every server in turn (A B C, then B C A, ...), RUNS times, first closed loop, then open loop at
# one fixed rate per scenario: RATE_FRACTION of the slowest server's closed-loop median.
#
# Stalls: the machine is shared, so each run samples /proc/stat for the two CPUs and the CPU time
# of the server (/proc/PID/stat) and of the load generator (its rusage). CPU time spent on those
# CPUs by anything else, plus steal time, divided by the run's wall time on those CPUs, is the
# run's "foreign" share; a run over STALL_LIMIT is discarded and retried (at most RETRIES extra
# runs per cell). A cell that still has fewer than RUNS clean runs is reported from all its runs
# and marked with a dagger.
#
# Prints a markdown report (medians, ratios percore / peer, requests per server CPU-second) and
# writes it, with every run's raw numbers, under OUT_DIR; the last open-loop round also draws one
# latency plot per scenario with every server on it (OUT_DIR/plots/SCENARIO.svg, from
# percore-load --hgrm, --plot and --plot-with). Every server it starts is killed on exit.
#
# Settings (environment): RUNS [3], DURATION [5s], WARMUP [500ms], SERVER_CPUS [0], LOAD_CPUS [1],
# CONNECTIONS [32], KEYS [100000], RATE_FRACTION [0.7], STALL_LIMIT [0.05], RETRIES [1],
# SCENARIOS [all: ping-p1,ping-p16,get,set,mixed,compute], SERVERS [percore,peer-tokio,peer-echo,
# memcached], OUT_DIR [target/bench-peers], SKIP_BUILD [unset].
set -euo pipefail
cd "$(dirname "$0")/.."

export RUNS=${RUNS:-3} DURATION=${DURATION:-5s} WARMUP=${WARMUP:-500ms}
export SERVER_CPUS=${SERVER_CPUS:-0} LOAD_CPUS=${LOAD_CPUS:-1}
export CONNECTIONS=${CONNECTIONS:-32} KEYS=${KEYS:-100000} RATE_FRACTION=${RATE_FRACTION:-0.7}
export STALL_LIMIT=${STALL_LIMIT:-0.05} RETRIES=${RETRIES:-1}
export SCENARIOS=${SCENARIOS:-ping-p1,ping-p16,get,set,mixed,compute}
export SERVERS=${SERVERS:-percore,peer-tokio,peer-echo,memcached}
export OUT_DIR=${OUT_DIR:-target/bench-peers}
export COMMAND_LINE="$0 $*"

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif need sudo; then sudo "$@"; else "$@"; fi; }

if [[ ",$SERVERS," == *,memcached,* ]] && ! need memcached; then
  echo "bench-peers: installing memcached" >&2
  if ! as_root apt-get install -y -qq memcached >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq memcached >/dev/null
  fi
fi
for tool in python3 taskset cargo; do
  need "$tool" || { echo "bench-peers: $tool is needed" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
  echo "bench-peers: cargo build --release --workspace" >&2
  cargo build --release --workspace --quiet
fi

mkdir -p "$OUT_DIR"
export PIDS_FILE="$OUT_DIR/server.pids"
: >"$PIDS_FILE"
# The runner kills its servers itself; this catches whatever it could not (a kill -9 of it).
cleanup() {
  local pid
  while read -r pid; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done <"$PIDS_FILE"
}
trap cleanup EXIT INT TERM

python3 - <<'PY'
"""The runner: starts the servers, runs the scenarios alternately, detects stalls, reports."""
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

env = os.environ
RUNS = int(env["RUNS"])
DURATION = env["DURATION"]
WARMUP = env["WARMUP"]
SERVER_CPUS = env["SERVER_CPUS"]
LOAD_CPUS = env["LOAD_CPUS"]
CONNECTIONS = env["CONNECTIONS"]
KEYS = env["KEYS"]
RATE_FRACTION = float(env["RATE_FRACTION"])
STALL_LIMIT = float(env["STALL_LIMIT"])
RETRIES = int(env["RETRIES"])
OUT_DIR = env["OUT_DIR"]
PIDS_FILE = env["PIDS_FILE"]
# Where `cargo build --release` put the binaries.
BIN = os.path.join(env.get("CARGO_TARGET_DIR") or "target", "release")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_list(spec):
    cpus = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


SERVER_CPU_LIST = cpu_list(SERVER_CPUS)
WATCHED_CPUS = sorted(set(SERVER_CPU_LIST) | set(cpu_list(LOAD_CPUS)))
CORES = len(SERVER_CPU_LIST)

# Each server, given the same CPUs: --cores / -t equal to the number of server CPUs.
SERVER_ORDER = ["percore", "peer-tokio", "peer-echo", "memcached"]
SERVERS = [s for s in SERVER_ORDER if s in env["SERVERS"].split(",")]
PROTOCOL = {"memcached": "memcached"}

KV = ["--keys", KEYS, "--key-size", "16", "--value-size", "100"]
# name, title, servers that can run it, percore-load arguments, needs the keys prefilled
SCENARIOS_ALL = [
    ("ping-p1", "ping, pipeline 1", ["percore", "peer-tokio", "peer-echo"],
     ["--workload", "ping", "--value-size", "16", "--pipeline", "1"], False),
    ("ping-p16", "ping, pipeline 16", ["percore", "peer-tokio", "peer-echo"],
     ["--workload", "ping", "--value-size", "16", "--pipeline", "16"], False),
    ("get", "get, 100% hits, p16", ["percore", "peer-tokio", "memcached"],
     ["--workload", "get", "--pipeline", "16"] + KV, True),
    ("set", "set, p16", ["percore", "peer-tokio", "memcached"],
     ["--workload", "set", "--pipeline", "16"] + KV, False),
    ("mixed", "mixed get:90,set:10 zipf 0.99, p16", ["percore", "peer-tokio", "memcached"],
     ["--workload", "mixed", "--mix", "get:90,set:10", "--key-dist", "zipf:0.99",
      "--pipeline", "16"] + KV, True),
    # Pipeline 4: 128 requests in flight stay under percore's compute queue of 256 per core.
    ("compute", "compute sha256 1 KiB, p4", ["percore", "peer-tokio"],
     ["--workload", "compute", "--compute-algo", "sha256", "--value-size", "1024",
      "--pipeline", "4"], False),
]
wanted = env["SCENARIOS"].split(",")
SCENARIOS = [s for s in SCENARIOS_ALL if s[0] in wanted]


def log(msg):
    print(f"bench-peers: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name, port):
    addr = f"127.0.0.1:{port}"
    if name == "memcached":
        cmd = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-t", str(CORES),
               "-m", "1024", "-c", "4096"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        return cmd
    if name == "peer-echo":
        # The glommio engine: percore's runtime under no protocol (--engine epoll is the floor).
        return [f"{BIN}/{name}", "--listen", addr, "--cores", str(CORES), "--engine", "glommio"]
    return [f"{BIN}/{name}", "--listen", addr, "--cores", str(CORES)]


class Server:
    def __init__(self, name):
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(OUT_DIR, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPUS] + server_command(name, self.port),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        with open(PIDS_FILE, "a") as f:
            f.write(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited at start-up; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start listening; see {self.log_path}")
                time.sleep(0.05)

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


def cpu_times():
    """Per watched CPU: (busy, steal) in seconds. busy is user+nice+system: interrupt time is
    left out because with IRQ time accounting it is charged to no process, ours included."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in WATCHED_CPUS:
                v = [int(x) / TICK for x in vals]
                out[int(name[3:])] = (v[0] + v[1] + v[2], v[7] if len(v) > 7 else 0.0)
    return out


def load_command(server, extra, json_path, rate=None):
    cmd = ["taskset", "-c", LOAD_CPUS, f"{BIN}/percore-load",
           "--target", f"127.0.0.1:{server.port}", "--cores", "1",
           "--connections", CONNECTIONS, "--quiet", "--json", json_path]
    if server.name in PROTOCOL:
        cmd += ["--protocol", PROTOCOL[server.name]]
    if rate is not None:
        cmd += ["--rate", str(int(rate))]
    return cmd + extra


def run_load(server, args, tag):
    """Runs percore-load once; returns its JSON summary plus CPU and stall accounting."""
    json_path = os.path.join(OUT_DIR, "last.json")
    if os.path.exists(json_path):
        os.remove(json_path)
    out_path = os.path.join(OUT_DIR, "load.log")
    stat0, srv0, t0 = cpu_times(), server.cpu_seconds(), time.monotonic()
    with open(out_path, "a") as out:
        out.write(f"\n=== {tag}: {' '.join(args)}\n")
        out.flush()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    stat1, srv1 = cpu_times(), server.cpu_seconds()
    proc.returncode = os.waitstatus_to_exitcode(status)
    busy = sum(stat1[c][0] - stat0[c][0] for c in WATCHED_CPUS)
    steal = sum(stat1[c][1] - stat0[c][1] for c in WATCHED_CPUS)
    server_cpu = srv1 - srv0
    load_cpu = usage.ru_utime + usage.ru_stime
    foreign = max(0.0, busy - server_cpu - load_cpu)
    result = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            result = json.load(f)
    result.update({
        "exit": proc.returncode, "wall_s": wall, "server_cpu_s": server_cpu,
        "load_cpu_s": load_cpu, "foreign_s": foreign, "steal_s": steal,
        "foreign_share": (foreign + steal) / (wall * len(WATCHED_CPUS)),
    })
    return result


def prefill(server):
    """Writes every key once (percore-load --prefill, then one request)."""
    args = load_command(server, ["--workload", "get", "--prefill", "--requests", "1",
                                 "--pipeline", "16"] + KV, os.path.join(OUT_DIR, "prefill.json"))
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"prefill of {server.name} failed: {r.stdout[-500:]} {r.stderr[-500:]}")


def median(xs):
    return statistics.median(xs) if xs else None


def run_matrix(servers, mode, rates):
    """Every scenario for every server, RUNS times, servers alternating; returns cells."""
    cells = {}  # (scenario, server) -> {"clean": [...], "stalled": [...], "failed": [...]}
    for run in range(RUNS):
        for name, _title, can, extra, _needs in SCENARIOS:
            names = [s for s in SERVERS if s in can]
            # Rotate who goes first, so no server always runs right after the same one.
            names = names[run % len(names):] + names[:run % len(names)]
            for sname in names:
                server = servers[sname]
                cell = cells.setdefault((name, sname), {"clean": [], "stalled": [], "failed": []})
                rate = rates.get(name) if mode == "open" else None
                warm = ["--duration", DURATION, "--warmup", WARMUP]
                if mode == "open" and run == RUNS - 1:
                    warm += plot_args(name, sname, names)
                for attempt in range(RETRIES + 1):
                    tag = f"{mode} {name} {sname} run {run + 1} attempt {attempt + 1}"
                    r = run_load(server, load_command(server, extra + warm, os.path.join(
                        OUT_DIR, "last.json"), rate), tag)
                    r["run"], r["attempt"] = run + 1, attempt + 1
                    ok = r["exit"] == 0 and "throughput" in r
                    stalled = r["foreign_share"] > STALL_LIMIT
                    kind = "failed" if not ok else ("stalled" if stalled else "clean")
                    cell[kind].append(r)
                    log(f"{tag}: {r.get('throughput', 0):,.0f} ops/s, server CPU "
                        f"{r['server_cpu_s'] / r['wall_s']:.0%}, foreign "
                        f"{r['foreign_share']:.1%}{'' if kind == 'clean' else ' -> ' + kind}")
                    if kind != "stalled":
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
    runs, noisy = usable(cell)
    vals = [f(r) for r in runs]
    return median(vals), noisy, len(runs)


def throughput(r):
    return r["throughput"]


def per_cpu_second(r):
    # Throughput over the measured window divided by the server's average CPU use over the
    # whole run (warm-up included, same load): requests per second of server CPU.
    used = r["server_cpu_s"] / r["wall_s"]
    return r["throughput"] / used if used > 0 else float("nan")


def latency(q):
    # The operation with the most replies (get in the mixed workload) speaks for the run.
    def f(r):
        main_op = max(r["latency_us"].values(), key=lambda v: v["count"])
        return main_op[q]
    return f


def behind(cell):
    """Whether an open-loop cell fell behind its schedule: over 1% of the requests it should
    have sent were never sent, so the rate was more than this server and generator sustain
    and its latencies are queueing, not service."""
    runs, _ = usable(cell)
    return any(r.get("mode") == "open" and r.get("unsent", 0) > 0.01 * max(1, r.get("ops", 0))
               for r in runs)


def fmt_num(v, unit=""):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}"


def table(cells, f, header, lower_is_better=False):
    peers = [s for s in SERVERS if s != "percore"]
    cols = ["scenario"] + SERVERS + [f"percore ÷ {p}" for p in peers]
    lines = [f"**{header}**", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for name, title, can, _extra, _needs in SCENARIOS:
        row = [title]
        values = {}
        for s in SERVERS:
            cell = cells.get((name, s))
            if cell is None or s not in can:
                row.append("—")
                continue
            v, noisy, n = stat(cell, f)
            values[s] = v
            mark = (" †" if noisy else "") + (" ‡" if behind(cell) else "")
            row.append("failed" if v is None else fmt_num(v) + mark)
        base = values.get("percore")
        for p in peers:
            v = values.get(p)
            row.append(f"{base / v:.2f}x" if base and v else "—")
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


def goals(closed, opened):
    def ratio(cells, scen, peer, f):
        a, b = cells.get((scen, "percore")), cells.get((scen, peer))
        if not a or not b:
            return None
        va, vb = stat(a, f)[0], stat(b, f)[0]
        return va / vb if va and vb else None
    rows = []

    def check(what, r, ok):
        if r is None:
            rows.append(f"| {what} | — | not run |")
        else:
            rows.append(f"| {what} | {r:.2f}x | {'met' if ok(r) else '**short**'} |")
    for scen in ("ping-p1", "ping-p16", "get"):
        check(f"{scen} throughput, percore ÷ peer-tokio ≥ 1.3",
              ratio(closed, scen, "peer-tokio", throughput), lambda r: r >= 1.3)
        check(f"{scen} open-loop p99, percore ÷ peer-tokio < 1",
              ratio(opened, scen, "peer-tokio", latency("p99")), lambda r: r < 1.0)
    for scen in ("get", "set"):
        check(f"{scen} throughput, percore ÷ memcached ≥ 1.0",
              ratio(closed, scen, "memcached", throughput), lambda r: r >= 1.0)
    for scen in ("ping-p1", "ping-p16"):
        check(f"{scen} throughput, percore ÷ peer-echo ≥ 0.85",
              ratio(closed, scen, "peer-echo", throughput), lambda r: r >= 0.85)
    return "\n".join(["| goal | measured | |", "|---|---:|---|"] + rows)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    started = datetime.now(timezone.utc)
    about = machine()
    servers = {}
    try:
        for s in SERVERS:
            servers[s] = Server(s)
            log(f"{s} listening on 127.0.0.1:{servers[s].port} (CPUs {SERVER_CPUS})")
        if any(needs for *_, needs in SCENARIOS):
            for s in SERVERS:
                if s != "peer-echo":
                    prefill(servers[s])
        closed = run_matrix(servers, "closed", {})
        rates = {}
        for name, *_ in SCENARIOS:
            meds = [stat(c, throughput)[0] for (n, _s), c in closed.items() if n == name]
            meds = [m for m in meds if m]
            if meds:
                rates[name] = max(1, int(min(meds) * RATE_FRACTION))
        opened = run_matrix(servers, "open", rates)
    finally:
        for s in servers.values():
            s.stop()
        # All stopped: the shell's exit trap must not signal these (possibly reused) pids.
        open(PIDS_FILE, "w").close()
    finished = datetime.now(timezone.utc)

    discarded = sum(len(c["stalled"]) for c in list(closed.values()) + list(opened.values()))
    failed = sum(len(c["failed"]) for c in list(closed.values()) + list(opened.values()))
    total = sum(len(c[k]) for c in list(closed.values()) + list(opened.values())
                for k in ("clean", "stalled", "failed"))
    rate_line = ", ".join(f"{n} {fmt_num(r)}/s" for n, r in rates.items())
    report = [
        f"Command: `{env['COMMAND_LINE'].strip()}` with RUNS={RUNS} DURATION={DURATION} "
        f"WARMUP={WARMUP} CONNECTIONS={CONNECTIONS} STALL_LIMIT={STALL_LIMIT}",
        f"Started {started:%Y-%m-%d %H:%M} UTC, took {(finished - started).total_seconds() / 60:.1f} min. "
        f"Machine: {about}.",
        f"Servers on CPU(s) {SERVER_CPUS} (`--cores {CORES}`, memcached `-t {CORES}`), "
        f"percore-load on CPU(s) {LOAD_CPUS}, {CONNECTIONS} connections. "
        f"{total} runs: {discarded} discarded as stalled (foreign CPU + steal over "
        f"{STALL_LIMIT:.0%} of the two CPUs), {failed} failed.",
        "Medians of the clean runs; † = fewer than RUNS clean runs, median of all runs; "
        "‡ = open loop fell behind (over 1% of scheduled requests unsent: saturated). "
        "Ratios are percore ÷ peer: above 1 percore is faster (throughput) or slower (latency).",
        "",
        table(closed, throughput, "Closed loop: throughput, ops/s"),
        "",
        table(closed, per_cpu_second,
              "Closed loop: requests per server CPU-second (throughput ÷ server CPU use)"),
        "",
        table(closed, lambda r: 100 * r["load_cpu_s"] / r["wall_s"],
              "Closed loop: percore-load's CPU use, % of one CPU (near 100, the generator "
              "sets the pace, not the server)"),
        "",
        f"Open loop at {RATE_FRACTION:.0%} of the slowest server's closed-loop median: {rate_line}.",
        "",
        table(opened, latency("p50"), "Open loop: p50 latency, µs (from intended send time)"),
        "",
        table(opened, latency("p99"), "Open loop: p99 latency, µs"),
        "",
        table(opened, latency("p999"), "Open loop: p99.9 latency, µs"),
        "",
        table(opened, lambda r: 100 * r["server_cpu_s"] / r["wall_s"],
              "Open loop: server CPU use, % of one CPU"),
        "",
        "**Goals**",
        "",
        goals(closed, opened),
        "",
        "**Latency plots** (last open-loop round: x the percentile on the 1/(1-p) scale, y the "
        "latency from the intended send time; the server drawn last also has its service time "
        "from the actual send, dashed)",
        "",
    ] + [f"- {title}: ![{name}](plots/{name}.svg) `{OUT_DIR}/plots/{name}.svg`"
         for name, title, *_ in SCENARIOS
         if os.path.exists(os.path.join(PLOTS, f"{name}.svg"))]
    text = "\n".join(report) + "\n"
    print(text)
    with open(os.path.join(OUT_DIR, "report.md"), "w") as f:
        f.write(text)
    raw = {f"{mode} {n} {s}": c for mode, cells in (("closed", closed), ("open", opened))
           for (n, s), c in cells.items()}
    with open(os.path.join(OUT_DIR, "runs.json"), "w") as f:
        json.dump({"rates": rates, "cells": raw}, f, indent=1)
    log(f"report in {OUT_DIR}/report.md, every run in {OUT_DIR}/runs.json")


main()
PY
