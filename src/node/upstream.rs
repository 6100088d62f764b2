//! Upstream: keeps one planned link dialled. Supervised by NodeSupervisor; owns the Session of
//! its link and redials when it ends.
//!
//! Quiet re-dial: while its session reports a resumable link quiet (`LinkQuiet`, at every
//! heartbeat tick that heard nothing for an interval and half an interval later, and when the
//! peer's pings say it has heard nothing from here for two), it dials fresh connections, about
//! two per interval and at most `MAX_REDIALS_IN_FLIGHT` at once, each connect bounded by one
//! interval, while the quiet one goes on; once a fresh one is authenticated (the stream
//! resumes on it) the quiet one is dropped without a `bye`. A restored network is then used
//! within an interval, instead of after TCP's retransmission backoff. A re-dial that fails
//! changes nothing: the quiet link's own failure timeout ends it.
//!
//! It dials the link's primary target; when that fails it tries the fallbacks in order (a
//! slave whose master died joins a fallback master), with exponential backoff and full jitter
//! between attempts (50 ms doubling to 2 s). A refused or failing target is logged once when it
//! starts failing, not at every attempt.
//!
//! A target is dialled at its `advertise` address (else its `listen`). A host name is resolved
//! again at every attempt, within the handshake timeout, and each address it gives is tried in
//! order (`dial.rs`). What a name resolves to is logged when the outcome changes (first
//! failure, recovery, a different address list), not at every backoff attempt.
//!
//! A target that refuses this node as `duplicate_node` (another process runs this node and
//! is up) ends the dialling for good: the node stops on a fatal error and the process exits 1
//! (see `identity`). Every other failure is retried.
//!
//! With `[cluster.tls]` the connection is wrapped into TLS right after connect, the peer's
//! certificate verified against the CA and the host dialled (see `crate::tls`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_util::codec::Framed;

use super::dial::{self, ConnectError, Resolution};
use super::identity;
use super::session::{Close, LinkQuiet, Replaced, Session, SessionClosed, SessionParams, Wiring};
use super::shared::NodeShared;
use super::streams::Slot;
use crate::config::{Host, HostPort};
use crate::topology::PlannedLink;
use crate::wire::{self, FrameCodec, HandshakeError, PeerInfo, MAX_HANDSHAKE_FRAME_BYTES};

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Re-dials of one quiet link that may be in flight at once.
const MAX_REDIALS_IN_FLIGHT: u32 = 3;

/// Delay before attempt `attempt` (0-based): half fixed, half random, so restarted workers do
/// not all dial at the same instant.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let mut r = [0u8; 8];
    let random = getrandom::getrandom(&mut r)
        .map(|_| u64::from_le_bytes(r))
        .unwrap_or(0);
    let half = ceiling / 2;
    half + Duration::from_nanos(random % (half.as_nanos().max(1) as u64))
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("dialled {expected:?} but {actual:?} answered")]
    WrongNode { expected: String, actual: String },
    #[error("the peer's answer breaks the stream: {0}")]
    Stream(#[from] crate::link::stream::StreamError),
    #[error("{addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: crate::tls::TlsStreamError,
    },
}

/// A dial that got through: the connection, who answered, where, and the peer's stream.
type Dialled = (
    Framed<crate::link::Transport, FrameCodec>,
    PeerInfo,
    SocketAddr,
    Arc<Slot>,
);

pub struct Upstream {
    shared: Arc<NodeShared>,
    link: PlannedLink,
    candidate: usize,
    attempt: u32,
    failing: bool,
    /// The live session and its link id (a late close of an older link is ignored).
    session: Option<(Addr<Session>, u64)>,
    /// Re-dials of a quiet link in flight (a connect into a cut network may hang until the
    /// handshake deadline, so a new one starts at every quiet interval, up to
    /// `MAX_REDIALS_IN_FLIGHT`), and when the last one started.
    redials: u32,
    last_redial: Option<std::time::Instant>,
    wiring: Wiring,
    /// The last resolution of each candidate's host name (by node name), to log changes only.
    resolutions: BTreeMap<String, Resolution>,
}

/// How a host name's resolution changed since the previous attempt: what gets logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResolutionChange {
    /// Resolved for the first time (debug).
    First,
    /// Stopped resolving, or fails differently (warn).
    Failing,
    /// Resolves again after failing (info).
    Recovered,
    /// Resolves to a different list of addresses (info).
    Moved,
}

fn resolution_change(before: Option<&Resolution>, now: &Resolution) -> Option<ResolutionChange> {
    match (before, now) {
        (Some(b), n) if b == n => None,
        (_, Resolution::Failed(_)) => Some(ResolutionChange::Failing),
        (None, Resolution::Addresses(_)) => Some(ResolutionChange::First),
        (Some(Resolution::Failed(_)), Resolution::Addresses(_)) => {
            Some(ResolutionChange::Recovered)
        }
        (Some(Resolution::Addresses(_)), Resolution::Addresses(_)) => Some(ResolutionChange::Moved),
    }
}

