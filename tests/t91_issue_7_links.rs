//! Issue 7, links you can trust, in one process: per-origin order through a relay under
//! backpressure, a slow application closed with a whole `slow_consumer` frame, and a slow
//! application that holds up nobody else on its node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{SinkExt, StreamExt};
use nodecloud::config::Config;
use nodecloud::service::{Client, Incoming};
use nodecloud::testing::{self, TestCluster};
use nodecloud::wire::{
    self, FrameCodec, Identity, Message, Options, Ping, Topic, MAX_HANDSHAKE_FRAME_BYTES,
};
use nodecloud::{cluster, Delivery, Event, NodeHandle};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::info;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// A numbered event: the subscriber checks the numbers arrive in order.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Numbered {
    n: u64,
}
impl Event for Numbered {
    const TOPIC: &'static str = "order.numbered";
}

/// A bulky event for the slow-application tests.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Bulk {
    n: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}
impl Event for Bulk {
    const TOPIC: &'static str = "bulk.data";
}

/// Published after a flood: when an actor has it, the bus has offered every event before it.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Marker;
impl Event for Marker {
    const TOPIC: &'static str = "bulk.marker";
}

/// Heartbeat 250 ms × 12: a failure timeout (3 s) far beyond any pause a test causes.
fn patient(mut c: TestCluster) -> TestCluster {
    c.config.cluster.heartbeat_interval = Duration::from_millis(250);
    c.config.cluster.failure_threshold = 12;
    c
}

async fn start(c: TestCluster) -> (Arc<Config>, Vec<NodeHandle>) {
    let nodes = c.start().await.expect("cluster starts");
    let c = c.config();
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");
    (c, nodes)
}

// ---------------------------------------------------------------------------------------
// Per-origin order through a relay under backpressure.

/// A slow subscriber: a small mailbox and a handler that spins, counting numbers that arrive
/// out of order; reports once it has `expected` events.
struct SlowCounter {
    last: Option<u64>,
    received: u64,
    inversions: u64,
    expected: u64,
    done: mpsc::UnboundedSender<(u64, u64)>,
    /// How many arrived so far, for the failure message.
    progress: Arc<std::sync::atomic::AtomicU64>,
}
impl Actor for SlowCounter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4);
    }
}
impl Handler<Delivery<Numbered>> for SlowCounter {
    type Result = ();
    fn handle(&mut self, d: Delivery<Numbered>, _: &mut Context<Self>) {
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_micros(3) {
            std::hint::spin_loop();
        }
        if self.last.is_some_and(|last| d.event.n <= last) {
            self.inversions += 1;
        }
        self.last = Some(d.event.n);
        self.received += 1;
        self.progress
            .store(self.received, std::sync::atomic::Ordering::Relaxed);
        if self.received == self.expected {
            let _ = self.done.send((self.received, self.inversions));
        }
    }
}

#[actix_rt::test]
async fn events_relayed_to_a_slow_subscriber_keep_their_order_per_origin() {
    const EVENTS: u64 = 200_000;
    init_logs();
    let (_, nodes) = start(patient(testing::star(2))).await;
    let (done, mut report) = mpsc::unbounded_channel();
    let progress = Arc::<std::sync::atomic::AtomicU64>::default();
    let counter = SlowCounter {
        last: None,
        received: 0,
        inversions: 0,
        expected: EVENTS,
        done,
        progress: progress.clone(),
    }
    .start();
    nodes[2].subscribe::<Numbered>(counter.recipient());
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    info!("--- worker-1 publishes {EVENTS} events, relayed by master to worker-2");
    for n in 0..EVENTS {
        nodes[1].publish_wait(&Numbered { n }).await.unwrap();
    }
    let Ok(Some((received, inversions))) =
        tokio::time::timeout(Duration::from_secs(120), report.recv()).await
    else {
        panic!(
            "{} of {EVENTS} events arrived within the deadline",
            progress.load(std::sync::atomic::Ordering::Relaxed)
        );
    };
    assert_eq!(received, EVENTS);
    assert_eq!(inversions, 0, "events from one origin arrived out of order");
    cluster::stop(&nodes).await;
}

// ---------------------------------------------------------------------------------------
// Slow applications.

/// A star whose master accepts applications.
fn with_service(workers: usize) -> TestCluster {
    let mut c = patient(testing::star(workers));
    c.config.nodes[0].service = Some(c.ports.reserve());
    c
}

