//! ServiceListener: accepts applications on the node's `service` TCP address and/or its
//! `service_socket` Unix socket (mode 0600), runs each handshake with the cluster's service
//! key, and starts a ServiceSession per attached application. Supervised by NodeSupervisor,
//! which tells it to close every application (`bye`) when the node shuts down.
//!
//! Bounds and policy: at most `MAX_PENDING_HANDSHAKES` handshakes at once and
//! [`MAX_APPLICATIONS`] attached applications (more connections are refused with an `error`
//! frame and closed, logged); each handshake has the cluster's deadline and frames of at most
//! `MAX_HANDSHAKE_FRAME_BYTES`.
//!
//! With `[cluster.tls]` (and `service_tls` left true), connections on the TCP listener are
//! wrapped into TLS inside the handshake's slot, without asking the application for a
//! certificate (the service key authenticates it); the Unix socket stays plaintext.

use std::collections::HashMap;
use std::path::PathBuf;

use actix::prelude::*;
use futures_util::SinkExt;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::codec::Framed;

use super::listener::MAX_PENDING_HANDSHAKES;
use super::service_session::{
    CloseService, ServiceSession, ServiceWiring, MAX_CALLS_IN_FLIGHT, MAX_METHODS,
    MAX_REQUESTS_IN_FLIGHT, MAX_SUBSCRIPTIONS,
};
use crate::link::Transport;
use crate::wire::{self, ErrorFrame, FrameCodec, Identity, Message, MAX_HANDSHAKE_FRAME_BYTES};

/// Applications attached to one node at once.
pub const MAX_APPLICATIONS: usize = 1024;

/// The sockets a node's service listener accepts on (bound by the node before it starts).
pub struct ServiceSockets {
    pub tcp: Option<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
}

pub struct ServiceListener {
    w: ServiceWiring,
    sockets: Option<ServiceSockets>,
    identity: Identity,
    pending: usize,
    sessions: HashMap<u64, Addr<ServiceSession>>,
    next_session: u64,
    /// The Unix socket file, removed when the listener stops.
    socket_path: Option<PathBuf>,
}

/// A connection, from either socket, with a printable peer address.
struct Accepted {
    io: Transport,
    addr: String,
    /// Whether it must be wrapped into TLS (the TCP listener with `service_tls`).
    tls: bool,
}

/// An application's session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServiceClosed(pub u64);

/// Close every application and stop accepting.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseServices(pub String);

impl ServiceListener {
    pub fn new(w: ServiceWiring, sockets: ServiceSockets) -> Self {
        let shared = &w.shared;
        let key = shared
            .config
            .cluster
            .service_key
            .as_ref()
            .unwrap_or(&shared.config.cluster.secret);
        // Applications learn their limits from `welcome` (docs/PROTOCOL.md §12.2).
        let identity = Identity {
            secret: key.as_bytes().to_vec(),
            welcome: wire::Welcome {
                max_subscriptions: Some(MAX_SUBSCRIPTIONS as u64),
                max_methods: Some(MAX_METHODS as u64),
                max_calls: Some(MAX_CALLS_IN_FLIGHT as u64),
                max_requests: Some(MAX_REQUESTS_IN_FLIGHT as u64),
                ..shared.identity.welcome.clone()
            },
            ..shared.identity.clone()
        };
        let socket_path = sockets.unix.as_ref().map(|(_, p)| p.clone());
        ServiceListener {
            w,
            sockets: Some(sockets),
            identity,
            pending: 0,
            sessions: HashMap::new(),
            next_session: 0,
            socket_path,
        }
    }

    fn name(&self) -> &str {
        self.w.shared.name()
    }
}

