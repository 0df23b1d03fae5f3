#!/usr/bin/env bash
# Soak test: percore under mixed load for a long time, checking that it stays correct and that
# its memory and file descriptors stay flat.
#
#   tools/soak.sh                       # 10 minutes
#   DURATION=60s tools/soak.sh          # a short run (any of 90s, 10m, 1h)
#
# One release `percore --cores 1` (pinned to CPU 0 by taskset when there are 2 CPUs or more)
# with --memory well above the keyspace, so nothing is evicted and every write must stay
# readable; one `percore-load` (pinned to CPU 1) running closed-loop mixed load over a
# prefilled keyspace with --verify-keys. Every SAMPLE_EVERY seconds it samples the server's
# RSS (VmRSS in /proc/PID/status) and open fds (/proc/PID/fd). At the end it checks:
#
#   a. percore-load: every reply right (id, status, value CRC), none lost (exit status 0), and
#      every request the server read (its exit report) is one percore-load got a reply for;
#   b. every acknowledged set readable at the end: percore-load's --verify-keys pass read
#      every key back and found its last acknowledged value, byte for byte;
#   c. RSS flat: RSS at the end of the load (its last sample within DURATION) is at most
#      RSS_TOLERANCE_PCT above RSS at the reference point, min(2 minutes, 20% of the run)
#      after the measured load began. By then the prefilled store and the buffers are in
#      place; the store still touches a little more memory while the mix of value sizes
#      wanders (each size class keeps the most chunks it ever held, bounded by --memory),
#      which the tolerance allows for; a leak outgrows it;
#   d. no fd leak: once percore-load has exited, the server's fd count returns to its
#      baseline (taken before any connection);
#   e. the server exits 0 on SIGTERM with unanswered 0 and evictions 0 (the keyspace fit).
#
# Settings (environment): DURATION [10m], KEYS [50000], VALUE_SIZE [16-2048], MEMORY [256MiB],
# MIX [get:60,set:30,ping:5,compute:5], CONNECTIONS [16], PIPELINE [8], SAMPLE_EVERY [5]
# (seconds), RSS_TOLERANCE_PCT [5]. Prints each sample and a summary; exits 0 if every check
# passed, 1 if one failed, 2 if the soak could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/server.sh
source tools/lib/server.sh

DURATION=${DURATION:-10m}
KEYS=${KEYS:-50000}
VALUE_SIZE=${VALUE_SIZE:-16-2048}
MEMORY=${MEMORY:-256MiB}
MIX=${MIX:-get:60,set:30,ping:5,compute:5}
CONNECTIONS=${CONNECTIONS:-16}
PIPELINE=${PIPELINE:-8}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}
RSS_TOLERANCE_PCT=${RSS_TOLERANCE_PCT:-5}
KEY_SIZE=16

die() {  # the soak could not run: say why and give up
  echo "soak: $*" >&2
  if [ -n "${work:-}" ] && [ -s "$work/server.err" ]; then
    echo "-- server stderr (last lines):" >&2
    tail -n 20 "$work/server.err" >&2
  fi
  exit 2
}

seconds_of() {  # 90s, 10m, 1h, 1500ms -> whole seconds (at least 1)
  local d=$1
  case $d in
    *ms) echo $(( (${d%ms} + 999) / 1000 )) ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) return 1 ;;
  esac
}

bytes_of() {  # 256MiB, 1GiB, 4096KiB, 1000000 -> bytes
  local s=$1
  case $s in
    *GiB) echo $(( ${s%GiB} << 30 )) ;;
    *MiB) echo $(( ${s%MiB} << 20 )) ;;
    *KiB) echo $(( ${s%KiB} << 10 )) ;;
    *[0-9]) echo "$s" ;;
    *) return 1 ;;
  esac
}

duration_s=$(seconds_of "$DURATION" 2>/dev/null) && [[ $duration_s =~ ^[0-9]+$ ]] \
  && [ "$duration_s" -ge 1 ] || die "DURATION=$DURATION: use a whole number with ms, s, m or h"
