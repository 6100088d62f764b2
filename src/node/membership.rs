//! Membership: this node's view of the cluster, its failure detector, and the flooding of
//! heartbeats and statuses. Supervised by NodeSupervisor.
//!
//! Every node floods a [`Status`] (its replicated state and its live links) when a master's
//! heartbeat tick reaches it, when its own links change (a burst of changes is announced once,
//! see `Membership::soon`), and on its own clock when no tick came for 1.5 intervals
//! (topologies without a master). A status or tick is forwarded once, to every
//! link but the one it came on, and only if it is newer than what this node holds, so floods
//! stop by themselves. A status is not forwarded to its origin nor to the peers the origin
//! reports links to: the origin sent it to them itself (in a mesh nobody relays at all). A
//! status heard directly from its origin goes to a peer the origin does not link to only from
//! the first (in declared order) of their common neighbours (see `relayed_by_another`), so
//! that peer gets one copy, not one per common neighbour.
//!
//! Cost at scale: a change of this node's links is announced at once after a quiet spell, and
//! then at most every half interval; recomputes are coalesced (see `Membership::soon`); the
//! live graph goes to the Router only when it changed, in index form (no string per edge); the
//! periodic tick starts at a random phase, so nodes started together do not tick together.
//!
//! A node is **up** when it is reachable from here over edges both ends report, and its status
//! is fresh (younger than `failure_threshold` heartbeat intervals). So a killed node is down as
//! soon as its neighbours' links drop, and a hung one after the threshold; when it comes back
//! with a new incarnation it is up again. Each change is logged once
//! (`membership: worker-2 up` / `down`), the live graph goes to the Router, and the view goes
//! to the shared watch channel.
//!
//! Claims are checked (see [`claim_is_consistent`]): a status for node X is taken from X's own
//! link only if it names the incarnation that link's handshake authenticated; while this node
//! has a live link to X, copies of X's status relayed by other peers are ignored (X speaks for
//! itself on that link); a relayed copy must be consistent with what is held for X (the same
//! incarnation keeps its boot time; a new incarnation booted later); and a status whose boot
//! time is more than [`MAX_CLOCK_SKEW_MS`] ahead of this node's clock is ignored (it would
//! outrank the real incarnation). A status on X's own link, with the incarnation that link
//! authenticated, replaces one of any other incarnation whatever its boot time, so a forged
//! incarnation taken while unlinked cannot keep the live node down. The checks are the pure
//! [`accept_status`] and [`normalize_status`] (fuzzed in `fuzz/`, target `status`).
//!
//! Bounds: only names the configuration admits are tracked (declared nodes, and members of its
//! `[[pools]]`, each given the next index when first heard of; see `index_of`), at most
//! `config.member_bound` of them; statuses that do not fit a full link queue are dropped (the
//! next one supersedes them).
//!
//! Pool members come and go: one that went down is listed as down (`MembershipView::down`)
//! for `forget_after`, then forgotten; one that said `bye` on a link of this node is forgotten
//! at once. Nodes further away cannot tell a goodbye from a death and forget it after
//! `forget_after`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How far ahead of this node's clock another node's boot time may be (clock skew between
/// machines); a status claiming a later boot is ignored.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use uuid::Uuid;

use super::router::{GraphChanged, Router};
use super::shared::{random_below, NodeShared};
use super::supervision::guard;
use crate::link::pause::{self, PauseClock};
use crate::topology::IndexedGraph;
use crate::wire::{encode_message, Heartbeat, Message, NodeStats, Status};

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub incarnation: Uuid,
    pub role: String,
    pub links: Vec<String>,
    pub stats: NodeStats,
    /// Methods the node serves, sorted.
    pub methods: Vec<String>,
    /// HTTP backends the node advertises (`HOST:PORT`), sorted.
    pub http: Vec<String>,
}

/// This node's view of the cluster: itself and every node it considers up.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipView {
    pub me: String,
    pub members: BTreeMap<String, Member>,
    /// Pool members (undeclared nodes) that went down and are not forgotten yet.
    pub down: BTreeSet<String>,
}

