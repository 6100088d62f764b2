//! Every topology preset and a custom graph, each a real cluster on loopback TCP in one process:
//! the live graph is exactly the planned one, every broadcast reaches every node exactly once
//! along a tree (N−1 link crossings), targeted events take shortest paths, and routes follow
//! membership when a node dies and when it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nodecloud::config::{Config, LinkConfig, NodeConfig, Role, TopologyKind};
use nodecloud::node::MembershipView;
use nodecloud::testing::TestCluster;
use nodecloud::topology::{self, Graph};
use nodecloud::{cluster, testing, Delivery, Event, NodeHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Generous: tests run concurrently on a small, shared machine.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// One event of a broadcast round.
    Broadcast,
    /// Published right after it by the same origin: the round is over for that origin.
    End,
    /// A targeted event.
    Direct,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    kind: Kind,
    n: i64,
}

impl Event for Probe {
    const TOPIC: &'static str = "t40.probe";
}

fn probe(kind: Kind, n: i64) -> Probe {
    Probe { kind, n }
}

type Rx = mpsc::UnboundedReceiver<(String, Probe)>;

/// Forwards every delivery, with the name of its origin, into a channel.
struct Collector {
    tx: mpsc::UnboundedSender<(String, Probe)>,
}
impl Actor for Collector {
    type Context = Context<Self>;
}
impl Handler<Delivery<Probe>> for Collector {
    type Result = ();
    fn handle(&mut self, d: Delivery<Probe>, _: &mut Context<Self>) {
        let _ = self.tx.send((d.from.name, d.event));
    }
}

fn collector(node: &NodeHandle) -> Rx {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = Collector { tx }.start();
    node.subscribe::<Probe>(addr.recipient());
    rx
}

async fn recv(rx: &mut Rx, at: &str, waiting_for: &str) -> (String, Probe) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| {
            panic!("{at}: no delivery within {WAIT:?} while waiting for {waiting_for}")
        })
        .expect("collector channel open")
}

// --- configurations ----------------------------------------------------------------------

/// `Config::for_test`, with a link silence timeout of 2 s instead of 0.5 s: on a loaded
/// two-core machine a starved arbiter must not make links flap (a flapping link loses the
/// events in flight, which is not what these tests look at). Killed nodes are still seen
/// down at once: their links close.
fn config(topology: TopologyKind, nodes: Vec<NodeConfig>) -> Config {
    let mut cfg = Config::for_test(topology, nodes);
    cfg.cluster.failure_threshold = 20;
    cfg
}

