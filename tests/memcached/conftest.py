"""Fixtures for the third-party memcached suite: they start the server under test themselves.

The server under test is chosen by the environment variable MEMCACHED_UNDER_TEST:

* ``percore`` (the default) runs ``$PERCORE_BIN`` (default ``target/debug/percore`` under the
  repository root) as ``--listen 127.0.0.1:0 --memcached-listen 127.0.0.1:0 --cores 2
  --memory 64MiB`` plus ``$PERCORE_EXTRA_ARGS`` (split like a shell would), and takes the
  memcached address from the ``memcached on HOST:PORT`` part of its first stdout line.
* ``memcached`` runs Debian's ``memcached -l 127.0.0.1 -p PORT -U 0 -t 2 -m 64 -I 2m``: the
  reference the suite was validated against.

Servers are stopped with SIGTERM, then SIGKILL after 10 s, in fixture teardown (which runs on
failure too), at interpreter exit, and by the kernel if pytest itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pymemcache.client.base import Client

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run tools/install-test-deps.sh (as root) to install the third-party test tools"

MODE = os.environ.get("MEMCACHED_UNDER_TEST", "percore")
if MODE not in ("percore", "memcached"):
    raise pytest.UsageError(
        f"MEMCACHED_UNDER_TEST={MODE!r}: expected 'percore' or 'memcached'"
    )

MEMORY_BYTES = 64 * 1024 * 1024
THREADS = 2
# Both servers must store a value of exactly 1 MiB. percore refuses anything longer; memcached
# (run with -I 2m, since its default 1 MiB item limit counts the item header too) refuses values
# past 2 MiB, so "one byte over the limit" differs by mode.
MAX_VALUE_TESTED = 1024 * 1024
TOO_LARGE = {"percore": 1024 * 1024 + 1, "memcached": 2 * 1024 * 1024 + 1}[MODE]

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_live: set["ServerProcess"] = set()


def require_binary(name: str) -> str:
    """The path of `name`, or a test failure that says how to install it. Never a skip."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


