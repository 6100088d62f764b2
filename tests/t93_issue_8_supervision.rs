//! Supervision without holes: a panic inside a handler of any system actor (injected with the
//! `faults` feature) restarts that actor, and what it owned survives: the methods Calls
//! serves, the routes, the peer and service listeners' sockets. Each test checks the node
//! still does the job of the actor that panicked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use actix::prelude::*;
use nodecloud::node::SystemActor;
use nodecloud::service::{Client, Endpoint};
use nodecloud::{cluster, testing, CallTarget, Delivery, Invocation, NodeHandle, Request};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug)]
struct Double(i64);
impl Request for Double {
    const METHOD: &'static str = "math.double";
    type Response = i64;
}

struct Doubler;
impl Actor for Doubler {
    type Context = Context<Self>;
}
impl Handler<Invocation<Double>> for Doubler {
    type Result = Result<i64, String>;
    fn handle(&mut self, call: Invocation<Double>, _: &mut Context<Self>) -> Self::Result {
        Ok(call.request.0 * 2)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Reading {
    value: i64,
}
impl nodecloud::Event for Reading {
    const TOPIC: &'static str = "reading";
}

/// Forwards what it receives to a channel.
struct Collector(mpsc::UnboundedSender<Reading>);
impl Actor for Collector {
    type Context = Context<Self>;
}
impl Handler<Delivery<Reading>> for Collector {
    type Result = ();
    fn handle(&mut self, d: Delivery<Reading>, _: &mut Context<Self>) {
        let _ = self.0.send(d.event);
    }
}

/// A star of the master and one worker, both accepting applications; the worker serves
/// `math.double`, and the master sees it.
async fn star_with_a_doubler() -> (testing::TestCluster, Vec<NodeHandle>) {
    nodecloud::node::install_panic_hook();
    let mut c = testing::star(1);
    for n in &mut c.config.nodes {
        n.service = Some(c.ports.reserve());
    }
    let nodes = c.start().await.expect("cluster starts");
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    nodes[1].implement::<Double>(Doubler.start().recipient());
    testing::wait_implemented(&nodes[0], Double::METHOD, &["worker-1"], WAIT)
        .await
        .unwrap();
    (c, nodes)
}

async fn double_on_worker(from: &NodeHandle, n: i64) -> i64 {
    from.call_timeout(CallTarget::Node("worker-1".into()), &Double(n), WAIT)
        .await
        .expect("the call is answered")
}

#[actix_rt::test]
async fn calls_restarted_after_a_panic_still_serves_its_methods_and_places_calls() {
    let (_c, nodes) = star_with_a_doubler().await;
    nodes[1].inject_panic(SystemActor::Calls).await;
    // The worker's Calls kept its table: a call from the master reaches the doubler...
    assert_eq!(double_on_worker(&nodes[0], 21).await, 42);
    // ...and it places calls of its own.
    nodes[0].implement::<Double>(Doubler.start().recipient());
    let got = nodes[1]
        .call_timeout(CallTarget::Node("master".into()), &Double(5), WAIT)
        .await
        .expect("a call from the restarted Calls is answered");
    assert_eq!(got, 10);
    nodes[0].inject_panic(SystemActor::Calls).await;
    assert_eq!(double_on_worker(&nodes[0], 4).await, 8);
    testing::wait_implemented(&nodes[1], Double::METHOD, &["master", "worker-1"], WAIT)
        .await
        .unwrap();
    assert!(!nodes[0].is_degraded() && !nodes[1].is_degraded());
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn the_router_the_bus_membership_and_stats_restarted_after_a_panic_keep_events_and_calls_flowing(
) {
    let (_c, nodes) = star_with_a_doubler().await;
    let (tx, mut readings) = mpsc::unbounded_channel();
    nodes[1].subscribe::<Reading>(Collector(tx).start().recipient());
    for actor in [
        SystemActor::Router,
        SystemActor::EventBus,
        SystemActor::Membership,
        SystemActor::Stats,
    ] {
        nodes[0].inject_panic(actor).await;
        nodes[1].inject_panic(actor).await;
    }
    // Within less than a stats interval (5 s): a restarted Membership shows the nodes it
    // holds as up at once, not only once each peer's state changes again.
    testing::wait_up(&nodes[0], &["worker-1"], Duration::from_secs(3))
        .await
        .unwrap();
    // Events cross the link and reach the subscriber, calls are answered.
    let mut got = None;
    for value in 0.. {
        nodes[0].publish(&Reading { value }).unwrap();
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), readings.recv()).await
        {
            got = Some(r);
            break;
        }
        assert!(value < 50, "no event reached the worker's subscriber");
    }
    assert!(got.is_some());
    assert_eq!(double_on_worker(&nodes[0], 3).await, 6);
    assert!(!nodes[0].is_degraded() && !nodes[1].is_degraded());
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn the_peer_listener_restarted_after_a_panic_still_accepts_a_restarted_worker() {
    let (c, nodes) = star_with_a_doubler().await;
    nodes[0].inject_panic(SystemActor::PeerListener).await;
    cluster::stop(&nodes[1..]).await;
    testing::wait_down(&nodes[0], "worker-1", WAIT)
        .await
        .unwrap();
    let worker = c.start_node("worker-1").await.expect("the worker restarts");
    testing::wait_up(&nodes[0], &["worker-1"], WAIT)
        .await
        .expect("the master's listener accepted the restarted worker");
    cluster::stop(&[nodes[0].clone(), worker]).await;
}

#[actix_rt::test]
async fn the_service_listener_restarted_after_a_panic_still_attaches_applications() {
    let (c, nodes) = star_with_a_doubler().await;
    nodes[1].inject_panic(SystemActor::ServiceListener).await;
    let addr = c.config.node("worker-1").unwrap().service.unwrap();
    let secret = c.config.cluster.secret.as_bytes().to_vec();
    let cluster_name = c.config.cluster.name.clone();
    let app = Client::connect(&Endpoint::Tcp(addr), &cluster_name, &secret, "late-app")
        .await
        .expect("an application attaches after the restart");
    let target = CallTarget::Node("worker-1".into());
    let doubled = tokio::time::timeout(WAIT, app.call(target, &Double(7), Some(WAIT)))
        .await
        .expect("within the deadline")
        .expect("the call is answered");
    assert_eq!(doubled, 14);
    cluster::stop(&nodes).await;
}

#[derive(Serialize, Deserialize, Debug)]
struct Huge(usize);
impl Request for Huge {
    const METHOD: &'static str = "test.huge";
    type Response = Vec<u8>;
}

/// Answers `Huge(n)` with `n` bytes.
struct Bloater;
impl Actor for Bloater {
    type Context = Context<Self>;
}
impl Handler<Invocation<Huge>> for Bloater {
    type Result = Result<Vec<u8>, String>;
    fn handle(&mut self, call: Invocation<Huge>, _: &mut Context<Self>) -> Self::Result {
        Ok(vec![7; call.request.0])
    }
}

#[actix_rt::test]
async fn a_reply_too_large_for_a_frame_reaches_the_caller_as_too_large_at_once() {
    let (c, nodes) = star_with_a_doubler().await;
    nodes[1].implement::<Huge>(Bloater.start().recipient());
    testing::wait_implemented(&nodes[0], Huge::METHOD, &["worker-1"], WAIT)
        .await
        .unwrap();
    let max = c.config.cluster.max_frame_bytes;
    let long = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let got = nodes[0]
        .call_timeout(CallTarget::Node("worker-1".into()), &Huge(max + 1), long)
        .await;
    match got {
        Err(nodecloud::CallError::TooLarge(why)) => assert!(why.contains("test.huge"), "{why}"),
        other => panic!("expected too_large, got {other:?}"),
    }
    assert!(
        started.elapsed() < WAIT,
        "answered at once, not at the 60 s timeout"
    );
    // A response that fits still goes through.
    let fits = nodes[0]
        .call_timeout(CallTarget::Node("worker-1".into()), &Huge(1000), WAIT)
        .await
        .expect("a response that fits is answered");
    assert_eq!(fits.len(), 1000);
    cluster::stop(&nodes).await;
}
