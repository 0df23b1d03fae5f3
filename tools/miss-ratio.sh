#!/usr/bin/env bash
# Miss ratio at equal memory: percore against memcached under percore-load's cache-aside
# workload (`--workload cache`: get a key, set it on a miss), issue 18 item 2.
#
#   tools/miss-ratio.sh                         # the whole matrix, about 4 minutes
#   CELLS=z0.99-mixed,scan tools/miss-ratio.sh  # some cells only
#
# Cells: Zipf 0.9, 0.99 and 1.2, each with fixed 100-byte values and with mixed values (64 B to
# 4 KiB, each key's size fixed by the key, uniform over the range), and a scan case: Zipf 0.99
# with fixed values and, after one memory's worth of gets into the measurement, a one-time
# sequential pass over as many cold keys as the memory holds (percore-load --scan-after and
# --scan-keys; the pass's own lookups are left out of the miss ratio, which is that of the Zipf
# keys, so it shows what the pass cost them).
#
# Each server gets the same memory for items: memcached `-m MIB -t 1`, percore
# `--memory MIBMiB --cores 1` (--memory is the total over its cores; with one core, all of it).
# Both are loaded over the memcached text protocol (percore's --memcached-listen), so the
# requests are the same bytes and only the stores differ. The keyspace is about 10 times what
# fits: 10 x MIB / (16 B key + mean value + 50 B), 50 B being about memcached's per-item
# overhead. Each server runs on SERVER_CPU, percore-load on LOAD_CPU (taskset).
#
# Steady state: per cell and server, a fresh server is first filled with uniformly drawn keys
# (runs of F / 2 gets until it reports evictions, so the memory is full: counts, like the other
# windows, so the fill's length does not depend on the machine's speed), then sent WARMUP x F of the
# cell's gets, then measured over MEASURE x F gets (F: the items that fit, as above; the scan
# cell measures MEASURE + 2 x F, the pass and one memory's worth before it included): miss
# ratio = 1 - percore-load's hit_ratio over the measured gets. Windows are counts of gets, not
# times, so both servers see the same request stream (same seeds) however fast each is.
# "drift" is the miss ratio of the window's second half minus its first half, by whole
# seconds (near 0 when the warm-up reached steady state; "-" for a window under 2 s; in the
# scan cell it shows the pass, which falls in the first half). The three runs use different --seed
# values (the draws differ; a key's value does not, so every hit is still checked byte for
# byte), and any wrong value fails the script.
#
# Memory: fixed-size cells use FIXED_MIB (16), mixed ones MIXED_MIB (64), so that each holds
# 30,000-100,000 items, which a warm-up of seconds turns over at the tens of thousands of gets
# per second a shared 2-CPU machine gives; bigger memories need longer WARMUPs.
#
# Settings (environment): FIXED_MIB [16], MIXED_MIB [64], FIXED_SIZE [100], MIXED_SIZE
# [64-4096], WARMUP [4], MEASURE [4], CONNECTIONS [8], PIPELINE [8],
# SERVER_CPU [0], LOAD_CPU [1], CELLS [all: z0.9-fixed,z0.9-mixed,z0.99-fixed,z0.99-mixed,
# z1.2-fixed,z1.2-mixed,scan], OUT_DIR [target/miss-ratio], SKIP_BUILD [unset].
#
# Prints the matrix (markdown) and writes it, with each measured run's JSON and memcached's
# `stats slabs` and `stats items` at the end of each cell (NAME.memcached.slabs.txt), under OUT_DIR.
# Exits 1 if a run had wrong or lost replies, 2 if the measurement could not be made.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/server.sh
source tools/lib/server.sh

FIXED_MIB=${FIXED_MIB:-16} MIXED_MIB=${MIXED_MIB:-64}
FIXED_SIZE=${FIXED_SIZE:-100} MIXED_SIZE=${MIXED_SIZE:-64-4096}
WARMUP=${WARMUP:-4} MEASURE=${MEASURE:-4}
CONNECTIONS=${CONNECTIONS:-8} PIPELINE=${PIPELINE:-8}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
CELLS=${CELLS:-z0.9-fixed,z0.9-mixed,z0.99-fixed,z0.99-mixed,z1.2-fixed,z1.2-mixed,scan}
OUT_DIR=${OUT_DIR:-target/miss-ratio}
KEY_SIZE=16
PER_ITEM_OVERHEAD=50
PRIME_MAX_RUNS=40

