//! Link planning and routing: pure functions over node names.
//!
//! This module owns two things. [`plan`] turns a [`Config`]'s topology preset into a
//! [`LinkPlan`] (who dials whom, with fallbacks), and [`Graph::routes_from`] turns a live
//! undirected graph into [`Routes`] (next hops and broadcast trees). Everything here is
//! deterministic: every node that sees the same graph computes the same routes, which is
//! what makes broadcast deliver exactly one copy per node without coordination.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use crate::config::{Config, Role, TopologyKind};

/// Who dials whom. Each link is dialled by exactly one side (never two connections for one pair).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkPlan {
    pub links: Vec<PlannedLink>,
}

/// One outgoing link of `dialer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLink {
    pub dialer: String,
    /// `candidates[0]` is the primary target; the rest are fallbacks tried in order when
    /// the primary is down (master-ring-slave fallback masters). Never empty.
    pub candidates: Vec<String>,
}

impl PlannedLink {
    fn to(dialer: &str, target: &str) -> Self {
        PlannedLink {
            dialer: dialer.to_owned(),
            candidates: vec![target.to_owned()],
        }
    }

    /// The primary target.
    pub fn primary(&self) -> Option<&str> {
        self.candidates.first().map(String::as_str)
    }
}

/// The links a config's preset implies, in a deterministic order (declared node order).
/// Works on unvalidated configs too (it never panics), but only a validated config is
/// guaranteed to yield a connected plan.
pub fn plan(cfg: &Config) -> LinkPlan {
    let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    let links = match cfg.cluster.topology {
        TopologyKind::Star => {
            let hub = cfg.nodes.iter().find(|n| n.role == Role::Master);
            match hub {
                Some(hub) => names
                    .iter()
                    .filter(|&&n| n != hub.name)
                    .map(|n| PlannedLink::to(n, &hub.name))
                    .collect(),
                None => Vec::new(),
            }
        }
        TopologyKind::Ring => ring(&names),
        TopologyKind::Mesh => names
            .iter()
            .enumerate()
            .flat_map(|(i, a)| names.iter().skip(i + 1).map(|b| PlannedLink::to(a, b)))
            .collect(),
        TopologyKind::Tree => cfg
            .nodes
            .iter()
            .filter_map(|n| n.parent.as_deref().map(|p| PlannedLink::to(&n.name, p)))
            .collect(),
        TopologyKind::MasterRingSlave => {
            let masters: Vec<&str> = cfg
                .nodes
                .iter()
                .filter(|n| n.role == Role::Master)
                .map(|n| n.name.as_str())
                .collect();
            let workers = cfg
                .nodes
                .iter()
                .filter(|n| n.role == Role::Worker)
                .filter_map(|n| {
                    let master = n.master.as_ref()?;
                    let candidates = std::iter::once(master)
                        .chain(&n.fallback_masters)
                        .cloned()
                        .collect();
                    Some(PlannedLink {
                        dialer: n.name.clone(),
                        candidates,
                    })
                });
            ring(&masters).into_iter().chain(workers).collect()
        }
        TopologyKind::Custom => cfg
            .links
            .iter()
            .map(|l| PlannedLink::to(&l.from, &l.to))
            .collect(),
    };
    LinkPlan { links }
}

/// Node i dials node i+1, and the last closes the ring; two nodes need just one link.
fn ring(names: &[&str]) -> Vec<PlannedLink> {
    match names.len() {
        0 | 1 => Vec::new(),
        2 => vec![PlannedLink::to(names[0], names[1])],
        n => (0..n)
            .filter_map(|i| Some(PlannedLink::to(names.get(i)?, names.get((i + 1) % n)?)))
            .collect(),
    }
}

impl LinkPlan {
    /// The links `node` dials.
    pub fn dials_of(&self, node: &str) -> Vec<&PlannedLink> {
        self.links.iter().filter(|l| l.dialer == node).collect()
    }

    /// The undirected configured graph over primary targets only. Nodes without any
    /// planned link (a single-node cluster) do not appear.
    pub fn graph(&self) -> Graph {
        let mut graph = Graph::new();
        for link in &self.links {
            if let Some(primary) = link.primary() {
                graph.add_edge(&link.dialer, primary);
            }
        }
        graph
    }

    /// Whether a link between `a` and `b` is planned (either direction, any candidate):
    /// the listener uses this to reject peers that should not dial it.
    pub fn neighbours_allowed(&self, a: &str, b: &str) -> bool {
        self.links.iter().any(|l| {
            (l.dialer == a && l.candidates.iter().any(|c| c == b))
                || (l.dialer == b && l.candidates.iter().any(|c| c == a))
        })
    }
}

