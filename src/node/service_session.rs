//! ServiceSession: one attached application, after its handshake. Started and supervised by
//! ServiceListener; never restarted (the application reconnects).
//!
//! It turns the application's frames into node operations (subscribe, publish, implement,
//! call, respond) and the node's deliveries, requests and replies into frames. What the
//! application subscribed and implemented is removed when it goes; calls waiting on it fail
//! at once with `implementer_gone`, because their answer channels are dropped.
//!
//! Framing, the write queue, liveness and close-with-reason are the link core's (crate::link).
//! The frames one read brings (up to `READ_BATCH_FRAMES`) are handled as one batch, in order;
//! a frame that makes the session wait (a publish waiting for room) holds the rest of its
//! batch back until the wait is over. `deliver` frames, one per event and application, are
//! written by hand ([`EncodedMessage::deliver`]), borrowing the event's topic and payload.
//!
//! Bounds and policy: at most [`MAX_SUBSCRIPTIONS`] topics and patterns, [`MAX_METHODS`] methods,
//! [`MAX_CALLS_IN_FLIGHT`] calls made and [`MAX_REQUESTS_IN_FLIGHT`] requests served at once
//! (past them: `refused`, or `busy` for calls). Publishes wait for room in the cluster (the
//! session stops reading, so TCP pushes back).
//!
//! Each application has its own queue, the write queue of its link: `APP_QUEUE_FRAMES` frames
//! and `LINK_QUEUE_BYTES` bytes (the bound NATS gives a subscriber's pending messages). What
//! happens when a delivery finds it full is the application's choice (the `options` message):
//! - `close` (the default): the application is a `slow_consumer` at once: what was queued is
//!   dropped, the frame being written is finished, the `error` frame follows, whole, and the
//!   stream ends. The bus never waits for it: a slow application affects only itself.
//! - `drop_oldest`: the oldest queued deliveries make room, and each `deliver` carries the
//!   count dropped so far; the application is never closed for being slow.
//! - `wait`: the delivery waits for room while the application reads, holding up the event
//!   bus meanwhile (lossless, at the reader's pace: for pipelines that must see everything,
//!   and benchmarks); once nothing was written to it for [`SLOW_CONSUMER_GRACE`], it is a
//!   `slow_consumer` as above.
//!
//! An application that sends nothing for the failure timeout is closed as `timeout`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio_util::codec::FramedParts;

use super::backends::{check_address, BackendId};
use super::calls::{
    Answer, Calls, Implement, ImplementationId, Implementer, StartCall, Unimplement,
};
use super::event_bus::{
    Delivered, EventBus, EventMeta, Origin, Subscribe, Subscriber, SubscriptionId, Unsubscribe,
};
use super::publish;
use super::service_listener::ServiceClosed;
use super::shared::{
    same_shared_text, NodeShared, APP_QUEUE_FRAMES, LINK_QUEUE_BYTES, READ_BATCH_FRAMES,
};
use super::supervision::guard;
use super::{PublishError, DEFAULT_CALL_TIMEOUT};
use crate::call::CallError;
use crate::event::NodeId;
use crate::link::{
    self, LinkQueue, Liveness, QueueBounds, QueueError, ReadBatch, ReadyBatches, SpareBatch, Tick,
    Transport, WriterFailed,
};
use crate::topic::{check_pattern, check_topic};
use crate::wire::{
    encode_message, Bye, Call, ClusterView, DeliverRef, EncodedMessage, ErrorFrame, Failure, Frame,
    FrameCodec, MemberView, Message, Outcome, PeerInfo, Ping, Publish, Refused, Reply, Request,
    WireError,
};

/// Topics one application may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// Methods one application may implement.
pub const MAX_METHODS: usize = 256;
/// Calls one application may have waiting.
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;
/// Requests one application may be serving at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4096;
/// Topic and method names: 1..=255 bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Numbers the sessions' subscriber groups (unique in the process).
static NEXT_GROUP: AtomicU64 = AtomicU64::new(1);

/// What a service session needs of its node.
#[derive(Clone)]
pub struct ServiceWiring {
    pub shared: Arc<NodeShared>,
    pub bus: Addr<EventBus>,
    pub calls: Addr<Calls>,
}

pub struct ServiceSession {
    w: ServiceWiring,
    app: PeerInfo,
    peer_addr: String,
    tx: Arc<LinkQueue>,
    liveness: Liveness,
    /// What happens when the application's queue is full (shared with its subscribers).
    overflow: Arc<Overflow>,
    /// Topics and patterns, as the application wrote them.
    subscriptions: HashMap<String, SubscriptionId>,
    /// This session's subscriber group at the bus (see `AppSubscriber`).
    group: u64,
    methods: HashMap<String, ImplementationId>,
    /// HTTP backends this application registered (`http_backend`), by address; advertised
    /// until it detaches.
    backends: HashMap<String, BackendId>,
    calls_in_flight: usize,
    /// Requests sent to the application, by the id it must echo.
    serving: HashMap<u64, Answer>,
    next_request: u64,
    closing: bool,
    /// Frames read but not yet handled because the session waits (see `run_frames`): at most
    /// two read batches, since nothing more is read while it waits.
    backlog: VecDeque<ReadItem>,
    /// The topic of the last publish admitted (empty: none yet, and never a valid topic).
    checked_topic: Arc<str>,
    /// A future that takes the backlog up again is spawned.
    backlog_scheduled: bool,
    /// The application's stream ended (or failed) after the frames in the backlog.
    read_all: bool,
    /// The read batch vector, handed back to the reader once handled.
    spare_reads: SpareBatch,
    /// The listener, told when this session ends, and this session's number there.
    owner: (Recipient<ServiceClosed>, u64),
}

