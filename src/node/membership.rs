//! Membership: this node's view of the cluster, and the replication of every node's state by
//! versioned deltas (see `replica`). Supervised by NodeSupervisor.
//!
//! Each node owns a set of versioned entries (`role`, `link:<peer>`, `method:<name>`,
//! `http:<host:port>`, `stats`; see [`Replica`]) and holds every other node's. When its own
//! entries change (a burst of changes is taken once, see `Membership::soon`), it pushes a
//! `delta` of the changed entries to each of its links. A receiver applies what is newer than
//! what it holds and relays *only that* to its links except the one it came on, the origin,
//! and the peers the origin reports links to (the origin pushed to them itself; in a mesh
//! nobody relays). Relays of one coalescing window are batched: one `delta` frame per link
//! carries the news of every origin. Each record of a window is held and encoded once, however
//! many links it goes to (see `outbox`). Nothing is sent while nothing changes.
//!
//! Anti-entropy: when a link comes up, and when a resumable link resumes, each side sends a
//! `digest` (every node it holds, with incarnation and highest version) and the other answers
//! with a `delta` of what the digest lacks, so a newcomer catches up from one peer. A delta
//! that did not fit a link's queue, or that left a gap at the receiver, marks the link for a
//! digest exchange at the next tick.
//!
//! Stats are their own entry, refreshed every `stats_interval_ms` (at least 40 ms per node
//! tracked: see `stats_period`) and only when they moved past a threshold (see
//! [`stats_moved`]); a custom stat's change (`set_stat`) is sent at the next tick. A delta
//! that changes only what a member holds (stats, methods, backends) does not walk the live
//! graph again: only the view is rebuilt, once per coalescing window.
//!
//! A node is **up** when it is reachable from here over edges both ends report live. There is
//! no freshness of a status any more: every link has its own failure detector (pings; silence
//! past the failure timeout closes it, a closed link is seen at once), and its two ends retract
//! the `link:` entries of a link that died. So a killed node is down as soon as its neighbours'
//! links drop, a hung one within the failure timeout (its links go silent and close), and no
//! state is re-sent to stay fresh. The master's heartbeat tick is still flooded (it costs one
//! frame per link per interval, and older tools watch it), but no longer answered.
//!
//! Claims are checked (see [`claim_is_consistent`]): a delta about node X is taken from X's
//! own link only if it names the incarnation that link's handshake authenticated; while this
//! node has a live link to X, relayed deltas about X are ignored (X speaks for itself on that
//! link); a relayed delta must be consistent with what is held for X (the same incarnation
//! keeps its boot time; a new incarnation booted later); and one whose boot time is more than
//! [`MAX_CLOCK_SKEW_MS`] ahead of this node's clock is ignored. The checks and the store are
//! pure ([`take_delta`], fuzzed in `fuzz/`, target `delta`).
//!
//! Pool members come and go. One that went down is listed as down (`MembershipView::down`)
//! for `forget_after`, then forgotten; one that said `bye` on a link of this node is forgotten
//! at once (nodes further away cannot tell a goodbye from a death and forget it after
//! `forget_after`); an undeclared node held but never seen up here is forgotten after
//! `forget_after` without being listed. Forgetting drops the node's state (entries, versions,
//! tombstones), so a member that joins again under the same name starts afresh; and for
//! twice `forget_after` this node takes no relayed delta about the incarnation it forgot and
//! does not ask for it in digests, so a peer that still holds it (it saw the member die
//! later, or has not forgotten it yet) does not bring it back. Only the member itself, on its
//! own link, lifts that (a joining node's second link, after the one it read the settings
//! on). A new incarnation of the name is taken at once.
//!
//! Bounds: only nodes `Config::admits` are tracked, at most `config.member_bound` of them,
//! each with an index into a table that grows as they are heard of and is compacted (the
//! forgotten ones' slots reclaimed) only when full; forgotten incarnations remembered are as
//! many at most; a node's entries are at most [`max_entries`]; tombstones are forgotten after
//! [`TOMBSTONE_TTL`]; a delta frame is split to fit `max_frame_bytes`; deltas that do not fit
//! a full link queue are dropped, and the link is caught up by a digest exchange instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use uuid::Uuid;

mod index_waits;
mod outbox;
mod relayed;
mod whole;

use self::index_waits::{IndexWaits, Rebuild};
use self::outbox::Outbox;
use self::relayed::Relayed;
use self::whole::{Whole, WholeStates};
use super::metrics::Repl;
use super::replica::{Applied, NodeState, Replica};
use super::router::{GraphChanged, Router};
use super::shared::{random_below, NodeShared};
use super::supervision::guard;
use crate::link::pause::PauseClock;
use crate::topology::IndexedGraph;
use crate::wire::{
    encode_message, Delta, Digest, DigestEntry, Heartbeat, Message, NodeDelta, NodeStats, Value,
};

/// How far ahead of this node's clock another node's boot time may be (clock skew between
/// machines); a delta claiming a later boot is ignored.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// How long a removed entry's tombstone is kept: every node that was reachable when it was
/// made has it long before; one that comes later gets a whole state instead.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// The most entries a node's state may hold (tombstones included): its role and stats, a link
/// to every admitted node, every method it may serve, every backend it may advertise, and
/// as many tombstones again.
pub fn max_entries(nodes: usize) -> usize {
    2 * (2 + nodes + super::calls::MAX_METHODS + super::backends::MAX_BACKENDS)
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub incarnation: Uuid,
    pub role: String,
    /// The node's live links, sorted. Shared: a view is rebuilt and published at every
    /// change, and a star's master lists a link to every worker, so copying this on every
    /// node at every change cost more than everything else a large cluster did while it
    /// converged.
    pub links: Arc<[String]>,
    pub stats: NodeStats,
    /// Methods the node serves, sorted (shared, as `links`).
    pub methods: Arc<[String]>,
    /// HTTP backends the node advertises (`HOST:PORT`), sorted.
    pub http: Vec<String>,
}

/// This node's view of the cluster: itself and every node it considers up.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipView {
    pub me: String,
    /// Persistent: a clone of the view shares its members with the view it came from. Each
    /// member is shared too, so that a change copies the map's nodes it touches without
    /// cloning every member they hold.
    pub members: imbl::OrdMap<String, Arc<Member>>,
    /// Pool members (undeclared nodes) that went down and are not forgotten yet.
    pub down: BTreeSet<String>,
}

impl MembershipView {
    pub fn alone(me: &str) -> Self {
        MembershipView {
            me: me.to_owned(),
            members: imbl::OrdMap::new(),
            down: BTreeSet::new(),
        }
    }

    /// Whether `other` shows the same cluster. A view is built from the last one, and a member
    /// it shares with it (the same `Arc`) is not compared field by field: a stats change of
    /// one member compared every other member's links too, on every node.
    fn same_as(&self, other: &MembershipView) -> bool {
        self.me == other.me
            && self.down == other.down
            && self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(other.members.iter())
                .all(|((a, ma), (b, mb))| a == b && (Arc::ptr_eq(ma, mb) || ma == mb))
    }

    /// Whether `name` is up (this node counts as up).
    pub fn is_up(&self, name: &str) -> bool {
        name == self.me || self.members.contains_key(name)
    }

    /// The other nodes that are up, by name.
    pub fn up(&self) -> impl Iterator<Item = &str> {
        self.members
            .keys()
            .map(String::as_str)
            .filter(move |n| *n != self.me)
    }

    /// The nodes that are up and serve `method` (this one included), in name order.
    pub fn implementers<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.values().map(|m| &**m).filter(move |m| {
            m.methods
                .binary_search_by(|x| x.as_str().cmp(method))
                .is_ok()
        })
    }

    /// The name of the node running `incarnation`, if it is up.
    pub fn resolve(&self, incarnation: Uuid) -> Option<&str> {
        self.members
            .values()
            .find(|m| m.incarnation == incarnation)
            .map(|m| m.name.as_str())
    }
}

/// Replace the shared view if it changed (watchers wake only on a change).
pub(crate) fn publish_view(shared: &NodeShared, view: MembershipView) {
    shared.view.send_if_modified(|current| {
        if current.same_as(&view) {
            false
        } else {
            *current = Arc::new(view);
            true
        }
    });
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachRouter(pub Addr<Router>);

/// The methods this node serves changed (sent by Calls, once per burst): read them from the
/// ledger at the next refresh of this node's entries.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MethodsChanged;

/// A resumable link to `0` came back on a fresh connection after a quiet spell (sent by the
/// Router): what was pushed to it meanwhile died with the old connection, so the two sides
/// exchange digests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkResumed(pub String);

/// A peer said `bye` on its link to this node (sent by its Session): a pool member that leaves
/// so is forgotten at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerLeft {
    pub peer: String,
    /// The link it said goodbye on: when a newer link to the peer is up meanwhile (the same
    /// process back, or a joining node's second link after it read the settings), the
    /// goodbye is old news.
    pub link_id: u64,
}

/// The peers in the Router's link table, and those of them whose (resumable) link is cut
/// and kept only for its stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinksChanged {
    pub links: BTreeSet<String>,
    pub cut: BTreeSet<String>,
}

/// A `delta` from peer `via`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeltaReceived {
    pub via: String,
    /// The incarnation the link's handshake authenticated for `via`.
    pub via_incarnation: Uuid,
    pub delta: Delta,
}

/// A `digest` from peer `via`: answered with what it lacks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DigestReceived {
    pub via: String,
    pub digest: Digest,
}

/// A master's tick; `via` is the link it came on (this node's own name for its own Master).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HeartbeatReceived {
    pub via: String,
    pub heartbeat: Heartbeat,
}

