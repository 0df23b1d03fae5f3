//! Which clients may connect: `--allow CIDR[,CIDR...]`, checked against a connection's peer
//! address at accept on every listener.
//!
//! Neither protocol authenticates anyone, so a server reachable from a network serves whoever
//! reaches it. The default admits loopback clients only (127.0.0.0/8 and ::1), like Redis's
//! protected mode; a fleet lists its client networks. The list is exact: once `--allow` is
//! given, loopback is admitted only if the list covers it. An IPv4 client of a listener bound
//! to an IPv6 address arrives as `::ffff:a.b.c.d` and is checked as the IPv4 address it is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// The client networks a server accepts connections from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

/// At most this many networks in one list: each accept checks them in turn.
pub const MAX_NETWORKS: usize = 1024;

impl AllowList {
    /// Loopback only: 127.0.0.0/8 and ::1/128.
    pub fn loopback() -> AllowList {
        AllowList {
            nets: vec![
                IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid prefix"),
                IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
        }
    }

    /// Whether a client at `addr` may connect.
    pub fn admits(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.iter().any(|net| net.contains(&addr))
    }

    /// Whether the list admits any client beyond this host's loopback addresses.
    pub fn reaches_beyond_loopback(&self) -> bool {
        self.nets.iter().any(|net| match net {
            IpNet::V4(n) => !(n.network().is_loopback() && n.prefix_len() >= 8),
            IpNet::V6(n) => !(n.network().is_loopback() && n.prefix_len() == 128),
        })
    }
}

impl Default for AllowList {
    fn default() -> AllowList {
        AllowList::loopback()
    }
}

impl FromStr for AllowList {
    type Err = String;

    /// Parses `10.0.0.0/8,192.168.1.7,fd00::/8`: networks, or single addresses, by commas.
    fn from_str(s: &str) -> Result<AllowList, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!(
                    "`{s}` has an empty entry; write networks like 10.0.0.0/8,fd00::/8"
                ));
            }
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(addr) => IpNet::from(addr),
                    Err(_) => {
                        return Err(format!(
                            "`{part}` is not a network or an address (examples: 10.0.0.0/8, \
                             192.168.1.7, fd00::/8, 0.0.0.0/0 for every IPv4 client)"
                        ))
                    }
                },
            };
            if nets.len() == MAX_NETWORKS {
                return Err(format!("--allow lists more than {MAX_NETWORKS} networks"));
            }
            // A host address with bits past its prefix (10.1.2.3/8) means its network.
            nets.push(net.trunc());
        }
        Ok(AllowList { nets })
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_admits_loopback_only() {
        let list = AllowList::default();
        assert!(list.admits(ip("127.0.0.1")));
        assert!(list.admits(ip("127.255.0.9")));
        assert!(list.admits(ip("::1")));
        assert!(list.admits(ip("::ffff:127.0.0.1")));
        assert!(!list.admits(ip("10.0.0.1")));
        assert!(!list.admits(ip("::ffff:10.0.0.1")));
        assert!(!list.admits(ip("fe80::1")));
        assert!(!list.reaches_beyond_loopback());
    }

    #[test]
    fn lists_are_exact_and_check_mapped_addresses_as_ipv4() {
        let list: AllowList = "10.77.0.0/24, 192.168.1.7,fd00::/8".parse().unwrap();
        assert!(list.admits(ip("10.77.0.200")));
        assert!(list.admits(ip("::ffff:10.77.0.3")));
        assert!(!list.admits(ip("10.77.1.1")));
        assert!(list.admits(ip("192.168.1.7")));
        assert!(!list.admits(ip("192.168.1.8")));
        assert!(list.admits(ip("fd12::5")));
        assert!(!list.admits(ip("127.0.0.1")), "loopback only when listed");
        assert!(list.reaches_beyond_loopback());
        assert_eq!(list.to_string(), "10.77.0.0/24,192.168.1.7/32,fd00::/8");
        let host_bits: AllowList = "10.1.2.3/8".parse().unwrap();
        assert_eq!(host_bits.to_string(), "10.0.0.0/8");
        assert!("127.0.0.0/8,::1".parse::<AllowList>().unwrap() == AllowList::loopback());
        assert!(!"127.0.0.0/16"
            .parse::<AllowList>()
            .unwrap()
            .reaches_beyond_loopback());
        assert!("0.0.0.0/0"
            .parse::<AllowList>()
            .unwrap()
            .reaches_beyond_loopback());
    }

    #[test]
    fn bad_lists_are_refused_with_the_bad_part() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/8,",
            "example.com",
            "10.0.0/8",
            "::1/129",
        ] {
            let err = bad.parse::<AllowList>().unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        let err = "10.0.0.0/8,nonsense".parse::<AllowList>().unwrap_err();
        assert!(err.contains("`nonsense`"), "{err}");
        let many = vec!["10.0.0.1"; MAX_NETWORKS + 1].join(",");
        assert!(many.parse::<AllowList>().unwrap_err().contains("1024"));
    }
}
