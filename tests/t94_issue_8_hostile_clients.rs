//! Hostile applications and operators against real processes (issue 8, items 3, 4, 7 and 9):
//! payloads built to blow up JSON or the stack, secret files that never end or never open,
//! and an application that floods its node with subscribe/unsubscribe frames. Every test
//! asserts that the node (or the command) stays up or ends with its documented error within a
//! bounded time, that its RSS (sampled from /proc every 50 ms) stays under a stated bound,
//! that honest traffic keeps flowing, and that the misbehaving client gets its documented
//! answer.
//!
//! Node processes inherit listeners the test bound itself (socket activation), so no port is
//! ever free for another test to take.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod hostile;
    pub mod procs;
}

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use common::hostile::{rss_bytes, RssSampler};
use common::procs::Proc;
use futures_util::StreamExt;
use nodecloud::config::Secret;
use nodecloud::service::{Client, Endpoint, Incoming};
use nodecloud::testing::{self, Ports};
use nodecloud::wire::{
    self, json, Frame, FrameCodec, Identity, Message, Ping, Topic, MAX_HANDSHAKE_FRAME_BYTES,
};
use nodecloud::{Delivery, Event};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Encoder, Framed};
use tracing::info;
use uuid::Uuid;

/// Generous, for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(20);
const KEY: &str = "hostile-clients-service-key-0123";
const CLUSTER: &str = "hostile-clients";
const MIB: u64 = 1024 * 1024;
/// A line `nodecloud sub` or `call` prints for any payload of these tests: the payloads are
/// at most 20 KB, and JSON stays within a small multiple of the CBOR it came from.
const MAX_LINE_BYTES: usize = 4096;

/// `a1`×34 `00`×35: maps used as map keys, 34 deep (69 bytes). Before the fix, `cbor_to_json`
/// escaped each key into text once per level and the command line died allocating 512 MiB.
fn maps_as_map_keys() -> Bytes {
    let mut v = vec![0xa1; 34];
    v.extend(std::iter::repeat_n(0x00, 35));
    Bytes::from(v)
}

/// `depth` nested one-element arrays around a 0: 20,000 of them is 20 KB, and overflowed
/// the stack of a recursive decoder.
fn nested_arrays(depth: usize) -> Bytes {
    let mut v = vec![0x81; depth];
    v.push(0x00);
    Bytes::from(v)
}