pub struct Membership {
    shared: Arc<NodeShared>,
    /// Every admitted node this node heard of, and each one's index: deltas arrive by the
    /// thousand in a large cluster, and links are checked and counted by index. Grows (see
    /// `index_of`) up to `member_bound`; compacted when full (see `compact`).
    names: Vec<String>,
    ids: HashMap<String, usize>,
    /// Indices into `names` in name order: the order of the live graph's nodes.
    by_name: Vec<usize>,
    router: Option<Addr<Router>>,
    /// Every node's replicated state, this node's own included.
    replica: Replica,
    /// The peers this node counts a live link to: the Router's table, less the cut links cut
    /// for longer than the failure timeout (see `update_links`).
    my_links: BTreeSet<String>,
    table_links: BTreeSet<String>,
    /// Cut resumable links, and since when: counted live for a failure timeout (the stream
    /// may resume), then not, which declares the peer down and ends its stream.
    cut_since: HashMap<String, Instant>,
    /// The ledger changed since this node's `method:` entries were written.
    methods_stale: bool,
    /// This node's own changes up to this version were pushed.
    pushed: u64,
    /// Records waiting for the end of the coalescing window, each held once for every link
    /// it goes to (see `outbox`).
    outbox: Outbox,
    /// Whole states encoded for the peers that lack them (see `whole`).
    whole: WholeStates,
    /// The whole states each link was sent already (see `relayed`).
    relayed: Relayed,
    flush_pending: bool,
    /// Links to catch up by a digest exchange (a delta did not fit, or left a gap).
    needs_digest: BTreeSet<String>,
    /// When each link last got a digest (see `send_digest`).
    digest_at: HashMap<String, Instant>,
    /// The stats last replicated, and when they were last looked at.
    stats_sent: Option<NodeStats>,
    stats_checked: Option<Instant>,
    up: BTreeSet<String>,
    /// What each held state reports, as rows of node indices (see `refresh_rows`): only the
    /// rows of states that changed are built again, not every state's at every recompute.
    /// This node's own row is set from its links at each recompute.
    reports: Reports,
    rows_dirty: Vec<usize>,
    /// Every row is to be built again (`compact` moved the indices).
    rows_all_dirty: bool,
    /// Link peers without an index yet, and the rows that name them: built again once the
    /// name gets one. At most 4 × `member_bound` (name, row) pairs; past that, every row is
    /// built again at the next new index instead.
    waiting: IndexWaits,
    /// `up` by index (see `names`), to find who came and went without a lookup per node.
    up_ix: Vec<bool>,
    /// Who came and went since the last view (filled by the recompute, taken by `view`).
    view_came: Vec<String>,
    view_gone: Vec<String>,
    /// The incarnation each node had when last seen up, so that a restart is logged with its
    /// new incarnation (bounded: admitted nodes only).
    last_incarnation: HashMap<String, Uuid>,
    ticks_seen: HashMap<String, (Uuid, u64)>,
    /// A recompute is scheduled (see [`Membership::soon`]).
    recompute_pending: bool,
    /// The members of the last view, and the nodes whose state changed since (see `view`).
    /// The members of the last view, kept up to date member by member.
    members: imbl::OrdMap<String, Arc<Member>>,
    member_dirty: HashSet<String>,
    /// The scheduled recompute must walk the live graph again: a node came, went or changed
    /// incarnation, or a `link:` entry changed. Otherwise (stats, methods, backends, role)
    /// only the view is rebuilt, and the Router keeps its routes.
    graph_dirty: bool,
    /// The bits of the live graph last sent to the Router (see `recompute`).
    last_graph: Option<LiveGraph>,
    /// How long the last recompute took (see `soon`).
    recompute_cost: Duration,
    /// Notices a pause of this node (SIGSTOP) and logs it: the links judge their silences
    /// without it, and nothing here ages with time any more.
    pause: PauseClock,
    /// This node's start, the origin of the millisecond clock tombstones are stamped with.
    started: Instant,
    /// Undeclared (pool) members that went down, and since when: listed as down, forgotten
    /// after `forget_after`.
    down_since: HashMap<String, Instant>,
    /// Undeclared nodes held but never up here (a relayed state of a member that was already
    /// gone), and since when: forgotten after `forget_after`, never listed.
    stray_since: HashMap<String, Instant>,
    /// Strays may have appeared since the last look (the graph changed): `forget_expired`
    /// reads every held name only then, or while strays are timed, not at every tick of an
    /// idle cluster (a thousand names per node per interval).
    stray_scan: bool,
    /// Incarnations forgotten lately: relayed deltas about them are ignored.
    forgotten: Forgotten,
}

/// Deltas and ticks come this often, so a mailbox this deep never fills in steady state.
const MEMBERSHIP_MAILBOX: usize = 1024;

/// Stats are looked at no more often than this per node tracked (see `stats_period`).
const STATS_SPACING: Duration = Duration::from_millis(40);

/// The longest a membership change waits for the rest of its burst (a tenth of the heartbeat
/// interval, at most this).
const COALESCE_MAX: Duration = Duration::from_millis(50);

impl Membership {
    pub fn new(shared: Arc<NodeShared>) -> Self {
        let mut m = Membership {
            names: Vec::new(),
            ids: HashMap::new(),
            by_name: Vec::new(),
            router: None,
            replica: Replica::new(),
            my_links: BTreeSet::new(),
            table_links: BTreeSet::new(),
            cut_since: HashMap::new(),
            methods_stale: true,
            pushed: 0,
            outbox: Outbox::default(),
            whole: WholeStates::default(),
            relayed: Relayed::new(relayed_horizon_ms(shared.heartbeat_interval())),
            flush_pending: false,
            needs_digest: BTreeSet::new(),
            digest_at: HashMap::new(),
            stats_sent: None,
            stats_checked: None,
            up: BTreeSet::new(),
            up_ix: Vec::new(),
            reports: Reports::new(0),
            rows_dirty: Vec::new(),
            rows_all_dirty: false,
            waiting: IndexWaits::new(4 * shared.config.member_bound),
            view_came: Vec::new(),
            view_gone: Vec::new(),
            last_incarnation: HashMap::new(),
            ticks_seen: HashMap::new(),
            recompute_pending: false,
            members: imbl::OrdMap::new(),
            member_dirty: HashSet::new(),
            graph_dirty: true,
            last_graph: None,
            recompute_cost: Duration::ZERO,
            started: Instant::now(),
            pause: PauseClock::new(shared.heartbeat_interval()),
            down_since: HashMap::new(),
            stray_since: HashMap::new(),
            stray_scan: true,
            forgotten: Forgotten::new(
                shared.config.cluster.forget_after * 2,
                shared.config.member_bound,
            ),
            shared,
        };
        // The declared nodes first, in declared order (names are unique: the file was
        // checked). Taken as they are: one by one through `index_of`, each would be checked
        // against the configuration and inserted into `by_name`, N² for N declared nodes.
        m.names = m
            .shared
            .config
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        m.ids = m.names.iter().cloned().zip(0..).collect();
        m.by_name = (0..m.names.len()).collect();
        m.by_name
            .sort_by(|&a, &b| m.names.get(a).cmp(&m.names.get(b)));
        let me = m.shared.name().to_owned();
        let _ = m.index_of(&me);
        let own = m.replica.own(&me, m.shared.incarnation, m.shared.boot_ms);
        own.set("role", Value::Text(m.shared.me.role.to_string()));
        m
    }

