//! Session: one authenticated peer link. Started by PeerListener (accepted links) or Upstream
//! (dialled links) after the handshake; reports to the Router (LinkUp/LinkDown) and to its
//! starter when it ends. Never restarted: a broken link is redialled by its Upstream.
//!
//! Framing, the write queue, liveness and close-with-reason are the link core's (crate::link);
//! this module keeps the peer protocol: what each message means, relaying, and who hears of it.
//! Reading: up to `READ_BATCH_FRAMES` frames are handled per wake-up ([`ReadyBatches`]), and
//! local events reach the bus as one batch. Producers (publishers, relaying sessions,
//! Membership) push to the link's queue through the route table's [`LinkHandle`].
//!
//! Bounds and policy: the link queue holds `LINK_QUEUE_FRAMES` frames and `LINK_QUEUE_BYTES`
//! bytes. Order per origin is kept under backpressure: when a frame this session relays (or
//! hands to the bus or to Calls) finds its destination full, the session stops handling its
//! read batch right there, waits for that one destination (reading nothing meanwhile, so TCP
//! pushes back on the peer), and then goes on with the same batch, in order. There is never
//! more than one such wait per session. Heartbeat frames that do not fit are dropped (the next
//! one supersedes them). Any malformed frame, protocol violation, or `failure_threshold`
//! heartbeat intervals without a frame closes the link with an `error` frame (sent whole, past
//! the queue's bounds), logged once with the peer address and reason.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use actix::prelude::*;
use bytes::BytesMut;

use super::calls::{Calls, IncomingCall, IncomingReply};
use super::dedup::Dedup;
use super::event_bus::{BatchPool, Deliver, EventBus};
use super::membership::{DeltaReceived, DigestReceived, HeartbeatReceived, Membership, PeerLeft};
use super::router::{LinkDown, LinkUp, RouteTable, Router};
use super::shared::{
    same_shared_text, NodeShared, LINK_QUEUE_BYTES, LINK_QUEUE_FRAMES, READ_BATCH_FRAMES,
};
use super::streams::{PeerTx, Slot};
use super::supervision::guard;
use crate::link::stream::Receive;
use crate::link::{
    self, LinkQueue, Liveness, QueueBounds, ReadBatch, ReadyBatches, SpareBatch, Tick,
    TransportRead, TransportWrite, WriterFailed,
};
use crate::wire::{
    encode_event, encode_message, Ack, Bye, EncodedMessage, Envelope, ErrorFrame, Frame,
    FrameCodec, Message, PeerInfo, Ping, ReadCounters, WireError,
};

/// Per-link event counters (link crossings), for tests and the API.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub events_out: AtomicU64,
    pub events_in: AtomicU64,
    /// Frames and bytes read on this connection (counted by its reader's codec).
    pub received: Arc<ReadCounters>,
    /// When a frame last arrived, in ms since the node started: admission reads it to tell a
    /// live link from a silent one (see `identity`) without a mailbox hop.
    last_inbound_ms: AtomicU64,
}

impl LinkCounters {
    fn new(now_ms: u64) -> Self {
        LinkCounters {
            last_inbound_ms: AtomicU64::new(now_ms),
            ..LinkCounters::default()
        }
    }

    pub fn last_inbound_ms(&self) -> u64 {
        self.last_inbound_ms.load(Ordering::Relaxed)
    }

