//! Tests for link planning (every preset's exact links) and routing (shortest next hops,
//! exactly-once broadcast over every preset, partitions, and a 64-node mesh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use super::*;
use crate::config::{LinkConfig, NodeConfig};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node(name: &str, role: Role) -> NodeConfig {
    // Distinct ports are irrelevant to planning; derive one from the name for realism.
    let port = 7000 + name.bytes().map(u16::from).sum::<u16>();
    NodeConfig::new(name, role, addr(port))
}

fn workers(names: &[&str]) -> Vec<NodeConfig> {
    names.iter().map(|n| node(n, Role::Worker)).collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

fn cfg_of(kind: TopologyKind, nodes: Vec<NodeConfig>) -> Config {
    Config::for_test(kind, nodes)
}

/// `(dialer, [candidates])` pairs, for compact exact comparisons.
fn pairs(plan: &LinkPlan) -> Vec<(String, Vec<String>)> {
    plan.links
        .iter()
        .map(|l| (l.dialer.clone(), l.candidates.clone()))
        .collect()
}

fn expect(links: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    links
        .iter()
        .map(|(d, c)| {
            (
                d.to_string(),
                c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        })
        .collect()
}

fn star(n_workers: usize) -> Config {
    let mut nodes = vec![node("hub", Role::Master)];
    nodes.extend(names("w", n_workers).iter().map(|n| node(n, Role::Worker)));
    cfg_of(TopologyKind::Star, nodes)
}

fn ring(n: usize) -> Config {
    let names = names("n", n);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cfg_of(TopologyKind::Ring, workers(&refs))
}

fn mesh(n: usize) -> Config {
    let names = names("p", n);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cfg_of(TopologyKind::Mesh, workers(&refs))
}

/// A complete binary tree of `n` nodes named t1..tn; ti's parent is t(i/2).
fn tree(n: usize) -> Config {
    let nodes = (1..=n)
        .map(|i| {
            let mut node = node(&format!("t{i}"), Role::Worker);
            if i > 1 {
                node.parent = Some(format!("t{}", i / 2));
            }
            node
        })
        .collect();
    cfg_of(TopologyKind::Tree, nodes)
}

/// `masters` masters m1.., each with `per` workers; each worker falls back to the next master.
fn mrs(masters: usize, per: usize) -> Config {
    let mut nodes: Vec<NodeConfig> = (1..=masters)
        .map(|i| node(&format!("m{i}"), Role::Master))
        .collect();
    for m in 1..=masters {
        for w in 1..=per {
            let mut n = node(&format!("s{m}-{w}"), Role::Worker);
            n.master = Some(format!("m{m}"));
            if masters > 1 {
                n.fallback_masters = vec![format!("m{}", m % masters + 1)];
            }
            nodes.push(n);
        }
    }
    cfg_of(TopologyKind::MasterRingSlave, nodes)
}

fn custom(nodes: &[&str], links: &[(&str, &str)]) -> Config {
    let mut cfg = cfg_of(TopologyKind::Custom, workers(nodes));
    cfg.links = links
        .iter()
        .map(|(from, to)| LinkConfig {
            from: from.to_string(),
            to: to.to_string(),
        })
        .collect();
    cfg
}

fn two_triangles() -> Config {
    custom(
        &["a1", "a2", "a3", "b1", "b2", "b3"],
        &[
            ("a1", "a2"),
            ("a2", "a3"),
            ("a3", "a1"),
            ("b1", "b2"),
            ("b2", "b3"),
            ("b3", "b1"),
            ("a3", "b1"),
        ],
    )
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges {
        g.add_edge(a, b);
    }
    g
}

// --- plans --------------------------------------------------------------------------

#[test]
fn star_plan_has_every_worker_dial_the_master() {
    let mut cfg = star(3);
    // The master need not be declared first.
    cfg.nodes.rotate_left(1);
    assert_eq!(
        pairs(&plan(&cfg)),
        expect(&[("w1", &["hub"]), ("w2", &["hub"]), ("w3", &["hub"])])
    );
}

#[test]
fn ring_plan_follows_declared_order_and_closes() {
    let cfg = cfg_of(TopologyKind::Ring, workers(&["c", "a", "d", "b"]));
    assert_eq!(
        pairs(&plan(&cfg)),
        expect(&[("c", &["a"]), ("a", &["d"]), ("d", &["b"]), ("b", &["c"])])
    );
}

#[test]
fn ring_of_two_has_one_link_and_ring_of_one_none() {
    assert_eq!(pairs(&plan(&ring(2))), expect(&[("n1", &["n2"])]));
    assert!(plan(&ring(1)).links.is_empty());
}

#[test]
fn mesh_plan_links_every_pair_once_earlier_dials_later() {
    let cfg = cfg_of(TopologyKind::Mesh, workers(&["x", "a", "m", "b"]));
    assert_eq!(
        pairs(&plan(&cfg)),
        expect(&[
            ("x", &["a"]),
            ("x", &["m"]),
            ("x", &["b"]),
            ("a", &["m"]),
            ("a", &["b"]),
            ("m", &["b"]),
        ])
    );
    assert_eq!(plan(&mesh(8)).links.len(), 28);
}

#[test]
fn tree_plan_has_every_child_dial_its_parent() {
    assert_eq!(
        pairs(&plan(&tree(5))),
        expect(&[
            ("t2", &["t1"]),
            ("t3", &["t1"]),
            ("t4", &["t2"]),
            ("t5", &["t2"]),
        ])
    );
}

#[test]
fn master_ring_slave_plan_rings_masters_and_gives_workers_fallbacks() {
    assert_eq!(
        pairs(&plan(&mrs(3, 1))),
        expect(&[
            ("m1", &["m2"]),
            ("m2", &["m3"]),
            ("m3", &["m1"]),
            ("s1-1", &["m1", "m2"]),
            ("s2-1", &["m2", "m3"]),
            ("s3-1", &["m3", "m1"]),
        ])
    );
}

#[test]
fn master_ring_slave_with_one_or_two_masters() {
    assert_eq!(
        pairs(&plan(&mrs(1, 2))),
        expect(&[("s1-1", &["m1"]), ("s1-2", &["m1"])])
    );
    assert_eq!(
        pairs(&plan(&mrs(2, 1))),
        expect(&[
            ("m1", &["m2"]),
            ("s1-1", &["m1", "m2"]),
            ("s2-1", &["m2", "m1"]),
        ])
    );
}

#[test]
fn master_ring_slave_worker_with_several_fallbacks_keeps_their_order() {
    let mut cfg = mrs(3, 1);
    cfg.nodes[3].fallback_masters = vec!["m3".into(), "m2".into()];
    let plan = plan(&cfg);
    assert_eq!(
        plan.dials_of("s1-1")[0].candidates,
        vec!["m1".to_string(), "m3".into(), "m2".into()]
    );
}

#[test]
fn custom_plan_follows_links_in_order() {
    let cfg = custom(&["a", "b", "c"], &[("b", "a"), ("c", "b")]);
    assert_eq!(pairs(&plan(&cfg)), expect(&[("b", &["a"]), ("c", &["b"])]));
}

#[test]
fn plans_on_invalid_configs_do_not_panic() {
    // A star without a master, workers without masters, an empty config.
    assert!(plan(&cfg_of(TopologyKind::Star, workers(&["a", "b"])))
        .links
        .is_empty());
    let mut cfg = mrs(2, 1);
    cfg.nodes[2].master = None;
    assert_eq!(plan(&cfg).links.len(), 2);
    for kind in TopologyKind::ALL {
        assert!(plan(&cfg_of(kind, Vec::new())).links.is_empty());
    }
}

#[test]
fn every_preset_dials_each_pair_at_most_once() {
    for cfg in presets() {
        let plan = plan(&cfg);
        let mut seen = BTreeSet::new();
        for link in &plan.links {
            let mut pair = [link.dialer.as_str(), &link.candidates[0]];
            pair.sort();
            assert!(
                seen.insert(pair),
                "{:?}: {pair:?} twice",
                cfg.cluster.topology
            );
        }
    }
}

#[test]
fn dials_of_lists_only_that_nodes_links() {
    let plan = plan(&mrs(3, 2));
    let dials: Vec<&str> = plan
        .dials_of("m2")
        .iter()
        .map(|l| l.candidates[0].as_str())
        .collect();
    assert_eq!(dials, ["m3"]);
    assert_eq!(plan.dials_of("s2-2")[0].candidates, ["m2", "m3"]);
    assert!(plan.dials_of("nobody").is_empty());
}

#[test]
fn neighbours_allowed_covers_both_directions_and_fallbacks() {
    let plan = plan(&mrs(3, 1));
    assert!(plan.neighbours_allowed("s1-1", "m1"));
    assert!(plan.neighbours_allowed("m1", "s1-1"));
    // A fallback master must accept the worker when the primary is down.
    assert!(plan.neighbours_allowed("m2", "s1-1"));
    assert!(!plan.neighbours_allowed("m3", "s1-1"));
    assert!(!plan.neighbours_allowed("s1-1", "s2-1"));
    assert!(plan.neighbours_allowed("m3", "m1"));
    assert!(!plan.neighbours_allowed("m1", "m1"));
}

#[test]
fn plan_graph_uses_primary_targets_only() {
    let g = plan(&mrs(3, 1)).graph();
    assert_eq!(g.edge_count(), 6);
    assert_eq!(g.neighbours("s1-1").collect::<Vec<_>>(), ["m1"]);
    assert_eq!(g.neighbours("m1").collect::<Vec<_>>(), ["m2", "m3", "s1-1"]);
}

// --- graph ---------------------------------------------------------------------------

#[test]
fn graph_basics() {
    let mut g = Graph::new();
    g.add_edge("b", "a");
    g.add_edge("a", "b");
    g.add_edge("c", "c");
    g.add_node("d");
    // The self-edge is ignored entirely, so "c" is not even added.
    assert_eq!(g.nodes().collect::<Vec<_>>(), ["a", "b", "d"]);
    assert_eq!(g.edge_count(), 1);
    assert_eq!(g.neighbours("a").collect::<Vec<_>>(), ["b"]);
    assert_eq!(g.neighbours("c").count(), 0);
    assert_eq!(g.neighbours("zz").count(), 0);
    let reach: Vec<String> = g.reachable_from("a").into_iter().collect();
    assert_eq!(reach, ["a", "b"]);
    assert!(g.reachable_from("zz").is_empty());
    assert_eq!(g.reachable_from("d").len(), 1);
}

// --- routing -------------------------------------------------------------------------

/// Hop distances from `me` by plain BFS, as the reference for shortest paths.
fn distances(g: &Graph, me: &str) -> BTreeMap<String, usize> {
    let mut dist = BTreeMap::from([(me.to_string(), 0)]);
    let mut queue = VecDeque::from([me.to_string()]);
    while let Some(at) = queue.pop_front() {
        let d = dist[&at];
        for n in g.neighbours(&at) {
            if !dist.contains_key(n) {
                dist.insert(n.to_string(), d + 1);
                queue.push_back(n.to_string());
            }
        }
    }
    dist
}

/// Routes of every node, as each node would compute them locally.
fn all_routes(g: &Graph) -> BTreeMap<String, Routes> {
    g.nodes()
        .map(|n| (n.to_string(), g.routes_from(n)))
        .collect()
}

/// Follows next hops hop by hop, each node using its own routes; returns the hop count.
fn walk(routes: &BTreeMap<String, Routes>, g: &Graph, from: &str, to: &str) -> usize {
    let mut at = from.to_string();
    let mut hops = 0;
    while at != to {
        let next = routes[&at]
            .next_hop(to)
            .unwrap_or_else(|| panic!("{at} has no route to {to}"));
        assert!(
            g.neighbours(&at).any(|n| n == next),
            "{next} is not a neighbour of {at}"
        );
        at = next.to_string();
        hops += 1;
        assert!(hops <= routes.len(), "routing loop from {from} to {to}");
    }
    hops
}

fn assert_shortest_everywhere(g: &Graph) {
    let routes = all_routes(g);
    for from in g.nodes() {
        let dist = distances(g, from);
        for (to, &d) in &dist {
            assert_eq!(walk(&routes, g, from, to), d, "{from} -> {to}");
        }
        let reachable: BTreeSet<&str> = routes[from].reachable().collect();
        let expected: BTreeSet<&str> = dist
            .keys()
            .map(String::as_str)
            .filter(|n| *n != from)
            .collect();
        assert_eq!(reachable, expected);
    }
}

/// Simulates a broadcast from `origin`: every node forwards per its own routes. Returns
/// (copies received per node, link crossings).
fn simulate_broadcast(
    routes: &BTreeMap<String, Routes>,
    g: &Graph,
    origin: &str,
) -> (BTreeMap<String, usize>, usize) {
    let mut received = BTreeMap::from([(origin.to_string(), 1)]);
    let mut crossings = 0;
    let mut queue = VecDeque::from([origin.to_string()]);
    while let Some(at) = queue.pop_front() {
        for next in routes[&at].broadcast_next(origin) {
            assert!(
                g.neighbours(&at).any(|n| n == next),
                "{at} forwards to non-neighbour {next}"
            );
            crossings += 1;
            *received.entry(next.clone()).or_insert(0) += 1;
            queue.push_back(next.clone());
        }
    }
    (received, crossings)
}

fn assert_broadcast_exactly_once(g: &Graph) {
    let routes = all_routes(g);
    for origin in g.nodes() {
        let (received, crossings) = simulate_broadcast(&routes, g, origin);
        let reachable = g.reachable_from(origin);
        assert_eq!(
            received.keys().cloned().collect::<BTreeSet<_>>(),
            reachable,
            "origin {origin}"
        );
        assert!(
            received.values().all(|&c| c == 1),
            "origin {origin}: {received:?}"
        );
        assert_eq!(crossings, reachable.len() - 1, "origin {origin}");
    }
}

/// Every preset with 6–9 nodes.
fn presets() -> Vec<Config> {
    vec![
        star(5),
        star(8),
        ring(6),
        ring(7),
        ring(8),
        ring(9),
        mesh(6),
        mesh(9),
        tree(7),
        tree(9),
        mrs(3, 2),
        mrs(2, 3),
        mrs(1, 6),
        two_triangles(),
    ]
}

#[test]
fn presets_are_connected_with_expected_sizes() {
    for cfg in presets() {
        let g = plan(&cfg).graph();
        let n = cfg.nodes.len();
        assert!((6..=9).contains(&n));
        assert_eq!(g.nodes().count(), n, "{:?}", cfg.cluster.topology);
        assert_eq!(g.reachable_from(&cfg.nodes[0].name).len(), n);
    }
}

#[test]
fn broadcast_reaches_every_node_exactly_once_on_every_preset() {
    for cfg in presets() {
        let g = plan(&cfg).graph();
        let routes = all_routes(&g);
        for origin in g.nodes() {
            let (received, crossings) = simulate_broadcast(&routes, &g, origin);
            assert_eq!(
                received.len(),
                cfg.nodes.len(),
                "{:?} from {origin}",
                cfg.cluster.topology
            );
            assert!(received.values().all(|&c| c == 1));
            assert_eq!(crossings, cfg.nodes.len() - 1);
        }
    }
}

#[test]
fn next_hops_follow_shortest_paths_on_every_preset() {
    for cfg in presets() {
        assert_shortest_everywhere(&plan(&cfg).graph());
    }
}

#[test]
fn next_hop_ties_break_by_name() {
    // Square a-b-d-c-a: both b and c are two hops from a to d; b comes first by name.
    let g = graph_of(&[("a", "c"), ("c", "d"), ("d", "b"), ("b", "a")]);
    assert_eq!(g.routes_from("a").next_hop("d"), Some("b"));
    assert_eq!(g.routes_from("d").next_hop("a"), Some("b"));
    assert_eq!(g.routes_from("b").next_hop("c"), Some("a"));
}

#[test]
fn next_hop_of_me_and_strangers_is_none() {
    let g = plan(&ring(6)).graph();
    let r = g.routes_from("n1");
    assert_eq!(r.me(), "n1");
    assert_eq!(r.next_hop("n1"), None);
    assert_eq!(r.next_hop("n99"), None);
    assert!(!r.is_reachable("n1"));
    assert!(r.is_reachable("n4"));
    assert_eq!(r.reachable().count(), 5);
    assert_eq!(r.next_hop("n2"), Some("n2"));
    assert_eq!(r.next_hop("n6"), Some("n6"));
    // n4 is three hops either way; n2 sorts before n6.
    assert_eq!(r.next_hop("n4"), Some("n2"));
}

#[test]
fn broadcast_next_from_unknown_origin_is_empty() {
    let g = plan(&star(3)).graph();
    let r = g.routes_from("hub");
    assert!(r.broadcast_next("nobody").is_empty());
    assert_eq!(r.broadcast_next("hub"), ["w1", "w2", "w3"]);
    assert_eq!(r.broadcast_next("w2"), ["w1", "w3"]);
    assert!(g.routes_from("w1").broadcast_next("w2").is_empty());
}

#[test]
fn routes_for_a_node_outside_the_graph_are_empty() {
    let g = plan(&ring(4)).graph();
    let r = g.routes_from("ghost");
    assert_eq!(r.me(), "ghost");
    assert_eq!(r.reachable().count(), 0);
    assert!(r.broadcast_next("n1").is_empty());
    let empty = Routes::default();
    assert_eq!(empty.next_hop("x"), None);
    assert!(empty.broadcast_next("x").is_empty());
}

#[test]
fn ring_with_a_node_removed_still_routes_everywhere() {
    for n in 3..=9 {
        let full = plan(&ring(n)).graph();
        for gone in full.nodes() {
            let mut g = Graph::new();
            for a in full.nodes().filter(|a| *a != gone) {
                g.add_node(a);
                for b in full.neighbours(a).filter(|b| *b != gone) {
                    g.add_edge(a, b);
                }
            }
            assert_eq!(g.nodes().count(), n - 1);
            for me in g.nodes() {
                assert_eq!(
                    g.routes_from(me).reachable().count(),
                    n - 2,
                    "ring {n} without {gone}"
                );
            }
            assert_shortest_everywhere(&g);
            assert_broadcast_exactly_once(&g);
        }
    }
}

#[test]
fn partitioned_graph_routes_and_broadcasts_within_each_part() {
    let g = graph_of(&[("a", "b"), ("b", "c"), ("x", "y")]);
    let r = g.routes_from("a");
    assert_eq!(r.reachable().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(r.next_hop("x"), None);
    assert_eq!(r.next_hop("c"), Some("b"));
    assert!(r.broadcast_next("x").is_empty());
    assert_shortest_everywhere(&g);
    assert_broadcast_exactly_once(&g);
}

#[test]
fn irregular_graphs_route_shortest_and_broadcast_once() {
    // A deterministic pseudo-random family of graphs: each node links to a few earlier ones.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for n in 6..=12 {
        for _ in 0..5 {
            let mut g = Graph::new();
            for i in 0..n {
                g.add_node(&format!("v{i}"));
                for j in 0..i {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed % 3 == 0 || j + 1 == i && seed % 2 == 0 {
                        g.add_edge(&format!("v{i}"), &format!("v{j}"));
                    }
                }
            }
            assert_shortest_everywhere(&g);
            assert_broadcast_exactly_once(&g);
        }
    }
}

/// Every reachable destination and its first hop.
fn next_hops(routes: &Routes) -> BTreeMap<String, String> {
    routes
        .reachable()
        .filter_map(|dest| Some((dest.to_owned(), routes.next_hop(dest)?.to_owned())))
        .collect()
}

/// Whether `routes_from(me)` routes exactly as the former name-keyed computation.
fn routes_as_reference(g: &Graph, me: &str) -> bool {
    let routes = g.routes_from(me);
    let reference = g.routes_from_by_name(me);
    routes.me() == me
        && next_hops(&routes) == reference.next_hop
        && g.nodes().chain(["ghost"]).all(|origin| {
            routes.broadcast_next(origin)
                == reference
                    .broadcast
                    .get(origin)
                    .map_or(&[][..], Vec::as_slice)
        })
}

#[test]
fn index_based_routes_equal_the_name_keyed_reference_on_every_graph() {
    let mut graphs: Vec<Graph> = presets().iter().map(|c| plan(c).graph()).collect();
    graphs.push(graph_of(&[("a", "b"), ("b", "c"), ("x", "y")]));
    graphs.push(graph_of(&[("a", "c"), ("c", "d"), ("d", "b"), ("b", "a")]));
    graphs.push(plan(&mesh(20)).graph());
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for n in [5, 9, 13, 30] {
        let mut g = Graph::new();
        for i in 0..n {
            g.add_node(&format!("v{i}"));
            for j in 0..i {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed % 4 == 0 {
                    g.add_edge(&format!("v{i}"), &format!("v{j}"));
                }
            }
        }
        graphs.push(g);
    }
    for g in &graphs {
        for me in g.nodes().chain(["ghost"]) {
            assert!(routes_as_reference(g, me), "routes of {me} over {g:?}");
        }
    }
}

#[test]
fn broadcast_trees_are_computed_on_first_use_and_kept() {
    let g = plan(&ring(6)).graph();
    let r = g.routes_from("n1");
    let copy = r.clone();
    // From n3 the tree runs n3-n2-n1-n6 one way and n3-n4-n5 the other.
    assert_eq!(r.broadcast_next("n3"), ["n6"]);
    assert_eq!(copy.broadcast_next("n3"), ["n6"]);
    assert_eq!(r.broadcast_next("n1"), ["n2", "n6"]);
    assert!(r.broadcast_next("n4").is_empty());
    // A second call answers from the first computation.
    assert!(std::ptr::eq(
        r.broadcast_next("n3").as_ptr(),
        r.broadcast_next("n3").as_ptr()
    ));
}

#[test]
fn add_edge_is_idempotent_and_ignores_self_edges() {
    let mut g = Graph::new();
    g.add_edge("a", "b");
    g.add_edge("b", "a");
    g.add_edge("a", "b");
    g.add_edge("c", "c");
    assert_eq!(g.edge_count(), 1);
    assert_eq!(g.nodes().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(g.neighbours("a").collect::<Vec<_>>(), ["b"]);
    assert_eq!(g.neighbours("b").collect::<Vec<_>>(), ["a"]);
}

#[test]
fn mesh_of_64_routes_directly_and_quickly() {
    let g = plan(&mesh(64)).graph();
    assert_eq!(g.edge_count(), 64 * 63 / 2);
    let start = std::time::Instant::now();
    let r = g.routes_from("p1");
    // Generous bound: this is an unoptimised test build; real cost is a few milliseconds.
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(r.reachable().count(), 63);
    for n in g.nodes().filter(|n| *n != "p1") {
        assert_eq!(r.next_hop(n), Some(n));
    }
    // A broadcast from me goes straight to everyone; from others, to no one.
    assert_eq!(r.broadcast_next("p1").len(), 63);
    assert!(r.broadcast_next("p2").is_empty());
}

// --- describe ------------------------------------------------------------------------

#[test]
fn describe_star() {
    let mut cfg = star(2);
    cfg.nodes[0].api = Some(addr(8080));
    cfg.nodes[0].service = Some(addr(7200));
    cfg.nodes[0].listen = addr(7100);
    cfg.nodes[1].listen = addr(7101);
    cfg.nodes[2].listen = "0.0.0.0:7102".parse().unwrap();
    cfg.nodes[2].advertise = Some(crate::config::HostPort::parse("w2.example:9102").unwrap());
    let text = describe(&cfg, &plan(&cfg));
    assert_eq!(
        text,
        "cluster \"test\": star, 3 nodes, 2 links\n\
         \x20 hub (master) listen 127.0.0.1:7100 advertise 127.0.0.1:7100 (from listen) service 127.0.0.1:7200 api 127.0.0.1:8080 (no token: loopback only)  dials: nothing\n\
         \x20 w1 (worker) listen 127.0.0.1:7101 advertise 127.0.0.1:7101 (from listen)  dials: hub\n\
         \x20 w2 (worker) listen 0.0.0.0:7102 advertise w2.example:9102  dials: hub\n"
    );
}

#[test]
fn describe_shows_fallbacks_and_several_dials() {
    let mut cfg = mrs(2, 1);
    for (i, node) in cfg.nodes.iter_mut().enumerate() {
        node.listen = addr(7400 + i as u16);
    }
    let text = describe(&cfg, &plan(&cfg));
    assert_eq!(
        text,
        "cluster \"test\": master-ring-slave, 4 nodes, 3 links\n\
         \x20 m1 (master) listen 127.0.0.1:7400 advertise 127.0.0.1:7400 (from listen)  dials: m2\n\
         \x20 m2 (master) listen 127.0.0.1:7401 advertise 127.0.0.1:7401 (from listen)  dials: nothing\n\
         \x20 s1-1 (worker) listen 127.0.0.1:7402 advertise 127.0.0.1:7402 (from listen)  dials: m1 (fallback m2)\n\
         \x20 s2-1 (worker) listen 127.0.0.1:7403 advertise 127.0.0.1:7403 (from listen)  dials: m2 (fallback m1)\n"
    );
    let mesh = mesh(3);
    let text = describe(&mesh, &plan(&mesh));
    assert!(text.contains("dials: p2, p3\n"), "{text}");
    let single = ring(1);
    assert!(
        describe(&single, &plan(&single)).starts_with("cluster \"test\": ring, 1 node, 0 links\n")
    );
}

#[test]
fn an_indexed_graph_from_sorted_names_is_the_same_graph_and_routes_the_same() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("d", "e")] {
        g.add_edge(a, b);
    }
    g.add_node("z");
    let names: Vec<String> = ["a", "b", "c", "d", "e", "z"].map(String::from).into();
    let neighbours = vec![
        vec![1, 3],
        vec![0, 2],
        vec![1, 3],
        vec![0, 2, 4],
        vec![3],
        vec![],
    ];
    let indexed = IndexedGraph::from_sorted(names, neighbours).unwrap();
    assert_eq!(indexed.to_graph(), g);
    let (by_index, by_name) = (Arc::new(indexed).routes_from("a"), g.routes_from("a"));
    assert_eq!(next_hops(&by_index), next_hops(&by_name));
    for origin in g.nodes() {
        assert_eq!(
            by_index.broadcast_next(origin),
            by_name.broadcast_next(origin)
        );
    }
}

#[test]
fn an_indexed_graph_refuses_unsorted_names_and_lopsided_or_out_of_range_neighbours() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        IndexedGraph::from_sorted(names(&["b", "a"]), vec![vec![], vec![]]),
        Err(IndexedGraphError::Unsorted(1))
    );
    assert_eq!(
        IndexedGraph::from_sorted(names(&["a", "b"]), vec![vec![]]),
        Err(IndexedGraphError::Lengths(1, 2))
    );
    assert_eq!(
        IndexedGraph::from_sorted(names(&["a", "b"]), vec![vec![1], vec![]]),
        Err(IndexedGraphError::Neighbours(0))
    );
    assert_eq!(
        IndexedGraph::from_sorted(names(&["a", "b"]), vec![vec![7], vec![]]),
        Err(IndexedGraphError::Neighbours(0))
    );
    assert_eq!(
        IndexedGraph::from_sorted(names(&["a"]), vec![vec![0]]),
        Err(IndexedGraphError::Neighbours(0))
    );
}