/// An authenticated raw connection to `via`'s service port, subscribed to `topic` (and the
/// subscription in place when this returns): an application that reads only when told.
async fn raw_subscriber(c: &Config, via: &str, topic: &str) -> Framed<TcpStream, FrameCodec> {
    raw_subscriber_with(c, via, topic, None).await
}

/// As [`raw_subscriber`], sending `options` first when given.
async fn raw_subscriber_with(
    c: &Config,
    via: &str,
    topic: &str,
    options: Option<Options>,
) -> Framed<TcpStream, FrameCodec> {
    let addr = c.node(via).unwrap().service.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
    let me = Identity {
        cluster: "test".into(),
        node: "slow".into(),
        incarnation: Uuid::new_v4(),
        secret: b"test-secret-0123456789".to_vec(),
        welcome: Default::default(),
    };
    wire::dial(&mut framed, &me, WAIT).await.unwrap();
    framed
        .codec_mut()
        .set_max_frame_bytes(c.cluster.max_frame_bytes);
    if let Some(options) = options {
        framed.send(&Message::Options(options)).await.unwrap();
    }
    framed
        .send(&Message::Subscribe(Topic {
            topic: topic.into(),
        }))
        .await
        .unwrap();
    framed.send(&Message::Ping(Ping { n: 7 })).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, framed.next()).await {
            Ok(Some(Ok(wire::Frame(_, Message::Pong(p))))) if p.n == 7 => return framed,
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong from the node: {other:?}"),
        }
    }
}

/// Forwards markers into a channel.
struct MarkerWatch(mpsc::UnboundedSender<()>);
impl Actor for MarkerWatch {
    type Context = Context<Self>;
}
impl Handler<Delivery<Marker>> for MarkerWatch {
    type Result = ();
    fn handle(&mut self, _: Delivery<Marker>, _: &mut Context<Self>) {
        let _ = self.0.send(());
    }
}

/// Read what the node sent until the stream ends: (events delivered, error codes, whether
/// the stream ended between frames).
async fn read_to_end(mut framed: Framed<TcpStream, FrameCodec>) -> (u64, Vec<String>, bool) {
    let (mut events, mut codes) = (0, Vec::new());
    loop {
        match tokio::time::timeout(WAIT, framed.next()).await {
            Ok(Some(Ok(wire::Frame(_, Message::Deliver(_))))) => events += 1,
            Ok(Some(Ok(wire::Frame(_, Message::Error(e))))) => codes.push(e.code),
            Ok(Some(Ok(_))) => {}
            Ok(None) => return (events, codes, true),
            // The decoder found the stream cut inside a frame (or junk).
            Ok(Some(Err(_))) => return (events, codes, false),
            Err(_) => panic!("the node did not close the connection within {WAIT:?}"),
        }
    }
}

/// Publish `count` bulk events of `size` bytes on `node`, then a marker, and wait until the
/// marker reached `markers`: by then the bus offered every bulk event to every subscriber.
async fn flood(
    node: &NodeHandle,
    count: u64,
    size: usize,
    markers: &mut mpsc::UnboundedReceiver<()>,
) {
    for n in 0..count {
        node.publish_wait(&Bulk {
            n,
            data: vec![n as u8; size],
        })
        .await
        .unwrap();
    }
    node.publish_wait(&Marker).await.unwrap();
    tokio::time::timeout(WAIT, markers.recv())
        .await
        .expect("the marker arrives")
        .unwrap();
}

