#!/usr/bin/env bash
# Throughput, rescheduling interrupts (RES, /proc/interrupts) on the server's CPU, and requests per
# server CPU-second, for percore beside peer-tokio (and, to measure a change, beside another build
# of percore): each server pinned to CPU 0 with one core, percore-load pinned to CPU 1, 32
# connections, closed loop. Servers alternate within each round (A B C, then B C A, ...) and the
# summary gives medians over the rounds and the ratios between servers, all from the same run.
#
#   tools/measure-interrupts.sh                       (builds the release workspace first)
#   BEFORE=/path/to/old/percore tools/measure-interrupts.sh
#   VARIANTS="poll0=--idle-poll 0" tools/measure-interrupts.sh
#   LOAD=/path/to/old/percore-load tools/measure-interrupts.sh   (drive with another generator)
#   SERVER_CPU_QUOTA=50 tools/measure-interrupts.sh   (server capped at 50% of CPU 0; needs root)
#
# Without a quota the generator, not the server, is usually what saturates on a 2-CPU machine: it
# runs at 95-99% of CPU 1 in every benchmark run, so two servers that differ in cost per request can
# still land on the same throughput. SERVER_CPU_QUOTA=P puts the server in a cgroup (v2, or v1's
# cpu controller) allowed P% of one CPU, enforced every 10 ms; the generator, with a whole CPU,
# then has headroom, and throughput measures the server's capacity per CPU share.
#
# Settings (environment): ROUNDS [3], DURATION [5s], SCENARIOS [ping-p1 ping-p16 get-p16],
# BEFORE [unset: a percore binary shown as percore-before], VARIANTS [unset: NAME=FLAGS;... extra
# percore runs with those flags], SERVER_CPU_QUOTA [unset: no cap; a percentage of one CPU].
set -u
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet
bin=target/release
load=${LOAD:-$bin/percore-load}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
SCENARIOS=${SCENARIOS:-ping-p1 ping-p16 get-p16}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

servers=("percore" "peer-tokio")
declare -A command=([percore]="$bin/percore" [peer-tokio]="$bin/peer-tokio")
if [[ -n "${BEFORE:-}" ]]; then
  servers+=("percore-before")
  command[percore-before]="$BEFORE"
fi
IFS=';' read -r -a variants <<<"${VARIANTS:-}"
for v in "${variants[@]}"; do
  [[ -z "$v" ]] && continue
  servers+=("${v%%=*}")
  command[${v%%=*}]="$bin/percore ${v#*=}"
done

# shellcheck source=lib/server.sh
source tools/lib/server.sh
if [[ -n "${SERVER_CPU_QUOTA:-}" ]]; then
  cpu_cap_create "$SERVER_CPU_QUOTA" || exit 1
  trap 'rm -f "$out"; cpu_cap_remove' EXIT
fi

res0() { awk '/^ *RES:/ {print $2}' /proc/interrupts; }

run() { # round server scenario
  local round=$1 server=$2 scenario=$3 port pid
  local workload=${scenario%-p*} pipeline=${scenario##*-p}
  port=$(free_port)
  # shellcheck disable=SC2086
  taskset -c 0 ${command[$server]} --listen 127.0.0.1:$port --cores 1 >/dev/null 2>&1 &
  pid=$!
  sleep 0.5
  cpu_cap_add $pid
  local extra=()
  [[ $workload == get ]] && extra=(--prefill --keys 10000 --value-size 100)
  local r0 t0 c0 json
  json=$(mktemp)
  r0=$(res0); t0=$(date +%s.%N); c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  taskset -c 1 "$load" --target 127.0.0.1:$port --cores 1 --duration "$DURATION" \
    --workload "$workload" --connections 32 --pipeline "$pipeline" "${extra[@]}" --json "$json" \
    >/dev/null 2>&1
  local r1 t1 c1
  r1=$(res0); t1=$(date +%s.%N); c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  # SIGTERM, not SIGINT: background jobs of a script ignore SIGINT, and peer-tokio sets no handler.
  kill -TERM $pid; wait $pid 2>/dev/null
  python3 - "$json" "$round" "$server" "$scenario" "$r0" "$r1" "$t0" "$t1" "$c0" "$c1" <<'PY' | tee -a "$out"
import json, sys
a = sys.argv
j = json.load(open(a[1]))
res = int(a[6]) - int(a[5]); secs = float(a[8]) - float(a[7]); cpu = (int(a[10]) - int(a[9])) / 100
ops = j["ops"]
errors = sum(j.get("errors", {}).values()) if isinstance(j.get("errors"), dict) else 0
print(f"{a[2]} {a[3]} {a[4]} {j['throughput']:.0f} {res / secs:.0f} {res / max(ops, 1):.5f} "
      f"{ops / cpu if cpu else 0:.0f} {errors}")
PY
  rm -f "$json"
}

echo "round server scenario ops/s RES/s RES/request requests/server-CPU-s errors"
for ((round = 1; round <= ROUNDS; round++)); do
  for scenario in $SCENARIOS; do
    n=${#servers[@]}
    for ((i = 0; i < n; i++)); do
      run "$round" "${servers[$(((i + round - 1) % n))]}" "$scenario"
    done
  done
done

python3 - "$out" "${servers[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
servers = sys.argv[2:]
scenarios = list(dict.fromkeys(r[2] for r in rows))
def med(server, scenario, col):
    v = [float(r[col]) for r in rows if r[1] == server and r[2] == scenario]
    return statistics.median(v) if v else float("nan")
print()
print("medians over the rounds:")
print("| scenario | server | ops/s | RES/s on CPU 0 | requests per server CPU-s | errors |")
print("|---|---|---:|---:|---:|---:|")
for sc in scenarios:
    for s in servers:
        errors = sum(int(r[7]) for r in rows if r[1] == s and r[2] == sc)
        print(f"| {sc} | {s} | {med(s, sc, 3):,.0f} | {med(s, sc, 4):,.0f} | {med(s, sc, 6):,.0f} | {errors} |")
print()
print("percore ÷ other, medians of the same run (throughput; requests per server CPU-second):")
for sc in scenarios:
    for s in servers[1:]:
        t = med("percore", sc, 3) / med(s, sc, 3)
        c = med("percore", sc, 6) / med(s, sc, 6)
        print(f"- {sc}: percore ÷ {s} = {t:.2f}x; {c:.2f}x per CPU-second")
PY
