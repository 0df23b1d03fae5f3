#!/usr/bin/env bash
# Instructions per request of a percore server, counted by callgrind: the figure
# docs/performance.md's "The request path's cost" quotes, and the one to compare builds by on a
# busy machine (timings scatter there; instruction counts barely move).
#
#   tools/count-instructions.sh [SCENARIO...]      (default: ping get set miss)
#
# Scenarios: ping; get (every key set first, so each get hits); set; miss (gets of keys never
# set, so each reply is NotFound); delete (of keys never set: NotFound too).
# For each, the server runs `--cores 1 --idle-poll 0` under `valgrind --tool=callgrind` with
# collection zeroed after a warm-up of WARMUP requests; then REQUESTS requests from percore-load
# (CONNECTIONS connections, PIPELINE in flight each, VALUE_SIZE-byte values over KEYS keys); the
# counters are dumped and divided by REQUESTS. User-space instructions of the whole server process
# (kernel work is not counted). Prints a markdown table.
#
# Environment:
#   SERVER       the server to measure (default: $CARGO_TARGET_DIR/release/percore, else
#                target/release/percore)
#   BEFORE       a second server to compare against, e.g. an older build: its column comes first,
#                then SERVER's and the ratio before/after
#   LOAD         the load generator (default: percore-load beside the default SERVER); the same
#                one drives both servers
#   PIPELINE (16), REQUESTS (100000), WARMUP (20000), CONNECTIONS (4), VALUE_SIZE (100), KEYS (10000)
#
# Needs valgrind (callgrind_control, callgrind_annotate). Build first:
#   cargo build --release --bin percore -p percore-load
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
server=${SERVER:-$target/release/percore}
load=${LOAD:-$target/release/percore-load}
before=${BEFORE:-}
pipeline=${PIPELINE:-16}
requests=${REQUESTS:-100000}
warmup=${WARMUP:-20000}
connections=${CONNECTIONS:-4}
value_size=${VALUE_SIZE:-100}
keys=${KEYS:-10000}
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(ping get set miss)

for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (Debian: apt-get install valgrind)" >&2; exit 2; }
done
for bin in "$server" "$load" ${before:+"$before"}; do
  [[ -x $bin ]] || { echo "error: $bin is not an executable (cargo build --release --bin percore -p percore-load)" >&2; exit 2; }
done
for n in "$pipeline" "$requests" "$warmup" "$connections" "$value_size" "$keys"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "error: PIPELINE, REQUESTS, WARMUP, CONNECTIONS, VALUE_SIZE, KEYS must be positive integers (got $n)" >&2; exit 2; }
done

work=$(mktemp -d)
vpid=
cleanup() {
  if [[ -n $vpid ]]; then kill -TERM "$vpid" 2>/dev/null || true; wait "$vpid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The percore-load arguments of a scenario: $1 = scenario, $2 = "warm" for the warm-up.
load_args() {
  local common=(--connections "$connections" --pipeline "$pipeline" --keys "$keys" --value-size "$value_size")
  case $1 in
    ping) echo --workload ping "${common[@]}" ;;
    get) echo --workload get "${common[@]}" $([[ $2 == warm ]] && echo --prefill) ;;
    set) echo --workload set "${common[@]}" ;;
    miss) echo --workload get "${common[@]}" ;;
    delete) echo --workload delete "${common[@]}" ;;
    *) echo "error: unknown scenario $1 (ping, get, set, miss, delete)" >&2; return 2 ;;
  esac
}

# Sets `result` to the instructions per request of server $1 in scenario $2 (in this shell, not
# a subshell, so that the EXIT trap stops the server if anything fails).
count() {
  local bin=$1 scenario=$2 port out args
  args=$(load_args "$scenario" warm)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  out=$work/callgrind.$scenario.$RANDOM
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
    "$bin" --listen "127.0.0.1:$port" --cores 1 --idle-poll 0 >/dev/null 2>"$out.log" &
  vpid=$!
  local up=
  for _ in $(seq 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    sleep 0.2
  done
  [[ -n $up ]] || { echo "error: $bin did not listen under valgrind (see its log below)" >&2; cat "$out.log" >&2; exit 1; }
  # shellcheck disable=SC2086 # the arguments are words on purpose
  "$load" --target "127.0.0.1:$port" $args --requests "$warmup" >"$out.warm" 2>&1 ||
    { echo "error: warm-up failed:" >&2; cat "$out.warm" >&2; exit 1; }
  callgrind_control -z "$vpid" >/dev/null 2>&1
  args=$(load_args "$scenario" measure)
  # shellcheck disable=SC2086
  "$load" --target "127.0.0.1:$port" $args --requests "$requests" >"$out.load" 2>&1 ||
    { echo "error: the measured run failed:" >&2; cat "$out.load" >&2; exit 1; }
  callgrind_control -d "$vpid" >/dev/null 2>&1
  kill -TERM "$vpid"; wait "$vpid" 2>/dev/null || true; vpid=
  local dump ir
  dump=$(ls "$out".*.1 2>/dev/null | head -1)
  [[ -n $dump ]] || { echo "error: callgrind wrote no dump for $scenario" >&2; exit 1; }
  ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
  [[ $ir =~ ^[0-9]+$ ]] || { echo "error: no instruction total in $dump" >&2; exit 1; }
  result=$((ir / requests))
}

echo "Instructions per request (callgrind, user space), $connections connections x pipeline $pipeline, $requests requests, $value_size-byte values"
echo
if [[ -n $before ]]; then
  echo "before: $before"
  echo "after:  $server"
  echo
  echo "| scenario | before | after | before/after |"
  echo "|---|---:|---:|---:|"
else
  echo "server: $server"
  echo
  echo "| scenario | instructions/request |"
  echo "|---|---:|"
fi
for scenario in "${scenarios[@]}"; do
  load_args "$scenario" measure >/dev/null || exit 2
  count "$server" "$scenario"; a=$result
  if [[ -n $before ]]; then
    count "$before" "$scenario"; b=$result
    echo "| $scenario p$pipeline | $b | $a | $(python3 -c "print(f'{$b / $a:.2f}x')") |"
  else
    echo "| $scenario p$pipeline | $a |"
  fi
done
