//! Issue 7: queues are bounded in bytes. Alone in its test binary, so the process's peak RSS
//! is this scenario's: one application that reads nothing, and a publisher of 256 KiB events
//! on its node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nodecloud::testing;
use nodecloud::wire::{
    self, FrameCodec, Identity, Message, Ping, Topic, MAX_HANDSHAKE_FRAME_BYTES,
};
use nodecloud::{cluster, Event};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);
const EVENT_BYTES: usize = 256 * 1024;
const EVENTS: usize = 2000;
/// What the node may add to its resident set while 500 MiB pass through it: the application's
/// queue (8 MiB), the frames being written, allocator slack. Frame-bounded queues took this
/// scenario past 1 GiB.
const MAX_GROWTH_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Bulk {
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}
impl Event for Bulk {
    const TOPIC: &'static str = "bulk.data";
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[actix_rt::test]
async fn a_non_reading_application_keeps_the_node_resident_set_bounded_and_is_closed_as_slow_consumer(
) {
    let mut c = testing::star(0);
    c.config.nodes[0].service = Some(c.ports.reserve());
    c.config.cluster.heartbeat_interval = Duration::from_millis(250);
    c.config.cluster.failure_threshold = 12;
    let nodes = c.start().await.unwrap();
    let c = c.config();
    let addr = c.node("master").unwrap().service.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut app = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
    let me = Identity {
        cluster: "test".into(),
        node: "stalled".into(),
        incarnation: Uuid::new_v4(),
        secret: b"test-secret-0123456789".to_vec(),
        welcome: Default::default(),
    };
    wire::dial(&mut app, &me, WAIT).await.unwrap();
    app.codec_mut()
        .set_max_frame_bytes(c.cluster.max_frame_bytes);
    app.send(&Message::Subscribe(Topic {
        topic: Bulk::TOPIC.into(),
    }))
    .await
    .unwrap();
    app.send(&Message::Ping(Ping { n: 1 })).await.unwrap();
    while !matches!(
        tokio::time::timeout(WAIT, app.next()).await,
        Ok(Some(Ok(wire::Frame(_, Message::Pong(_)))))
    ) {}
    let before = status_bytes("VmRSS:");
    let event = Bulk {
        data: vec![7; EVENT_BYTES],
    };
    for _ in 0..EVENTS {
        nodes[0].publish_wait(&event).await.unwrap();
    }
    let peak = status_bytes("VmHWM:");
    println!(
        "resident set: {} MiB before, peak {} MiB after {EVENTS} events of {} KiB",
        before >> 20,
        peak >> 20,
        EVENT_BYTES >> 10
    );
    assert!(
        peak < before + MAX_GROWTH_BYTES,
        "the node grew from {} MiB to {} MiB",
        before >> 20,
        peak >> 20
    );
    // The application reads at last: some events, then `slow_consumer`, then the end.
    let mut codes = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, app.next()).await {
            Ok(Some(Ok(wire::Frame(_, Message::Error(e))))) => codes.push(e.code),
            Ok(Some(Ok(_))) => {}
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("the stream ended inside a frame: {e}"),
            Err(_) => panic!("the node did not close the application"),
        }
    }
    assert_eq!(codes, vec!["slow_consumer".to_owned()]);
    cluster::stop(&nodes).await;
}
