//! Addresses in the topology file: what a node binds (`listen`, `service`, `api`: IP literals,
//! wildcards allowed) and what its peers dial (`advertise`: a host name, an IPv4 address or a
//! bracketed IPv6 address, with a port).
//!
//! Pure values and rules only; resolving a host name happens when a link is dialled
//! (`node/dial.rs`), never while loading a file, so `nodecloud check` works offline and a
//! changed DNS record is seen at the next reconnect.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The host part of an address peers dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lowercased (names compare case-insensitively), resolved at dial time.
    Name(String),
}

/// `HOST:PORT` as peers dial it: `advertise`, or a node's `listen` when it has none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

/// Why an `advertise` value is not a dialable `HOST:PORT`. The text is the "problem" half of a
/// config error; the validator adds the field, the location and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no port in {0:?}")]
    NoPort(String),
    #[error("invalid port {0:?}")]
    BadPort(String),
    #[error("port 0 in {0:?}, which peers cannot dial")]
    PortZero(String),
    #[error("IPv6 address without brackets in {0:?}")]
    UnbracketedIpv6(String),
    #[error("invalid IP address {0:?}")]
    BadIp(String),
    #[error("invalid host name {0:?}")]
    BadName(String),
    #[error("wildcard address {0} in {1:?}, which peers cannot dial")]
    Wildcard(IpAddr, String),
}

/// The longest DNS name (RFC 1035), and the longest label in it.
const MAX_NAME_BYTES: usize = 253;
const MAX_LABEL_BYTES: usize = 63;

impl HostPort {
    /// Parses `name:port`, `1.2.3.4:port` or `[v6]:port`. Wildcards and port 0 are refused:
    /// peers must be able to dial the result.
    ///
    /// # Errors
    /// [`AddressError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<HostPort, AddressError> {
        let whole = || text.to_owned();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| AddressError::BadIp(whole()))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| AddressError::BadIp(inside.to_owned()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| AddressError::NoPort(whole()))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| AddressError::NoPort(whole()))?;
            if host.contains(':') {
                return Err(AddressError::UnbracketedIpv6(whole()));
            }
            (host_of(host)?, port)
        };
        // u16::from_str accepts a leading '+'; a port is digits only.
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AddressError::BadPort(port.to_owned()));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| AddressError::BadPort(port.to_owned()))?;
        if port == 0 {
            return Err(AddressError::PortZero(whole()));
        }
        if let Host::Ip(ip) = &host {
            if ip.is_unspecified() {
                return Err(AddressError::Wildcard(*ip, whole()));
            }
        }
        Ok(HostPort { host, port })
    }

    /// The socket address, when the host is an IP literal (no resolution needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

/// A host that is not bracketed: an IPv4 literal or a DNS name. A last label of digits only
/// can only be meant as IPv4 (no top-level domain is numeric), so `10.0.0.300` is a bad IP,
/// not a name.
fn host_of(host: &str) -> Result<Host, AddressError> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadIp(host.to_owned()));
    }
    if valid_host_name(host) {
        Ok(Host::Name(host.to_ascii_lowercase()))
    } else {
        Err(AddressError::BadName(host.to_owned()))
    }
}

/// RFC 1123 host names, plus '_' (container and service names use it): dot-separated labels
/// of 1..=63 letters, digits, '-' or '_', not starting or ending with '-', 253 bytes at most.
pub fn valid_host_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=MAX_LABEL_BYTES).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        HostPort {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where a local process reaches a socket bound at `addr`: a wildcard (`0.0.0.0`, `[::]`) is
/// dialled at the loopback address of its family; any other address as it is.
pub fn local_dial(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Whether binding `a` and `b` on one machine would clash: the same port, and the same IP or a
/// wildcard covering the other (`[::]` also covers IPv4, as Linux binds it dual-stack).
/// Port 0 never clashes: the system picks a fresh port each time.
pub fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |wild: IpAddr, other: IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sock(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn names_ipv4_and_bracketed_ipv6_parse_and_print_back() {
        for text in [
            "node-1.example.org:7601",
            "10.77.0.1:7601",
            "[fd00::1]:7601",
            "localhost:1",
            "db_1:65535",
        ] {
            assert_eq!(HostPort::parse(text).unwrap().to_string(), text);
        }
        let name = HostPort::parse("Node-1.Example.ORG:7601").unwrap();
        assert_eq!(name.host, Host::Name("node-1.example.org".into()));
        assert_eq!(name.socket_addr(), None);
        let v6 = HostPort::parse("[::1]:9").unwrap();
        assert_eq!(v6.socket_addr(), Some(sock("[::1]:9")));
    }

    #[test]
    fn undialable_or_malformed_addresses_say_why() {
        let cases = [
            ("10.77.0.1", "no port in \"10.77.0.1\""),
            ("host:", "invalid port \"\""),
            ("host:+80", "invalid port \"+80\""),
            ("host:70000", "invalid port \"70000\""),
            ("host:0", "port 0 in \"host:0\", which peers cannot dial"),
            ("::1:7100", "IPv6 address without brackets in \"::1:7100\""),
            ("[::1:7100", "invalid IP address \"[::1:7100\""),
            ("[::1]7100", "no port in \"[::1]7100\""),
            ("[zz::1]:7100", "invalid IP address \"zz::1\""),
            ("10.77.0.300:1", "invalid IP address \"10.77.0.300\""),
            ("-bad.example:1", "invalid host name \"-bad.example\""),
            ("a..b:1", "invalid host name \"a..b\""),
            (":1", "invalid host name \"\""),
            ("sp ace:1", "invalid host name \"sp ace\""),
            (
                "0.0.0.0:7100",
                "wildcard address 0.0.0.0 in \"0.0.0.0:7100\", which peers cannot dial",
            ),
            (
                "[::]:7100",
                "wildcard address :: in \"[::]:7100\", which peers cannot dial",
            ),
        ];
        for (text, problem) in cases {
            assert_eq!(
                HostPort::parse(text).unwrap_err().to_string(),
                problem,
                "{text}"
            );
        }
        let long = format!("{}:1", "a".repeat(64));
        assert!(matches!(
            HostPort::parse(&long),
            Err(AddressError::BadName(_))
        ));
    }

    #[test]
    fn a_wildcard_is_dialled_locally_at_the_loopback_of_its_family() {
        assert_eq!(local_dial(sock("0.0.0.0:7")), sock("127.0.0.1:7"));
        assert_eq!(local_dial(sock("[::]:7")), sock("[::1]:7"));
        assert_eq!(local_dial(sock("10.0.0.1:7")), sock("10.0.0.1:7"));
    }

    #[test]
    fn binds_overlap_on_one_port_when_equal_or_covered_by_a_wildcard() {
        assert!(binds_overlap(sock("127.0.0.1:7"), sock("127.0.0.1:7")));
        assert!(binds_overlap(sock("0.0.0.0:7"), sock("127.0.0.1:7")));
        assert!(binds_overlap(sock("127.0.0.1:7"), sock("[::]:7")));
        assert!(binds_overlap(sock("[::]:7"), sock("[::1]:7")));
        assert!(!binds_overlap(sock("0.0.0.0:7"), sock("[::1]:7")));
        assert!(!binds_overlap(sock("127.0.0.1:7"), sock("127.0.0.2:7")));
        assert!(!binds_overlap(sock("0.0.0.0:7"), sock("0.0.0.0:8")));
        assert!(!binds_overlap(sock("0.0.0.0:0"), sock("0.0.0.0:0")));
    }
}
