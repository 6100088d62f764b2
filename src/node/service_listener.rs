//! ServiceListener: accepts applications on the node's `service` TCP address and/or its
//! `service_socket` Unix socket (mode 0600), runs each handshake with the cluster's service
//! key, and starts a ServiceSession per attached application. Supervised by NodeSupervisor,
//! which tells it to close every application (`bye`) when the node shuts down.
//!
//! Bounds and policy: connections are admitted by `admission` (the peer listener's policy:
//! a short deadline for the first bytes, a global cap that evicts silent connections first, a
//! per-source cap under pressure, refusals summed up in one log line per interval), and at
//! most [`MAX_APPLICATIONS`] applications are attached (more are refused with a `busy` error
//! frame and closed); each handshake has the cluster's deadline and frames of at most
//! `MAX_HANDSHAKE_FRAME_BYTES`.
//!
//! With `[cluster.tls]` (and `service_tls` left true), connections on the TCP listener are
//! wrapped into TLS inside the handshake's slot, without asking the application for a
//! certificate (the service key authenticates it); the Unix socket stays plaintext.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::codec::Framed;

use super::admission::{self, Admission, FirstBytes, Ticket, REFUSAL_LOG_INTERVAL};
use super::service_session::{
    CloseService, ServiceSession, ServiceWiring, MAX_CALLS_IN_FLIGHT, MAX_METHODS,
    MAX_REQUESTS_IN_FLIGHT, MAX_SUBSCRIPTIONS,
};
use super::supervision::guard;
use crate::link::Transport;
use crate::wire::{self, FrameCodec, Identity, MAX_HANDSHAKE_FRAME_BYTES};

/// Applications attached to one node at once.
pub const MAX_APPLICATIONS: usize = 1024;

/// The sockets a node's service listener accepts on (bound by the node before it starts).
pub struct ServiceSockets {
    pub tcp: Option<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
}

pub struct ServiceListener {
    w: ServiceWiring,
    /// Shared with the accept loops, so a restart (see `Supervised`) accepts on the same
    /// sockets.
    tcp: Option<Arc<TcpListener>>,
    unix: Option<Arc<UnixListener>>,
    /// Set by `CloseServices`: the node is shutting down, newcomers are refused.
    closing: bool,
    identity: Identity,
    /// Connections accepted whose handshake has not ended.
    admission: Admission<SpawnHandle>,
    sessions: HashMap<u64, Addr<ServiceSession>>,
    next_session: u64,
    /// The Unix socket file, removed when the listener stops.
    socket_path: Option<PathBuf>,
}

/// A connection, from either socket, with a printable peer address.
struct Accepted {
    io: Transport,
    addr: String,
    /// The peer's IP address (none for the Unix socket), for the per-source cap.
    source: Option<std::net::IpAddr>,
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
                // An application has no use for the cluster's timing.
                cluster: None,
                ..shared.identity.welcome.clone()
            },
            ..shared.identity.clone()
        };
        let (unix, socket_path) = sockets.unix.map(|(l, p)| (Arc::new(l), p)).unzip();
        ServiceListener {
            w,
            tcp: sockets.tcp.map(Arc::new),
            unix,
            closing: false,
            identity,
            admission: Admission::new(admission::PENDING),
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
        let tls = self.w.shared.tls.as_ref().is_some_and(|t| t.service_tls());
        if let Some(tcp) = self.tcp.clone() {
            ctx.add_stream(futures_util::stream::unfold(tcp, move |l| async move {
                let next = l.accept().await.map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    Accepted {
                        io: s.into(),
                        addr: a.to_string(),
                        source: Some(a.ip()),
                        tls,
                    }
                });
                Some((next, l))
            }));
        }
        if let (Some(unix), Some(path)) = (self.unix.clone(), &self.socket_path) {
            let shown = path.display().to_string();
            ctx.add_stream(futures_util::stream::unfold(unix, move |l| {
                let shown = shown.clone();
                async move {
                    let next = l.accept().await.map(|(s, _)| Accepted {
                        io: s.into(),
                        addr: shown,
                        source: None,
                        tls: false,
                    });
                    Some((next, l))
                }
            }));
        }
        ctx.run_interval(REFUSAL_LOG_INTERVAL, |act, _| {
            if let Some(line) = act.admission.take_summary(REFUSAL_LOG_INTERVAL) {
                tracing::warn!(node = %act.name(), "service listener {line}");
            }
        });
    }
}