    /// The index of `name`; a name not known yet gets the next one if the configuration
    /// admits it (see `Config::admits`: a pool member, first heard of) and the table holds
    /// fewer than `member_bound` names, after forgotten members' slots are reclaimed (see
    /// `compact`). `None` for a node this cluster does not admit, or past the bound.
    fn index_of(&mut self, name: &str) -> Option<usize> {
        if let Some(&ix) = self.ids.get(name) {
            return Some(ix);
        }
        // Every declared node has an index, so this one is not declared.
        if !self.shared.config.admits_undeclared(name) {
            return None;
        }
        if self.names.len() >= self.shared.config.member_bound {
            self.compact();
            if self.names.len() >= self.shared.config.member_bound {
                tracing::debug!(node = %self.shared.name(), "member {name:?} not tracked: {} members already", self.names.len());
                return None;
            }
        }
        let ix = self.names.len();
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), ix);
        // Rows that named it before it had an index lacked it.
        match self.waiting.indexed(name) {
            Rebuild::Rows(rows) => self.rows_dirty.extend(rows),
            Rebuild::All => self.rows_all_dirty = true,
        }
        let at = self
            .by_name
            .partition_point(|&b| self.names.get(b).is_some_and(|n| n.as_str() < name));
        self.by_name.insert(at, ix);
        Some(ix)
    }

    /// Rebuild the table without the names nothing refers to any more (forgotten pool
    /// members): declared nodes first, in declared order, then the others. Rare: only when
    /// the table is full. Indices live only in the table and in the graph bits of the last
    /// recompute (dropped here), so nothing else goes stale.
    fn compact(&mut self) {
        let me = self.shared.name();
        let keep: BTreeSet<&str> = self
            .replica
            .nodes()
            .map(|(n, _)| n)
            .chain(self.table_links.iter().map(String::as_str))
            .chain(self.up.iter().map(String::as_str))
            .chain(self.down_since.keys().map(String::as_str))
            .chain(std::iter::once(me))
            .collect();
        let declared = self.shared.config.nodes.len();
        let names: Vec<String> = self
            .names
            .iter()
            .enumerate()
            .filter(|(i, n)| *i < declared || keep.contains(n.as_str()))
            .map(|(_, n)| n.clone())
            .collect();
        if names.len() == self.names.len() {
            return;
        }
        self.ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut by_name: Vec<usize> = (0..names.len()).collect();
        by_name.sort_by(|&a, &b| names.get(a).cmp(&names.get(b)));
        self.up_ix = names.iter().map(|n| self.up.contains(n)).collect();
        self.reports = Reports::new(names.len());
        self.rows_all_dirty = true;
        self.waiting.clear();
        self.names = names;
        self.by_name = by_name;
        self.last_graph = None;
        self.graph_dirty = true;
    }

    /// Forget the pool member `name` (gone for `forget_after`, or left with `bye`): it leaves
    /// every view of this node, and its state goes (see the module doc). Declared nodes are
    /// never forgotten.
    fn forget(&mut self, name: &str) {
        if self.declared(name) || name == self.shared.name() {
            return;
        }
        let held = self.replica.remove(name);
        if let Some(&ix) = self.ids.get(name) {
            self.row_changed(ix);
        }
        let listed = self.down_since.remove(name).is_some();
        self.stray_since.remove(name);
        self.last_incarnation.remove(name);
        self.ticks_seen.remove(name);
        self.members.remove(name);
        self.member_dirty.remove(name);
        self.outbox.forget(name);
        self.whole.forget(name);
        self.relayed.forget(name);
        let was_up = self.up.remove(name);
        if let Some(u) = self.ids.get(name).and_then(|&ix| self.up_ix.get_mut(ix)) {
            *u = false;
        }
        if was_up {
            self.shared.streams.end_if_cut(name, "it left the cluster");
        }
        if let Some(state) = &held {
            self.forgotten.mark(name, state.incarnation, Instant::now());
        }
        self.graph_dirty = true;
        // A link that never carried a state (a joining node reading the settings) was never
        // listed: nothing to say.
        if listed || was_up || held.is_some() {
            tracing::info!(node = %self.shared.name(), "membership: {name} forgotten");
        }
    }

    /// Whether `name` is declared in the configuration: declared nodes hold the first
    /// indices, in declared order (see `new` and `compact`), so this is one hash lookup where
    /// `Config::node` scans every declared node (N² per tick on a thousand-node cluster).
    fn declared(&self, name: &str) -> bool {
        self.ids
            .get(name)
            .is_some_and(|&i| i < self.shared.config.nodes.len())
    }

    /// Forget the pool members down (or held but never up) for `forget_after`; true if any.
    fn forget_expired(&mut self) -> bool {
        let forget_after = self.shared.config.cluster.forget_after;
        let now = Instant::now();
        if !std::mem::take(&mut self.stray_scan) && self.stray_since.is_empty() {
            return self.forget_down(now, forget_after);
        }
        // Held undeclared nodes that are neither up nor listed as down, nor linked to this
        // node (a link is its own proof of life, up or not yet): strays.
        // Every held node has an index, and declared nodes hold the first indices: only the
        // names past them are looked at (not a hash of every member's name at every tick).
        let strays: HashSet<String> = self
            .names
            .iter()
            .skip(self.shared.config.nodes.len())
            .filter(|n| {
                *n != self.shared.name()
                    && !self.up.contains(*n)
                    && !self.down_since.contains_key(*n)
                    && !self.table_links.contains(*n)
                    && self.replica.get(n).is_some()
            })
            .cloned()
            .collect();
        // A set: a forming pool of a thousand holds as many strays at once, and a list
        // searched for each of them cost every worker a million comparisons per tick.
        self.stray_since.retain(|n, _| strays.contains(n));
        for n in strays {
            self.stray_since.entry(n).or_insert(now);
        }
        let strays = since_at_least(&self.stray_since, forget_after);
        for name in &strays {
            self.forget(name);
        }
        self.forget_down(now, forget_after) || !strays.is_empty()
    }

    /// Forget the pool members listed down for `forget_after`; true if any.
    fn forget_down(&mut self, now: Instant, forget_after: Duration) -> bool {
        let expired = since_at_least(&self.down_since, forget_after);
        for name in &expired {
            self.forget(name);
        }
        self.forgotten.expire(now);
        !expired.is_empty()
    }

    /// Recompute (and, if `refresh`, rewrite and push this node's entries) after a short
    /// delay rather than at once: changes come in bursts (a starting node's links come up one
    /// by one), and one delta and one recompute (and one route computation in the Router)
    /// cover the whole burst. The delay is a tenth of the heartbeat interval (at most 50 ms),
    /// or 20 times what the last recompute took if that is longer (at most an interval):
    /// recomputing then costs at most about 5% of the node's thread, however large the graph.
    fn soon(&mut self, ctx: &mut Context<Self>, refresh: bool) {
        self.graph_dirty = true;
        self.stray_scan = true;
        self.soon_members(ctx, refresh);
    }

    /// As [`Membership::soon`], for a change that leaves the live graph as it is (what
    /// members hold, not who is up): only the view is rebuilt at the end of the window.
    fn soon_members(&mut self, ctx: &mut Context<Self>, refresh: bool) {
        if refresh {
            self.refresh_own();
        }
        self.schedule_flush(ctx);
        if self.recompute_pending {
            return;
        }
        self.recompute_pending = true;
        ctx.run_later(self.delay(), |act, ctx| {
            act.recompute_pending = false;
            if std::mem::take(&mut act.graph_dirty) {
                guard("membership", ctx, |_| act.recompute());
            } else {
                guard("membership", ctx, |_| act.publish_members());
            }
        });
    }

    /// Publish the view again without walking the graph (the Router keeps its routes).
    fn publish_members(&mut self) {
        let view = self.view();
        match &self.router {
            Some(router) => router.do_send(GraphChanged { graph: None, view }),
            None => publish_view(&self.shared, view),
        }
    }

    fn delay(&self) -> Duration {
        (self.interval() / 10)
            .min(COALESCE_MAX)
            .max(self.recompute_cost * 20)
            .min(self.interval())
    }

    /// Send the outbox at the end of the coalescing window (one frame per link per window).
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_pending {
            return;
        }
        self.flush_pending = true;
        // The coalescing window alone: relays must not wait for this node's recomputes (each
        // hop would add one), and sending costs what it costs however it is batched.
        let window = (self.interval() / 10).min(COALESCE_MAX);
        ctx.run_later(window, |act, ctx| {
            act.flush_pending = false;
            guard("membership", ctx, |_| act.flush());
        });
    }

    fn interval(&self) -> Duration {
        self.shared.heartbeat_interval()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Estimated bytes of one delta frame's entries: half the frame limit, so the estimate's
    /// error never makes a frame too large.
    fn budget(&self) -> usize {
        (self.shared.config.cluster.max_frame_bytes / 2).max(1024)
    }

    /// Write this node's entries from its links, methods, backends and (at their period, past
    /// their threshold) stats; queue what changed for every link. True if any changed.
    fn refresh_own(&mut self) -> bool {
        let me = self.shared.name().to_owned();
        self.member_dirty.insert(me.clone());
        let now_ms = self.now_ms();
        let methods = if self.methods_stale {
            self.methods_stale = false;
            Some(self.shared.methods.names())
        } else {
            None
        };
        let http = self.shared.backends.take_changed();
        let stats = self.stats_to_send();
        let own = self
            .replica
            .own(&me, self.shared.incarnation, self.shared.boot_ms);
        // Compared first, nothing allocated: links rarely change between two ticks.
        if !own
            .keys_with("link:")
            .eq(self.my_links.iter().map(String::as_str))
        {
            sync_prefix(
                own,
                "link:",
                self.my_links.iter().map(String::as_str),
                now_ms,
            );
        }
        if let Some(methods) = methods {
            sync_prefix(own, "method:", methods.iter().map(String::as_str), now_ms);
        }
        if let Some(http) = http {
            sync_prefix(own, "http:", http.iter().map(String::as_str), now_ms);
        }
        if let Some(stats) = stats {
            if own.set("stats", Value::Stats(Box::new(stats.clone()))) {
                self.shared.metrics.repl(Repl::OwnStatsSet, 1);
            }
            self.stats_sent = Some(stats);
        }
        let budget = self.budget();
        let own = self
            .replica
            .own(&me, self.shared.incarnation, self.shared.boot_ms);
        if own.max_version <= self.pushed {
            return false;
        }
        let deltas = own.since(&me, self.pushed, budget);
        self.pushed = own.max_version;
        if !self.my_links.is_empty() {
            for d in deltas {
                self.outbox.queue_for_links(d, Vec::new());
            }
        }
        true
    }

    /// How often this node's stats are looked at: `stats_interval`, but at least
    /// [`STATS_SPACING`] per node tracked. Every stats record reaches every node, so with a
    /// fixed period what each node receives grows with N (and the hub of a star relays N²);
    /// spaced this way a node receives at most about one record per `STATS_SPACING` however
    /// large the cluster, and stats get staler only past 125 nodes (5 s at the default).
    fn stats_period(&self) -> Duration {
        let spaced =
            STATS_SPACING.saturating_mul(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        self.shared.config.cluster.stats_interval.max(spaced)
    }

    /// The stats to replicate now, if any: a custom stat changed, or the period passed and
    /// they moved past the threshold.
    fn stats_to_send(&mut self) -> Option<NodeStats> {
        let now = (*self.shared.stats.load()).clone();
        let Some(sent) = &self.stats_sent else {
            self.stats_checked = Some(Instant::now());
            return Some(now);
        };
        if sent.extra != now.extra {
            return Some(now);
        }
        if self
            .stats_checked
            .is_some_and(|t| t.elapsed() < self.stats_period())
        {
            return None;
        }
        self.stats_checked = Some(Instant::now());
        let moved = stats_moved(sent, &now);
        if moved {
            tracing::debug!(node = %self.shared.name(),
                "stats moved: load {:.2} -> {:.2}, rss {} -> {} KiB",
                sent.load_avg[0], now.load_avg[0], sent.rss_bytes / 1024, now.rss_bytes / 1024);
        }
        moved.then_some(now)
    }

    /// Send every link its queued records, batched into frames of at most `budget` bytes of
    /// records. Each record is encoded once, here, and spliced into the frames of every link
    /// that gets it.
    fn flush(&mut self) {
        if self.outbox.is_empty() && self.needs_digest.is_empty() {
            return;
        }
        let (replica, my_links) = (&self.replica, &self.my_links);
        self.outbox.skip_reported(self.shared.name(), |origin| {
            pushed_by(replica, my_links, origin)
                .map(str::to_owned)
                .collect()
        });
        for (node, e) in self.outbox.seal() {
            tracing::error!(node = %self.shared.name(), "cannot encode a delta about {node}: {e}");
            // Not sent to any link: none of them has been sent everything since.
            self.relayed.retain_links(|_| false);
        }
        let table = self.shared.routes.load();
        let budget = self.budget();
        let my_links = &self.my_links;
        self.relayed
            .retain_links(|p| my_links.contains(p) && table.link(p).is_some());
        for link in table.links() {
            let linked = self.my_links.contains(&link.peer);
            let mut full = false;
            self.outbox.frames_for(&link.peer, linked, budget, |frame| {
                if link.tx.try_push(frame.msg).is_err() {
                    full = true;
                    return false;
                }
                let m = &self.shared.metrics;
                m.repl(Repl::DeltaFramesSent, 1);
                m.repl(Repl::DeltaRecordsSent, frame.records);
                m.repl(Repl::DeltaEntriesSent, frame.entries);
                true
            });
            if full {
                // Dropped: the link catches up by a digest exchange once it has room.
                self.needs_digest.insert(link.peer.clone());
            }
            if linked {
                self.relayed.flushed(&link.peer, link.link_id, !full);
            }
        }
        // Records for links that went away meanwhile: a new link starts with a digest.
        self.outbox.clear();
        let behind: Vec<String> = self.needs_digest.iter().cloned().collect();
        for peer in behind {
            self.send_digest(&peer, DigestWhy::Repair);
        }
    }

    /// Send `peer` this node's digest (it answers with what this node lacks).
    /// A repair (`Digest::Repair`: a gap, a delta that did not fit, a digest showing this
    /// node lacks something) goes at once unless a digest of any kind went to that link less
    /// than an interval ago; then it waits in `needs_digest`. So a gap costs one round trip,
    /// not the wait for an interval, and a link carries one digest at a time however many
    /// gaps a burst opens. A link that comes up or resumes always gets one.
    ///
    /// The answer to a digest is on its way for as long as that, whatever else the link
    /// carries meanwhile: the deltas the peer had queued before it read the digest arrive
    /// first, and leave gaps that its answer fills. A repair sent at the first of them (as
    /// it was once any delta came back) was answered with every state the first answer still
    /// carried. With the overlap of answers and relays (see `relayed`), that made 0.8 million
    /// of the 2.1 million records a forming 1,000-node star's workers received second copies
    /// of whole states they held; this rule alone halved it.
    fn send_digest(&mut self, peer: &str, why: DigestWhy) {
        if why == DigestWhy::Repair
            && self
                .digest_at
                .get(peer)
                .is_some_and(|t| t.elapsed() < self.interval())
        {
            self.needs_digest.insert(peer.to_owned());
            return;
        }
        tracing::debug!(node = %self.shared.name(), peer, "digest sent ({why:?})");
        let table = self.shared.routes.load();
        let Some(link) = table.links().find(|l| l.peer == peer) else {
            return;
        };
        let msg = Message::Digest(Digest {
            nodes: self.replica.digest(),
            // What this node hears from directly it would drop if relayed: not worth sending.
            linked: self.my_links.iter().cloned().collect(),
        });
        match encode_message(&msg) {
            Ok(frame) => {
                if link.tx.try_push(frame).is_ok() {
                    self.shared.metrics.repl(Repl::DigestsSent, 1);
                    self.needs_digest.remove(peer);
                    self.digest_at.insert(peer.to_owned(), Instant::now());
                } else {
                    self.needs_digest.insert(peer.to_owned());
                }
            }
            Err(e) => tracing::error!(node = %self.shared.name(), "cannot encode a digest: {e}"),
        }
    }

    /// Answer `via`'s digest with what it lacks, except the states of nodes linked to `via`
    /// (and its own): those speak for themselves on their own links, where `via` would
    /// ignore a relayed copy anyway. In a mesh that leaves little to send.
    ///
    /// And if the digest shows `via` holds more than this node (a newer version of an
    /// incarnation held here, or an admitted node unknown here), this node sends its own
    /// digest back, so `via` answers with the difference: a sender whose delta did not fit
    /// this node's link, or a gap, is repaired in one more round instead of at the next
    /// change of the nodes concerned. Nodes linked to this one and `via` itself are left out
    /// (they push their changes here themselves).
    fn on_digest(&mut self, via: &str, digest: &Digest) {
        let me = self.shared.name();
        // What this node forgot lately is not lacking (see the module doc).
        let now = Instant::now();
        let asked: Vec<DigestEntry> = digest
            .nodes
            .iter()
            .filter(|d| !self.forgotten.holds(&d.node, d.incarnation, now))
            .cloned()
            .collect();
        let lacking = self.replica.lacks(
            &asked,
            |n| n == via || n == me || self.my_links.contains(n),
            |n| self.declared(n) || self.shared.config.admits_undeclared(n),
        );
        if lacking {
            self.send_digest(via, DigestWhy::Repair);
        }
        self.shared.metrics.repl(Repl::DigestsReceived, 1);
        let me = self.shared.name();
        let key = format!("link:{via}");
        // Left out: the asker, the nodes that report a link to it, and those it says it is
        // linked to; each of them pushes its own state to it. (Only names held here count,
        // so the set is no larger than the states held, whatever the digest lists.)
        let asker_linked: HashSet<&str> = digest
            .linked
            .iter()
            .map(String::as_str)
            .filter(|n| self.replica.get(n).is_some())
            .collect();
        let linked = |node: &str, state: &NodeState| {
            node == via
                || (node != me && (state.get(&key).is_some() || asker_linked.contains(node)))
        };
        let budget = self.budget();
        let now_ms = self.now_ms();
        let mut whole_answer = true;
        for (node, state, after) in self.replica.lacking(&digest.nodes, linked) {
            if after == 0 && self.relayed.went_to(via, node, now_ms) {
                // Sent whole to `via` already, and on its way (see `relayed`).
                continue;
            }
            // A whole state goes as the bytes encoded for the last peer that lacked it.
            let parts = if state.takes_whole(after) {
                match self.whole.get(node, state, budget) {
                    Ok(Whole::Encoded(record, entries)) => {
                        self.outbox
                            .queue_encoded_for_link(via, node, record, entries);
                        continue;
                    }
                    Ok(Whole::Parts(parts)) => parts,
                    Err(e) => {
                        tracing::error!(node = %me, "cannot encode the state of {node}: {e}");
                        whole_answer = false;
                        continue;
                    }
                }
            } else {
                state.since(node, after, budget)
            };
            for d in parts {
                self.outbox.queue_for_link(via, d);
            }
        }
        if whole_answer {
            self.relayed.answered(via);
        }
    }

    /// Take a delta in and queue what was new for relaying; says whether the graph or only
    /// what members hold may have changed.
    fn on_delta(&mut self, via: &str, via_incarnation: Uuid, delta: Delta) -> Change {
        let me = self.shared.name().to_owned();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let stamp = self.now_ms();
        let mut changed = Change::None;
        let mut gap = false;
        for d in delta.nodes {
            if d.node == me {
                continue;
            }
            if d.node == via && d.incarnation == via_incarnation {
                // The member itself, on its own link: whatever was forgotten of it is over.
                self.forgotten.lift(&d.node);
            } else if self.forgotten.holds(&d.node, d.incarnation, Instant::now()) {
                self.shared.metrics.repl(Repl::RecordsStale, 1);
                continue;
            }
            let Some(ix) = self.index_of(&d.node) else {
                tracing::debug!(node = %me, via = %via, "delta about unknown node {:?} ignored", d.node);
                continue;
            };
            let link = Link {
                via,
                via_incarnation,
                linked: self.my_links.contains(&d.node),
            };
            let max = max_entries(self.names.len());
            let origin = d.node.clone();
            let incarnation = d.incarnation;
            self.shared.metrics.repl(Repl::DeltaRecordsReceived, 1);
            match take_delta(&mut self.replica, d, &link, now_ms, stamp, max) {
                Ok(Applied::New(relay)) => {
                    self.shared.metrics.repl(Repl::RecordsNew, 1);
                    if relay.from == 0 {
                        self.relayed.taken(&relay.node, stamp);
                    }
                    self.member_dirty.insert(relay.node.clone());
                    // A whole state (a newcomer, a new incarnation) or a `link:` entry moves
                    // the graph; anything else (stats above all) only a member.
                    let graph = self.row_took(ix, &relay);
                    changed = changed.max(if graph {
                        Change::Graph
                    } else {
                        Change::Members
                    });
                    self.relay(via, relay);
                }
                Ok(Applied::Stale) => self.shared.metrics.repl(Repl::RecordsStale, 1),
                Ok(Applied::Gap) => {
                    self.shared.metrics.repl(Repl::RecordsGap, 1);
                    gap = true;
                }
                Ok(Applied::Refused) => {
                    tracing::debug!(node = %me, via = %via, "delta about {origin} refused: malformed or past the entry bound");
                }
                Err(why) => {
                    tracing::debug!(node = %me, via = %via,
                        "delta about {origin} (incarnation {incarnation}) ignored: {why}");
                }
            }
        }
        if gap {
            // Filled at the end of this window (see `flush`), not at the next tick.
            self.needs_digest.insert(via.to_owned());
        }
        changed
    }

    /// Queue what was new here for every link but the one it came on, the origin, and the
    /// peers the origin reports links to (it pushed to them itself). Queued once, with the
    /// links it skips; not at all if that leaves none (a mesh). The flush adds the links the
    /// origin reports by then (`Outbox::skip_reported`).
    fn relay(&mut self, via: &str, relay: NodeDelta) {
        if !relay_needed(&self.replica, &self.my_links, via, &relay.node) {
            return;
        }
        let mut skip: Vec<String> = [via, relay.node.as_str()]
            .into_iter()
            .filter(|p| self.my_links.contains(*p))
            .chain(pushed_by(&self.replica, &self.my_links, &relay.node))
            .map(str::to_owned)
            .collect();
        skip.sort_unstable();
        skip.dedup();
        if skip.len() < self.my_links.len() {
            self.outbox.queue_for_links(relay, skip);
        }
    }

    /// Recompute reachability; log and publish what changed. Works on node indices and is
    /// linear in the number of links reported.
    fn recompute(&mut self) {
        self.shared.metrics.repl(Repl::GraphRecomputes, 1);
        let started = Instant::now();
        self.recompute_graph();
        // Wall time, so a run preempted by other threads (a thousand nodes in one process on
        // two cores) measures long: taken at once when shorter, averaged in slowly when
        // longer, so that one unlucky run does not stretch the window to an interval.
        let took = started.elapsed();
        self.recompute_cost = if took <= self.recompute_cost {
            took
        } else {
            (self.recompute_cost * 7 + took) / 8
        };
    }

    /// Bring the rows of `reports` up to date for the held states that changed since the
    /// last recompute (all of them after a `compact`).
    fn refresh_rows(&mut self) {
        let n = self.names.len();
        self.reports.resize(n);
        if std::mem::take(&mut self.rows_all_dirty) {
            self.rows_dirty = (0..n).collect();
        }
        let mut dirty = std::mem::take(&mut self.rows_dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let me = self.shared.name();
        for a in dirty {
            let mut row = Vec::new();
            let state = self
                .names
                .get(a)
                .filter(|name| name.as_str() != me)
                .and_then(|name| self.replica.get(name));
            for peer in state.iter().flat_map(|s| s.keys_with("link:")) {
                match self.ids.get(peer) {
                    Some(&b) => row.extend(u32::try_from(b)),
                    None => self.waiting.wait(peer, a),
                }
            }
            self.reports.set_row(a, row);
        }
    }

    /// The state of node `ix` changed (or went): its row is refreshed at the next recompute.
    fn row_changed(&mut self, ix: usize) {
        self.rows_dirty.push(ix);
    }

    /// Node `ix`'s held state took `delta`: a whole state makes its row be built again; a
    /// change to a held state edits the row by its `link:` entries alone. A hub's row names
    /// every node, and rebuilding it at each of its changes cost every node O(N) per change
    /// while a large star formed. True if the row may have changed (the graph with it).
    fn row_took(&mut self, ix: usize, delta: &NodeDelta) -> bool {
        if delta.from == 0 {
            self.row_changed(ix);
            return true;
        }
        self.reports.resize(self.names.len());
        let mut links = false;
        for e in &delta.entries {
            let Some(peer) = e.key.strip_prefix("link:") else {
                continue;
            };
            links = true;
            match self.ids.get(peer) {
                Some(&b) => self.reports.set_edge(ix, b, e.value.is_some()),
                None if e.value.is_some() => self.waiting.wait(peer, ix),
                // A link gone to a node without an index was in no row.
                None => {}
            }
        }
        links
    }

    fn recompute_graph(&mut self) {
        let me = self.shared.name().to_owned();
        let Some(&me_ix) = self.ids.get(&me) else {
            return;
        };
        // reports.has(a, b): a reports a live link to b (my own links, and every state held).
        // A peer this node is linked to whose held state is of another incarnation than the
        // link's is reached by no edge at all: a restarted peer whose new state has not
        // arrived yet must not pass for its old incarnation, over this link or over its old
        // state's links (which its neighbours' links to the new one would match). Counting
        // it through the others while this node's own edge to it is left out made the view
        // show an edge that the routes lacked.
        self.refresh_rows();
        let mut mine = Vec::new();
        let mut stale = vec![false; self.names.len()];
        let table = self.shared.routes.load();
        let linked: HashMap<&str, Uuid> = table
            .links()
            .map(|l| (l.peer.as_str(), l.incarnation))
            .collect();
        for peer in &self.my_links {
            let Some(&b) = self.ids.get(peer) else {
                continue;
            };
            let held = self.replica.get(peer).map(|s| s.incarnation);
            match (held, linked.get(peer.as_str())) {
                (Some(held), Some(link)) if held == *link => mine.extend(u32::try_from(b)),
                (Some(_), Some(_)) => {
                    if let Some(s) = stale.get_mut(b) {
                        *s = true;
                    }
                }
                _ => {}
            }
        }
        self.reports.set_row(me_ix, mine);
        let reports = &self.reports;
        // An edge counts when both of its ends report it; walk them from me.
        let edge = |a: usize, b: usize| reports.has(a, b) && reports.has(b, a);
        let mut reachable = vec![false; self.names.len()];
        let mut order = Vec::with_capacity(self.names.len());
        if let Some(r) = reachable.get_mut(me_ix) {
            *r = true;
        }
        order.push(me_ix);
        let mut next = 0;
        while let Some(&a) = order.get(next) {
            next += 1;
            for b in reports.reported_by(a) {
                if edge(a, b) && reachable.get(b) == Some(&false) && stale.get(b) == Some(&false) {
                    if let Some(r) = reachable.get_mut(b) {
                        *r = true;
                    }
                    order.push(b);
                }
            }
        }
        // The live graph (a row per reachable node): when it is the graph of last time, the
        // Router is told nothing changed and keeps its routes.
        // One list of (a, b) pairs, not a row each: a thousand small rows per recompute was a
        // thousand allocations.
        let mut live = LiveGraph::default();
        for &a in &order {
            live.add(a, a); // marks a as reachable, isolated or not
            for b in reports.reported_by(a).filter(|&b| edge(a, b)) {
                live.add(a, b);
            }
        }
        live.finish();
        let graph = if self.last_graph.as_ref() == Some(&live) {
            None
        } else {
            let graph = self.indexed_graph(&live, &reachable);
            self.last_graph = Some(live);
            graph.map(Arc::new)
        };
        // Who came and went, by index: only they cost lookups and clones by name (a thousand
        // nodes looked up, cloned and compared by name at every recompute was most of what a
        // large star's workers did while it converged). Every reachable node but this one has
        // its state held: an edge counts only when both ends report it, and a node's report
        // comes from its state.
        let mut now_up = vec![false; self.names.len()];
        for &a in order.iter().filter(|&&a| a != me_ix) {
            if let Some(u) = now_up.get_mut(a) {
                *u = true;
            }
        }
        self.up_ix.resize(self.names.len(), false);
        let (mut came, mut gone) = (Vec::new(), Vec::new());
        for (a, (&was, &is)) in self.up_ix.iter().zip(&now_up).enumerate() {
            match (was, is) {
                (false, true) => came.push(a),
                (true, false) => gone.push(a),
                _ => {}
            }
        }
        for a in gone {
            let Some(name) = self.names.get(a).cloned() else {
                continue;
            };
            tracing::warn!(node = %me, "membership: {name} down");
            self.shared
                .streams
                .end_if_cut(&name, "it was declared down");
            if !self.declared(&name) {
                self.down_since.insert(name.clone(), Instant::now());
            }
            self.up.remove(&name);
            self.view_gone.push(name);
        }
        for a in came {
            let Some(name) = self.names.get(a).cloned() else {
                continue;
            };
            self.down_since.remove(&name);
            self.log_up(&name);
            self.up.insert(name.clone());
            self.view_came.push(name);
        }
        // A node that stayed up with a new incarnation (a restart faster than the failure
        // detector) had its state replaced: it is among the members changed since the view.
        let again: Vec<String> = self
            .member_dirty
            .iter()
            .filter(|n| self.up.contains(*n))
            .cloned()
            .collect();
        for name in again {
            self.log_up(&name);
        }
        self.up_ix = now_up;
        let view = self.view();
        match &self.router {
            // The Router installs the routes, then publishes the view: whoever sees a node up
            // can already route to it.
            Some(router) => router.do_send(GraphChanged { graph, view }),
            None => publish_view(&self.shared, view),
        }
    }

    /// The live graph in name order, from its bits: reachable nodes only, each with its
    /// neighbours (`live` is symmetric: both ends of an edge are reachable).
    fn indexed_graph(&self, live: &LiveGraph, reachable: &[bool]) -> Option<IndexedGraph> {
        let is_reachable = |a: usize| reachable.get(a) == Some(&true);
        let mut position = vec![usize::MAX; self.names.len()];
        let mut names = Vec::new();
        for &a in self.by_name.iter().filter(|&&a| is_reachable(a)) {
            if let Some(p) = position.get_mut(a) {
                *p = names.len();
            }
            names.push(self.names.get(a).cloned().unwrap_or_default());
        }
        // Each node's neighbours from its row (not a scan of every node: that was N² per
        // graph change), as positions in name order.
        let neighbours = self
            .by_name
            .iter()
            .filter(|&&a| is_reachable(a))
            .map(|&a| {
                let mut row: Vec<usize> = live
                    .neighbours(a)
                    .filter(|&b| b != a)
                    .filter_map(|b| position.get(b).copied().filter(|&p| p != usize::MAX))
                    .collect();
                row.sort_unstable();
                row
            })
            .collect();
        match IndexedGraph::from_sorted(names, neighbours) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(node = %self.shared.name(), "live graph not built: {e}");
                None
            }
        }
    }

    /// Log `name` up when it comes up, or when it is up with a new incarnation (a restart
    /// faster than the failure detector), naming the incarnation.
    fn log_up(&mut self, name: &str) {
        let me = self.shared.name();
        let Some(now) = self.replica.get(name).map(|s| s.incarnation) else {
            return;
        };
        // Looked up first: a node up at every recompute costs no allocation.
        let before = match self.last_incarnation.get_mut(name) {
            Some(held) => Some(std::mem::replace(held, now)),
            None => self.last_incarnation.insert(name.to_owned(), now),
        };
        let was_up = self.up.contains(name);
        match before {
            None => tracing::info!(node = %me, incarnation = %now, "membership: {name} up"),
            Some(old) if old != now => tracing::info!(node = %me, incarnation = %now,
                previous = %old, "membership: {name} up (rejoined with a new incarnation)"),
            Some(_) if !was_up => tracing::info!(node = %me, incarnation = %now,
                "membership: {name} up (rejoined)"),
            Some(_) => {}
        }
        if !was_up {
            // Declared down while a connection carried its stream, and back before that
            // connection ended: the stream goes on.
            self.shared.streams.up_again(name);
        }
    }

    /// The view, from the members cached since the last one: only the members whose state
    /// changed since (`member_dirty`) are built again from their entries.
    fn view(&mut self) -> MembershipView {
        let me = self.shared.name().to_owned();
        let dirty = std::mem::take(&mut self.member_dirty);
        if let Some(own) = self.replica.get(&me) {
            // Live values for this node: its links and stats as they are now.
            let fresh = self
                .members
                .get(&me)
                .is_some_and(|m| !dirty.contains(&me) && m.links.iter().eq(self.my_links.iter()));
            let stats = self.shared.stats.load();
            if !fresh {
                let mut m = member(&me, own, self.members.get(&me).map(|m| &**m));
                if !m.links.iter().eq(self.my_links.iter()) {
                    m.links = self.my_links.iter().cloned().collect();
                }
                m.stats = (*stats).clone();
                self.members.insert(me.clone(), Arc::new(m));
            } else if let Some(m) = self.members.get_mut(&me).filter(|m| m.stats != *stats) {
                Arc::make_mut(m).stats = (*stats).clone();
            }
        }
        // Who came and went since the last view, as the recompute found them.
        for name in std::mem::take(&mut self.view_gone) {
            if !self.up.contains(&name) {
                self.members.remove(&name);
            }
        }
        let came: Vec<String> = std::mem::take(&mut self.view_came)
            .into_iter()
            .filter(|n| self.up.contains(n))
            .collect();
        let changed = dirty.iter().filter(|n| **n != me && self.up.contains(*n));
        for name in came.iter().chain(changed) {
            match self.replica.get(name) {
                Some(s) => {
                    let m = member(name, s, self.members.get(name).map(|m| &**m));
                    self.members.insert(name.clone(), Arc::new(m));
                }
                None => {
                    self.members.remove(name);
                }
            }
        }
        MembershipView {
            me,
            members: self.members.clone(),
            down: self.down_since.keys().cloned().collect(),
        }
    }

    fn on_heartbeat(&mut self, via: String, hb: Heartbeat) {
        let own = via == self.shared.name();
        if !own && self.index_of(&hb.master).is_none() {
            return;
        }
        let newer = match self.ticks_seen.get(&hb.master) {
            None => true,
            Some((inc, n)) => *inc != hb.incarnation || hb.n > *n,
        };
        if !newer {
            return;
        }
        self.ticks_seen
            .insert(hb.master.clone(), (hb.incarnation, hb.n));
        let table = self.shared.routes.load();
        let mut links = table.links().filter(|l| l.peer != via).peekable();
        if links.peek().is_none() {
            return;
        }
        match encode_message(&Message::Heartbeat(hb)) {
            Ok(frame) => {
                for link in links {
                    if link.tx.try_push(frame.clone()).is_ok() {
                        self.shared.metrics.repl(Repl::TicksForwarded, 1);
                    }
                }
            }
            Err(e) => tracing::error!(node = %self.shared.name(), "cannot encode a tick: {e}"),
        }
    }

    /// `my_links` from the Router's table, less the links cut for longer than the failure
    /// timeout; true if it changed.
    fn update_links(&mut self) -> bool {
        let timeout = self.shared.failure_timeout();
        let cut_since = &self.cut_since;
        let live = || {
            self.table_links
                .iter()
                .filter(|p| cut_since.get(*p).is_none_or(|t| t.elapsed() <= timeout))
        };
        // Compared before anything is allocated: this runs at every tick.
        if live().eq(self.my_links.iter()) {
            return false;
        }
        let live: BTreeSet<String> = live().cloned().collect();
        let before = std::mem::replace(&mut self.my_links, live);
        // Records queued from now on go to the new links (see `outbox`).
        self.outbox.links_moved(&before, &self.my_links);
        true
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let paused = self.pause.tick();
        if !paused.is_zero() {
            tracing::info!(node = %self.shared.name(), "this node did not run for {} ms; silences are judged without that pause", paused.as_millis());
            // A cut link's grace does not run out during this node's own pause.
            let now = Instant::now();
            for since in self.cut_since.values_mut() {
                *since = crate::link::pause::excuse(*since, paused, now);
            }
        }
        if self.update_links() {
            // A cut link's grace ran out: its peer is down unless reachable another way.
            self.soon(ctx, true);
        }
        // Backends and custom stats are looked at here rather than sent (see `backends`): a
        // change is replicated within an interval (and shown in this node's own view).
        if self.refresh_own() {
            // Own links changed through `LinksChanged` or above; this is stats or backends.
            self.soon_members(ctx, false);
        }
        let ttl = u64::try_from(TOMBSTONE_TTL.as_millis()).unwrap_or(u64::MAX);
        let before = self.now_ms().saturating_sub(ttl);
        if self.now_ms() > ttl {
            self.replica.gc(before);
        }
        self.relayed.expire(self.now_ms());
        let behind: Vec<String> = self.needs_digest.iter().cloned().collect();
        for peer in behind {
            self.send_digest(&peer, DigestWhy::Repair);
        }
        if self.forget_expired() {
            self.soon(ctx, false);
        }
        self.schedule_flush(ctx);
    }
}