impl Upstream {
    pub fn new(shared: Arc<NodeShared>, link: PlannedLink, wiring: Wiring) -> Self {
        Upstream {
            shared,
            link,
            candidate: 0,
            attempt: 0,
            failing: false,
            session: None,
            redials: 0,
            last_redial: None,
            wiring,
            resolutions: BTreeMap::new(),
        }
    }

    /// Logs what `to` (the address of node `target`) resolved to, if that changed.
    fn note_resolution(&mut self, target: &str, to: &HostPort, now: Resolution) {
        let change = resolution_change(self.resolutions.get(target), &now);
        let node = self.shared.name();
        match (change, &now) {
            (None, _) => {}
            (Some(ResolutionChange::Failing), Resolution::Failed(e)) => {
                tracing::warn!(%node, %target, address = %to, "{e}; retrying with backoff")
            }
            (Some(ResolutionChange::First), Resolution::Addresses(a)) => {
                tracing::debug!(%node, %target, address = %to, "resolved to {a:?}")
            }
            (Some(ResolutionChange::Recovered), Resolution::Addresses(a)) => {
                tracing::info!(%node, %target, address = %to, "resolves again, to {a:?}")
            }
            (Some(ResolutionChange::Moved), Resolution::Addresses(a)) => {
                tracing::info!(%node, %target, address = %to, "now resolves to {a:?}")
            }
            (Some(_), _) => {}
        }
        self.resolutions.insert(target.to_owned(), now);
    }

    /// Dial the current candidate; `redial`: to replace a quiet link's connection.
    fn dial(&mut self, ctx: &mut Context<Self>, redial: bool) {
        let Some(target) = self.link.candidates.get(self.candidate).cloned() else {
            return;
        };
        let Some(to) = self.shared.config.node(&target).map(|n| n.dial_address()) else {
            return;
        };
        let shared = self.shared.clone();
        let expected = target.clone();
        let dialled = to.clone();
        let attempt = async move {
            // One bound for each step: the lookup, each address's connect, the handshake.
            let deadline = shared.config.cluster.handshake_timeout;
            let resolved = dial::resolve(&dialled, deadline).await;
            // Only names have an outcome worth tracking; an IP literal always "resolves".
            let outcome = matches!(dialled.host, Host::Name(_)).then(|| match &resolved {
                Ok(addrs) => Resolution::Addresses(addrs.clone()),
                Err(e) => Resolution::Failed(e.to_string()),
            });
            let linked = async {
                // A re-dial's connect is bounded by one heartbeat interval: into a cut network
                // its SYN is lost, and TCP would retry it only a second or more later; the
                // next quiet tick sends a fresh one instead.
                let connect_deadline = if redial {
                    shared.heartbeat_interval().min(deadline)
                } else {
                    deadline
                };
                let (stream, addr) =
                    dial::connect_first(&resolved?, connect_deadline, shared.me.dial_from).await?;
                let _ = stream.set_nodelay(true);
                // With TLS, the server is verified against the CA and the host dialled.
                let io = match &shared.tls {
                    None => stream.into(),
                    Some(tls) => tls
                        .connect(&dialled.host, stream, deadline)
                        .await
                        .map_err(|source| DialError::Tls { addr, source })?,
                };
                let mut framed = Framed::new(io, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
                let from = addr.to_string();
                // Offer the session held with the peer, if any: it resumes where it stopped.
                let offered = shared.streams.offer(&expected);
                let peer = wire::dial_with(
                    &mut framed,
                    &shared.identity,
                    deadline,
                    Some(offered),
                    |p| identity::check(&shared, p, &from),
                )
                .await?;
                if peer.node != expected {
                    return Err(DialError::WrongNode {
                        expected,
                        actual: peer.node,
                    });
                }
                let slot = match peer.session {
                    Some(answer) => shared
                        .streams
                        .dialled(&peer.node, peer.incarnation, offered, answer)
                        .map_err(DialError::Stream)?,
                    None => Slot::plain(&peer.node),
                };
                Ok::<Dialled, DialError>((framed, peer, addr, slot))
            };
            (outcome, linked.await)
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |(outcome, result), act, ctx| {
                    if let Some(outcome) = outcome {
                        act.note_resolution(&target, &to, outcome);
                    }
                    act.linked(ctx, &target, &to, result, redial)
                }),
        );
    }

