//! Session: one authenticated peer link. Started by PeerListener (accepted links) or Upstream
//! (dialled links) after the handshake; reports to the Router (LinkUp/LinkDown) and to its
//! starter when it ends. Never restarted: a broken link is redialled by its Upstream.
//!
//! Reading: `FramedRead` + a recycling `ready_chunks` as an actor stream, so up to `READ_BATCH_FRAMES`
//! frames are handled per wake-up and local events reach the bus as one batch.
//! Writing: a writer task owned by the session drains a bounded channel, encodes a batch of
//! frames into one buffer and writes it with one syscall. Producers (publishers, relaying
//! sessions, Membership) hold the channel's `Sender` through the route table.
//!
//! Bounds and policy: the link queue holds `LINK_QUEUE_FRAMES` frames. Relayed events wait for
//! room (the session pauses reading, so TCP pushes back on the peer); heartbeat frames that do
//! not fit are dropped (the next one supersedes them). Any malformed frame, protocol violation,
//! or `failure_threshold` heartbeat intervals without a frame closes the link, logged once with
//! the peer address and reason.
//!
//! Liveness: any inbound frame counts. A ping goes out only on a link that received nothing
//! during the last interval, so a link carrying statuses or events carries no pings (a 64-node
//! mesh would otherwise send 8064 pings and pongs per interval on top of its statuses).

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use futures_util::stream::{Fuse, Stream};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::calls::{Calls, IncomingCall, IncomingReply};
use super::dedup::Dedup;
use super::event_bus::{BatchPool, Deliver, EventBus};
use super::membership::{HeartbeatReceived, Membership, StatusReceived};
use super::pause::{self, PauseClock};
use super::router::{LinkDown, LinkUp, RouteTable, Router};
use super::shared::{NodeShared, LINK_QUEUE_FRAMES, READ_BATCH_FRAMES};
use super::supervision::guard;
use crate::wire::{
    encode_event, encode_message, Bye, EncodedMessage, Envelope, ErrorFrame, Frame, FrameCodec,
    Message, PeerInfo, Ping, WireError,
};

/// What a link's writer task is asked to do.
#[derive(Debug)]
pub enum Outbound {
    Frame(EncodedMessage),
    /// Flush what is queued, then close the write side.
    Close,
}

/// Per-link event counters (link crossings), for tests and the API.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub events_out: AtomicU64,
    pub events_in: AtomicU64,
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
    pub tx: mpsc::Sender<Outbound>,
    pub addr: Addr<Session>,
    pub counters: Arc<LinkCounters>,
}

impl LinkHandle {
    /// Queue an event frame if there is room; false if the link is full or gone.
    pub fn try_send_event(&self, frame: EncodedMessage) -> bool {
        let ok = self.tx.try_send(Outbound::Frame(frame)).is_ok();
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

/// Close the link, telling the peer why.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close(pub String);

/// The writer task could not write: the connection is dead.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WriterFailed(pub String);

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
}

pub struct Session {
    p: SessionParams,
    link_id: u64,
    tx: mpsc::Sender<Outbound>,
    counters: Arc<LinkCounters>,
    last_inbound: Instant,
    /// The heartbeat timer's clock: a pause of this node is not the peer's silence.
    pause: PauseClock,
    pings_sent: u64,
    rtt: Option<Duration>,
    ping_sent_at: Option<(u64, Instant)>,
    writer: Option<actix_rt::task::JoinHandle<()>>,
    closing: bool,
    /// Read batches come back here once handled, for the reader to fill again.
    spare_reads: SpareBatch,
    /// Batches for the bus, lent to it and handed back.
    spare_local: BatchPool,
}

type ReadBatch = Vec<Result<Frame, WireError>>;

/// Bytes the reader asks the socket for at most per read: one read takes in a few hundred
/// small frames.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The read batch vector the session gives back to its reader.
type SpareBatch = Rc<RefCell<Option<ReadBatch>>>;

/// `ready_chunks(READ_BATCH_FRAMES)` that reuses its vectors: each batch is the frames ready
/// now (at most `READ_BATCH_FRAMES`), in a vector the session handed back after the previous
/// batch. Without the reuse every batch is a fresh allocation of tens of KiB.
struct ReadyBatches<S> {
    frames: Fuse<S>,
    spare: SpareBatch,
}

impl<S: Stream<Item = Result<Frame, WireError>> + Unpin> Stream for ReadyBatches<S> {
    type Item = ReadBatch;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<ReadBatch>> {
        let mut batch = self
            .spare
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Vec::with_capacity(READ_BATCH_FRAMES));
        loop {
            match self.frames.poll_next_unpin(cx) {
                Poll::Ready(Some(frame)) => {
                    batch.push(frame);
                    if batch.len() >= READ_BATCH_FRAMES {
                        return Poll::Ready(Some(batch));
                    }
                }
                Poll::Ready(None) if batch.is_empty() => return Poll::Ready(None),
                Poll::Pending if batch.is_empty() => {
                    *self.spare.borrow_mut() = Some(batch);
                    return Poll::Pending;
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Ready(Some(batch)),
            }
        }
    }
}

/// What handling one read batch accumulates and caches, so the per-event work is only the
/// event's own: the route table is loaded once per batch, the local-subscriber check is
/// remembered for the last topic seen, and the link counter is bumped once.
struct Batch<'a> {
    /// Envelopes for this node's subscribers, handed to the bus as one message.
    local: Vec<Envelope>,
    table: Arc<RouteTable>,
    /// The last topic looked up in `local_topics`, and the answer.
    topic: Option<(String, bool)>,
    /// The last origin whose broadcasts this node does not relay (a leaf of its tree).
    leaf_of: Option<String>,
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