/// The names in `since` that have been there for `at_least`.
fn since_at_least(since: &HashMap<String, Instant>, at_least: Duration) -> Vec<String> {
    since
        .iter()
        .filter(|(_, t)| t.elapsed() >= at_least)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Make the entries under `prefix` exactly `want` (set the new ones, tombstone the gone).
///
/// One merge walk of two sorted lists: a hub's thousand `link:` entries are compared, not
/// rebuilt, at each link change, and only the keys that change are allocated. Entries under
/// these prefixes only ever hold `Value::Set`.
fn sync_prefix<'a>(
    state: &mut NodeState,
    prefix: &str,
    want: impl Iterator<Item = &'a str>,
    now_ms: u64,
) {
    let want: BTreeSet<&str> = want.collect();
    let (gone, new) = {
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        let mut have = state.keys_with(prefix).peekable();
        let mut wanted = want.iter().copied().peekable();
        loop {
            match (have.peek(), wanted.peek()) {
                (Some(h), Some(w)) if h == w => {
                    have.next();
                    wanted.next();
                }
                (Some(h), Some(w)) if h < w => {
                    gone.push(format!("{prefix}{h}"));
                    have.next();
                }
                (Some(h), None) => {
                    gone.push(format!("{prefix}{h}"));
                    have.next();
                }
                (_, Some(w)) => {
                    new.push(format!("{prefix}{w}"));
                    wanted.next();
                }
                (None, None) => break,
            }
        }
        (gone, new)
    };
    for key in gone {
        state.remove(&key, now_ms);
    }
    for key in new {
        state.set(&key, Value::Set);
    }
}

