#!/usr/bin/env bash
# Measures percore's two memory goals (issue 4) on loopback, with examples/memory_probe.rs:
#
#   a. bounded store: a server with --memory 64MiB on 2 cores takes 1 GiB of distinct values
#      (1-16 KiB each) and its RSS stays below 64 MiB x 1.2 + the empty server's RSS; every
#      write is answered Ok (eviction makes room) and the newest 1,000 keys read back exactly.
#   b. idle connections: 10,000 open idle connections grow the server's RSS by at most
#      8 KiB each.
#   c. bytes per item (issue 18): one core, 2,000,000 items of 16-byte keys and 32-byte values
#      written with percore-load --prefill; the RSS growth per item is at most 72 bytes.
#
#   tools/measure-memory.sh [CONNECTIONS]       (default 10000)
#   MEASURE=c tools/measure-memory.sh           (only the listed parts: any of a b c)
#
# Prints every measurement and a report; exits 1 if a goal is missed, 2 if the measurement
# itself could not be made. RSS is VmRSS from /proc/PID/status (VmHWM is its peak).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/server.sh
source tools/lib/server.sh

connections=${1:-10000}
parts=${MEASURE:-a b c}
wants() { [[ " $parts " == *" $1 "* ]]; }
item_count=2000000
per_item_goal=72     # bytes of RSS per 48-byte item
memory_mib=64
fill_bytes=1GiB
per_conn_goal=8192   # bytes of RSS per idle connection

echo "== building release binaries"
if ! cargo build --release --bin percore --example memory_probe --quiet ||
  ! cargo build --release -p percore-load --quiet; then
  echo "measure-memory: build failed" >&2
  exit 2
fi

if wants b; then
# The server and the idle probe each hold one fd per connection (the limit is per process).
want_fds=$((connections + 1024))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 65536 ]; then
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
echo "== open file limit: $(ulimit -n) (hard $(ulimit -Hn)); $want_fds needed"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
  echo "measure-memory: the open file limit is below $want_fds; run as root or raise the hard limit" >&2
  exit 2
fi
fi

work=$(mktemp -d /tmp/percore-measure-memory.XXXXXX)
server_pid=""
probe_pid=""
cleanup() {
  exec 3>&- 2>/dev/null || true
  if [ -n "$probe_pid" ]; then kill "$probe_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

# Copies, so that a rebuild in the shared target directory cannot swap binaries mid-run.
target_dir=${CARGO_TARGET_DIR:-target}
cp "$target_dir/release/percore" "$target_dir/release/percore-load" \
  "$target_dir/release/examples/memory_probe" "$work/"
bin=$work/percore
probe=$work/memory_probe
load=$work/percore-load

fail() {  # a measurement could not be made: say why, show the server's log, give up
  echo "measure-memory: $*" >&2
  if [ -n "${server_log:-}" ] && [ -s "$server_log" ]; then
    echo "-- server stderr (last lines):" >&2
    tail -n 20 "$server_log" >&2
  fi
  exit 2
}

status_kb() { proc_status_kb "$@"; }

# start_server NAME ARGS...: starts percore on an ephemeral loopback port, waits for its
# listening line, sets server_pid, server_addr, server_out, server_log.
start_server() {
  local name=$1; shift
  server_out="$work/$name.out"
  server_log="$work/$name.err"
  PERCORE_LOG=warn "$bin" --listen 127.0.0.1:0 "$@" >"$server_out" 2>"$server_log" &
  server_pid=$!
  local line
  line=$(wait_listening "$server_pid" "$server_out") || fail "percore $* did not start"
  echo "$line"
  server_addr=$(awk '{ print $4 }' <<<"$line")
  # Let the executors finish starting (and their first allocations) before the baseline.
  sleep 0.5
}

# stop_server: SIGTERM, wait (10 s), then SIGKILL; prints the exit report's per-core lines.
stop_server() {
  [ -n "$server_pid" ] || return 0
  stop_percore "$server_pid" 10
  echo "server exit status $?; exit report per core:"
  grep '^core ' "$server_out" | sed 's/^/  /'
  server_pid=""
}

field() {  # summary-line field value: field NAME LINE
  tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2 }'
}

failed=0

a_rss_ok=skipped; a_all_ok=skipped; a_newest_ok=skipped; b_ok=skipped; c_ok=skipped
# ---------------------------------------------------------------------------------------------
if wants a; then
echo
echo "== a. bounded store: --memory ${memory_mib}MiB --cores 2, fill $fill_bytes of 1-16 KiB values"
start_server bounded --memory "${memory_mib}MiB" --cores 2
a_base=$(status_kb "$server_pid" VmRSS)
echo "baseline RSS of the empty server: $a_base KiB"

fill_out="$work/fill.out"
timeout 120 "$probe" fill --target "$server_addr" --bytes "$fill_bytes" \
  --min-value 1024 --max-value 16384 --connections 8 --pipeline 32 | tee "$fill_out"
fill_rc=${PIPESTATUS[0]}
kill -0 "$server_pid" 2>/dev/null || fail "percore died during the fill"
a_rss=$(status_kb "$server_pid" VmRSS)
a_hwm=$(status_kb "$server_pid" VmHWM)
"$probe" stats --target "$server_addr" || echo "(stats failed)"
[ "$fill_rc" -eq 0 ] || fail "memory_probe fill failed (exit status $fill_rc)"
summary=$(grep '^fill summary:' "$fill_out")

a_limit=$((memory_mib * 1024 * 12 / 10 + a_base))
echo "RSS after the fill: $a_rss KiB (growth $((a_rss - a_base)) KiB), peak (VmHWM) $a_hwm KiB;" \
  "limit ${memory_mib} MiB x 1.2 + baseline = $a_limit KiB"