    fn heard_at(&self, now_ms: u64) {
        self.last_inbound_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// How other actors reach a live link.
#[derive(Clone)]
pub struct LinkHandle {
    pub peer: String,
    /// The peer's incarnation (who holds the name on this link; see `identity`).
    pub incarnation: uuid::Uuid,
    /// Distinguishes successive links to the same peer.
    pub link_id: u64,
    /// Through the peer's stream (numbered, kept for a replay) on a resumable link; outlives
    /// the connection there.
    pub tx: PeerTx,
    pub addr: Addr<Session>,
    pub counters: Arc<LinkCounters>,
}

impl LinkHandle {
    /// Queue an event frame if there is room; false if the link is full or gone.
    pub fn try_send_event(&self, frame: EncodedMessage) -> bool {
        let ok = self.tx.try_push(frame).is_ok();
        if ok {
            self.counters.events_out.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// Tells the actor that started a session that it ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub link_id: u64,
}

/// Tells the dialler of a resumable link that it went quiet for one heartbeat interval (sent
/// at every quiet tick, and when the peer's pings show this direction is stuck): it
/// dials a fresh connection, which replaces this one once authenticated (TCP's retransmission
/// backoff would keep a restored network silent for seconds).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkQuiet {
    pub link_id: u64,
}

/// Drop the connection without a word: a fresh connection to the same peer replaced it (a
/// `bye` here could reach the peer before it attached the fresh one, and end the stream).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replaced;

/// Close the link, telling the peer why.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close(pub String);

/// The node actors a session reports to and hands what it reads to.
#[derive(Clone)]
pub struct Wiring {
    pub router: Addr<Router>,
    pub membership: Addr<Membership>,
    pub bus: Addr<EventBus>,
    pub calls: Addr<Calls>,
}

/// Everything a session needs besides the socket.
pub struct SessionParams {
    pub shared: Arc<NodeShared>,
    pub peer: PeerInfo,
    pub peer_addr: String,
    pub wiring: Wiring,
    pub owner: Option<Recipient<SessionClosed>>,
    /// The dialler, told once when a resumable link goes quiet (`None` on accepted links).
    pub on_quiet: Option<Recipient<LinkQuiet>>,
    /// The peer's stream slot (a plain one on a version 1 link).
    pub slot: Arc<Slot>,
}

pub struct Session {
    p: SessionParams,
    link_id: u64,
    /// Whether this connection's frames carry stream seqs (a version 2 resumable link).
    resumable: bool,
    tx: Arc<LinkQueue>,
    counters: Arc<LinkCounters>,
    liveness: Liveness,
    closing: bool,
    /// Frames of a read batch not handled yet because a destination was full: handled, in
    /// order, once it has room (see the module docs).
    backlog: VecDeque<ReadItem>,
    /// Read batches come back here once handled, for the reader to fill again.
    spare_reads: SpareBatch,
    /// When the dialler was last told this link is quiet: at most four times an interval.
    told_quiet: Option<Instant>,
    /// When the peer's last `ping` arrived, and this side's last `ping` left (see `probe`
    /// and `heartbeat`).
    peer_pinged: Option<Instant>,
    pinged_at: Option<Instant>,
    /// A timer will send the `ack` owed (see `arm_ack`).
    ack_armed: bool,
    /// Batches for the bus, lent to it and handed back.
    spare_local: BatchPool,
}

type ReadItem = Result<Frame, WireError>;

/// What holds a read batch back: one frame waiting for room at its destination. Resolves once
/// the frame was taken (or its destination is gone).
type Stall = Pin<Box<dyn Future<Output = ()>>>;

/// Wait for `first`, then `then`.
fn stall_chain(first: Option<Stall>, then: Option<Stall>) -> Option<Stall> {
    match (first, then) {
        (Some(a), Some(b)) => Some(Box::pin(async move {
            a.await;
            b.await;
        })),
        (a, b) => a.or(b),
    }
}

/// What handling one read batch accumulates and caches, so the per-event work is only the
/// event's own: the route table is loaded once per batch, the local-subscriber check is
/// remembered for the last topic seen, and the link counter is bumped once.
struct Batch<'a> {
    /// Envelopes for this node's subscribers, handed to the bus as one message.
    local: Vec<Envelope>,
    table: Arc<RouteTable>,
    /// The last topic looked up in `local_topics`, and the answer (compared by address first,
    /// [`same_shared_text`]).
    topic: Option<(Arc<str>, bool)>,
    /// The last origin whose broadcasts this node does not relay (a leaf of its tree).
    leaf_of: Option<Arc<str>>,
    events_in: u64,
    shared: &'a NodeShared,
    /// Duplicate suppression, locked at the first broadcast of the batch and held to its end
    /// (every session of a node runs on the node's thread: nobody waits for it).
    dedup: Option<MutexGuard<'a, Dedup>>,
}

impl Batch<'_> {
    /// Whether a broadcast is seen here for the first time (true if the table is unusable).
    fn first_sighting(&mut self, origin: uuid::Uuid, id: u64) -> bool {
        if self.dedup.is_none() {
            self.dedup = self.shared.dedup.lock().ok();
        }
        self.dedup
            .as_mut()
            .is_none_or(|d| d.first_sighting(origin, id))
    }

    fn subscribed(&mut self, topic: &Arc<str>) -> bool {
        match &self.topic {
            Some((t, known)) if same_shared_text(t, topic) => *known,
            _ => {
                let known = self.shared.local_topics.contains(topic);
                self.topic = Some((topic.clone(), known));
                known
            }
        }
    }
}

impl Session {
    /// Start a session on an authenticated connection. `codec` carries the handshake's
    /// sequence numbers; `leftover` holds bytes the handshake read past its last frame.
    /// Returns the session's address and its link id.
    pub fn start(
        p: SessionParams,
        transport: link::Transport,
        mut codec: FrameCodec,
        leftover: BytesMut,
    ) -> (Addr<Session>, u64) {
        codec.set_max_frame_bytes(p.shared.config.cluster.max_frame_bytes);
        // Only a resumable link's frames carry stream seqs; a plain link numbers every frame.
        let resumable = codec.is_resumable();
        let writer_codec = codec.clone();
        let (read, write): (TransportRead, TransportWrite) = transport.split();
        let link_id = p.shared.next_link_id();
        let spare_reads = SpareBatch::default();
        let counters = Arc::new(LinkCounters::new(p.shared.now_ms()));
        codec.count_reads(counters.received.clone());
        let addr = Session::create(move |ctx| {
            let frames = link::FrameReader::new(read, codec, &leftover);
            ctx.add_stream(ReadyBatches::new(
                frames,
                spare_reads.clone(),
                READ_BATCH_FRAMES,
            ));
            let on_fail = ctx.address().recipient();
            let last_word_timeout = p.shared.failure_timeout();
            // The writer starts numbered where the stream's replay starts, and the replay is
            // queued before any new frame.
            let tx = p.slot.attach(link_id, writer_codec, |codec| {
                link::spawn_writer(
                    write,
                    codec,
                    QueueBounds {
                        frames: LINK_QUEUE_FRAMES,
                        bytes: LINK_QUEUE_BYTES,
                    },
                    on_fail,
                    last_word_timeout,
                )
            });
            let (interval, timeout) = (p.shared.heartbeat_interval(), p.shared.failure_timeout());
            // The dialler pings an idle link; the accepting side answers (see `liveness`).
            let liveness = if p.on_quiet.is_some() {
                Liveness::new(interval, timeout)
            } else {
                Liveness::answering(interval, timeout)
            };
            Session {
                p,
                link_id,
                resumable,
                tx,
                counters,
                liveness,
                closing: false,
                backlog: VecDeque::new(),
                spare_reads,
                told_quiet: None,
                peer_pinged: None,
                pinged_at: None,
                ack_armed: false,
                spare_local: BatchPool::default(),
            }
        });
        (addr, link_id)
    }

