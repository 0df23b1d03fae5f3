"""libmemcached's own protocol checker and load generator against the server under test.
Debian's libmemcached-tools names them memccapable and memcaslap (upstream: memcapable,
memaslap). A missing binary is a failure that names tools/install-test-deps.sh, never a skip."""

from __future__ import annotations

import re
import subprocess

from conftest import record_tool_result, require_binary

CAPABLE_LINE = re.compile(r"^(ascii .+?)\s+\[(pass|FAIL|skip)\]\s*$")


def test_memccapable_ascii(fresh_server):
    binary = require_binary("memccapable")
    # -a: the ASCII tests only (the binary protocol is not served). -t 5: an I/O that waits
    # longer than 5 s fails the test case instead of hanging. memccapable flushes the server,
    # hence a server of its own.
    argv = [binary, "-a", "-t", "5", "-h", fresh_server.host, "-p", str(fresh_server.port)]
    run = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=120,
    )
    out = run.stdout.decode("utf-8", "replace")
    results = {}
    for line in out.splitlines():
        m = CAPABLE_LINE.match(line)
        if m:
            results[m.group(1)] = m.group(2)
    summary = out.strip().splitlines()[-1] if out.strip() else "(no output)"
    record_tool_result(
        f"memccapable -a: {sum(v == 'pass' for v in results.values())} of {len(results)} ASCII "
        f"tests passed, exit {run.returncode}, summary line: {summary!r}"
    )
    failed = [name for name, status in results.items() if status != "pass"]
    assert len(results) >= 27, f"expected memccapable's 27 ASCII tests, parsed {len(results)}:\n{out}"
    assert not failed, f"memccapable tests not passed: {failed}\n{out}"
    assert summary == "All tests passed", f"memccapable summary: {summary!r}\n{out}"
    assert run.returncode == 0, f"memccapable exited {run.returncode}\n{out}"


def test_memcaslap_verified_load(fresh_server):
    binary = require_binary("memcaslap")
    # 10 s of 90% get / 10% set from 2 threads x 16 connections, verifying every value read
    # (--verify=1.0). A 1k-key window per connection keeps the data set (about 16k items of up
    # to 1 KiB) well inside 64 MiB, so nothing is evicted and every get must hit.
    argv = [
        binary, "-s", fresh_server.address, "-t", "10s", "-T", "2", "-c", "16",
        "--verify=1.0", "-w", "1k", "-S", "10s",
    ]
    run = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=60,
    )
    out = run.stdout.decode("utf-8", "replace")
    err = run.stderr.decode("utf-8", "replace")
    both = f"stdout:\n{out[-6000:]}\nstderr:\n{err[-3000:]}"
    assert run.returncode == 0, f"memcaslap exited {run.returncode}\n{both}"
    counters = dict(
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^(cmd_get|cmd_set|get_misses|verify_misses|verify_failed|"
                             r"expired_get|unexpired_unget): (\d+)\s*$", out, re.M)
    )
    run_line = next((l for l in out.splitlines() if l.startswith("Run time:")), None)
    record_tool_result(f"memcaslap: exit {run.returncode}; {run_line}; {counters}")
    # memcaslap prints "<fd ERROR", "<fd CLIENT_ERROR ...", "<fd SERVER_ERROR ...",
    # "<fd EXISTS", "<fd NOT_STORED" for unexpected replies, and "Server ... disconnect" on a drop.
    reply_errors = re.findall(r"^<\d+ .*$", out, re.M)
    assert not reply_errors, (
        f"memcaslap got {len(reply_errors)} error replies, first: {reply_errors[:5]}\n{both}"
    )
    assert "disconnect" not in err, f"memcaslap lost connections\n{both}"
    for name in ("cmd_get", "cmd_set", "get_misses", "verify_misses", "verify_failed"):
        assert name in counters, f"memcaslap printed no {name} line\n{both}"
    assert run_line is not None, f"memcaslap printed no 'Run time:' line\n{both}"
    assert counters["cmd_get"] > 1000 and counters["cmd_set"] > 100, f"too little load ran: {counters}"
    bad = {k: counters[k] for k in ("get_misses", "verify_misses", "verify_failed") if counters[k]}
    assert not bad, f"memcaslap saw errors: {bad}\n{both}"
