//! The message schema: every frame body that can cross a link.
//!
//! Messages are externally tagged CBOR maps, `{"event": {...}}`, with snake_case names, so a
//! client in any language can build them from docs/PROTOCOL.md. Byte strings (ids, nonces,
//! proofs, payloads) are CBOR byte strings, never arrays of integers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{de, Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// One frame as decoded: the sender's sequence number and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame(pub u64, pub Message);

impl Frame {
    /// The sender's per-link sequence number.
    pub fn seq(&self) -> u64 {
        self.0
    }
}

/// Everything a peer may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// Handshake step 1, from the side that dialled.
    Hello(Hello),
    /// Handshake step 2, from the side that accepted: its identity and its proof.
    HelloAck(HelloAck),
    /// Handshake step 3, from the dialler: its proof.
    Auth(Auth),
    /// Handshake step 4: the link is authenticated.
    Welcome(Welcome),
    /// The sender refuses something and will close the link.
    Error(ErrorFrame),
    /// Liveness probe; answered by `pong` with the same `n`.
    Ping(Ping),
    /// Answer to `ping`.
    Pong(Ping),
    /// Version 2 only: a node's whole replicated state, flooded every interval. Version 3
    /// nodes neither send nor read it (it is decoded, then ignored).
    /// Boxed: by far the largest variant, and rare next to events, it would make every
    /// message (and every move of one on the read path) as large as itself.
    Status(Box<Status>),
    /// A heartbeat tick from a master (flooded); nothing answers it.
    Heartbeat(Heartbeat),
    /// Version 3: what the sender holds of each node's replicated state (incarnation and
    /// highest version); the receiver answers with a `delta` of what it lacks.
    Digest(Digest),
    /// Version 3: changed entries of nodes' replicated states (pushed on change, relayed
    /// only when new to the relay, and the answer to a `digest`).
    Delta(Delta),
    /// An application event, broadcast or targeted.
    Event(Envelope),
    /// Orderly close.
    Bye(Bye),
    /// A method call travelling between nodes to the node that serves it.
    PeerCall(PeerCall),
    /// Resumable peer links: every stream frame up to `seq` was received (cumulative).
    Ack(Ack),
    /// The outcome of a `peer_call`, travelling back to the caller's node.
    PeerReply(PeerReply),

    // The service protocol (an application and its node); see docs/PROTOCOL.md §12.
    /// Application → node: deliver events of `topic` to me.
    Subscribe(Topic),
    /// Application → node: stop delivering `topic`.
    Unsubscribe(Topic),
    /// Application → node: publish an event (to every node, or to `target`).
    Publish(Publish),
    /// Node → application: an event of a topic it subscribed to.
    Deliver(Deliver),
    /// Application → node: route calls of `method` to me.
    Implement(Method),
    /// Application → node: stop routing `method` to me.
    Unimplement(Method),
    /// Application → node: call a method; answered by `reply` with the same `id`.
    Call(Call),
    /// Node → application: the outcome of its `call`.
    Reply(Reply),
    /// Node → application: a call of a method it implements; answer with `respond`.
    Request(Request),
    /// Application → node: the outcome of a `request`.
    Respond(Reply),
    /// Node → application: an operation was refused; the link stays open.
    Refused(Refused),
    /// Application → node: the member list; answered by `cluster_view` with the same `id`.
    Cluster(ClusterQuery),
    /// Node → application: every declared node, up or down, as the node sees it.
    ClusterView(ClusterView),
    /// Application → node, right after `welcome`: how its link behaves (its queue's policy).
    Options(Options),
    /// Application → node: its HTTP server listens at `address`; the node advertises it as
    /// an HTTP backend in its status until the application detaches.
    HttpBackend(HttpBackend),

    /// A message of a kind this build does not know (a later version's), with that kind's
    /// name. Never encoded; the codec yields it only where its seq must be counted (a stream
    /// frame of a resumable link) and skips it everywhere else.
    #[serde(skip)]
    Unknown(String),
}

