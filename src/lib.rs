//! nodecloud: a cluster runtime in which every node is a supervised actix actor tree, and
//! nodes exchange typed events over authenticated, length-prefixed CBOR links.
//!
//! ```text
//! NodeSupervisor            root of one node (src/node/supervisor.rs)
//! ├── Master                role master: the heartbeat clock
//! ├── Membership            cluster view, failure detector, status flooding
//! ├── EventBus              local subscriptions, typed delivery
//! ├── Calls                 method table, calls in flight
//! ├── Router                live links + routes (a shared snapshot)
//! ├── PeerListener          accepts peer links ──┐
//! ├── Upstream (per dial)   dials with backoff  ├──> Session (one per live peer link)
//! ├── ServiceListener       accepts applications ──> ServiceSession (one per application)
//! └── Stats                 process samples for replication
//! user actors               NodeHandle::supervise
//! ```
//!
//! * [`config`] and [`topology`]: the TOML file, and who dials whom / how events are routed.
//! * [`node`]: [`Node::start`] and the [`NodeHandle`] user code drives a node with.
//! * [`cluster`]: every node of a file in one process, or one of them; signals; shutdown.
//! * [`sockets`]: listeners bound before a node starts: handed over, or inherited (socket
//!   activation).
//! * [`event`]: [`Event`], [`Delivery`], [`PatternDelivery`], [`Target`], [`NodeId`] — the
//!   typed surface of events.
//! * [`topic`]: topic and pattern grammar (`*`, `>` wildcards), and the matching trie.
//! * [`call`]: [`Request`], [`Invocation`], [`CallError`] — the typed surface of calls.
//! * [`service`]: the client applications attach to a node with.
//! * [`api`]: the HTTP API a node serves with `api = "ADDR"` (JSON, Server-Sent Events,
//!   Prometheus `/metrics`, OpenAPI), built on the [`NodeHandle`] only.
//! * [`proxy`]: the HTTP proxy a node serves with `proxy = "ADDR"`, forwarding each request to
//!   an HTTP backend advertised by an up node (hyper), built on the [`NodeHandle`] only.
//! * [`cli`]: the `nodecloud` command line (`sub`, `pub`, `call`, `check`, running nodes).
//! * [`wire`]: frames, codec and handshake, the only module that sees bytes
//!   (specified in docs/PROTOCOL.md).
//! * [`tls`]: `[cluster.tls]`: the certificate files checked, and the TLS acceptors and
//!   connectors that wrap a peer link or an application's connection.
//! * [`link`]: the link core under every Session and ServiceSession (transport, the write
//!   queue bounded in frames and bytes, the batching writer, liveness, close-with-reason), and
//!   the resumable stream of a peer link.
//! * [`testing`]: loopback configurations and membership waits for tests, and a fault-injecting
//!   TCP forwarder.
//! * `alloc` (the `mimalloc` feature): the allocator the `nodecloud` command and its benchmarks
//!   set; the library never sets one.

#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod api;
pub mod call;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod node;
pub mod proxy;
pub mod service;
pub mod sockets;
pub mod testing;
pub mod tls;
pub mod topic;
pub mod topology;
pub mod wire;

pub use call::{CallError, CallTarget, Invocation, Request};
pub use event::{Delivery, Event, NodeId, PatternDelivery, Target};
pub use node::{Node, NodeHandle};

/// The README's Rust examples, compiled as doctests so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
