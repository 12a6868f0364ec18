//! Where a remote comes from, as the caps per address count it. No I/O:
//! shared by the peer server's connection caps, the upload slots' lanes
//! and the tracker's quotas.

use std::net::IpAddr;

/// Where a remote comes from, as the caps per address count it: an IPv4
/// address, or the /64 network of an IPv6 one (a host is commonly given a
/// whole /64, so counting its addresses one by one would cap nothing).
/// Used by the server's connections per address and the tracker's files
/// per address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin(IpAddr);

impl From<IpAddr> for Origin {
    fn from(ip: IpAddr) -> Origin {
        match ip.to_canonical() {
            IpAddr::V6(ip) => Origin(IpAddr::V6((u128::from(ip) & !u128::from(u64::MAX)).into())),
            v4 => Origin(v4),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(network) => write!(f, "{network}/64"),
        }
    }
}