/// Close the application's session, telling it why (`bye`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseService(pub String);

/// The application's queue was full: it does not keep up (its queue is closed already).
#[derive(Message)]
#[rtype(result = "()")]
struct SlowConsumer;

/// The policy of one application's queue when full, and the flag that makes a slow consumer's
/// close happen once.
#[derive(Default)]
struct Overflow {
    /// The application's policy: [`OVERFLOW_CLOSE`], [`OVERFLOW_DROP_OLDEST`] or
    /// [`OVERFLOW_WAIT`].
    policy: std::sync::atomic::AtomicU8,
    /// Set by whoever found the queue full first.
    slow: std::sync::atomic::AtomicBool,
    /// Deliveries dropped to make room (`drop_oldest`), as last reported by the queue.
    dropped: AtomicU64,
}

const OVERFLOW_CLOSE: u8 = 0;
const OVERFLOW_DROP_OLDEST: u8 = 1;
const OVERFLOW_WAIT: u8 = 2;

/// With `overflow` `wait`: how long an application's queue may stay full with nothing written
/// to the application before it is a slow consumer. An application that reads at all keeps its
/// writer moving; one that stopped reading holds its node's deliveries up this long, once.
/// A second, not less: a reader descheduled on a busy machine is not a stopped one, and an
/// application that asked for `wait` asked to pace its node.
pub const SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(1);

/// What became of a frame offered to an application's queue.
enum Pushed {
    Queued,
    /// Full: the frame is handed back, to wait for room (up to [`SLOW_CONSUMER_GRACE`]).
    Full(EncodedMessage),
    Closed,
}

/// What became of a frame that waited for room.
#[derive(PartialEq, Eq)]
enum Waited {
    Queued,
    Closed,
    /// No room within the grace: this wait closed the application as a slow consumer.
    GaveUp,
}

impl Overflow {
    /// Offer `frame` to the application's queue by its policy, without waiting.
    fn try_push(&self, tx: &LinkQueue, frame: EncodedMessage, droppable: bool) -> Pushed {
        let pushed = if self.policy.load(Ordering::Relaxed) == OVERFLOW_DROP_OLDEST {
            tx.push_dropping_oldest(frame, droppable).map(|dropped| {
                self.dropped.store(dropped, Ordering::Relaxed);
            })
        } else if droppable {
            tx.try_push(frame)
        } else {
            tx.try_push_kept(frame)
        };
        match pushed {
            Ok(()) => Pushed::Queued,
            Err((QueueError::Full, frame)) => Pushed::Full(frame),
            Err((QueueError::Closed, _)) => Pushed::Closed,
        }
    }

    /// Whether a delivery that found the queue full waits for room (`wait`), rather than
    /// closing the application at once (`close`).
    fn waits(&self) -> bool {
        self.policy.load(Ordering::Relaxed) == OVERFLOW_WAIT
    }

    /// Close the queue with `error slow_consumer` as its last word, once (whoever gets there
    /// first); true if this call closed it.
    fn close_slow(&self, tx: &LinkQueue, why: &str) -> bool {
        if self.slow.swap(true, Ordering::Relaxed) {
            return false;
        }
        let word = encode_message(&Message::Error(ErrorFrame {
            code: "slow_consumer".into(),
            message: format!(
                "the application's queue ({APP_QUEUE_FRAMES} frames, {LINK_QUEUE_BYTES} bytes) \
                 {why}"
            ),
        }));
        tx.close(word.ok(), false);
        true
    }

    /// Wait for room while the application reads; once nothing was written to it for
    /// [`SLOW_CONSUMER_GRACE`], close it as a slow consumer.
    async fn wait_for_room(&self, tx: &LinkQueue, frame: EncodedMessage) -> Waited {
        match tx.push_unless_stalled(frame, SLOW_CONSUMER_GRACE).await {
            Ok(()) => Waited::Queued,
            Err((QueueError::Closed, _)) => Waited::Closed,
            Err(_) => {
                let why = format!(
                    "stayed full, and it read nothing for {} ms",
                    SLOW_CONSUMER_GRACE.as_millis()
                );
                match self.close_slow(tx, &why) {
                    true => Waited::GaveUp,
                    false => Waited::Closed,
                }
            }
        }
    }
}

