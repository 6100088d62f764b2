//! The sockets a node serves on, at start: a listener handed over ([`crate::sockets::Bound`])
//! is taken as it is, anything else is bound from the node's configuration. Called by
//! `Node::start*` on the node's arbiter; the PeerListener and ServiceListener own the result.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::service_listener::{self, ServiceSockets};
use super::StartError;
use crate::config::NodeConfig;

/// Connections the kernel queues for a listener before it accepts them: a master restarted
/// under a thousand workers gets a thousand SYNs within a backoff step, and a SYN past the
/// backlog is dropped and retried by TCP only a second or more later. tokio binds with the
/// same figure; the kernel caps it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: i32 = 1024;

/// The peer listener: the handed-over one, or `listen` bound now.
pub(super) async fn peer(
    me: &NodeConfig,
    handed: Option<std::net::TcpListener>,
) -> Result<TcpListener, StartError> {
    let bind_err = |addr: SocketAddr| {
        let node = me.name.clone();
        move |source| StartError::Bind { node, addr, source }
    };
    match handed {
        Some(l) => {
            let addr = l.local_addr().map_err(bind_err(me.listen))?;
            tracing::debug!(node = %me.name, "peer listener handed over, on {addr}");
            if addr != me.listen && me.listen.port() != 0 {
                // Peers dial the configured address, not this one.
                tracing::warn!(node = %me.name, "the peer listener handed over is on {addr}, not on the configured {}", me.listen);
            }
            l.set_nonblocking(true).map_err(bind_err(addr))?;
            // Linux lets a listening socket's backlog be raised by listening again.
            socket2::SockRef::from(&l)
                .listen(ACCEPT_BACKLOG)
                .map_err(bind_err(addr))?;
            TcpListener::from_std(l).map_err(bind_err(addr))
        }
        None => TcpListener::bind(me.listen)
            .await
            .map_err(bind_err(me.listen)),
    }
}

/// The service sockets, if the node has any: the handed-over TCP listener or `service` bound
/// now, and `service_socket` bound now.
pub(super) fn services(
    me: &NodeConfig,
    handed: Option<std::net::TcpListener>,
) -> Result<Option<ServiceSockets>, StartError> {
    if handed.is_none() && me.service.is_none() && me.service_socket.is_none() {
        return Ok(None);
    }
    let bind_err = |(endpoint, source)| StartError::BindService {
        node: me.name.clone(),
        endpoint,
        source,
    };
    let tcp_addr = if handed.is_some() { None } else { me.service };
    let mut sockets =
        service_listener::bind(tcp_addr, me.service_socket.as_deref()).map_err(bind_err)?;
    if let Some(l) = handed {
        let shown = l
            .local_addr()
            .map_or_else(|_| "a handed-over socket".to_owned(), |a| a.to_string());
        let tcp = l
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l))
            .map_err(|e| bind_err((shown, e)))?;
        sockets.tcp = Some(tcp);
    }
    Ok(Some(sockets))
}