/// The text `nodecloud check` prints: a header line, then one line per node.
pub fn describe(cfg: &Config, plan: &LinkPlan) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut out = format!(
        "cluster {:?}: {}, {}, {}\n",
        cfg.cluster.name,
        cfg.cluster.topology,
        plural(cfg.nodes.len(), "node"),
        plural(plan.links.len(), "link"),
    );
    for node in &cfg.nodes {
        let mut line = format!("  {} ({}) listen {}", node.name, node.role, node.listen);
        // What peers dial: printed for every node, marked when it is derived from listen.
        let _ = write!(line, " advertise {}", node.dial_address());
        if node.advertise.is_none() {
            line.push_str(" (from listen)");
        }
        if let Some(service) = node.service {
            let _ = write!(line, " service {service}");
        }
        if let Some(socket) = &node.service_socket {
            let _ = write!(line, " service_socket {}", socket.display());
        }
        if let Some(api) = node.api {
            let auth = match cfg.cluster.api_token {
                Some(_) => "bearer token",
                None => "no token: loopback only",
            };
            let _ = write!(line, " api {api} ({auth})");
        }
        if let Some(proxy) = node.proxy {
            let _ = write!(line, " proxy {proxy}");
        }
        if let Some(http) = &node.http {
            let _ = write!(line, " http {http}");
        }
        let dials: Vec<String> = plan
            .dials_of(&node.name)
            .into_iter()
            .map(|link| match link.candidates.split_first() {
                Some((primary, [])) => primary.clone(),
                Some((primary, rest)) => format!("{primary} (fallback {})", rest.join(", ")),
                None => String::new(),
            })
            .collect();
        let dials = if dials.is_empty() {
            "nothing".to_owned()
        } else {
            dials.join(", ")
        };
        let _ = writeln!(out, "{line}  dials: {dials}");
    }
    out
}

/// An undirected graph over node names with deterministic iteration (BTreeMap/BTreeSet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    adjacency: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_node(&mut self, n: &str) {
        self.adjacency.entry(n.to_owned()).or_default();
    }

    /// Adds both endpoints and the edge between them; self-edges are ignored (a node
    /// never routes to itself over a link).
    pub fn add_edge(&mut self, a: &str, b: &str) {
        if a == b {
            return;
        }
        self.half_edge(a, b);
        self.half_edge(b, a);
    }

    /// `b` into `a`'s neighbours, allocating only for names not yet present (membership
    /// rebuilds graphs of thousands of edges on every change).
    fn half_edge(&mut self, a: &str, b: &str) {
        match self.adjacency.get_mut(a) {
            Some(next) => {
                if !next.contains(b) {
                    next.insert(b.to_owned());
                }
            }
            None => {
                self.adjacency
                    .insert(a.to_owned(), BTreeSet::from([b.to_owned()]));
            }
        }
    }

    /// Nodes in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.adjacency.keys().map(String::as_str)
    }

    /// Neighbours of `n` in name order; empty if `n` is unknown.
    pub fn neighbours(&self, n: &str) -> impl Iterator<Item = &str> {
        self.adjacency
            .get(n)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    pub fn edge_count(&self) -> usize {
        self.adjacency.values().map(BTreeSet::len).sum::<usize>() / 2
    }

    /// Every node reachable from `me`, including `me` itself; empty if `me` is unknown.
    pub fn reachable_from(&self, me: &str) -> BTreeSet<String> {
        self.bfs(me).into_keys().map(str::to_owned).collect()
    }

    /// The BFS tree from `root` as child → parent (the root maps to itself). Neighbours
    /// are visited in name order, so every caller gets the same tree for the same graph.
    fn bfs<'a>(&'a self, root: &str) -> BTreeMap<&'a str, &'a str> {
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let Some((root, _)) = self.adjacency.get_key_value(root) else {
            return parent;
        };
        parent.insert(root, root);
        let mut queue = VecDeque::from([root.as_str()]);
        while let Some(at) = queue.pop_front() {
            for next in self.neighbours(at) {
                if !parent.contains_key(next) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        parent
    }

    /// Routing for `me`: next hops over shortest paths now (one BFS), and for every origin the
    /// neighbours `me` forwards that origin's broadcasts to (my children in the origin's BFS
    /// tree), computed on first use. Everything runs over node indices: a node's routes are
    /// recomputed on every change of its links or of the live graph, and in a 64-node mesh
    /// computing all 64 broadcast trees up front (65 BFS of 4032 edges) took most of the CPU
    /// of a starting cluster, although no event had been sent yet.
    pub fn routes_from(&self, me: &str) -> Routes {
        Arc::new(IndexedGraph::new(self)).routes_from(me)
    }

    /// The former name-keyed computation of [`routes_from`](Self::routes_from), kept as the
    /// reference its tests compare against.
    #[cfg(test)]
    fn routes_from_by_name(&self, me: &str) -> ReferenceRoutes {
        let mut routes = ReferenceRoutes::default();
        let tree = self.bfs(me);
        // Resolve each destination's first hop by walking up its BFS parents; memoised so
        // the total work stays linear.
        let mut first_hop: BTreeMap<&str, &str> = BTreeMap::new();
        for &dest in tree.keys() {
            if dest == me {
                continue;
            }
            let mut chain = Vec::new();
            let mut at = dest;
            let hop = loop {
                if let Some(&hop) = first_hop.get(at) {
                    break hop;
                }
                match tree.get(at) {
                    Some(&up) if up == me => break at,
                    Some(&up) if up != at => {
                        chain.push(at);
                        at = up;
                    }
                    // Unreachable for a BFS tree from `me`; stop rather than loop.
                    _ => break at,
                }
            };
            first_hop.insert(at, hop);
            for node in chain {
                first_hop.insert(node, hop);
            }
        }
        routes.next_hop = first_hop
            .into_iter()
            .map(|(dest, hop)| (dest.to_owned(), hop.to_owned()))
            .collect();
        if self.adjacency.contains_key(me) {
            for origin in self.nodes() {
                let children: Vec<String> = self
                    .bfs(origin)
                    .into_iter()
                    .filter(|&(child, parent)| parent == me && child != me)
                    .map(|(child, _)| child.to_owned())
                    .collect();
                routes.broadcast.insert(origin.to_owned(), children);
            }
        }
        routes
    }
}

/// A graph's nodes numbered in name order, with neighbour lists in name order, so a BFS over
/// indices visits exactly what [`Graph::bfs`] visits by name. Membership builds the live
/// graph in this form straight from its bit matrix (no string per edge), and the Router turns
/// it into [`Routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedGraph {
    names: Vec<String>,
    neighbours: Vec<Vec<usize>>,
}