impl Message {
    /// The message's name on the wire, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloAck(_) => "hello_ack",
            Message::Auth(_) => "auth",
            Message::Welcome(_) => "welcome",
            Message::Error(_) => "error",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Status(_) => "status",
            Message::Heartbeat(_) => "heartbeat",
            Message::Digest(_) => "digest",
            Message::Delta(_) => "delta",
            Message::Event(_) => "event",
            Message::Bye(_) => "bye",
            Message::PeerCall(_) => "peer_call",
            Message::PeerReply(_) => "peer_reply",
            Message::Subscribe(_) => "subscribe",
            Message::Unsubscribe(_) => "unsubscribe",
            Message::Publish(_) => "publish",
            Message::Deliver(_) => "deliver",
            Message::Implement(_) => "implement",
            Message::Unimplement(_) => "unimplement",
            Message::Call(_) => "call",
            Message::Reply(_) => "reply",
            Message::Request(_) => "request",
            Message::Respond(_) => "respond",
            Message::Refused(_) => "refused",
            Message::Cluster(_) => "cluster",
            Message::ClusterView(_) => "cluster_view",
            Message::Ack(_) => "ack",
            Message::Unknown(_) => "unknown",
            Message::Options(_) => "options",
            Message::HttpBackend(_) => "http_backend",
        }
    }

    /// Whether this message is a stream frame on a resumable peer link (§7.6): numbered,
    /// acknowledged and replayed after a reconnection.
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            Message::Event(_) | Message::PeerCall(_) | Message::PeerReply(_)
        )
    }
}

/// Every message kind this build knows, as written on the wire: anything else is a later
/// version's, and is ignored.
pub const KNOWN_KINDS: &[&str] = &[
    "hello",
    "hello_ack",
    "auth",
    "welcome",
    "error",
    "ping",
    "pong",
    "status",
    "heartbeat",
    "digest",
    "delta",
    "event",
    "bye",
    "peer_call",
    "peer_reply",
    "ack",
    "subscribe",
    "unsubscribe",
    "publish",
    "deliver",
    "implement",
    "unimplement",
    "call",
    "reply",
    "request",
    "respond",
    "refused",
    "cluster",
    "cluster_view",
    "options",
    "http_backend",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The highest protocol version the dialler speaks.
    pub version: u32,
    pub cluster: String,
    pub node: String,
    pub incarnation: Uuid,
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 32],
    /// Version 2, peer links: the dialler asks for a resumable link. `Some` names the session
    /// it holds with the acceptor (`id` 0 and `received` 0: none yet); `None` (absent): a
    /// plain link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version both sides speak from now on: the lower of the two highest.
    pub version: u32,
    pub cluster: String,
    pub node: String,
    pub incarnation: Uuid,
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub proof: [u8; 32],
    /// Version 2: the session the link resumes or starts (only if the hello asked for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
}

/// A resumable link's session, as each side states it in its handshake message: the session
/// `id`, and the last stream seq its sender received in that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: u64,
    pub received: u64,
}

/// Cumulative acknowledgement on a resumable link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    #[serde(with = "serde_bytes")]
    pub proof: [u8; 32],
}

/// The acceptor's limits, stated once the link is authenticated (version 2). Every field is
/// optional: a version 1 `welcome` is the empty map, and a peer link states no service limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Welcome {
    /// The largest frame body either side may send from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<u64>,
    /// Bytes an event's envelope adds to its payload, topic and target (origin name included):
    /// a publish with `payload + topic + target + envelope_overhead_bytes <= max_frame_bytes`
    /// is never `too_large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_overhead_bytes: Option<u64>,
    /// Service links: topics and patterns one application may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u64>,
    /// Service links: methods one application may implement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_methods: Option<u64>,
    /// Service links: the application's calls in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    /// Service links: requests outstanding at the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    /// Peer links: the cluster's settings, so that a node started with `--join` (which has no
    /// topology file) runs with the same timing and bounds as the node it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSettings>,
}

/// The settings a joining node adopts from the node it joined (`welcome.cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub heartbeat_interval_ms: u64,
    pub failure_threshold: u32,
    pub handshake_timeout_ms: u64,
    /// How long a pool member that went down stays listed before it is forgotten.
    pub forget_after_ms: u64,
    /// The most members (declared and pool) a node tracks.
    pub max_members: u64,
    /// Hops an event may take.
    pub ttl: u8,
    /// How often stats are looked at for replication; absent from a hub that predates it
    /// (the default, 5000 ms, then applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable, machine-readable: `version`, `cluster`, `auth_failed`, `unknown_node`,
    /// `malformed_frame`, `frame_too_large`, `unexpected_message`, `out_of_sequence`, ...
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bye {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub master: String,
    /// The master's incarnation: a restarted master numbers its ticks from 1 again.
    pub incarnation: Uuid,
    pub n: u64,
}

