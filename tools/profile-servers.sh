#!/usr/bin/env bash
# Where each server's CPU time goes, by part: `perf record -e cpu-clock -g` of percore and of
# peer-tokio under the same load, split into the kernel, the protocol code both share (FlatBuffers
# verification and building, percore::protocol), the store and operations (also shared;
# Compute's sha2 among them), the runtime and connection handling (the part that differs:
# glommio and percore's runtime and server modules, or tokio and peer-tokio's loop), libc and
# the vDSO clock.
#
#   tools/profile-servers.sh                          (builds the release workspace first)
#   SERVER_CPU_QUOTA=0 SCENARIOS=ping-p16 tools/profile-servers.sh
#
# Each server runs pinned to CPU 0 with one core and, by default, capped at SERVER_CPU_QUOTA% of
# it (a cgroup, needs root) so that it is the server, not percore-load on CPU 1, that saturates.
# The part that differs bounds what any runtime could gain: a server whose runtime cost nothing
# would do at most 100 / (100 - runtime share) times the work in the same CPU time.
#
# Scenarios: ping-pN and get-pN (closed loop, pipeline N); flood (tools/bench-peers.sh's noisy
# neighbour's Compute flood alone, its generator at nice 15) and flood+gets (the flood beside
# gets at 20,000/s open loop), whose ops/s column is the flood's: what the gets cost Compute, and
# in which part.
#
# Settings (environment): SCENARIOS [ping-p1 ping-p16 get-p16], SERVERS [percore peer-tokio],
# SERVER_CPU_QUOTA [50; 0 for no cap], RECORD [3: seconds recorded], CONNECTIONS [32],
# OUT_DIR [target/profile-servers: perf data and reports].
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/server.sh
source tools/lib/server.sh

SCENARIOS=${SCENARIOS:-ping-p1 ping-p16 get-p16}
SERVERS=${SERVERS:-percore peer-tokio}
SERVER_CPU_QUOTA=${SERVER_CPU_QUOTA:-50}
RECORD=${RECORD:-3}
CONNECTIONS=${CONNECTIONS:-32}
OUT_DIR=${OUT_DIR:-target/profile-servers}
command -v perf >/dev/null || { echo "profile-servers: perf is needed" >&2; exit 1; }
for scenario in $SCENARIOS; do
  [[ $scenario =~ ^((ping|get)-p[1-9][0-9]*|flood|flood\+gets)$ ]] ||
    { echo "profile-servers: unknown scenario $scenario (ping-pN, get-pN, flood, flood+gets)" >&2; exit 2; }
done
cargo build --release --workspace --quiet
bin=target/release
mkdir -p "$OUT_DIR"

pid=""
cleanup() {
  [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  cpu_cap_remove || true
}
trap cleanup EXIT
if [[ "$SERVER_CPU_QUOTA" != 0 ]]; then
  cpu_cap_create "$SERVER_CPU_QUOTA"
fi

# The noisy neighbour's two loads (tools/bench-peers.sh's): the Compute flood at nice 15, and
# gets at 20,000/s open loop.
flood=(--workload compute --compute-algo sha256 --compute-rounds 200 --value-size 1024
  --connections 8 --pipeline 8)
gets=(--workload get --rate 20000 --pipeline 16 --keys 100000 --value-size 100 --connections 8)

for scenario in $SCENARIOS; do
  case $scenario in
    ping-p* | get-p*) workload=${scenario%-p*} pipeline=${scenario##*-p} ;;
  esac
  for server in $SERVERS; do
    port=$(free_port)
    taskset -c 0 "$bin/$server" --listen "127.0.0.1:$port" --cores 1 >/dev/null 2>&1 &
    pid=$!
    sleep 0.5
    cpu_cap_add "$pid"
    name="$OUT_DIR/$scenario.$server"
    load_cmd=(taskset -c 1 "$bin/percore-load" --target "127.0.0.1:$port" --cores 1 --quiet)
    # Load for the recording plus a second either side of it (prefill happens before).
    duration=(--duration "$((RECORD + 2))s")
    loads=()
    case $scenario in
      flood | flood+gets)
        if [[ $scenario == flood+gets ]]; then
          "${load_cmd[@]}" --workload get --prefill --keys 100000 --value-size 100 \
            --requests 1 >/dev/null 2>&1
          "${load_cmd[@]}" "${gets[@]}" "${duration[@]}" --json "$name.gets.json" >/dev/null 2>&1 &
          loads+=($!)
        fi
        nice -n 15 "${load_cmd[@]}" "${flood[@]}" "${duration[@]}" --json "$name.json" \
          >/dev/null 2>&1 &
        loads+=($!)
        ;;
      *)
        extra=()
        [[ $workload == get ]] && extra=(--prefill --keys 10000 --value-size 100)
        "${load_cmd[@]}" --workload "$workload" --connections "$CONNECTIONS" \
          --pipeline "$pipeline" "${extra[@]}" "${duration[@]}" --json "$name.json" \
          >/dev/null 2>&1 &
        loads+=($!)
        ;;
    esac
    sleep 1.5
    perf record -q -e cpu-clock -g -p "$pid" -o "$name.data" -- sleep "$RECORD" >/dev/null 2>&1
    for l in "${loads[@]}"; do
      wait "$l" || echo "profile-servers: percore-load failed on $server $scenario" >&2
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    pid=""
    perf report -i "$name.data" --stdio --no-children --sort dso,sym -g none --percent-limit 0 \
      2>/dev/null >"$name.txt"
  done
done

python3 - "$OUT_DIR" "$SERVER_CPU_QUOTA" "$SCENARIOS" "$SERVERS" <<'PY'
import json, re, sys
out, quota, scenarios, servers = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
parts = ["kernel", "protocol", "store & ops", "runtime & connections", "libc", "clock (vDSO)", "other"]

def part(dso, sym):
    if dso == "[kernel.kallsyms]":
        return "kernel"
    if dso == "[vdso]":
        return "clock (vDSO)"
    if dso.startswith("libc"):
        return "libc"
    if re.search(r"flatbuffers::|percore::protocol", sym):
        return "protocol"
    if re.search(r"percore::(store|ops)|sha2::", sym):
        return "store & ops"
    if re.search(r"glommio|tokio|mio::|percore::(runtime|server|metrics)|peer_tokio|std::sys|core::task", sym):
        return "runtime & connections"
    return "other"

cap = "no cap" if quota == "0" else f"capped at {quota}% of CPU 0"
print(f"Share of each server's cpu-clock samples ({cap}; percore-load on CPU 1):\n")
print("| scenario | server | ops/s | " + " | ".join(parts) + " |")
print("|---|---|---:|" + "---:|" * len(parts))
for sc in scenarios:
    for server in servers:
        shares = dict.fromkeys(parts, 0.0)
        for line in open(f"{out}/{sc}.{server}.txt"):
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
            if m:
                shares[part(m.group(2), m.group(3))] += float(m.group(1))
        ops = json.load(open(f"{out}/{sc}.{server}.json"))["throughput"]
        cells = " | ".join(f"{shares[p]:.1f}%" for p in parts)
        print(f"| {sc} | {server} | {ops:,.0f} | {cells} |")
PY
