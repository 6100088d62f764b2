//! EventBus: this node's subscriptions (topic → subscribers) and local delivery. Supervised by
//! NodeSupervisor.
//!
//! Sessions hand it batches of envelopes addressed to this node; the publisher's own node hands
//! it local publishes. It decodes each payload into the subscriber's type and sends an ordinary
//! `Delivery<E>` message, so a subscriber cannot tell a remote event from a local one.
//!
//! Bounds and policy: the bus mailbox holds `BUS_QUEUE_BATCHES` batches. A subscriber whose
//! mailbox is full is waited for (`ctx.wait`): the bus stops taking batches, sessions stop
//! reading their sockets, and TCP pushes back on the publishers. Nothing is dropped; a slow
//! subscriber slows its node's intake. A subscriber whose actor is gone is removed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use super::shared::{NodeShared, BUS_QUEUE_BATCHES};
use super::supervision::guard;
use crate::event::{Delivery, Event, NodeId};
use crate::wire::{decode_payload, Envelope, WireError};

static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);

/// Identifies one subscription, for [`Unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The payload does not decode into the subscriber's type; the sender is handed back.
    Undecodable(WireError, NodeId),
}

/// A subscriber, type-erased: it knows how to turn a payload into its own message.
pub(crate) trait Subscriber: Send {
    fn deliver(&self, from: NodeId, payload: &[u8]) -> Delivered;
}

/// A Rust actor subscribed to `E`.
pub(crate) struct TypedSubscriber<E: Event> {
    pub recipient: Recipient<Delivery<E>>,
}

impl<E: Event> Subscriber for TypedSubscriber<E> {
    fn deliver(&self, from: NodeId, payload: &[u8]) -> Delivered {
        let event: E = match decode_payload(payload) {
            Ok(e) => e,
            Err(e) => return Delivered::Undecodable(e, from),
        };
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

/// Envelopes for this node's subscribers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<Envelope>);

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe {
    pub id: SubscriptionId,
    pub topic: String,
    pub subscriber: Box<dyn Subscriber>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub SubscriptionId);

/// A topic's subscribers, in subscription order.
type Subscribers = Vec<(SubscriptionId, Box<dyn Subscriber>)>;

pub struct EventBus {
    shared: Arc<NodeShared>,
    topics: HashMap<String, Subscribers>,
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
            topics: HashMap::new(),
            pending: VecDeque::new(),
            cursor: 0,
            undecodable: 0,
        }
    }

    /// Offer pending envelopes to subscribers until done or a mailbox is full.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(mut env) = self.pending.pop_front() {
            // The origin's name moves into the last subscriber's delivery; the others get
            // clones (one allocation fewer per event in the common one-subscriber case).
            let mut from = NodeId {
                name: std::mem::take(&mut env.origin),
                incarnation: env.origin_incarnation,
            };
            // Looked up once per envelope, and again only after a subscriber was removed.
            'lookup: while let Some(subs) = self.topics.get(&env.topic) {
                while let Some((id, sub)) = subs.get(self.cursor) {
                    self.cursor += 1;
                    let last = self.cursor == subs.len();
                    let to = if last {
                        NodeId {
                            name: std::mem::take(&mut from.name),
                            incarnation: from.incarnation,
                        }
                    } else {
                        from.clone()
                    };
                    match sub.deliver(to, &env.payload) {
                        Delivered::Sent => {}
                        Delivered::Closed => {
                            let id = *id;
                            self.remove(&env.topic, id);
                            self.cursor -= 1;
                            continue 'lookup;
                        }
                        Delivered::Undecodable(err, to) => {
                            self.undecodable += 1;
                            if self.undecodable.is_power_of_two() {
                                tracing::warn!(node = %self.shared.name(), topic = %env.topic, origin = %to.name,
                                    count = self.undecodable, "event payload does not decode for a subscriber: {err}");
                            }
                        }
                        Delivered::Full(wait) => {
                            let (id, topic) = (*id, env.topic.clone());
                            if last {
                                // Every subscriber has it (or is waited for): done with it.
                                self.cursor = 0;
                            } else {
                                env.origin = std::mem::take(&mut from.name);
                                self.pending.push_front(env);
                            }
                            ctx.wait(wait.into_actor(self).map(move |alive, act, ctx| {
                                if !alive {
                                    act.remove(&topic, id);
                                    act.cursor = act.cursor.saturating_sub(1);
                                }
                                act.drain(ctx);
                            }));
                            return;
                        }
                    }
                }
                break;
            }
            self.cursor = 0;
        }
    }

    fn remove(&mut self, topic: &str, id: SubscriptionId) {
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

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.pending.extend(msg.0);
        guard("event_bus", ctx, |ctx| self.drain(ctx));
    }
}

impl Handler<Subscribe> for EventBus {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        // The caller counted the topic in `local_topics` already, synchronously, so a publish
        // right after `subscribe` returns is delivered here.
        self.topics
            .entry(msg.topic)
            .or_default()
            .push((msg.id, msg.subscriber));
    }
}

impl Handler<Unsubscribe> for EventBus {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let topics: Vec<String> = self.topics.keys().cloned().collect();
        for topic in topics {
            self.remove(&topic, msg.0);
        }
    }
}