/// A call of a method the application implements.
#[derive(Message)]
#[rtype(result = "()")]
struct Serve {
    method: String,
    from: NodeId,
    payload: Bytes,
    answer: Answer,
}

/// A call the application made has ended.
#[derive(Message)]
#[rtype(result = "()")]
struct CallEnded {
    id: u64,
    outcome: Outcome,
}

impl ServiceSession {
    /// Start a session on an authenticated connection: `parts` are the handshake's socket,
    /// codec (with its sequence numbers) and any bytes read past the handshake.
    pub fn start(
        w: ServiceWiring,
        app: PeerInfo,
        peer_addr: String,
        parts: FramedParts<Transport, FrameCodec>,
        owner: (Recipient<ServiceClosed>, u64),
    ) -> Addr<ServiceSession> {
        let mut codec = parts.codec;
        let (read, write) = parts.io.split();
        let leftover = parts.read_buf;
        codec.set_max_frame_bytes(w.shared.config.cluster.max_frame_bytes);
        let writer_codec = codec.clone();
        let spare_reads = SpareBatch::default();
        ServiceSession::create(move |ctx| {
            ctx.add_stream(ReadyBatches::new(
                link::FrameReader::new(read, codec, &leftover),
                spare_reads.clone(),
                READ_BATCH_FRAMES,
            ));
            let tx = link::spawn_writer(
                write,
                writer_codec,
                QueueBounds {
                    frames: APP_QUEUE_FRAMES,
                    bytes: LINK_QUEUE_BYTES,
                },
                ctx.address().recipient(),
                w.shared.failure_timeout(),
            );
            let liveness = Liveness::new(w.shared.heartbeat_interval(), w.shared.failure_timeout());
            ServiceSession {
                w,
                app,
                peer_addr,
                tx,
                liveness,
                overflow: Arc::default(),
                subscriptions: HashMap::new(),
                group: NEXT_GROUP.fetch_add(1, Ordering::Relaxed),
                methods: HashMap::new(),
                backends: HashMap::new(),
                calls_in_flight: 0,
                serving: HashMap::new(),
                next_request: 0,
                closing: false,
                backlog: VecDeque::new(),
                backlog_scheduled: false,
                checked_topic: Arc::from(""),
                read_all: false,
                spare_reads,
                owner,
            }
        })
    }

    fn node(&self) -> &str {
        self.w.shared.name()
    }

