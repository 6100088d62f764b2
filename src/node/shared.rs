//! State every actor of one node reads: identity, configuration, and the snapshots that the
//! hot path consults without a mailbox hop.
//!
//! Each snapshot has exactly one writer: the route table is written by the Router, the stats
//! sample by Stats, the membership view by Membership. Everyone else only loads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use uuid::Uuid;

use super::dedup::Dedup;
use super::membership::MembershipView;
use super::router::RouteTable;
use crate::config::{Config, NodeConfig};
use crate::topic::{is_pattern, TopicTrie};
use crate::topology::LinkPlan;
use crate::wire::{envelope_overhead_bytes, ClusterSettings, Identity, NodeStats, Welcome};

/// Frames queued per peer link before senders wait (publishers) or pause reading (relays).
pub const LINK_QUEUE_FRAMES: usize = 2048;
/// Bytes queued per link (peer or application), the frame being written included: whichever
/// bound is reached first applies (2,048 frames of 256 KiB would be half a gigabyte).
pub const LINK_QUEUE_BYTES: usize = 8 << 20;
/// Frames queued per application: more than a peer link's, so that for small events the byte
/// bound is the one that applies and a reading application rides out a pause of its own.
pub const APP_QUEUE_FRAMES: usize = 65_536;
/// Event batches queued for the event bus before sessions pause reading their socket.
pub const BUS_QUEUE_BATCHES: usize = 256;
/// Frames a session decodes before handing them on as one batch.
pub const READ_BATCH_FRAMES: usize = 256;