/// Every address is a placeholder: `Live::start` gives each node a reserved loopback port.
fn node(name: &str, role: Role) -> NodeConfig {
    NodeConfig::new(name, role, SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn workers(names: &[&str]) -> Vec<NodeConfig> {
    names.iter().map(|n| node(n, Role::Worker)).collect()
}

fn star_config() -> Config {
    let mut nodes = vec![node("hub", Role::Master)];
    for name in ["w1", "w2", "w3", "w4", "w5", "w6"] {
        let mut w = node(name, Role::Worker);
        w.master = Some("hub".to_owned());
        nodes.push(w);
    }
    config(TopologyKind::Star, nodes)
}

fn ring_config() -> Config {
    // Declared out of name order: the ring follows declaration (n1-n4-n2-n6-n3-n5-n1).
    let names = ["n1", "n4", "n2", "n6", "n3", "n5"];
    config(TopologyKind::Ring, workers(&names))
}

/// m1, m2, m3 in a ring; each has two slaves, whose fallback is the next master.
fn master_ring_slave_config() -> Config {
    let masters = ["m1", "m2", "m3"];
    let mut nodes: Vec<NodeConfig> = masters.iter().map(|m| node(m, Role::Master)).collect();
    for (i, m) in masters.iter().enumerate() {
        let fallback = masters[(i + 1) % masters.len()];
        for suffix in ["a", "b"] {
            let mut s = node(&format!("s{}{suffix}", i + 1), Role::Worker);
            s.master = Some((*m).to_owned());
            s.fallback_masters = vec![fallback.to_owned()];
            nodes.push(s);
        }
    }
    config(TopologyKind::MasterRingSlave, nodes)
}

fn mesh_config() -> Config {
    config(
        TopologyKind::Mesh,
        workers(&["p1", "p2", "p3", "p4", "p5", "p6"]),
    )
}

/// t1 is the root; t2 and t3 its children; t4, t5 under t2 and t6, t7 under t3. The inner
/// nodes are masters of their children and clients of their parent at once.
fn tree_config() -> Config {
    let parents = [
        ("t1", None),
        ("t2", Some("t1")),
        ("t3", Some("t1")),
        ("t4", Some("t2")),
        ("t5", Some("t2")),
        ("t6", Some("t3")),
        ("t7", Some("t3")),
    ];
    let nodes = parents
        .iter()
        .map(|(name, parent)| {
            let inner = parents.iter().any(|(_, p)| p == &Some(*name));
            let mut n = node(name, if inner { Role::Master } else { Role::Worker });
            n.parent = parent.map(str::to_owned);
            n
        })
        .collect();
    config(TopologyKind::Tree, nodes)
}

/// Two triangles joined by a bridge (c1–c4), and a path c6–c7–c1 closing a long cycle.
fn custom_config() -> Config {
    let mut cfg = config(
        TopologyKind::Custom,
        workers(&["c1", "c2", "c3", "c4", "c5", "c6", "c7"]),
    );
    let links = [
        ("c1", "c2"),
        ("c2", "c3"),
        ("c3", "c1"),
        ("c4", "c1"),
        ("c4", "c5"),
        ("c5", "c6"),
        ("c6", "c4"),
        ("c6", "c7"),
        ("c7", "c1"),
    ];
    cfg.links = links
        .iter()
        .map(|(from, to)| LinkConfig {
            from: (*from).to_owned(),
            to: (*to).to_owned(),
        })
        .collect();
    cfg
}

// --- graphs --------------------------------------------------------------------------------

/// The planned graph, every declared node included.
fn planned(cfg: &Config) -> Graph {
    let mut g = topology::plan(cfg).graph();
    for n in &cfg.nodes {
        g.add_node(&n.name);
    }
    g
}

fn graph_of(nodes: &[&str], edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for n in nodes {
        g.add_node(n);
    }
    for (a, b) in edges {
        g.add_edge(a, b);
    }
    g
}

/// `g` without `gone` (and its edges).
fn without(g: &Graph, gone: &str) -> Graph {
    let mut out = Graph::new();
    for a in g.nodes().filter(|a| *a != gone) {
        out.add_node(a);
        for b in g.neighbours(a).filter(|b| *b != gone) {
            out.add_edge(a, b);
        }
    }
    out
}

type Adjacency = BTreeMap<String, BTreeSet<String>>;

/// The part of `g` that `me` can reach, as adjacency sets.
fn component(g: &Graph, me: &str) -> Adjacency {
    g.reachable_from(me)
        .into_iter()
        .map(|n| {
            let links = g.neighbours(&n).map(str::to_owned).collect();
            (n, links)
        })
        .collect()
}

/// The live graph a membership view describes: every member and the links it reports.
fn view_graph(view: &MembershipView) -> Adjacency {
    view.members
        .iter()
        .map(|(name, m)| (name.clone(), m.links.iter().cloned().collect()))
        .collect()
}

/// Wait until every node's view is exactly its component of `live`: the same members, each
/// with exactly the links of the graph. Routes are installed before a view is published, so
/// afterwards every node routes over the same graph.
async fn wait_graph(nodes: &[NodeHandle], live: &Graph) {
    for node in nodes {
        let want = component(live, node.name());
        let mut rx = node.membership();
        let reached = tokio::time::timeout(WAIT, rx.wait_for(|v| view_graph(v) == want))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            let have = view_graph(&node.membership().borrow());
            panic!(
                "{}: live graph after {WAIT:?} is\n  {have:?}\nexpected\n  {want:?}",
                node.name()
            );
        }
    }
}

/// Hop counts from `from` over `g`, by plain BFS.
fn distances(g: &Graph, from: &str) -> BTreeMap<String, u64> {
    let mut dist = BTreeMap::from([(from.to_owned(), 0)]);
    let mut queue = VecDeque::from([from.to_owned()]);
    while let Some(at) = queue.pop_front() {
        let d = dist[&at];
        for n in g.neighbours(&at) {
            if !dist.contains_key(n) {
                dist.insert(n.to_owned(), d + 1);
                queue.push_back(n.to_owned());
            }
        }
    }
    dist
}

// --- the cluster under test ------------------------------------------------------------------

/// Live nodes with their collectors, in declared order.
struct Live {
    config: Arc<Config>,
    /// Holds every node's port, so a node restarts on the same address.
    cluster: Arc<TestCluster>,
    nodes: Vec<NodeHandle>,
    rxs: Vec<Rx>,
}

impl Live {
    /// Start every node, wait until each sees exactly the planned graph, subscribe everywhere.
    async fn start(make: fn() -> Config) -> Live {
        // RUST_LOG=nodecloud=debug shows what the nodes did when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cluster = Arc::new(TestCluster::reserving(make()));
        let config = cluster.config();
        let nodes = cluster.start().await.expect("cluster starts");
        testing::wait_converged(&nodes, WAIT)
            .await
            .expect("membership converges");
        wait_graph(&nodes, &planned(&config)).await;
        let rxs = nodes.iter().map(collector).collect();
        Live {
            config,
            cluster,
            nodes,
            rxs,
        }
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name() == name)
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// Shut `name` down; it leaves the live set.
    async fn kill(&mut self, name: &str) {
        let i = self.index(name);
        let node = self.nodes.remove(i);
        self.rxs.remove(i);
        node.shutdown().await;
    }

    /// Start `name` again (a new incarnation on the same port) and subscribe on it.
    async fn restart(&mut self, name: &str) {
        let node = self
            .cluster
            .start_node(name)
            .await
            .unwrap_or_else(|e| panic!("{name} restarts: {e}"));
        self.rxs.push(collector(&node));
        self.nodes.push(node);
    }

    /// Sum of event link crossings over every live node's links.
    fn crossings(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(NodeHandle::link_stats)
            .map(|l| l.events_out)
            .sum()
    }

    /// Wait until the crossing counter reaches `expected` (a relay counts a crossing right
    /// after it queued the frame, so the count may trail the delivery by a moment), then
    /// assert it is exactly `expected`.
    async fn assert_crossings(&self, expected: u64, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.crossings() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(self.crossings(), expected, "link crossings of {what}");
    }

    /// Every node publishes one event and then an end marker; every node must receive exactly
    /// one copy of each (the end marker follows the event on the same path, so a copy would
    /// show up before it; a later round would see any straggler).
    async fn broadcast_round(&mut self, round: i64) {
        for (i, node) in self.nodes.iter().enumerate() {
            node.publish(&probe(Kind::Broadcast, round * 100 + i as i64))
                .unwrap();
            node.publish(&probe(Kind::End, round)).unwrap();
        }
        let mut expected: BTreeMap<(String, Probe), usize> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let origin = node.name().to_owned();
            expected.insert(
                (
                    origin.clone(),
                    probe(Kind::Broadcast, round * 100 + i as i64),
                ),
                1,
            );
            expected.insert((origin, probe(Kind::End, round)), 1);
        }
        for (node, rx) in self.nodes.iter().zip(&mut self.rxs) {
            let mut got: BTreeMap<(String, Probe), usize> = BTreeMap::new();
            let mut ended = BTreeSet::new();
            while ended.len() < self.nodes.len() {
                let (from, p) = recv(rx, node.name(), &format!("round {round}")).await;
                if p.kind == Kind::End {
                    ended.insert(from.clone());
                }
                *got.entry((from, p)).or_default() += 1;
            }
            assert_eq!(
                got,
                expected,
                "{}: copies received in broadcast round {round}",
                node.name()
            );
        }
    }

    /// From every node in turn, one broadcast costs exactly N−1 link crossings.
    async fn broadcast_costs(&mut self, round: i64) {
        let n = self.nodes.len() as u64;
        for i in 0..self.nodes.len() {
            let before = self.crossings();
            let origin = self.nodes[i].name().to_owned();
            self.nodes[i]
                .publish(&probe(Kind::Broadcast, round * 100 + i as i64))
                .unwrap();
            for (node, rx) in self.nodes.iter().zip(&mut self.rxs) {
                let got = recv(rx, node.name(), &format!("the broadcast of {origin}")).await;
                assert_eq!(
                    got,
                    (
                        origin.clone(),
                        probe(Kind::Broadcast, round * 100 + i as i64)
                    ),
                    "{}",
                    node.name()
                );
            }
            self.assert_crossings(
                before + n - 1,
                &format!("one broadcast from {origin} among {n} nodes"),
            )
            .await;
        }
    }

    /// Every node sends to every other; each event arrives at its target only, having crossed
    /// exactly as many links as the shortest path in `live` is long.
    async fn targeted(&mut self, live: &Graph, round: i64) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name().to_owned()).collect();
        let mut k = round * 10_000;
        for (i, from) in names.iter().enumerate() {
            let dist = distances(live, from);
            for (j, to) in names.iter().enumerate() {
                if i == j {
                    continue;
                }
                k += 1;
                let before = self.crossings();
                self.nodes[i]
                    .send_to(to.as_str(), &probe(Kind::Direct, k))
                    .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                let got = recv(&mut self.rxs[j], to, &format!("the event from {from}")).await;
                assert_eq!(got, (from.clone(), probe(Kind::Direct, k)), "at {to}");
                let hops = dist[to];
                self.assert_crossings(
                    before + hops,
                    &format!("{from} -> {to}, {hops} hop(s) apart"),
                )
                .await;
            }
        }
    }

    /// The whole check on the current live graph: exact delivery, costs, shortest paths.
    async fn exercise(&mut self, live: &Graph, round: i64) {
        self.broadcast_round(round).await;
        self.broadcast_costs(round + 1).await;
        self.targeted(live, round + 2).await;
        // Anything stray (a duplicate, a targeted event at the wrong node) shows up here.
        self.broadcast_round(round + 3).await;
    }

    async fn stop(self) {
        cluster::stop(&self.nodes).await;
    }
}

