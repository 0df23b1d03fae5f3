#!/usr/bin/env bash
# A fleet of percore hosts on this machine: K network namespaces joined by veth pairs to a
# bridge, one percore in each, and nutcracker (twemproxy) in front. Needs root (or CAP_NET_ADMIN
# and CAP_SYS_ADMIN), iproute2 and Debian's nutcracker.
#
#   tools/fleet.sh [run] [-k K] [--percore BIN] [-- COMMAND...]
#       Makes the fleet, prints its addresses, then runs COMMAND in the switch namespace (where
#       nutcracker runs; it reaches every host) or, without one, waits for Ctrl-C. Everything is
#       torn down on exit, on Ctrl-C and on any failure. COMMAND gets FLEET_NAMESPACE,
#       FLEET_NUTCRACKER (HOST:PORT), FLEET_TARGETS and FLEET_MEMCACHED_TARGETS (hI=HOST:PORT
#       each, named as nutcracker names them: pass them to percore-load --distribute --target).
#   tools/fleet.sh net-up NAME K        the namespaces only (tests/fleet.rs uses these three)
#   tools/fleet.sh add-host NAME I      one more host namespace, number I
#   tools/fleet.sh del-host NAME I      removes host namespace I with its processes (a host
#                                       "rebooted" is del-host then add-host: same address)
#   tools/fleet.sh net-down NAME        removes every namespace NAME made, with its processes
#
# What it makes, and nothing else (no address exists outside these namespaces, so nothing it
# starts can reach or be reached from the machine's own networks):
#   NAME-sw   bridge br0 with $FLEET_SUBNET.254/24; nutcracker and COMMAND run here
#   NAME-hI   eth0 with $FLEET_SUBNET.(I+1)/24, a veth whose peer hI sits on br0; percore here
# FLEET_SUBNET defaults to 10.221.14 (10.221.14.0/24, private; chosen to be unlikely to clash,
# though only these namespaces ever see it). NAME defaults to pcfleet-PID.
set -euo pipefail
# ip and nutcracker live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

subnet=${FLEET_SUBNET:-10.221.14}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() {
    echo "fleet: $*" >&2
    exit 1
}

# Every namespace NAME made (NAME-sw, NAME-h0, ...).
namespaces() {
    ip netns list | awk '{print $1}' | grep -E "^$1-(sw|h[0-9]+)$" || true
}

net_add_host() {
    local name=$1 i=$2
    local ns="$name-h$i"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add eth0 netns "$ns" type veth peer name "h$i" netns "$name-sw"
    ip -n "$ns" addr add "$subnet.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$name-sw" link set "h$i" master br0
    ip -n "$name-sw" link set "h$i" up
}

net_up() {
    local name=$1 k=$2
    [[ $k =~ ^[0-9]+$ ]] && ((k >= 1 && k <= 200)) || die "K must be 1..200, not $k"
    [[ -z $(namespaces "$name") ]] || die "namespaces $name-* exist already"
    ip netns add "$name-sw"
    ip -n "$name-sw" link set lo up
    ip -n "$name-sw" link add br0 type bridge
    ip -n "$name-sw" addr add "$subnet.254/24" dev br0
    ip -n "$name-sw" link set br0 up
    local i
    for ((i = 0; i < k; i++)); do
        net_add_host "$name" "$i"
    done
}

net_del_host() {
    local name=$1 i=$2 pid
    local ns="$name-h$i"
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Deleting the bridge side removes the pair at once, so the name is free for add-host
    # (a namespace's own teardown is asynchronous).
    ip -n "$name-sw" link del "h$i" 2>/dev/null || true
    ip netns del "$ns"
    # The switch forgets the old interface's MAC address, so the next one is learnt at once.
    ip -n "$name-sw" neigh flush dev br0 2>/dev/null || true
}