fail() { echo "miss-ratio: $*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is needed${2:+ ($2)}"; }
need memcached "apt-get install memcached"
need python3
need taskset
need cargo

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "miss-ratio: cargo build --release -p percore -p percore-load" >&2
  cargo build --release --quiet -p percore -p percore-load || fail "build failed"
fi
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT_DIR"
work=$(mktemp -d /tmp/percore-miss-ratio.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 2' INT TERM
# Copies, so that a rebuild in the shared target directory cannot swap binaries mid-run.
cp "$target_dir/release/percore" "$target_dir/release/percore-load" "$work/" ||
  fail "no release binaries in $target_dir/release"

# text_stats ADDR NAME...: the values of memcached `stats` fields, one per line, in order.
text_stats() {
  python3 - "$@" <<'EOF'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(b"stats\r\n")
    data = b""
    while not data.endswith(b"END\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
stats = {}
for line in data.decode().splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[0] == "STAT":
        stats[parts[1]] = parts[2]
for name in sys.argv[2:]:
    print(stats.get(name, "-"))
EOF
}

# start_server KIND MIB: a fresh server pinned to SERVER_CPU; sets server_pid, server_addr.
start_server() {
  local kind=$1 mib=$2 out="$work/$1.out"
  case $kind in
    percore)
      PERCORE_LOG=warn taskset -c "$SERVER_CPU" "$work/percore" --listen 127.0.0.1:0 \
        --memcached-listen 127.0.0.1:0 --cores 1 --memory "${mib}MiB" >"$out" 2>"$work/$kind.err" &
      server_pid=$!
      local line
      line=$(wait_listening "$server_pid" "$out") || fail "percore did not start: $(tail -n 5 "$work/$kind.err")"
      server_addr=$(awk '{ print $NF }' <<<"$line")
      ;;
    memcached)
      local port
      port=$(free_port)
      # As root memcached needs a user to switch to; as anyone else it ignores -u.
      taskset -c "$SERVER_CPU" memcached -l 127.0.0.1 -p "$port" -U 0 -t 1 -m "$mib" -u nobody \
        >"$out" 2>"$work/$kind.err" &
      server_pid=$!
      server_addr=127.0.0.1:$port
      for _ in $(seq 100); do
        text_stats "$server_addr" pid >/dev/null 2>&1 && return 0
        kill -0 "$server_pid" 2>/dev/null || fail "memcached did not start: $(tail -n 5 "$work/$kind.err")"
        sleep 0.1
      done
      fail "memcached did not answer within 10 s"
      ;;
  esac
}