/// Starts `config`, checks the graph is exactly the plan, and exercises it.
async fn preset(make: fn() -> Config) {
    let mut live = Live::start(make).await;
    let graph = planned(&live.config);
    live.exercise(&graph, 1).await;
    live.stop().await;
}

// --- every preset ----------------------------------------------------------------------------

#[actix_rt::test]
async fn a_star_of_seven_links_every_worker_to_the_hub_and_delivers_each_event_once() {
    preset(star_config).await;
}

#[actix_rt::test]
async fn a_ring_of_six_links_each_node_to_the_next_and_delivers_each_event_once() {
    preset(ring_config).await;
}

#[actix_rt::test]
async fn a_master_ring_slave_cluster_rings_its_masters_and_delivers_each_event_once() {
    preset(master_ring_slave_config).await;
}

#[actix_rt::test]
async fn a_mesh_of_six_links_every_pair_and_a_broadcast_still_costs_n_minus_one() {
    preset(mesh_config).await;
}

#[actix_rt::test]
async fn a_tree_of_seven_links_each_node_to_its_parent_and_delivers_each_event_once() {
    preset(tree_config).await;
}

#[actix_rt::test]
async fn a_custom_graph_gets_exactly_its_declared_links_and_delivers_each_event_once() {
    preset(custom_config).await;
}

