//! EventBus: this node's subscriptions (topic → subscribers, pattern → subscribers) and local
//! delivery. Supervised by NodeSupervisor.
//!
//! Sessions hand it batches of envelopes addressed to this node; the publisher's own node hands
//! it local publishes. It decodes each payload into the subscriber's type and sends an ordinary
//! `Delivery<E>` message, so a subscriber cannot tell a remote event from a local one.
//!
//! Exact topics are one hash lookup; patterns (`sensor.*`, `sensor.>`) live in a token trie
//! (crate::topic) that is walked only while at least one pattern subscription exists, so the
//! exact-topic path costs what it did before wildcards. An envelope goes to its topic's exact
//! subscribers first, then to the matching patterns' in the trie's order. A subscriber that
//! belongs to a group (an application) gets an envelope once however many of its group's
//! subscriptions match it.
//!
//! Bounds and policy: the bus mailbox holds `BUS_QUEUE_BATCHES` batches. An actor subscriber
//! whose mailbox is full is waited for (`ctx.wait`): the bus stops taking batches, sessions
//! stop reading their sockets, and TCP pushes back on the publishers. Nothing is dropped; a
//! slow actor slows its node's intake. An application's full queue holds the bus for at most
//! `SLOW_CONSUMER_GRACE` per event, after which the application is closed (or, with
//! `drop_oldest`, never: see node::service_session). A subscriber whose actor or application
//! is gone is removed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use super::shared::{Fnv, NodeShared, BUS_QUEUE_BATCHES, READ_BATCH_FRAMES};
use super::supervision::guard;
use crate::event::{Delivery, Event, NodeId, PatternDelivery};
use crate::topic::{is_pattern, TopicTrie};
use crate::wire::{decode_payload, Envelope, WireError};

static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);

/// Identifies one subscription, for [`Unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    pub(crate) fn next() -> Self {
        SubscriptionId(NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed))
    }
}

/// What happened to one delivery attempt.
pub(crate) enum Delivered {
    Sent,
    /// The subscriber's mailbox is full; the future resolves once it took the event
    /// (true) or died (false).
    Full(Pin<Box<dyn Future<Output = bool>>>),
    Closed,
    /// The payload does not decode into the subscriber's type.
    Undecodable(WireError),
}

/// Who published an event, borrowed from its envelope: a subscriber that hands the name to
/// its user copies it ([`Origin::node_id`]); one that only writes it into a frame does not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub name: &'a str,
    pub incarnation: uuid::Uuid,
}

impl Origin<'_> {
    pub fn node_id(self) -> NodeId {
        NodeId {
            name: self.name.to_owned(),
            incarnation: self.incarnation,
        }
    }
}

/// What identifies a delivered event besides its topic and origin (applications see it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventMeta {
    pub id: u64,
    pub seq: u64,
    pub targeted: bool,
}

/// A subscriber, type-erased: it knows how to turn a payload into its own message.
pub(crate) trait Subscriber: Send {
    /// `topic` is the envelope's concrete topic (for a pattern subscriber, what matched).
    fn deliver(&self, topic: &str, from: Origin<'_>, payload: &[u8], meta: EventMeta) -> Delivered;

    /// Subscribers of one group take an envelope once, whichever of them match it.
    fn group(&self) -> Option<u64> {
        None
    }
}

/// A Rust actor subscribed to `E`.
pub(crate) struct TypedSubscriber<E: Event> {
    pub recipient: Recipient<Delivery<E>>,
}

impl<E: Event> Subscriber for TypedSubscriber<E> {
    fn deliver(&self, _topic: &str, from: Origin<'_>, payload: &[u8], _: EventMeta) -> Delivered {
        let event: E = match decode_payload(payload) {
            Ok(e) => e,
            Err(e) => return Delivered::Undecodable(e),
        };
        let from = from.node_id();
        match self.recipient.try_send(Delivery { from, event }) {
            Ok(()) => Delivered::Sent,
            Err(SendError::Full(msg)) => {
                let recipient = self.recipient.clone();
                Delivered::Full(Box::pin(async move { recipient.send(msg).await.is_ok() }))
            }
            Err(SendError::Closed(_)) => Delivered::Closed,
        }
    }
}

/// An event as it arrived, undecoded: what [`NodeHandle::subscribe_channel`] hands out.
///
/// [`NodeHandle::subscribe_channel`]: crate::NodeHandle::subscribe_channel
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub topic: String,
    pub from: NodeId,
    /// One CBOR data item.
    pub payload: bytes::Bytes,
}

