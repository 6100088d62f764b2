//! A node: one supervised actor tree, and the [`NodeHandle`] user code drives it with.
//!
//! ```text
//! NodeSupervisor            root; runs the node's shutdown, reports escalations
//! ├── Master                role master only: the heartbeat clock
//! ├── Membership            cluster view, failure detector, status flooding
//! ├── EventBus              local subscriptions, typed delivery
//! ├── Calls                 method table, calls in flight (request/response)
//! ├── Router                live links + routes, published as a snapshot
//! ├── PeerListener          accepts peer links ──┐
//! ├── Upstream (per dial)   dials, backs off    ├──> Session (one per live peer link)
//! └── Stats                 samples the process for replication
//! user actors               NodeHandle::supervise: restarted after a panic
//! ```
//! Every node runs in a task set of its own on an arbiter (thread): its own arbiter by default,
//! or one shared with other nodes of the process ([`Host`]); a whole cluster can share one
//! process.

mod admission;
mod backends;
mod bind;
mod calls;
mod counted;
mod dedup;
mod dial;
mod event_bus;
#[cfg(feature = "faults")]
mod faults;
mod identity;
mod listener;
mod master;
mod membership;
mod methods;
mod metrics;
mod publish;
mod replica;
mod router;
mod runtime;
mod service_listener;
mod service_session;
mod session;
mod shared;
mod stats;
mod streams;
mod supervision;
mod supervisor;
mod upstream;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

pub use calls::{ImplementationId, DEFAULT_CALL_TIMEOUT};
#[cfg(feature = "fuzzing")]
pub(crate) use dedup::{Dedup, MAX_JUMP, WINDOW};
pub use event_bus::{RawEvent, SubscriptionId};
#[cfg(feature = "faults")]
pub use faults::SystemActor;
#[cfg(feature = "fuzzing")]
pub(crate) use membership::{take_delta, Link, MAX_CLOCK_SKEW_MS};
pub use membership::{Member, MembershipView};
pub use metrics::{
    BackendCounters, BackendStats, MetricsSnapshot, CALL_LATENCY_BUCKETS_S, CALL_OUTCOMES,
    PROXY_LATENCY_BUCKETS_S, REFUSALS, REPLICATION,
};
#[cfg(feature = "fuzzing")]
pub(crate) use replica::{Applied, Replica};
pub use runtime::Host;
use runtime::NodeRuntime;
#[cfg(feature = "fuzzing")]
pub(crate) use service_session::{check_request, Verdict};
pub use supervision::{install_panic_hook, Supervised as SupervisedActor};

use crate::call::{CallError, CallTarget, Invocation, Request};
use crate::config::{Config, Role};
use crate::event::{Delivery, Event, PatternDelivery, Target};
use crate::sockets::Bound;
use crate::topic::{check_pattern, check_topic, TopicError};
use crate::topology;
use crate::wire::{self, StatValue};
use calls::{Calls, Implement, StartCall, TypedImplementer, Unimplement};
use event_bus::{
    ChannelSubscriber, EventBus, PatternSubscriber, Subscribe, TypedSubscriber, Unsubscribe,
};
use session::Wiring;
use shared::NodeShared;
use stats::{SetStat, Stats};
use supervisor::{Children, NodeSupervisor, Shutdown};

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {0:?} is not declared in the configuration")]
    UnknownNode(String),
    /// A file of `[cluster.tls]` (or the node's `tls_cert` / `tls_key`) is unusable.
    #[error("node {node}: {source}")]
    Tls {
        node: String,
        source: crate::tls::TlsError,
    },
    #[error("node {node}: cannot listen on {addr}: {source}")]
    Bind {
        node: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("node {node}: cannot listen for applications on {endpoint}: {source}")]
    BindService {
        node: String,
        endpoint: String,
        source: std::io::Error,
    },
    #[error("node {0}: its arbiter stopped before the node started")]
    ArbiterGone(String),
    /// The node's HTTP API (`api = "ADDR"`) could not start.
    #[error("node {node}: {message}")]
    Api { node: String, message: String },
    /// The node's HTTP proxy (`proxy = "ADDR"`) could not start.
    #[error("node {node}: {message}")]
    Proxy { node: String, message: String },
    /// The node started but could not go on: a peer refused it as `duplicate_node` (another
    /// process holds its name). The message names the node and the peer.
    #[error("{0}")]
    Fatal(String),
    /// A node's supervisor gave up restarting a failing actor and stopped the node.
    #[error("node(s) {0} stopped degraded: an actor kept failing past its restart budget")]
    Degraded(String),
}