    fn encode(&self, msg: &Message) -> Option<EncodedMessage> {
        match encode_message(msg) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(node = %self.node(), app = %self.app.node, "cannot encode {}: {e}", msg.kind());
                None
            }
        }
    }

    /// Queue a frame for the application; if its queue is full, it is a slow consumer.
    fn push(&self, msg: &Message, ctx: &mut Context<Self>) {
        if let Some(frame) = self.encode(msg) {
            self.push_frame(frame, ctx);
        }
    }

    /// The session's own frames (replies, requests, refusals, pongs) wait for room holding up
    /// this session only; one at a time, so they keep their order.
    fn push_frame(&self, frame: EncodedMessage, ctx: &mut Context<Self>) {
        if let Pushed::Full(frame) = self.overflow.try_push(&self.tx, frame, false) {
            let (overflow, tx) = (self.overflow.clone(), self.tx.clone());
            ctx.wait(
                async move { overflow.wait_for_room(&tx, frame).await }
                    .into_actor(self)
                    .map(|waited, _, ctx| {
                        if waited == Waited::GaveUp {
                            ctx.notify(SlowConsumer);
                        }
                    }),
            );
        }
    }

    fn refuse(&self, op: &str, code: &str, message: String, ctx: &mut Context<Self>) {
        tracing::debug!(node = %self.node(), app = %self.app.node, op, code, "refused: {message}");
        self.push(
            &Message::Refused(Refused {
                op: op.to_owned(),
                code: code.to_owned(),
                message,
            }),
            ctx,
        );
    }

    /// Close after a fault of the application's: log once, tell it why, stop.
    fn fail(&mut self, code: &str, reason: String, ctx: &mut Context<Self>) {
        if !self.closing {
            tracing::warn!(node = %self.node(), app = %self.app.node, addr = %self.peer_addr,
                "closing application: {reason}");
            let word = self.encode(&Message::Error(ErrorFrame {
                code: code.to_owned(),
                message: reason,
            }));
            self.tx.close(word, false);
            self.closing = true;
        }
        ctx.stop();
    }

    fn on_message(&mut self, msg: Message, ctx: &mut Context<Self>) {
        let verdict = match &msg {
            // An application mostly publishes on the topic it published on last: checked once.
            Message::Publish(p)
                if !p.topic.is_empty() && same_shared_text(&p.topic, &self.checked_topic) =>
            {
                Verdict::Admit
            }
            msg => check_request(msg),
        };
        match verdict {
            Verdict::Admit => {}
            Verdict::Refuse { op, code, message } => return self.refuse(op, code, message, ctx),
            Verdict::Close { code, message } => return self.fail(code, message, ctx),
        }
        match msg {
            Message::Subscribe(t) => self.subscribe(t.topic, ctx),
            Message::Unsubscribe(t) => match self.subscriptions.remove(&t.topic) {
                Some(id) => {
                    let bus = self.w.bus.clone();
                    self.hand_over(&bus, Unsubscribe(vec![id]), ctx);
                }
                None => self.refuse(
                    "unsubscribe",
                    "not_subscribed",
                    format!("not subscribed to {:?}", t.topic),
                    ctx,
                ),
            },
            Message::Publish(p) => self.publish(p, ctx),
            Message::Implement(m) => self.implement(m.method, ctx),
            Message::Unimplement(m) => match self.methods.remove(&m.method) {
                Some(id) => {
                    self.w.shared.methods.remove(id);
                    let calls = self.w.calls.clone();
                    self.hand_over(&calls, Unimplement(vec![id]), ctx);
                }
                None => self.refuse(
                    "unimplement",
                    "not_implemented",
                    format!("{:?} is not implemented by this application", m.method),
                    ctx,
                ),
            },
            Message::Call(c) => self.call(c, ctx),
            Message::Respond(r) => match self.serving.remove(&r.id) {
                Some(answer) => {
                    let outcome = match r.outcome {
                        Outcome::Ok(b) => Outcome::Ok(b),
                        Outcome::Error(f) => Outcome::Error(Failure::new(
                            "remote_error",
                            format!("{}: {}", f.code, f.message),
                        )),
                    };
                    let _ = answer.send(outcome);
                }
                None => self.refuse(
                    "respond",
                    "unknown_request",
                    format!("no request {} is waiting (answered, or timed out)", r.id),
                    ctx,
                ),
            },
            Message::Ping(p) => self.push(&Message::Pong(p), ctx),
            Message::Pong(_) => {}
            Message::Cluster(q) => self.cluster(q.id, ctx),
            Message::HttpBackend(b) => self.http_backend(b.address, ctx),
            // Checked by `check_request`: anything else is `close`.
            Message::Options(o) => {
                let policy = match o.overflow.as_deref() {
                    Some("drop_oldest") => OVERFLOW_DROP_OLDEST,
                    Some("wait") => OVERFLOW_WAIT,
                    _ => OVERFLOW_CLOSE,
                };
                self.overflow.policy.store(policy, Ordering::Relaxed);
            }
            Message::Bye(bye) => {
                tracing::debug!(node = %self.node(), app = %self.app.node, "application left: {}", bye.reason);
                self.closing = true;
                ctx.stop();
            }
            Message::Error(e) => {
                tracing::warn!(node = %self.node(), app = %self.app.node, addr = %self.peer_addr,
                    "application reported an error and closes: {}: {}", e.code, e.message);
                self.closing = true;
                ctx.stop();
            }
            // Closed by `check_request` as `unexpected_message`.
            _ => {}
        }
    }

    /// Answer with every declared node, up ones with their replicated state. A view that
    /// does not fit in a frame is refused (`too_large`) rather than cut.
    fn cluster(&mut self, id: u64, ctx: &mut Context<Self>) {
        let msg = Message::ClusterView(cluster_view(&self.w.shared, id));
        match self.encode(&msg) {
            // `[seq, message]` adds at most 10 bytes.
            Some(f) if f.len() + 10 <= self.w.shared.config.cluster.max_frame_bytes => {
                self.push_frame(f, ctx);
            }
            _ => self.refuse(
                "cluster",
                "too_large",
                "the member list does not fit in one frame".into(),
                ctx,
            ),
        }
    }

    /// `topic` may be a pattern. The application's subscriptions form one group at the bus,
    /// so an event matching several of them is delivered once.
    fn subscribe(&mut self, topic: String, ctx: &mut Context<Self>) {
        if self.subscriptions.contains_key(&topic) {
            return;
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return self.refuse(
                "subscribe",
                "too_many_subscriptions",
                format!(
                    "{topic:?}: an application subscribes to at most {MAX_SUBSCRIPTIONS} topics"
                ),
                ctx,
            );
        }
        let id = SubscriptionId::next();
        self.w.shared.local_topics.add(&topic);
        let subscribe = Subscribe {
            id,
            topic: topic.clone(),
            subscriber: Box::new(AppSubscriber {
                group: self.group,
                tx: self.tx.clone(),
                overflow: self.overflow.clone(),
                session: ctx.address(),
            }),
        };
        let bus = self.w.bus.clone();
        self.hand_over(&bus, subscribe, ctx);
        self.subscriptions.insert(topic, id);
    }

    fn publish(&mut self, p: Publish, ctx: &mut Context<Self>) {
        // `check_request` admitted it: remember it as checked.
        if !same_shared_text(&p.topic, &self.checked_topic) {
            self.checked_topic = p.topic.clone();
        }
        let out = match publish::prepare_raw(&self.w.shared, &p.topic, p.target, &p.payload) {
            Ok(out) => out,
            Err(e) => return self.refuse_publish(&e, ctx),
        };
        // Nothing is sent when a queue is full: then wait for room with the same event (and
        // number), reading nothing more from the application meanwhile (TCP pushes back).
        match publish::send_or_return(&self.w.bus, out) {
            Ok(()) => {}
            Err((PublishError::Full(_) | PublishError::BusFull, Some(out))) => {
                let bus = self.w.bus.clone();
                ctx.wait(
                    async move { publish::send_wait(&bus, *out).await }
                        .into_actor(self)
                        .map(|result, act, ctx| {
                            if let Err(e) = result {
                                act.refuse_publish(&e, ctx);
                            }
                        }),
                );
            }
            Err((e, _)) => self.refuse_publish(&e, ctx),
        }
    }

    /// Hand `msg`, read from the application, to a node actor: at once when its mailbox has
    /// room, else the session reads nothing more from the application until it has (TCP
    /// pushes back). An application never grows a node actor's mailbox past its bound.
    fn hand_over<A, M>(&mut self, to: &Addr<A>, msg: M, ctx: &mut Context<Self>)
    where
        A: Actor + Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
        M: actix::Message<Result = ()> + Send + 'static,
    {
        match to.try_send(msg) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                let sent = to.send(msg);
                ctx.wait(actix::fut::wrap_future(async move {
                    let _ = sent.await;
                }));
            }
            // The node is stopping, and this session with it.
            Err(SendError::Closed(_)) => {}
        }
    }

    fn refuse_publish(&self, e: &PublishError, ctx: &mut Context<Self>) {
        let code = match e {
            PublishError::TargetDown(_) => "target_down",
            PublishError::UnknownNode(_) | PublishError::UnknownIncarnation(_) => "unknown_node",
            PublishError::TooLarge { .. } | PublishError::Encode(_) => "too_large",
            PublishError::Full(_) | PublishError::BusFull => "busy",
            PublishError::Stopped => "stopped",
            PublishError::BadTopic { .. } => "bad_topic",
        };
        self.refuse("publish", code, e.to_string(), ctx);
    }

    fn implement(&mut self, method: String, ctx: &mut Context<Self>) {
        if self.methods.contains_key(&method) {
            return;
        }
        if self.methods.len() >= MAX_METHODS {
            return self.refuse(
                "implement",
                "too_many_methods",
                format!("{method:?}: an application implements at most {MAX_METHODS} methods"),
                ctx,
            );
        }
        let id = ImplementationId::next();
        // Admitted here, synchronously, so that the refusal is this `implement`'s.
        if let Err(e) = self.w.shared.methods.add(id, &method) {
            return self.refuse(
                "implement",
                "too_many_methods",
                format!("{method:?}: {e}"),
                ctx,
            );
        }
        let implement = Implement {
            id,
            method: method.clone(),
            implementer: Box::new(AppImplementer {
                method: method.clone(),
                app: self.app.node.clone(),
                session: ctx.address(),
            }),
        };
        let calls = self.w.calls.clone();
        self.hand_over(&calls, implement, ctx);
        self.methods.insert(method, id);
    }

    /// Advertise the application's HTTP server at `address` (checked by `check_request`)
    /// until it detaches; admitted or refused at once by the node's backend ledger.
    fn http_backend(&mut self, address: String, ctx: &mut Context<Self>) {
        if self.backends.contains_key(&address) {
            return;
        }
        let id = BackendId::next();
        if let Err(e) = self.w.shared.backends.add(id, &address) {
            return self.refuse("http_backend", "too_many_backends", e.to_string(), ctx);
        }
        tracing::info!(node = %self.node(), app = %self.app.node, "HTTP backend {address} advertised");
        self.backends.insert(address, id);
    }

    fn call(&mut self, c: Call, ctx: &mut Context<Self>) {
        if self.calls_in_flight >= MAX_CALLS_IN_FLIGHT {
            let e = CallError::Busy(format!(
                "an application has at most {MAX_CALLS_IN_FLIGHT} calls in flight"
            ));
            return self.push(
                &Message::Reply(Reply {
                    id: c.id,
                    outcome: Outcome::Error(e.to_failure()),
                }),
                ctx,
            );
        }
        self.calls_in_flight += 1;
        let timeout = c
            .timeout_ms
            .map_or(DEFAULT_CALL_TIMEOUT, Duration::from_millis);
        let started = self.w.calls.send(StartCall {
            method: c.method,
            target: c.target,
            timeout,
            payload: c.payload,
        });
        let (me, id) = (ctx.address(), c.id);
        actix_rt::spawn(async move {
            let outcome = started
                .await
                .unwrap_or_else(|_| Outcome::Error(CallError::Stopped.to_failure()));
            me.do_send(CallEnded { id, outcome });
        });
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        match self.liveness.tick() {
            Tick::Alive => {}
            Tick::Ping(n) => self.push(&Message::Ping(Ping { n }), ctx),
            Tick::Dead(silent) => {
                return self.fail(
                    "timeout",
                    format!("nothing from the application for {} ms", silent.as_millis()),
                    ctx,
                )
            }
        }
        // Requests whose caller gave up are not worth remembering.
        self.serving.retain(|_, answer| !answer.is_closed());
    }
}

