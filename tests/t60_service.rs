//! Applications attached to nodes through the service listener, over real TCP and Unix
//! sockets: every operation, every error a client can cause, applications that vanish with
//! calls pending, and hostile clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use nodecloud::config::Config;
use nodecloud::service::{Client, ClientError, Endpoint, Incoming};
use nodecloud::testing::TestCluster;
use nodecloud::wire::{
    self, decode_payload, encode_payload, FrameCodec, Identity, Message, Status, Topic,
    MAX_HANDSHAKE_FRAME_BYTES,
};
use nodecloud::{
    cluster, testing, CallError, CallTarget, Delivery, Event, Invocation, NodeHandle, Request,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Temperature {
    celsius: f32,
}
impl Event for Temperature {
    const TOPIC: &'static str = "sensor.temperature";
}

#[derive(Serialize, Deserialize, Debug)]
struct Add {
    a: i64,
    b: i64,
}
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
}
impl Request for Add {
    const METHOD: &'static str = "app.add";
    type Response = Sum;
}

#[derive(Serialize, Deserialize, Debug)]
struct Double {
    n: i64,
}
impl Request for Double {
    const METHOD: &'static str = "actor.double";
    type Response = i64;
}

/// Forwards temperatures into a channel; doubles numbers.
struct Thermo {
    tx: mpsc::UnboundedSender<(String, Temperature)>,
}
impl Actor for Thermo {
    type Context = Context<Self>;
}
impl Handler<Delivery<Temperature>> for Thermo {
    type Result = ();
    fn handle(&mut self, d: Delivery<Temperature>, _: &mut Context<Self>) {
        let _ = self.tx.send((d.from.name, d.event));
    }
}
impl Handler<Invocation<Double>> for Thermo {
    type Result = Result<i64, String>;
    fn handle(&mut self, c: Invocation<Double>, _: &mut Context<Self>) -> Self::Result {
        Ok(c.request.n * 2)
    }
}

/// A star whose master and workers all accept applications on TCP.
fn config(workers: usize) -> TestCluster {
    let mut c = testing::star(workers);
    for n in &mut c.config.nodes {
        n.service = Some(c.ports.reserve());
    }
    c
}

/// Start every node; the configuration as the nodes have it. The reserved sockets are
/// released once the nodes hold them (no test here restarts a node).
async fn start(c: TestCluster) -> (Arc<Config>, Vec<NodeHandle>) {
    let nodes = c.start().await.expect("cluster starts");
    let c = c.config();
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");
    (c, nodes)
}

async fn app(c: &Config, via: &str, name: &str) -> Client {
    Client::connect_via(c, via, name)
        .await
        .expect("the application attaches")
}

async fn next(app: &mut Client) -> Incoming {
    tokio::time::timeout(WAIT, app.next())
        .await
        .expect("something from the node within the deadline")
        .expect("connection open")
}

/// Serve `app.add` requests on `app` until it is closed.
fn serve_adds(mut app: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(item) = app.next().await {
            if let Incoming::Request { id, payload, .. } = item {
                let add: Add = decode_payload(&payload).unwrap();
                let answer = if add.a == 13 {
                    Err(("unlucky".to_owned(), "13 is refused".to_owned()))
                } else {
                    Ok(encode_payload(&Sum { sum: add.a + add.b }).unwrap())
                };
                app.respond(id, answer).await.unwrap();
            }
        }
    })
}

