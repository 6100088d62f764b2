//! Dialling a peer's address: resolve its host name (bounded in time), then try every
//! resolved address in order until one connects. Used by Upstream, which owns the retries and
//! the logging; nothing here is an actor.
//!
//! A name is resolved again at every dial, so a peer that moved (a container rescheduled, a
//! DNS record changed) is found at the next reconnect without restarting this node.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::HostPort;

/// Why no connection was made to any address of a peer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve host name {name:?}: {source}")]
    Resolve {
        name: String,
        source: std::io::Error,
    },
    #[error("resolving host name {0:?} timed out")]
    ResolveTimeout(String),
    #[error("host name {0:?} resolves to no address")]
    NoAddress(String),
    /// Every resolved address failed; the last failure is the one reported.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
}

impl ConnectError {
    /// Whether the name could not be turned into addresses (as opposed to a refused or silent
    /// address): Upstream logs these separately, once per change of outcome.
    pub fn is_resolution(&self) -> bool {
        matches!(
            self,
            ConnectError::Resolve { .. }
                | ConnectError::ResolveTimeout(_)
                | ConnectError::NoAddress(_)
        )
    }
}

/// The addresses `target` stands for, in the resolver's order; an IP literal needs no lookup.
///
/// # Errors
/// [`ConnectError::Resolve`], [`ConnectError::ResolveTimeout`] after `within`, or
/// [`ConnectError::NoAddress`].
pub async fn resolve(target: &HostPort, within: Duration) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(addr) = target.socket_addr() {
        return Ok(vec![addr]);
    }
    let name = target.host.to_string();
    let found = tokio::time::timeout(
        within,
        tokio::net::lookup_host((name.as_str(), target.port)),
    )
    .await
    .map_err(|_| ConnectError::ResolveTimeout(name.clone()))?
    .map_err(|source| ConnectError::Resolve {
        name: name.clone(),
        source,
    })?;
    // A resolver may list one address twice (once per socket type); dial each once.
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress(name));
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that accepts within `each` (every attempt has its own
/// deadline, so one silent address does not starve the next).
///
/// # Errors
/// The failure of the last address tried.
pub async fn connect_first(
    addrs: &[SocketAddr],
    each: Duration,
    from: Option<IpAddr>,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut last = None;
    for &addr in addrs {
        match tokio::time::timeout(each, connect_from(addr, from)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(source)) => last = Some(ConnectError::Connect { addr, source }),
            Err(_) => last = Some(ConnectError::ConnectTimeout(addr)),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::NoAddress(String::new())))
}

/// Connect to `addr`, from the local address `from` if given (an address of the other
/// family than `addr`'s cannot reach it: the connect fails with the bind's error).
async fn connect_from(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// What the last resolution of a name gave, so Upstream logs only when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Addresses(Vec<SocketAddr>),
    Failed(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[actix_rt::test]
    async fn an_ip_literal_resolves_to_itself_without_a_lookup() {
        let target = HostPort::parse("[::1]:7100").unwrap();
        let addrs = resolve(&target, Duration::ZERO).await.unwrap();
        assert_eq!(addrs, vec!["[::1]:7100".parse::<SocketAddr>().unwrap()]);
    }

    #[actix_rt::test]
    async fn localhost_resolves_to_loopback_addresses_only() {
        let target = HostPort::parse("localhost:7100").unwrap();
        let addrs = resolve(&target, Duration::from_secs(5)).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7100),
            "{addrs:?}"
        );
    }

    #[actix_rt::test]
    async fn the_next_address_is_tried_when_one_refuses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good = listener.local_addr().unwrap();
        // Bound but not listening: the port is held (no other test can take it) and refuses.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let refused = held.local_addr().unwrap();
        let (_, used) = connect_first(&[refused, good], Duration::from_secs(5), None)
            .await
            .unwrap();
        assert_eq!(used, good);
        let err = connect_first(&[refused], Duration::from_secs(5), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Connect { addr, .. } if addr == refused));
    }

    #[actix_rt::test]
    async fn a_dial_from_a_chosen_address_arrives_from_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let from: IpAddr = "127.0.0.7".parse().unwrap();
        let targets = [target];
        let (dialled, accepted) = tokio::join!(
            connect_first(&targets, Duration::from_secs(5), Some(from)),
            listener.accept()
        );
        dialled.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), from);
    }
}