// --- membership changes ------------------------------------------------------------------------

#[actix_rt::test]
async fn a_ring_with_a_killed_node_still_connects_every_survivor_and_takes_it_back_on_restart() {
    let mut live = Live::start(ring_config).await;
    let full = planned(&live.config);
    live.broadcast_round(1).await;

    live.kill("n3").await;
    let survivors = without(&full, "n3");
    wait_graph(&live.nodes, &survivors).await;
    // n2 and n4 now reach each other the long way round.
    live.exercise(&survivors, 10).await;

    live.restart("n3").await;
    wait_graph(&live.nodes, &full).await;
    live.exercise(&full, 20).await;
    live.stop().await;
}

#[actix_rt::test]
async fn a_custom_graph_routes_around_a_killed_node_and_back_through_it_on_restart() {
    let mut live = Live::start(custom_config).await;
    let full = planned(&live.config);

    live.kill("c4").await;
    let survivors = without(&full, "c4");
    wait_graph(&live.nodes, &survivors).await;
    live.exercise(&survivors, 10).await;

    live.restart("c4").await;
    wait_graph(&live.nodes, &full).await;
    live.exercise(&full, 20).await;
    live.stop().await;
}

#[actix_rt::test]
async fn slaves_of_a_dead_master_rejoin_their_fallback_master_and_stay_reachable() {
    let mut live = Live::start(master_ring_slave_config).await;
    live.broadcast_round(1).await;

    live.kill("m1").await;
    // s1a and s1b fall back to m2; the other slaves keep their masters.
    let survivors = graph_of(
        &["m2", "m3", "s1a", "s1b", "s2a", "s2b", "s3a", "s3b"],
        &[
            ("m2", "m3"),
            ("s1a", "m2"),
            ("s1b", "m2"),
            ("s2a", "m2"),
            ("s2b", "m2"),
            ("s3a", "m3"),
            ("s3b", "m3"),
        ],
    );
    wait_graph(&live.nodes, &survivors).await;
    live.exercise(&survivors, 10).await;

    // m1 comes back into the master ring; its former slaves stay with the master they have.
    live.restart("m1").await;
    let mut back = survivors.clone();
    back.add_edge("m1", "m2");
    back.add_edge("m1", "m3");
    wait_graph(&live.nodes, &back).await;
    live.exercise(&back, 20).await;
    live.stop().await;
}

