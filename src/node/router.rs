//! Router: which link(s) an envelope leaves on. Supervised by NodeSupervisor.
//!
//! It owns the table of live links (one per peer, the newest wins) and the routes computed
//! over the live graph that Membership reports, and publishes both as one immutable
//! [`RouteTable`] snapshot. Sessions and publishers read that snapshot on every event without a
//! mailbox hop; only the Router writes it.
//!
//! Routing: a broadcast follows the origin's BFS tree over the live graph, so it reaches every
//! live node once and crosses each tree edge once (N−1 crossings); a targeted event takes the
//! first hop of a shortest path. Dedup (see `dedup`) and the TTL are safety nets.
//!
//! Cost: routes depend on the live graph only, so they are made once per graph Membership
//! reports as changed and shared (behind an `Arc`) by every table built until the next one;
//! their first hops and broadcast trees are computed at the first event that needs them. A
//! table made for new routes shares the link map with the Router; a link coming up or going
//! down copies that map once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;

use super::membership::{publish_view, LinkResumed, LinksChanged, Membership, MembershipView};
use super::session::{Close, LinkHandle, Replaced};
use super::shared::{Fnv, NodeShared};
use super::supervision::guard;
use crate::topology::{Graph, IndexedGraph, Routes};
use crate::wire::Envelope;

/// The live links by peer name.
type LinkMap = HashMap<String, LinkHandle, Fnv>;

/// One consistent view of links and routes.
pub struct RouteTable {
    routes: Arc<Routes>,
    /// Shared with the Router until a link comes or goes: a table made for new routes costs
    /// no copy of a thousand links. Keyed by peer names, which only admitted peers choose,
    /// with FNV: a targeted event looks its hop up here, and SipHash cost more than the rest
    /// of the lookup.
    links: Arc<LinkMap>,
    /// The links this node's own broadcasts leave on, resolved at the first such broadcast:
    /// every publish walks them, and resolving them costs two hash lookups per hop.
    own_broadcast: OnceLock<Vec<LinkHandle>>,
}

impl RouteTable {
    pub fn empty(me: &str) -> Self {
        let mut g = Graph::new();
        g.add_node(me);
        RouteTable::new(Arc::new(g.routes_from(me)), Arc::default())
    }

    fn new(routes: Arc<Routes>, links: Arc<LinkMap>) -> Self {
        RouteTable {
            routes,
            links,
            own_broadcast: OnceLock::new(),
        }
    }

    fn own_broadcast(&self) -> &[LinkHandle] {
        self.own_broadcast.get_or_init(|| {
            self.routes
                .broadcast_next(self.routes.me())
                .iter()
                .filter_map(|h| self.links.get(h).cloned())
                .collect()
        })
    }

    pub fn links(&self) -> impl Iterator<Item = &LinkHandle> {
        self.links.values()
    }

    /// The live link to `peer`, if there is one.
    pub fn link(&self, peer: &str) -> Option<&LinkHandle> {
        self.links.get(peer)
    }

    /// The links `env` leaves this node on (never the one it `arrived_on`).
    pub fn next_links<'a>(
        &'a self,
        env: &'a Envelope,
        arrived_on: Option<&'a str>,
    ) -> impl Iterator<Item = &'a LinkHandle> + Clone + 'a {
        self.next_links_for(env.target.as_deref(), &env.origin, arrived_on)
    }

    /// [`next_links`](Self::next_links) of an event from `origin` to `target` (`None`:
    /// broadcast), for publishers that have no envelope yet. Lazy and allocation-free: it is
    /// walked on every event.
    pub fn next_links_for<'a>(
        &'a self,
        target: Option<&'a str>,
        origin: &'a str,
        arrived_on: Option<&'a str>,
    ) -> impl Iterator<Item = &'a LinkHandle> + Clone + 'a {
        let me = self.routes.me();
        let (own, broadcast, hop): (&[LinkHandle], &[String], Option<&str>) = match target {
            None if arrived_on.is_none() && origin == me => (self.own_broadcast(), &[], None),
            None => (&[], self.routes.broadcast_next(origin), None),
            Some(t) if t == me => (&[], &[], None),
            Some(t) => (&[], &[], self.routes.next_hop(t)),
        };
        own.iter().chain(
            broadcast
                .iter()
                .map(String::as_str)
                .chain(hop)
                .filter(move |h| Some(*h) != arrived_on)
                .filter_map(|h| self.links.get(h)),
        )
    }

    /// Whether this node delivers `env` to its own subscribers.
    pub fn is_local(&self, env: &Envelope) -> bool {
        self.is_local_for(env.target.as_deref())
    }

    /// [`is_local`](Self::is_local) of an event sent to `target`.
    /// The links an event this node publishes (to `target`, or to every node) leaves on.
    /// Resolved at once rather than through [`next_links_for`](Self::next_links_for)'s
    /// filters: a broadcast compares no names, a targeted event looks its hop up once. A
    /// publisher walks this two or three times per event.
    pub fn own_links_for<'a>(
        &'a self,
        target: Option<&'a str>,
    ) -> impl Iterator<Item = &'a LinkHandle> + Clone + 'a {
        let (own, hop): (&[LinkHandle], Option<&LinkHandle>) = match target {
            None => (self.own_broadcast(), None),
            Some(t) if t == self.routes.me() => (&[], None),
            Some(t) => (&[], self.routes.next_hop(t).and_then(|h| self.links.get(h))),
        };
        own.iter().chain(hop)
    }

    pub fn is_local_for(&self, target: Option<&str>) -> bool {
        target.is_none_or(|t| t == self.routes.me())
    }
}

/// A session finished its handshake: route over it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUp(pub LinkHandle);

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkDown {
    pub peer: String,
    pub link_id: u64,
}

