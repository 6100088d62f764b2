//! Resumable peer links in one process: a worker reaches its master through a forwarder (see
//! `nodecloud::testing::forwarder`), the test cuts the connection and holds the network dark
//! for a second, and the events published meanwhile arrive after the cut exactly once and in
//! order, with no `down` on either side (the failure timeout, 3 s, is longer than the cut).
//! And a relay that holds events it accepted (its next link is full) while the link they came
//! on is re-dialled hands them on before the fresh connection's replay of what follows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use nodecloud::config::{Config, HostPort, LinkConfig, NodeConfig, Role, TopologyKind};
use nodecloud::sockets::Bound;
use nodecloud::testing::forwarder::{Faults, ForwarderHandle};
use nodecloud::{cluster, testing, Delivery, Event, NodeHandle};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::info;

const WAIT: Duration = Duration::from_secs(10);
/// How long the network stays dark: well under the failure timeout (250 ms × 12).
const CUT: Duration = Duration::from_secs(1);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Numbered {
    n: u64,
}
impl Event for Numbered {
    const TOPIC: &'static str = "resume.numbered";
}

/// Records every number it is given, and reports the list once `until` arrived.
struct Recorder {
    seen: Vec<u64>,
    until: u64,
    done: mpsc::UnboundedSender<Vec<u64>>,
}
impl Actor for Recorder {
    type Context = Context<Self>;
}
impl Handler<Delivery<Numbered>> for Recorder {
    type Result = ();
    fn handle(&mut self, d: Delivery<Numbered>, _: &mut Context<Self>) {
        self.seen.push(d.event.n);
        if d.event.n == self.until {
            let _ = self.done.send(self.seen.clone());
        }
    }
}

/// A star of a master and one worker that dials the master through `front` (the forwarder's
/// address, advertised by the master), heartbeat 250 ms × 12.
fn star_through(listen: SocketAddr, front: SocketAddr) -> Config {
    let any_port = SocketAddr::new(listen.ip(), 0);
    let mut master = NodeConfig::new("master", Role::Master, listen);
    master.advertise = Some(HostPort::parse(&front.to_string()).unwrap());
    let nodes = vec![master, NodeConfig::new("worker-1", Role::Worker, any_port)];
    let mut config = Config::for_test(TopologyKind::Star, nodes);
    config.cluster.heartbeat_interval = Duration::from_millis(250);
    config.cluster.failure_threshold = 12;
    config
}

/// The master, its worker, and the forwarder between them.
async fn linked_through_a_forwarder() -> (Vec<NodeHandle>, ForwarderHandle) {
    // Both bound here and kept: no other test can take these ports.
    let master = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = master.local_addr().unwrap();
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd = ForwarderHandle::start(front, listen, Faults::default()).unwrap();
    let config = star_through(listen, fwd.local_addr());
    let bound = BTreeMap::from([(
        "master".to_owned(),
        Bound {
            peer: Some(master),
            service: None,
            api: None,
            proxy: None,
        },
    )]);
    let nodes = cluster::start_bound(Arc::new(config), None, bound)
        .await
        .expect("cluster starts");
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");
    (nodes, fwd)
}

