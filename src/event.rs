//! The typed surface of events: what user code sees instead of bytes.
//!
//! An [`Event`] is any serde type with a topic string. Topic strings are the contract between
//! languages: a Python application publishing the CBOR map `{"celsius": 21.5}` on
//! `sensor.temperature` reaches a Rust actor as `Delivery<Temperature>`.

use std::fmt;

use actix::Message;
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

/// A typed event with a cluster-wide topic.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, Clone, Debug)]
/// struct Temperature { celsius: f32 }
/// impl nodecloud::Event for Temperature { const TOPIC: &'static str = "sensor.temperature"; }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    /// The topic the event is published on; every subscriber of this type listens on it.
    /// `.`-separated non-empty tokens, no wildcards (see [`crate::topic`]): publishing on an
    /// invalid topic fails with [`PublishError::BadTopic`](crate::node::PublishError).
    const TOPIC: &'static str;
}

/// A node, as the sender of an event: its configured name and the incarnation that sent it
/// (a restarted node keeps its name and gets a new incarnation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub name: String,
    pub incarnation: Uuid,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// An event delivered to a subscriber: an ordinary actix message, the same whether the event
/// was published on this node or came over a link.
#[derive(Debug, Clone)]
pub struct Delivery<E> {
    pub from: NodeId,
    pub event: E,
}

impl<E: Event> Message for Delivery<E> {
    type Result = ();
}

/// An event delivered to a pattern subscriber
/// ([`NodeHandle::subscribe_pattern`](crate::NodeHandle::subscribe_pattern)): a
/// [`Delivery`] plus the concrete topic it was published on (`sensor.a` for `sensor.*`).
///
/// A type of its own rather than a `topic` field on every `Delivery`, so exact-topic
/// subscribers, whose topic is `E::TOPIC`, pay for no topic copy per event.
#[derive(Debug, Clone)]
pub struct PatternDelivery<E> {
    pub topic: String,
    pub from: NodeId,
    pub event: E,
}

impl<E: Event> Message for PatternDelivery<E> {
    type Result = ();
}

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every node of the cluster (the publisher's own subscribers included).
    All,
    /// One node, by configured name.
    Node(String),
    /// One node, by the incarnation uuid it is running now.
    Incarnation(Uuid),
}

impl From<&str> for Target {
    fn from(name: &str) -> Self {
        Target::Node(name.to_owned())
    }
}

impl From<String> for Target {
    fn from(name: String) -> Self {
        Target::Node(name)
    }
}

impl From<Uuid> for Target {
    fn from(id: Uuid) -> Self {
        Target::Incarnation(id)
    }
}

impl From<&NodeId> for Target {
    fn from(id: &NodeId) -> Self {
        Target::Node(id.name.clone())
    }
}