/// Why an event was not published. Nothing was sent anywhere when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode the event: {0}")]
    Encode(#[from] wire::WireError),
    #[error("event of {len} bytes exceeds the maximum frame of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the link to {0} is full; retry, or use the awaiting variant")]
    Full(String),
    #[error("the event bus is full; retry, or use the awaiting variant")]
    BusFull,
    /// The target is declared but not up, or no live path leads to it now.
    #[error("node {0} is down or not reachable")]
    TargetDown(String),
    /// The target is not a node of the configuration.
    #[error("no node is named {0:?} in the configuration")]
    UnknownNode(String),
    #[error("no node with incarnation {0} is up")]
    UnknownIncarnation(uuid::Uuid),
    #[error("the node is shut down")]
    Stopped,
    /// The topic is not one events may be published on: a pattern (`sensor.*`), an empty
    /// token, too long (see [`crate::topic`]).
    #[error("cannot publish on {topic:?}: topic {reason}")]
    BadTopic { topic: String, reason: TopicError },
}

/// One link's counters, for tests and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStats {
    pub peer: String,
    pub events_out: u64,
    pub events_in: u64,
    /// Frames waiting in the link's write queue now, and their bytes.
    pub queued_frames: u64,
    pub queued_bytes: u64,
    /// Frames (of every kind) and their bytes sent on the link's current connection.
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Frames (of every kind) and their bytes received on the link's current connection.
    pub frames_in: u64,
    pub bytes_in: u64,
}

/// Start-up and control of nodes.
pub struct Node;

impl Node {
    /// Start node `name` of `config` on a new arbiter. Returns once it listens; peers link up
    /// in the background (watch [`NodeHandle::membership`]).
    ///
    /// # Errors
    /// [`StartError`] when the name is unknown or the listen address cannot be bound.
    pub async fn start(config: Arc<Config>, name: &str) -> Result<NodeHandle, StartError> {
        Node::start_bound(config, name, Bound::default()).await
    }

    /// [`Node::start`] on sockets already bound (by a test, or inherited by socket
    /// activation): the node serves on exactly those; what `bound` leaves `None` is bound
    /// from the configuration.
    ///
    /// # Errors
    /// [`StartError`] when the name is unknown or a socket cannot be bound or used.
    pub async fn start_bound(
        config: Arc<Config>,
        name: &str,
        bound: Bound,
    ) -> Result<NodeHandle, StartError> {
        Node::start_hosted(config, name, bound, Host::OwnArbiter).await
    }

    /// [`Node::start_bound`] on `host`: an arbiter of the node's own, or one it shares with
    /// other nodes of this process ([`Host::Shared`]).
    ///
    /// # Errors
    /// [`StartError`] when the name is unknown, a socket cannot be bound or used, or the
    /// shared arbiter has stopped.
    pub async fn start_hosted(
        config: Arc<Config>,
        name: &str,
        bound: Bound,
        host: Host,
    ) -> Result<NodeHandle, StartError> {
        let me = config
            .node(name)
            .cloned()
            .ok_or_else(|| StartError::UnknownNode(name.to_owned()))?;
        let gone = || StartError::ArbiterGone(name.to_owned());
        let runtime = NodeRuntime::open(host).ok_or_else(gone)?;
        let (tx, rx) = oneshot::channel();
        let spawned = runtime.spawn({
            let runtime = runtime.clone();
            async move {
                let _ = tx.send(start_here(config, me, bound, runtime).await);
            }
        });
        if !spawned {
            return Err(gone());
        }
        let result = rx.await.map_err(|_| gone())?;
        if result.is_err() {
            runtime.halt();
        }
        result
    }
}