fn cbor(value: &serde_json::Value) -> Bytes {
    json::json_to_cbor(value).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One node process, `master`, alone in its cluster, with a service port.
struct OneNode {
    _dir: tempfile::TempDir,
    ports: Ports,
    service: SocketAddr,
    path: PathBuf,
}

impl OneNode {
    fn new() -> OneNode {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Ports::new();
        let (peer, service) = (ports.reserve(), ports.reserve());
        let text = format!(
            "[cluster]\nname = \"{CLUSTER}\"\ntopology = \"star\"\n\
             secret = \"hostile-clients-secret-0123456789\"\nservice_key = \"{KEY}\"\n\
             heartbeat_interval_ms = 1000\nfailure_threshold = 5\n\n\
             [[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{peer}\"\n\
             service = \"{service}\"\n"
        );
        let path = dir.path().join("clients.toml");
        std::fs::write(&path, text).unwrap();
        OneNode {
            _dir: dir,
            ports,
            service,
            path,
        }
    }

    fn start(&self) -> Proc {
        let mut p = Proc::start(&self.path, "master", &self.ports);
        p.expect_line(&["node started"], WAIT);
        p
    }

    async fn app(&self, name: &str) -> Client {
        Client::connect(&Endpoint::Tcp(self.service), CLUSTER, KEY.as_bytes(), name)
            .await
            .unwrap_or_else(|e| panic!("{name} cannot attach: {e}"))
    }
}

/// The peak RSS of process `pid` so far (`VmHWM` of /proc/PID/status), in bytes.
fn high_water_mark(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `nodecloud ARGS…` attached to `service` through the environment.
fn cli(args: &[&str], service: SocketAddr, cluster: &str, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
    cmd.args(args)
        .env("NODECLOUD_ADDRESS", service.to_string())
        .env("NODECLOUD_CLUSTER", cluster)
        .env("NODECLOUD_KEY", key)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run `cmd` to completion within `timeout` (killed and failed past it); its output and the
/// peak RSS sampled while it ran (every 50 ms: a command that lives a few milliseconds may
/// be sampled once or not at all, so this bound is a weak check; a long-running `sub` is
/// checked with the kernel's high-water mark).
fn run_bounded(mut cmd: Command, timeout: Duration) -> (Output, u64) {
    let child = cmd.spawn().expect("run nodecloud");
    let pid = child.id();
    let rss = RssSampler::start(pid);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            waiter.join().unwrap();
            (out.unwrap(), rss.finish())
        }
        Err(_) => {
            // The child is owned by the waiter thread: end it by its pid.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{cmd:?} still running after {timeout:?}");
        }
    }
}

/// A running `nodecloud sub`, its stdout lines and stderr lines delivered by reader threads.
struct Sub {
    child: std::process::Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    rss: Option<RssSampler>,
}

impl Sub {
    fn start(topic: &str, service: SocketAddr, cluster: &str, key: &str) -> Sub {
        let mut child = cli(&["sub", topic], service, cluster, key).spawn().unwrap();
        let rss = Some(RssSampler::start(child.id()));
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        let sub = Sub {
            child,
            out,
            err,
            rss,
        };
        let first = sub.err.recv_timeout(WAIT).expect("sub says it subscribed");
        assert_eq!(first, format!("subscribed to {topic}"));
        sub
    }

    /// The next line printed, as JSON, after checking its length.
    fn next(&mut self) -> serde_json::Value {
        let line = self.out.recv_timeout(WAIT).unwrap_or_else(|_| {
            let status = self.child.try_wait().unwrap();
            panic!("sub printed nothing within {WAIT:?} (exit: {status:?})")
        });
        assert!(
            line.len() <= MAX_LINE_BYTES,
            "a line of {} bytes: {}…",
            line.len(),
            line.chars().take(200).collect::<String>()
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Still running; its peak RSS so far.
    fn alive_with_peak(&mut self) -> u64 {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "sub exited: {:?}",
            self.err.try_iter().collect::<Vec<_>>()
        );
        // The kernel's high-water mark covers the moments between two samples.
        let hwm = high_water_mark(self.child.id()).unwrap_or(0);
        let sampled = self.rss.take().map_or(0, RssSampler::finish);
        sampled.max(hwm)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An application on its own thread that answers each request with the payload its request
/// names (`"keys"`, `"deep"`), or echoes it, until dropped.
struct Reflector {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reflector {
    fn start(service: SocketAddr) -> Reflector {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let endpoint = Endpoint::Tcp(service);
                let mut app = Client::connect(&endpoint, CLUSTER, KEY.as_bytes(), "reflector")
                    .await
                    .unwrap();
                app.implement("reflect").await.unwrap();
                app.sync().await.unwrap();
                ready.send(()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        incoming = app.next() => match incoming {
                            Some(Incoming::Request { id, payload, .. }) => {
                                let answer = match json::cbor_to_json(&payload) {
                                    Ok(serde_json::Value::String(s)) if s == "keys" => maps_as_map_keys(),
                                    Ok(serde_json::Value::String(s)) if s == "deep" => nested_arrays(20_000),
                                    _ => payload,
                                };
                                let _ = app.respond(id, Ok(answer)).await;
                            }
                            Some(_) => {}
                            None => break,
                        },
                    }
                }
            });
        });
        is_ready.recv_timeout(WAIT).expect("the reflector attached");
        Reflector {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Issue 8, item 3: the 69-byte payload of maps used as map keys, and 20,000 nested arrays,
/// published to a topic `nodecloud sub` prints and returned as `nodecloud call` replies. `sub`
/// prints a bounded line for each (the first in diagnostic notation, the second as
/// `{"$undecodable": …}`) and goes on to print the next honest event; `call` prints the first
/// reply as one bounded line and refuses the second with `bad_payload` (exit 1); each command
/// stays under 64 MiB and the node under 64 MiB, and keeps serving.
#[test]
fn maps_as_map_keys_and_deep_nesting_print_as_bounded_lines_from_sub_and_call() {
    let node = OneNode::new();
    let mut proc = node.start();
    let node_rss = RssSampler::start(proc.child.id());
    let mut sub = Sub::start("hostile.payload", node.service, CLUSTER, KEY);
    let _reflector = Reflector::start(node.service);

    info!("--- publish the two payloads, then an honest one");
    runtime().block_on(async {
        let publisher = node.app("publisher").await;
        for payload in [
            maps_as_map_keys(),
            nested_arrays(20_000),
            cbor(&serde_json::json!({"honest": 1})),
        ] {
            publisher
                .publish_raw("hostile.payload", payload, None)
                .await
                .unwrap();
        }
        publisher.sync().await.unwrap();
        publisher.close().await;
    });
    let keys = sub.next();
    assert_eq!(keys["topic"], "hostile.payload");
    assert!(keys["payload"].is_object(), "{keys}");
    let deep = sub.next();
    let why = deep["payload"]["$undecodable"].as_str().unwrap_or_default();
    assert!(why.contains("deep"), "{deep}");
    let honest = sub.next();
    assert_eq!(honest["payload"], serde_json::json!({"honest": 1}));
    let sub_peak = sub.alive_with_peak();
    println!("sub peak RSS {} MiB", sub_peak / MIB);
    assert!(
        sub_peak < 64 * MIB,
        "sub RSS reached {} MiB",
        sub_peak / MIB
    );

    info!("--- the same payloads as call replies");
    let call = |what: &str| {
        run_bounded(
            cli(&["call", "reflect", what], node.service, CLUSTER, KEY),
            WAIT,
        )
    };
    let (o, peak) = call("\"keys\"");
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    assert!(
        line.len() <= MAX_LINE_BYTES && !line.contains('\n'),
        "{line}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&line)
        .unwrap()
        .is_object());
    assert!(peak < 64 * MIB, "call RSS reached {} MiB", peak / MIB);
    let (o, peak) = call("\"deep\"");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad_payload"), "{}", stderr(&o));
    assert!(stderr(&o).len() <= MAX_LINE_BYTES, "{}", stderr(&o));
    assert!(peak < 64 * MIB, "call RSS reached {} MiB", peak / MIB);
    let (o, _) = call("{\"honest\": 2}");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), r#"{"honest":2}"#);

    assert!(proc.child.try_wait().unwrap().is_none(), "the node exited");
    let peak = node_rss
        .finish()
        .max(high_water_mark(proc.child.id()).unwrap());
    println!("node peak RSS {} MiB", peak / MIB);
    assert!(peak < 64 * MIB, "node RSS reached {} MiB", peak / MIB);
}

/// A document of any shape: its decoding (serde_json::Value) recurses once per level.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(transparent)]
struct Doc(serde_json::Value);
impl Event for Doc {
    const TOPIC: &'static str = "hostile.docs";
}

/// Forwards the documents it is delivered into a channel.
struct DocReader {
    tx: tokio::sync::mpsc::UnboundedSender<serde_json::Value>,
}
impl Actor for DocReader {
    type Context = Context<Self>;
}
impl Handler<Delivery<Doc>> for DocReader {
    type Result = ();
    fn handle(&mut self, d: Delivery<Doc>, _: &mut Context<Self>) {
        let _ = self.tx.send(d.event.0);
    }
}

/// Issue 8, item 4: an application on the master publishes 20,000 nested arrays (20 KB) to a
/// topic whose subscriber on worker-1 is an actor taking `serde_json::Value` (a recursive
/// type), and a `nodecloud sub` of the same topic. The node stays up (the test process is the
/// node: a stack overflow would abort it); the actor skips the event, as documented, and gets
/// the next honest one; `sub` prints it as `{"$undecodable": …}`, then the honest one; the
/// process stays under 256 MiB.
#[actix_rt::test]
async fn a_recursive_subscriber_skips_twenty_thousand_nested_arrays_and_the_node_stays_up() {
    let rss = RssSampler::start(std::process::id());
    let mut c = testing::star(1);
    for n in &mut c.config.nodes {
        n.service = Some(c.ports.reserve());
    }
    c.config.cluster.service_key = Some(Secret::new(KEY.as_bytes().to_vec()));
    let nodes = c.start().await.expect("cluster starts");
    let config = c.config();
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");
    let (tx, mut docs) = tokio::sync::mpsc::unbounded_channel();
    nodes[1].subscribe(DocReader { tx }.start().recipient());
    let worker_service = config.node("worker-1").unwrap().service.unwrap();
    let (sub_service, sub_cluster) = (worker_service, config.cluster.name.clone());
    let mut sub =
        tokio::task::spawn_blocking(move || Sub::start(Doc::TOPIC, sub_service, &sub_cluster, KEY))
            .await
            .unwrap();
    let publisher = Client::connect_via(&config, "master", "deep-publisher")
        .await
        .unwrap();

    info!("--- probes until the actor and sub both hear from the master");
    let deadline = Instant::now() + WAIT;
    let mut probe = 0;
    loop {
        assert!(Instant::now() < deadline, "no probe reached the actor");
        publisher
            .publish_raw(Doc::TOPIC, cbor(&serde_json::json!({"probe": probe})), None)
            .await
            .unwrap();
        probe += 1;
        // A probe per 100 ms until the subscription has reached the master.
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), docs.recv()).await {
            break;
        }
    }
    let (sub, first) = tokio::task::spawn_blocking(move || {
        let first = sub.next();
        (sub, first)
    })
    .await
    .unwrap();
    let mut sub = sub;
    assert!(first["payload"]["probe"].is_number(), "{first}");

    info!("--- 20,000 nested arrays, then an honest document");
    publisher
        .publish_raw(Doc::TOPIC, nested_arrays(20_000), None)
        .await
        .unwrap();
    publisher
        .publish_raw(Doc::TOPIC, cbor(&serde_json::json!({"after": true})), None)
        .await
        .unwrap();
    publisher.sync().await.unwrap();
    let got = loop {
        let doc = tokio::time::timeout(WAIT, docs.recv())
            .await
            .expect("the honest document within the deadline")
            .unwrap();
        if doc.get("probe").is_none() {
            break doc;
        }
    };
    assert_eq!(
        got,
        serde_json::json!({"after": true}),
        "the deep event was skipped"
    );

    let (lines, sub) = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        loop {
            let line = sub.next();
            let done = line["payload"].get("after").is_some();
            lines.push(line);
            if done {
                break (lines, sub);
            }
        }
    })
    .await
    .unwrap();
    let mut sub = sub;
    let undecodable: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["payload"].get("$undecodable").is_some())
        .collect();
    assert_eq!(undecodable.len(), 1, "{lines:#?}");
    assert!(sub.alive_with_peak() < 64 * MIB);

    // Still serving: a document from worker-1 itself reaches its own actor.
    nodes[1]
        .publish(&Doc(serde_json::json!({"local": 1})))
        .unwrap();
    let local = tokio::time::timeout(WAIT, docs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(local, serde_json::json!({"local": 1}));
    publisher.close().await;
    drop(sub);
    nodecloud::cluster::stop(&nodes).await;
    let peak = rss
        .finish()
        .max(high_water_mark(std::process::id()).unwrap());
    println!("test process peak RSS {} MiB", peak / MIB);
    assert!(peak < 256 * MIB, "RSS reached {} MiB", peak / MIB);
}