a_rss_ok=PASS;  [ "$a_rss" -lt "$a_limit" ] || { a_rss_ok=FAIL; failed=1; }
a_hwm_note=$([ "$a_hwm" -lt "$a_limit" ] && echo "below" || echo "ABOVE")
written=$(( $(field ok "$summary") + $(field overloaded "$summary") + $(field too_large "$summary") + $(field other "$summary") ))
a_all_ok=PASS;  [ "$(field ok "$summary")" -eq "$written" ] || { a_all_ok=FAIL; failed=1; }
a_newest_ok=PASS
[ "$(field newest_exact "$summary")" -eq "$(field newest_checked "$summary")" ] || { a_newest_ok=FAIL; failed=1; }
stop_server
fi

# ---------------------------------------------------------------------------------------------
if wants b; then
echo
echo "== b. idle connections: $connections connections, default --memory, --cores 2"
# One more than the probe holds, for the Stats call made while they are open.
start_server idle --cores 2 --max-connections $((connections + 16))
b_base=$(status_kb "$server_pid" VmRSS)
echo "baseline RSS of the empty server: $b_base KiB"

idle_out="$work/idle.out"
mkfifo "$work/idle.in"
"$probe" idle --target "$server_addr" --connections "$connections" --hold 90s \
  <"$work/idle.in" >"$idle_out" 2>&1 &
probe_pid=$!
exec 3>"$work/idle.in"   # the probe holds its connections until this closes
for _ in $(seq 600); do
  grep -q '^idle: all' "$idle_out" && break
  kill -0 "$probe_pid" 2>/dev/null || break
  sleep 0.1
done
cat "$idle_out"
grep -q '^idle: all' "$idle_out" || fail "memory_probe idle did not establish its connections"
sleep 1   # let the server settle (deferred frees, timers)
b_rss=$(status_kb "$server_pid" VmRSS)
b_hwm=$(status_kb "$server_pid" VmHWM)
"$probe" stats --target "$server_addr" | grep '^stats summary' || echo "(stats failed)"
exec 3>&-
wait "$probe_pid"
probe_rc=$?
probe_pid=""
grep '^idle summary' "$idle_out" || true
[ "$probe_rc" -eq 0 ] || fail "memory_probe idle failed (exit status $probe_rc)"
sleep 1
b_after=$(status_kb "$server_pid" VmRSS)
b_per_conn=$(( (b_rss - b_base) * 1024 / connections ))
echo "RSS with $connections idle connections: $b_rss KiB (growth $((b_rss - b_base)) KiB," \
  "$b_per_conn bytes per connection), peak $b_hwm KiB; after they closed: $b_after KiB"
b_ok=PASS; [ "$b_per_conn" -le "$per_conn_goal" ] || { b_ok=FAIL; failed=1; }
stop_server
fi

# ---------------------------------------------------------------------------------------------
if wants c; then
echo
echo "== c. bytes per item: $item_count items of 16 B keys and 32 B values, --cores 1"
start_server items --cores 1 --memory 256MiB
c_base=$(status_kb "$server_pid" VmRSS)
echo "baseline RSS of the empty server: $c_base KiB"
c_load_out="$work/items-load.out"
# One get after the prefill: the prefill pass is what writes every key.
if ! timeout 300 "$load" --target "$server_addr" --workload get --prefill --keys "$item_count" \
  --key-size 16 --value-size 32 --requests 1 --connections 8 --pipeline 64 \
  --idle-poll 0s >"$c_load_out" 2>&1; then
  tail -n 20 "$c_load_out" >&2
  fail "percore-load --prefill failed"
fi
sleep 0.5
c_rss=$(status_kb "$server_pid" VmRSS)
c_stats=$("$probe" stats --target "$server_addr" | grep '^stats summary') || fail "stats failed"
echo "$c_stats"
c_items=$(field items "$c_stats")
c_evictions=$(field evictions "$c_stats")
[ "$c_items" -gt 0 ] || fail "the server holds no items"
c_per_item=$(( (c_rss - c_base) * 1024 / c_items ))
echo "RSS after the prefill: $c_rss KiB (growth $((c_rss - c_base)) KiB): $c_per_item bytes per" \
  "item ($c_items items, $c_evictions evicted)"
c_ok=PASS
[ "$c_per_item" -le "$per_item_goal" ] && [ "$c_items" -eq "$item_count" ] || { c_ok=FAIL; failed=1; }
stop_server
fi

# ---------------------------------------------------------------------------------------------
echo
echo "== report"
if wants a; then
  printf '%-58s %s\n' \
    "a. RSS after ${fill_bytes} into --memory ${memory_mib}MiB: $a_rss KiB < $a_limit KiB" "$a_rss_ok" \
    "   every write answered Ok: $(field ok "$summary") of $written" "$a_all_ok" \
    "   newest $(field newest_checked "$summary") keys exact: $(field newest_exact "$summary")" "$a_newest_ok"
  echo "   (a: baseline $a_base KiB, peak $a_hwm KiB, $a_hwm_note the limit)"
fi
if wants b; then
  printf '%-58s %s\n' "b. RSS per idle connection: $b_per_conn B <= $per_conn_goal B" "$b_ok"
  echo "   (b: baseline $b_base KiB, open $b_rss KiB, after close $b_after KiB)"
fi
if wants c; then
  printf '%-58s %s\n' "c. RSS per 48-byte item: $c_per_item B <= $per_item_goal B" "$c_ok"
  echo "   (c: baseline $c_base KiB, after $c_rss KiB, $c_items items of $item_count stored)"
fi
if [ "$failed" -ne 0 ]; then
  echo "measure-memory: a goal was missed"
  exit 1
fi
echo "measure-memory: every goal measured was met"