/// An observer fed through a bounded channel. It never makes the bus wait: a full channel
/// drops the subscription (the receiver then ends), so a slow reader cannot hold up the
/// node's subscribers nor grow a queue.
pub(crate) struct ChannelSubscriber {
    pub tx: tokio::sync::mpsc::Sender<RawEvent>,
}

impl Subscriber for ChannelSubscriber {
    fn deliver(&self, topic: &str, from: Origin<'_>, payload: &[u8], _: EventMeta) -> Delivered {
        let event = RawEvent {
            topic: topic.to_owned(),
            from: from.node_id(),
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        match self.tx.try_send(event) {
            Ok(()) => Delivered::Sent,
            Err(_) => Delivered::Closed,
        }
    }
}

/// A Rust actor subscribed to a pattern, decoding every matching event as `E`.
pub(crate) struct PatternSubscriber<E: Event> {
    pub recipient: Recipient<PatternDelivery<E>>,
}

impl<E: Event> Subscriber for PatternSubscriber<E> {
    fn deliver(&self, topic: &str, from: Origin<'_>, payload: &[u8], _: EventMeta) -> Delivered {
        let event: E = match decode_payload(payload) {
            Ok(e) => e,
            Err(e) => return Delivered::Undecodable(e),
        };
        let msg = PatternDelivery {
            topic: topic.to_owned(),
            from: from.node_id(),
            event,
        };
        match self.recipient.try_send(msg) {
            Ok(()) => Delivered::Sent,
            Err(SendError::Full(msg)) => {
                let recipient = self.recipient.clone();
                Delivered::Full(Box::pin(async move { recipient.send(msg).await.is_ok() }))
            }
            Err(SendError::Closed(_)) => Delivered::Closed,
        }
    }
}

/// Envelopes for this node's subscribers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<Envelope>, pub Option<BatchPool>);

/// The vectors a session takes its delivery batches from: the bus hands each one back emptied,
/// so steady-state delivery allocates no batch vectors (a batch vector is tens of KiB, and
/// every allocation that large makes the allocator consolidate all its small free chunks).
#[derive(Clone, Default)]
pub struct BatchPool(Arc<std::sync::Mutex<Vec<Vec<Envelope>>>>);

impl BatchPool {
    /// Vectors kept: a session hands the bus up to 16 batches before the bus runs (actix
    /// polls a stream 16 times before it yields), so this many cover a whole round.
    const KEEP: usize = 17;
    /// A new vector's room: it grows to what the traffic needs (at most a read batch) and
    /// is kept at that size, so a session that delivers little holds little.
    const FIRST: usize = 16;

    pub fn take(&self) -> Vec<Envelope> {
        self.0
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_else(|| Vec::with_capacity(Self::FIRST))
    }

