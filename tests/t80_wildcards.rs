//! Wildcard subscriptions (`*` one token, `>` one or more trailing tokens) for Rust actors,
//! applications and the `nodecloud sub` command, across nodes; refusal of patterns where a
//! concrete topic is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nodecloud::config::Config;
use nodecloud::node::PublishError;
use nodecloud::service::{Client, Incoming};
use nodecloud::testing::{Ports, TestCluster};
use nodecloud::topic::TopicError;
use nodecloud::wire::decode_payload;
use nodecloud::{cluster, testing, Event, NodeHandle, PatternDelivery};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// What the tests publish on every topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Reading {
    v: i64,
}
impl Event for Reading {
    const TOPIC: &'static str = "sensor.reading";
}

/// An event type whose topic is a pattern: it cannot be published.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct OnAPattern;
impl Event for OnAPattern {
    const TOPIC: &'static str = "sensor.*";
}

/// Forwards every pattern delivery as (concrete topic, origin, value).
struct Watcher {
    tx: mpsc::UnboundedSender<(String, String, i64)>,
}
impl Actor for Watcher {
    type Context = Context<Self>;
}
impl Handler<PatternDelivery<Reading>> for Watcher {
    type Result = ();
    fn handle(&mut self, d: PatternDelivery<Reading>, _: &mut Context<Self>) {
        let _ = self.tx.send((d.topic, d.from.name, d.event.v));
    }
}

fn watcher() -> (
    Addr<Watcher>,
    mpsc::UnboundedReceiver<(String, String, i64)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Watcher { tx }.start(), rx)
}

async fn seen(rx: &mut mpsc::UnboundedReceiver<(String, String, i64)>) -> (String, String, i64) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("the watcher lives")
}

/// A star whose nodes all accept applications on TCP, on reserved ports.
fn config(workers: usize) -> TestCluster {
    let mut c = testing::star(workers);
    for n in &mut c.config.nodes {
        n.service = Some(c.ports.reserve());
    }
    c
}

/// Start every node on its reserved sockets (the nodes keep their own handles on them).
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

/// The next event an application receives, as (topic, origin, value).
async fn event(app: &mut Client) -> (String, String, i64) {
    let item = tokio::time::timeout(WAIT, app.next())
        .await
        .expect("something from the node within the deadline")
        .expect("connection open");
    match item {
        Incoming::Event {
            topic,
            from,
            payload,
            ..
        } => (topic, from, decode_payload::<Reading>(&payload).unwrap().v),
        other => panic!("an event, not {other:?}"),
    }
}

async fn refusal(app: &mut Client) -> (String, String) {
    let item = tokio::time::timeout(WAIT, app.next())
        .await
        .expect("something from the node within the deadline")
        .expect("connection open");
    match item {
        Incoming::Refused { op, code, .. } => (op, code),
        other => panic!("a refusal, not {other:?}"),
    }
}

async fn publish(app: &Client, topic: &str, v: i64) {
    app.publish(topic, &Reading { v }, None).await.unwrap();
}

fn t(topic: &str, from: &str, v: i64) -> (String, String, i64) {
    (topic.to_owned(), from.to_owned(), v)
}