async fn start_here(
    config: Arc<Config>,
    me: crate::config::NodeConfig,
    bound: Bound,
    runtime: NodeRuntime,
) -> Result<NodeHandle, StartError> {
    let listener = bind::peer(&me, bound.peer).await?;
    let services = bind::services(&me, bound.service)?;
    // The addresses served on, which differ from the configuration's on port 0.
    let listen_addr = listener.local_addr().unwrap_or(me.listen);
    let service_addr = services
        .as_ref()
        .and_then(|s| s.tcp.as_ref())
        .and_then(|l| l.local_addr().ok());
    let plan = topology::plan(&config);
    let tls = crate::tls::NodeTls::load(&config, &me).map_err(|source| StartError::Tls {
        node: me.name.clone(),
        source,
    })?;
    let s = NodeShared::new(config, me, plan, tls);
    let stats = actix::Supervisor::start({
        let s = s.clone();
        move |_| Stats::new(s)
    });
    let bus = actix::Supervisor::start({
        let s = s.clone();
        move |_| EventBus::new(s)
    });
    let membership = actix::Supervisor::start({
        let s = s.clone();
        move |_| membership::Membership::new(s)
    });
    let router = actix::Supervisor::start({
        let (s, m) = (s.clone(), membership.clone());
        move |_| router::Router::new(s, m)
    });
    membership.do_send(membership::AttachRouter(router.clone()));
    let calls = actix::Supervisor::start({
        let (s, m) = (s.clone(), membership.clone());
        move |_| Calls::new(s, m)
    });
    let wiring = Wiring {
        router: router.clone(),
        membership: membership.clone(),
        bus: bus.clone(),
        calls: calls.clone(),
    };
    let master = (s.me.role == Role::Master).then(|| {
        let (sh, m) = (s.clone(), membership.clone());
        actix::Supervisor::start(move |_| master::Master::new(sh, m))
    });
    let listener = {
        let (sh, w) = (s.clone(), wiring.clone());
        actix::Supervisor::start(move |_| listener::PeerListener::new(sh, listener, w))
    };
    let upstreams = s
        .plan
        .dials_of(s.name())
        .into_iter()
        .map(|link| upstream::Upstream::new(s.clone(), link.clone(), wiring.clone()).start())
        .collect();
    let services = services.map(|sockets| {
        let w = service_session::ServiceWiring {
            shared: s.clone(),
            bus: bus.clone(),
            calls: calls.clone(),
        };
        actix::Supervisor::start(move |_| service_listener::ServiceListener::new(w, sockets))
    });
    let children = Children {
        stats: stats.clone(),
        bus: bus.clone(),
        calls: calls.clone(),
        membership,
        router,
        master,
        listener,
        services,
        upstreams,
    };
    let supervisor = NodeSupervisor::new(s.clone(), children, runtime.clone()).start();
    tracing::info!(node = %s.name(), listen = %listen_addr, advertise = %s.me.dial_address(), incarnation = %s.incarnation, "node started");
    Ok(NodeHandle {
        shared: s,
        supervisor,
        bus,
        calls,
        stats,
        runtime,
        listen_addr,
        service_addr,
    })
}

/// The handle user code holds: subscribe, publish, send, supervise, observe, shut down.
/// Cheap to clone; usable from any arbiter or thread.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<NodeShared>,
    supervisor: Addr<NodeSupervisor>,
    bus: Addr<EventBus>,
    calls: Addr<Calls>,
    stats: Addr<Stats>,
    runtime: NodeRuntime,
    listen_addr: std::net::SocketAddr,
    service_addr: Option<std::net::SocketAddr>,
}

impl NodeHandle {
    /// Make `actor` panic inside a handler (its Supervisor restarts it). For nodecloud's own
    /// tests: only with the `faults` feature.
    #[cfg(feature = "faults")]
    #[doc(hidden)]
    pub async fn inject_panic(&self, actor: SystemActor) {
        let _ = self.supervisor.send(supervisor::InjectPanic(actor)).await;
    }