/// A node's heartbeat answer, flooded to every node: who it is, which links it has up, and its
/// replicated state. Newer statuses win by `(boot_ms, version)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub incarnation: Uuid,
    /// Wall-clock start time (ms since the Unix epoch): orders incarnations.
    pub boot_ms: u64,
    /// Increases with every status this incarnation sends.
    pub version: u64,
    pub role: String,
    /// Names of the nodes this node has a live, authenticated link to.
    pub links: Vec<String>,
    pub stats: NodeStats,
    /// Methods this node serves (actors and attached applications), sorted, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP backends this node advertises (`HOST:PORT`, its configured `http` and those its
    /// applications registered), sorted, each once: where a proxy forwards requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
}

/// What a node holds of each node's replicated state: a newcomer's is empty.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Digest {
    pub nodes: Vec<DigestEntry>,
    /// The nodes the sender has a live link to as it sends this: each pushes its own state
    /// over that link, and the sender drops their states relayed by anyone else, so the
    /// answer leaves them out. Omitted when empty (and absent from older senders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<String>,
}

/// One node in a [`Digest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub node: String,
    pub incarnation: Uuid,
    /// Every change of that incarnation up to this version is held.
    pub max_version: u64,
}

/// Changes of several nodes' replicated states (one frame per link per coalescing window).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Delta {
    pub nodes: Vec<NodeDelta>,
}

/// Every change of one node's state with a version in `(from, max_version]`: its entries
/// sorted by version. `from` 0 is the whole state (what a newcomer or a new incarnation
/// gets); a receiver that holds less than `from` has a gap, and one that holds
/// `max_version` or more has it all already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDelta {
    pub node: String,
    pub incarnation: Uuid,
    /// Wall-clock start time (ms since the Unix epoch): orders incarnations.
    pub boot_ms: u64,
    pub from: u64,
    pub max_version: u64,
    /// The highest version of a tombstone the sender has forgotten: a receiver that holds
    /// less than this (and has not been reset past it) must take a whole state (`from` 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gc_version: u64,
    pub entries: Vec<Entry>,
}

/// One versioned key of a node's state: `role`, `link:<peer>`, `method:<name>`,
/// `http:<host:port>`, `stats`. `value` absent: a tombstone (the key was removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// An entry's value: `"set"` for keys whose presence is the fact (a link, a method, a
/// backend), `{"text": …}` (the role), `{"stats": …}`.
///
/// The stats are boxed (the encoding is the same): a node holds an entry per link, method
/// and backend of every member, nearly all of them `Set`, and each took the size of the
/// largest variant, about 120 bytes, where a box takes 8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Set,
    Text(String),
    Stats(Box<NodeStats>),
}

/// A node's stats: the value of its `stats` entry (NodeCloud's `heartbeat-ack` payload).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStats {
    pub pid: u32,
    pub version: String,
    pub uptime_s: u64,
    pub rss_bytes: u64,
    pub cpus: u32,
    pub load_avg: [f64; 3],
    pub free_mem_bytes: u64,
    pub total_mem_bytes: u64,
    /// Fields the application adds (`NodeHandle::set_stat`).
    #[serde(default)]
    pub extra: BTreeMap<String, StatValue>,
}

