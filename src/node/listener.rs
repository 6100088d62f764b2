//! PeerListener: accepts peer links on the node's `listen` address and runs each handshake;
//! an authenticated connection becomes a Session. Supervised by NodeSupervisor.
//!
//! Bounds and policy: who may start a handshake, and for how long it may stay silent, is
//! decided by `admission` (shared with the service listener: a short deadline for the first
//! bytes, a global cap that evicts silent connections first, a per-source cap under
//! pressure, refusals summed up in one log line per interval); each handshake has the
//! cluster's handshake deadline and frames of at most `MAX_HANDSHAKE_FRAME_BYTES`. Only nodes the configuration says may link
//! to this one are admitted: declared neighbours, and members of the `[[pools]]` this node is
//! the hub of while fewer than the pool's `max` are live, so the number of sessions is bounded
//! by the configuration.
//! A second process claiming a node that is up is refused with `duplicate_node` (see
//! `identity`).
//!
//! With `[cluster.tls]`, each accepted connection is wrapped into TLS (a client certificate
//! that chains to the CA required; a plaintext peer refused with a log line saying so) at one
//! place, inside the handshake's slot, before the HMAC handshake (see `crate::tls`).

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use super::admission::{self, Admission, FirstBytes, Ticket, REFUSAL_LOG_INTERVAL};
use super::identity;
use super::session::{Session, SessionClosed, SessionParams, Wiring};
use super::shared::NodeShared;
use super::streams::Slot;
use super::supervision::guard;
use crate::link::Transport;
use crate::wire::{self, FrameCodec, HandshakeError, Hello, PeerInfo, MAX_HANDSHAKE_FRAME_BYTES};

pub struct PeerListener {
    shared: Arc<NodeShared>,
    /// Shared with the accept loop, so a restart (see `Supervised`) accepts on the same socket.
    listener: Arc<TcpListener>,
    wiring: Wiring,
    /// Connections accepted whose handshake has not ended.
    admission: Admission<SpawnHandle>,
    /// The node is shutting down: newcomers are dropped.
    closing: bool,
}

impl PeerListener {
    pub fn new(shared: Arc<NodeShared>, listener: TcpListener, wiring: Wiring) -> Self {
        PeerListener {
            admission: Admission::new(admission::peer_pending_bound(shared.config.member_bound)),
            shared,
            listener: Arc::new(listener),
            wiring,
            closing: false,
        }
    }

    pub fn stop_accepting(&mut self) {
        self.closing = true;
    }
}

/// Whether the configuration lets `hello.node` link to this node.
pub(crate) fn admit(shared: &NodeShared, hello: &Hello) -> Result<(), String> {
    if hello.node == shared.name() {
        return Err(format!("node {:?} cannot link to itself", hello.node));
    }
    if shared.config.node(&hello.node).is_none() {
        return admit_pool_member(shared, &hello.node);
    }
    if !shared.plan.neighbours_allowed(shared.name(), &hello.node) {
        return Err(format!(
            "node {:?} is not configured to link to {:?}",
            hello.node,
            shared.name()
        ));
    }
    Ok(())
}

/// An undeclared `name` is admitted when it belongs to a pool whose hub is this node and fewer
/// than the pool's `max` members have a live link here (pool members link to their hub only, so
/// these links are the pool's live members). The count is read before authentication and
/// handshakes run concurrently, so a burst may pass `max` by the handshakes under way (bounded
/// by `admission`); the next newcomer is refused.
fn admit_pool_member(shared: &NodeShared, name: &str) -> Result<(), String> {
    let config = &shared.config;
    let Some(pool) = config.pool_of(name) else {
        return Err(format!(
            "node {name:?} is not in this cluster's configuration and matches no pool's prefix"
        ));
    };
    if pool.hub != shared.name() {
        return Err(format!(
            "node {name:?} belongs to pool {:?}, whose members link to {:?}, not to {:?}",
            pool.prefix,
            pool.hub,
            shared.name()
        ));
    }
    let table = shared.routes.load();
    let live = table
        .links()
        .filter(|l| l.peer != name && config.pool_of(&l.peer) == Some(pool))
        .count();
    if live >= pool.max {
        return Err(format!(
            "pool {:?} of {:?} is full: {live} of at most {} members are live",
            pool.prefix,
            shared.name(),
            pool.max
        ));
    }
    Ok(())
}

type Accepted = std::io::Result<(TcpStream, SocketAddr)>;
/// `None`: the connection never got to the HMAC handshake (TLS refused it; logged).
type Handshaken = Option<(
    Framed<Transport, FrameCodec>,
    Result<(PeerInfo, Arc<Slot>), HandshakeError>,
)>;

impl Actor for PeerListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.add_stream(futures_util::stream::unfold(
            self.listener.clone(),
            |l| async move {
                let next = l.accept().await;
                Some((next, l))
            },
        ));
        ctx.run_interval(REFUSAL_LOG_INTERVAL, |act, _| {
            if let Some(line) = act.admission.take_summary(REFUSAL_LOG_INTERVAL) {
                tracing::warn!(node = %act.shared.name(), "peer listener {line}");
            }
        });
    }
}