/// A value one actor replaces whole and any thread reads: a load is a clone of the current
/// `Arc`, taken under a read lock held for that clone alone, and a store swaps the `Arc` and
/// drops the old one outside the lock.
///
/// Not `arc_swap::ArcSwap`: its store visits every thread that ever loaded from any `ArcSwap`
/// in the process to settle their borrowed pointers. With one node per process that is a
/// handful of threads, but a process holding many nodes (a local cluster, the tests, the
/// scale benchmark) has one thread per node, and a thousand nodes each replacing its route
/// table at every membership change spent a fifth of the machine in those visits.
pub struct Snapshot<T>(RwLock<Arc<T>>);

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Self {
        Snapshot(RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value; readers holding the old one keep it until they drop it.
    pub fn store(&self, value: Arc<T>) {
        let old = std::mem::replace(
            &mut *self.0.write().unwrap_or_else(PoisonError::into_inner),
            value,
        );
        drop(old);
    }
}

pub struct NodeShared {
    pub config: Arc<Config>,
    pub me: NodeConfig,
    /// `me.name`, shared by the envelopes of this node's local deliveries.
    pub name_shared: Arc<str>,
    pub plan: LinkPlan,
    pub incarnation: Uuid,
    /// Wall-clock start, ms since the epoch: orders this incarnation after earlier ones.
    pub boot_ms: u64,
    pub started: std::time::Instant,
    pub identity: Identity,
    /// The node's TLS (`[cluster.tls]`), read at start; `None`: links are plaintext.
    pub tls: Option<Arc<crate::tls::NodeTls>>,
    /// Hops an envelope may take: no simple path in the configured graph is longer.
    pub ttl: u8,
    pub routes: Snapshot<RouteTable>,
    pub stats: Snapshot<NodeStats>,
    pub view: watch::Sender<Arc<MembershipView>>,
    pub dedup: Mutex<Dedup>,
    /// The methods this node serves and their byte budget (see `methods`).
    pub methods: super::methods::MethodLedger,
    /// The HTTP backends this node advertises (see `backends`).
    pub backends: super::backends::BackendLedger,
    /// Topics and patterns with at least one local subscriber, so a publish skips the bus
    /// otherwise.
    pub local_topics: LocalTopics,
    /// The per-peer streams of resumable links, which outlive connections (see `streams`).
    pub streams: super::streams::Streams,
    /// Counters for `/metrics` (see `metrics`).
    pub metrics: super::metrics::Metrics,
    /// The HTTP proxy's counters per backend (see `crate::proxy`).
    pub proxy_counters: super::metrics::ProxyCounters,
    next_event_id: AtomicU64,
    /// The last `seq` of each stream this node published: topic → destination ("" for every
    /// node, else the target's name) → number.
    event_seqs: Mutex<EventSeqs>,
    next_link_id: AtomicU64,
    degraded: AtomicBool,
    /// Set once when the node must shut down (an escalation); every waiter sees it.
    stop: watch::Sender<bool>,
    /// Why the node stopped on a fatal error (another process holds its name), if it did:
    /// the process exits 1 with this message.
    fatal: Mutex<Option<String>>,
}

impl NodeShared {
    pub fn new(
        config: Arc<Config>,
        me: NodeConfig,
        plan: LinkPlan,
        tls: Option<Arc<crate::tls::NodeTls>>,
    ) -> Arc<Self> {
        let incarnation = config.joined.unwrap_or_else(Uuid::new_v4);
        let boot_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        // No simple path of the configured graph is longer than its node count; pool members
        // hang off one node each, so a path gains at most one at each end.
        let ttl = match (config.joined.is_some(), config.pools.is_empty()) {
            // A joined node knows only how many members there may be (its master said).
            (true, _) => config.member_bound.clamp(2, 255) as u8,
            (false, true) => config.nodes.len().clamp(2, 255) as u8,
            (false, false) => (config.nodes.len() + 2).clamp(2, 255) as u8,
        };
        let identity = Identity {
            cluster: config.cluster.name.clone(),
            node: me.name.clone(),
            incarnation,
            secret: config.cluster.secret.as_bytes().to_vec(),
            welcome: Welcome {
                max_frame_bytes: Some(config.cluster.max_frame_bytes as u64),
                envelope_overhead_bytes: Some(envelope_overhead_bytes(&me.name) as u64),
                cluster: Some(ClusterSettings {
                    heartbeat_interval_ms: config.cluster.heartbeat_interval.as_millis() as u64,
                    failure_threshold: config.cluster.failure_threshold,
                    handshake_timeout_ms: config.cluster.handshake_timeout.as_millis() as u64,
                    forget_after_ms: config.cluster.forget_after.as_millis() as u64,
                    max_members: config.member_bound as u64,
                    ttl,
                    stats_interval_ms: Some(config.cluster.stats_interval.as_millis() as u64),
                }),
                ..Welcome::default()
            },
        };
        let (view, _) = watch::channel(Arc::new(MembershipView::alone(&me.name)));
        Arc::new(NodeShared {
            name_shared: Arc::from(me.name.as_str()),
            routes: Snapshot::new(RouteTable::empty(&me.name)),
            stats: Snapshot::new(NodeStats::default()),
            local_topics: LocalTopics::default(),
            streams: super::streams::Streams::new(crate::link::stream::StreamLimits::default()),
            dedup: Mutex::new(Dedup::new(config.member_bound)),
            metrics: super::metrics::Metrics::default(),
            proxy_counters: super::metrics::ProxyCounters::default(),
            methods: super::methods::MethodLedger::new(config.cluster.max_frame_bytes),
            backends: super::backends::BackendLedger::new(
                config.cluster.max_frame_bytes,
                me.http.as_ref(),
            ),
            view,
            config,
            me,
            plan,
            incarnation,
            boot_ms,
            started: std::time::Instant::now(),
            identity,
            tls,
            ttl,
            next_event_id: AtomicU64::new(0),
            event_seqs: Mutex::default(),
            next_link_id: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            stop: watch::channel(false).0,
            fatal: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.me.name
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.config.cluster.heartbeat_interval
    }

    /// How long silence may last before a link or a node is declared dead.
    pub fn failure_timeout(&self) -> Duration {
        self.config.cluster.heartbeat_interval * self.config.cluster.failure_threshold
    }

    pub fn next_event_id(&self) -> u64 {
        self.next_event_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The next number of the stream of events on `topic` to `target` (every node if
    /// `None`), from 1. Called once per event actually sent, so a stream has no gaps at its
    /// origin.
    pub fn next_event_seq(&self, topic: &str, target: Option<&str>) -> u64 {
        match self.event_seqs.lock() {
            Ok(mut seqs) => seqs.next(topic, target.unwrap_or("")),
            Err(_) => 0,
        }
    }

    /// [`next_event_seq`](Self::next_event_seq) of a broadcast whose topic is a `&'static str`
    /// (a typed event's): its stream is found by the text's address, without hashing it.
    pub fn next_broadcast_seq_static(&self, topic: &'static str) -> u64 {
        match self.event_seqs.lock() {
            Ok(mut seqs) => seqs.next_static(topic),
            Err(_) => 0,
        }
    }

    pub fn next_link_id(&self) -> u64 {
        self.next_link_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// An actor exhausted its restart budget: report it, and take the node down cleanly.
    pub fn escalate(&self, actor: &str) {
        self.degraded.store(true, Ordering::Relaxed);
        tracing::error!(node = %self.me.name, actor, "restart intensity exceeded; node degraded, shutting it down");
        self.stop.send_replace(true);
    }

    /// The node cannot go on (a peer refused it as `duplicate_node`): log it, keep the first
    /// reason for the process's exit, and take the node down.
    pub fn fatal(&self, reason: String) {
        tracing::error!(node = %self.me.name, "{reason}; stopping");
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(reason);
        }
        self.stop.send_replace(true);
    }

    /// Why the node stopped on a fatal error, if it did.
    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Milliseconds since this node started (a monotonic clock that fits an atomic).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once the node was asked to stop (at once if it already was).
    pub async fn stop_requested(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The stream counters of one node: topic → destination ("" for every node, else the target's
/// name) → the stream's last `seq`.
#[derive(Default)]
struct EventSeqs {
    last: Vec<u64>,
    /// Indices into `last`.
    streams: HashMap<String, HashMap<String, usize, Fnv>, Fnv>,
    /// Broadcast streams of static topics by the text's address and length (static text is
    /// never freed, so an address names one text for good): a short list, scanned.
    statics: Vec<(usize, usize, usize)>,
    /// The last stream numbered by text (an application publishes on a few topics, often one):
    /// topic, destination, index.
    recent: Option<(String, String, usize)>,
}

/// `a == b`, without calling `memcmp` on empty texts. An empty `String` points nowhere (its
/// pointer is dangling by design), and glibc's vectorised `memcmp` still loads from it under
/// an all-zero mask, which on an unmapped page needs a microcode assist to suppress the
/// fault. Publishing without a target compares an empty destination once per event, and the
/// profile put a quarter of the publishing node's thread on that load.
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Whether two shared texts are equal, by address first: the topics and origins of a link's
/// run of events share the decoder's `Arc`s, so equal texts are almost always one allocation.
/// (`Arc<str>`'s `==` compares bytes at once; its address shortcut is for sized types only.)
pub fn same_shared_text(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl EventSeqs {
    /// Static topics remembered by address; more are looked up by text.
    const STATICS: usize = 32;

    fn index(&mut self, topic: &str, dest: &str) -> usize {
        let next = self.last.len();
        let by_dest = match self.streams.get_mut(topic) {
            Some(m) => m,
            None => self.streams.entry(topic.to_owned()).or_default(),
        };
        let i = match by_dest.get(dest) {
            Some(i) => *i,
            None => *by_dest.entry(dest.to_owned()).or_insert(next),
        };
        if i == next {
            self.last.push(0);
        }
        i
    }

    fn bump(&mut self, i: usize) -> u64 {
        match self.last.get_mut(i) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => 0,
        }
    }

    fn next(&mut self, topic: &str, dest: &str) -> u64 {
        let i = match &mut self.recent {
            Some((t, d, i)) if same_text(t, topic) && same_text(d, dest) => *i,
            _ => {
                let i = self.index(topic, dest);
                self.recent = Some((topic.to_owned(), dest.to_owned(), i));
                i
            }
        };
        self.bump(i)
    }

    fn next_static(&mut self, topic: &'static str) -> u64 {
        let key = (topic.as_ptr() as usize, topic.len());
        let found = self
            .statics
            .iter()
            .find(|(ptr, len, _)| (*ptr, *len) == key)
            .map(|(_, _, i)| *i);
        let i = match found {
            Some(i) => i,
            None => {
                let i = self.index(topic, "");
                if self.statics.len() < Self::STATICS {
                    self.statics.push((key.0, key.1, i));
                }
                i
            }
        };
        self.bump(i)
    }
}

/// FNV-1a for tables looked up once per event with short keys that only this node chooses:
/// the stream counters (keyed by its publishers' topics and destinations), the bus's topic
/// table (only local `subscribe` calls insert; network input only looks up) and the live
/// links. SipHash would cost more than the rest of each lookup, and no outside input can
/// flood these tables with colliding keys.
#[derive(Default, Clone, Copy)]
pub struct Fnv;

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;
    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

pub struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A random duration in `[0, below)` (zero if `below` is zero or no randomness is available):
/// the phase of periodic timers, so the nodes of one process do not all fire at once.
pub fn random_below(below: Duration) -> Duration {
    let mut r = [0u8; 8];
    let random = getrandom::getrandom(&mut r)
        .map(|_| u64::from_le_bytes(r))
        .unwrap_or(0);
    Duration::from_nanos(random % (below.as_nanos().max(1) as u64))
}

/// What this node's subscribers listen to: exact topic → number of subscriptions, and the
/// patterns in a trie. Incremented by `subscribe` before the bus hears of it, decremented by
/// the bus when a subscription goes. Publishers and sessions ask it whether an event needs
/// the bus at all.
#[derive(Default)]
pub struct LocalTopics {
    interest: std::sync::RwLock<Interest>,
    /// Whether `interest` holds anything, kept under its write lock: a node without local
    /// subscribers (a publisher, a relay) answers every event with one plain load, not a
    /// lock and an unlock (two atomic writes per event).
    any: AtomicBool,
}

#[derive(Default)]
struct Interest {
    exact: std::collections::HashMap<String, usize>,
    patterns: TopicTrie<()>,
}

impl LocalTopics {
    /// Count one subscription to `topic`, a topic or a pattern.
    pub fn add(&self, topic: &str) {
        self.edit(|m| {
            if is_pattern(topic) {
                m.patterns.insert(topic, ());
            } else {
                *m.exact.entry(topic.to_owned()).or_default() += 1;
            }
        });
    }

    pub fn remove(&self, topic: &str) {
        self.edit(|m| {
            if is_pattern(topic) {
                m.patterns.remove(topic, |_| true);
            } else if let Some(n) = m.exact.get_mut(topic) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.exact.remove(topic);
                }
            }
        });
    }

    fn edit(&self, f: impl FnOnce(&mut Interest)) {
        if let Ok(mut m) = self.interest.write() {
            f(&mut m);
            let any = !m.exact.is_empty() || !m.patterns.is_empty();
            self.any.store(any, Ordering::Release);
        }
    }

    /// Whether a local subscription (exact, or a pattern) takes events of `topic`.
    pub fn contains(&self, topic: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .interest
                .read()
                .map(|m| m.exact.contains_key(topic) || m.patterns.matches(topic))
                .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::LocalTopics;

    #[test]
    fn local_topics_answer_for_exact_topics_and_patterns_until_removed() {
        let t = LocalTopics::default();
        t.add("sensor.a");
        t.add("sensor.*");
        t.add("sensor.*");
        assert!(t.contains("sensor.a"));
        assert!(t.contains("sensor.b"), "by the pattern");
        assert!(!t.contains("sensor.b.c"));
        t.remove("sensor.*");
        assert!(
            t.contains("sensor.b"),
            "one of two pattern subscriptions is left"
        );
        t.remove("sensor.*");
        assert!(!t.contains("sensor.b"));
        assert!(t.contains("sensor.a"));
        t.add("sensor.>");
        assert!(t.contains("sensor.b.c"));
        t.remove("sensor.>");
        t.remove("sensor.a");
        assert!(!t.contains("sensor.a"), "nothing is left");
        t.add("sensor.a");
        assert!(t.contains("sensor.a"), "subscribed again");
    }
}