/// The answer a message read from an application gets from its content alone, before any
/// node state is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The session acts on it.
    Admit,
    /// Answered with `refused {op, code, message}`; the session goes on reading.
    Refuse {
        op: &'static str,
        code: &'static str,
        message: String,
    },
    /// Not something an application may send: the session closes with this `error`.
    Close { code: &'static str, message: String },
}

/// The content checks of the service protocol (docs/PROTOCOL.md §12): topics and patterns,
/// method names, options, and the kinds an application may send after its handshake. Pure,
/// so that it can be checked against hostile input without a running node.
pub(crate) fn check_request(msg: &Message) -> Verdict {
    let refuse = |op, code, message| Verdict::Refuse { op, code, message };
    match msg {
        Message::Subscribe(t) => match check_pattern(&t.topic) {
            Ok(()) => Verdict::Admit,
            Err(why) => refuse(
                "subscribe",
                "bad_topic",
                format!("topic {:?} {why}", t.topic),
            ),
        },
        Message::Publish(p) => match check_topic(&p.topic) {
            Ok(()) => Verdict::Admit,
            Err(why) => refuse("publish", "bad_topic", format!("topic {:?} {why}", p.topic)),
        },
        Message::Implement(m) => match check_name(&m.method) {
            Ok(()) => Verdict::Admit,
            Err(why) => refuse("implement", "bad_method", format!("method {why}")),
        },
        Message::HttpBackend(b) => match check_address(&b.address) {
            Ok(()) => Verdict::Admit,
            Err(why) => refuse("http_backend", "bad_address", why.to_string()),
        },
        Message::Options(o) => match o.overflow.as_deref() {
            None | Some("close" | "drop_oldest" | "wait") => Verdict::Admit,
            Some(other) => refuse(
                "options",
                "bad_option",
                format!("overflow {other:?}: expected \"close\", \"drop_oldest\" or \"wait\""),
            ),
        },
        Message::Unsubscribe(_)
        | Message::Unimplement(_)
        | Message::Call(_)
        | Message::Respond(_)
        | Message::Ping(_)
        | Message::Pong(_)
        | Message::Cluster(_)
        | Message::Bye(_)
        | Message::Error(_) => Verdict::Admit,
        other => Verdict::Close {
            code: "unexpected_message",
            message: format!(
                "{} is not a message an application may send after the handshake",
                other.kind()
            ),
        },
    }
}

