//! Calls: request/response across the cluster. Supervised by NodeSupervisor.
//!
//! Owns this node's method table (the actors and applications that implement each method,
//! served in turn) and the calls this node is waiting on. A call goes:
//!
//! ```text
//! caller ─StartCall─> Calls ──peer_call──> … relays … ──> Calls (serving node) ──> implementer
//!        <─outcome──        <─peer_reply── … relays … <──                    <──  (oneshot)
//! ```
//!
//! With no target it picks among the nodes whose replicated status lists the method (this one
//! included): the least loaded by 1-minute load average per CPU, loads within
//! [`LOAD_TIE`] of the least counting as ties, taken in turn.
//!
//! Bounds and policy: at most [`MAX_PENDING_CALLS`] calls wait on remote nodes (more are
//! refused with `busy`); at most [`MAX_SERVING_CALLS`] calls from other nodes are served at
//! once (more are answered `busy` at once), each for at most [`MAX_CALL_TIMEOUT`] whatever
//! timeout the caller asked; a response too large for a frame reaches the caller as
//! `too_large` at once; at most [`MAX_METHODS`] methods are served, within the byte budget
//! that keeps this node's status in one frame (see `methods`, the ledger Membership reads).
//! Changes to the table reach Membership as one flag per burst, never as a list per change. Every call has a timeout;
//! a call to a node that goes down fails with `target_down` at once; a call served by an
//! implementer that goes away (its actor stopped, its application disconnected) fails with
//! `implementer_gone` at once, because the implementer's answer channel is dropped.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::membership::{Membership, MembershipView, MethodsChanged};
use super::shared::NodeShared;
use super::supervision::guard;
use crate::call::{CallError, Invocation, Request};
use crate::event::NodeId;
use crate::wire::{
    decode_payload, encode_message, encode_payload, EncodedMessage, Failure, Message, Outcome,
    PeerCall, PeerReply,
};

/// Calls waiting on other nodes, per node.
pub const MAX_PENDING_CALLS: usize = 65_536;
/// Methods one node serves (its actors' and applications' together).
pub const MAX_METHODS: usize = 4096;
/// Calls from other nodes this node serves at once (each holds a task until answered).
pub const MAX_SERVING_CALLS: usize = 65_536;
/// The longest a call from another node is served, whatever timeout it carries.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Calls waiting for a timeout default to this.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Loads (1-minute load average per CPU) this close to the least count as a tie.
pub const LOAD_TIE: f64 = 0.1;

/// Where an implementer's answer goes; dropping it unanswered fails the call with
/// `implementer_gone`.
pub type Answer = oneshot::Sender<Outcome>;

/// Something on this node that serves a method: an actor, or an attached application.
pub trait Implementer: Send {
    /// Serve one call. The outcome goes to `answer` (or it is dropped if the implementer is
    /// gone). Called on the node's arbiter.
    fn serve(&self, from: NodeId, payload: Bytes, answer: Answer);
    /// Who implements, for logs.
    fn describe(&self) -> String;
    /// False once the implementer is gone for good (its actor stopped): it is then removed.
    fn alive(&self) -> bool;
}

/// A Rust actor implementing `R`.
pub(crate) struct TypedImplementer<R: Request> {
    pub recipient: Recipient<Invocation<R>>,
}

impl<R: Request> Implementer for TypedImplementer<R> {
    fn serve(&self, from: NodeId, payload: Bytes, answer: Answer) {
        let request: R = match decode_payload(&payload) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("request of {} does not decode: {e}", R::METHOD);
                let _ = answer.send(Outcome::Error(Failure::new("bad_payload", msg)));
                return;
            }
        };
        let sent = self.recipient.send(Invocation { from, request });
        actix_rt::spawn(async move {
            let outcome = match sent.await {
                Ok(Ok(response)) => match encode_payload(&response) {
                    Ok(bytes) => Outcome::Ok(bytes),
                    Err(e) => Outcome::Error(Failure::new(
                        "bad_payload",
                        format!("response of {} does not encode: {e}", R::METHOD),
                    )),
                },
                Ok(Err(message)) => Outcome::Error(Failure::new("remote_error", message)),
                // The actor stopped: the answer is dropped (implementer_gone).
                Err(_) => return,
            };
            let _ = answer.send(outcome);
        });
    }

    fn describe(&self) -> String {
        format!("the actor implementing {}", R::METHOD)
    }

    fn alive(&self) -> bool {
        self.recipient.connected()
    }
}