/// Counts the times `peer` leaves `node`'s view (the watcher runs until aborted).
fn count_downs(
    node: &NodeHandle,
    peer: &'static str,
) -> (Arc<AtomicU32>, tokio::task::JoinHandle<()>) {
    let mut view = node.membership();
    let downs = Arc::new(AtomicU32::new(0));
    let counted = downs.clone();
    let watcher = tokio::spawn(async move {
        let mut was_up = view.borrow().is_up(peer);
        while view.changed().await.is_ok() {
            let up = view.borrow().is_up(peer);
            if was_up && !up {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            was_up = up;
        }
    });
    (downs, watcher)
}

async fn publish_range(node: &NodeHandle, from: u64, to: u64) {
    for n in from..to {
        node.publish_wait(&Numbered { n }).await.unwrap();
    }
}

#[actix_rt::test]
async fn events_published_during_a_one_second_cut_arrive_once_and_in_order_after_it() {
    publish_across_a_cut(true).await;
}

/// The network goes dark but no connection breaks (a pulled cable): the worker hears nothing
/// for a heartbeat interval and dials a fresh connection, which replaces the quiet one.
#[actix_rt::test]
async fn a_quiet_link_is_redialled_and_what_was_published_while_dark_arrives_once_in_order() {
    publish_across_a_cut(false).await;
}

/// Publish before, during and after one second of darkness (with the connection broken when
/// `drop_connection`), and check what the master received.
async fn publish_across_a_cut(drop_connection: bool) {
    init_logs();
    let (nodes, fwd) = linked_through_a_forwarder().await;
    let (done, mut report) = mpsc::unbounded_channel();
    const LAST: u64 = 3_000;
    let recorder = Recorder {
        seen: Vec::new(),
        until: LAST,
        done,
    }
    .start();
    nodes[0].subscribe::<Numbered>(recorder.recipient());
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    let downs_at_master = count_downs(&nodes[0], "worker-1");
    let downs_at_worker = count_downs(&nodes[1], "master");

    info!("--- worker-1 publishes before the cut");
    publish_range(&nodes[1], 0, 1_000).await;
    info!("--- the network goes dark (connection broken: {drop_connection})");
    let accepted_before = fwd.accepted();
    fwd.blackhole(true);
    if drop_connection {
        fwd.drop_connections();
    }
    publish_range(&nodes[1], 1_000, 2_000).await;
    // The cut itself, not a synchronisation: the network stays dark this long.
    tokio::time::sleep(CUT).await;
    info!("--- the network comes back");
    fwd.blackhole(false);
    publish_range(&nodes[1], 2_000, LAST + 1).await;

    let seen = tokio::time::timeout(WAIT, report.recv())
        .await
        .expect("the last event arrived in time")
        .unwrap();
    assert!(
        fwd.accepted() > accepted_before,
        "the worker dialled a new connection"
    );
    let expected: Vec<u64> = (0..=LAST).collect();
    if seen != expected {
        let dups = seen.len() as i64 - {
            let mut s = seen.clone();
            s.dedup();
            s.len() as i64
        };
        panic!(
            "{} events arrived where {} were sent ({dups} repeats; first difference at {:?})",
            seen.len(),
            expected.len(),
            seen.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    let downs = (
        downs_at_master.0.load(Ordering::SeqCst),
        downs_at_worker.0.load(Ordering::SeqCst),
    );
    downs_at_master.1.abort();
    downs_at_worker.1.abort();
    assert_eq!(downs, (0, 0), "no node was declared down for the cut");
    cluster::stop(&nodes).await;
    fwd.shutdown();
}

/// `worker-1` dials `master` through `front1`; `master` dials `worker-2` through `front2`;
/// events from `worker-1` reach `worker-2` relayed by `master`. Heartbeat 250 ms × 40: no
/// link times out while `worker-2` is dark.
fn relay_through(
    master: SocketAddr,
    front1: SocketAddr,
    worker2: SocketAddr,
    front2: SocketAddr,
) -> Config {
    let any_port = SocketAddr::new(master.ip(), 0);
    let mut m = NodeConfig::new("master", Role::Master, master);
    m.advertise = Some(HostPort::parse(&front1.to_string()).unwrap());
    let mut w2 = NodeConfig::new("worker-2", Role::Worker, worker2);
    w2.advertise = Some(HostPort::parse(&front2.to_string()).unwrap());
    let nodes = vec![m, NodeConfig::new("worker-1", Role::Worker, any_port), w2];
    let mut config = Config::for_test(TopologyKind::Custom, nodes);
    config.links = vec![
        LinkConfig {
            from: "worker-1".into(),
            to: "master".into(),
        },
        LinkConfig {
            from: "master".into(),
            to: "worker-2".into(),
        },
    ];
    config.cluster.heartbeat_interval = Duration::from_millis(250);
    config.cluster.failure_threshold = 40;
    config
}

/// Wait (bounded) until `what` holds, polling.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The relay's session for `worker-1` accepts events and waits for room on the link to
/// `worker-2` (dark: nothing is acknowledged, so the stream's replay bound fills), with more
/// read behind. `worker-1`'s connection is cut; it dials again, and the fresh connection's
/// session reads the replay of what follows. When `worker-2` comes back, the old session's
/// held events go first: every event arrives once, in order.
#[actix_rt::test]
async fn a_redial_while_the_relay_holds_accepted_events_keeps_their_order() {
    use nodecloud::link::stream::REPLAY_MAX_FRAMES;
    init_logs();
    let master_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let worker2_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (master, worker2) = (
        master_listener.local_addr().unwrap(),
        worker2_listener.local_addr().unwrap(),
    );
    let front1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd1 = ForwarderHandle::start(front1, master, Faults::default()).unwrap();
    let fwd2 = ForwarderHandle::start(front2, worker2, Faults::default()).unwrap();
    let config = relay_through(master, fwd1.local_addr(), worker2, fwd2.local_addr());
    let bound = |l| Bound {
        peer: Some(l),
        service: None,
        api: None,
        proxy: None,
    };
    let bound = BTreeMap::from([
        ("master".to_owned(), bound(master_listener)),
        ("worker-2".to_owned(), bound(worker2_listener)),
    ]);
    let nodes = cluster::start_bound(Arc::new(config), None, bound)
        .await
        .expect("cluster starts");
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    let (relay, publisher, subscriber) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(
        (relay.name(), publisher.name(), subscriber.name()),
        ("master", "worker-1", "worker-2")
    );
    // Enough that the relay stalls with events read behind the one it holds.
    let last = 2 * REPLAY_MAX_FRAMES as u64;
    let (done, mut report) = mpsc::unbounded_channel();
    let recorder = Recorder {
        seen: Vec::new(),
        until: last,
        done,
    }
    .start();
    subscriber.subscribe::<Numbered>(recorder.recipient());

    info!("--- worker-2 goes dark; worker-1 publishes");
    fwd2.blackhole(true);
    let relayed_before = relay.metrics().events_relayed;
    let publishing = {
        let publisher = publisher.clone();
        actix_rt::spawn(async move { publish_range(&publisher, 0, last + 1).await })
    };
    // The relay puts REPLAY_MAX_FRAMES events in worker-2's stream and holds the next one.
    let held = relayed_before + REPLAY_MAX_FRAMES as u64 + 1;
    until("the relay holds an event", || {
        relay.metrics().events_relayed >= held
    })
    .await;
    assert_eq!(relay.metrics().events_relayed, held);
    let read_by_old = relay
        .link_stats()
        .into_iter()
        .find(|l| l.peer == "worker-1")
        .map(|l| l.frames_in)
        .unwrap();

    info!("--- worker-1's connection is cut; it dials again and its replay is read");
    let accepted = fwd1.accepted();
    fwd1.drop_connections();
    until("a fresh connection from worker-1 is read", || {
        fwd1.accepted() > accepted
            && relay
                .link_stats()
                .into_iter()
                .find(|l| l.peer == "worker-1")
                .is_some_and(|l| l.frames_in > 0 && l.frames_in != read_by_old)
    })
    .await;

    info!("--- worker-2 comes back");
    fwd2.blackhole(false);
    let seen = tokio::time::timeout(Duration::from_secs(60), report.recv())
        .await
        .expect("the last event arrived in time")
        .unwrap();
    publishing.await.unwrap();
    let expected: Vec<u64> = (0..=last).collect();
    if seen != expected {
        let first = seen.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "{} events arrived where {} were sent; first difference at {first:?}: {:?}",
            seen.len(),
            expected.len(),
            first.map(|i| &seen[i.saturating_sub(2)..(i + 3).min(seen.len())])
        );
    }
    cluster::stop(&nodes).await;
    fwd1.shutdown();
    fwd2.shutdown();
}