/// A configuration whose secret is read from `secret_file`.
fn secret_file_config(dir: &Path, secret_file: &Path) -> PathBuf {
    let text = format!(
        "[cluster]\nname = \"{CLUSTER}\"\ntopology = \"star\"\nsecret_file = \"{}\"\n\n\
         [[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"127.0.0.1:1\"\n",
        secret_file.display()
    );
    let path = dir.join("secret-file.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Issue 8, item 7: `secret_file = "/dev/zero"` and a FIFO nobody writes to. `nodecloud
/// check` and a node start each end within 10 s with exit 2 and an error naming the file as
/// not a regular file, under 64 MiB (the endless device was read up to 516 MiB, and the FIFO
/// blocked `check` forever).
#[test]
fn a_secret_file_that_is_a_device_or_a_fifo_is_refused_at_once_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("secret.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for secret in [Path::new("/dev/zero"), fifo.as_path()] {
        let config = secret_file_config(dir.path(), secret);
        let check = {
            let mut c = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
            c.arg("check").arg("--config").arg(&config);
            c
        };
        let start = {
            let mut c = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
            c.arg("--config").arg(&config).arg("--node").arg("master");
            c
        };
        for mut cmd in [check, start] {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .env_remove("RUST_LOG");
            let what = format!("{cmd:?}");
            let began = Instant::now();
            let (o, peak) = run_bounded(cmd, Duration::from_secs(10));
            println!(
                "{what}: {:?}, {} MiB: {}",
                began.elapsed(),
                peak / MIB,
                stderr(&o)
            );
            assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(err.contains("not a regular file"), "{what}: {err}");
            assert!(err.contains(&secret.display().to_string()), "{what}: {err}");
            assert!(peak < 64 * MIB, "{what}: RSS reached {} MiB", peak / MIB);
        }
    }
}

/// Issue 8, item 9: a raw application sends 100,000 subscribe/unsubscribe frames as fast as
/// TCP takes them, with an unsubscribe of a topic it never subscribed after every 1,000 pairs.
/// It gets each of those 50 `refused` `not_subscribed` answers, in order, then the `pong` of
/// a `ping` sent last (nothing dropped, nothing reordered), and its final subscription works;
/// meanwhile another application's 2,000 events all reach their subscriber, in order; the node
/// stays up under 64 MiB.
#[test]
fn a_flood_of_subscribe_frames_is_served_in_order_while_honest_events_flow() {
    const PAIRS: usize = 50_000;
    const EVERY: usize = 1_000;
    const HONEST: u64 = 2_000;
    let node = OneNode::new();
    let mut proc = node.start();
    let rss = RssSampler::start(proc.child.id());
    let before = rss_bytes(proc.child.id()).unwrap();

    runtime().block_on(async {
        let mut listener = node.app("honest-listener").await;
        listener.subscribe("honest.events").await.unwrap();
        listener.sync().await.unwrap();
        let talker = node.app("honest-talker").await;

        let stream = tokio::net::TcpStream::connect(node.service).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
        let me = Identity {
            cluster: CLUSTER.into(),
            node: "flooder".into(),
            incarnation: Uuid::new_v4(),
            secret: KEY.as_bytes().to_vec(),
            welcome: Default::default(),
        };
        wire::dial(&mut framed, &me, WAIT).await.unwrap();
        framed.codec_mut().set_max_frame_bytes(1 << 20);
        // Reading and writing at once: the codec (its frame numbering) goes to both halves.
        let parts = framed.into_parts();
        let (read, mut write) = tokio::io::split(parts.io);
        let mut encoder = parts.codec.clone();
        let mut rx = tokio_util::codec::FramedRead::new(read, parts.codec);
        rx.read_buffer_mut().extend_from_slice(&parts.read_buf);

        info!("--- flood, honest traffic beside it");
        let flood = async {
            let started = Instant::now();
            let mut buf = bytes::BytesMut::new();
            let mut put = |msg: Message, buf: &mut bytes::BytesMut| {
                encoder.encode(&msg, buf).unwrap();
            };
            for i in 0..PAIRS {
                let topic = format!("flood.t{}", i % 512);
                put(
                    Message::Subscribe(Topic {
                        topic: topic.clone(),
                    }),
                    &mut buf,
                );
                put(Message::Unsubscribe(Topic { topic }), &mut buf);
                if i % EVERY == EVERY - 1 {
                    let topic = format!("flood.never.{i}");
                    put(Message::Unsubscribe(Topic { topic }), &mut buf);
                }
                // As fast as TCP takes them, a few hundred frames per write.
                if buf.len() >= 16 * 1024 {
                    write.write_all(&buf.split()).await.unwrap();
                }
            }
            let topic = "flood.final".to_owned();
            put(Message::Subscribe(Topic { topic }), &mut buf);
            put(Message::Ping(Ping { n: 7 }), &mut buf);
            write.write_all(&buf.split()).await.unwrap();
            println!(
                "flood of {} frames sent in {:?}",
                2 * PAIRS + PAIRS / EVERY + 2,
                started.elapsed()
            );
        };
        let answers = async {
            let mut refused = Vec::new();
            loop {
                let frame = tokio::time::timeout(WAIT * 3, rx.next())
                    .await
                    .expect("the flooder's answers within the deadline")
                    .expect("the connection stays open")
                    .unwrap();
                match frame {
                    Frame(_, Message::Refused(r)) => {
                        assert_eq!(
                            (r.op.as_str(), r.code.as_str()),
                            ("unsubscribe", "not_subscribed")
                        );
                        refused.push(r.message);
                    }
                    Frame(_, Message::Pong(p)) => {
                        assert_eq!(p.n, 7);
                        return refused;
                    }
                    Frame(_, Message::Ping(_)) => {}
                    Frame(_, other) => panic!("unexpected {other:?}"),
                }
            }
        };
        let honest = async {
            let send = async {
                for n in 0..HONEST {
                    talker
                        .publish_raw("honest.events", cbor(&serde_json::json!(n)), None)
                        .await
                        .unwrap();
                }
            };
            let receive = async {
                for n in 0..HONEST {
                    let got = loop {
                        match tokio::time::timeout(WAIT, listener.next()).await {
                            Ok(Some(Incoming::Event { payload, .. })) => break payload,
                            Ok(Some(_)) => {}
                            Ok(None) => panic!("the listener was closed"),
                            Err(_) => panic!("honest event {n} not delivered within {WAIT:?}"),
                        }
                    };
                    assert_eq!(json::cbor_to_json(&got).unwrap(), serde_json::json!(n));
                }
            };
            tokio::join!(send, receive);
        };
        let ((), refused, ()) = tokio::join!(flood, answers, honest);
        let expected: Vec<String> = (0..PAIRS)
            .filter(|i| i % EVERY == EVERY - 1)
            .map(|i| format!("not subscribed to \"flood.never.{i}\""))
            .collect();
        assert_eq!(refused, expected, "every answer, in order");

        info!("--- the flooder's last subscription works");
        talker
            .publish_raw("flood.final", cbor(&serde_json::json!("last")), None)
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, rx.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match frame {
                Frame(_, Message::Deliver(d)) => {
                    assert_eq!(d.topic, "flood.final");
                    break;
                }
                Frame(_, Message::Ping(_)) => {}
                Frame(_, other) => panic!("unexpected {other:?}"),
            }
        }
        talker.close().await;
        listener.close().await;
    });

    assert!(proc.child.try_wait().unwrap().is_none(), "the node exited");
    let peak = rss.finish().max(high_water_mark(proc.child.id()).unwrap());
    println!(
        "node RSS {} MiB before, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(peak < 64 * MIB, "node RSS reached {} MiB", peak / MIB);
}