try:
    # Loaded once here: dlopen in the forked child of a threaded process could deadlock.
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if pytest dies without running its teardown."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class ServerProcess:
    """One running server under test: `host`, `port` (its memcached text-protocol address)."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.mode = MODE
        self.too_large = TOO_LARGE
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        if MODE == "percore":
            self._start_percore(extra_args)
        else:
            self._start_memcached(extra_args)

    # -- starting -------------------------------------------------------------------------

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            preexec_fn=_die_with_parent,
        )
        _live.add(self)
        threading.Thread(target=self._pump_stdout, args=(self.proc.stdout,), daemon=True).start()

    def _pump_stdout(self, stdout) -> None:
        # Reads stdout to its end so the server never blocks on a full pipe.
        with stdout:
            self._read_lines(stdout)
        self._lines.put(None)

    def _read_lines(self, stdout) -> None:
        for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_lines.append(line)
            self._lines.put(line)

    def stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _fail_start(self, why: str) -> None:
        detail = (
            f"{why}\ncommand: {shlex.join(self.argv)}\n"
            f"stdout so far: {self.stdout_lines!r}\nstderr:\n{self.stderr_text()[-4000:]}"
        )
        self.stop(check=False)
        pytest.fail(detail, pytrace=False)

    def _start_percore(self, extra_args: tuple[str, ...]) -> None:
        binary = os.environ.get("PERCORE_BIN", str(REPO_ROOT / "target" / "debug" / "percore"))
        if not os.path.isabs(binary):
            binary = str(REPO_ROOT / binary)
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"percore binary {binary!r} not found: build it (cargo build) or set PERCORE_BIN",
                pytrace=False,
            )
        argv = [
            binary,
            "--listen", "127.0.0.1:0",
            "--memcached-listen", "127.0.0.1:0",
            "--cores", str(THREADS),
            "--memory", "64MiB",
            *shlex.split(os.environ.get("PERCORE_EXTRA_ARGS", "")),
            *extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("PERCORE_LOG", "warn")
        self._spawn(argv, env)
        try:
            first = self._lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            self._fail_start(f"percore printed no line within {STARTUP_TIMEOUT:.0f} s")
        if first is None:
            self._fail_start(f"percore exited ({self.proc.wait()}) before printing its address")
        m = re.search(r"memcached on (\S+?:\d+)", first)
        if not m:
            self._fail_start(
                f"percore's first line has no 'memcached on HOST:PORT' part: {first!r}"
            )
        self.host, self.port = _parse_host_port(m.group(1))
        self._wait_connectable()

    def _start_memcached(self, extra_args: tuple[str, ...]) -> None:
        binary = require_binary("memcached")
        for _ in range(5):
            port = _free_port()
            argv = [
                binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                "-t", str(THREADS), "-m", str(MEMORY_BYTES >> 20), "-I", "2m",
            ]
            if os.geteuid() == 0:
                argv += ["-u", "root"]  # memcached refuses to run as root without it
            argv += list(extra_args)
            self._spawn(argv)
            self.port = port
            if self._wait_connectable(fail=False):
                return
            # Most likely someone took the port between our probe and memcached's bind.
            self.stop(check=False)
            _live.discard(self)
        self._fail_start("memcached did not start listening after 5 tries")

    def _wait_connectable(self, fail: bool = True) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.02)
        if fail:
            self._fail_start(f"nothing accepted connections on {self.host}:{self.port}")
        return False

    # -- using ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, **kwargs) -> Client:
        """A pymemcache client with serde off, waiting for every reply (noreply off)."""
        options = dict(connect_timeout=5, timeout=5, default_noreply=False, no_delay=True)
        options.update(kwargs)
        return Client((self.host, self.port), **options)

    def raw(self) -> "RawConnection":
        return RawConnection(self.host, self.port)

    # -- stopping -------------------------------------------------------------------------

    def stop(self, check: bool = True) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT. With `check`, a server that had to be
        killed, or that exited with a failure status, is reported as an error."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        _live.discard(self)
        problem = None
        if proc.poll() is not None:
            problem = f"the server had already exited with status {proc.returncode}"
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problem = f"the server did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM"
            else:
                if proc.returncode not in (0, -signal.SIGTERM):
                    problem = f"the server exited with status {proc.returncode} after SIGTERM"
        if check and problem:
            pytest.fail(
                f"{problem}\ncommand: {shlex.join(self.argv)}\n"
                f"stderr:\n{self.stderr_text()[-4000:]}",
                pytrace=False,
            )


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        server.stop(check=False)


class RawConnection:
    """A plain TCP connection for exact byte-level checks of replies."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, what: str) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise AssertionError(
                f"timed out waiting for {what}; received so far: {self.buf[:500]!r}"
            ) from None
        if not chunk:
            raise AssertionError(
                f"connection closed while waiting for {what}; received so far: {self.buf[:500]!r}"
            )
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill(f"{n} bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_line(self) -> bytes:
        """One reply line, with its \\r\\n."""
        while b"\r\n" not in self.buf:
            self._fill("a \\r\\n-terminated line")
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def expect(self, expected: bytes, context: str = "") -> None:
        """The next bytes on the wire are exactly `expected`."""
        where = f"{context}: " if context else ""
        try:
            got = self.read_exact(len(expected))
        except AssertionError as e:
            raise AssertionError(f"{where}expected {expected[:300]!r}; {e}") from None
        if got != expected:
            # Show a little more of what came, for the message.
            try:
                self.sock.settimeout(0.2)
                self._fill("more")
            except AssertionError:
                pass
            finally:
                self.sock.settimeout(5.0)
            raise AssertionError(
                f"{where}expected {expected[:300]!r}, got {(got + self.buf)[:300]!r}"
            )

    def request(self, data: bytes, expected: bytes, context: str = "") -> None:
        self.send(data)
        self.expect(expected, context or repr(data[:100]))

    def sync(self) -> None:
        """Proves the connection still works and that nothing unread is left before this point:
        a get of a key that never exists must answer exactly END."""
        self.request(b"get __percore_sync_never_set__\r\n", b"END\r\n", "sync (get of a missing key)")
        assert self.buf == b"", f"unexpected bytes after the sync reply: {self.buf!r}"


_counter = itertools.count()


@pytest.fixture
def key(request) -> "KeyMaker":
    """Keys unique to this test run and test, so tests sharing a server never collide."""
    return KeyMaker(request.node.name)


class KeyMaker:
    def __init__(self, test_name: str) -> None:
        base = re.sub(r"[^A-Za-z0-9]+", "_", test_name)[:60]
        self.prefix = f"{base}-{os.getpid()}-{next(_counter)}"

    def __call__(self, suffix: str = "") -> str:
        return f"{self.prefix}-{suffix}" if suffix else self.prefix

    def b(self, suffix: str = "") -> bytes:
        return self(suffix).encode()


@pytest.fixture(scope="session")
def server():
    """The server shared by every test that does not need one of its own."""
    s = ServerProcess()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def fresh_server():
    """A server started for this test alone (flush_all, stats counting, tools that flush)."""
    s = ServerProcess()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def start_server():
    """Starts extra servers with extra command-line arguments (percore flags in percore mode,
    memcached flags in memcached mode): `start_server("--idle-timeout", "1s")`. All of them are
    stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(*extra_args: str) -> ServerProcess:
        s = ServerProcess(tuple(extra_args))
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop(check=False)


@pytest.fixture
def client(server):
    c = server.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def raw(server):
    conn = server.raw()
    try:
        yield conn
    finally:
        conn.close()


TOOL_RESULTS: list[str] = []


def record_tool_result(line: str) -> None:
    """Keeps a third-party tool's result line for the summary at the end of the run."""
    print(line)
    TOOL_RESULTS.append(line)


def pytest_terminal_summary(terminalreporter):
    if TOOL_RESULTS:
        terminalreporter.section("third-party tool results")
        for line in TOOL_RESULTS:
            terminalreporter.write_line(line)


def pytest_report_header(config):
    return f"memcached server under test: {MODE} (set MEMCACHED_UNDER_TEST=percore|memcached)"