impl MembershipView {
    pub fn alone(me: &str) -> Self {
        MembershipView {
            me: me.to_owned(),
            members: BTreeMap::new(),
            down: BTreeSet::new(),
        }
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
        self.members.values().filter(move |m| {
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
        if **current == view {
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
/// ledger at the next announcement.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MethodsChanged;

/// A resumable link to `0` came back on a fresh connection after a quiet spell (sent by the
/// Router): what was flooded to it meanwhile died with the old connection, so it is sent the
/// statuses held here at once rather than at the next ticks.
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

/// The set of peers this node has a live link to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinksChanged(pub BTreeSet<String>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct StatusReceived {
    pub via: String,
    /// The incarnation the link's handshake authenticated for `via`.
    pub via_incarnation: Uuid,
    pub status: Status,
}

/// A master's tick; `via` is the link it came on (this node's own name for its own Master).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HeartbeatReceived {
    pub via: String,
    pub heartbeat: Heartbeat,
}

struct Known {
    status: Status,
    /// `status.links` as indices into [`Membership::names`].
    links: Vec<usize>,
    received: Instant,
}

pub struct Membership {
    shared: Arc<NodeShared>,
    /// The configured nodes in declared order, and each one's index: statuses arrive by the
    /// thousand in a large mesh, and their links are checked and counted by index.
    names: Vec<String>,
    ids: HashMap<String, usize>,
    /// Indices into `names` in name order: the order of the live graph's nodes.
    by_name: Vec<usize>,
    router: Option<Addr<Router>>,
    statuses: HashMap<String, Known>,
    my_links: BTreeSet<String>,
    /// Methods this node serves, sorted (read from the ledger when it changed).
    my_methods: Vec<String>,
    /// HTTP backends this node advertises, sorted (read from their ledger when it changed).
    my_http: Vec<String>,
    /// The ledger changed since `my_methods` was read.
    methods_stale: bool,
    /// `my_links` as indices into `names`.
    my_link_ixs: Vec<usize>,
    version: u64,
    up: BTreeSet<String>,
    /// The incarnation each node had when last seen up, so that a restart is logged with its
    /// new incarnation (bounded: configured nodes only).
    last_incarnation: HashMap<String, Uuid>,
    last_announce: Option<Instant>,
    last_tick: Option<Instant>,
    /// The periodic tick's clock: statuses are not stale for this node's own pause.
    pause: PauseClock,
    ticks_seen: HashMap<String, (Uuid, u64)>,
    /// A recompute is scheduled (see [`Membership::soon`]).
    recompute_pending: bool,
    /// An announcement of this node's links is scheduled with it.
    announce_pending: bool,
    /// When a change of this node's links was last announced.
    links_announced: Option<Instant>,
    /// The bits of the live graph last sent to the Router (see `recompute`).
    last_graph: Option<Vec<u64>>,
    /// How long the last recompute took (see `soon`).
    recompute_cost: Duration,
    /// Undeclared (pool) members that went down, and since when: forgotten after
    /// `forget_after`.
    down_since: HashMap<String, Instant>,
}

/// Statuses and ticks come this often, so a mailbox this deep never fills in steady state.
const MEMBERSHIP_MAILBOX: usize = 1024;

/// The longest a membership change waits for the rest of its burst (a tenth of the heartbeat
/// interval, at most this).
const COALESCE_MAX: Duration = Duration::from_millis(50);

impl Membership {
    pub fn new(shared: Arc<NodeShared>) -> Self {
        let names: Vec<String> = shared.config.nodes.iter().map(|n| n.name.clone()).collect();
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut by_name: Vec<usize> = (0..names.len()).collect();
        by_name.sort_by(|&a, &b| names.get(a).cmp(&names.get(b)));
        let shared_interval = shared.heartbeat_interval();
        Membership {
            shared,
            names,
            ids,
            by_name,
            router: None,
            statuses: HashMap::new(),
            my_links: BTreeSet::new(),
            my_methods: Vec::new(),
            my_http: Vec::new(),
            methods_stale: true,
            my_link_ixs: Vec::new(),
            version: 0,
            up: BTreeSet::new(),
            last_incarnation: HashMap::new(),
            last_announce: None,
            last_tick: None,
            pause: PauseClock::new(shared_interval),
            ticks_seen: HashMap::new(),
            recompute_pending: false,
            announce_pending: false,
            links_announced: None,
            last_graph: None,
            recompute_cost: Duration::ZERO,
            down_since: HashMap::new(),
        }
    }

    /// The index of `name`; a name not known yet gets the next one if the configuration
    /// admits it (a pool member, first heard of) and the table holds fewer than
    /// `member_bound` names, after forgotten members' slots are reclaimed (see `compact`).
    fn index_of(&mut self, name: &str) -> Option<usize> {
        if let Some(&i) = self.ids.get(name) {
            return Some(i);
        }
        if !self.shared.config.admits(name) {
            return None;
        }
        if self.names.len() >= self.shared.config.member_bound {
            self.compact();
            if self.names.len() >= self.shared.config.member_bound {
                tracing::debug!(node = %self.shared.name(), "member {name:?} not tracked: {} members already", self.names.len());
                return None;
            }
        }
        let i = self.names.len();
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), i);
        let at = self
            .by_name
            .partition_point(|&j| self.names.get(j).is_some_and(|n| n.as_str() < name));
        self.by_name.insert(at, i);
        Some(i)
    }

    /// Rebuild the table without the names nothing refers to any more (forgotten pool
    /// members): declared nodes first, in declared order, then the others. Rare: only when
    /// the table is full.
    fn compact(&mut self) {
        let keep: BTreeSet<&String> = self
            .statuses
            .keys()
            .chain(&self.my_links)
            .chain(&self.up)
            .chain(self.down_since.keys())
            .collect();
        let declared = self.shared.config.nodes.len();
        let names: Vec<String> = self
            .names
            .iter()
            .enumerate()
            .filter(|(i, n)| *i < declared || keep.contains(n))
            .map(|(_, n)| n.clone())
            .collect();
        if names.len() == self.names.len() {
            return;
        }
        let ids: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        for known in self.statuses.values_mut() {
            known.links = known
                .status
                .links
                .iter()
                .filter_map(|l| ids.get(l).copied())
                .collect();
        }
        self.my_link_ixs = self
            .my_links
            .iter()
            .filter_map(|l| ids.get(l).copied())
            .collect();
        let mut by_name: Vec<usize> = (0..names.len()).collect();
        by_name.sort_by(|&a, &b| names.get(a).cmp(&names.get(b)));
        self.names = names;
        self.ids = ids;
        self.by_name = by_name;
        self.last_graph = None;
    }

    /// Forget the pool member `name` (gone for `forget_after`, or left with `bye`): it
    /// leaves every view of this node. Declared nodes are never forgotten.
    fn forget(&mut self, name: &str) {
        if self.shared.config.node(name).is_some() {
            return;
        }
        let listed = self.down_since.remove(name).is_some() | self.statuses.remove(name).is_some();
        self.last_incarnation.remove(name);
        self.ticks_seen.remove(name);
        let was_up = self.up.remove(name);
        if was_up {
            self.shared.streams.end_if_cut(name, "it left the cluster");
        }
        // A link that never carried a status (a joining node reading the settings) was never
        // listed: nothing to say.
        if listed || was_up {
            tracing::info!(node = %self.shared.name(), "membership: {name} forgotten");
        }
    }

    /// Recompute (and, if `announce`, announce this node's links) after a short delay rather
    /// than at once: changes come in bursts (a starting node's links come up one by one, and
    /// each of its peers announces the new link), and one status and one recompute (and one
    /// route computation in the Router) cover the whole burst. Without this, a node of a
    /// 32-node mesh announced 31 times while starting, each status went to every node, every
    /// node recomputed on each, and the cluster spent its CPU on that and never converged.
    /// The first link change after a quiet spell is still announced at once; later ones wait
    /// until half an interval has passed since the last announcement (a 64-node mesh, whose
    /// nodes announced every 50 ms while starting, flooded itself into link timeouts). The
    /// recompute delay is a tenth of the heartbeat interval (at most 50 ms), or 20 times what
    /// the last recompute took if that is longer (at most an interval): recomputing then costs
    /// at most about 5% of the node's thread, however large the graph and however loaded the
    /// machine.
    fn soon(&mut self, ctx: &mut Context<Self>, announce: bool) {
        let delay = (self.interval() / 10)
            .min(COALESCE_MAX)
            .max(self.recompute_cost * 20)
            .min(self.interval());
        if announce && !self.announce_pending {
            let gap = self.announce_gap();
            match self.links_announced.map(|t| t.elapsed()) {
                Some(since) if since < gap => {
                    self.announce_pending = true;
                    ctx.run_later(gap - since, |act, ctx| {
                        act.announce_pending = false;
                        act.links_announced = Some(Instant::now());
                        guard("membership", ctx, |_| act.announce());
                    });
                }
                _ => {
                    self.links_announced = Some(Instant::now());
                    guard("membership", ctx, |_| self.announce());
                }
            }
        }
        if self.recompute_pending {
            return;
        }
        self.recompute_pending = true;
        ctx.run_later(delay, |act, ctx| {
            act.recompute_pending = false;
            guard("membership", ctx, |_| act.recompute());
        });
    }

    /// The least time between two announcements of this node's links.
    fn announce_gap(&self) -> Duration {
        self.interval() / 2
    }

    fn interval(&self) -> Duration {
        self.shared.heartbeat_interval()
    }

    fn is_member(&self, name: &str) -> bool {
        name != self.shared.name() && self.ids.contains_key(name)
    }

    /// Send the message `make` builds on every live link whose peer `skip` does not name
    /// (built and encoded only if there is such a link).
    fn flood(&self, make: impl FnOnce() -> Message, skip: impl Fn(&str) -> bool) {
        let table = self.shared.routes.load();
        let mut links = table.links().filter(|l| !skip(&l.peer)).peekable();
        if links.peek().is_none() {
            return;
        }
        let msg = make();
        let frame = match encode_message(&msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(node = %self.shared.name(), "cannot encode {}: {e}", msg.kind());
                return;
            }
        };
        for link in links {
            let _ = link.tx.try_push(frame.clone());
        }
    }