/// Restarted by its `actix::Supervisor` after a panic in a handler (see `supervision`): the
/// socket is kept, the handshakes under way were cancelled with the old context, so their
/// admission tickets go too. Established sessions are actors of their own and go on.
impl Supervised for PeerListener {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.admission = Admission::new(admission::peer_pending_bound(
            self.shared.config.member_bound,
        ));
    }
}

impl StreamHandler<Accepted> for PeerListener {
    fn handle(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        guard("peer_listener", ctx, |ctx| self.accepted(accepted, ctx));
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl PeerListener {
    fn accepted(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(node = %self.shared.name(), "accept failed: {e}");
                return;
            }
        };
        // Refused connections are dropped (closed) here, and counted for the summary line.
        let (ticket, evicted) = match self.admission.admit(Some(addr.ip())) {
            Ok(admitted) => admitted,
            Err(why) => {
                self.shared.metrics.refused(why.code());
                return;
            }
        };
        if let Some(silent) = evicted {
            self.shared.metrics.refused("evicted");
            ctx.cancel_future(silent);
        }
        let _ = stream.set_nodelay(true);
        let probe = admission::Probe::of(&stream);
        let wait = admission::first_bytes_deadline(self.shared.config.cluster.handshake_timeout);
        let first = async move {
            let spoke = admission::first_bytes(&stream, wait).await;
            (stream, spoke)
        };
        let handle = ctx.spawn(
            first
                .into_actor(self)
                .map(move |(stream, spoke), act, ctx| match spoke {
                    FirstBytes::Silent => {
                        act.shared.metrics.refused("first_bytes_late");
                        act.admission.too_late(ticket);
                        admission::refuse(stream, "timeout", format!("no bytes within {wait:?}"));
                    }
                    FirstBytes::Closed => act.admission.release(ticket),
                    FirstBytes::Spoke => {
                        if act.admission.talking(ticket) {
                            act.handshake(stream, addr, ticket, ctx);
                        }
                    }
                }),
        );
        self.admission.silent(ticket, handle, probe);
    }

    /// Run the handshake of a connection that has spoken; an authenticated one becomes a
    /// Session.
    fn handshake(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        ticket: Ticket,
        ctx: &mut Context<Self>,
    ) {
        let shared = self.shared.clone();
        let handshake = async move {
            let deadline = shared.config.cluster.handshake_timeout;
            let io = match &shared.tls {
                None => Transport::Tcp(stream),
                Some(tls) => match tls.accept_peer(stream, deadline).await {
                    Ok(io) => io,
                    Err(e) => {
                        shared.metrics.refused("tls");
                        tracing::warn!(node = %shared.name(), peer = %addr, "{e}");
                        return None;
                    }
                },
            };
            let mut framed = Framed::new(io, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
            let from = addr.to_string();
            let mut answered = None;
            let result = wire::accept_with(
                &mut framed,
                &shared.identity,
                deadline,
                |h| {
                    admit(&shared, h)?;
                    let Some(offer) = h.session else {
                        return Ok(None);
                    };
                    let answer = shared
                        .streams
                        .answer(&h.node, h.incarnation, offer)
                        .map_err(|e| e.to_string())?;
                    answered = Some(answer);
                    Ok(Some(answer))
                },
                |peer| identity::check(&shared, peer, &from),
            )
            .await;
            // Authenticated: resume the session held with the peer, or start one.
            let result = result.and_then(|peer| {
                let slot = match (peer.session, answered) {
                    (Some(offer), Some(answer)) => shared
                        .streams
                        .accepted(&peer.node, peer.incarnation, offer, answer)
                        .map_err(|e| HandshakeError::NotAdmitted(e.to_string()))?,
                    _ => Slot::plain(&peer.node),
                };
                Ok((peer, slot))
            });
            Some((framed, result))
        };
        ctx.spawn(handshake.into_actor(self).map(move |handshaken: Handshaken, act, ctx| {
            act.admission.release(ticket);
            let Some((framed, result)) = handshaken else {
                return;
            };
            match result {
                Ok((peer, slot)) => {
                    let parts = framed.into_parts();
                    let params = SessionParams {
                        slot,
                        shared: act.shared.clone(),
                        peer,
                        peer_addr: addr.to_string(),
                        wiring: act.wiring.clone(),
                        owner: Some(ctx.address().recipient()),
                        on_quiet: None,
                    };
                    Session::start(params, parts.io, parts.codec, parts.read_buf);
                }
                // Refused here as a duplicate: logged once by `identity::check`.
                Err(HandshakeError::Duplicate(_)) => act.shared.metrics.refused("duplicate_node"),
                Err(e) => match identity::refused_as_duplicate(act.shared.name(), &addr.to_string(), &e) {
                    // A peer that dialled this node holds this node's name on a live link.
                    Some(reason) => act.shared.fatal(reason),
                    None => {
                        act.shared.metrics.refused("handshake");
                        tracing::warn!(node = %act.shared.name(), peer = %addr, "handshake failed: {e}");
                    }
                },
            }
        }));
    }
}

impl Handler<SessionClosed> for PeerListener {
    type Result = ();

    fn handle(&mut self, _: SessionClosed, _: &mut Context<Self>) {}
}