#[actix_rt::test]
async fn a_tree_whose_inner_node_dies_reports_the_cut_off_subtree_down_until_it_returns() {
    let mut live = Live::start(tree_config).await;
    let full = planned(&live.config);

    live.kill("t2").await;
    let root = &live.nodes[live.index("t1")];
    for gone in ["t2", "t4", "t5"] {
        testing::wait_down(root, gone, WAIT).await.unwrap();
    }
    let leaf = &live.nodes[live.index("t4")];
    testing::wait_down(leaf, "t1", WAIT).await.unwrap();
    // What is left: t1–t3–{t6, t7}, and t4 and t5 each on their own.
    let split = without(&full, "t2");
    wait_graph(&live.nodes, &split).await;
    let mut connected = Live {
        config: live.config.clone(),
        cluster: live.cluster.clone(),
        nodes: Vec::new(),
        rxs: Vec::new(),
    };
    for name in ["t1", "t3", "t6", "t7"] {
        let i = live.index(name);
        connected.nodes.push(live.nodes.remove(i));
        connected.rxs.push(live.rxs.remove(i));
    }
    connected.exercise(&split, 10).await;
    // Put the cut-off leaves back with the others.
    connected.nodes.append(&mut live.nodes);
    connected.rxs.append(&mut live.rxs);
    let mut live = connected;

    live.restart("t2").await;
    wait_graph(&live.nodes, &full).await;
    live.exercise(&full, 20).await;
    live.stop().await;
}