    /// Send `peer` every fresh status held of another node, and this node's own. Without it a
    /// link back for less than an interval between two cuts carries no news of the nodes
    /// behind this one, and they look stale to `peer` although every link is alive. The
    /// receiver keeps what is newer than what it holds and drops the rest.
    fn resync(&mut self, peer: &str) {
        let table = self.shared.routes.load();
        let Some(link) = table.links().find(|l| l.peer == peer) else {
            return;
        };
        let timeout = self.shared.failure_timeout();
        let held = self
            .statuses
            .iter()
            .filter(|(name, k)| name.as_str() != peer && k.received.elapsed() <= timeout)
            .map(|(_, k)| Message::Status(Box::new(k.status.clone())));
        for msg in held.chain(std::iter::once(Message::Status(Box::new(
            self.own_status(),
        )))) {
            match encode_message(&msg) {
                Ok(frame) => {
                    let _ = link.tx.try_push(frame);
                }
                Err(e) => {
                    tracing::error!(node = %self.shared.name(), "cannot encode a status: {e}")
                }
            }
        }
    }

    /// Flood this node's status (its heartbeat answer).
    fn announce(&mut self) {
        if self.methods_stale {
            // Read once per announcement at most, however many changes came meanwhile.
            self.methods_stale = false;
            self.my_methods = self.shared.methods.names();
        }
        if let Some(http) = self.shared.backends.take_changed() {
            self.my_http = http;
        }
        self.version += 1;
        self.last_announce = Some(Instant::now());
        let status = self.own_status();
        self.flood(|| Message::Status(Box::new(status)), |_| false);
    }