#[actix_rt::test]
async fn an_application_that_stops_reading_gets_slow_consumer_as_a_whole_frame_then_eof() {
    let (c, nodes) = start(with_service(1)).await;
    let (tx, mut markers) = mpsc::unbounded_channel();
    nodes[0].subscribe::<Marker>(MarkerWatch(tx).start().recipient());
    let slow = raw_subscriber(&c, "master", Bulk::TOPIC).await;
    info!("--- 200 events of 256 KiB to an application that reads nothing");
    flood(&nodes[0], 200, 256 * 1024, &mut markers).await;
    info!("--- the application reads what it was sent");
    let (events, codes, whole) = read_to_end(slow).await;
    assert_eq!(
        codes,
        vec!["slow_consumer".to_owned()],
        "after {events} events"
    );
    assert!(whole, "the stream ended inside a frame");
    assert!(
        events < 200,
        "{events} events: the application was never closed"
    );
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_slow_application_does_not_hold_up_a_fast_one_on_the_same_node() {
    const EVENTS: u64 = 1500;
    /// The publisher stays at most this many events ahead of the fast application (4 MiB,
    /// inside its queue's byte bound): the fast one keeps up, the slow one reads nothing.
    const AHEAD: u64 = 64;
    let (c, nodes) = start(with_service(1)).await;
    let slow = raw_subscriber(&c, "master", Bulk::TOPIC).await;
    let mut fast = Client::connect_via(&c, "master", "fast").await.unwrap();
    fast.subscribe(Bulk::TOPIC).await.unwrap();
    fast.sync().await.unwrap();
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0u64);
    // The fast application takes every event as it comes, noting when.
    let reader = tokio::spawn(async move {
        let mut at = Vec::with_capacity(EVENTS as usize);
        while at.len() < EVENTS as usize {
            match tokio::time::timeout(WAIT, fast.next()).await {
                Ok(Some(Incoming::Event { .. })) => {
                    at.push(Instant::now());
                    seen_tx.send_replace(at.len() as u64);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        at
    });
    info!("--- {EVENTS} events of 64 KiB; one application reads nothing");
    for n in 0..EVENTS {
        let ahead = tokio::time::timeout(WAIT, seen.wait_for(|seen| n < seen + AHEAD))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            ahead,
            "the fast application stalled at {} events",
            *seen.borrow()
        );
        nodes[0]
            .publish_wait(&Bulk {
                n,
                data: vec![n as u8; 64 * 1024],
            })
            .await
            .unwrap();
    }
    let at = reader.await.unwrap();
    assert_eq!(
        at.len(),
        EVENTS as usize,
        "the fast application missed events"
    );
    let longest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_millis(100),
        "the fast application waited {longest:?} between two events"
    );
    let (_, codes, whole) = read_to_end(slow).await;
    assert_eq!(codes, vec!["slow_consumer".to_owned()]);
    assert!(whole, "the stream ended inside a frame");
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn an_application_that_asked_for_drop_oldest_loses_old_events_counted_and_stays_attached() {
    const EVENTS: u64 = 400;
    let (c, nodes) = start(with_service(1)).await;
    let (tx, mut markers) = mpsc::unbounded_channel();
    nodes[0].subscribe::<Marker>(MarkerWatch(tx).start().recipient());
    let options = Options {
        overflow: Some("drop_oldest".into()),
    };
    let mut slow = raw_subscriber_with(&c, "master", Bulk::TOPIC, Some(options)).await;
    info!("--- {EVENTS} events of 64 KiB to an application that reads nothing");
    let started = Instant::now();
    flood(&nodes[0], EVENTS, 64 * 1024, &mut markers).await;
    info!(
        "--- flooded in {:?}; the application reads",
        started.elapsed()
    );
    // Read up to the last event: the newest are kept, so it is there.
    let (mut received, mut last_seq, mut dropped) = (0u64, 0u64, 0u64);
    while last_seq < EVENTS {
        match tokio::time::timeout(WAIT, slow.next()).await {
            Ok(Some(Ok(wire::Frame(_, Message::Deliver(d))))) => {
                assert!(d.seq > last_seq, "seq {} after {last_seq}", d.seq);
                assert!(d.dropped >= dropped, "the drop count went down");
                assert!(!d.targeted);
                received += 1;
                last_seq = d.seq;
                dropped = d.dropped;
            }
            Ok(Some(Ok(wire::Frame(_, Message::Error(e))))) => {
                panic!("closed with {}: {}", e.code, e.message)
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the stream ended after {received} events: {other:?}"),
        }
    }
    assert!(dropped > 0, "nothing was dropped: the queue never filled");
    assert!(received < EVENTS);
    info!("--- received {received}, dropped {dropped}; the application is still served");
    slow.send(&Message::Ping(Ping { n: 9 })).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, slow.next()).await {
            Ok(Some(Ok(wire::Frame(_, Message::Pong(p))))) if p.n == 9 => break,
            Ok(Some(Ok(wire::Frame(_, Message::Error(e))))) => {
                panic!("closed with {}: {}", e.code, e.message)
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong: {other:?}"),
        }
    }
    cluster::stop(&nodes).await;
}
