//! Issue 12: membership replicated by versioned deltas converges, and stays converged under
//! churn (a custom stat changing, a node restarting with a new incarnation, a node leaving),
//! with exact assertions on every node's view; a digest's answer leaves out what its sender
//! hears directly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nodecloud::node::MembershipView;
use nodecloud::wire::{
    self, Digest, Frame, FrameCodec, Identity, Message, StatValue, MAX_HANDSHAKE_FRAME_BYTES,
};
use nodecloud::{testing, NodeHandle};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tracing::info;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// What every node must see: each member's incarnation, links and custom stats.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    incarnation: Uuid,
    links: Vec<String>,
    extra: BTreeMap<String, StatValue>,
}

fn seen(view: &MembershipView) -> BTreeMap<String, Seen> {
    view.members
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                Seen {
                    incarnation: m.incarnation,
                    links: m.links.to_vec(),
                    extra: m.stats.extra.clone(),
                },
            )
        })
        .collect()
}

/// The view every live node must hold: the live nodes, the master linked to every live
/// worker, each worker to the master, and the given custom stats.
fn expected(
    live: &[&NodeHandle],
    extra: &BTreeMap<String, BTreeMap<String, StatValue>>,
) -> BTreeMap<String, Seen> {
    let mut workers: Vec<String> = live
        .iter()
        .map(|n| n.name().to_owned())
        .filter(|n| n != "master")
        .collect();
    workers.sort();
    live.iter()
        .map(|n| {
            let links = if n.name() == "master" {
                workers.clone()
            } else {
                vec!["master".to_owned()]
            };
            (
                n.name().to_owned(),
                Seen {
                    incarnation: n.incarnation(),
                    links,
                    extra: extra.get(n.name()).cloned().unwrap_or_default(),
                },
            )
        })
        .collect()
}

/// Wait until every live node's view is exactly `want`.
async fn all_see(live: &[&NodeHandle], want: &BTreeMap<String, Seen>) {
    for node in live {
        let mut rx = node.membership();
        let got = tokio::time::timeout(WAIT, rx.wait_for(|v| seen(v) == *want)).await;
        if got.is_err() {
            let now = seen(&node.membership().borrow());
            panic!(
                "{} does not see the expected view:\n  want {want:?}\n  have {now:?}",
                node.name()
            );
        }
    }
}

#[actix_rt::test]
async fn delta_membership_converges_and_stays_exact_under_restart_leave_and_stat_churn() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = testing::star(4);
    let mut nodes = cluster.start().await.expect("cluster starts");
    let mut extra: BTreeMap<String, BTreeMap<String, StatValue>> = BTreeMap::new();

    info!("--- every node sees every node, with exact links");
    let live: Vec<&NodeHandle> = nodes.iter().collect();
    all_see(&live, &expected(&live, &extra)).await;

    info!("--- a custom stat changes on worker-2");
    let w2 = nodes.iter().find(|n| n.name() == "worker-2").unwrap();
    w2.set_stat("jobs", Some(StatValue::Int(7))).await.unwrap();
    extra
        .entry("worker-2".into())
        .or_default()
        .insert("jobs".into(), StatValue::Int(7));
    all_see(&live, &expected(&live, &extra)).await;
    w2.set_stat("jobs", Some(StatValue::Int(8))).await.unwrap();
    extra
        .entry("worker-2".into())
        .or_default()
        .insert("jobs".into(), StatValue::Int(8));
    all_see(&live, &expected(&live, &extra)).await;

    info!("--- worker-3 restarts with a new incarnation");
    let at = nodes.iter().position(|n| n.name() == "worker-3").unwrap();
    let old = nodes.remove(at);
    let old_incarnation = old.incarnation();
    old.shutdown().await;
    {
        let live: Vec<&NodeHandle> = nodes.iter().collect();
        all_see(&live, &expected(&live, &extra)).await;
    }
    let reborn = cluster.start_node("worker-3").await.expect("restarts");
    assert_ne!(reborn.incarnation(), old_incarnation);
    nodes.push(reborn);
    {
        let live: Vec<&NodeHandle> = nodes.iter().collect();
        all_see(&live, &expected(&live, &extra)).await;
    }

    info!("--- worker-4 leaves");
    let at = nodes.iter().position(|n| n.name() == "worker-4").unwrap();
    nodes.remove(at).shutdown().await;
    let live: Vec<&NodeHandle> = nodes.iter().collect();
    let want = expected(&live, &extra);
    all_see(&live, &want).await;

    info!("--- a custom stat is removed on worker-2");
    let w2 = nodes.iter().find(|n| n.name() == "worker-2").unwrap();
    w2.set_stat("jobs", None).await.unwrap();
    extra.remove("worker-2");
    let live: Vec<&NodeHandle> = nodes.iter().collect();
    all_see(&live, &expected(&live, &extra)).await;

    for node in &nodes {
        node.shutdown().await;
    }
}

/// A raw peer's link to `to`, authenticated as `node` (a declared node that is not running).
async fn dial_as(
    cluster: &testing::TestCluster,
    to: std::net::SocketAddr,
    node: &str,
) -> Framed<TcpStream, FrameCodec> {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(to))
        .await
        .expect("connect within bound")
        .unwrap();
    let mut link = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
    let me = Identity {
        cluster: cluster.config.cluster.name.clone(),
        node: node.to_owned(),
        incarnation: Uuid::new_v4(),
        secret: cluster.config.cluster.secret.as_bytes().to_vec(),
        welcome: Default::default(),
    };
    wire::dial(&mut link, &me, WAIT).await.unwrap();
    link.codec_mut()
        .set_max_frame_bytes(cluster.config.cluster.max_frame_bytes);
    link
}

/// Read `delta` frames until one carries the whole state of `node`; returns the nodes whose
/// whole states came, in order.
async fn whole_states_until(link: &mut Framed<TcpStream, FrameCodec>, node: &str) -> Vec<String> {
    let mut wholes = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, link.next()).await {
            Ok(Some(Ok(Frame(_, Message::Delta(d))))) => {
                wholes.extend(
                    d.nodes
                        .iter()
                        .filter(|r| r.from == 0)
                        .map(|r| r.node.clone()),
                );
                if wholes.iter().any(|n| n == node) {
                    return wholes;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no whole state of {node} (had {wholes:?}): {other:?}"),
        }
    }
}

#[actix_rt::test]
async fn a_digest_answer_leaves_out_the_nodes_the_asker_says_it_is_linked_to() {
    let cluster = testing::star(3);
    let mut nodes = Vec::new();
    for name in ["master", "worker-1", "worker-2"] {
        nodes.push(cluster.start_node(name).await.expect("node starts"));
    }
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("converged");
    // worker-3 is declared and not running: a raw peer takes its place at the master.
    let mut link = dial_as(&cluster, nodes[0].listen_addr(), "worker-3").await;

    info!("--- linked to worker-1: its state is left out, worker-2's comes");
    let asked = |linked: Vec<String>| {
        Message::Digest(Digest {
            nodes: vec![],
            linked,
        })
    };
    link.send(&asked(vec!["worker-1".into()])).await.unwrap();
    let first = whole_states_until(&mut link, "worker-2").await;
    assert!(
        !first.iter().any(|n| n == "worker-1"),
        "worker-1's state came though the digest said linked: {first:?}"
    );

    info!("--- linked to nobody: worker-1's state comes");
    link.send(&asked(vec![])).await.unwrap();
    let second = whole_states_until(&mut link, "worker-1").await;
    assert!(second.iter().any(|n| n == "worker-2"), "{second:?}");
    for node in nodes {
        node.shutdown().await;
    }
}