/// Why an [`IndexedGraph`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexedGraphError {
    #[error("node names are not strictly increasing at index {0}")]
    Unsorted(usize),
    #[error("{0} neighbour lists for {1} nodes")]
    Lengths(usize, usize),
    #[error("the neighbours of node {0} are not increasing, in range and symmetric")]
    Neighbours(usize),
}

impl IndexedGraph {
    fn new(graph: &Graph) -> Self {
        let names: Vec<String> = graph.adjacency.keys().cloned().collect();
        let neighbours = graph
            .adjacency
            .values()
            .map(|next| {
                next.iter()
                    .filter_map(|n| names.binary_search(n).ok())
                    .collect()
            })
            .collect();
        IndexedGraph { names, neighbours }
    }

    /// A graph from names in strictly increasing order and, for each, its neighbours as
    /// increasing indices into `names` (undirected: `b` lists `a` when `a` lists `b`).
    ///
    /// # Errors
    /// When the names are not sorted or the neighbour lists are not as described.
    pub fn from_sorted(
        names: Vec<String>,
        neighbours: Vec<Vec<usize>>,
    ) -> Result<Self, IndexedGraphError> {
        if let Some(i) = names.windows(2).position(|w| w[0] >= w[1]) {
            return Err(IndexedGraphError::Unsorted(i + 1));
        }
        if names.len() != neighbours.len() {
            return Err(IndexedGraphError::Lengths(neighbours.len(), names.len()));
        }
        for (a, next) in neighbours.iter().enumerate() {
            let increasing = next.windows(2).all(|w| w[0] < w[1]);
            let valid = next.iter().all(|&b| {
                b != a
                    && neighbours
                        .get(b)
                        .is_some_and(|back| back.binary_search(&a).is_ok())
            });
            if !increasing || !valid {
                return Err(IndexedGraphError::Neighbours(a));
            }
        }
        Ok(IndexedGraph { names, neighbours })
    }

    /// The same graph keyed by name.
    pub fn to_graph(&self) -> Graph {
        let mut g = Graph::new();
        for (a, name) in self.names.iter().enumerate() {
            g.add_node(name);
            for &b in self.neighbours.get(a).map_or(&[][..], Vec::as_slice) {
                if let Some(other) = self.names.get(b) {
                    g.add_edge(name, other);
                }
            }
        }
        g
    }

    /// Routing for `me` over this graph: see [`Graph::routes_from`]. Shares the graph with the
    /// routes rather than copying it.
    pub fn routes_from(self: Arc<Self>, me: &str) -> Routes {
        let me_ix = self.index(me);
        Routes {
            me: me.to_owned(),
            broadcast: me_ix.map_or_else(Vec::new, |_| {
                (0..self.names.len()).map(|_| OnceLock::new()).collect()
            }),
            me_ix: me_ix.unwrap_or_default(),
            graph: me_ix.map(|_| self),
            first_hops: OnceLock::new(),
        }
    }