/// The socket file goes with the listener itself, not with a stop: a restart keeps it.
impl Drop for ServiceListener {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Restarted by its `actix::Supervisor` after a panic in a handler (see `supervision`): the
/// sockets are kept, the handshakes under way were cancelled with the old context, so their
/// admission tickets go too. Attached applications are actors of their own and go on.
impl Supervised for ServiceListener {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.admission = Admission::new(admission::PENDING);
    }
}

impl StreamHandler<std::io::Result<Accepted>> for ServiceListener {
    fn handle(&mut self, accepted: std::io::Result<Accepted>, ctx: &mut Context<Self>) {
        guard("service_listener", ctx, |ctx| self.accepted(accepted, ctx));
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl ServiceListener {
    fn accepted(&mut self, accepted: std::io::Result<Accepted>, ctx: &mut Context<Self>) {
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %self.name(), "service accept failed: {e}");
                return;
            }
        };
        if self.closing {
            refuse(conn, "stopped", "the node is shutting down".into());
            return;
        }
        if self.sessions.len() >= MAX_APPLICATIONS {
            let why = format!("{MAX_APPLICATIONS} applications already attached");
            tracing::warn!(node = %self.name(), app = %conn.addr, "application refused: {why}");
            refuse(conn, "busy", why);
            return;
        }
        // Refused connections get `busy` (no log line each: they are summed up).
        let (ticket, evicted) = match self.admission.admit(conn.source) {
            Ok(admitted) => admitted,
            Err(why) => {
                self.w.shared.metrics.refused(why.code());
                refuse(conn, "busy", why.to_string());
                return;
            }
        };
        if let Some(silent) = evicted {
            self.w.shared.metrics.refused("evicted");
            ctx.cancel_future(silent);
        }
        let probe = admission::Probe::of_transport(&conn.io);
        let wait = admission::first_bytes_deadline(self.w.shared.config.cluster.handshake_timeout);
        let first = async move {
            let spoke = admission::first_bytes(&conn.io, wait).await;
            (conn, spoke)
        };
        let handle = ctx.spawn(first.into_actor(self).map(
            move |(conn, spoke), act, ctx| match spoke {
                FirstBytes::Silent => {
                    act.w.shared.metrics.refused("first_bytes_late");
                    act.admission.too_late(ticket);
                    refuse(conn, "timeout", format!("no bytes within {wait:?}"));
                }
                FirstBytes::Closed => act.admission.release(ticket),
                FirstBytes::Spoke => {
                    if act.admission.talking(ticket) {
                        act.handshake(conn, ticket, ctx);
                    }
                }
            },
        ));
        self.admission.silent(ticket, handle, probe);
    }

    /// Run the handshake of a connection that has spoken; an authenticated application gets
    /// a ServiceSession.
    fn handshake(&mut self, conn: Accepted, ticket: Ticket, ctx: &mut Context<Self>) {
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
        ctx.spawn(handshake.into_actor(self).map(move |handshaken, act, ctx| {
            act.admission.release(ticket);
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
}

impl Handler<ServiceClosed> for ServiceListener {
    type Result = ();

    fn handle(&mut self, ServiceClosed(id): ServiceClosed, _: &mut Context<Self>) {
        self.sessions.remove(&id);
    }
}

impl Handler<CloseServices> for ServiceListener {
    type Result = ();

    fn handle(&mut self, CloseServices(reason): CloseServices, _: &mut Context<Self>) {
        // Not a stop: its Supervisor would restart it. Halting the node's task set ends it.
        self.closing = true;
        for (_, s) in self.sessions.drain() {
            s.do_send(CloseService(reason.clone()));
        }
    }
}

/// Refuse a connection with an `error` frame, or just close it when it is to speak TLS: a
/// plaintext frame would only garble the client's TLS handshake.
fn refuse(conn: Accepted, code: &'static str, why: String) {
    if !conn.tls {
        admission::refuse(conn.io, code, why);
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