#[actix_rt::test]
async fn an_application_publish_reaches_an_actor_on_another_node_as_a_typed_delivery() {
    let (c, nodes) = start(config(2)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let thermo = Thermo { tx }.start();
    nodes[2].subscribe::<Temperature>(thermo.recipient());
    let a = app(&c, "worker-1", "sensor").await;
    a.publish("sensor.temperature", &Temperature { celsius: 21.5 }, None)
        .await
        .unwrap();
    let (from, t) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from.as_str(), t.celsius), ("worker-1", 21.5));
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn an_actor_publish_and_an_application_publish_reach_a_subscribed_application() {
    let (c, nodes) = start(config(2)).await;
    let mut sub = app(&c, "worker-2", "listener").await;
    sub.subscribe("sensor.temperature").await.unwrap();
    sub.sync().await.unwrap();
    nodes[0].publish(&Temperature { celsius: 1.0 }).unwrap();
    let Incoming::Event {
        topic,
        from,
        payload,
        ..
    } = next(&mut sub).await
    else {
        panic!("an event")
    };
    assert_eq!(
        (topic.as_str(), from.as_str()),
        ("sensor.temperature", "master")
    );
    assert_eq!(
        decode_payload::<Temperature>(&payload).unwrap().celsius,
        1.0
    );

    // Targeted, from another application on another node.
    let pubr = app(&c, "worker-1", "publisher").await;
    pubr.publish(
        "sensor.temperature",
        &Temperature { celsius: 2.0 },
        Some("worker-2"),
    )
    .await
    .unwrap();
    let Incoming::Event { from, payload, .. } = next(&mut sub).await else {
        panic!("an event")
    };
    assert_eq!(from, "worker-1");
    assert_eq!(
        decode_payload::<Temperature>(&payload).unwrap().celsius,
        2.0
    );

    // Unsubscribed: the next event is not delivered (a later targeted marker is).
    sub.unsubscribe("sensor.temperature").await.unwrap();
    sub.subscribe("marker").await.unwrap();
    sub.sync().await.unwrap();
    nodes[0].publish(&Temperature { celsius: 3.0 }).unwrap();
    pubr.publish("marker", &1u8, Some("worker-2"))
        .await
        .unwrap();
    let Incoming::Event { topic, .. } = next(&mut sub).await else {
        panic!("an event")
    };
    assert_eq!(
        topic, "marker",
        "nothing of the unsubscribed topic came first"
    );
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn an_actor_calls_an_application_method_through_a_relay_and_an_application_calls_an_actor() {
    let (c, nodes) = start(config(2)).await;
    let server = app(&c, "worker-2", "adder").await;
    server.implement("app.add").await.unwrap();
    let _serving = serve_adds(server);
    testing::wait_implemented(&nodes[1], "app.add", &["worker-2"], WAIT)
        .await
        .unwrap();
    // worker-1 → master → worker-2 → application.
    let sum = nodes[1]
        .call(CallTarget::Any, &Add { a: 2, b: 3 })
        .await
        .unwrap();
    assert_eq!(sum, Sum { sum: 5 });
    let e = nodes[1]
        .call("worker-2", &Add { a: 13, b: 0 })
        .await
        .unwrap_err();
    assert_eq!(e, CallError::Remote("unlucky: 13 is refused".into()));

    let (tx, _rx) = mpsc::unbounded_channel();
    let thermo = Thermo { tx }.start();
    nodes[0].implement::<Double>(thermo.recipient());
    let caller = app(&c, "worker-1", "caller").await;
    let doubled = caller
        .call("master", &Double { n: 21 }, None)
        .await
        .unwrap();
    assert_eq!(doubled, 42);
    // An application calls another application's method, named by node.
    let sum = caller
        .call("worker-2", &Add { a: 1, b: 1 }, None)
        .await
        .unwrap();
    assert_eq!(sum, Sum { sum: 2 });
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn an_application_that_dies_fails_its_pending_calls_at_once_and_its_method_disappears() {
    let (c, nodes) = start(config(1)).await;
    let mut server = app(&c, "worker-1", "mortal").await;
    server.implement("app.add").await.unwrap();
    testing::wait_implemented(&nodes[0], "app.add", &["worker-1"], WAIT)
        .await
        .unwrap();
    let caller = nodes[0].clone();
    let pending = actix_rt::spawn(async move {
        caller
            .call_timeout("worker-1", &Add { a: 1, b: 2 }, Duration::from_secs(30))
            .await
    });
    let Incoming::Request { method, .. } = next(&mut server).await else {
        panic!("a request")
    };
    assert_eq!(method, "app.add");
    let started = Instant::now();
    drop(server); // the application dies with the request unanswered
    let e = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, CallError::ImplementerGone(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at once, not at the timeout"
    );
    testing::wait_implemented(&nodes[0], "app.add", &[], WAIT)
        .await
        .unwrap();
    let e = nodes[0]
        .call(CallTarget::Any, &Add { a: 1, b: 2 })
        .await
        .unwrap_err();
    assert_eq!(e, CallError::NoImplementer("app.add".into()));
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_bad_topic_right_after_a_good_one_is_still_refused() {
    let (c, nodes) = start(config(1)).await;
    let mut a = app(&c, "worker-1", "checked").await;
    a.subscribe("t.ok").await.unwrap();
    a.sync().await.unwrap();
    for topic in ["t.ok", "", "t..ok", "t.*", "t.ok"] {
        a.publish("t.ok", &1u8, None).await.unwrap();
        a.publish(topic, &2u8, None).await.unwrap();
    }
    a.sync().await.unwrap();
    // Refusals are queued at once, events after the bus: compare each kind in its order.
    let (mut events, mut refusals) = (Vec::new(), 0);
    while events.len() < 7 {
        match next(&mut a).await {
            Incoming::Event { payload, .. } => events.push(decode_payload::<u8>(&payload).unwrap()),
            Incoming::Refused { op, code, .. } => {
                assert_eq!((op.as_str(), code.as_str()), ("publish", "bad_topic"));
                refusals += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    a.sync().await.unwrap();
    while let Some(item) = a.try_next() {
        assert!(matches!(item, Incoming::Refused { .. }), "{item:?}");
        refusals += 1;
    }
    assert_eq!(events, [1, 2, 1, 1, 1, 1, 2]);
    assert_eq!(refusals, 3, "\"\", \"t..ok\" and \"t.*\" are refused");
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_batch_of_publishes_arrives_in_order_as_single_publishes_do() {
    let (c, nodes) = start(config(1)).await;
    let mut sub = app(&c, "worker-1", "batch-sub").await;
    let publisher = app(&c, "worker-1", "batch-pub").await;
    sub.subscribe("t.batch").await.unwrap();
    sub.sync().await.unwrap();
    let payload = |n: u32| encode_payload(&n).unwrap();
    publisher
        .publish_raw("t.batch", payload(0), None)
        .await
        .unwrap();
    publisher
        .publish_batch("t.batch", (1..=1000).map(payload).collect(), None)
        .await
        .unwrap();
    publisher
        .publish_batch("t.batch", Vec::new(), None)
        .await
        .unwrap();
    publisher
        .publish_raw("t.batch", payload(1001), None)
        .await
        .unwrap();
    // One payload too large for a frame: nothing of the batch is sent.
    let too_large = publisher
        .publish_batch(
            "t.batch",
            vec![payload(7), Bytes::from(vec![0x40; 2 << 20])],
            None,
        )
        .await;
    assert!(
        matches!(too_large, Err(ClientError::TooLarge { .. })),
        "{too_large:?}"
    );
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while got.len() < 1002 {
        let n = tokio::time::timeout(WAIT, sub.next_many(&mut batch, 64))
            .await
            .expect("deliveries within the deadline");
        assert!((1..=64).contains(&n), "{n}");
        for item in batch.drain(..) {
            let Incoming::Event { payload, seq, .. } = item else {
                panic!("{item:?}");
            };
            got.push((decode_payload::<u32>(&payload).unwrap(), seq));
        }
    }
    let expected: Vec<(u32, u64)> = (0..=1001).map(|n| (n, u64::from(n) + 1)).collect();
    assert_eq!(got, expected);
    publisher.sync().await.unwrap();
    sub.sync().await.unwrap();
    assert!(
        sub.try_next().is_none(),
        "nothing of the refused batch arrived"
    );
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn every_refusal_names_the_operation_and_keeps_the_connection_open() {
    let (c, nodes) = start(config(1)).await;
    let mut a = app(&c, "worker-1", "clumsy").await;
    let refused = |item: Incoming| match item {
        Incoming::Refused { op, code, .. } => (op, code),
        other => panic!("a refusal, not {other:?}"),
    };
    a.subscribe("").await.unwrap();
    assert_eq!(
        refused(next(&mut a).await),
        ("subscribe".into(), "bad_topic".into())
    );
    a.unsubscribe("never").await.unwrap();
    assert_eq!(
        refused(next(&mut a).await),
        ("unsubscribe".into(), "not_subscribed".into())
    );
    a.unimplement("never").await.unwrap();
    assert_eq!(
        refused(next(&mut a).await),
        ("unimplement".into(), "not_implemented".into())
    );
    a.implement(&"m".repeat(256)).await.unwrap();
    assert_eq!(
        refused(next(&mut a).await),
        ("implement".into(), "bad_method".into())
    );
    a.respond(99, Ok(Bytes::from_static(b"\x00")))
        .await
        .unwrap();
    assert_eq!(
        refused(next(&mut a).await),
        ("respond".into(), "unknown_request".into())
    );
    a.publish("x", &1u8, Some("worker-9")).await.unwrap();
    assert_eq!(
        refused(next(&mut a).await),
        ("publish".into(), "unknown_node".into())
    );

    let e = a
        .call_raw("nobody.home", None, None, encode_payload(&()).unwrap())
        .await;
    assert_eq!(e, Err(CallError::NoImplementer("nobody.home".into())));
    let e = a
        .call_raw("app.add", Some("worker-9"), None, Bytes::new())
        .await;
    assert_eq!(e, Err(CallError::UnknownNode("worker-9".into())));

    // Still attached and served.
    a.subscribe("ok").await.unwrap();
    a.sync().await.unwrap();
    nodes[0]
        .publish_wait(&Temperature { celsius: 0.0 })
        .await
        .unwrap();
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_flood_of_subscriptions_is_bounded_with_a_clear_refusal() {
    let (c, nodes) = start(config(1)).await;
    let mut a = app(&c, "worker-1", "greedy").await;
    for i in 0..1100 {
        a.subscribe(&format!("topic.{i}")).await.unwrap();
    }
    a.sync().await.unwrap();
    let mut refusals = 0;
    while let Ok(Some(Incoming::Refused { code, .. })) =
        tokio::time::timeout(Duration::from_millis(500), a.next()).await
    {
        assert_eq!(code, "too_many_subscriptions");
        refusals += 1;
    }
    assert_eq!(refusals, 1100 - 1024);
    // Subscribed topics still work.
    a.subscribe("topic.7").await.unwrap();
    nodes[0]
        .publish_wait(&Temperature { celsius: 0.0 })
        .await
        .unwrap();
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_wrong_service_key_is_refused_with_auth_failed() {
    let mut c = config(1);
    c.config.cluster.service_key = Some(nodecloud::config::Secret::new(
        b"the-service-key-0123".to_vec(),
    ));
    let (c, nodes) = start(c).await;
    let addr = c.nodes[1].service.unwrap();
    let e = Client::connect(&Endpoint::Tcp(addr), "test", b"test-secret-0123456789", "x")
        .await
        .err()
        .expect("the cluster secret is not the service key");
    assert!(
        matches!(e, ClientError::Handshake(wire::HandshakeError::AuthFailed)),
        "{e}"
    );
    let ok = Client::connect(&Endpoint::Tcp(addr), "test", b"the-service-key-0123", "x").await;
    assert!(ok.is_ok());
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_unix_socket_endpoint_is_owner_only_and_serves_applications() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let mut c = testing::star(1);
    c.config.nodes[1].service_socket = Some(path.clone());
    let (c, nodes) = start(c).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut a = app(&c, "worker-1", "local").await;
    a.subscribe("sensor.temperature").await.unwrap();
    a.sync().await.unwrap();
    nodes[0].publish(&Temperature { celsius: 5.0 }).unwrap();
    assert!(matches!(next(&mut a).await, Incoming::Event { .. }));
    cluster::stop(&nodes).await;
}

// ---------------------------------------------------------------------------------------
// Hostile clients: raw sockets. Each must get an `error` frame (code) and be closed, while
// an honest application on the same node keeps being served.

/// Read everything the node sends until it closes; the error frames' codes.
async fn codes_until_close(stream: TcpStream) -> Vec<String> {
    codes_until_closed(Framed::new(stream, FrameCodec::new(1 << 20))).await
}

/// As [`codes_until_close`], on a connection whose sequence numbers are under way.
async fn codes_until_closed(mut framed: Framed<TcpStream, FrameCodec>) -> Vec<String> {
    let mut codes = Vec::new();
    let end = Instant::now() + WAIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, framed.next()).await {
            Ok(Some(Ok(wire::Frame(_, Message::Error(e))))) => codes.push(e.code),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return codes,
            Err(_) => panic!("the node did not close the connection within {WAIT:?}"),
        }
    }
}

/// An authenticated raw connection to node `via`'s service port.
async fn raw_app(c: &Config, via: &str) -> Framed<TcpStream, FrameCodec> {
    let addr = c.node(via).unwrap().service.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
    let me = Identity {
        cluster: "test".into(),
        node: "raw".into(),
        incarnation: Uuid::new_v4(),
        secret: b"test-secret-0123456789".to_vec(),
        welcome: Default::default(),
    };
    let node = wire::dial(&mut framed, &me, WAIT).await.unwrap();
    // Version 2: the node states its limits in `welcome`.
    let limits = &node.welcome;
    assert_eq!(node.version, wire::PROTOCOL_VERSION);
    assert_eq!(
        limits.max_frame_bytes,
        Some(c.cluster.max_frame_bytes as u64)
    );
    assert_eq!(
        limits.envelope_overhead_bytes,
        Some(wire::envelope_overhead_bytes(via) as u64)
    );
    assert_eq!(
        (limits.max_subscriptions, limits.max_methods),
        (Some(1024), Some(256))
    );
    assert_eq!(
        (limits.max_calls, limits.max_requests),
        (Some(4096), Some(4096))
    );
    framed
        .codec_mut()
        .set_max_frame_bytes(c.cluster.max_frame_bytes);
    framed
}

async fn still_serving(honest: &mut Client, nodes: &[NodeHandle]) {
    nodes[0]
        .publish_wait(&Temperature { celsius: 9.0 })
        .await
        .unwrap();
    loop {
        if let Incoming::Event { topic, .. } = next(honest).await {
            if topic == "sensor.temperature" {
                return;
            }
        }
    }
}

#[actix_rt::test]
async fn hostile_clients_get_an_error_frame_and_are_closed_while_others_are_served() {
    let (c, nodes) = start(config(1)).await;
    let addr = c.nodes[1].service.unwrap();
    let mut honest = app(&c, "worker-1", "honest").await;
    honest.subscribe("sensor.temperature").await.unwrap();
    honest.sync().await.unwrap();

    // Garbage instead of a frame.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x00\x00\x05hello").await.unwrap();
    assert_eq!(codes_until_close(s).await, ["malformed_frame"]);
    still_serving(&mut honest, &nodes).await;

    // A length over the pre-handshake maximum.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(codes_until_close(s).await, ["frame_too_large"]);

    // A call before authenticating.
    let s = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(s, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
    framed
        .send(&Message::Subscribe(Topic { topic: "x".into() }))
        .await
        .unwrap();
    assert_eq!(
        codes_until_close(framed.into_inner()).await,
        ["unexpected_message"]
    );
    still_serving(&mut honest, &nodes).await;

    // After authenticating: a peer-only message, then an oversized frame, then a cut frame.
    let mut raw = raw_app(&c, "worker-1").await;
    let status = Status {
        node: "worker-1".into(),
        incarnation: Uuid::nil(),
        boot_ms: 0,
        version: 1,
        role: "worker".into(),
        links: vec![],
        stats: Default::default(),
        methods: vec![],
        http: vec![],
    };
    raw.send(&Message::Status(Box::new(status))).await.unwrap();
    assert_eq!(codes_until_closed(raw).await, ["unexpected_message"]);

    let mut raw = raw_app(&c, "worker-1").await;
    raw.get_mut()
        .write_all(&(64u32 << 20).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(codes_until_closed(raw).await, ["frame_too_large"]);

    // Vanishing mid-frame: the node closes its side too.
    let mut raw = raw_app(&c, "worker-1").await;
    raw.get_mut()
        .write_all(&[0, 0, 0, 100, 0x82, 0x03])
        .await
        .unwrap();
    raw.get_mut().shutdown().await.unwrap();
    let mut s = raw.into_inner();
    let mut rest = BytesMut::new();
    while tokio::time::timeout(WAIT, s.read_buf(&mut rest))
        .await
        .expect("the node closes a connection cut mid-frame")
        .unwrap()
        > 0
    {}
    still_serving(&mut honest, &nodes).await;

    // A client that never finishes the handshake is closed at the deadline.
    let s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(codes_until_close(s).await, ["timeout"]);
    still_serving(&mut honest, &nodes).await;

    let e = Client::connect(&Endpoint::Tcp(addr), "test", b"wrong-key-0123456789", "x")
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::Handshake(_)), "{e}");
    cluster::stop(&nodes).await;
}
