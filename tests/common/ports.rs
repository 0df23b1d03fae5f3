//! Finding free loopback ports for servers that need several at known numbers
//! (`--shard-ports`). Shared by the server's and percore-load's test harnesses.

use std::net::TcpListener;

/// A base port such that `n` consecutive ports from it are free right now.
pub fn free_port_run(n: u16) -> u16 {
    'search: for _ in 0..200 {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base.checked_add(n).is_none() {
            continue;
        }
        let mut held = Vec::new();
        for p in base..base + n {
            match TcpListener::bind(("127.0.0.1", p)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'search,
            }
        }
        return base;
    }
    panic!("no run of {n} free ports");
}