    /// The address this node accepts peer links on (its bound socket, so the real port
    /// even when the configuration says 0).
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listen_addr
    }

    /// The TCP address applications attach to, if the node serves them over TCP.
    pub fn service_addr(&self) -> Option<std::net::SocketAddr> {
        self.service_addr
    }

    /// This node's configured name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// This run's incarnation uuid (new at every start).
    pub fn incarnation(&self) -> uuid::Uuid {
        self.shared.incarnation
    }

    /// The arbiter the node runs on: actors started there keep their messages on the node's
    /// thread. On a [`Host::Shared`] arbiter they outlive the node; start what should stop
    /// with it by [`NodeHandle::spawn`] or [`NodeHandle::supervise`].
    pub fn arbiter(&self) -> &ArbiterHandle {
        self.runtime.arbiter()
    }

    /// Run `fut` on the node's thread, in the node's own task set: it ends when it completes or
    /// when the node stops, whichever comes first. Actors started inside it (`Actor::start`)
    /// run there too, and stop with the node. False if the node has stopped.
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
        self.runtime.spawn(fut)
    }

    /// Deliver every `E` published anywhere in the cluster (this node included) to
    /// `recipient`, as `Delivery<E>`. Effective for every publish that starts after this call
    /// returns on this node, and for remote events that arrive after it.
    pub fn subscribe<E: Event>(&self, recipient: Recipient<Delivery<E>>) -> SubscriptionId {
        let id = SubscriptionId::next();
        self.shared.local_topics.add(E::TOPIC);
        // Not fed from the network: one message per subscribe call.
        self.bus.do_send(Subscribe {
            id,
            topic: E::TOPIC.to_owned(),
            subscriber: Box::new(TypedSubscriber { recipient }),
        });
        id
    }

    /// Deliver every event published anywhere in the cluster on a topic matching `pattern` to
    /// `recipient`, decoded as `E`, as [`PatternDelivery<E>`] (which carries the concrete
    /// topic). `*` matches one token, `>` one or more trailing tokens: `sensor.*` takes
    /// `sensor.a`, `sensor.>` takes `sensor.a.b` too, `>` takes everything (see
    /// [`crate::topic`]). A payload that does not decode as `E` is skipped (and logged).
    /// A pattern without wildcards matches its own topic only. Effective as
    /// [`subscribe`](Self::subscribe) is; an actor subscribed both ways gets both messages.
    ///
    /// # Errors
    /// [`TopicError`] when `pattern` is not a valid pattern (`sens*`, `a..b`, `>.a`).
    pub fn subscribe_pattern<E: Event>(
        &self,
        pattern: &str,
        recipient: Recipient<PatternDelivery<E>>,
    ) -> Result<SubscriptionId, TopicError> {
        check_pattern(pattern)?;
        let id = SubscriptionId::next();
        self.shared.local_topics.add(pattern);
        // Not fed from the network: one message per subscribe call.
        self.bus.do_send(Subscribe {
            id,
            topic: pattern.to_owned(),
            subscriber: Box::new(PatternSubscriber { recipient }),
        });
        Ok(id)
    }

    /// Copy every event on a topic matching `pattern` (exact or wildcard) into `tx`, undecoded
    /// ([`RawEvent`]). Never waits: when `tx` is full the subscription is dropped (and `tx`
    /// with it, so its receiver ends): a slow reader loses its feed rather than holding the
    /// bus or growing a queue. For observers such as the HTTP API's event stream.
    ///
    /// # Errors
    /// [`TopicError`] when `pattern` is not a valid pattern.
    pub fn subscribe_channel(
        &self,
        pattern: &str,
        tx: tokio::sync::mpsc::Sender<RawEvent>,
    ) -> Result<SubscriptionId, TopicError> {
        check_pattern(pattern)?;
        let id = SubscriptionId::next();
        self.shared.local_topics.add(pattern);
        // Not fed from the network: one message per subscribe call.
        self.bus.do_send(Subscribe {
            id,
            topic: pattern.to_owned(),
            subscriber: Box::new(ChannelSubscriber { tx }),
        });
        Ok(id)
    }

    /// Remove a subscription, exact or pattern. Effective for the events the bus handles
    /// after it.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        self.bus.do_send(Unsubscribe(vec![id]));
    }

    /// Serve calls of `R` with `recipient`, which handles [`Invocation<R>`]. Several
    /// implementations of a method on one node are served in turn. Call this in the actor's
    /// `started` so a restarted actor implements again (a stopped actor's implementation is
    /// dropped at its next call). Effective for every call that reaches this node after it
    /// returns; other nodes learn of the method with this node's next status.
    pub fn implement<R: Request>(&self, recipient: Recipient<Invocation<R>>) -> ImplementationId {
        let id = ImplementationId::next();
        // Not fed from the network: one message per implement call.
        self.calls.do_send(Implement {
            id,
            method: R::METHOD.to_owned(),
            implementer: Box::new(TypedImplementer { recipient }),
        });
        id
    }

    /// Stop serving with one implementation.
    pub fn unimplement(&self, id: ImplementationId) {
        self.calls.do_send(Unimplement(vec![id]));
    }

    /// Call `R::METHOD` on `target` (a node name, or [`CallTarget::Any`] for the least loaded
    /// implementer) and wait for the response, at most [`DEFAULT_CALL_TIMEOUT`].
    ///
    /// # Errors
    /// [`CallError`]: no implementer, timeout, target down or unknown, the implementer's own
    /// error, a payload that does not decode, too many calls in flight, node stopped.
    pub async fn call<R: Request>(
        &self,
        target: impl Into<CallTarget>,
        request: &R,
    ) -> Result<R::Response, CallError> {
        self.call_timeout(target, request, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// [`call`](Self::call) with its own timeout.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_timeout<R: Request>(
        &self,
        target: impl Into<CallTarget>,
        request: &R,
        timeout: std::time::Duration,
    ) -> Result<R::Response, CallError> {
        let payload = wire::encode_payload(request)
            .map_err(|e| CallError::BadPayload(format!("request does not encode: {e}")))?;
        let target = match target.into() {
            CallTarget::Any => None,
            CallTarget::Node(n) => Some(n),
        };
        match self.call_raw(R::METHOD, target, timeout, payload).await {
            wire::Outcome::Ok(bytes) => wire::decode_payload(&bytes).map_err(|e| {
                CallError::BadPayload(format!("response of {} does not decode: {e}", R::METHOD))
            }),
            wire::Outcome::Error(f) => Err(CallError::from_failure(f)),
        }
    }

    /// A call with an encoded request; the outcome as it travels.
    pub(crate) async fn call_raw(
        &self,
        method: &str,
        target: Option<String>,
        timeout: std::time::Duration,
        payload: bytes::Bytes,
    ) -> wire::Outcome {
        let call = StartCall {
            method: method.to_owned(),
            target,
            timeout,
            payload,
        };
        match self.calls.send(call).await {
            Ok(outcome) => outcome,
            Err(_) => wire::Outcome::Error(CallError::Stopped.to_failure()),
        }
    }

    /// Publish an already encoded CBOR `payload` on `topic`, to every node (`target` `None`)
    /// or one node by name, waiting for room when a link or the bus is full.
    ///
    /// # Errors
    /// [`PublishError`]: a bad topic, an unknown or unreachable target, too large, stopped.
    pub async fn publish_raw(
        &self,
        topic: &str,
        target: Option<String>,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        check_topic(topic).map_err(|reason| PublishError::BadTopic {
            topic: topic.to_owned(),
            reason,
        })?;
        let out = publish::prepare_raw(&self.shared, topic, target, payload)?;
        publish::send_wait(&self.bus, out).await
    }

    /// A call with an already encoded CBOR request, answered with the outcome as it travels
    /// (the encoded response, or the failure with its code). `target` `None` is the least
    /// loaded implementer.
    pub async fn call_encoded(
        &self,
        method: &str,
        target: Option<String>,
        timeout: std::time::Duration,
        payload: bytes::Bytes,
    ) -> wire::Outcome {
        self.call_raw(method, target, timeout, payload).await
    }

    /// Every configured node as this node sees it (the service protocol's `cluster` answer):
    /// up members with their replicated state, the others `down`.
    pub fn cluster_view(&self) -> wire::ClusterView {
        service_session::cluster_view(&self.shared, 0)
    }

    /// The configuration this node runs.
    pub fn config(&self) -> &Arc<Config> {
        &self.shared.config
    }

    /// Publish to every node of the cluster, this one included.
    ///
    /// # Errors
    /// [`PublishError`]; on `Full`/`BusFull` nothing was sent: retry, or use
    /// [`publish_wait`](Self::publish_wait).
    pub fn publish<E: Event>(&self, event: &E) -> Result<(), PublishError> {
        self.dispatch_now(event, None)
    }

    /// Publish, waiting for room when a link or the local bus is full (backpressure).
    ///
    /// # Errors
    /// [`PublishError`] other than `Full`/`BusFull`.
    pub async fn publish_wait<E: Event>(&self, event: &E) -> Result<(), PublishError> {
        self.dispatch_wait(event, None).await
    }

    /// Send to one node, by name or incarnation.
    ///
    /// # Errors
    /// [`PublishError`]: `UnknownNode` for a name the configuration lacks, `TargetDown` when no
    /// live path leads to the target.
    pub fn send_to<E: Event>(
        &self,
        target: impl Into<Target>,
        event: &E,
    ) -> Result<(), PublishError> {
        let target = self.resolve(target.into())?;
        self.dispatch_now(event, target)
    }

    /// [`send_to`](Self::send_to), waiting for room when the link is full.
    ///
    /// # Errors
    /// As `send_to`, without `Full`.
    pub async fn send_to_wait<E: Event>(
        &self,
        target: impl Into<Target>,
        event: &E,
    ) -> Result<(), PublishError> {
        let target = self.resolve(target.into())?;
        self.dispatch_wait(event, target).await
    }

    /// This node's view of the cluster, updated on every change.
    pub fn membership(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.shared.view.subscribe()
    }

    /// Add (or with `None` remove) a custom field replicated with this node's state (sent within a coalescing window).
    ///
    /// # Errors
    /// When more than 32 fields are set, or the key is empty or over 64 bytes.
    pub async fn set_stat(
        &self,
        key: &str,
        value: Option<StatValue>,
    ) -> Result<(), stats::StatsError> {
        self.stats
            .send(SetStat {
                key: key.to_owned(),
                value,
            })
            .await
            .unwrap_or(Ok(()))
    }

    /// Event counters of every live link.
    pub fn link_stats(&self) -> Vec<LinkStats> {
        let table = self.shared.routes.load();
        let mut v: Vec<LinkStats> = table
            .links()
            .map(|l| {
                let t = l.tx.traffic();
                LinkStats {
                    peer: l.peer.clone(),
                    events_out: l.counters.events_out.load(Ordering::Relaxed),
                    events_in: l.counters.events_in.load(Ordering::Relaxed),
                    queued_frames: t.queued_frames,
                    queued_bytes: t.queued_bytes,
                    frames_out: t.frames_out,
                    bytes_out: t.bytes_out,
                    frames_in: l.counters.received.frames.load(Ordering::Relaxed),
                    bytes_in: l.counters.received.bytes.load(Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    /// The node's counters now (what `/metrics` shows besides links and members).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The HTTP proxy's counters per backend still advertised (node, address, counters).
    pub fn proxy_counters(&self) -> Vec<(String, String, BackendCounters)> {
        let view = self.shared.view.borrow().clone();
        self.shared.proxy_counters.snapshot(|node, addr| {
            view.members
                .get(node)
                .is_some_and(|m| m.http.iter().any(|a| a == addr))
        })
    }

    /// Where the HTTP proxy of this node keeps its counters.
    pub(crate) fn proxy_counters_mut(&self) -> &metrics::ProxyCounters {
        &self.shared.proxy_counters
    }

    /// Whether an actor of this node exhausted its restart budget.
    pub fn is_degraded(&self) -> bool {
        self.shared.is_degraded()
    }

    /// Resolves when the node must stop (an escalation or a fatal error asked for it).
    pub async fn stop_requested(&self) {
        self.shared.stop_requested().await;
    }

    /// Why the node stopped on a fatal error (a peer refused it as `duplicate_node`), if it
    /// did.
    pub fn fatal(&self) -> Option<String> {
        self.shared.fatal_reason()
    }

    /// Start a user actor on this node's thread (in its task set) and restart it when a
    /// handler panics (at most 5 restarts in 10 s; past that the node is reported degraded and
    /// shut down). Subscribe in the actor's `started` so a restarted actor subscribes again.
    /// Returns once the first `started` has run, so its subscriptions are in place.
    pub async fn supervise<A, F>(&self, name: &str, factory: F) -> SupervisedActor<A>
    where
        A: Actor<Context = Context<A>>,
        F: Fn() -> A + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let (started_tx, started) = oneshot::channel();
        let (shared, name) = (self.shared.clone(), name.to_owned());
        self.runtime.spawn(async move {
            let _ = tx.send(supervision::supervise(shared, name, factory, started_tx));
        });
        let Ok(handle) = rx.await else {
            return SupervisedActor::stopped();
        };
        // Whatever `started` set up (subscriptions, methods) is in place before we return.
        let _ = started.await;
        handle
    }

    /// Close every link with a `bye` and stop the node. Bounded: returns within ~0.5 s.
    pub async fn shutdown(&self) {
        let _ = self.supervisor.send(Shutdown).await;
    }

    fn resolve(&self, target: Target) -> Result<Option<String>, PublishError> {
        match target {
            Target::All => Ok(None),
            Target::Node(name) => Ok(Some(name)),
            Target::Incarnation(id) if id == self.shared.incarnation => {
                Ok(Some(self.name().to_owned()))
            }
            Target::Incarnation(id) => {
                let view = self.shared.view.borrow();
                view.resolve(id)
                    .map(|n| Some(n.to_owned()))
                    .ok_or(PublishError::UnknownIncarnation(id))
            }
        }
    }

    fn dispatch_now<E: Event>(
        &self,
        event: &E,
        target: Option<String>,
    ) -> Result<(), PublishError> {
        let out = publish::prepare(&self.shared, event, target)?;
        publish::send_now(&self.bus, out)
    }

    async fn dispatch_wait<E: Event>(
        &self,
        event: &E,
        target: Option<String>,
    ) -> Result<(), PublishError> {
        let out = publish::prepare(&self.shared, event, target)?;
        publish::send_wait(&self.bus, out).await
    }
}