/// A custom stat: a scalar only, so decoding peer data never recurses.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StatValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for StatValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StatValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a bool, integer, float or text")
            }
            fn visit_bool<E>(self, v: bool) -> Result<StatValue, E> {
                Ok(StatValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StatValue, E> {
                Ok(StatValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatValue, E> {
                i64::try_from(v)
                    .map(StatValue::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<StatValue, E> {
                Ok(StatValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<StatValue, E> {
                Ok(StatValue::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An application event in flight. Relays forward it without decoding `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Per-origin counter; `(origin_incarnation, id)` identifies the event cluster-wide.
    pub id: u64,
    /// The event's number in its stream: the events its origin published on `topic` to the
    /// same destination (every node, or `target`), from 1. A gap is an event of that stream
    /// that did not arrive. 0 (or absent) from a node that does not number its events.
    #[serde(default)]
    pub seq: u64,
    /// Shared: every event a link delivers on one topic, from one origin, holds the same text.
    pub topic: Arc<str>,
    pub origin: Arc<str>,
    pub origin_incarnation: Uuid,
    /// `None`: every node. `Some(name)`: that node only.
    pub target: Option<String>,
    /// Hops left; a relay decrements it and drops the event at 0.
    pub ttl: u8,
    /// The event itself, CBOR-encoded by the publisher.
    pub payload: Bytes,
}

/// A call in flight between nodes. Relays forward it along the shortest live path to `target`
/// without decoding `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCall {
    /// Chosen by the calling node; unique among its calls in flight.
    pub id: u64,
    pub method: String,
    pub origin: String,
    pub origin_incarnation: Uuid,
    /// The node that serves the call.
    pub target: String,
    /// Hops left, as for events.
    pub ttl: u8,
    /// How long the caller still waits; the serving node gives up after this.
    pub timeout_ms: u64,
    /// The request, CBOR-encoded by the caller.
    pub payload: Bytes,
}

/// The answer to a [`PeerCall`], routed back to the calling node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReply {
    /// The `id` of the call answered.
    pub id: u64,
    /// The calling node, and its incarnation (a reply to an earlier run is dropped).
    pub target: String,
    pub target_incarnation: Uuid,
    pub ttl: u8,
    pub outcome: Outcome,
}

/// How a call ended: `{"ok": bytes}` (the CBOR-encoded response) or `{"error": {code, message}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Bytes),
    Error(Failure),
}

/// Why a call failed. Codes: `no_implementer`, `timeout`, `target_down`, `remote_error`,
/// `bad_payload`, `implementer_gone`, `busy`, `unknown_node`, `stopped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Failure {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Method {
    pub method: String,
}

/// `http_backend`: an application's HTTP server, as `HOST:PORT` (at most 255 bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpBackend {
    pub address: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An application's link options. Unknown fields are ignored, so later versions can add some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// What the node does when this application's queue is full: `"close"` (the default:
    /// `error slow_consumer`, then the link closes) or `"drop_oldest"` (the oldest queued
    /// deliveries are dropped and counted in `deliver.dropped`).
    #[serde(default)]
    pub overflow: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    /// Shared with the link's memory of its last topic (see [`Envelope::topic`]).
    pub topic: Arc<str>,
    /// `None`: every node; `Some(name)`: that node only.
    #[serde(default)]
    pub target: Option<String>,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deliver {
    pub topic: String,
    /// The node the event was published on.
    pub from: String,
    pub payload: Bytes,
    /// The event's id (unique per incarnation of `from`) and its number in its stream (see
    /// [`Envelope::seq`]); 0 from nodes that predate them.
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub seq: u64,
    /// Whether the event was published to this node only (`target`) rather than to every node:
    /// the two are numbered apart. Absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub targeted: bool,
    /// Deliveries to this application dropped so far to make room (`drop_oldest` only).
    /// Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Chosen by the application; echoed in the `reply`.
    pub id: u64,
    pub method: String,
    /// `None`: any node that implements `method` (the least loaded); `Some(name)`: that node.
    #[serde(default)]
    pub target: Option<String>,
    /// `None`: the node's default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    pub payload: Bytes,
}

/// `reply` (node → application) and `respond` (application → node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the node; echo it in `respond`.
    pub id: u64,
    pub method: String,
    /// The node the call came from.
    pub from: String,
    pub payload: Bytes,
}

/// An application's request for the member list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterQuery {
    /// Chosen by the application; the answer carries it back.
    pub id: u64,
}

/// The cluster as one node sees it: every node of its configuration, in declared order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: u64,
    pub cluster: String,
    pub topology: String,
    /// The node that answered.
    pub node: String,
    pub members: Vec<MemberView>,
}

/// One node: its replicated state while it is up; name, role and `down` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub role: String,
    /// `up` or `down`.
    pub state: String,
    /// The running incarnation; null while down.
    #[serde(default)]
    pub incarnation: Option<Uuid>,
    /// Null while down.
    #[serde(default)]
    pub stats: Option<NodeStats>,
    /// Nodes it has a live link to.
    #[serde(default)]
    pub links: Vec<String>,
    /// Methods it serves, sorted.
    #[serde(default)]
    pub methods: Vec<String>,
    /// HTTP backends it advertises (`HOST:PORT`), sorted; absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// The message kind refused (`subscribe`, `publish`, ...).
    pub op: String,
    pub code: String,
    pub message: String,
}