/// Identifies one implementation, for [`Unimplement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImplementationId(u64);

impl ImplementationId {
    pub(crate) fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        ImplementationId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Serve `method` with `implementer`. Refused (and logged) past [`MAX_METHODS`] methods.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Implement {
    pub id: ImplementationId,
    pub method: String,
    pub implementer: Box<dyn Implementer>,
}

/// Stop serving with one implementation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unimplement(pub Vec<ImplementationId>);

/// Make a call; resolves with its outcome (never hangs past `timeout`).
#[derive(Message)]
#[rtype(result = "Outcome")]
pub struct StartCall {
    pub method: String,
    /// `None`: any implementer.
    pub target: Option<String>,
    pub timeout: Duration,
    pub payload: Bytes,
}

/// A `peer_call` addressed to this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IncomingCall(pub PeerCall);

/// A `peer_reply` addressed to this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IncomingReply(pub PeerReply);

/// A call timed out at its caller: stop waiting for it.
#[derive(Message)]
#[rtype(result = "()")]
struct Forget(u64);

struct Pending {
    target: String,
    answer: Answer,
}

struct Served {
    method: String,
    implementer: Box<dyn Implementer>,
}

pub struct Calls {
    shared: Arc<NodeShared>,
    membership: Addr<Membership>,
    /// Every implementation, by id; `by_method` lists each method's ids in order of arrival.
    served: BTreeMap<ImplementationId, Served>,
    by_method: BTreeMap<String, Vec<ImplementationId>>,
    /// Turn counters per method: among local implementations, and among nodes.
    turn_local: HashMap<String, usize>,
    turn: HashMap<String, usize>,
    pending: HashMap<u64, Pending>,
    /// Calls from other nodes being served now (their tasks hold a count each).
    serving: Arc<()>,
    next_call: u64,
}

const CALLS_MAILBOX: usize = 1024;

impl Calls {
    pub fn new(shared: Arc<NodeShared>, membership: Addr<Membership>) -> Self {
        Calls {
            shared,
            membership,
            served: BTreeMap::new(),
            by_method: BTreeMap::new(),
            turn_local: HashMap::new(),
            turn: HashMap::new(),
            pending: HashMap::new(),
            serving: Arc::new(()),
            next_call: 0,
        }
    }

    /// Tell Membership the method table changed: once until it reads the table, so a burst
    /// of changes (an application with 256 methods leaving) costs one message, not one list
    /// per method. Membership's mailbox is bounded by this flag, not by `do_send`.
    fn announce_methods(&self) {
        if self.shared.methods.tell() {
            self.membership.do_send(MethodsChanged);
        }
    }

    fn me(&self) -> NodeId {
        NodeId {
            name: self.shared.name().to_owned(),
            incarnation: self.shared.incarnation,
        }
    }

    /// Serve a call here with the next local implementation of `method` in turn; false if
    /// there is none.
    fn serve_locally(
        &mut self,
        method: &str,
        from: NodeId,
        payload: Bytes,
        answer: Answer,
    ) -> bool {
        loop {
            let Some(ids) = self.by_method.get(method).filter(|ids| !ids.is_empty()) else {
                return false;
            };
            let turn = match self.turn_local.get_mut(method) {
                Some(t) => t,
                None => self.turn_local.entry(method.to_owned()).or_default(),
            };
            let id = ids[*turn % ids.len()];
            *turn = turn.wrapping_add(1);
            match self.served.get(&id) {
                Some(s) if s.implementer.alive() => {
                    s.implementer.serve(from, payload, answer);
                    return true;
                }
                _ => self.remove(id),
            }
        }
    }

