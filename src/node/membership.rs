//! Membership: this node's view of the cluster, its failure detector, and the flooding of
//! heartbeats and statuses. Supervised by NodeSupervisor.
//!
//! Every node floods a [`Status`] (its replicated state and its live links) when a master's
//! heartbeat tick reaches it, when its own links change, and on its own clock when no tick came
//! for 1.5 intervals (topologies without a master). A status or tick is forwarded once, to every
//! link but the one it came on, and only if it is newer than what this node holds, so floods
//! stop by themselves. A status is not forwarded to its origin nor to the peers the origin
//! reports links to: the origin sent it to them itself (in a mesh nobody relays at all).
//!
//! A node is **up** when it is reachable from here over edges both ends report, and its status
//! is fresh (younger than `failure_threshold` heartbeat intervals). So a killed node is down as
//! soon as its neighbours' links drop, and a hung one after the threshold; when it comes back
//! with a new incarnation it is up again. Each change is logged once
//! (`membership: worker-2 up` / `down`), the live graph goes to the Router, and the view goes
//! to the shared watch channel.
//!
//! Bounds: only nodes named in the configuration are tracked; statuses that do not fit a full
//! link queue are dropped (the next one supersedes them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use uuid::Uuid;

use super::router::{GraphChanged, Router};
use super::shared::NodeShared;
use super::supervision::guard;
use crate::topology::Graph;
use crate::wire::{encode_message, Heartbeat, Message, NodeStats, Status};

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub incarnation: Uuid,
    pub role: String,
    pub links: Vec<String>,
    pub stats: NodeStats,
}

/// This node's view of the cluster: itself and every node it considers up.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipView {
    pub me: String,
    pub members: BTreeMap<String, Member>,
}

