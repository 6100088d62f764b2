//! A star cluster in one process: membership, typed pub/sub, targeted events, supervision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use actix::prelude::*;
use nodecloud::node::Host;
use nodecloud::{cluster, testing, Delivery, Event, NodeHandle, Target};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Reading {
    value: i64,
}
impl Event for Reading {
    const TOPIC: &'static str = "test.reading";
}

/// Forwards every delivery, with the name of the node it came from, into a channel.
struct Collector {
    tx: mpsc::UnboundedSender<(String, Reading)>,
}
impl Actor for Collector {
    type Context = Context<Self>;
}
impl Handler<Delivery<Reading>> for Collector {
    type Result = ();
    fn handle(&mut self, d: Delivery<Reading>, _: &mut Context<Self>) {
        let _ = self.tx.send((d.from.name, d.event));
    }
}

async fn collector(node: &NodeHandle) -> mpsc::UnboundedReceiver<(String, Reading)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = Collector { tx }.start();
    node.subscribe::<Reading>(addr.recipient());
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Reading)>) -> (String, Reading) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("channel open")
}

async fn star(workers: usize) -> Vec<NodeHandle> {
    let nodes = testing::star(workers)
        .start()
        .await
        .expect("cluster starts");
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");
    nodes
}

#[actix_rt::test]
async fn star_cluster_converges_on_every_node_and_replicates_stats() {
    let nodes = star(3).await;
    let view = nodes[1].membership().borrow().clone();
    assert_eq!(
        view.members.len(),
        4,
        "worker-1 sees all four nodes: {:?}",
        view.members.keys().collect::<Vec<_>>()
    );
    let master = &view.members["master"];
    assert_eq!(master.role, "master");
    assert_eq!(master.stats.pid, std::process::id());
    assert!(master.stats.cpus >= 1);
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn publish_reaches_every_node_once_including_the_publisher() {
    let nodes = star(3).await;
    let mut rxs = Vec::new();
    for n in &nodes {
        rxs.push(collector(n).await);
    }
    nodes[1].publish(&Reading { value: 1 }).unwrap();
    nodes[1].publish(&Reading { value: 2 }).unwrap();
    for rx in &mut rxs {
        // Same path, FIFO: the marker (2) right after the event (1) proves there was no copy.
        assert_eq!(
            next(rx).await,
            ("worker-1".to_owned(), Reading { value: 1 })
        );
        assert_eq!(
            next(rx).await,
            ("worker-1".to_owned(), Reading { value: 2 })
        );
    }
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn events_published_by_a_worker_cross_each_star_link_once() {
    let nodes = star(3).await;
    for n in &nodes {
        let _ = collector(n).await;
    }
    let before: u64 = nodes
        .iter()
        .flat_map(|n| n.link_stats())
        .map(|l| l.events_out)
        .sum();
    let mut rx = collector(&nodes[3]).await;
    nodes[1].publish(&Reading { value: 7 }).unwrap();
    assert_eq!(next(&mut rx).await.1, Reading { value: 7 });
    let after: u64 = nodes
        .iter()
        .flat_map(|n| n.link_stats())
        .map(|l| l.events_out)
        .sum();
    assert_eq!(
        after - before,
        3,
        "N-1 = 3 link crossings for a broadcast in a 4-node star"
    );
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn send_to_reaches_only_the_named_node() {
    let nodes = star(3).await;
    let mut rx1 = collector(&nodes[1]).await;
    let mut rx2 = collector(&nodes[2]).await;
    let mut rx3 = collector(&nodes[3]).await;
    // worker-1 -> worker-2 is relayed by the master.
    nodes[1]
        .send_to("worker-2", &Reading { value: 10 })
        .unwrap();
    assert_eq!(
        next(&mut rx2).await,
        ("worker-1".to_owned(), Reading { value: 10 })
    );
    // By incarnation uuid, to worker-3.
    let id = nodes[3].incarnation();
    nodes[1].send_to(id, &Reading { value: 11 }).unwrap();
    assert_eq!(next(&mut rx3).await.1, Reading { value: 11 });
    // A broadcast marker: the first thing the others see, so they never saw the targeted ones.
    nodes[1].publish(&Reading { value: 99 }).unwrap();
    assert_eq!(next(&mut rx1).await.1, Reading { value: 99 });
    assert_eq!(next(&mut rx3).await.1, Reading { value: 99 });
    assert_eq!(next(&mut rx2).await.1, Reading { value: 99 });
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn send_to_an_unknown_target_is_an_error() {
    let nodes = star(1).await;
    let err = nodes[1]
        .send_to("nobody", &Reading { value: 1 })
        .unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
    let err = nodes[1]
        .send_to(
            Target::Incarnation(uuid::Uuid::new_v4()),
            &Reading { value: 1 },
        )
        .unwrap_err();
    assert!(err.to_string().contains("incarnation"), "{err}");
    cluster::stop(&nodes).await;
}

/// Panics on value 13; re-subscribes in `started`, so a restarted instance keeps receiving.
struct Fragile {
    node: NodeHandle,
    tx: mpsc::UnboundedSender<i64>,
}
impl Actor for Fragile {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.node.subscribe::<Reading>(ctx.address().recipient());
        let _ = self.tx.send(-1); // "started" marker
    }
}
impl Handler<Delivery<Reading>> for Fragile {
    type Result = ();
    fn handle(&mut self, d: Delivery<Reading>, _: &mut Context<Self>) {
        assert_ne!(d.event.value, 13, "unlucky number");
        let _ = self.tx.send(d.event.value);
    }
}

async fn recv_i64(rx: &mut mpsc::UnboundedReceiver<i64>) -> i64 {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("within the deadline")
        .expect("open")
}

#[actix_rt::test]
async fn a_panicking_user_actor_is_restarted_and_keeps_receiving() {
    nodecloud::node::install_panic_hook();
    let nodes = star(1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let node = nodes[0].clone();
    let fragile = nodes[0]
        .supervise("fragile", move || Fragile {
            node: node.clone(),
            tx: tx.clone(),
        })
        .await;
    assert_eq!(recv_i64(&mut rx).await, -1);
    let first = fragile.addr().expect("running");
    nodes[1].publish(&Reading { value: 1 }).unwrap();
    assert_eq!(recv_i64(&mut rx).await, 1);
    nodes[1].publish(&Reading { value: 13 }).unwrap();
    assert_eq!(recv_i64(&mut rx).await, -1, "restarted after the panic");
    nodes[1].publish(&Reading { value: 2 }).unwrap();
    assert_eq!(
        recv_i64(&mut rx).await,
        2,
        "the new instance receives remote events"
    );
    assert!(!first.connected(), "the panicked instance is gone");
    assert!(!nodes[0].is_degraded());
    // The node itself kept serving: membership is intact.
    testing::wait_up(&nodes[0], &["worker-1"], WAIT)
        .await
        .unwrap();
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_user_actor_that_keeps_panicking_escalates_and_the_node_reports_degraded() {
    nodecloud::node::install_panic_hook();
    let nodes = star(1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let node = nodes[0].clone();
    let _fragile = nodes[0]
        .supervise("doomed", move || Fragile {
            node: node.clone(),
            tx: tx.clone(),
        })
        .await;
    assert_eq!(recv_i64(&mut rx).await, -1);
    let stop = nodes[0].clone();
    let stopped = actix_rt::spawn(async move { stop.stop_requested().await });
    for _ in 0..5 {
        nodes[0].publish(&Reading { value: 13 }).unwrap();
        assert_eq!(recv_i64(&mut rx).await, -1, "restarted within the budget");
    }
    // The sixth panic within 10 s exceeds the budget.
    nodes[0].publish(&Reading { value: 13 }).unwrap();
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("escalation asks the node to stop")
        .unwrap();
    assert!(nodes[0].is_degraded());
    cluster::stop(&nodes).await;
}

/// Answers `Ping`: alive while the node it was started on runs.
struct Probe;
impl Actor for Probe {
    type Context = Context<Self>;
}
#[derive(Message)]
#[rtype(result = "()")]
struct Ping;
impl Handler<Ping> for Probe {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

#[actix_rt::test]
async fn nodes_sharing_one_arbiter_converge_and_one_that_stops_ends_only_its_own_actors() {
    let reserved = testing::star(2);
    let config = reserved.config();
    let arbiter = Arbiter::new();
    let mut nodes = Vec::new();
    for n in &config.nodes {
        let host = Host::Shared(arbiter.handle());
        let node =
            cluster::start_node_hosted(config.clone(), &n.name, reserved.bound(&n.name), host)
                .await
                .expect("node starts on the shared arbiter");
        nodes.push(node);
    }
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");

    // An actor started in worker-2's task set, and a task of it holding a sender.
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    assert!(nodes[2].spawn(async move {
        let _ = addr_tx.send(Probe.start());
        let _held = held_tx;
        std::future::pending::<()>().await;
    }));
    let probe = tokio::time::timeout(WAIT, addr_rx)
        .await
        .expect("the task runs within the deadline")
        .expect("the task sends the probe's address");
    probe
        .send(Ping)
        .await
        .expect("the probe answers while its node runs");

    nodes[2].shutdown().await;
    let dropped = tokio::time::timeout(WAIT, held_rx)
        .await
        .expect("the node's task ends within the deadline");
    assert!(dropped.is_err(), "the task was dropped, not finished");
    let answer = tokio::time::timeout(WAIT, probe.send(Ping))
        .await
        .expect("the probe's mailbox closes within the deadline");
    assert!(answer.is_err(), "the probe stopped with its node");
    assert!(!nodes[2].spawn(async {}), "a stopped node takes no task");

    // The arbiter runs on, and with it the two other nodes.
    testing::wait_down(&nodes[0], "worker-2", WAIT)
        .await
        .expect("the master sees worker-2 down");
    testing::wait_up(&nodes[0], &["worker-1"], WAIT)
        .await
        .expect("worker-1 stays up");
    let mut rx = collector(&nodes[1]).await;
    nodes[0].publish(&Reading { value: 3 }).unwrap();
    assert_eq!(
        next(&mut rx).await,
        ("master".to_owned(), Reading { value: 3 })
    );
    cluster::stop(&nodes[..2]).await;
    arbiter.stop();
}