    fn remove(&mut self, id: ImplementationId) {
        self.shared.methods.remove(id);
        let Some(served) = self.served.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_method.get_mut(&served.method) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_method.remove(&served.method);
                self.turn_local.remove(&served.method);
                self.announce_methods();
            }
        }
        tracing::debug!(node = %self.shared.name(), method = %served.method, "{} no longer serves it", served.implementer.describe());
    }

    /// The node to serve a call of `method` with no target: least loaded, ties in turn.
    fn pick(&mut self, method: &str, view: &MembershipView) -> Option<String> {
        let me = self.shared.name();
        let local = self
            .by_method
            .get(method)
            .is_some_and(|ids| !ids.is_empty());
        let load =
            |stats: &crate::wire::NodeStats| stats.load_avg[0] / f64::from(stats.cpus.max(1));
        let mut candidates: Vec<(&str, f64)> = view
            .implementers(method)
            .filter(|m| m.name != me)
            .map(|m| (m.name.as_str(), load(&m.stats)))
            .collect();
        if local {
            candidates.push((me, load(&self.shared.stats.load())));
        }
        let least = candidates.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
        candidates.retain(|c| c.1 <= least + LOAD_TIE);
        candidates.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if candidates.is_empty() {
            return None;
        }
        let turn = match self.turn.get_mut(method) {
            Some(t) => t,
            None => self.turn.entry(method.to_owned()).or_default(),
        };
        let chosen = candidates[*turn % candidates.len()].0.to_owned();
        *turn = turn.wrapping_add(1);
        Some(chosen)
    }

    fn start_call(
        &mut self,
        call: StartCall,
        ctx: &mut Context<Self>,
    ) -> Pin<Box<dyn Future<Output = Outcome>>> {
        let fail = |e: CallError| -> Pin<Box<dyn Future<Output = Outcome>>> {
            Box::pin(std::future::ready(Outcome::Error(e.to_failure())))
        };
        let view = self.shared.view.borrow().clone();
        let target = match call.target {
            Some(t) if !self.shared.config.admits(&t) => return fail(CallError::UnknownNode(t)),
            Some(t) if t != self.shared.name() && !view.is_up(&t) => {
                return fail(CallError::TargetDown(t))
            }
            Some(t) => t,
            None => match self.pick(&call.method, &view) {
                Some(t) => t,
                None => return fail(CallError::NoImplementer(call.method)),
            },
        };
        let (answer, outcome) = oneshot::channel();
        let timeout = call.timeout;
        if target == self.shared.name() {
            if !self.serve_locally(&call.method, self.me(), call.payload, answer) {
                return fail(CallError::NoImplementer(format!(
                    "{} on {target}",
                    call.method
                )));
            }
            return Box::pin(await_outcome(outcome, timeout, None));
        }
        if self.pending.len() >= MAX_PENDING_CALLS {
            return fail(CallError::Busy(format!(
                "{MAX_PENDING_CALLS} calls already wait on other nodes"
            )));
        }
        let id = self.next_call;
        self.next_call += 1;
        let frame = encode_message(&Message::PeerCall(PeerCall {
            id,
            method: call.method,
            origin: self.shared.name().to_owned(),
            origin_incarnation: self.shared.incarnation,
            target: target.clone(),
            ttl: self.shared.ttl,
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            payload: call.payload,
        }));
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return fail(CallError::BadPayload(e.to_string())),
        };
        self.pending.insert(
            id,
            Pending {
                target: target.clone(),
                answer,
            },
        );
        let shared = self.shared.clone();
        let me = ctx.address();
        Box::pin(async move {
            if !route(&shared, &target, frame).await {
                me.do_send(Forget(id));
                return Outcome::Error(CallError::TargetDown(target).to_failure());
            }
            await_outcome(outcome, timeout, Some((me, id))).await
        })
    }

    fn on_call(&mut self, call: PeerCall) {
        let (answer, outcome) = oneshot::channel();
        let from = NodeId {
            name: call.origin.clone(),
            incarnation: call.origin_incarnation,
        };
        let method = call.method.clone();
        // The count of calls served is the count of this `Arc`'s clones, one per task.
        let busy = Arc::strong_count(&self.serving) > MAX_SERVING_CALLS;
        let served = !busy && self.serve_locally(&call.method, from, call.payload, answer);
        let timeout = Duration::from_millis(call.timeout_ms).min(MAX_CALL_TIMEOUT);
        let shared = self.shared.clone();
        let serving = self.serving.clone();
        actix_rt::spawn(async move {
            let _serving = serving;
            let outcome = if busy {
                let e = format!(
                    "{MAX_SERVING_CALLS} calls already served by {}",
                    shared.name()
                );
                Outcome::Error(CallError::Busy(e).to_failure())
            } else if served {
                match tokio::time::timeout(timeout, outcome).await {
                    Ok(Ok(o)) => o,
                    Ok(Err(_)) => Outcome::Error(
                        CallError::ImplementerGone(format!("{method} on {}", shared.name()))
                            .to_failure(),
                    ),
                    // The caller gave up at the same moment: nobody waits for an answer.
                    Err(_) => return,
                }
            } else {
                Outcome::Error(
                    CallError::NoImplementer(format!("{method} on {}", shared.name())).to_failure(),
                )
            };
            let reply = Message::PeerReply(PeerReply {
                id: call.id,
                target: call.origin.clone(),
                target_incarnation: call.origin_incarnation,
                ttl: shared.ttl,
                outcome,
            });
            let max = shared.config.cluster.max_frame_bytes;
            let frame = encode_message(&reply).and_then(|frame| {
                if frame.fits(max) {
                    return Ok(frame);
                }
                // Said at once, in a frame that fits, rather than dropped for the caller to
                // wait out its timeout.
                let why = format!(
                    "{} bytes of response to {} on {}, frames are at most {max} bytes",
                    frame.len(),
                    call.method,
                    shared.name()
                );
                encode_message(&Message::PeerReply(PeerReply {
                    id: call.id,
                    target: call.origin.clone(),
                    target_incarnation: call.origin_incarnation,
                    ttl: shared.ttl,
                    outcome: Outcome::Error(CallError::TooLarge(why).to_failure()),
                }))
            });
            match frame {
                Ok(frame) => {
                    if !route(&shared, &call.origin, frame).await {
                        tracing::debug!(node = %shared.name(), caller = %call.origin, "reply to a call: caller unreachable");
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %shared.name(), "cannot encode a call's reply: {e}")
                }
            }
        });
    }

    /// Fail the calls waiting on nodes that are no longer up. Looks at the pending calls
    /// only (none, most of the time): a view comes at every membership change, and copying
    /// its names into a set each time cost a thousand-node cluster more than the calls.
    fn on_view(&mut self, view: &MembershipView) {
        let down: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !view.is_up(&p.target))
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            if let Some(p) = self.pending.remove(&id) {
                let e = CallError::TargetDown(p.target);
                let _ = p.answer.send(Outcome::Error(e.to_failure()));
            }
        }
    }
}

