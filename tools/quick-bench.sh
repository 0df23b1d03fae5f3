#!/usr/bin/env bash
# Quick throughput check: percore on one core (CPU 0), percore-load on the other (CPU 1),
# closed loop, each scenario run RUNS times; prints each run and the median ops/s.
#
#   tools/quick-bench.sh [RUNS] [DURATION]      (defaults: 3 runs of 5s)
#
# The full comparison with peers (tokio, a raw echo floor, memcached) is the benchmark issue's
# harness; this is the figure a newcomer can reproduce in a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
duration=${2:-5s}
cargo build --release --workspace --quiet
bin=target/release

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 "$bin/percore" --listen "127.0.0.1:$port" --cores 1 >/tmp/percore-quick-bench.out 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening /tmp/percore-quick-bench.out && break; sleep 0.1; done

scenario() {  # name, then percore-load arguments
  local name=$1; shift
  local results=()
  for _ in $(seq "$runs"); do
    local json; json=$(mktemp)
    taskset -c 1 "$bin/percore-load" --target "127.0.0.1:$port" --cores 1 --duration "$duration" \
      --json "$json" "$@" >/dev/null 2>&1
    results+=("$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput"]))' "$json")")
    rm -f "$json"
  done
  local median; median=$(printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  printf '%-28s median %8s ops/s   runs: %s\n' "$name" "$median" "${results[*]}"
}

scenario "ping c=32 pipeline=1" --workload ping --value-size 16 --connections 32 --pipeline 1
scenario "ping c=32 pipeline=16" --workload ping --value-size 16 --connections 32 --pipeline 16
scenario "get (100% hits) c=32 p=16" --workload get --prefill --keys 100000 --value-size 100 --connections 32 --pipeline 16
scenario "set c=32 p=16" --workload set --keys 100000 --value-size 100 --connections 32 --pipeline 16