impl Actor for ServiceListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(sockets) = self.sockets.take() else {
            return;
        };
        let tls = self.w.shared.tls.as_ref().is_some_and(|t| t.service_tls());
        if let Some(tcp) = sockets.tcp {
            ctx.add_stream(futures_util::stream::unfold(tcp, move |l| async move {
                let next = l.accept().await.map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    Accepted {
                        io: s.into(),
                        addr: a.to_string(),
                        tls,
                    }
                });
                Some((next, l))
            }));
        }
        if let Some((unix, path)) = sockets.unix {
            let shown = path.display().to_string();
            ctx.add_stream(futures_util::stream::unfold(unix, move |l| {
                let shown = shown.clone();
                async move {
                    let next = l.accept().await.map(|(s, _)| Accepted {
                        io: s.into(),
                        addr: shown,
                        tls: false,
                    });
                    Some((next, l))
                }
            }));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl StreamHandler<std::io::Result<Accepted>> for ServiceListener {
    fn handle(&mut self, accepted: std::io::Result<Accepted>, ctx: &mut Context<Self>) {
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %self.name(), "service accept failed: {e}");
                return;
            }
        };
        let full = if self.pending >= MAX_PENDING_HANDSHAKES {
            Some(format!(
                "{MAX_PENDING_HANDSHAKES} handshakes already in progress"
            ))
        } else if self.sessions.len() >= MAX_APPLICATIONS {
            Some(format!("{MAX_APPLICATIONS} applications already attached"))
        } else {
            None
        };
        if let Some(why) = full {
            tracing::warn!(node = %self.name(), app = %conn.addr, "application refused: {why}");
            if conn.tls {
                // A plaintext refusal would only garble a TLS client's handshake: just close.
                return;
            }
            actix_rt::spawn(async move {
                let mut framed = Framed::new(conn.io, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
                let refusal = Message::Error(ErrorFrame {
                    code: "busy".into(),
                    message: why,
                });
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    framed.send(&refusal),
                )
                .await;
            });
            return;
        }
        self.pending += 1;
        let identity = self.identity.clone();
        let deadline = self.w.shared.config.cluster.handshake_timeout;
        let tls = self.w.shared.tls.clone().filter(|_| conn.tls);
        let handshake = async move {
            let io = match (tls, conn.io) {
                (Some(tls), Transport::Tcp(s)) => match tls.accept_service(s, deadline).await {
                    Ok(io) => io,
                    Err(e) => return Err((conn.addr, e)),
                },
                (_, io) => io,
            };
            let mut framed = Framed::new(io, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
            // Any well-formed name is admitted: the service key is what authenticates.
            let result = wire::accept(&mut framed, &identity, deadline, |_| Ok(())).await;
            Ok((framed, result, conn.addr))
        };
        ctx.spawn(handshake.into_actor(self).map(|handshaken, act, ctx| {
            act.pending -= 1;
            let (framed, result, addr) = match handshaken {
                Ok(h) => h,
                Err((addr, e)) => {
                    tracing::warn!(node = %act.name(), app = %addr, "application refused: {e}");
                    return;
                }
            };
            match result {
                Ok(app) => {
                    let id = act.next_session;
                    act.next_session += 1;
                    let session = ServiceSession::start(
                        act.w.clone(),
                        app,
                        addr,
                        framed.into_parts(),
                        (ctx.address().recipient(), id),
                    );
                    act.sessions.insert(id, session);
                }
                Err(e) => {
                    tracing::warn!(node = %act.name(), app = %addr, "application handshake failed: {e}")
                }
            }
        }));
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<ServiceClosed> for ServiceListener {
    type Result = ();

    fn handle(&mut self, ServiceClosed(id): ServiceClosed, _: &mut Context<Self>) {
        self.sessions.remove(&id);
    }
}

impl Handler<CloseServices> for ServiceListener {
    type Result = ();

    fn handle(&mut self, CloseServices(reason): CloseServices, ctx: &mut Context<Self>) {
        for (_, s) in self.sessions.drain() {
            s.do_send(CloseService(reason.clone()));
        }
        ctx.stop();
    }
}

/// Bind the service sockets of a node: the TCP address, and the Unix socket (a stale socket
/// file left by a previous run is replaced; the socket is made owner-only, 0600).
///
/// # Errors
/// The endpoint and the OS error.
pub fn bind(
    tcp: Option<std::net::SocketAddr>,
    unix: Option<&std::path::Path>,
) -> Result<ServiceSockets, (String, std::io::Error)> {
    let tcp = match tcp {
        Some(addr) => {
            let std = std::net::TcpListener::bind(addr).map_err(|e| (addr.to_string(), e))?;
            std.set_nonblocking(true)
                .map_err(|e| (addr.to_string(), e))?;
            Some(TcpListener::from_std(std).map_err(|e| (addr.to_string(), e))?)
        }
        None => None,
    };
    let unix = match unix {
        Some(path) => {
            let shown = path.display().to_string();
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another process is listening on it",
                        );
                        return Err((shown, e));
                    }
                    // Left by a run that ended without cleaning up.
                    let _ = std::fs::remove_file(path);
                }
            }
            let listener = UnixListener::bind(path).map_err(|e| (shown.clone(), e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| (shown, e))?;
            Some((listener, path.to_path_buf()))
        }
        None => None,
    };
    Ok(ServiceSockets { tcp, unix })
}