/// Method names: 1..=255 bytes of text (topics: crate::topic).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("is empty".into())
    } else if name.len() > MAX_NAME_BYTES {
        Err(format!(
            "is {} bytes, more than {MAX_NAME_BYTES}",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// An application subscribed to a topic or pattern: deliveries become `deliver` frames, with
/// the event's concrete topic, on its queue. Never waits: a full queue is the application's
/// problem alone (see the module docs), so the bus goes on with the next subscriber.
struct AppSubscriber {
    /// The session's number: all of one application's subscriptions share it.
    group: u64,
    tx: Arc<LinkQueue>,
    overflow: Arc<Overflow>,
    session: Addr<ServiceSession>,
}

impl Subscriber for AppSubscriber {
    fn group(&self) -> Option<u64> {
        Some(self.group)
    }

    fn deliver(&self, topic: &str, from: Origin<'_>, payload: &[u8], meta: EventMeta) -> Delivered {
        if self.tx.is_closed() {
            return Delivered::Closed;
        }
        // Written by hand from the borrowed fields: no topic, name or payload copied into a
        // `Deliver` first, and the same bytes as serde's encoding of one.
        let frame = EncodedMessage::deliver(&DeliverRef {
            topic,
            from: from.name,
            payload,
            id: meta.id,
            seq: meta.seq,
            targeted: meta.targeted,
            dropped: self.overflow.dropped.load(Ordering::Relaxed),
        });
        match self.overflow.try_push(&self.tx, frame, true) {
            Pushed::Queued => Delivered::Sent,
            Pushed::Closed => Delivered::Closed,
            Pushed::Full(_) if !self.overflow.waits() => {
                // `close`: the bus never waits for a slow application (see the module docs).
                if self.overflow.close_slow(&self.tx, "was full") {
                    let _ = self.session.try_send(SlowConsumer);
                }
                Delivered::Closed
            }
            Pushed::Full(frame) => {
                // `wait`: the bus waits, for the grace at most (see the module docs).
                let (overflow, tx) = (self.overflow.clone(), self.tx.clone());
                let session = self.session.clone();
                Delivered::Full(Box::pin(async move {
                    match overflow.wait_for_room(&tx, frame).await {
                        Waited::Queued => true,
                        Waited::Closed => false,
                        Waited::GaveUp => {
                            let _ = session.try_send(SlowConsumer);
                            false
                        }
                    }
                }))
            }
        }
    }
}

/// An application implementing a method: calls become `request` frames.
struct AppImplementer {
    method: String,
    app: String,
    session: Addr<ServiceSession>,
}

impl Implementer for AppImplementer {
    fn serve(&self, from: NodeId, payload: Bytes, answer: Answer) {
        let serve = Serve {
            method: self.method.clone(),
            from,
            payload,
            answer,
        };
        // The session's mailbox is not fed from the network directly: calls are bounded by
        // the callers' limits. A closed session drops the answer: implementer_gone.
        self.session.do_send(serve);
    }

    fn describe(&self) -> String {
        format!("application {}", self.app)
    }

    fn alive(&self) -> bool {
        self.session.connected()
    }
}

impl Actor for ServiceSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = self.w.shared.heartbeat_interval();
        ctx.run_interval_at(self.liveness.first_tick(), interval, |act, ctx| {
            act.heartbeat(ctx)
        });
        self.w
            .shared
            .metrics
            .applications
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(node = %self.node(), app = %self.app.node, addr = %self.peer_addr, "application attached");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let m = &self.w.shared.metrics;
        m.applications.fetch_sub(1, Ordering::Relaxed);
        m.app_deliveries_dropped.fetch_add(
            self.overflow.dropped.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        // One message each for all of them: a session that ends cannot wait for room, and
        // sessions are bounded (MAX_APPLICATIONS), so these are too.
        let subscriptions: Vec<_> = self.subscriptions.drain().map(|(_, id)| id).collect();
        if !subscriptions.is_empty() {
            self.w.bus.do_send(Unsubscribe(subscriptions));
        }
        let methods: Vec<_> = self.methods.drain().map(|(_, id)| id).collect();
        for id in &methods {
            self.w.shared.methods.remove(*id);
        }
        if !methods.is_empty() {
            self.w.calls.do_send(Unimplement(methods));
        }
        // Membership sees the ledger's change at its next tick (see `backends`).
        for (_, id) in self.backends.drain() {
            self.w.shared.backends.remove(id);
        }
        // Dropping the answers fails every call waiting on this application at once.
        self.serving.clear();
        // Unless a close with a last word came first: write what is queued, then end.
        self.tx.close(None, true);
        self.owner.0.do_send(ServiceClosed(self.owner.1));
        tracing::debug!(node = %self.node(), app = %self.app.node, "application detached");
    }
}

impl ServiceSession {
    /// Handle the frames read, in order, until one makes the session wait (a publish or a
    /// hand-over waiting for room, a frame of its own waiting for room in the application's
    /// queue): what is left goes to the backlog, taken up once the wait is over.
    fn run_frames(&mut self, items: &mut dyn Iterator<Item = ReadItem>, ctx: &mut Context<Self>) {
        while !self.closing && !ctx.waiting() {
            let Some(item) = items.next() else { return };
            match item {
                Ok(Frame(_, msg)) => {
                    if guard("service session", ctx, |ctx| self.on_message(msg, ctx)).is_none() {
                        self.closing = true;
                    }
                }
                Err(e) => {
                    let code = e.code();
                    self.fail(code, e.to_string(), ctx);
                }
            }
        }
    }

    /// Handle the backlog as far as it goes, and come back to it after the next wait. Spawned
    /// futures run only once the context's waits are over, so the backlog resumes in order,
    /// after the frame that made the session wait.
    fn run_backlog(&mut self, ctx: &mut Context<Self>) {
        let mut backlog = std::mem::take(&mut self.backlog);
        let mut items = backlog.drain(..);
        self.run_frames(&mut items, ctx);
        self.backlog.extend(items);
        drop(backlog);
        self.schedule_backlog(ctx);
    }

    fn end_of_stream(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            tracing::debug!(node = %self.node(), app = %self.app.node, addr = %self.peer_addr,
                "application closed the connection");
        }
        ctx.stop();
    }

    fn schedule_backlog(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            self.backlog.clear();
        } else if self.backlog.is_empty() && self.read_all && !ctx.waiting() {
            self.end_of_stream(ctx);
        } else if self.backlog.is_empty() && self.read_all {
            // The last frame waits: end once it is done (spawned futures run after waits).
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| act.end_of_stream(ctx)));
        } else if !self.backlog.is_empty() && !self.backlog_scheduled {
            self.backlog_scheduled = true;
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| {
                act.backlog_scheduled = false;
                act.run_backlog(ctx);
            }));
        }
    }
}