    pub fn give(&self, mut batch: Vec<Envelope>) {
        batch.clear();
        if batch.capacity() <= READ_BATCH_FRAMES {
            if let Ok(mut pool) = self.0.lock() {
                if pool.len() < Self::KEEP {
                    pool.push(batch);
                }
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe {
    pub id: SubscriptionId,
    pub topic: String,
    pub subscriber: Box<dyn Subscriber>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub Vec<SubscriptionId>);

/// A topic's subscribers, in subscription order.
type Subscribers = Vec<(SubscriptionId, Box<dyn Subscriber>)>;

pub struct EventBus {
    shared: Arc<NodeShared>,
    topics: HashMap<String, Subscribers, Fnv>,
    /// Pattern subscriptions by id, with their pattern; the trie files their ids.
    pattern_subs: HashMap<SubscriptionId, (String, Box<dyn Subscriber>)>,
    patterns: TopicTrie<SubscriptionId>,
    /// Scratch, reused for every envelope: the pattern subscriptions matching the one offered.
    matched: Vec<SubscriptionId>,
    /// Groups that already took the envelope offered (kept across a pause on a full mailbox).
    served: Vec<u64>,
    /// Envelopes not yet offered to every subscriber; `cursor` is the next subscriber index
    /// for the front envelope (set when delivery paused on a full mailbox).
    pending: VecDeque<Envelope>,
    cursor: usize,
    undecodable: u64,
}

impl EventBus {
    pub fn new(shared: Arc<NodeShared>) -> Self {
        EventBus {
            shared,
            topics: HashMap::default(),
            pattern_subs: HashMap::new(),
            patterns: TopicTrie::default(),
            matched: Vec::new(),
            served: Vec::new(),
            pending: VecDeque::new(),
            cursor: 0,
            undecodable: 0,
        }
    }

    /// Offer pending envelopes to subscribers until done or a mailbox is full.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(env) = self.pending.pop_front() {
            if !self.offer(env, ctx) {
                return;
            }
        }
    }

    /// Offer a batch: straight from its vector while nothing is pending (no copy through the
    /// queue), queued behind what is pending otherwise.
    fn deliver_batch(&mut self, envelopes: &mut Vec<Envelope>, ctx: &mut Context<Self>) {
        if !self.pending.is_empty() {
            self.pending.extend(envelopes.drain(..));
            return self.drain(ctx);
        }
        let mut batch = envelopes.drain(..);
        while let Some(env) = batch.next() {
            if !self.offer(env, ctx) {
                self.pending.extend(batch);
                return;
            }
        }
    }

    /// Offer `env` to its topic's subscribers (exact ones, then matching patterns'), from
    /// subscriber `cursor` on. False when a full mailbox paused delivery: `env` is then back
    /// at the front of `pending` if subscribers are left to offer it to, and `drain` resumes
    /// once the mailbox took its event. While the bus waits it handles no other message, so
    /// the subscriber sequence `cursor` indexes does not change in between.
    fn offer(&mut self, env: Envelope, ctx: &mut Context<Self>) -> bool {
        if self.cursor == 0 {
            self.served.clear();
        }
        // Looked up once per envelope, and again only after a subscriber was removed.
        'lookup: loop {
            self.matched.clear();
            let matched = &mut self.matched;
            self.patterns
                .for_each_match(&env.topic, |id| matched.push(*id));
            let exact = self.topics.get(&*env.topic);
            let n_exact = exact.map_or(0, Vec::len);
            let total = n_exact + self.matched.len();
            // Groups can only take an envelope twice when a pattern matched it.
            let grouped = !self.matched.is_empty();
            while self.cursor < total {
                let i = self.cursor;
                self.cursor += 1;
                let last = self.cursor == total;
                let (id, sub) = match exact {
                    Some(subs) if i < n_exact => (subs[i].0, &subs[i].1),
                    _ => match self.pattern_subs.get(&self.matched[i - n_exact]) {
                        Some((_, sub)) => (self.matched[i - n_exact], sub),
                        None => continue,
                    },
                };
                if grouped {
                    if let Some(g) = sub.group() {
                        if self.served.contains(&g) {
                            continue;
                        }
                        self.served.push(g);
                    }
                }
                let from = Origin {
                    name: &env.origin,
                    incarnation: env.origin_incarnation,
                };
                let meta = EventMeta {
                    id: env.id,
                    seq: env.seq,
                    targeted: env.target.is_some(),
                };
                match sub.deliver(&env.topic, from, &env.payload, meta) {
                    Delivered::Sent => {
                        self.shared
                            .metrics
                            .events_delivered
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Delivered::Closed => {
                        self.remove(&env.topic, id);
                        self.cursor -= 1;
                        continue 'lookup;
                    }
                    Delivered::Undecodable(err) => {
                        self.undecodable += 1;
                        self.shared
                            .metrics
                            .events_undecodable
                            .fetch_add(1, Ordering::Relaxed);
                        if self.undecodable.is_power_of_two() {
                            tracing::warn!(node = %self.shared.name(), topic = %env.topic, origin = %env.origin,
                                count = self.undecodable, "event payload does not decode for a subscriber: {err}");
                        }
                    }
                    Delivered::Full(wait) => {
                        let topic = env.topic.clone();
                        if last {
                            // Every subscriber has it (or is waited for): done with it.
                            self.cursor = 0;
                        } else {
                            self.pending.push_front(env);
                        }
                        ctx.wait(wait.into_actor(self).map(move |alive, act, ctx| {
                            if !alive {
                                act.remove(&topic, id);
                                act.cursor = act.cursor.saturating_sub(1);
                            }
                            act.drain(ctx);
                        }));
                        return false;
                    }
                }
            }
            break;
        }
        self.cursor = 0;
        true
    }

    /// Remove subscription `id`: a pattern subscription, or one of `topic`'s.
    fn remove(&mut self, topic: &str, id: SubscriptionId) {
        if let Some((pattern, _)) = self.pattern_subs.remove(&id) {
            self.patterns.remove(&pattern, |sid| *sid == id);
            self.shared.local_topics.remove(&pattern);
            return;
        }
        if let Some(subs) = self.topics.get_mut(topic) {
            let before = subs.len();
            subs.retain(|(sid, _)| *sid != id);
            if subs.len() < before {
                self.shared.local_topics.remove(topic);
            }
            if subs.is_empty() {
                self.topics.remove(topic);
            }
        }
    }
}

impl Actor for EventBus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(BUS_QUEUE_BATCHES);
    }
}

impl actix::Supervised for EventBus {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The envelope being delivered when the handler panicked is dropped with the rest of
        // the pending batch; subscriptions survive.
        self.pending.clear();
        self.cursor = 0;
    }
}