    /// This node's status at its current version.
    fn own_status(&self) -> Status {
        Status {
            node: self.shared.name().to_owned(),
            incarnation: self.shared.incarnation,
            boot_ms: self.shared.boot_ms,
            version: self.version,
            role: self.shared.me.role.to_string(),
            links: self.my_links.iter().cloned().collect(),
            stats: (**self.shared.stats.load()).clone(),
            methods: self.my_methods.clone(),
            http: self.my_http.clone(),
        }
    }

    fn fresh(&self, name: &str) -> Option<&Status> {
        let timeout = self.shared.failure_timeout();
        self.statuses
            .get(name)
            .filter(|k| k.received.elapsed() <= timeout)
            .map(|k| &k.status)
    }

    /// Recompute reachability; log and publish what changed. Works on node indices and is
    /// linear in the number of links reported: it runs on every tick and after every burst
    /// of changes, and a 64-node mesh reports 4032 links.
    fn recompute(&mut self) {
        let started = Instant::now();
        self.recompute_graph();
        self.recompute_cost = started.elapsed();
    }

    fn recompute_graph(&mut self) {
        let me = self.shared.name().to_owned();
        let timeout = self.shared.failure_timeout();
        let Some(&me_ix) = self.ids.get(&me) else {
            return;
        };
        // reports.has(a, b): a reports a live link to b (my own links, and fresh statuses).
        let mut reports = Reports::new(self.names.len());
        for peer in &self.my_links {
            if let Some(&b) = self.ids.get(peer) {
                reports.set(me_ix, b);
            }
        }
        for (name, known) in &self.statuses {
            if known.received.elapsed() > timeout {
                continue;
            }
            if let Some(&a) = self.ids.get(name) {
                for &b in &known.links {
                    reports.set(a, b);
                }
            }
        }
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
                if edge(a, b) && reachable.get(b) == Some(&false) {
                    if let Some(r) = reachable.get_mut(b) {
                        *r = true;
                    }
                    order.push(b);
                }
            }
        }
        // The live graph as bits (a row per reachable node): most recomputes (every tick)
        // find the graph of last time, and then the Router is told nothing changed and keeps
        // its routes.
        let mut live = Reports::new(self.names.len());
        for &a in &order {
            for b in reports.reported_by(a).filter(|&b| edge(a, b)) {
                live.set(a, b);
            }
            live.set(a, a); // marks a as reachable, isolated or not
        }
        let graph = if self.last_graph.as_ref() == Some(&live.bits) {
            None
        } else {
            let graph = self.indexed_graph(&live, &reachable);
            self.last_graph = Some(live.bits);
            graph.map(Arc::new)
        };
        let up: BTreeSet<String> = order
            .iter()
            .filter(|&&a| a != me_ix)
            .filter_map(|&a| self.names.get(a).cloned())
            .collect();
        for gone in self.up.difference(&up) {
            tracing::warn!(node = %me, "membership: {gone} down");
            self.shared.streams.end_if_cut(gone, "it was declared down");
            if self.shared.config.node(gone).is_none() {
                self.down_since.insert(gone.clone(), Instant::now());
            }
        }
        for name in &up {
            self.down_since.remove(name);
            self.log_up(name);
        }
        self.up = up;
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
    fn indexed_graph(&self, live: &Reports, reachable: &[bool]) -> Option<IndexedGraph> {
        let is_reachable = |a: usize| reachable.get(a) == Some(&true);
        let mut position = vec![usize::MAX; self.names.len()];
        let mut names = Vec::new();
        for &a in self.by_name.iter().filter(|&&a| is_reachable(a)) {
            if let Some(p) = position.get_mut(a) {
                *p = names.len();
            }
            names.push(self.names.get(a).cloned().unwrap_or_default());
        }
        let neighbours = self
            .by_name
            .iter()
            .filter(|&&a| is_reachable(a))
            .map(|&a| {
                self.by_name
                    .iter()
                    .filter(|&&b| b != a && live.has(a, b))
                    .filter_map(|&b| position.get(b).copied().filter(|&p| p != usize::MAX))
                    .collect()
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
        let Some(now) = self.statuses.get(name).map(|k| k.status.incarnation) else {
            return;
        };
        let before = self.last_incarnation.insert(name.to_owned(), now);
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

    fn view(&self) -> MembershipView {
        let mut members = BTreeMap::new();
        members.insert(
            self.shared.name().to_owned(),
            Member {
                name: self.shared.name().to_owned(),
                incarnation: self.shared.incarnation,
                role: self.shared.me.role.to_string(),
                links: self.my_links.iter().cloned().collect(),
                stats: (**self.shared.stats.load()).clone(),
                methods: self.my_methods.clone(),
                http: self.my_http.clone(),
            },
        );
        for name in &self.up {
            if let Some(s) = self.fresh(name) {
                members.insert(
                    name.clone(),
                    Member {
                        name: name.clone(),
                        incarnation: s.incarnation,
                        role: s.role.clone(),
                        links: s.links.clone(),
                        stats: s.stats.clone(),
                        methods: s.methods.clone(),
                        http: s.http.clone(),
                    },
                );
            }
        }
        MembershipView {
            me: self.shared.name().to_owned(),
            members,
            down: self.down_since.keys().cloned().collect(),
        }
    }

    /// Take a status in and relay it; true if the graph or the members may have changed.
    fn on_status(&mut self, via: String, via_incarnation: Uuid, mut status: Status) -> bool {
        // Pool members get an index when first heard of (the node and the links it reports).
        if status.node != self.shared.name() && self.index_of(&status.node).is_some() {
            for l in status.links.iter().take(self.shared.config.member_bound) {
                let _ = self.index_of(l);
            }
        }
        if !self.is_member(&status.node) {
            tracing::debug!(node = %self.shared.name(), via = %via, "status from unknown node {:?} ignored", status.node);
            return false;
        }
        let held = self.statuses.get(&status.node).map(|k| &k.status);
        let link = Link {
            via: &via,
            via_incarnation,
            linked: self.my_links.contains(&status.node),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        match accept_status(&status, &link, held, now_ms) {
            Ok(()) => {}
            Err(Ignored::Stale) => return false,
            Err(why) => {
                tracing::debug!(node = %self.shared.name(), via = %via,
                    "status of {} (incarnation {}) ignored: {why}", status.node, status.incarnation);
                return false;
            }
        }
        normalize_status(&mut status, |l| self.ids.contains_key(l), self.names.len());
        let links: Vec<usize> = status
            .links
            .iter()
            .filter_map(|l| self.ids.get(l).copied())
            .collect();
        // The origin sent its status to each of its linked peers itself: relaying it to them
        // (or back to the origin) only makes copies they drop. In a mesh this turns the
        // 2E − (N−1) frames of a plain flood into N−1.
        let origin = status.node.as_str();
        let mut origin_linked = vec![false; self.names.len()];
        for &l in &links {
            if let Some(b) = origin_linked.get_mut(l) {
                *b = true;
            }
        }
        // Which of my peers need a copy, decided by index (no name lookups per link): in a
        // complete mesh none does, and this runs for every status received.
        let (via_ix, origin_ix) = (self.ids.get(&via).copied(), self.ids.get(origin).copied());
        let me_ix = self.ids.get(self.shared.name()).copied();
        let direct = via_ix.is_some() && via_ix == origin_ix;
        let needs = |p: usize| {
            Some(p) != via_ix
                && Some(p) != origin_ix
                && origin_linked.get(p) != Some(&true)
                && !(direct && self.relayed_by_another(p, &origin_linked, me_ix))
        };
        let targets: Vec<usize> = self
            .my_link_ixs
            .iter()
            .copied()
            .filter(|&p| needs(p))
            .collect();
        if !targets.is_empty() {
            let mut target = vec![false; self.names.len()];
            for p in targets {
                if let Some(t) = target.get_mut(p) {
                    *t = true;
                }
            }
            self.flood(
                || Message::Status(Box::new(status.clone())),
                |peer| {
                    self.ids
                        .get(peer)
                        .is_none_or(|&ix| target.get(ix) != Some(&true))
                },
            );
        }
        let changed = self.statuses.get(&status.node).is_none_or(|k| {
            k.links != links
                || k.status.incarnation != status.incarnation
                || k.status.methods != status.methods
                || k.status.http != status.http
        }) || !self.up.contains(&status.node);
        let name = status.node.clone();
        self.statuses.insert(
            name,
            Known {
                status,
                links,
                received: Instant::now(),
            },
        );
        changed
    }

    /// Whether peer `p`, which the origin of a status does not link to, gets that status from
    /// a neighbour of the origin declared before this node (`me_ix`): one that `p`'s last
    /// status reports a link to. Every direct receiver of a status decides the same way, so
    /// `p` gets one relayed copy rather than one from each common neighbour (in a starting
    /// mesh, dozens of copies per status went to each node that joined late, and decoding
    /// them starved its thread until its links timed out). Unknown `p`: no one else is
    /// counted on. A wrong guess (a link that just dropped) costs `p` one version; the next
    /// status comes an interval later.
    fn relayed_by_another(&self, p: usize, origin_linked: &[bool], me_ix: Option<usize>) -> bool {
        let Some(me_ix) = me_ix else {
            return false;
        };
        let Some(known) = self.names.get(p).and_then(|name| self.statuses.get(name)) else {
            return false;
        };
        known
            .links
            .iter()
            .any(|&y| y < me_ix && origin_linked.get(y) == Some(&true))
    }

    fn on_heartbeat(&mut self, via: String, hb: Heartbeat) {
        let own = via == self.shared.name();
        if !own && !self.is_member(&hb.master) {
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
        self.flood(|| Message::Heartbeat(hb.clone()), |peer| peer == via);
        self.last_tick = Some(Instant::now());
        if self
            .last_announce
            .is_none_or(|t| t.elapsed() >= self.interval() / 2)
        {
            self.announce();
        }
    }

    fn tick(&mut self) {
        // After a pause of this node (SIGSTOP), the statuses that came meanwhile are still
        // unread: age the ones held only by the time this node ran (see `pause`).
        let paused = self.pause.tick();
        if !paused.is_zero() {
            tracing::info!(node = %self.shared.name(), "this node did not run for {} ms; silences are judged without that pause", paused.as_millis());
            let now = Instant::now();
            for known in self.statuses.values_mut() {
                known.received = pause::excuse(known.received, paused, now);
            }
        }
        let quiet = self.interval() * 3 / 2;
        // Backends are looked at here rather than sent (see `backends`): a change is
        // advertised within an interval.
        if self.last_tick.is_none_or(|t| t.elapsed() >= quiet) || self.shared.backends.changed() {
            self.announce();
        }
        self.recompute(); // expires statuses that went stale
        let forget_after = self.shared.config.cluster.forget_after;
        let expired: Vec<String> = self
            .down_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= forget_after)
            .map(|(name, _)| name.clone())
            .collect();
        if !expired.is_empty() {
            for name in &expired {
                self.forget(name);
            }
            self.recompute();
        }
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MEMBERSHIP_MAILBOX);
        // Ticks start at a random phase: the nodes of one process started together would
        // otherwise all announce and recompute at the same instant.
        ctx.run_later(random_below(self.interval()), |act, ctx| {
            // A first tick at the phase: the pause clock runs from `new`, so a pause that
            // began before the timer started is noticed too.
            guard("membership", ctx, |_| act.tick());
            ctx.run_interval(act.interval(), |act, ctx| {
                guard("membership", ctx, |_| act.tick());
            });
        });
        publish_view(&self.shared, self.view());
    }
}

impl actix::Supervised for Membership {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The statuses held stay: each is replaced whole, so a panic cannot tear one, and
        // dropping them would declare every node down until their next statuses came. What
        // is derived from them is recomputed and published again.
        self.last_graph = None;
        self.recompute_pending = false;
        self.announce_pending = false;
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
        for peer in &msg.0 {
            let _ = self.index_of(peer);
        }
        self.my_links = msg.0;
        self.my_link_ixs = self
            .my_links
            .iter()
            .filter_map(|l| self.ids.get(l).copied())
            .collect();
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
        if !newer && self.shared.config.node(&peer).is_none() && self.ids.contains_key(&peer) {
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
        guard("membership", ctx, |_| self.resync(&peer));
    }
}

impl Handler<StatusReceived> for Membership {
    type Result = ();

    fn handle(&mut self, msg: StatusReceived, ctx: &mut Context<Self>) {
        let changed = guard("membership", ctx, |_| {
            self.on_status(msg.via, msg.via_incarnation, msg.status)
        });
        if changed == Some(true) {
            self.soon(ctx, false);
        }
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

/// The link a status arrived on, as `claim_is_consistent` sees it.
pub(crate) struct Link<'a> {
    /// The peer at the other end.
    pub via: &'a str,
    /// The incarnation its handshake authenticated.
    pub via_incarnation: Uuid,
    /// Whether this node has a live link to the status's node.
    pub linked: bool,
}

/// Whether a status for node X may be taken, before its age is compared with what is held:
///
/// - from X's own link, only with the incarnation that link authenticated;
/// - from another peer (a relayed copy), never while this node has a live link to X: X sends
///   its statuses on that link itself, so a relayed copy adds nothing but a chance to forge;
/// - a relayed copy of the incarnation held keeps its boot time, and one of another
///   incarnation must have booted later than the one held (a restart).
///
/// A relayed copy about a node this node has no link to, with a new incarnation and a boot time
/// within [`MAX_CLOCK_SKEW_MS`], cannot be told from a restart: it is taken.
fn claim_is_consistent(
    status: &Status,
    link: &Link<'_>,
    held: Option<&Status>,
) -> Result<(), &'static str> {
    if status.node == link.via {
        if status.incarnation != link.via_incarnation {
            return Err("not the incarnation its link authenticated");
        }
        return Ok(());
    }
    if link.linked {
        return Err("relayed while this node has a live link to it");
    }
    match held {
        Some(h) if h.incarnation == status.incarnation && h.boot_ms != status.boot_ms => {
            Err("its incarnation's boot time changed")
        }
        Some(h) if h.incarnation != status.incarnation && status.boot_ms <= h.boot_ms => {
            Err("a new incarnation that did not boot later")
        }
        _ => Ok(()),
    }
}

/// Why a status was not taken (see [`accept_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Ignored {
    #[error("{0}")]
    Inconsistent(&'static str),
    #[error("booted more than {MAX_CLOCK_SKEW_MS} ms in the future")]
    Future,
    /// Not newer than the status held: the ordinary end of a flood, not worth a log line.
    #[error("not newer than the status held")]
    Stale,
}

/// Whether a status for node X is taken, given the link it came on, the status held for X and
/// this node's clock (`now_ms`, ms since the Unix epoch): its claim must be consistent (see
/// [`claim_is_consistent`]), its boot time not more than [`MAX_CLOCK_SKEW_MS`] ahead of
/// `now_ms`, and it must be newer than the one held (boot time, then version). Pure, so that
/// it can be checked against hostile input without a running node.
pub(crate) fn accept_status(
    status: &Status,
    link: &Link<'_>,
    held: Option<&Status>,
    now_ms: u64,
) -> Result<(), Ignored> {
    claim_is_consistent(status, link, held).map_err(Ignored::Inconsistent)?;
    // Incarnations are ordered by boot time: one from the future would outrank the real
    // one until it is restarted. Clocks differ, but not by this much.
    if status.boot_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(Ignored::Future);
    }
    match held {
        // X's own link authenticated this incarnation: it is the live one, whatever boot time
        // another incarnation claimed (a forged one may claim up to the skew ahead, and would
        // otherwise outrank the real node until that time passed).
        Some(h) if status.node == link.via && h.incarnation != status.incarnation => Ok(()),
        Some(h) if (status.boot_ms, status.version) <= (h.boot_ms, h.version) => {
            Err(Ignored::Stale)
        }
        _ => Ok(()),
    }
}

/// Bound what an accepted status claims: only configured nodes (`known`) as links, at most
/// `nodes` of them, and at most `calls::MAX_METHODS` methods, sorted and each once (they are
/// looked up by binary search).
pub(crate) fn normalize_status(status: &mut Status, known: impl Fn(&str) -> bool, nodes: usize) {
    // A peer can only name configured nodes; anything else is noise, not graph.
    status.links.retain(|l| known(l));
    status.links.sort_unstable();
    status.links.dedup();
    status.links.truncate(nodes);
    status.methods.truncate(super::calls::MAX_METHODS);
    status.methods.sort_unstable();
    status.methods.dedup();
    // Backends are dialled by the proxy: only well-formed ones, and no more than a node may
    // advertise.
    status
        .http
        .retain(|a| super::backends::check_address(a).is_ok());
    status.http.truncate(super::backends::MAX_BACKENDS);
    status.http.sort_unstable();
    status.http.dedup();
}

/// Who reports a link to whom, as one bit per ordered pair of configured nodes.
struct Reports {
    n: usize,
    words: usize,
    bits: Vec<u64>,
}

impl Reports {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64);
        Reports {
            n,
            words,
            bits: vec![0; n * words],
        }
    }

    fn set(&mut self, a: usize, b: usize) {
        if a < self.n && b < self.n {
            if let Some(w) = self.bits.get_mut(a * self.words + b / 64) {
                *w |= 1 << (b % 64);
            }
        }
    }

    fn has(&self, a: usize, b: usize) -> bool {
        a < self.n
            && b < self.n
            && self
                .bits
                .get(a * self.words + b / 64)
                .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// The nodes `a` reports links to, in index order.
    fn reported_by(&self, a: usize) -> impl Iterator<Item = usize> + '_ {
        let row = self
            .bits
            .get(a * self.words..(a + 1) * self.words)
            .unwrap_or_default();
        row.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{accept_status, claim_is_consistent, Ignored, Link, Reports, MAX_CLOCK_SKEW_MS};
    use crate::wire::{NodeStats, Status};
    use uuid::Uuid;

    fn status(node: &str, incarnation: Uuid, boot_ms: u64) -> Status {
        Status {
            node: node.into(),
            incarnation,
            boot_ms,
            version: 1,
            role: "worker".into(),
            links: vec![],
            stats: NodeStats::default(),
            methods: vec![],
            http: vec![],
        }
    }

    #[test]
    fn a_status_from_its_own_link_must_name_the_authenticated_incarnation() {
        let (real, forged) = (Uuid::new_v4(), Uuid::new_v4());
        let link = Link {
            via: "x",
            via_incarnation: real,
            linked: true,
        };
        assert!(claim_is_consistent(&status("x", real, 5), &link, None).is_ok());
        assert!(claim_is_consistent(&status("x", forged, 9), &link, None).is_err());
    }

    #[test]
    fn a_relayed_status_is_ignored_while_the_node_has_its_own_live_link() {
        let real = Uuid::new_v4();
        let held = status("x", real, 5);
        let mut link = Link {
            via: "y",
            via_incarnation: Uuid::new_v4(),
            linked: true,
        };
        let restart = status("x", Uuid::new_v4(), 6);
        assert!(claim_is_consistent(&restart, &link, Some(&held)).is_err());
        assert!(claim_is_consistent(&status("x", real, 5), &link, Some(&held)).is_err());
        link.linked = false;
        assert!(claim_is_consistent(&restart, &link, Some(&held)).is_ok());
    }

    #[test]
    fn a_forged_status_from_the_future_cannot_outrank_the_node_on_its_own_link() {
        let now = 1_000_000_000;
        let (real, forged) = (Uuid::new_v4(), Uuid::new_v4());
        let relay = Link {
            via: "y",
            via_incarnation: Uuid::new_v4(),
            linked: false,
        };
        // Relayed while unlinked, four minutes ahead: indistinguishable from a restart.
        let lie = status("x", forged, now + 4 * 60 * 1000);
        assert_eq!(accept_status(&lie, &relay, None, now), Ok(()));
        assert_eq!(
            accept_status(
                &status("x", forged, now + MAX_CLOCK_SKEW_MS + 1),
                &relay,
                None,
                now
            ),
            Err(Ignored::Future)
        );
        let own = Link {
            via: "x",
            via_incarnation: real,
            linked: true,
        };
        assert_eq!(
            accept_status(&status("x", real, now), &own, Some(&lie), now),
            Ok(())
        );
        let held = status("x", real, now);
        assert_eq!(
            accept_status(&status("x", real, now), &own, Some(&held), now),
            Err(Ignored::Stale),
            "the same version again is stale"
        );
    }

    #[test]
    fn a_relayed_status_must_agree_with_the_held_incarnation_and_boot_time() {
        let real = Uuid::new_v4();
        let held = status("x", real, 5);
        let link = Link {
            via: "y",
            via_incarnation: Uuid::new_v4(),
            linked: false,
        };
        let ok = |s: Status| claim_is_consistent(&s, &link, Some(&held)).is_ok();
        assert!(
            ok(status("x", real, 5)),
            "a later version of the same incarnation"
        );
        assert!(!ok(status("x", real, 7)), "the same incarnation rebooted");
        assert!(
            !ok(status("x", Uuid::new_v4(), 5)),
            "a new incarnation booted no later"
        );
        assert!(!ok(status("x", Uuid::new_v4(), 4)));
        assert!(ok(status("x", Uuid::new_v4(), 6)), "a restart");
    }

    #[test]
    fn reports_list_each_reported_link_once_in_index_order_across_words() {
        let mut r = Reports::new(130);
        for b in [129, 0, 64, 63, 65, 64] {
            r.set(3, b);
        }
        r.set(129, 3);
        r.set(200, 1); // out of range: ignored
        r.set(1, 200);
        assert_eq!(r.reported_by(3).collect::<Vec<_>>(), [0, 63, 64, 65, 129]);
        assert_eq!(r.reported_by(129).collect::<Vec<_>>(), [3]);
        assert_eq!(r.reported_by(1).count(), 0);
        assert_eq!(r.reported_by(500).count(), 0);
        assert!(r.has(3, 129) && r.has(129, 3));
        assert!(!r.has(3, 1) && !r.has(200, 1) && !r.has(1, 200));
    }
}