/// One frame, or the error that ends the connection, as read.
type ReadItem = Result<Frame, WireError>;

impl StreamHandler<ReadBatch> for ServiceSession {
    /// The frames one read brought (at most `READ_BATCH_FRAMES`): one liveness mark and one
    /// wake-up for all of them.
    fn handle(&mut self, mut frames: ReadBatch, ctx: &mut Context<Self>) {
        if !self.closing {
            self.liveness.heard();
            if self.backlog.is_empty() {
                let mut items = frames.drain(..);
                self.run_frames(&mut items, ctx);
                self.backlog.extend(items);
            } else {
                // Behind frames read earlier that still wait: in order, after them.
                self.backlog.extend(frames.drain(..));
                if !ctx.waiting() {
                    self.run_backlog(ctx);
                }
            }
            self.schedule_backlog(ctx);
        }
        frames.clear();
        *self.spare_reads.borrow_mut() = Some(frames);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.read_all = true;
        // What the application sent before it closed is handled first.
        if self.backlog.is_empty() || self.closing {
            self.end_of_stream(ctx);
        }
    }
}

impl Handler<Serve> for ServiceSession {
    type Result = ();

    fn handle(&mut self, msg: Serve, ctx: &mut Context<Self>) {
        if self.serving.len() >= MAX_REQUESTS_IN_FLIGHT {
            let e = CallError::Busy(format!(
                "application {} is serving {MAX_REQUESTS_IN_FLIGHT} requests",
                self.app.node
            ));
            let _ = msg.answer.send(Outcome::Error(e.to_failure()));
            return;
        }
        let id = self.next_request;
        self.next_request += 1;
        self.serving.insert(id, msg.answer);
        self.push(
            &Message::Request(Request {
                id,
                method: msg.method,
                from: msg.from.name,
                payload: msg.payload,
            }),
            ctx,
        );
    }
}