/// Membership recomputed: the live graph if it changed since the last message (`None`: the
/// same as before), and the view. The Router installs the routes first, then publishes the
/// view.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GraphChanged {
    pub graph: Option<Arc<IndexedGraph>>,
    pub view: MembershipView,
}

/// Close every link (shutdown): each session says `bye` first. Resolves once every link is
/// down, or after `CLOSE_DRAIN` at the latest.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll(pub String);

/// How long a shutdown waits for links to say goodbye.
pub const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

pub struct Router {
    shared: Arc<NodeShared>,
    membership: Addr<Membership>,
    links: Arc<LinkMap>,
    /// Resumable links kept in `links` while their connection is cut (Membership counts them
    /// live for a failure timeout, then declares the peer down, which ends the stream).
    cut: BTreeSet<String>,
    /// Routes over the last live graph, shared by every table until the graph changes.
    routes: Arc<Routes>,
    /// Shutdown waiters, told when the last link is down.
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Set by `CloseAll`: links that go down are gone for good.
    closing: bool,
}

impl Router {
    pub fn new(shared: Arc<NodeShared>, membership: Addr<Membership>) -> Self {
        let mut graph = Graph::new();
        graph.add_node(shared.name());
        let routes = Arc::new(graph.routes_from(shared.name()));
        Router {
            shared,
            membership,
            links: Arc::default(),
            cut: BTreeSet::new(),
            routes,
            drained: Vec::new(),
            closing: false,
        }
    }

    fn publish(&self) {
        let table = RouteTable::new(self.routes.clone(), self.links.clone());
        self.shared.routes.store(Arc::new(table));
    }

    fn links_changed(&self) {
        let names: BTreeSet<String> = self.links.keys().cloned().collect();
        self.membership.do_send(LinksChanged {
            links: names,
            cut: self.cut.clone(),
        });
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl actix::Supervised for Router {}

impl Handler<LinkUp> for Router {
    type Result = ();

    fn handle(&mut self, LinkUp(link): LinkUp, ctx: &mut Context<Self>) {
        guard("router", ctx, |_| self.link_up(link));
    }
}

impl Router {
    fn link_up(&mut self, link: LinkHandle) {
        self.shared.metrics.link_up(&link.peer);
        let stream = link.tx.0.clone();
        self.cut.remove(&link.peer);
        if let Some(old) = Arc::make_mut(&mut self.links).insert(link.peer.clone(), link) {
            if old.tx.0.is_resumable() && Arc::ptr_eq(&old.tx.0, &stream) {
                // The same stream resumed on a fresh connection: drop the old one without a
                // `bye`, which the peer could read before it attached the fresh connection
                // and take for the end of the stream.
                old.addr.do_send(Replaced);
                let _ = self.membership.try_send(LinkResumed(old.peer.clone()));
            } else {
                old.addr
                    .do_send(Close("replaced by a newer link to the same node".into()));
            }
        }
        self.publish();
        self.links_changed();
    }
}

impl Handler<LinkDown> for Router {
    type Result = ();

    fn handle(&mut self, msg: LinkDown, ctx: &mut Context<Self>) {
        guard("router", ctx, |_| self.link_down(msg));
    }
}

impl Router {
    fn link_down(&mut self, msg: LinkDown) {
        // A replaced link reports down after its successor is up: keep the successor. A
        // resumable link whose stream lives stays in the table while it is cut: producers
        // queue in its stream, replayed on the next connection (until Membership declares
        // the peer down, which ends the stream).
        if self.links.get(&msg.peer).is_some_and(|l| {
            l.link_id == msg.link_id
                && (self.closing || !l.tx.0.is_resumable() || l.tx.0.is_ended())
        }) {
            Arc::make_mut(&mut self.links).remove(&msg.peer);
            self.cut.remove(&msg.peer);
            self.publish();
            self.links_changed();
            if self.links.is_empty() {
                for waiter in self.drained.drain(..) {
                    let _ = waiter.send(());
                }
            }
        } else if self
            .links
            .get(&msg.peer)
            .is_some_and(|l| l.link_id == msg.link_id)
        {
            // Kept for its stream, but no longer carrying anything: Membership must know.
            self.cut.insert(msg.peer.clone());
            self.links_changed();
        }
    }
}

impl Handler<GraphChanged> for Router {
    type Result = ();

    fn handle(&mut self, msg: GraphChanged, ctx: &mut Context<Self>) {
        guard("router", ctx, |_| self.graph_changed(msg));
    }
}

impl Router {
    fn graph_changed(&mut self, msg: GraphChanged) {
        // Links whose stream ended (the peer was declared down) leave the table.
        // (Looked for first: the table being shared, a retain would copy it every time.)
        let pruned = self.links.values().any(|l| l.tx.0.is_ended());
        if pruned {
            Arc::make_mut(&mut self.links).retain(|_, l| !l.tx.0.is_ended());
        }
        if let Some(graph) = msg.graph {
            self.routes = Arc::new(graph.routes_from(self.shared.name()));
            self.publish();
        } else if pruned {
            self.publish();
        }
        if pruned {
            self.links_changed();
        }
        publish_view(&self.shared, msg.view);
    }
}

impl Handler<CloseAll> for Router {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: CloseAll, _: &mut Context<Self>) -> Self::Result {
        self.closing = true;
        // Links kept for their stream while cut have no session left to close.
        Arc::make_mut(&mut self.links)
            .retain(|_, l| l.tx.0.is_current(l.link_id) || !l.tx.0.is_resumable());
        for link in self.links.values() {
            link.addr.do_send(Close(msg.0.clone()));
        }
        if self.links.is_empty() {
            return Box::pin(async {});
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_DRAIN, rx).await;
        })
    }
}