/// Wait for an answer within `timeout`; on timeout tell Calls (if it tracks the call) to
/// forget it.
async fn await_outcome(
    outcome: oneshot::Receiver<Outcome>,
    timeout: Duration,
    forget: Option<(Addr<Calls>, u64)>,
) -> Outcome {
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => Outcome::Error(
            CallError::ImplementerGone("the implementer dropped the call".into()).to_failure(),
        ),
        Err(_) => {
            if let Some((calls, id)) = forget {
                calls.do_send(Forget(id));
            }
            Outcome::Error(CallError::Timeout(timeout).to_failure())
        }
    }
}

/// Send a call frame towards `target` along the shortest live path, waiting for room on the
/// link; false if no live path leads there.
pub(crate) async fn route(shared: &NodeShared, target: &str, frame: EncodedMessage) -> bool {
    let table = shared.routes.load();
    let Some(link) = table.own_links_for(Some(target)).next().cloned() else {
        return false;
    };
    link.tx.push(frame).await.is_ok()
}

impl Actor for Calls {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(CALLS_MAILBOX);
        let views: watch::Receiver<Arc<MembershipView>> = self.shared.view.subscribe();
        let stream = futures_util::stream::unfold(views, |mut rx| async move {
            rx.changed().await.ok()?;
            let view = rx.borrow_and_update().clone();
            Some((view, rx))
        });
        ctx.add_stream(stream);
        // A restarted Calls serves nothing yet: say so.
        self.announce_methods();
    }
}