# dump_stats ADDR FILE: memcached's `stats slabs` and `stats items` (what each slab class
# holds), written to FILE.
dump_stats() {
  python3 - "$1" >"$2" <<'EOF'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    for command in (b"stats slabs", b"stats items"):
        s.sendall(command + b"\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        sys.stdout.write(data.decode())
EOF
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
  server_pid=""
}

# load SEED JSON ARGS...: one percore-load cache run against server_addr, pinned to LOAD_CPU.
# Fails the script on wrong or lost replies.
load() {
  local seed=$1 json=$2; shift 2
  taskset -c "$LOAD_CPU" "$work/percore-load" --cores 1 --protocol memcached \
    --target "$server_addr" --workload cache --key-size "$KEY_SIZE" \
    --connections "$CONNECTIONS" --pipeline "$PIPELINE" --seed "$seed" --quiet \
    --json "$json" "$@" >"$work/load.out" 2>&1
  local status=$?
  if [ "$status" -ne 0 ]; then
    cat "$work/load.out" >&2
    [ "$status" -eq 1 ] && { echo "miss-ratio: wrong or lost replies (above)" >&2; exit 1; }
    fail "percore-load could not run"
  fi
}

results="$work/results.tsv"
: >"$results"

# cell NAME DIST SIZE MEAN_SIZE MIB [SCAN]: measures both servers on one cell.
cell() {
  local name=$1 dist=$2 size=$3 mean=$4 mib=$5 scan=${6:-}
  local fits=$((mib * 1048576 / (KEY_SIZE + mean + PER_ITEM_OVERHEAD)))
  local keys=$((10 * fits))
  local extra=() measured=$((MEASURE * fits))
  if [ -n "$scan" ]; then
    extra=(--scan-after "$fits" --scan-keys "$fits")
    measured=$((measured + 2 * fits))
  fi
  for server in percore memcached; do
    echo "== $name: $server, $mib MiB, $keys keys, $dist, values $size${scan:+, a pass over $fits cold keys after $fits gets}" >&2
    start_server "$server" "$mib"
    local primed=0 seed=100
    for _ in $(seq "$PRIME_MAX_RUNS"); do
      load "$seed" "$work/prime.json" --keys "$keys" --value-size "$size" --key-dist uniform \
        --requests $((fits / 2))
      seed=$((seed + 1))
      if [ "$(text_stats "$server_addr" evictions)" != 0 ]; then primed=1; break; fi
    done
    [ "$primed" = 1 ] || fail "$server did not fill $mib MiB in $PRIME_MAX_RUNS runs of $((fits / 2)) gets"
    load 2 "$work/warmup.json" --keys "$keys" --value-size "$size" --key-dist "$dist" \
      --requests $((WARMUP * fits))
    local json="$OUT_DIR/$name.$server.json"
    load 3 "$json" --keys "$keys" --value-size "$size" --key-dist "$dist" --requests "$measured" \
      "${extra[@]}"
    local items evictions
    { read -r items; read -r evictions; } < <(text_stats "$server_addr" curr_items evictions)
    echo "   $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("miss ratio %.4f, %d gets" % (1 - d["hit_ratio"], d["cache"]["lookups"]))' "$json"), $items items held, $evictions evicted" >&2
    [ "$server" = memcached ] && dump_stats "$server_addr" "$OUT_DIR/$name.memcached.slabs.txt"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$server" "$mib" "$keys" "$json" "$items" "$evictions" >>"$results"
    stop_server
  done
}

IFS=, read -ra wanted <<<"$CELLS"
for c in "${wanted[@]}"; do
  case $c in
    z0.9-fixed) cell "$c" zipf:0.9 "$FIXED_SIZE" "$FIXED_SIZE" "$FIXED_MIB" ;;
    z0.99-fixed) cell "$c" zipf:0.99 "$FIXED_SIZE" "$FIXED_SIZE" "$FIXED_MIB" ;;
    z1.2-fixed) cell "$c" zipf:1.2 "$FIXED_SIZE" "$FIXED_SIZE" "$FIXED_MIB" ;;
    z0.9-mixed | z0.99-mixed | z1.2-mixed)
      lo=${MIXED_SIZE%-*} hi=${MIXED_SIZE#*-}
      s=${c#z}; s=${s%-mixed}
      cell "$c" "zipf:$s" "$MIXED_SIZE" $(((lo + hi) / 2)) "$MIXED_MIB" ;;
    scan) cell "$c" zipf:0.99 "$FIXED_SIZE" "$FIXED_SIZE" "$FIXED_MIB" scan ;;
    *) fail "unknown cell $c (z0.9-fixed z0.9-mixed z0.99-fixed z0.99-mixed z1.2-fixed z1.2-mixed scan)" ;;
  esac
done

python3 - "$results" "$OUT_DIR/matrix.md" "$WARMUP" "$MEASURE" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
cells = {}
for name, server, mib, keys, path, items, evictions in rows:
    d = json.load(open(path))
    miss = 1 - d["hit_ratio"]
    # Drift: the second half of the measured window against the first (whole seconds only).
    secs = [s for s in d["cache"]["per_second"] if s["end_s"] > 0 and s["length_s"] > 0.9 and s["lookups"]]
    half = len(secs) // 2
    def miss_of(part):
        lookups = sum(s["lookups"] for s in part)
        return 1 - sum(s["hits"] for s in part) / lookups if lookups else float("nan")
    drift = miss_of(secs[half:]) - miss_of(secs[:half]) if half else None
    cells.setdefault(name, {"mib": mib, "keys": keys})[server] = (miss, int(items), drift, d["cache"]["lookups"])
out = []
out.append(f"Warm-up {sys.argv[3]} x the items that fit in gets, measured {sys.argv[4]} x (the scan cell: + 2 x); "
           "miss ratio = 1 - hit ratio of the measured gets; drift = miss ratio of the window's second half minus its first.\n")
out.append("| cell | memory | keys | percore miss | memcached miss | percore / memcached | items held (percore / memcached) | drift (percore / memcached) |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, c in cells.items():
    p, m = c.get("percore"), c.get("memcached")
    if not p or not m:
        continue
    ratio = f"{p[0] / m[0]:.2f}" if m[0] > 0 else "-"
    # A window of under two whole seconds has no halves to compare.
    drift = " / ".join("-" if d is None else f"{d:+.4f}" for d in (p[2], m[2]))
    out.append(f"| {name} | {c['mib']} MiB | {int(c['keys']):,} | {p[0]:.4f} | {m[0]:.4f} | {ratio} | "
               f"{p[1]:,} / {m[1]:,} | {drift} |")
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text, end="")
EOF
