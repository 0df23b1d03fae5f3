"""What tools/bench-peers.sh and tools/noisy-neighbour.sh both need from the machine and from
percore-load's reports: a free port, durations as percore-load writes them, the CPUs' busy and
steal time from /proc/stat, and whether an open-loop run kept its schedule.

Their embedded Python imports it with `sys.path.insert(0, "tools/lib")` (both scripts run from
the repository's root)."""
import os
import re
import socket

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds(text):
    """A duration such as 3s, 500ms, 20us or 1m, in seconds; exits with a message otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|m)?", text)
    if not m:
        raise SystemExit(f"cannot read the duration {text!r} (e.g. 3s, 500ms, 20us)")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def cpu_times(cpus):
    """Per CPU in `cpus`: (busy, steal) in seconds since boot. busy is user+nice+system:
    interrupt time is left out because with IRQ time accounting it is charged to no process."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                v = [int(x) / TICK for x in vals]
                out[int(name[3:])] = (v[0] + v[1] + v[2], v[7] if len(v) > 7 else 0.0)
    return out


def behind_schedule(report):
    """Whether an open-loop percore-load run (its --json report) left over 1% of the requests
    its schedule asked for unsent: their connections were still waiting for the server, so its
    percentiles describe only the requests the server let through."""
    unsent = report.get("unsent", 0)
    return unsent > 0.01 * max(1, report.get("requests_sent", 0) + unsent)