    fn peer(&self) -> &str {
        &self.p.peer.node
    }

    /// Queue a control frame; dropped if the link is full (heartbeats supersede each other).
    fn send(&self, msg: &Message) {
        match encode_message(msg) {
            Ok(frame) => {
                let _ = self.tx.try_push(frame);
            }
            Err(e) => {
                tracing::error!(node = %self.p.shared.name(), "cannot encode {}: {e}", msg.kind())
            }
        }
    }

    /// Close after a fault of the peer's: log once, tell the peer (the `error` frame goes out
    /// whole, past the queue's bounds), stop.
    fn fail(&mut self, ctx: &mut Context<Self>, code: &str, reason: String) {
        if !self.closing {
            tracing::warn!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                "closing link: {reason}");
            let word = encode_message(&Message::Error(ErrorFrame {
                code: code.to_owned(),
                message: reason,
            }));
            self.tx.close(word.ok(), false);
            self.closing = true;
        }
        ctx.stop();
    }

    /// Hand `msg` to Membership; when its mailbox is full, the wait for room.
    fn to_membership<M>(&self, msg: M) -> Option<Stall>
    where
        M: actix::Message<Result = ()> + Send + 'static,
        Membership: Handler<M>,
    {
        match self.p.wiring.membership.try_send(msg) {
            Ok(()) | Err(SendError::Closed(_)) => None,
            Err(SendError::Full(msg)) => {
                let membership = self.p.wiring.membership.clone();
                Some(Box::pin(async move {
                    let _ = membership.send(msg).await;
                }))
            }
        }
    }