#[actix_rt::test]
async fn star_pattern_subscribers_get_one_token_topics_from_any_node_with_the_concrete_topic() {
    let (c, nodes) = start(config(1)).await;
    let (w, mut rx) = watcher();
    nodes[1]
        .subscribe_pattern::<Reading>("sensor.*", w.recipient())
        .unwrap();
    let mut sub = app(&c, "worker-1", "listener").await;
    sub.subscribe("sensor.*").await.unwrap();
    sub.sync().await.unwrap();

    // Published on the other node: neither `sensor.a.b` nor `sensor` matches, `sensor.a` does.
    let pubr = app(&c, "master", "publisher").await;
    publish(&pubr, "sensor.a.b", 1).await;
    publish(&pubr, "sensor", 2).await;
    publish(&pubr, "sensor.a", 3).await;
    publish(&pubr, "sensors.a", 4).await;
    publish(&pubr, "sensor.b", 5).await;
    assert_eq!(seen(&mut rx).await, t("sensor.a", "master", 3));
    assert_eq!(seen(&mut rx).await, t("sensor.b", "master", 5));
    assert_eq!(event(&mut sub).await, t("sensor.a", "master", 3));
    assert_eq!(event(&mut sub).await, t("sensor.b", "master", 5));

    // Published on the subscribers' own node, by an actor.
    nodes[1].publish(&Reading { v: 6 }).unwrap();
    assert_eq!(seen(&mut rx).await, t("sensor.reading", "worker-1", 6));
    assert_eq!(event(&mut sub).await, t("sensor.reading", "worker-1", 6));
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_full_wildcard_takes_every_topic_and_a_trailing_one_takes_deeper_topics_only() {
    let (c, nodes) = start(config(1)).await;
    let (all, mut all_rx) = watcher();
    nodes[0]
        .subscribe_pattern::<Reading>(">", all.recipient())
        .unwrap();
    let (deep, mut deep_rx) = watcher();
    nodes[0]
        .subscribe_pattern::<Reading>("sensor.>", deep.recipient())
        .unwrap();
    let mut sub = app(&c, "master", "everything").await;
    sub.subscribe(">").await.unwrap();
    sub.sync().await.unwrap();

    let pubr = app(&c, "worker-1", "publisher").await;
    for (topic, v) in [("a", 1), ("sensor", 2), ("b.c.d", 3), ("sensor.x.y", 4)] {
        publish(&pubr, topic, v).await;
    }
    for (topic, v) in [("a", 1), ("sensor", 2), ("b.c.d", 3), ("sensor.x.y", 4)] {
        assert_eq!(seen(&mut all_rx).await, t(topic, "worker-1", v));
        assert_eq!(event(&mut sub).await, t(topic, "worker-1", v));
    }
    // `sensor.>` skipped `sensor`: its first delivery is the deeper topic.
    assert_eq!(seen(&mut deep_rx).await, t("sensor.x.y", "worker-1", 4));
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn an_event_matching_several_subscriptions_of_one_application_is_delivered_once() {
    let (c, nodes) = start(config(1)).await;
    let mut sub = app(&c, "worker-1", "overlapping").await;
    for topic in ["sensor.a", "sensor.*", "sensor.>", ">", "*.a"] {
        sub.subscribe(topic).await.unwrap();
    }
    sub.sync().await.unwrap();
    let pubr = app(&c, "master", "publisher").await;
    publish(&pubr, "sensor.a", 1).await;
    publish(&pubr, "marker", 2).await;
    assert_eq!(event(&mut sub).await, t("sensor.a", "master", 1));
    assert_eq!(
        event(&mut sub).await,
        t("marker", "master", 2),
        "sensor.a came once, however many subscriptions matched it"
    );

    // Two applications each get their own copy.
    let mut other = app(&c, "worker-1", "other").await;
    other.subscribe("sensor.*").await.unwrap();
    other.sync().await.unwrap();
    publish(&pubr, "sensor.b", 3).await;
    assert_eq!(event(&mut sub).await, t("sensor.b", "master", 3));
    assert_eq!(event(&mut other).await, t("sensor.b", "master", 3));
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn unsubscribing_a_pattern_stops_its_deliveries() {
    let (c, nodes) = start(config(1)).await;
    let (w, mut rx) = watcher();
    let sensors = nodes[1]
        .subscribe_pattern::<Reading>("sensor.*", w.clone().recipient())
        .unwrap();
    nodes[1]
        .subscribe_pattern::<Reading>("marker.>", w.recipient())
        .unwrap();
    let mut sub = app(&c, "worker-1", "quitter").await;
    sub.subscribe("sensor.*").await.unwrap();
    sub.subscribe("marker.>").await.unwrap();
    sub.sync().await.unwrap();
    let pubr = app(&c, "worker-1", "publisher").await;
    publish(&pubr, "sensor.a", 1).await;
    assert_eq!(seen(&mut rx).await, t("sensor.a", "worker-1", 1));
    assert_eq!(event(&mut sub).await, t("sensor.a", "worker-1", 1));

    nodes[1].unsubscribe(sensors);
    sub.unsubscribe("sensor.*").await.unwrap();
    sub.sync().await.unwrap();
    // The bus handles the unsubscriptions before these events, queued after them.
    publish(&pubr, "sensor.a", 2).await;
    publish(&pubr, "marker.x", 3).await;
    assert_eq!(seen(&mut rx).await, t("marker.x", "worker-1", 3));
    assert_eq!(event(&mut sub).await, t("marker.x", "worker-1", 3));
    // The application's pattern is gone: unsubscribing again is refused.
    sub.unsubscribe("sensor.*").await.unwrap();
    assert_eq!(
        refusal(&mut sub).await,
        ("unsubscribe".into(), "not_subscribed".into())
    );
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn patterns_are_refused_where_a_topic_is_needed_and_malformed_patterns_everywhere() {
    let (c, nodes) = start(config(1)).await;
    let e = nodes[0].publish(&OnAPattern).unwrap_err();
    assert!(
        matches!(&e, PublishError::BadTopic { topic, reason: TopicError::Wildcard } if topic == "sensor.*"),
        "{e}"
    );
    let e = nodes[0].send_to("worker-1", &OnAPattern).unwrap_err();
    assert!(matches!(e, PublishError::BadTopic { .. }), "{e}");
    let (w, _rx) = watcher();
    assert_eq!(
        nodes[0]
            .subscribe_pattern::<Reading>("sens*", w.clone().recipient())
            .unwrap_err(),
        TopicError::WildcardInToken
    );
    assert_eq!(
        nodes[0]
            .subscribe_pattern::<Reading>("a.>.b", w.recipient())
            .unwrap_err(),
        TopicError::FullWildcardNotLast
    );

    let mut a = app(&c, "worker-1", "clumsy").await;
    for topic in ["sensor.*", ">", "a..b", "sens*"] {
        publish(&a, topic, 1).await;
        assert_eq!(
            refusal(&mut a).await,
            ("publish".into(), "bad_topic".into()),
            "{topic}"
        );
    }
    for topic in ["sens*", "a..b", ".a", "a.", ">.a"] {
        a.subscribe(topic).await.unwrap();
        assert_eq!(
            refusal(&mut a).await,
            ("subscribe".into(), "bad_topic".into()),
            "{topic}"
        );
    }
    // Still attached and served.
    a.subscribe("ok.*").await.unwrap();
    a.sync().await.unwrap();
    publish(&a, "ok.fine", 7).await;
    assert_eq!(event(&mut a).await, t("ok.fine", "worker-1", 7));
    cluster::stop(&nodes).await;
}

/// Takes one event at a time (a mailbox of one), so the bus finds it full and waits.
struct Slow {
    tx: mpsc::UnboundedSender<(String, i64)>,
}
impl Actor for Slow {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1);
    }
}
impl Handler<PatternDelivery<Reading>> for Slow {
    type Result = ();
    fn handle(&mut self, d: PatternDelivery<Reading>, _: &mut Context<Self>) {
        let _ = self.tx.send((d.topic, d.event.v));
    }
}
impl Handler<nodecloud::Delivery<Reading>> for Slow {
    type Result = ();
    fn handle(&mut self, d: nodecloud::Delivery<Reading>, _: &mut Context<Self>) {
        let _ = self.tx.send((Reading::TOPIC.to_owned(), d.event.v));
    }
}

#[actix_rt::test]
async fn full_mailboxes_of_exact_and_pattern_subscribers_lose_and_repeat_nothing() {
    let (_c, nodes) = start(config(1)).await;
    let mut receivers = Vec::new();
    for pattern in [None, Some("sensor.*"), Some(">"), Some("sensor.reading")] {
        let (tx, rx) = mpsc::unbounded_channel();
        let slow = Slow { tx }.start();
        match pattern {
            None => {
                nodes[1].subscribe::<Reading>(slow.recipient());
            }
            Some(p) => {
                nodes[1]
                    .subscribe_pattern::<Reading>(p, slow.recipient())
                    .unwrap();
            }
        }
        receivers.push(rx);
    }
    const EVENTS: i64 = 2000;
    for v in 0..EVENTS {
        nodes[0].publish_wait(&Reading { v }).await.unwrap();
    }
    for rx in &mut receivers {
        for v in 0..EVENTS {
            let got = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, ("sensor.reading".to_owned(), v));
        }
    }
    cluster::stop(&nodes).await;
    for rx in &mut receivers {
        assert!(rx.try_recv().is_err(), "nothing was delivered twice");
    }
}

/// A star of two accepting applications on TCP, written to a file the command line reads,
/// on ports reserved in `ports`.
fn write_config(dir: &std::path::Path, ports: &mut Ports) -> String {
    let mut port = || ports.reserve().port();
    let mut text = "[cluster]\nname = \"wild\"\ntopology = \"star\"\n\
                    secret = \"wildcards-test-secret-0123456789\"\n"
        .to_owned();
    for (name, role) in [("master", "master"), ("worker-1", "worker")] {
        text += &format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:{}\"\n\
             service = \"127.0.0.1:{}\"\n",
            port(),
            port()
        );
    }
    let path = dir.join("wildcards.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[actix_rt::test]
async fn the_command_line_subscribes_to_a_pattern_and_prints_concrete_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = write_config(dir.path(), &mut ports);
    let config = Config::load(std::path::Path::new(&cfg)).unwrap();
    let (c, nodes) = start(TestCluster { config, ports }).await;
    let mut sub = Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .args([
            "sub", "sensor.*", "--config", &cfg, "--via", "worker-1", "--count", "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = sub.stdout.take().unwrap();
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The command attaches on its own schedule: publish rounds until it printed its two
    // lines. A round publishes a deeper topic before `sensor.a`; were it delivered, it would
    // be one of the lines (a round starts after the first line at the latest).
    let pubr = app(&c, "master", "publisher").await;
    let deadline = Instant::now() + WAIT;
    let mut printed = Vec::new();
    while printed.len() < 2 {
        publish(&pubr, "sensor.a.b", 1).await;
        publish(&pubr, "sensor.a", 2).await;
        while let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(200), lines.recv()).await
        {
            printed.push(l);
        }
        assert!(
            Instant::now() < deadline,
            "nodecloud sub printed {printed:?}"
        );
    }
    let expect_a = r#"{"from":"master","payload":{"v":2},"topic":"sensor.a"}"#;
    assert_eq!(printed, [expect_a, expect_a]);
    let status = tokio::task::spawn_blocking(move || sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // Publishing on a pattern fails with the node's refusal.
    let o = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_nodecloud"))
                .args(["pub", "sensor.*", "1", "--config", &cfg, "--via", "master"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad_topic"), "{err}");
    cluster::stop(&nodes).await;
}