/// Whether stats moved enough to be replicated: the 1-minute load per CPU by both 0.1 and a
/// tenth of what was sent, RSS by 10 %, or any field but uptime, free memory and load
/// changed.
///
/// Every stats change reaches every node, so the thresholds set the idle cost of a large
/// cluster: a 1-minute load wanders by a few hundredths per CPU on an idle machine and by
/// tenths on a busy one, which is noise to a least-loaded choice; a finer threshold sent
/// stats from nearly every node at nearly every check.
pub(crate) fn stats_moved(sent: &NodeStats, now: &NodeStats) -> bool {
    let cpus = f64::from(now.cpus.max(1));
    let (was, is) = (sent.load_avg[0] / cpus, now.load_avg[0] / cpus);
    let load = (is - was).abs() >= f64::max(0.1, was.abs() / 10.0);
    let rss = now.rss_bytes.abs_diff(sent.rss_bytes) * 10 >= sent.rss_bytes.max(1);
    load || rss
        || now.pid != sent.pid
        || now.version != sent.version
        || now.cpus != sent.cpus
        || now.total_mem_bytes != sent.total_mem_bytes
        || now.extra != sent.extra
}

/// The links of this node (`my_links`) that `origin`'s state held here reports links to:
/// `origin` pushes its records to those peers itself, so a relay skips them.
fn pushed_by<'a>(
    replica: &'a Replica,
    my_links: &'a BTreeSet<String>,
    origin: &str,
) -> impl Iterator<Item = &'a str> + 'a {
    replica
        .get(origin)
        .into_iter()
        .flat_map(|s| s.keys_with("link:"))
        .filter(move |p| my_links.contains(*p))
}