    /// Act on one frame; `Some` when it waits for room at its destination (the rest of the
    /// read batch waits behind it).
    fn on_message(
        &mut self,
        msg: Message,
        batch: &mut Batch<'_>,
        ctx: &mut Context<Self>,
    ) -> Option<Stall> {
        match msg {
            Message::Event(env) => return self.on_event(env, batch),
            // Version 2's flooded status: replication is by deltas now.
            Message::Status(_) => {}
            // Membership behind (its mailbox full): this link waits for it rather than drop
            // a record (nothing might show the gap until the node changes again) or a digest
            // (a newcomer's catch-up would go unanswered).
            Message::Delta(delta) => {
                return self.to_membership(DeltaReceived {
                    via: self.peer().to_owned(),
                    via_incarnation: self.p.peer.incarnation,
                    delta,
                });
            }
            Message::Digest(digest) => {
                return self.to_membership(DigestReceived {
                    via: self.peer().to_owned(),
                    digest,
                });
            }
            Message::Heartbeat(hb) => {
                let _ = self.p.wiring.membership.try_send(HeartbeatReceived {
                    via: self.peer().to_owned(),
                    heartbeat: hb,
                });
            }
            Message::Ping(p) => {
                self.send(&Message::Pong(p));
                // An idle link's pings come two intervals apart or more (see `liveness`): one
                // sooner means the peer still heard nothing, not even the last pong.
                let soon = self.p.shared.heartbeat_interval() * 3 / 2;
                if self.peer_pinged.is_some_and(|t| t.elapsed() < soon) {
                    self.probe(ctx);
                }
                self.peer_pinged = Some(Instant::now());
            }
            // Any frame is proof of life; a pong also answers a probe (see `heartbeat`).
            Message::Pong(p) => self.liveness.pong(p.n),
            Message::Bye(bye) => {
                tracing::info!(node = %self.p.shared.name(), peer = %self.peer(), "peer closed the link: {}", bye.reason);
                // A goodbye on the connection the stream rides on ends it (the peer leaves);
                // one on a connection already replaced does not.
                if self.p.slot.is_current(self.link_id) {
                    self.p.shared.streams.end(self.peer(), "it said goodbye");
                    // A pool member that leaves is forgotten rather than listed as down.
                    let _ = self.p.wiring.membership.try_send(PeerLeft {
                        peer: self.peer().to_owned(),
                        link_id: self.link_id,
                    });
                }
                self.closing = true;
                ctx.stop();
            }
            Message::Error(e) => {
                tracing::warn!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                    "peer reported an error and closes: {}: {}", e.code, e.message);
                self.closing = true;
                ctx.stop();
            }
            Message::PeerCall(mut call) => {
                if call.target == self.p.shared.name() {
                    return self.hand_to_calls(IncomingCall(call));
                } else if let Some(hop) = self.relay_hop(&call.target, &mut call.ttl, batch) {
                    return self.relay(hop, &Message::PeerCall(call));
                }
            }
            Message::PeerReply(mut reply) => {
                if reply.target == self.p.shared.name() {
                    return self.hand_to_calls(IncomingReply(reply));
                } else if let Some(hop) = self.relay_hop(&reply.target, &mut reply.ttl, batch) {
                    return self.relay(hop, &Message::PeerReply(reply));
                }
            }
            // Skipped by the codec on a plain link: nothing to count.
            Message::Unknown(_) => {}
            Message::Ack(ack) if self.p.slot.is_resumable() => {
                if let Err(e) = self.p.slot.on_ack(ack.seq) {
                    self.fail(ctx, e.code(), e.to_string());
                }
            }
            Message::Ack(_) => {
                self.fail(
                    ctx,
                    "unexpected_message",
                    "ack on a link that is not resumable".to_owned(),
                );
            }
            other @ (Message::Hello(_)
            | Message::HelloAck(_)
            | Message::Auth(_)
            | Message::Welcome(_)) => {
                self.fail(
                    ctx,
                    "unexpected_message",
                    format!("{} after the handshake", other.kind()),
                );
            }
            other @ (Message::Subscribe(_)
            | Message::Unsubscribe(_)
            | Message::Publish(_)
            | Message::Deliver(_)
            | Message::Implement(_)
            | Message::Unimplement(_)
            | Message::Call(_)
            | Message::Reply(_)
            | Message::Request(_)
            | Message::Respond(_)
            | Message::Refused(_)
            | Message::Cluster(_)
            | Message::ClusterView(_)
            | Message::Options(_)
            | Message::HttpBackend(_)) => {
                self.fail(
                    ctx,
                    "unexpected_message",
                    format!(
                        "{} is a service message, not allowed on a peer link",
                        other.kind()
                    ),
                );
            }
        }
        None
    }

    /// Hand a call or reply to Calls; when its mailbox is full, wait for it (the read batch
    /// waits behind it, so TCP pushes back on the peer).
    fn hand_to_calls<M>(&mut self, msg: M) -> Option<Stall>
    where
        M: actix::Message<Result = ()> + Send + 'static,
        Calls: Handler<M>,
    {
        match self.p.wiring.calls.try_send(msg) {
            Err(SendError::Full(msg)) => {
                let calls = self.p.wiring.calls.clone();
                Some(Box::pin(async move {
                    let _ = calls.send(msg).await;
                }))
            }
            Ok(()) | Err(SendError::Closed(_)) => None,
        }
    }

    /// The link a call frame for `target` leaves on, its TTL spent by one; `None` (logged)
    /// when it expired or no live path leads on.
    fn relay_hop(&self, target: &str, ttl: &mut u8, batch: &Batch<'_>) -> Option<LinkHandle> {
        if *ttl <= 1 {
            tracing::debug!(node = %self.p.shared.name(), target, "call TTL expired; not relayed");
            return None;
        }
        *ttl -= 1;
        let hop = batch
            .table
            .next_links_for(Some(target), self.p.shared.name(), Some(self.peer()))
            .next()
            .cloned();
        if hop.is_none() {
            tracing::debug!(node = %self.p.shared.name(), target, "no live path for a call frame; dropped");
        }
        hop
    }

    /// Forward a frame on `link`; when it is full, the frame waits for room and the read batch
    /// behind it (backpressure).
    fn relay(&mut self, link: LinkHandle, msg: &Message) -> Option<Stall> {
        let frame = match encode_message(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(node = %self.p.shared.name(), "cannot re-encode {} to relay: {e}", msg.kind());
                return None;
            }
        };
        match link.tx.try_push(frame) {
            Err((link::QueueError::Full, frame)) => Some(Box::pin(async move {
                let _ = link.tx.push(frame).await;
            })),
            Ok(()) | Err((link::QueueError::Closed, _)) => None,
        }
    }

    fn on_event(&mut self, mut env: Envelope, batch: &mut Batch<'_>) -> Option<Stall> {
        batch.events_in += 1;
        if env.target.is_none() && !batch.first_sighting(env.origin_incarnation, env.id) {
            return None;
        }
        let table = &*batch.table;
        let broadcast = env.target.is_none();
        let relayed = if broadcast
            && batch
                .leaf_of
                .as_ref()
                .is_some_and(|o| same_shared_text(o, &env.origin))
        {
            false
        } else {
            let relayed = table.next_links(&env, Some(self.peer())).next().is_some();
            if broadcast && !relayed {
                batch.leaf_of = Some(env.origin.clone());
            }
            relayed
        };
        let mut stall = None;
        if env.ttl > 1 {
            if relayed {
                self.p
                    .shared
                    .metrics
                    .events_relayed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                env.ttl -= 1;
                match encode_event(&env) {
                    Ok(frame) => {
                        let mut links = table.next_links(&env, Some(self.peer()));
                        for link in links.by_ref() {
                            if !link.try_send_event(frame.clone()) && !link.tx.is_closed() {
                                // Full: this link and the ones after it get the frame once
                                // there is room; nothing behind it is handled meanwhile.
                                let rest: Vec<LinkHandle> =
                                    std::iter::once(link).chain(links).cloned().collect();
                                stall = Some(relay_later(rest, frame));
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.p.shared.name(), "cannot re-encode an event to relay: {e}")
                    }
                }
            }
        } else if relayed {
            tracing::debug!(node = %self.p.shared.name(), origin = %env.origin, "event TTL expired; not relayed");
        }
        if table.is_local(&env) && batch.subscribed(&env.topic) {
            batch.local.push(env);
        }
        stall
    }

    /// Whether a stream frame numbered `seq` is to be handled: the next one is; a repeat (a
    /// replay overlapping what an old connection delivered) is dropped; a gap closes the link.
    /// `now` is when the frame's read batch arrived (one clock read per batch, not per frame).
    fn in_stream(&mut self, seq: u64, now: Instant, ctx: &mut Context<Self>) -> bool {
        match self.p.slot.on_receive(seq, now) {
            Receive::Accept => {
                self.arm_ack(ctx);
                true
            }
            Receive::Duplicate => false,
            Receive::Gap { expected } => {
                self.fail(
                    ctx,
                    "out_of_sequence",
                    format!("stream frame {seq} where {expected} was expected"),
                );
                false
            }
        }
    }

    /// Tell the dialler of a resumable link that it is quiet (it dials a fresh connection),
    /// at most four times an interval however often it is said.
    fn tell_quiet(&mut self) {
        let (true, Some(dialler)) = (self.resumable, &self.p.on_quiet) else {
            return;
        };
        let now = Instant::now();
        let interval = self.p.shared.heartbeat_interval();
        if self
            .told_quiet
            .is_some_and(|t| now.duration_since(t) < interval / 4)
        {
            return;
        }
        self.told_quiet = Some(now);
        // Full mailbox: the dialler is busy already; the next quiet tick tells it again.
        let _ = dialler.try_send(LinkQuiet {
            link_id: self.link_id,
        });
    }

    /// Make sure a timer sends the `ack` owed when its delay runs out: one timer at a time,
    /// and only while an `ack` is owed. (A timer per link every `ACK_DELAY` cost a 64-node
    /// mesh 200,000 wake-ups a second doing nothing.)
    fn arm_ack(&mut self, ctx: &mut Context<Self>) {
        if self.ack_armed {
            return;
        }
        let Some(deadline) = self.p.slot.ack_deadline() else {
            return;
        };
        self.ack_armed = true;
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(1));
        ctx.run_later(wait, |act, ctx| {
            act.ack_armed = false;
            act.ack();
            act.arm_ack(ctx);
        });
    }

    /// Send the `ack` due, if one is (see `link::stream` for the schedule).
    fn ack(&mut self) {
        let Some(seq) = self.p.slot.ack_due(Instant::now()) else {
            return;
        };
        if let Ok(frame) = encode_message(&Message::Ack(Ack { seq })) {
            if self.tx.try_push(frame).is_ok() {
                self.p.slot.ack_sent(seq);
            }
        }
    }

    /// The peer pinged twice in a row: it heard nothing from here, not even the pong. On a
    /// resumable link this side dialled, this direction may be stuck while the other works
    /// (after a cut, TCP resends each way on its own backed-off timer). The dialler, the one
    /// side that can replace the connection, tells the two apart with a ping of its own, sent
    /// at once: its pong comes back only if both directions work. One such probe at a time.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        if !self.resumable || self.p.on_quiet.is_none() {
            return;
        }
        let interval = self.p.shared.heartbeat_interval();
        if self.pinged_at.is_some_and(|t| t.elapsed() < interval / 2) {
            return;
        }
        let n = self.liveness.next_ping();
        self.send(&Message::Ping(Ping { n }));
        self.pinged_at = Some(Instant::now());
        ctx.run_later(interval / 2, move |act, _| {
            if !act.liveness.is_answered(n) {
                act.tell_quiet();
            }
        });
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let tick = self.liveness.tick();
        if let Some(paused) = self.liveness.take_excused() {
            // Admission judges this link's freshness too (see `identity`): excuse it there.
            let silent_ms = u64::try_from(self.liveness.last_inbound().elapsed().as_millis())
                .unwrap_or(u64::MAX);
            self.counters
                .heard_at(self.p.shared.now_ms().saturating_sub(silent_ms));
            tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(),
                "this node did not run for {} ms; the peer's silence is judged without it", paused.as_millis());
        }
        match tick {
            Tick::Alive => {}
            Tick::Ping(n) => {
                // At every quiet tick after a ping that nothing answered (nothing came in
                // since), and half an interval after a ping if still quiet: a re-dial into a
                // cut network is lost (its SYN is retried only a second later), so fresh ones
                // keep coming, and a network back for half an interval is used. A quiet tick
                // alone says nothing: an idle link is quiet for about an interval between two
                // pings all the time, and re-dialling it (a handshake and a digest exchange)
                // once an interval was most of an idle cluster's traffic.
                if self
                    .pinged_at
                    .is_some_and(|t| self.liveness.last_inbound() < t)
                {
                    self.tell_quiet();
                }
                self.send(&Message::Ping(Ping { n }));
                self.pinged_at = Some(Instant::now());
                let interval = self.p.shared.heartbeat_interval();
                ctx.run_later(interval / 2, move |act, _| {
                    if act.liveness.last_inbound().elapsed() >= interval {
                        act.tell_quiet();
                    }
                });
            }
            Tick::Dead(silent) => self.fail(
                ctx,
                "timeout",
                format!("no frame from the peer for {} ms", silent.as_millis()),
            ),
        }
    }

    /// Handle read frames in order until they run out or one waits for room; returns that
    /// wait, with the frames after it left in `items`. Events for this node's subscribers go
    /// to the bus as one batch at the end (waited for too when the bus is full). `now` is when
    /// the frames arrived (or were taken up again after a wait).
    fn run_frames(
        &mut self,
        items: &mut dyn Iterator<Item = ReadItem>,
        now: Instant,
        ctx: &mut Context<Self>,
    ) -> Option<Stall> {
        let shared = self.p.shared.clone();
        let local = self.spare_local.take();
        let mut batch = Batch {
            local,
            table: shared.routes.load(),
            topic: None,
            leaf_of: None,
            events_in: 0,
            shared: &shared,
            dedup: None,
        };
        let mut stall = None;
        for item in items {
            if self.closing {
                break;
            }
            let waits = match item {
                // An `error` is no stream frame whatever its seq (the dialler's handshake
                // `error`, see `FrameCodec::check_sequence`).
                Ok(Frame(seq, ref msg))
                    if self.resumable
                        && seq != 0
                        && !matches!(msg, Message::Error(_))
                        && !self.in_stream(seq, now, ctx) =>
                {
                    Some(None)
                }
                // Events first, taken straight out of the frame (one copy fewer of a large value).
                Ok(Frame(_, Message::Event(env))) => {
                    guard("session", ctx, |_| self.on_event(env, &mut batch))
                }
                Ok(Frame(_, msg)) => {
                    guard("session", ctx, |ctx| self.on_message(msg, &mut batch, ctx))
                }
                Err(WireError::Io(e)) => {
                    tracing::warn!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                        "link read failed: {e}");
                    self.closing = true;
                    ctx.stop();
                    Some(None)
                }
                Err(e) => {
                    self.fail(ctx, e.code(), e.to_string());
                    Some(None)
                }
            };
            match waits {
                None => self.closing = true,
                Some(None) => {}
                Some(Some(wait)) => {
                    stall = Some(wait);
                    break;
                }
            }
        }
        drop(batch.dedup.take());
        if batch.events_in > 0 {
            self.counters
                .events_in
                .fetch_add(batch.events_in, Ordering::Relaxed);
        }
        let mut bus_wait: Option<Stall> = None;
        if batch.local.is_empty() {
            self.spare_local.give(batch.local);
        } else {
            let pool = Some(self.spare_local.clone());
            match self.p.wiring.bus.try_send(Deliver(batch.local, pool)) {
                Ok(()) | Err(SendError::Closed(_)) => {}
                Err(SendError::Full(msg)) => {
                    // The bus is behind: read nothing more until it takes this batch.
                    let bus = self.p.wiring.bus.clone();
                    bus_wait = Some(Box::pin(async move {
                        let _ = bus.send(msg).await;
                    }));
                }
            }
        }
        // The events before the held-back frame reach the bus before anything after it.
        stall_chain(bus_wait, stall)
    }

    /// Wait for `stall` (reading nothing meanwhile), then go on with the backlog. On a
    /// resumable link the frames this session accepted and holds keep other connections'
    /// sessions to the peer from handing on theirs until then (see `streams`): a fresh
    /// connection's replay of the frames after them must not overtake them.
    fn pause(&mut self, stall: Stall, ctx: &mut Context<Self>) {
        if self.resumable {
            self.p.slot.hold_inbound(self.link_id);
        }
        ctx.wait(stall.into_actor(self).map(|(), act, ctx| act.resume(ctx)));
    }

    /// Wait until no older connection's session holds stream frames it accepted, reading
    /// nothing meanwhile (what was read waits in the backlog); then go on with the backlog.
    fn wait_turn(&mut self, ctx: &mut Context<Self>) {
        let turn = self.p.slot.inbound_turn(self.link_id);
        ctx.wait(turn.into_actor(self).map(|(), act, ctx| act.resume(ctx)));
    }

    /// Whether another connection's session to the peer holds frames it accepted.
    fn must_wait_turn(&self) -> bool {
        self.resumable && self.p.slot.inbound_held_by_other(self.link_id)
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        // The silence while this side held its reads back was its own.
        self.liveness.heard();
        if self.closing {
            self.backlog.clear();
            self.p.slot.release_inbound(self.link_id);
            return;
        }
        if self.must_wait_turn() {
            self.wait_turn(ctx);
            return;
        }
        let mut backlog = std::mem::take(&mut self.backlog);
        let stall = self.run_frames(
            &mut std::iter::from_fn(|| backlog.pop_front()),
            Instant::now(),
            ctx,
        );
        self.backlog = backlog;
        match stall {
            Some(stall) => self.pause(stall, ctx),
            // Everything accepted was handed on: the next connection may go on.
            None => self.p.slot.release_inbound(self.link_id),
        }
    }
}