    /// The end of one dial attempt: start the session, or log and retry.
    fn linked(
        &mut self,
        ctx: &mut Context<Self>,
        target: &str,
        to: &HostPort,
        result: Result<Dialled, DialError>,
        redial: bool,
    ) {
        if redial {
            self.redials = self.redials.saturating_sub(1);
            if let Err(e) = &result {
                // The quiet link goes on (another re-dial follows at its next quiet tick; its
                // failure timeout ends it). If it ended meanwhile, the last re-dial in flight
                // takes the place of the usual retry.
                tracing::debug!(node = %self.shared.name(), target = %target, address = %to,
                    "could not re-dial the quiet link: {e}");
                if self.session.is_some() || self.redials > 0 {
                    return;
                }
            }
        }
        match result {
            Ok((framed, peer, addr, slot)) => {
                if self.failing {
                    tracing::info!(node = %self.shared.name(), target = %target, "linked again");
                }
                self.failing = false;
                self.attempt = 0;
                let parts = framed.into_parts();
                // Name the address dialled and, for a host name, the one that answered.
                let peer_addr = match to.socket_addr() {
                    Some(_) => addr.to_string(),
                    None => format!("{to} ({addr})"),
                };
                let params = SessionParams {
                    shared: self.shared.clone(),
                    peer,
                    peer_addr,
                    wiring: self.wiring.clone(),
                    owner: Some(ctx.address().recipient()),
                    on_quiet: Some(ctx.address().recipient()),
                    slot,
                };
                let fresh = Session::start(params, parts.io, parts.codec, parts.read_buf);
                if let Some((stale, _)) = self.session.replace(fresh) {
                    tracing::debug!(node = %self.shared.name(), target = %target,
                        "a fresh connection replaces the quiet one");
                    stale.do_send(Replaced);
                }
            }
            Err(e) => {
                if let DialError::Handshake(h) = &e {
                    // Another process holds this node's name: fatal, no retry.
                    if let Some(reason) =
                        identity::refused_as_duplicate(self.shared.name(), target, h)
                    {
                        self.shared.fatal(reason);
                        return;
                    }
                }
                // A name that does not resolve has its own log state (note_resolution), so
                // that once it resolves, a refused address is still reported.
                let resolution = matches!(&e, DialError::Connect(c) if c.is_resolution());
                if self.failing || resolution {
                    tracing::debug!(node = %self.shared.name(), target = %target, address = %to, "still cannot link: {e}");
                } else {
                    tracing::warn!(node = %self.shared.name(), target = %target, address = %to, "cannot link: {e}; retrying with backoff");
                    self.failing = true;
                }
                self.candidate = (self.candidate + 1) % self.link.candidates.len().max(1);
                self.retry(ctx);
            }
        }
    }

    fn retry(&mut self, ctx: &mut Context<Self>) {
        let delay = backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        ctx.run_later(delay, |act, ctx| act.dial(ctx, false));
    }
}

impl Actor for Upstream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.dial(ctx, false);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some((s, _)) = self.session.take() {
            s.do_send(Close("node shutting down".into()));
        }
    }
}

impl Handler<LinkQuiet> for Upstream {
    type Result = ();

    fn handle(&mut self, quiet: LinkQuiet, ctx: &mut Context<Self>) {
        let current = self
            .session
            .as_ref()
            .is_some_and(|(_, id)| *id == quiet.link_id);
        // The session tells twice an interval while quiet; a quarter interval, not a half,
        // so that the timer's jitter never skips one.
        let due = self
            .last_redial
            .is_none_or(|t| t.elapsed() >= self.shared.heartbeat_interval() / 4);
        if current && due && self.redials < MAX_REDIALS_IN_FLIGHT {
            self.redials += 1;
            self.last_redial = Some(std::time::Instant::now());
            self.dial(ctx, true);
        }
    }
}

impl Handler<SessionClosed> for Upstream {
    type Result = ();

    fn handle(&mut self, closed: SessionClosed, ctx: &mut Context<Self>) {
        if self
            .session
            .as_ref()
            .is_some_and(|(_, id)| *id != closed.link_id)
        {
            return;
        }
        self.session = None;
        self.candidate = 0; // prefer the primary again
                            // A re-dial under way takes the place of the retry.
        if self.redials == 0 {
            self.retry(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_resolution_is_logged_only_when_its_outcome_changes() {
        let addrs = |a: &str| Resolution::Addresses(vec![a.parse().unwrap()]);
        let failed = |e: &str| Resolution::Failed(e.to_owned());
        let a = addrs("10.0.0.1:7");
        use ResolutionChange::*;
        assert_eq!(resolution_change(None, &a), Some(First));
        assert_eq!(resolution_change(Some(&a), &a), None);
        assert_eq!(
            resolution_change(None, &failed("no such host")),
            Some(Failing)
        );
        assert_eq!(
            resolution_change(Some(&a), &failed("no such host")),
            Some(Failing)
        );
        // The same failure at every backoff attempt is logged once.
        assert_eq!(
            resolution_change(Some(&failed("no such host")), &failed("no such host")),
            None
        );
        assert_eq!(
            resolution_change(Some(&failed("no such host")), &failed("timed out")),
            Some(Failing)
        );
        assert_eq!(
            resolution_change(Some(&failed("no such host")), &a),
            Some(Recovered)
        );
        assert_eq!(
            resolution_change(Some(&a), &addrs("10.0.0.2:7")),
            Some(Moved)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let ceiling = BACKOFF_FIRST
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
    }
}