/// Whether some link of this node is none of `via`, `origin` and the peers `origin` reports
/// links to. A merge of two sorted lists that allocates nothing: in a mesh every link is one
/// of those, and every stats change of every peer asks. A node linked only to `via` and the
/// origin (a star's worker) never reads the origin's links, which for a hub name every node.
fn relay_needed(replica: &Replica, my_links: &BTreeSet<String>, via: &str, origin: &str) -> bool {
    let mut reported = replica
        .get(origin)
        .into_iter()
        .flat_map(|s| s.keys_with("link:"))
        .peekable();
    my_links.iter().any(|p| {
        if p == via || p == origin {
            return false;
        }
        while reported.next_if(|r| *r < p.as_str()).is_some() {}
        reported.peek() != Some(&p.as_str())
    })
}

/// A member as the API sees it, from its state's entries (backends well-formed only). The
/// lists of `was`, the member as last shown, are kept where they did not change: most changes
/// are stats, and a mesh member's links were copied at each.
fn member(name: &str, s: &NodeState, was: Option<&Member>) -> Member {
    let text = |key: &str| match s.get(key) {
        Some(Value::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let list = |prefix: &str, was: Option<&Arc<[String]>>| match was {
        Some(w) if w.iter().map(String::as_str).eq(s.keys_with(prefix)) => Arc::clone(w),
        _ => s.keys_with(prefix).map(str::to_owned).collect(),
    };
    Member {
        name: name.to_owned(),
        incarnation: s.incarnation,
        role: text("role"),
        links: list("link:", was.map(|m| &m.links)),
        stats: match s.get("stats") {
            Some(Value::Stats(st)) => NodeStats::clone(st),
            _ => NodeStats::default(),
        },
        methods: list("method:", was.map(|m| &m.methods)),
        http: s
            .keys_with("http:")
            .filter(|a| super::backends::check_address(a).is_ok())
            .take(super::backends::MAX_BACKENDS)
            .map(str::to_owned)
            .collect(),
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MEMBERSHIP_MAILBOX);
        // Ticks start at a random phase: the nodes of one process started together would
        // otherwise all tick at the same instant.
        ctx.run_later(random_below(self.interval()), |act, ctx| {
            guard("membership", ctx, |ctx| act.tick(ctx));
            ctx.run_interval(act.interval(), |act, ctx| {
                guard("membership", ctx, |ctx| act.tick(ctx));
            });
        });
        let view = self.view();
        publish_view(&self.shared, view);
        // After a restart, the graph is walked again from the states held and the Router
        // (perhaps restarted too) gets it; at the first start, the node alone.
        self.soon(ctx, false);
    }
}

impl actix::Supervised for Membership {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The states held stay (each delta is applied whole or not at all); what is derived
        // from them is recomputed and published again, and pending timers died with the
        // context.
        self.last_graph = None;
        self.recompute_pending = false;
        self.graph_dirty = true;
        self.members = imbl::OrdMap::new();
        // Every node up is rebuilt into the next view: a restart that cleared the members
        // showed this node alone until each peer's state changed again.
        self.view_came = self.up.iter().cloned().collect();
        self.flush_pending = false;
        self.methods_stale = true;
    }
}

impl Handler<AttachRouter> for Membership {
    type Result = ();

    fn handle(&mut self, msg: AttachRouter, _: &mut Context<Self>) {
        self.router = Some(msg.0);
        self.last_graph = None; // the new Router gets the whole graph
    }
}

impl Handler<MethodsChanged> for Membership {
    type Result = ();

    fn handle(&mut self, _: MethodsChanged, ctx: &mut Context<Self>) {
        self.methods_stale = true;
        self.soon(ctx, true);
    }
}

impl Handler<LinksChanged> for Membership {
    type Result = ();

    fn handle(&mut self, msg: LinksChanged, ctx: &mut Context<Self>) {
        self.links_changed(msg.links, msg.cut, ctx);
    }
}

impl Membership {
    /// A digest on a link the Router has not told of yet (it publishes its table, then
    /// tells this actor): the links are taken from the table first, so that the answer
    /// carries this node's state with its `link:` to the asker (and its first stats).
    /// Answered before, that state went out without them, and the asker relayed it, then the
    /// rest as a second record, to every node: a forming 1,000-node star's workers each
    /// received 1.3 records per other worker.
    fn learn_link(&mut self, via: &str, ctx: &mut Context<Self>) {
        if self.table_links.contains(via) {
            return;
        }
        let table = self.shared.routes.load();
        if table.link(via).is_none() {
            return;
        }
        let links: BTreeSet<String> = table.links().map(|l| l.peer.clone()).collect();
        let cut = self
            .cut_since
            .keys()
            .filter(|p| !links.contains(*p))
            .cloned()
            .collect();
        self.links_changed(links, cut, ctx);
    }

    /// The Router's links are now `links`, and `cut` were cut lately.
    fn links_changed(
        &mut self,
        links: BTreeSet<String>,
        cut: BTreeSet<String>,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        self.cut_since.retain(|p, _| cut.contains(p));
        for p in cut {
            self.cut_since.entry(p).or_insert(now);
        }
        self.table_links = links;
        self.digest_at.retain(|p, _| self.table_links.contains(p));
        let before = self.my_links.clone();
        self.update_links();
        let new: Vec<String> = self.my_links.difference(&before).cloned().collect();
        let peers: Vec<String> = self.my_links.iter().cloned().collect();
        for peer in peers {
            let _ = self.index_of(&peer);
        }
        for peer in new {
            // A link that came up: each side tells the other what it holds.
            guard("membership", ctx, |_| {
                self.send_digest(&peer, DigestWhy::LinkUp)
            });
        }
        self.soon(ctx, true);
    }
}

impl Handler<PeerLeft> for Membership {
    type Result = ();

    fn handle(&mut self, PeerLeft { peer, link_id }: PeerLeft, ctx: &mut Context<Self>) {
        let newer = self
            .shared
            .routes
            .load()
            .link(&peer)
            .is_some_and(|l| l.link_id != link_id);
        if !newer && !self.declared(&peer) && self.ids.contains_key(&peer) {
            // At once: whoever reads the log line reads a view without it.
            guard("membership", ctx, |_| {
                self.forget(&peer);
                self.recompute();
            });
        }
    }
}

impl Handler<LinkResumed> for Membership {
    type Result = ();

    fn handle(&mut self, LinkResumed(peer): LinkResumed, ctx: &mut Context<Self>) {
        guard("membership", ctx, |_| {
            self.send_digest(&peer, DigestWhy::LinkUp)
        });
    }
}

impl Handler<DeltaReceived> for Membership {
    type Result = ();

    fn handle(&mut self, msg: DeltaReceived, ctx: &mut Context<Self>) {
        let changed = guard("membership", ctx, |_| {
            self.on_delta(&msg.via, msg.via_incarnation, msg.delta)
        });
        if changed == Some(Change::Graph) {
            self.soon(ctx, false);
        } else if changed == Some(Change::Members) {
            self.soon_members(ctx, false);
        } else if !self.needs_digest.is_empty() {
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<DigestReceived> for Membership {
    type Result = ();

    fn handle(&mut self, msg: DigestReceived, ctx: &mut Context<Self>) {
        self.learn_link(&msg.via, ctx);
        guard("membership", ctx, |_| self.on_digest(&msg.via, &msg.digest));
        self.schedule_flush(ctx);
    }
}

impl Handler<HeartbeatReceived> for Membership {
    type Result = ();

    fn handle(&mut self, msg: HeartbeatReceived, ctx: &mut Context<Self>) {
        guard("membership", ctx, |_| {
            self.on_heartbeat(msg.via, msg.heartbeat)
        });
    }
}

/// Why a digest is sent (see `Membership::send_digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DigestWhy {
    /// A link came up or resumed: what was pushed before may not have arrived.
    LinkUp,
    /// A gap, a delta that did not fit, or a digest that showed this node lacks something.
    Repair,
}

/// What a delta changed here, least to most (see `Membership::on_delta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    None,
    /// What members hold (stats, methods, backends, role): the view only.
    Members,
    /// Who is up or which links are live: the graph too.
    Graph,
}

/// The link a delta arrived on, as `claim_is_consistent` sees it.
pub(crate) struct Link<'a> {
    /// The peer at the other end.
    pub via: &'a str,
    /// The incarnation its handshake authenticated.
    pub via_incarnation: Uuid,
    /// Whether this node has a live link to the delta's node.
    pub linked: bool,
}