/// Queue `frame` on each of `links` in turn, waiting for room on each.
fn relay_later(links: Vec<LinkHandle>, frame: EncodedMessage) -> Stall {
    Box::pin(async move {
        for link in links {
            if link.tx.push(frame.clone()).await.is_ok() {
                link.counters.events_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        let interval = self.p.shared.heartbeat_interval();
        ctx.run_interval_at(self.liveness.first_tick(), interval, |act, ctx| {
            act.heartbeat(ctx)
        });
        tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr, "link up");
        self.p.wiring.router.do_send(LinkUp(LinkHandle {
            peer: self.p.peer.node.clone(),
            incarnation: self.p.peer.incarnation,
            link_id: self.link_id,
            tx: PeerTx(self.p.slot.clone()),
            addr: ctx.address(),
            counters: self.counters.clone(),
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(), "link down");
        // Unless a close with a last word came first: write what is queued, then end.
        self.tx.close(None, true);
        self.p.slot.release_inbound(self.link_id);
        self.p.slot.detach(self.link_id);
        self.p.wiring.router.do_send(LinkDown {
            peer: self.p.peer.node.clone(),
            link_id: self.link_id,
        });
        if let Some(owner) = &self.p.owner {
            owner.do_send(SessionClosed {
                link_id: self.link_id,
            });
        }
    }
}

impl StreamHandler<ReadBatch> for Session {
    fn handle(&mut self, mut frames: ReadBatch, ctx: &mut Context<Self>) {
        self.liveness.heard();
        self.counters.heard_at(self.p.shared.now_ms());
        if self.must_wait_turn() {
            // An older connection's session still holds frames it accepted: this batch
            // waits behind them (see `pause`).
            self.backlog.extend(frames.drain(..));
            *self.spare_reads.borrow_mut() = Some(frames);
            self.wait_turn(ctx);
            return;
        }
        let mut items = frames.drain(..);
        let stall = self.run_frames(&mut items, Instant::now(), ctx);
        if stall.is_some() && !self.closing {
            self.backlog.extend(items);
        } else {
            drop(items);
        }
        frames.clear();
        *self.spare_reads.borrow_mut() = Some(frames);
        self.ack();
        if let Some(stall) = stall {
            self.pause(stall, ctx);
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            tracing::info!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                "peer closed the connection");
        }
        ctx.stop();
    }
}

impl Handler<Close> for Session {
    type Result = ();

    fn handle(&mut self, Close(reason): Close, ctx: &mut Context<Self>) {
        if !self.closing {
            self.tx
                .close(encode_message(&Message::Bye(Bye { reason })).ok(), true);
            self.closing = true;
        }
        ctx.stop();
    }
}

impl Handler<Replaced> for Session {
    type Result = ();

    fn handle(&mut self, _: Replaced, ctx: &mut Context<Self>) {
        if !self.closing {
            tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                "a fresh connection replaced this quiet one");
            self.tx.close(None, false);
            self.closing = true;
        }
        ctx.stop();
    }
}

impl Handler<WriterFailed> for Session {
    type Result = ();

    fn handle(&mut self, WriterFailed(reason): WriterFailed, ctx: &mut Context<Self>) {
        if !self.closing {
            tracing::warn!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                "link write failed: {reason}");
            self.closing = true;
        }
        ctx.stop();
    }
}
