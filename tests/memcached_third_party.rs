//! Checks percore's memcached text-protocol front end with software this project did not write:
//! runs the pytest suite in `tests/memcached` (the pymemcache and python-memcached clients,
//! raw-socket checks of memcached 1.6's exact replies, and libmemcached's `memccapable` and
//! `memcaslap`) against the `percore` binary, which the suite starts itself on ephemeral ports
//! and stops. The suite needs Python 3 with the packages pinned in
//! `tests/memcached/requirements.txt` and Debian's `memcached` and `libmemcached-tools`;
//! `tools/install-test-deps.sh` installs all of them. The same suite passes against the real
//! memcached with `MEMCACHED_UNDER_TEST=memcached python3 -m pytest tests/memcached -q`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;

const INSTALL_HINT: &str = "run tools/install-test-deps.sh (as root) to install the \
                            third-party test dependencies";

/// Ends pytest if this test panics while it runs; pytest's servers die with it (they are
/// started with `PR_SET_PDEATHSIG`).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Copies `reader` line by line to this test's stdout or stderr, where the test harness
/// captures it (shown on failure, or live with `--nocapture`).
fn forward(reader: impl Read, to_stderr: bool) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\r', '\n']);
                if to_stderr {
                    eprintln!("{text}");
                } else {
                    println!("{text}");
                }
            }
        }
    }
}

/// Fails with the install hint unless python3 runs and has pytest and both clients.
fn check_python(root: &Path) {
    let probe = Command::new("python3")
        .args(["-c", "import pytest, pymemcache, memcache"])
        .current_dir(root)
        .stdin(Stdio::null())
        .output();
    match probe {
        Err(e) => panic!("python3 could not be run ({e}): {INSTALL_HINT}"),
        Ok(out) if !out.status.success() => panic!(
            "python3 lacks pytest or the memcached client libraries ({}): {INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {}
    }
}

#[test]
fn third_party_memcached_suite_passes_against_percore() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check_python(root);
    let child = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "tests/memcached",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(root)
        .env("PERCORE_BIN", env!("CARGO_BIN_EXE_percore"))
        .env("MEMCACHED_UNDER_TEST", "percore")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 -m pytest could not start ({e}): {INSTALL_HINT}"));
    let mut pytest = KillOnDrop(child);
    let stdout = pytest.0.stdout.take().expect("stdout is piped");
    let stderr = pytest.0.stderr.take().expect("stderr is piped");
    let errors = thread::spawn(move || forward(stderr, true));
    forward(stdout, false);
    errors.join().expect("the stderr forwarder does not panic");
    let status = pytest.0.wait().expect("pytest is waited for");
    assert!(
        status.success(),
        "the third-party memcached suite failed ({status}); pytest's output is above. To rerun \
         it alone: MEMCACHED_UNDER_TEST=percore PERCORE_BIN=target/debug/percore python3 -m \
         pytest tests/memcached -q"
    );
}