/// Who a delta says node X is: its name, incarnation and boot time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim<'a> {
    pub node: &'a str,
    pub incarnation: Uuid,
    pub boot_ms: u64,
}

/// Whether a claim about node X may be taken, given the incarnation and boot time held for X:
///
/// - from X's own link, only with the incarnation that link authenticated;
/// - from another peer (relayed), never while this node has a live link to X: X sends its
///   deltas on that link itself, so a relayed copy adds nothing but a chance to forge;
/// - a relayed claim of the incarnation held keeps its boot time, and one of another
///   incarnation must have booted later than the one held (a restart).
///
/// A relayed claim about a node this node has no link to, with a new incarnation and a boot
/// time within [`MAX_CLOCK_SKEW_MS`], cannot be told from a restart: it is taken.
fn claim_is_consistent(
    claim: Claim<'_>,
    link: &Link<'_>,
    held: Option<(Uuid, u64)>,
) -> Result<(), &'static str> {
    if claim.node == link.via {
        if claim.incarnation != link.via_incarnation {
            return Err("not the incarnation its link authenticated");
        }
        return Ok(());
    }
    if link.linked {
        return Err("relayed while this node has a live link to it");
    }
    match held {
        Some((inc, boot)) if inc == claim.incarnation && boot != claim.boot_ms => {
            Err("its incarnation's boot time changed")
        }
        Some((inc, boot)) if inc != claim.incarnation && claim.boot_ms <= boot => {
            Err("a new incarnation that did not boot later")
        }
        _ => Ok(()),
    }
}

/// Why a delta was not taken (see [`accept_claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Ignored {
    #[error("{0}")]
    Inconsistent(&'static str),
    #[error("booted more than {MAX_CLOCK_SKEW_MS} ms in the future")]
    Future,
}

/// Whether a claim about node X is taken, given the link it came on, what is held for X and
/// this node's clock (`now_ms`, ms since the Unix epoch): it must be consistent (see
/// [`claim_is_consistent`]) and its boot time not more than [`MAX_CLOCK_SKEW_MS`] ahead.
/// Incarnations are ordered by boot time: one from the future would outrank the real one
/// until it is restarted. Clocks differ, but not by this much.
pub(crate) fn accept_claim(
    claim: Claim<'_>,
    link: &Link<'_>,
    held: Option<(Uuid, u64)>,
    now_ms: u64,
) -> Result<(), Ignored> {
    claim_is_consistent(claim, link, held).map_err(Ignored::Inconsistent)?;
    if claim.boot_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(Ignored::Future);
    }
    Ok(())
}

/// Check a delta's claim (see [`accept_claim`]) and apply it to `replica` (stamping its
/// tombstones with `stamp_ms`, bounding the node's entries to `max_entries`). A delta on X's
/// own link with the incarnation that link authenticated replaces a held state of any other
/// incarnation whatever its boot time, so a forged incarnation taken while unlinked cannot
/// keep the live node down. Pure, so that it can be checked against hostile input without a
/// running node.
/// How long a whole state relayed to a link counts as on its way there (see `relayed`): ten
/// heartbeat intervals, longer than a digest's answer took on the busiest links measured
/// (1 to 5 s on a forming 1,000-node star's workers, heartbeat 1 s).
fn relayed_horizon_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis().saturating_mul(10)).unwrap_or(u64::MAX)
}

pub(crate) fn take_delta(
    replica: &mut Replica,
    d: NodeDelta,
    link: &Link<'_>,
    now_ms: u64,
    stamp_ms: u64,
    max_entries: usize,
) -> Result<Applied, Ignored> {
    let held = replica.get(&d.node).map(|s| (s.incarnation, s.boot_ms));
    let claim = Claim {
        node: &d.node,
        incarnation: d.incarnation,
        boot_ms: d.boot_ms,
    };
    accept_claim(claim, link, held, now_ms)?;
    Ok(replica.apply(d, stamp_ms, max_entries))
}

/// The pool members' incarnations this node forgot lately, and when: relayed records about
/// them are ignored for `keep` (2 × `forget_after`), so a peer that still holds one does not
/// bring it back (docs/PROTOCOL.md §7.2.6). Bounded: at most `bound` marks, the oldest
/// dropped first. Pure (callers pass the time) so that it is tested without waiting.
#[derive(Debug)]
pub(crate) struct Forgotten {
    marks: HashMap<String, (Uuid, Instant)>,
    keep: Duration,
    bound: usize,
}

impl Forgotten {
    pub(crate) fn new(keep: Duration, bound: usize) -> Self {
        Forgotten {
            marks: HashMap::new(),
            keep,
            bound: bound.max(1),
        }
    }

    /// `node`'s `incarnation` was forgotten at `now`.
    pub(crate) fn mark(&mut self, node: &str, incarnation: Uuid, now: Instant) {
        if !self.marks.contains_key(node) && self.marks.len() >= self.bound {
            let oldest = self
                .marks
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.marks.remove(&oldest);
            }
        }
        self.marks.insert(node.to_owned(), (incarnation, now));
    }

    /// Whether a record about `node`'s `incarnation` is to be ignored at `now`: that
    /// incarnation was forgotten less than `keep` ago. Another incarnation (a new member
    /// under the name) is not.
    pub(crate) fn holds(&self, node: &str, incarnation: Uuid, now: Instant) -> bool {
        self.marks.get(node).is_some_and(|(inc, at)| {
            *inc == incarnation && now.saturating_duration_since(*at) < self.keep
        })
    }

    /// The member spoke on its own link: it is back, nothing is to be ignored.
    pub(crate) fn lift(&mut self, node: &str) {
        self.marks.remove(node);
    }

    /// Drop the marks older than `keep`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let keep = self.keep;
        self.marks
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < keep);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.marks.len()
    }
}

/// Who reports a link to whom: for each admitted node, the sorted indices it reports links
/// to. Sparse, because a graph of N nodes has far fewer than N² links (a star has N − 1): a
/// bit per ordered pair was 125 KB to allocate, fill and compare per recompute at N = 1,000.
struct Reports {
    /// Row `a`: the nodes `a` reports links to, sorted, without repeats.
    rows: Vec<Vec<u32>>,
}

impl Reports {
    fn new(n: usize) -> Self {
        Reports {
            rows: vec![Vec::new(); n],
        }
    }

    /// Grow to `n` rows (new ones empty).
    fn resize(&mut self, n: usize) {
        if self.rows.len() < n {
            self.rows.resize(n, Vec::new());
        }
    }

    /// Replace row `a` (out of range: ignored; entries out of range dropped).
    fn set_row(&mut self, a: usize, mut row: Vec<u32>) {
        let n = self.rows.len();
        row.retain(|&b| (b as usize) < n);
        row.sort_unstable();
        row.dedup();
        if let Some(r) = self.rows.get_mut(a) {
            *r = row;
        }
    }

    /// Add (`on`) or remove the edge `a` → `b` of row `a` (out of range: ignored).
    fn set_edge(&mut self, a: usize, b: usize, on: bool) {
        let Ok(b) = u32::try_from(b) else {
            return;
        };
        if b as usize >= self.rows.len() {
            return;
        }
        let Some(row) = self.rows.get_mut(a) else {
            return;
        };
        match (row.binary_search(&b), on) {
            (Err(at), true) => row.insert(at, b),
            (Ok(at), false) => {
                row.remove(at);
            }
            _ => {}
        }
    }

    fn has(&self, a: usize, b: usize) -> bool {
        u32::try_from(b).is_ok_and(|b| {
            self.rows
                .get(a)
                .is_some_and(|row| row.binary_search(&b).is_ok())
        })
    }

    /// The nodes `a` reports links to, in index order.
    fn reported_by(&self, a: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows
            .get(a)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|&b| b as usize)
    }
}

/// The live graph of one recompute: the (a, b) pairs of its edges, both ways, and (a, a) for
/// every reachable node, sorted.
#[derive(Default, PartialEq)]
struct LiveGraph(Vec<(u32, u32)>);

impl LiveGraph {
    fn add(&mut self, a: usize, b: usize) {
        if let (Ok(a), Ok(b)) = (u32::try_from(a), u32::try_from(b)) {
            self.0.push((a, b));
        }
    }

    fn finish(&mut self) {
        self.0.sort_unstable();
        self.0.dedup();
    }

    /// What `a` is paired with (itself included), in index order.
    fn neighbours(&self, a: usize) -> impl Iterator<Item = usize> + '_ {
        let a = u32::try_from(a).unwrap_or(u32::MAX);
        let start = self.0.partition_point(|&(x, _)| x < a);
        self.0[start..]
            .iter()
            .take_while(move |&&(x, _)| x == a)
            .map(|&(_, b)| b as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        accept_claim, claim_is_consistent, relay_needed, stats_moved, sync_prefix, take_delta,
        Claim, Forgotten, Ignored, Link, LiveGraph, Reports, MAX_CLOCK_SKEW_MS,
    };
    use crate::node::replica::{Applied, Replica};
    use crate::wire::{NodeStats, StatValue, Value};
    use std::time::{Duration, Instant};
    use uuid::Uuid;