impl Handler<Deliver> for EventBus {
    type Result = ();

    fn handle(&mut self, Deliver(mut envelopes, pool): Deliver, ctx: &mut Context<Self>) {
        guard("event_bus", ctx, |ctx| {
            self.deliver_batch(&mut envelopes, ctx)
        });
        envelopes.clear();
        if let Some(pool) = pool {
            pool.give(envelopes);
        }
    }
}

impl Handler<Subscribe> for EventBus {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        // The caller counted the topic in `local_topics` already, synchronously, so a publish
        // right after `subscribe` returns is delivered here.
        if is_pattern(&msg.topic) {
            self.patterns.insert(&msg.topic, msg.id);
            self.pattern_subs
                .insert(msg.id, (msg.topic, msg.subscriber));
        } else {
            self.topics
                .entry(msg.topic)
                .or_default()
                .push((msg.id, msg.subscriber));
        }
    }
}

impl Handler<Unsubscribe> for EventBus {
    type Result = ();

    fn handle(&mut self, Unsubscribe(ids): Unsubscribe, ctx: &mut Context<Self>) {
        guard("event_bus", ctx, |_| self.unsubscribe(ids));
    }
}

impl EventBus {
    /// Remove subscriptions, in one pass over the topics however many there are (an
    /// application that detaches sends all of its subscriptions at once).
    fn unsubscribe(&mut self, ids: Vec<SubscriptionId>) {
        let mut exact = Vec::with_capacity(ids.len());
        for id in ids {
            if self.pattern_subs.contains_key(&id) {
                self.remove("", id);
            } else {
                exact.push(id);
            }
        }
        if exact.is_empty() {
            return;
        }
        exact.sort_unstable();
        let local = &self.shared.local_topics;
        self.topics.retain(|topic, subs| {
            let before = subs.len();
            subs.retain(|(sid, _)| exact.binary_search(sid).is_err());
            for _ in subs.len()..before {
                local.remove(topic);
            }
            !subs.is_empty()
        });
    }
}
