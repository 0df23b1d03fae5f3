# Shell helpers shared by the measurement scripts in tools/ (sourced, not run).

# wait_listening PID OUT_FILE: prints the listening line percore writes first on stdout, once it
# appears in OUT_FILE; fails with a reason on stderr if the process exits first or nothing
# appears within 30 s.
wait_listening() {
  local pid=$1 out=$2 line=""
  for _ in $(seq 300); do
    line=$(head -n 1 "$out" 2>/dev/null)
    if [ -n "$line" ]; then
      echo "$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "percore exited at start-up" >&2; return 1; }
    sleep 0.1
  done
  echo "percore printed no listening line within 30 s" >&2
  return 1
}

# proc_status_kb PID FIELD: a field of /proc/PID/status in KiB (VmRSS, VmHWM, ...).
proc_status_kb() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null
}

# stop_percore PID SECONDS: SIGTERM, then SIGKILL if it has not exited within SECONDS; returns
# its exit status.
stop_percore() {
  local pid=$1 seconds=$2
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq $((seconds * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "percore did not exit within $seconds s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
}