    fn claim(node: &str, incarnation: Uuid, boot_ms: u64) -> Claim<'_> {
        Claim {
            node,
            incarnation,
            boot_ms,
        }
    }

    #[test]
    fn syncing_a_prefix_sets_the_new_keys_tombstones_the_gone_and_leaves_the_rest_alone() {
        let mut state = crate::node::replica::NodeState::new(Uuid::new_v4(), 1);
        for k in ["link:a", "link:b", "link:c", "link:d", "method:m"] {
            state.set(k, Value::Set);
        }
        state.remove("link:d", 5);
        let before = state.max_version;
        sync_prefix(&mut state, "link:", ["e", "b", "d"].into_iter(), 9);
        let live: Vec<&str> = state.keys_with("link:").collect();
        assert_eq!(live, ["b", "d", "e"]);
        assert_eq!(state.keys_with("method:").collect::<Vec<_>>(), ["m"]);
        // a and c tombstoned, d and e set: four changes, b untouched.
        assert_eq!(state.max_version, before + 4);
        let after = state.max_version;
        sync_prefix(&mut state, "link:", ["d", "e", "b"].into_iter(), 10);
        assert_eq!(
            state.max_version, after,
            "the same set again changes nothing"
        );
        sync_prefix(&mut state, "link:", std::iter::empty(), 11);
        assert_eq!(state.keys_with("link:").count(), 0);
        assert_eq!(state.max_version, after + 3);
    }

    #[test]
    fn views_are_the_same_when_their_members_are_equal_shared_or_not() {
        let m = |name: &str, pid: u32| {
            std::sync::Arc::new(super::Member {
                name: name.to_owned(),
                incarnation: Uuid::nil(),
                role: String::new(),
                links: ["a", "b"].map(str::to_owned).into(),
                stats: NodeStats {
                    pid,
                    ..NodeStats::default()
                },
                methods: std::sync::Arc::new([]),
                http: Vec::new(),
            })
        };
        let mut view = super::MembershipView::alone("a");
        view.members.insert("a".into(), m("a", 1));
        view.members.insert("b".into(), m("b", 2));
        let mut copy = view.clone();
        assert!(view.same_as(&copy));
        copy.members.insert("b".into(), m("b", 2));
        assert!(view.same_as(&copy), "an equal member built again");
        copy.members.insert("b".into(), m("b", 3));
        assert!(!view.same_as(&copy), "a member's stats changed");
        let mut fewer = view.clone();
        fewer.members.remove("b");
        assert!(!view.same_as(&fewer) && !fewer.same_as(&view));
        let mut down = view.clone();
        down.down.insert("c".into());
        assert!(!view.same_as(&down));
    }

    #[test]
    fn a_record_is_relayed_only_to_a_link_its_origin_does_not_report() {
        let mut replica = Replica::new();
        let origin = replica.own("o", Uuid::new_v4(), 1);
        for k in ["link:b", "link:d", "link:zz"] {
            origin.set(k, Value::Set);
        }
        origin.remove("link:c", 2);
        let links = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        let needed = |mine: &[&str]| relay_needed(&replica, &links(mine), "a", "o");
        assert!(
            !needed(&["a", "o"]),
            "a star's worker: only the sender and the origin"
        );
        assert!(
            !needed(&["a", "b", "d", "o", "zz"]),
            "a mesh: the origin reaches them all"
        );
        assert!(
            needed(&["a", "b", "c"]),
            "the origin's link to c is a tombstone"
        );
        assert!(needed(&["a", "e"]));
        assert!(
            needed(&["0", "b"]),
            "a link sorted before every reported one"
        );
        assert!(
            needed(&["b", "zzz"]),
            "a link sorted after every reported one"
        );
        assert!(
            relay_needed(&replica, &links(&["a", "b"]), "a", "unknown"),
            "an origin not held reports nothing"
        );
    }

    #[test]
    fn a_delta_from_its_own_link_must_name_the_authenticated_incarnation() {
        let (real, forged) = (Uuid::new_v4(), Uuid::new_v4());
        let link = Link {
            via: "x",
            via_incarnation: real,
            linked: true,
        };
        assert!(claim_is_consistent(claim("x", real, 5), &link, None).is_ok());
        assert!(claim_is_consistent(claim("x", forged, 9), &link, None).is_err());
    }

    #[test]
    fn a_relayed_delta_is_ignored_while_the_node_has_its_own_live_link() {
        let real = Uuid::new_v4();
        let held = Some((real, 5));
        let mut link = Link {
            via: "y",
            via_incarnation: Uuid::new_v4(),
            linked: true,
        };
        let restart = claim("x", Uuid::new_v4(), 6);
        assert!(claim_is_consistent(restart, &link, held).is_err());
        assert!(claim_is_consistent(claim("x", real, 5), &link, held).is_err());
        link.linked = false;
        assert!(claim_is_consistent(restart, &link, held).is_ok());
    }

    #[test]
    fn a_relayed_delta_must_agree_with_the_held_incarnation_and_boot_time() {
        let real = Uuid::new_v4();
        let held = Some((real, 5));
        let link = Link {
            via: "y",
            via_incarnation: Uuid::new_v4(),
            linked: false,
        };
        let ok = |c: Claim<'_>| claim_is_consistent(c, &link, held).is_ok();
        assert!(ok(claim("x", real, 5)), "the same incarnation");
        assert!(!ok(claim("x", real, 7)), "the same incarnation rebooted");
        assert!(
            !ok(claim("x", Uuid::new_v4(), 5)),
            "a new incarnation booted no later"
        );
        assert!(ok(claim("x", Uuid::new_v4(), 6)), "a restart");
    }

    #[test]
    fn a_forged_incarnation_from_the_future_cannot_keep_the_live_node_down() {
        let now = 1_000_000_000;
        let (real, forged) = (Uuid::new_v4(), Uuid::new_v4());
        let relay = Link {
            via: "y",
            via_incarnation: Uuid::new_v4(),
            linked: false,
        };
        assert_eq!(
            accept_claim(
                claim("x", forged, now + MAX_CLOCK_SKEW_MS + 1),
                &relay,
                None,
                now
            ),
            Err(Ignored::Future)
        );
        // Relayed while unlinked, four minutes ahead: indistinguishable from a restart.
        let mut replica = Replica::new();
        let mut liar = Replica::new();
        liar.own("x", forged, now + 4 * 60 * 1000)
            .set("role", Value::Text("worker".into()));
        let lie = liar.delta_for(&[], 1 << 20, |_| false).remove(0);
        let taken = take_delta(&mut replica, lie, &relay, now, 0, 100);
        assert!(matches!(taken, Ok(Applied::New(_))));
        // The real x, on its own link, replaces it whole.
        let mut real_x = Replica::new();
        real_x
            .own("x", real, now)
            .set("role", Value::Text("worker".into()));
        let own = Link {
            via: "x",
            via_incarnation: real,
            linked: true,
        };
        let truth = real_x.delta_for(&[], 1 << 20, |_| false).remove(0);
        let taken = take_delta(&mut replica, truth, &own, now, 0, 100);
        assert!(matches!(taken, Ok(Applied::New(_))));
        assert_eq!(replica.get("x").map(|s| s.incarnation), Some(real));
    }

    #[test]
    fn stats_are_sent_again_only_past_their_threshold() {
        let sent = NodeStats {
            cpus: 2,
            rss_bytes: 1_000_000,
            load_avg: [0.5, 0.0, 0.0],
            ..NodeStats::default()
        };
        let mut now = sent.clone();
        now.uptime_s = 99;
        now.free_mem_bytes = 12;
        now.load_avg[0] = 0.69; // 0.095 per CPU
        now.rss_bytes = 1_090_000; // 9 %
        assert!(!stats_moved(&sent, &now));
        now.load_avg[0] = 0.71;
        assert!(stats_moved(&sent, &now), "load moved 0.105 per CPU");
        now.load_avg[0] = 0.5;
        now.rss_bytes = 1_100_000;
        assert!(stats_moved(&sent, &now), "RSS moved 10 %");
        now.rss_bytes = sent.rss_bytes;
        let busy = NodeStats {
            load_avg: [6.0, 0.0, 0.0], // 3 per CPU
            ..sent.clone()
        };
        let mut later = busy.clone();
        later.load_avg[0] = 6.5; // 0.25 per CPU: under a tenth of 3
        assert!(!stats_moved(&busy, &later));
        later.load_avg[0] = 6.7; // 0.35 per CPU
        assert!(
            stats_moved(&busy, &later),
            "a busy node's load moved a tenth"
        );
        now.rss_bytes = sent.rss_bytes;
        now.extra.insert("jobs".into(), StatValue::Int(1));
        assert!(stats_moved(&sent, &now), "a custom stat changed");
    }

    #[test]
    fn a_forgotten_incarnation_is_ignored_for_its_time_and_a_new_one_at_once_is_not() {
        let keep = Duration::from_secs(10);
        let mut f = Forgotten::new(keep, 8);
        let t0 = Instant::now();
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        f.mark("member-1", old, t0);
        assert!(f.holds("member-1", old, t0 + Duration::from_secs(9)));
        assert!(
            !f.holds("member-1", new, t0),
            "a new incarnation starts afresh"
        );
        assert!(!f.holds("member-2", old, t0));
        assert!(!f.holds("member-1", old, t0 + keep), "the mark has run out");
        f.expire(t0 + keep);
        assert_eq!(f.len(), 0);
        f.mark("member-1", old, t0);
        f.lift("member-1");
        assert!(
            !f.holds("member-1", old, t0),
            "the member spoke on its own link"
        );
    }

    #[test]
    fn forgotten_marks_are_bounded_and_the_oldest_goes_first() {
        let mut f = Forgotten::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let inc: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        f.mark("a", inc[0], t0);
        f.mark("b", inc[1], t0 + Duration::from_millis(1));
        f.mark("c", inc[2], t0 + Duration::from_millis(2));
        assert_eq!(f.len(), 2);
        assert!(!f.holds("a", inc[0], t0 + Duration::from_millis(3)));
        assert!(f.holds("b", inc[1], t0 + Duration::from_millis(3)));
        assert!(f.holds("c", inc[2], t0 + Duration::from_millis(3)));
    }

    #[test]
    fn the_live_graph_lists_each_nodes_pairs_in_index_order() {
        let mut g = LiveGraph::default();
        for (a, b) in [(5, 1), (1, 5), (1, 1), (5, 5), (1, 5), (9, 9)] {
            g.add(a, b);
        }
        g.finish();
        assert_eq!(g.neighbours(1).collect::<Vec<_>>(), [1, 5]);
        assert_eq!(g.neighbours(5).collect::<Vec<_>>(), [1, 5]);
        assert_eq!(g.neighbours(9).collect::<Vec<_>>(), [9]);
        assert_eq!(g.neighbours(2).count(), 0);
    }

    #[test]
    fn reports_list_each_reported_link_once_in_index_order_across_words() {
        let mut r = Reports::new(130);
        r.set_row(3, vec![129, 0, 64, 63, 65, 64]);
        r.set_row(129, vec![3]);
        r.set_row(200, vec![1]); // out of range: ignored
        r.set_row(1, vec![200]);
        assert_eq!(r.reported_by(3).collect::<Vec<_>>(), [0, 63, 64, 65, 129]);
        assert_eq!(r.reported_by(129).collect::<Vec<_>>(), [3]);
        assert_eq!(r.reported_by(1).count(), 0);
        assert_eq!(r.reported_by(500).count(), 0);
        assert!(r.has(3, 129) && r.has(129, 3));
        assert!(!r.has(3, 1) && !r.has(200, 1) && !r.has(1, 200));
    }

    #[test]
    fn an_edited_report_row_stays_sorted_without_repeats_and_ignores_what_is_out_of_range() {
        let mut r = Reports::new(10);
        r.set_row(2, vec![7, 1]);
        r.set_edge(2, 4, true);
        r.set_edge(2, 4, true);
        r.set_edge(2, 0, true);
        r.set_edge(2, 7, false);
        r.set_edge(2, 9, false); // not there: nothing to remove
        r.set_edge(2, 10, true); // out of range
        r.set_edge(11, 1, true); // no such row
        assert_eq!(r.reported_by(2).collect::<Vec<_>>(), [0, 1, 4]);
        assert_eq!(r.reported_by(11).count(), 0);
    }
}
