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

# free_port: a TCP port on 127.0.0.1 that is free now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
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

# cpu_cap_create PERCENT [PERIOD_US]: makes a cgroup whose processes may use PERCENT% of one CPU,
# enforced every PERIOD_US microseconds (default 10000; the kernel takes 1000 to 1000000), with
# cgroup v2's cpu.max where the cpu controller is on v2, else v1's cfs quota, and sets CPU_CAP to
# its directory. Fails with a reason if no writable cpu controller exists (it needs root).
# Measurement scripts use it so the server, not the generator, saturates.
cpu_cap_create() {
  local period_us=${2:-10000} v2=/sys/fs/cgroup
  local quota_us=$(($1 * period_us / 100))
  [[ -f /sys/fs/cgroup/unified/cgroup.controllers ]] && v2=/sys/fs/cgroup/unified
  CPU_CAP=""
  if ((quota_us < 1000 || period_us < 1000 || period_us > 1000000)); then
    echo "cannot cap the server's CPU at $1% of ${period_us} us: the kernel needs a quota and" \
      "a period of at least 1000 us, a period of at most 1000000 us" >&2
    return 1
  fi
  if grep -qw cpu "$v2/cgroup.controllers" 2>/dev/null; then
    echo +cpu >"$v2/cgroup.subtree_control" 2>/dev/null || true
    CPU_CAP=$v2/percore-cap.$$.$RANDOM
    mkdir "$CPU_CAP" && echo "$quota_us $period_us" >"$CPU_CAP/cpu.max" && return 0
  elif [[ -d /sys/fs/cgroup/cpu ]]; then
    CPU_CAP=/sys/fs/cgroup/cpu/percore-cap.$$.$RANDOM
    mkdir "$CPU_CAP" && echo "$period_us" >"$CPU_CAP/cpu.cfs_period_us" &&
      echo "$quota_us" >"$CPU_CAP/cpu.cfs_quota_us" && return 0
  fi
  echo "cannot cap the server's CPU: no writable cgroup cpu controller (cgroup v2 cpu.max or" \
    "v1 cpu.cfs_quota_us; run as root, or set SERVER_CPU_QUOTA=0 for no cap)" >&2
  cpu_cap_remove
  return 1
}

# cpu_group_create: makes a cgroup with no quota and sets CPU_CAP to it (for cpu_weight_set, so
# that a generator can be favoured over other work on its CPU). Fails with a reason like
# cpu_cap_create.
cpu_group_create() {
  cpu_cap_create 100 10000 || return 1
  if [[ -f "$CPU_CAP/cpu.max" ]]; then
    echo "max 10000" >"$CPU_CAP/cpu.max"
  else
    echo -1 >"$CPU_CAP/cpu.cfs_quota_us"
  fi
}

# cpu_weight_set WEIGHT: the share of contended CPU the cgroup in CPU_CAP gets against others, on
# cgroup v2's cpu.weight scale (1-10000, default 100; v1's cpu.shares is that times 1024 / 100).
# A capped server with a high weight gets its whole quota even while other work wants the CPU.
cpu_weight_set() {
  if [[ -f "$CPU_CAP/cpu.weight" ]]; then
    echo "$1" >"$CPU_CAP/cpu.weight"
  else
    echo $(($1 * 1024 / 100)) >"$CPU_CAP/cpu.shares"
  fi
}

# cpu_cap_kind: how the cap in CPU_CAP is enforced, for reports ("cgroup v2 cpu.max" or
# "cgroup v1 cpu.cfs_quota_us").
cpu_cap_kind() {
  if [[ -f "$CPU_CAP/cpu.max" ]]; then echo "cgroup v2 cpu.max"; else echo "cgroup v1 cpu.cfs_quota_us"; fi
}

# cpu_cap_add PID: moves the process, every thread of it, under the cap (no-op without one).
cpu_cap_add() {
  [[ -z "${CPU_CAP:-}" ]] || echo "$1" >"$CPU_CAP/cgroup.procs"
}

# cpu_cap_remove: removes the cgroup once its processes have exited.
cpu_cap_remove() {
  [[ -n "${CPU_CAP:-}" ]] && rmdir "$CPU_CAP" 2>/dev/null
  CPU_CAP=""
}