    fn subscribed(&mut self, topic: &str) -> bool {
        match &self.topic {
            Some((t, known)) if t == topic => *known,
            _ => {
                let known = self.shared.local_topics.contains(topic);
                self.topic = Some((topic.to_owned(), known));
                known
            }
        }
    }
}

impl Session {
    /// Start a session on an authenticated connection. `codec` carries the handshake's
    /// sequence numbers; `leftover` holds bytes the handshake read past its last frame.
    /// Returns the session's address and its link id.
    pub fn start<R, W>(
        p: SessionParams,
        read: R,
        write: W,
        mut codec: FrameCodec,
        leftover: BytesMut,
    ) -> (Addr<Session>, u64)
    where
        R: AsyncRead + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        codec.set_max_frame_bytes(p.shared.config.cluster.max_frame_bytes);
        let writer_codec = codec.clone();
        let (tx, rx) = mpsc::channel(LINK_QUEUE_FRAMES);
        let link_id = p.shared.next_link_id();
        let spare_reads = SpareBatch::default();
        let addr = Session::create(move |ctx| {
            let mut frames = FramedRead::with_capacity(read, codec, READ_BUFFER_BYTES);
            frames.read_buffer_mut().extend_from_slice(&leftover);
            ctx.add_stream(ReadyBatches {
                frames: frames.fuse(),
                spare: spare_reads.clone(),
            });
            let writer = actix_rt::spawn(write_loop(
                write,
                rx,
                writer_codec,
                ctx.address().recipient(),
            ));
            let counters = Arc::new(LinkCounters::new(p.shared.now_ms()));
            let pause = PauseClock::new(p.shared.heartbeat_interval());
            Session {
                p,
                link_id,
                tx,
                counters,
                last_inbound: Instant::now(),
                pause,
                pings_sent: 0,
                rtt: None,
                ping_sent_at: None,
                writer: Some(writer),
                closing: false,
                spare_reads,
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
                let _ = self.tx.try_send(Outbound::Frame(frame));
            }
            Err(e) => {
                tracing::error!(node = %self.p.shared.name(), "cannot encode {}: {e}", msg.kind())
            }
        }
    }