memory_bytes=$(bytes_of "$MEMORY" 2>/dev/null) || die "MEMORY=$MEMORY: use a size like 256MiB"
value_max=${VALUE_SIZE#*-}
[[ $value_max =~ ^[0-9]+$ ]] || die "VALUE_SIZE=$VALUE_SIZE: use N or MIN-MAX in bytes"
# The keyspace at its largest (every value at the maximum size), with a margin for the store's
# size classes and item headers, must fit in --memory: then nothing is evicted and every
# acknowledged set must be readable at the end.
keyspace_max=$(( KEYS * (KEY_SIZE + value_max) ))
if [ $(( keyspace_max * 3 / 2 )) -gt "$memory_bytes" ]; then
  die "KEYS=$KEYS of up to $((KEY_SIZE + value_max)) bytes ($keyspace_max bytes, x1.5 for the store's overhead) do not fit in MEMORY=$MEMORY"
fi
ref_s=$(( duration_s / 5 ))
[ "$ref_s" -le 120 ] || ref_s=120

echo "== building release binaries"
cargo build --release -p percore --bin percore --quiet || die "build failed"
cargo build --release -p percore-load --quiet || die "build failed"

work=$(mktemp -d /tmp/percore-soak.XXXXXX)
server_pid=""
load_pid=""
cleanup() {
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; fi
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 2' INT TERM
# Copies, so that a rebuild in the shared target directory cannot swap binaries mid-run.
cp target/release/percore target/release/percore-load "$work/"

# Server on CPU 0, load on CPU 1, where there are two CPUs; otherwise they share.
if [ "$(nproc)" -ge 2 ]; then
  server_pin=(taskset -c 0)
  load_pin=(taskset -c 1)
  placement="server on CPU 0, percore-load on CPU 1"
else
  server_pin=()
  load_pin=()
  placement="one CPU: server and percore-load share it"
fi

status_kb() { proc_status_kb "$1" VmRSS; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

echo "== percore --cores 1 --memory $MEMORY ($placement)"
PERCORE_LOG=warn "${server_pin[@]}" "$work/percore" --listen 127.0.0.1:0 --cores 1 \
  --memory "$MEMORY" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
line=$(wait_listening "$server_pid" "$work/server.out") || die "percore did not start"
echo "$line"
addr=$(awk '{ print $4 }' <<<"$line")
# Let the executor finish starting before the baselines.
sleep 1
rss_base=$(status_kb "$server_pid")
fd_base=$(fd_count "$server_pid")
echo "baseline: RSS $rss_base KiB, $fd_base fds"

echo "== percore-load: $DURATION of --workload mixed --mix $MIX, $KEYS keys prefilled," \
  "values $VALUE_SIZE B, $CONNECTIONS connections x pipeline $PIPELINE, --verify-keys"
"${load_pin[@]}" "$work/percore-load" --target "$addr" --cores 1 --workload mixed --mix "$MIX" \
  --prefill --keys "$KEYS" --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE" \
  --connections "$CONNECTIONS" --pipeline "$PIPELINE" --duration "$DURATION" --verify-keys \
  --json "$work/load.json" >"$work/load.out" 2>"$work/load.err" &
load_pid=$!

# The measured load begins after the prefill; the first progress line comes 1 s into it.
while ! grep -q 'ops/s' "$work/load.err" 2>/dev/null; do
  kill -0 "$load_pid" 2>/dev/null || break
  sleep 0.2
done
t0=$(date +%s.%N)
t0=$(awk -v t="$t0" 'BEGIN { printf "%.3f", t - 1 }')
echo "prefill done; RSS $(status_kb "$server_pid") KiB; sampling every ${SAMPLE_EVERY}s," \
  "reference point at ${ref_s}s"

since_t0() { awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.0f", a - b }'; }
rss_ref=""; t_ref=""; rss_end=""; t_end=""; rss_max_after_ref=0; fd_max=0
while kill -0 "$load_pid" 2>/dev/null; do
  sleep "$SAMPLE_EVERY"
  kill -0 "$load_pid" 2>/dev/null || break
  t=$(since_t0)
  rss=$(status_kb "$server_pid")
  fds=$(fd_count "$server_pid")
  [ -n "$rss" ] || die "percore died during the soak"
  progress=$(grep 'ops/s' "$work/load.err" | tail -n 1)
  printf '[%5ss] RSS %8s KiB  fds %4s   load: %s\n' "$t" "$rss" "$fds" "${progress#*] }"
  if [ -z "$rss_ref" ] && [ "$t" -ge "$ref_s" ]; then rss_ref=$rss; t_ref=$t; fi
  if [ -n "$rss_ref" ] && [ "$rss" -gt "$rss_max_after_ref" ]; then rss_max_after_ref=$rss; fi
  [ "$fds" -gt "$fd_max" ] && fd_max=$fds
  # The end of the load is its last sample within DURATION: after it, percore-load's
  # read-back pass runs with deeper pipelines, which is not the steady state being checked.
  if [ "$t" -le "$duration_s" ]; then rss_end=$rss; t_end=$t; fi
done
wait "$load_pid"
load_rc=$?
load_pid=""
echo "== percore-load exited with status $load_rc"
grep -E '^(percore-load:|Throughput|Errors|Lost|Closed|ShuttingDown|Verified|Get misses)' \
  "$work/load.out"
tail -n 3 "$work/load.err"

# Connections close asynchronously on the server once percore-load has gone: poll for the
# baseline (10 s at most).
fd_end=$(fd_count "$server_pid")
for _ in $(seq 100); do
  [ "$fd_end" -eq "$fd_base" ] && break
  sleep 0.1
  fd_end=$(fd_count "$server_pid")
done
rss_after=$(status_kb "$server_pid")

stop_percore "$server_pid" 15
server_rc=$?
server_pid=""
echo "== percore exited with status $server_rc; exit report per core:"
grep '^core ' "$work/server.out" | sed 's/^/  /'
core_sum() { awk -v k="$1" '/^core / { for (i = 1; i < NF; i++) if ($i == k) s += $(i + 1) } END { print s + 0 }' "$work/server.out"; }
unanswered=$(core_sum unanswered)
evictions=$(core_sum evictions)
server_requests=$(core_sum requests)

# ---------------------------------------------------------------------------------------------
json=$work/load.json
jget() { jq -r "$1" "$json" 2>/dev/null; }
failed=0
row() {  # row PASS|FAIL TEXT
  printf '  %-4s %s\n' "$1" "$2"
  [ "$1" = PASS ] || failed=1
}
echo
echo "== soak summary: $DURATION, $(jget .ops) ops checked ($(jget '.throughput | floor') ops/s)," \
  "server read $server_requests requests"
if [ ! -s "$json" ]; then
  row FAIL "a. percore-load wrote no results (exit status $load_rc)"
else
  errors=$(jget .errors_total); lost=$(jget .lost)
  detail=$(jq -r '[.errors | to_entries[] | select(.value > 0) | "\(.key) \(.value)"] | join(", ")' "$json")
  ok=PASS; [ "$load_rc" -eq 0 ] && [ "$errors" -eq 0 ] && [ "$lost" -eq 0 ] || ok=FAIL
  row $ok "a. replies: $errors wrong or lost (lost $lost${detail:+; $detail}), percore-load exit $load_rc"
  checked=$(jget .verify.checked); verified=$(jget .verify.verified)
  # Every request the server read came back to percore-load: the measured ones, the prefill
  # (one set a key) and the read-back.
  accounted=$(( $(jget .ops) + KEYS + checked ))
  ok=PASS; [ "$accounted" -eq "$server_requests" ] || ok=FAIL
  row $ok "   requests the server read: $server_requests = $(jget .ops) measured + $KEYS prefill + $checked read back ($accounted)"
  ok=PASS; [ "$verified" -eq "$checked" ] && [ "$checked" -eq "$KEYS" ] || ok=FAIL
  row $ok "b. acknowledged sets readable at the end: $verified of $checked keys hold their last acknowledged value ($KEYS keys)"
fi
if [ -z "$rss_ref" ] || [ -z "$rss_end" ]; then
  row FAIL "c. RSS: no sample at or after the reference point ${ref_s}s (run too short for SAMPLE_EVERY=$SAMPLE_EVERY?)"
else
  limit=$(( rss_ref + rss_ref * RSS_TOLERANCE_PCT / 100 ))
  growth=$(awk -v a="$rss_end" -v b="$rss_ref" 'BEGIN { printf "%+.2f", (a - b) * 100 / b }')
  ok=PASS; [ "$rss_end" -le "$limit" ] || ok=FAIL
  row $ok "c. RSS flat: ${rss_ref} KiB at ${t_ref}s -> ${rss_end} KiB at ${t_end}s (${growth}%, limit +${RSS_TOLERANCE_PCT}% = $limit KiB; max after ref $rss_max_after_ref KiB; baseline $rss_base, after load $rss_after)"
fi
ok=PASS; [ "$fd_end" -eq "$fd_base" ] || ok=FAIL
row $ok "d. fds: $fd_end after the load, baseline $fd_base (max $fd_max during it, $CONNECTIONS connections)"
ok=PASS; [ "$server_rc" -eq 0 ] && [ "$unanswered" -eq 0 ] && [ "$evictions" -eq 0 ] || ok=FAIL
row $ok "e. server: exit $server_rc on SIGTERM, unanswered $unanswered, evictions $evictions"
if [ "$failed" -ne 0 ]; then
  echo "soak: FAILED"
  exit 1
fi
echo "soak: passed"
