//! Calls between actors across a star: named and any-implementer targets, relays, and every
//! error a caller can see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use actix::prelude::*;
use nodecloud::{cluster, testing, CallError, CallTarget, Invocation, NodeHandle, Request};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug)]
struct Add {
    a: i64,
    b: i64,
}
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
    by: String,
}
impl Request for Add {
    const METHOD: &'static str = "math.add";
    type Response = Sum;
}

/// Same method name, another shape: what a confused caller sends.
#[derive(Serialize, Deserialize, Debug)]
struct NotAdd {
    text: String,
}
impl Request for NotAdd {
    const METHOD: &'static str = "math.add";
    type Response = Sum;
}

#[derive(Serialize, Deserialize, Debug)]
struct Stall;
impl Request for Stall {
    const METHOD: &'static str = "test.stall";
    type Response = ();
}

/// Adds (failing on a = 13), and never answers `Stall`.
struct Adder {
    name: String,
    /// Told when a `Stall` arrives.
    stalled: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}
impl Actor for Adder {
    type Context = Context<Self>;
}
impl Handler<Invocation<Add>> for Adder {
    type Result = Result<Sum, String>;
    fn handle(&mut self, call: Invocation<Add>, _: &mut Context<Self>) -> Self::Result {
        if call.request.a == 13 {
            return Err(format!("{} refuses 13 (caller {})", self.name, call.from));
        }
        Ok(Sum {
            sum: call.request.a + call.request.b,
            by: self.name.clone(),
        })
    }
}
impl Handler<Invocation<Stall>> for Adder {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, _: Invocation<Stall>, _: &mut Context<Self>) -> Self::Result {
        if let Some(tx) = &self.stalled {
            let _ = tx.send(());
        }
        Box::pin(std::future::pending())
    }
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

fn adder_on(node: &NodeHandle) -> Addr<Adder> {
    adder_telling(node, None)
}

fn adder_telling(
    node: &NodeHandle,
    stalled: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> Addr<Adder> {
    let addr = Adder {
        name: node.name().to_owned(),
        stalled,
    }
    .start();
    node.implement::<Add>(addr.clone().recipient());
    node.implement::<Stall>(addr.clone().recipient());
    addr
}

#[actix_rt::test]
async fn a_call_between_workers_is_relayed_by_the_master_and_answered() {
    let nodes = star(2).await;
    let _adder = adder_on(&nodes[2]);
    let sum = nodes[1]
        .call("worker-2", &Add { a: 2, b: 3 })
        .await
        .unwrap();
    assert_eq!(
        sum,
        Sum {
            sum: 5,
            by: "worker-2".into()
        }
    );
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_call_to_any_implementer_takes_the_equally_loaded_nodes_in_turn() {
    let nodes = star(3).await;
    let _a = adder_on(&nodes[1]);
    let _b = adder_on(&nodes[3]);
    testing::wait_implemented(&nodes[0], Add::METHOD, &["worker-1", "worker-3"], WAIT)
        .await
        .unwrap();
    let mut by = Vec::new();
    for i in 0..4 {
        let sum = nodes[0]
            .call(CallTarget::Any, &Add { a: i, b: 1 })
            .await
            .unwrap();
        assert_eq!(sum.sum, i + 1);
        by.push(sum.by);
    }
    by.sort();
    assert_eq!(by, ["worker-1", "worker-1", "worker-3", "worker-3"]);
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_node_serves_its_own_calls_locally() {
    let nodes = star(1).await;
    let _adder = adder_on(&nodes[0]);
    let sum = nodes[0].call("master", &Add { a: 40, b: 2 }).await.unwrap();
    assert_eq!(sum.sum, 42);
    let any = nodes[0]
        .call(CallTarget::Any, &Add { a: 1, b: 1 })
        .await
        .unwrap();
    assert_eq!(any.by, "master");
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn every_call_error_is_distinct_and_says_what_happened() {
    let nodes = star(2).await;
    let _adder = adder_on(&nodes[2]);
    testing::wait_implemented(&nodes[1], Add::METHOD, &["worker-2"], WAIT)
        .await
        .unwrap();
    let caller = &nodes[1];

    let e = caller
        .call("worker-2", &Add { a: 13, b: 0 })
        .await
        .unwrap_err();
    assert_eq!(
        e,
        CallError::Remote("worker-2 refuses 13 (caller worker-1)".into())
    );

    let e = caller
        .call("master", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::NoImplementer(ref m) if m.contains("math.add")),
        "{e}"
    );

    #[derive(Serialize, Deserialize)]
    struct Nobody;
    impl Request for Nobody {
        const METHOD: &'static str = "nobody.home";
        type Response = ();
    }
    let e = caller.call(CallTarget::Any, &Nobody).await.unwrap_err();
    assert_eq!(e, CallError::NoImplementer("nobody.home".into()));

    let e = caller
        .call("worker-9", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert_eq!(e, CallError::UnknownNode("worker-9".into()));

    let e = caller
        .call("worker-2", &NotAdd { text: "x".into() })
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::BadPayload(_)), "{e}");

    let started = Instant::now();
    let e = caller
        .call_timeout("worker-2", &Stall, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(e, CallError::Timeout(Duration::from_millis(200)));
    assert!(started.elapsed() < Duration::from_secs(3));

    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_call_pending_on_a_node_that_stops_fails_with_target_down_before_its_timeout() {
    let nodes = star(2).await;
    let (tx, mut stalled) = tokio::sync::mpsc::unbounded_channel();
    let _adder = adder_telling(&nodes[2], Some(tx));
    let caller = nodes[1].clone();
    let pending = actix_rt::spawn(async move {
        caller
            .call_timeout("worker-2", &Stall, Duration::from_secs(30))
            .await
    });
    // Once worker-2's actor holds the call, stop worker-2: its links drop.
    tokio::time::timeout(WAIT, stalled.recv())
        .await
        .expect("the call reaches worker-2");
    let started = Instant::now();
    nodes[2].shutdown().await;
    let e = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the call ends before the deadline")
        .unwrap()
        .unwrap_err();
    // Either the caller sees worker-2 go down, or worker-2's own Calls answers for its
    // stopped actor first: both end the call at once, with a clear error.
    assert!(
        matches!(e, CallError::TargetDown(ref n) if n == "worker-2")
            || matches!(e, CallError::ImplementerGone(_)),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = nodes[1]
        .call("worker-2", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert_eq!(e, CallError::TargetDown("worker-2".into()));
    cluster::stop(&nodes).await;
}