    /// Close after a fault of the peer's: log once, tell the peer, stop.
    fn fail(&mut self, ctx: &mut Context<Self>, code: &str, reason: String) {
        if !self.closing {
            tracing::warn!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                "closing link: {reason}");
            self.send(&Message::Error(ErrorFrame {
                code: code.to_owned(),
                message: reason,
            }));
            self.closing = true;
        }
        ctx.stop();
    }

    fn on_message(&mut self, msg: Message, batch: &mut Batch<'_>, ctx: &mut Context<Self>) {
        match msg {
            Message::Event(env) => self.on_event(env, batch, ctx),
            Message::Status(status) => {
                // Periodic and superseded by the next one: dropping under load is safe.
                let _ = self.p.wiring.membership.try_send(StatusReceived {
                    via: self.peer().to_owned(),
                    status,
                });
            }
            Message::Heartbeat(hb) => {
                let _ = self.p.wiring.membership.try_send(HeartbeatReceived {
                    via: self.peer().to_owned(),
                    heartbeat: hb,
                });
            }
            Message::Ping(p) => self.send(&Message::Pong(p)),
            Message::Pong(p) => {
                if let Some((n, at)) = self.ping_sent_at {
                    if n == p.n {
                        self.rtt = Some(at.elapsed());
                    }
                }
            }
            Message::Bye(bye) => {
                tracing::info!(node = %self.p.shared.name(), peer = %self.peer(), "peer closed the link: {}", bye.reason);
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
                    self.hand_to_calls(IncomingCall(call), ctx);
                } else if let Some(hop) = self.relay_hop(&call.target, &mut call.ttl, batch) {
                    self.relay(hop, &Message::PeerCall(call), ctx);
                }
            }
            Message::PeerReply(mut reply) => {
                if reply.target == self.p.shared.name() {
                    self.hand_to_calls(IncomingReply(reply), ctx);
                } else if let Some(hop) = self.relay_hop(&reply.target, &mut reply.ttl, batch) {
                    self.relay(hop, &Message::PeerReply(reply), ctx);
                }
            }
            // Skipped by the codec on a plain link: nothing to count.
            Message::Unknown(_) => {}
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
            | Message::ClusterView(_)) => {
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
    }

    /// Hand a call or reply to Calls; when its mailbox is full, wait (pausing this link's
    /// reads, so TCP pushes back on the peer).
    fn hand_to_calls<M>(&mut self, msg: M, ctx: &mut Context<Self>)
    where
        M: actix::Message<Result = ()> + Send + 'static,
        Calls: Handler<M>,
    {
        if let Err(SendError::Full(msg)) = self.p.wiring.calls.try_send(msg) {
            let calls = self.p.wiring.calls.clone();
            ctx.wait(
                async move {
                    let _ = calls.send(msg).await;
                }
                .into_actor(self),
            );
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

    /// Forward a frame on `link`, waiting for room when it is full (backpressure).
    fn relay(&mut self, link: LinkHandle, msg: &Message, ctx: &mut Context<Self>) {
        let frame = match encode_message(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(node = %self.p.shared.name(), "cannot re-encode {} to relay: {e}", msg.kind());
                return;
            }
        };
        if let Err(mpsc::error::TrySendError::Full(frame)) =
            link.tx.try_send(Outbound::Frame(frame))
        {
            ctx.wait(
                async move {
                    let _ = link.tx.send(frame).await;
                }
                .into_actor(self),
            );
        }
    }

    fn on_event(&mut self, mut env: Envelope, batch: &mut Batch<'_>, ctx: &mut Context<Self>) {
        batch.events_in += 1;
        if env.target.is_none() && !batch.first_sighting(env.origin_incarnation, env.id) {
            return;
        }
        let table = &*batch.table;
        let broadcast = env.target.is_none();
        let relayed = if broadcast && batch.leaf_of.as_deref() == Some(env.origin.as_str()) {
            false
        } else {
            let relayed = table.next_links(&env, Some(self.peer())).next().is_some();
            if broadcast && !relayed {
                batch.leaf_of = Some(env.origin.clone());
            }
            relayed
        };
        if env.ttl > 1 {
            if relayed {
                env.ttl -= 1;
                match encode_event(&env) {
                    Ok(frame) => {
                        for link in table.next_links(&env, Some(self.peer())) {
                            if !link.try_send_event(frame.clone()) {
                                // Full: wait for room, pausing this link's reads (backpressure).
                                let (tx, frame, counters) =
                                    (link.tx.clone(), frame.clone(), link.counters.clone());
                                ctx.wait(
                                    async move {
                                        if tx.send(Outbound::Frame(frame)).await.is_ok() {
                                            counters.events_out.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                    .into_actor(self),
                                );
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
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        // After a pause of this node (SIGSTOP), what the peer sent meanwhile is still unread:
        // judge only the time this node ran (see `pause`).
        let paused = self.pause.tick();
        if !paused.is_zero() {
            self.last_inbound = pause::excuse(self.last_inbound, paused, Instant::now());
            // Admission judges this link's freshness too (see `identity`).
            let silent_ms =
                u64::try_from(self.last_inbound.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.counters
                .heard_at(self.p.shared.now_ms().saturating_sub(silent_ms));
            tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(),
                "this node did not run for {} ms; the peer's silence is judged without it", paused.as_millis());
        }
        let silent = self.last_inbound.elapsed();
        if silent > self.p.shared.failure_timeout() {
            self.fail(
                ctx,
                "timeout",
                format!("no frame from the peer for {} ms", silent.as_millis()),
            );
            return;
        }
        // Any frame is proof of life: a link that carried one within the last interval needs
        // no probe (in a mesh every peer's status arrives each interval, so none are sent).
        if silent < self.p.shared.heartbeat_interval() {
            return;
        }
        self.pings_sent += 1;
        self.ping_sent_at = Some((self.pings_sent, Instant::now()));
        self.send(&Message::Ping(Ping { n: self.pings_sent }));
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        ctx.run_interval(self.p.shared.heartbeat_interval(), |act, ctx| {
            act.heartbeat(ctx)
        });
        tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr, "link up");
        self.p.wiring.router.do_send(LinkUp(LinkHandle {
            peer: self.p.peer.node.clone(),
            incarnation: self.p.peer.incarnation,
            link_id: self.link_id,
            tx: self.tx.clone(),
            addr: ctx.address(),
            counters: self.counters.clone(),
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(node = %self.p.shared.name(), peer = %self.peer(), "link down");
        if self.tx.try_send(Outbound::Close).is_err() {
            if let Some(w) = self.writer.take() {
                w.abort();
            }
        }
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
    fn handle(&mut self, batch: ReadBatch, ctx: &mut Context<Self>) {
        self.last_inbound = Instant::now();
        self.counters.heard_at(self.p.shared.now_ms());
        let mut frames = batch;
        let shared = self.p.shared.clone();
        let local = self.spare_local.take();
        let mut batch = Batch {
            local,
            table: shared.routes.load_full(),
            topic: None,
            leaf_of: None,
            events_in: 0,
            shared: &shared,
            dedup: None,
        };
        for item in frames.drain(..) {
            if self.closing {
                break;
            }
            match item {
                // Events first, taken straight out of the frame (one copy fewer of a large value).
                Ok(Frame(_, Message::Event(env))) => {
                    if guard("session", ctx, |ctx| self.on_event(env, &mut batch, ctx)).is_none() {
                        self.closing = true;
                    }
                }
                Ok(Frame(_, msg)) => {
                    if guard("session", ctx, |ctx| self.on_message(msg, &mut batch, ctx)).is_none()
                    {
                        self.closing = true;
                    }
                }
                Err(WireError::Io(e)) => {
                    tracing::warn!(node = %self.p.shared.name(), peer = %self.peer(), addr = %self.p.peer_addr,
                        "link read failed: {e}");
                    self.closing = true;
                    ctx.stop();
                }
                Err(e) => self.fail(ctx, e.code(), e.to_string()),
            }
        }
        frames.clear();
        *self.spare_reads.borrow_mut() = Some(frames);
        if batch.events_in > 0 {
            self.counters
                .events_in
                .fetch_add(batch.events_in, Ordering::Relaxed);
        }
        if batch.local.is_empty() {
            self.spare_local.give(batch.local);
        } else {
            let pool = Some(self.spare_local.clone());
            match self.p.wiring.bus.try_send(Deliver(batch.local, pool)) {
                Ok(()) => {}
                Err(SendError::Full(batch)) => {
                    // The bus is behind: stop reading until it takes this batch.
                    ctx.wait(
                        self.p
                            .wiring
                            .bus
                            .send(batch)
                            .into_actor(self)
                            .map(|_, _, _| ()),
                    );
                }
                Err(SendError::Closed(_)) => {}
            }
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
            self.send(&Message::Bye(Bye { reason }));
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

/// Frames per write: enough to amortise the syscall, few enough to keep latency low.
const WRITE_BATCH_FRAMES: usize = 512;
/// A write buffer that grew past this (a burst of large frames) is released afterwards.
const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;

/// The writer task of a link (peer or service): drains `rx`, encodes a batch of frames into one
/// buffer, writes it with one syscall; tells `session` if a write fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Outbound>,
    mut codec: FrameCodec,
    session: Recipient<WriterFailed>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if rx.recv_many(&mut batch, WRITE_BATCH_FRAMES).await == 0 {
            break;
        }
        let mut close = false;
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(frame) => {
                    if let Err(e) = codec.encode_frame(&frame, &mut buf) {
                        tracing::warn!("frame not sent: {e}");
                    }
                }
                Outbound::Close => close = true,
            }
        }
        if let Err(e) = io.write_all(&buf).await {
            session.do_send(WriterFailed(e.to_string()));
            return;
        }
        buf.clear();
        if buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            buf = BytesMut::with_capacity(64 * 1024);
        }
        if close {
            break;
        }
    }
    let _ = io.shutdown().await;
}
