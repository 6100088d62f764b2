//! Upstream: keeps one planned link dialled. Supervised by NodeSupervisor; owns the Session of
//! its link and redials when it ends.
//!
//! It dials the link's primary target; when that fails it tries the fallbacks in order (a
//! slave whose master died joins a fallback master), with exponential backoff and full jitter
//! between attempts (50 ms doubling to 2 s). A refused or failing target is logged once when it
//! starts failing, not at every attempt.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::session::{Close, Session, SessionClosed, SessionParams, Wiring};
use super::shared::NodeShared;
use crate::topology::PlannedLink;
use crate::wire::{self, FrameCodec, HandshakeError, PeerInfo, MAX_HANDSHAKE_FRAME_BYTES};

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

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
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("dialled {expected:?} but {actual:?} answered")]
    WrongNode { expected: String, actual: String },
}

pub struct Upstream {
    shared: Arc<NodeShared>,
    link: PlannedLink,
    candidate: usize,
    attempt: u32,
    failing: bool,
    /// The live session and its link id (a late close of an older link is ignored).
    session: Option<(Addr<Session>, u64)>,
    wiring: Wiring,
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
            wiring,
        }
    }

    fn dial(&mut self, ctx: &mut Context<Self>) {
        let Some(target) = self.link.candidates.get(self.candidate).cloned() else {
            return;
        };
        let Some(addr) = self.shared.config.node(&target).map(|n| n.listen) else {
            return;
        };
        let shared = self.shared.clone();
        let expected = target.clone();
        let attempt = async move {
            let deadline = shared.config.cluster.handshake_timeout;
            let stream = tokio::time::timeout(deadline, TcpStream::connect(addr))
                .await
                .map_err(|_| DialError::Timeout)??;
            let _ = stream.set_nodelay(true);
            let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
            let peer = wire::dial(&mut framed, &shared.identity, deadline).await?;
            if peer.node != expected {
                return Err(DialError::WrongNode {
                    expected,
                    actual: peer.node,
                });
            }
            Ok::<(Framed<TcpStream, FrameCodec>, PeerInfo), DialError>((framed, peer))
        };
        ctx.spawn(attempt.into_actor(self).map(move |result, act, ctx| match result {
            Ok((framed, peer)) => {
                if act.failing {
                    tracing::info!(node = %act.shared.name(), target = %target, "linked again");
                }
                act.failing = false;
                act.attempt = 0;
                let parts = framed.into_parts();
                let (read, write) = parts.io.into_split();
                let params = SessionParams {
                    shared: act.shared.clone(),
                    peer,
                    peer_addr: addr.to_string(),
                    wiring: act.wiring.clone(),
                    owner: Some(ctx.address().recipient()),
                };
                act.session = Some(Session::start(params, read, write, parts.codec, parts.read_buf));
            }
            Err(e) => {
                if act.failing {
                    tracing::debug!(node = %act.shared.name(), target = %target, %addr, "still cannot link: {e}");
                } else {
                    tracing::warn!(node = %act.shared.name(), target = %target, %addr, "cannot link: {e}; retrying with backoff");
                    act.failing = true;
                }
                act.candidate = (act.candidate + 1) % act.link.candidates.len().max(1);
                act.retry(ctx);
            }
        }));
    }

    fn retry(&mut self, ctx: &mut Context<Self>) {
        let delay = backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        ctx.run_later(delay, |act, ctx| act.dial(ctx));
    }
}

impl Actor for Upstream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.dial(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some((s, _)) = self.session.take() {
            s.do_send(Close("node shutting down".into()));
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
        self.retry(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
