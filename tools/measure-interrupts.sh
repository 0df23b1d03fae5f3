#!/usr/bin/env bash
# Rescheduling interrupts (RES, /proc/interrupts) on the server's CPU per request, and requests per
# server CPU-second: each server pinned to CPU 0 with --cores 1, percore-load on CPU 1, ping with
# 32 connections at pipeline 1 and 16, 5 s per run, two rounds alternating percore and peer-tokio.
#
#   tools/measure-interrupts.sh        (builds the release workspace first)
set -u
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet
bin=target/release
res0() { awk '/^ *RES:/ {print $2}' /proc/interrupts; }
run() { # server-binary pipeline
  local server=$1 p=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  taskset -c 0 $bin/$server --listen 127.0.0.1:$port --cores 1 >/dev/null 2>&1 &
  local pid=$!
  sleep 0.5
  local r0 t0 c0; r0=$(res0); t0=$(date +%s.%N); c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local json; json=$(mktemp)
  taskset -c 1 $bin/percore-load --target 127.0.0.1:$port --cores 1 --duration 5s --workload ping --value-size 16 --connections 32 --pipeline $p --json $json >/dev/null 2>&1
  local r1 t1 c1; r1=$(res0); t1=$(date +%s.%N); c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  # SIGTERM, not SIGINT: background jobs of a script ignore SIGINT, and peer-tokio sets no handler.
  kill -TERM $pid; wait $pid 2>/dev/null
  python3 - "$json" "$server" "$p" "$r0" "$r1" "$t0" "$t1" "$c0" "$c1" <<'PY'
import json,sys
j=json.load(open(sys.argv[1])); server,p=sys.argv[2],sys.argv[3]
r=int(sys.argv[5])-int(sys.argv[4]); secs=float(sys.argv[7])-float(sys.argv[6]); cpu=(int(sys.argv[9])-int(sys.argv[8]))/100
ops=j["ops"]
print(f"{server:<11} p{p:<3} {j['throughput']:>11.0f} ops/s  RES {r/secs:>8.0f}/s  {r/ops:.4f} per request  server CPU {cpu:.2f} s  {ops/cpu if cpu else 0:>10.0f} req per CPU-s")
PY
  rm -f "$json"
}
for round in 1 2; do for p in 1 16; do run percore $p; run peer-tokio $p; done; done