impl Handler<CallEnded> for ServiceSession {
    type Result = ();

    fn handle(&mut self, msg: CallEnded, ctx: &mut Context<Self>) {
        self.calls_in_flight = self.calls_in_flight.saturating_sub(1);
        self.push(
            &Message::Reply(Reply {
                id: msg.id,
                outcome: msg.outcome,
            }),
            ctx,
        );
    }
}

impl Handler<SlowConsumer> for ServiceSession {
    type Result = ();

    fn handle(&mut self, _: SlowConsumer, ctx: &mut Context<Self>) {
        if !self.closing {
            self.w
                .shared
                .metrics
                .apps_closed_slow
                .fetch_add(1, Ordering::Relaxed);
            // The queue is closed with its `error` frame already; only the log is left.
            tracing::warn!(node = %self.node(), app = %self.app.node, addr = %self.peer_addr,
                "closing application: slow_consumer: its queue ({APP_QUEUE_FRAMES} frames, {LINK_QUEUE_BYTES} bytes) is full");
            self.closing = true;
        }
        ctx.stop();
    }
}

impl Handler<CloseService> for ServiceSession {
    type Result = ();

    fn handle(&mut self, CloseService(reason): CloseService, ctx: &mut Context<Self>) {
        if !self.closing {
            self.tx
                .close(self.encode(&Message::Bye(Bye { reason })), true);
            self.closing = true;
        }
        ctx.stop();
    }
}

impl Handler<WriterFailed> for ServiceSession {
    type Result = ();

    fn handle(&mut self, WriterFailed(reason): WriterFailed, ctx: &mut Context<Self>) {
        if !self.closing {
            tracing::info!(node = %self.node(), app = %self.app.node, addr = %self.peer_addr,
                "write to the application failed: {reason}");
            self.closing = true;
        }
        ctx.stop();
    }
}

/// The cluster as `shared`'s node sees it, for a `cluster` request: the configured nodes in
/// declared order; the up ones with what their replicated state holds.
pub(crate) fn cluster_view(shared: &NodeShared, id: u64) -> ClusterView {
    let config = &shared.config;
    let view = shared.view.borrow().clone();
    let up = |name: &str, m: &crate::node::Member| MemberView {
        name: name.to_owned(),
        role: m.role.clone(),
        state: "up".into(),
        incarnation: Some(m.incarnation),
        stats: Some(m.stats.clone()),
        links: m.links.to_vec(),
        methods: m.methods.to_vec(),
        http: m.http.clone(),
    };
    let down = |name: &str, role: String| MemberView {
        name: name.to_owned(),
        role,
        state: "down".into(),
        incarnation: None,
        stats: None,
        links: Vec::new(),
        methods: Vec::new(),
        http: Vec::new(),
    };
    // Declared nodes in declared order, then pool members (up, or down and not yet
    // forgotten) in name order.
    let declared = config
        .nodes
        .iter()
        .map(|n| match view.members.get(&n.name) {
            Some(m) => up(&n.name, m),
            None => down(&n.name, n.role.to_string()),
        });
    let mut pooled: Vec<MemberView> = view
        .members
        .iter()
        .filter(|(name, _)| config.node(name).is_none())
        .map(|(name, m)| up(name, m))
        .chain(
            view.down
                .iter()
                .filter(|name| !view.members.contains_key(*name))
                .map(|name| down(name, crate::config::Role::Worker.to_string())),
        )
        .collect();
    pooled.sort_by(|a, b| a.name.cmp(&b.name));
    let members = declared.chain(pooled).collect();
    ClusterView {
        id,
        cluster: config.cluster.name.clone(),
        topology: config.cluster.topology.as_str().to_owned(),
        node: shared.name().to_owned(),
        members,
    }
}