impl MembershipView {
    pub fn alone(me: &str) -> Self {
        MembershipView {
            me: me.to_owned(),
            members: BTreeMap::new(),
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

/// The set of peers this node has a live link to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinksChanged(pub BTreeSet<String>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct StatusReceived {
    pub via: String,
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
    received: Instant,
}

pub struct Membership {
    shared: Arc<NodeShared>,
    router: Option<Addr<Router>>,
    statuses: HashMap<String, Known>,
    my_links: BTreeSet<String>,
    version: u64,
    up: BTreeSet<String>,
    last_announce: Option<Instant>,
    last_tick: Option<Instant>,
    ticks_seen: HashMap<String, (Uuid, u64)>,
}

/// Statuses and ticks come this often, so a mailbox this deep never fills in steady state.
const MEMBERSHIP_MAILBOX: usize = 1024;

impl Membership {
    pub fn new(shared: Arc<NodeShared>) -> Self {
        Membership {
            shared,
            router: None,
            statuses: HashMap::new(),
            my_links: BTreeSet::new(),
            version: 0,
            up: BTreeSet::new(),
            last_announce: None,
            last_tick: None,
            ticks_seen: HashMap::new(),
        }
    }

    fn interval(&self) -> Duration {
        self.shared.heartbeat_interval()
    }

    fn is_member(&self, name: &str) -> bool {
        name != self.shared.name() && self.shared.config.node(name).is_some()
    }

    /// Send `msg` on every live link whose peer `skip` does not name.
    fn flood(&self, msg: &Message, skip: impl Fn(&str) -> bool) {
        let table = self.shared.routes.load();
        let mut links = table.links().filter(|l| !skip(&l.peer)).peekable();
        if links.peek().is_none() {
            return;
        }
        let frame = match encode_message(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(node = %self.shared.name(), "cannot encode {}: {e}", msg.kind());
                return;
            }
        };
        for link in links {
            let _ = link
                .tx
                .try_send(super::session::Outbound::Frame(frame.clone()));
        }
    }

    /// Flood this node's status (its heartbeat answer).
    fn announce(&mut self) {
        self.version += 1;
        self.last_announce = Some(Instant::now());
        let status = Status {
            node: self.shared.name().to_owned(),
            incarnation: self.shared.incarnation,
            boot_ms: self.shared.boot_ms,
            version: self.version,
            role: self.shared.me.role.to_string(),
            links: self.my_links.iter().cloned().collect(),
            stats: (**self.shared.stats.load()).clone(),
        };
        self.flood(&Message::Status(status), |_| false);
    }

    fn fresh(&self, name: &str) -> Option<&Status> {
        let timeout = self.shared.failure_timeout();
        self.statuses
            .get(name)
            .filter(|k| k.received.elapsed() <= timeout)
            .map(|k| &k.status)
    }

    /// Recompute reachability; log and publish what changed.
    fn recompute(&mut self) {
        let me = self.shared.name().to_owned();
        let reports = |a: &Status, b: &str| a.links.iter().any(|l| l == b);
        let mut all = Graph::new();
        all.add_node(&me);
        for peer in &self.my_links {
            if self.fresh(peer).is_some_and(|s| reports(s, &me)) {
                all.add_edge(&me, peer);
            }
        }
        for name in self.statuses.keys() {
            let Some(status) = self.fresh(name) else {
                continue;
            };
            for other in status.links.iter().filter(|o| **o != me) {
                if self.fresh(other).is_some_and(|s| reports(s, name)) {
                    all.add_edge(name, other);
                }
            }
        }
        let reachable = all.reachable_from(&me);
        let mut graph = Graph::new();
        for n in &reachable {
            graph.add_node(n);
            for m in all.neighbours(n).filter(|m| reachable.contains(*m)) {
                graph.add_edge(n, m);
            }
        }
        let up: BTreeSet<String> = reachable.into_iter().filter(|n| *n != me).collect();
        for gone in self.up.difference(&up) {
            tracing::info!(node = %me, "membership: {gone} down");
        }
        for new in up.difference(&self.up) {
            tracing::info!(node = %me, "membership: {new} up");
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
                    },
                );
            }
        }
        MembershipView {
            me: self.shared.name().to_owned(),
            members,
        }
    }

    fn on_status(&mut self, via: String, mut status: Status) {
        if !self.is_member(&status.node) {
            tracing::debug!(node = %self.shared.name(), via = %via, "status from unknown node {:?} ignored", status.node);
            return;
        }
        let newer = match self.statuses.get(&status.node) {
            None => true,
            Some(k) => (status.boot_ms, status.version) > (k.status.boot_ms, k.status.version),
        };
        if !newer {
            return;
        }
        // A peer can only name configured nodes; anything else is noise, not graph.
        let config = &self.shared.config;
        status.links.retain(|l| config.node(l).is_some());
        status.links.truncate(config.nodes.len());
        // The origin sent its status to each of its linked peers itself: relaying it to them
        // (or back to the origin) only makes copies they drop. In a mesh this turns the
        // 2E − (N−1) frames of a plain flood into N−1.
        let direct: BTreeSet<&str> = status.links.iter().map(String::as_str).collect();
        let origin = status.node.as_str();
        self.flood(&Message::Status(status.clone()), |peer| {
            peer == via || peer == origin || direct.contains(peer)
        });
        let changed = self.statuses.get(&status.node).is_none_or(|k| {
            k.status.links != status.links || k.status.incarnation != status.incarnation
        }) || !self.up.contains(&status.node);
        let name = status.node.clone();
        self.statuses.insert(
            name,
            Known {
                status,
                received: Instant::now(),
            },
        );
        if changed {
            self.recompute();
        }
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
        self.flood(&Message::Heartbeat(hb), |peer| peer == via);
        self.last_tick = Some(Instant::now());
        if self
            .last_announce
            .is_none_or(|t| t.elapsed() >= self.interval() / 2)
        {
            self.announce();
        }
    }

    fn tick(&mut self) {
        let quiet = self.interval() * 3 / 2;
        if self.last_tick.is_none_or(|t| t.elapsed() >= quiet) {
            self.announce();
        }
        self.recompute(); // expires statuses that went stale
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MEMBERSHIP_MAILBOX);
        ctx.run_interval(self.interval(), |act, ctx| {
            guard("membership", ctx, |_| act.tick());
        });
        publish_view(&self.shared, self.view());
    }
}

impl actix::Supervised for Membership {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Rebuild from the next statuses rather than trust state a panic may have torn.
        self.statuses.clear();
        self.ticks_seen.clear();
    }
}

impl Handler<AttachRouter> for Membership {
    type Result = ();

    fn handle(&mut self, msg: AttachRouter, _: &mut Context<Self>) {
        self.router = Some(msg.0);
    }
}

impl Handler<LinksChanged> for Membership {
    type Result = ();

    fn handle(&mut self, msg: LinksChanged, ctx: &mut Context<Self>) {
        guard("membership", ctx, |_| {
            self.my_links = msg.0;
            self.announce();
            self.recompute();
        });
    }
}

impl Handler<StatusReceived> for Membership {
    type Result = ();

    fn handle(&mut self, msg: StatusReceived, ctx: &mut Context<Self>) {
        guard("membership", ctx, |_| self.on_status(msg.via, msg.status));
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