    /// By destination index, the first hop on a shortest path from `me` (`None`: `me` itself,
    /// or unreachable).
    fn first_hops(&self, me: usize) -> Vec<Option<usize>> {
        let tree = self.bfs(me);
        // Resolve each destination's first hop by walking up its BFS parents; memoised so
        // the total work stays linear.
        let mut first_hop: Vec<Option<usize>> = vec![None; self.names.len()];
        for dest in 0..self.names.len() {
            if dest == me || tree.get(dest).copied().flatten().is_none() {
                continue;
            }
            let mut chain = Vec::new();
            let mut at = dest;
            let hop = loop {
                if let Some(hop) = first_hop.get(at).copied().flatten() {
                    break hop;
                }
                match tree.get(at).copied().flatten() {
                    Some(up) if up == me => break at,
                    Some(up) if up != at => {
                        chain.push(at);
                        at = up;
                    }
                    // Unreachable for a BFS tree from `me`; stop rather than loop.
                    _ => break at,
                }
            };
            for node in chain.into_iter().chain([at]) {
                if let Some(slot) = first_hop.get_mut(node) {
                    *slot = Some(hop);
                }
            }
        }
        first_hop
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    /// BFS parents from `root` (the root is its own parent; `None`: unreachable).
    fn bfs(&self, root: usize) -> Vec<Option<usize>> {
        let mut parent = vec![None; self.names.len()];
        let Some(slot) = parent.get_mut(root) else {
            return parent;
        };
        *slot = Some(root);
        let mut queue = VecDeque::from([root]);
        while let Some(at) = queue.pop_front() {
            for &next in self.neighbours.get(at).map_or(&[][..], Vec::as_slice) {
                if let Some(slot @ None) = parent.get_mut(next) {
                    *slot = Some(at);
                    queue.push_back(next);
                }
            }
        }
        parent
    }

    /// `me`'s children in `origin`'s BFS tree, in name order.
    fn children(&self, me: usize, origin: usize) -> Vec<String> {
        self.bfs(origin)
            .iter()
            .zip(&self.names)
            .enumerate()
            .filter(|&(child, (parent, _))| *parent == Some(me) && child != me)
            .map(|(_, (_, name))| name.clone())
            .collect()
    }
}

/// Routing for one node over one live graph. Cheap to make and to share: every part is
/// computed the first time it is asked for. Membership makes new routes at every graph change
/// (many times a second while a large cluster forms), and most are replaced before an event
/// needs them; route tables are then read on every event by every thread of the node.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    me: String,
    /// The live graph by index; `None` when `me` is not in it.
    graph: Option<Arc<IndexedGraph>>,
    me_ix: usize,
    /// By destination index: the first hop's index (see [`IndexedGraph::first_hops`]).
    first_hops: OnceLock<Vec<Option<usize>>>,
    /// By origin index: my children in the origin's BFS tree (name order), computed the first
    /// time a broadcast from that origin passes here.
    broadcast: Vec<OnceLock<Vec<String>>>,
}

impl Routes {
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The first hop of every destination by index, and the graph those indices are in.
    fn hops(&self) -> Option<(&IndexedGraph, &[Option<usize>])> {
        let graph = self.graph.as_deref()?;
        let hops = self.first_hops.get_or_init(|| graph.first_hops(self.me_ix));
        Some((graph, hops))
    }

    /// First hop on a shortest path from me to `dest`; `None` if unreachable or `dest` is me.
    pub fn next_hop(&self, dest: &str) -> Option<&str> {
        let (graph, hops) = self.hops()?;
        let hop = hops.get(graph.index(dest)?).copied().flatten()?;
        graph.names.get(hop).map(String::as_str)
    }

    /// The neighbours I forward a broadcast from `origin` to (my children in origin's
    /// BFS tree). Empty if `origin` is unknown.
    pub fn broadcast_next(&self, origin: &str) -> &[String] {
        let Some(graph) = &self.graph else {
            return &[];
        };
        let Some(o) = graph.index(origin) else {
            return &[];
        };
        self.broadcast.get(o).map_or(&[], |children| {
            children.get_or_init(|| graph.children(self.me_ix, o))
        })
    }

    /// Nodes I can reach, excluding me, in name order.
    pub fn reachable(&self) -> impl Iterator<Item = &str> {
        self.hops().into_iter().flat_map(|(graph, hops)| {
            graph
                .names
                .iter()
                .zip(hops)
                .filter(|(_, hop)| hop.is_some())
                .map(|(name, _)| name.as_str())
        })
    }

    /// Whether `n` is another node I can reach (false for me).
    pub fn is_reachable(&self, n: &str) -> bool {
        self.next_hop(n).is_some()
    }
}

/// What the former name-keyed computation produced, for comparing with [`Routes`].
#[cfg(test)]
#[derive(Debug, Default)]
struct ReferenceRoutes {
    next_hop: BTreeMap<String, String>,
    broadcast: BTreeMap<String, Vec<String>>,
}

#[cfg(test)]
mod tests;
