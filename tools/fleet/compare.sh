#!/usr/bin/env bash
# The same load through nutcracker and straight to the hosts (percore-load --distribute, native
# and memcached protocol), ROUNDS times, inside a fleet made by tools/fleet.sh:
#
#   cargo build --release --workspace
#   sudo tools/fleet.sh -k 3 --percore target/release/percore -- \
#       tools/fleet/compare.sh target/release/percore-load [ROUNDS]
#
# Prints the keys each host holds after the keyspace was set through nutcracker, then per run the
# throughput, the errors, the load generator's CPU time (user, system) and the CPU time
# nutcracker spent during the run. The hosts are named as nutcracker names them, so every run
# reads and writes the keys where nutcracker put them.
set -euo pipefail

load=${1:?usage: compare.sh PERCORE_LOAD [ROUNDS]}
rounds=${2:-3}
: "${FLEET_NAMESPACE:?run me through tools/fleet.sh -- ...}" "${FLEET_NUTCRACKER:?}"
: "${FLEET_TARGETS:?}" "${FLEET_MEMCACHED_TARGETS:?}"

native=() memcached=() hosts=()
for t in $FLEET_TARGETS; do
    native+=(--target "$t")
done
for t in $FLEET_MEMCACHED_TARGETS; do
    memcached+=(--target "$t")
    hosts+=("${t#*=}")
done
common=(--workload mixed --mix get:90,set:10 --keys 30000 --duration 5s --quiet --idle-poll 0s)

nutcracker_pid=""
for pid in $(ip netns pids "$FLEET_NAMESPACE"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == nutcracker ]] && nutcracker_pid=$pid
done
[[ -n $nutcracker_pid ]] || { echo "compare: no nutcracker in $FLEET_NAMESPACE" >&2; exit 1; }
# utime + stime of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() {
    local name=$1 before after out
    shift
    before=$(ticks "$nutcracker_pid")
    out=$(/usr/bin/time -f "load generator CPU: user %U s, system %S s" "$load" "$@" "${common[@]}" 2>&1) || true
    after=$(ticks "$nutcracker_pid")
    printf '%-28s %s; %s; %s; nutcracker CPU %s s\n' "$name" \
        "$(grep -oE 'Throughput: [0-9.]+ ops/s' <<<"$out")" "$(grep -E '^Errors' <<<"$out")" \
        "$(grep 'load generator CPU' <<<"$out")" \
        "$(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')"
}

"$load" --protocol memcached --target "$FLEET_NUTCRACKER" --workload set --keys 30000 --prefill \
    --requests 1 --quiet >/dev/null
echo "== keys per host after 30000 keys were set through nutcracker (memcached stats curr_items)"
for h in "${hosts[@]}"; do
    python3 - "${h%:*}" "${h##*:}" <<'EOF'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
items = [l.split()[2].decode() for l in data.split(b"\r\n") if l.startswith(b"STAT curr_items ")]
print(f"{sys.argv[1]}: curr_items {items[0] if items else '?'}")
EOF
done
for ((r = 1; r <= rounds; r++)); do
    echo "== round $r"
    run "nutcracker 8x24" --protocol memcached --target "$FLEET_NUTCRACKER" --connections 8 --pipeline 24
    run "direct native 8x24" --distribute ketama "${native[@]}" --connections 8 --pipeline 24
    run "direct memcached 8x24" --protocol memcached --distribute ketama "${memcached[@]}" --connections 8 --pipeline 24
    run "direct native 2x96" --distribute ketama "${native[@]}" --connections 2 --pipeline 96
    run "direct memcached 2x96" --protocol memcached --distribute ketama "${memcached[@]}" --connections 2 --pipeline 96
done