net_down() {
    local name=$1 ns pid
    for ns in $(namespaces "$name"); do
        # Only processes inside a namespace this script made, each by its id.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}

# Waits until ADDR:PORT accepts a connection from inside namespace NS.
wait_port() {
    local ns=$1 addr=$2 port=$3 tries
    for ((tries = 0; tries < 100; tries++)); do
        if ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing listens on $addr:$port in $ns"
}

# Stops what run_fleet started (SIGTERM, each by its id, so percore prints its exit report),
# then removes the namespaces and anything still in them.
teardown() {
    local name=$1 work=$2 pid
    for pid in "${started[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    net_down "$name"
    rm -rf "$work"
}

run_fleet() {
    local k=3 percore="" command=()
    while (($#)); do
        case $1 in
        -k) k=${2:?-k needs a number}; shift 2 ;;
        --percore) percore=${2:?--percore needs a path}; shift 2 ;;
        --) shift; command=("$@"); break ;;
        *) die "unknown argument $1 (see the top of $0)" ;;
        esac
    done
    if [[ -z $percore ]]; then
        for p in "${CARGO_TARGET_DIR:-$repo/target}/release/percore" "${CARGO_TARGET_DIR:-$repo/target}/debug/percore"; do
            [[ -x $p ]] && { percore=$p; break; }
        done
    fi
    [[ -x $percore ]] || die "no percore binary (build it, or pass --percore BIN)"
    command -v nutcracker >/dev/null || die "nutcracker is not installed (tools/install-test-deps.sh)"

    local name="pcfleet-$$"
    local work
    work=$(mktemp -d)
    started=()
    # shellcheck disable=SC2064 # expand now: the trap must remove what this run made
    trap "teardown '$name' '$work'" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    net_up "$name" "$k"

    # Hosts take turns on the CPUs this script may use, one core each.
    local cpus
    mapfile -t cpus < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' |
        awk -F- '{ if (NF == 2) { for (c = $1; c <= $2; c++) print c } else print $1 }')
    local i servers=""
    for ((i = 0; i < k; i++)); do
        local ip="$subnet.$((i + 1))"
        ip netns exec "$name-h$i" taskset -c "${cpus[i % ${#cpus[@]}]}" "$percore" --cores 1 \
            --listen "$ip:7070" --shard-ports 7100 --memcached-listen "$ip:11211" \
            --memory 64MiB --idle-poll 0s --allow "127.0.0.0/8,$subnet.0/24" >"$work/h$i.out" 2>&1 &
        started+=($!)
        servers+="    - $ip:11211:1 h$i"$'\n'
    done
    local conf
    conf=$(<"$here/fleet/nutcracker.yml")
    conf=${conf//@LISTEN@/$subnet.254:22121}
    printf '%s\n' "${conf//@SERVERS@/${servers%$'\n'}}" >"$work/nutcracker.yml"
    for ((i = 0; i < k; i++)); do
        wait_port "$name-h$i" "$subnet.$((i + 1))" 11211
    done
    ip netns exec "$name-sw" nutcracker -c "$work/nutcracker.yml" -a "$subnet.254" -s 22222 -i 1000 \
        -o "$work/nutcracker.log" &
    started+=($!)
    wait_port "$name-sw" "$subnet.254" 22121

    local targets=() memcached_targets=()
    for ((i = 0; i < k; i++)); do
        targets+=("h$i=$subnet.$((i + 1)):7070")
        memcached_targets+=("h$i=$subnet.$((i + 1)):11211")
        echo "fleet: host $i in $name-h$i: $(head -n1 "$work/h$i.out")"
    done
    echo "fleet: nutcracker (memcached protocol) on $subnet.254:22121 in $name-sw, stats on :22222"
    echo "fleet: hosts named as nutcracker names them: native ${targets[*]}, memcached ${memcached_targets[*]}"
    export FLEET_NAMESPACE="$name-sw" FLEET_NUTCRACKER="$subnet.254:22121"
    export FLEET_TARGETS="${targets[*]}" FLEET_MEMCACHED_TARGETS="${memcached_targets[*]}"
    if ((${#command[@]})); then
        ip netns exec "$name-sw" "${command[@]}"
    else
        echo "fleet: up; Ctrl-C tears it down (run commands in it: ip netns exec $name-sw ...)"
        # `wait` returns as soon as a signal arrives (a foreground sleep would delay the trap).
        while :; do
            sleep 1 &
            wait $! || true
        done
    fi
}

case ${1:-run} in
net-up) net_up "${2:?NAME}" "${3:?K}" ;;
add-host) net_add_host "${2:?NAME}" "${3:?I}" ;;
del-host) net_del_host "${2:?NAME}" "${3:?I}" ;;
net-down) net_down "${2:?NAME}" ;;
run) shift || true; run_fleet "$@" ;;
-*) run_fleet "$@" ;;
*) die "unknown command $1 (see the top of $0)" ;;
esac