/// A restart keeps this actor's state (actix restarts the same value), but the handler that
/// panicked may have stopped half-way: `served` is the record of who serves what, so the
/// index by method is rebuilt from it, and Membership is told to announce the table again.
impl Supervised for Calls {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.by_method.clear();
        for (id, served) in &self.served {
            self.by_method
                .entry(served.method.clone())
                .or_default()
                .push(*id);
        }
        self.turn_local.clear();
        self.turn.clear();
        if self.shared.methods.tell() {
            let _ = self.membership.try_send(MethodsChanged);
        }
    }
}

impl StreamHandler<Arc<MembershipView>> for Calls {
    fn handle(&mut self, view: Arc<MembershipView>, ctx: &mut Context<Self>) {
        guard("calls", ctx, |_| self.on_view(&view));
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Implement> for Calls {
    type Result = ();

    fn handle(&mut self, msg: Implement, ctx: &mut Context<Self>) {
        guard("calls", ctx, |_| self.implement(msg));
    }
}

impl Calls {
    fn implement(&mut self, msg: Implement) {
        // Admitted by whoever sent it (so that an application is refused at once); again
        // here, which is free, for any other path.
        if let Err(e) = self.shared.methods.add(msg.id, &msg.method) {
            tracing::warn!(node = %self.shared.name(), method = %msg.method,
                "{} refused: {e}", msg.implementer.describe());
            return;
        }
        let ids = self.by_method.entry(msg.method.clone()).or_default();
        let new_method = ids.is_empty();
        ids.push(msg.id);
        self.served.insert(
            msg.id,
            Served {
                method: msg.method,
                implementer: msg.implementer,
            },
        );
        if new_method {
            self.announce_methods();
        }
    }
}

impl Handler<Unimplement> for Calls {
    type Result = ();

    fn handle(&mut self, msg: Unimplement, ctx: &mut Context<Self>) {
        guard("calls", ctx, |_| {
            for id in msg.0 {
                self.remove(id);
            }
        });
    }
}

impl Handler<StartCall> for Calls {
    type Result = ResponseFuture<Outcome>;

    fn handle(&mut self, msg: StartCall, ctx: &mut Context<Self>) -> Self::Result {
        let started = std::time::Instant::now();
        let shared = self.shared.clone();
        let outcome = guard("calls", ctx, |ctx| self.start_call(msg, ctx))
            .unwrap_or_else(|| Box::pin(async { Outcome::Error(CallError::Stopped.to_failure()) }));
        Box::pin(async move {
            let outcome = outcome.await;
            let code = match &outcome {
                Outcome::Ok(_) => "ok",
                Outcome::Error(f) => f.code.as_str(),
            };
            shared.metrics.call_done(code, started.elapsed());
            outcome
        })
    }
}

impl Handler<IncomingCall> for Calls {
    type Result = ();

    fn handle(&mut self, msg: IncomingCall, ctx: &mut Context<Self>) {
        guard("calls", ctx, |_| self.on_call(msg.0));
    }
}

impl Handler<IncomingReply> for Calls {
    type Result = ();

    fn handle(&mut self, msg: IncomingReply, ctx: &mut Context<Self>) {
        guard("calls", ctx, |_| {
            let reply = msg.0;
            if reply.target_incarnation != self.shared.incarnation {
                return;
            }
            if let Some(p) = self.pending.remove(&reply.id) {
                let _ = p.answer.send(reply.outcome);
            }
        });
    }
}

impl Handler<Forget> for Calls {
    type Result = ();

    fn handle(&mut self, msg: Forget, ctx: &mut Context<Self>) {
        guard("calls", ctx, |_| self.pending.remove(&msg.0));
    }
}
