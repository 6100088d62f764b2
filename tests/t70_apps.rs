//! Applications in other processes against a cluster: the Python client (its example app and
//! its own test suite) and the `nodecloud sub` / `pub` / `call` commands, interoperating with
//! Rust actors. Needs `python3` with its venv module and pip: the Python runs in a virtualenv
//! with `clients/python` installed, built under the target directory on first use
//! (`common/python.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod python;
}

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nodecloud::config::Config;
use nodecloud::testing::Ports;
use nodecloud::{cluster, testing, CallTarget, Delivery, Event, Invocation, NodeHandle, Request};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "apps-test-secret-0123456789";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Temperature {
    celsius: f32,
}
impl Event for Temperature {
    const TOPIC: &'static str = "sensor.temperature";
}

#[derive(Serialize, Deserialize, Debug)]
struct PyAdd {
    a: i64,
    b: i64,
}
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct PySum {
    sum: i64,
}
impl Request for PyAdd {
    const METHOD: &'static str = "py.add";
    type Response = PySum;
}

#[derive(Serialize, Deserialize, Debug)]
struct Scale {
    values: Vec<f64>,
    by: f64,
}
impl Request for Scale {
    const METHOD: &'static str = "rust.scale";
    type Response = Vec<f64>;
}

/// Forwards temperatures; scales vectors.
struct Actor1 {
    tx: mpsc::UnboundedSender<(String, Temperature)>,
}
impl Actor for Actor1 {
    type Context = Context<Self>;
}
impl Handler<Delivery<Temperature>> for Actor1 {
    type Result = ();
    fn handle(&mut self, d: Delivery<Temperature>, _: &mut Context<Self>) {
        let _ = self.tx.send((d.from.name, d.event));
    }
}
impl Handler<Invocation<Scale>> for Actor1 {
    type Result = Result<Vec<f64>, String>;
    fn handle(&mut self, c: Invocation<Scale>, _: &mut Context<Self>) -> Self::Result {
        if c.request.by == 0.0 {
            return Err("scaling by zero".into());
        }
        Ok(c.request.values.iter().map(|v| v * c.request.by).collect())
    }
}

/// A star of three, every node accepting applications on TCP, written to a file the
/// command-line clients read; its ports are reserved in `ports`.
fn write_config(dir: &Path, ports: &mut Ports) -> PathBuf {
    let mut port = || ports.reserve().port();
    let mut text = format!(
        "[cluster]\nname = \"apps\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n"
    );
    for (name, role) in [
        ("master", "master"),
        ("worker-1", "worker"),
        ("worker-2", "worker"),
    ] {
        text += &format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:{}\"\n\
             service = \"127.0.0.1:{}\"\n",
            port(),
            port()
        );
    }
    let path = dir.join("apps.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every node of the file at `path`, on the sockets reserved in `ports`.
async fn start(path: &Path, ports: &Ports) -> (Arc<Config>, Vec<NodeHandle>) {
    let c = Arc::new(Config::load(path).unwrap());
    let bound = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), ports.bound(n)))
        .collect();
    let nodes = cluster::start_bound(c.clone(), None, bound).await.unwrap();
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    (c, nodes)
}

/// Python from the tests' own environment, in the checkout's root.
fn python() -> Command {
    common::python::command()
}

/// [`python`], made ready on a blocking thread: the first call builds the environment.
async fn python_ready() -> Command {
    tokio::task::spawn_blocking(python).await.unwrap()
}

/// `nodecloud ARGS…`, run to completion on a thread (the cluster keeps running here).
async fn nodecloud(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_nodecloud"))
            .args(&args)
            .output()
            .expect("run nodecloud")
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

/// The Python example app, attached to `via`, once it printed `ready`.
struct PyApp {
    child: Child,
}

impl PyApp {
    async fn start(mut python: Command, c: &Config, via: &str) -> PyApp {
        let addr = c.node(via).unwrap().service.unwrap().to_string();
        let mut child = python
            .args([
                "clients/python/example.py",
                "--address",
                &addr,
                "--cluster",
                "apps",
            ])
            .args(["--key", SECRET, "--name", "py-example"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the environment's python runs");
        let out = child.stdout.take().unwrap();
        // Read its output to the end (it prints every event), telling when `ready` came.
        let (tx, ready) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines().map_while(Result::ok);
            if lines.any(|l| l == "ready") {
                let _ = tx.send(());
            }
            lines.for_each(drop);
        });
        let ready = tokio::time::timeout(WAIT, ready).await;
        assert!(
            matches!(ready, Ok(Ok(()))),
            "the Python example printed `ready`"
        );
        PyApp { child }
    }
}

impl Drop for PyApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn a_python_app_publishes_to_a_rust_actor_and_serves_calls_from_rust_and_the_cli() {
    let python = python_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let path = write_config(dir.path(), &mut ports);
    let (c, nodes) = start(&path, &ports).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let actor = Actor1 { tx }.start();
    nodes[0].subscribe::<Temperature>(actor.recipient());

    let py = PyApp::start(python, &c, "worker-2").await;
    // The Python publish arrives on the master as a typed Delivery<Temperature>.
    let (from, t) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from.as_str(), t.celsius), ("worker-2", 21.5));

    // A Rust actor's node calls the Python method, by any-implementer choice.
    testing::wait_implemented(&nodes[1], "py.add", &["worker-2"], WAIT)
        .await
        .unwrap();
    let sum = nodes[1]
        .call(CallTarget::Any, &PyAdd { a: 20, b: 22 })
        .await
        .unwrap();
    assert_eq!(sum, PySum { sum: 42 });

    // The command line calls it through another node; JSON in, JSON out.
    let cfg = path.to_str().unwrap();
    let o = nodecloud(&[
        "call",
        "py.add",
        r#"{"a": 2, "b": 3}"#,
        "--config",
        cfg,
        "--via",
        "worker-1",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), r#"{"sum":5}"#);
    let o = nodecloud(&[
        "call", "py.fail", "{}", "--config", cfg, "--via", "master", "--to", "worker-2",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("remote_error"), "{}", stderr(&o));
    assert!(stderr(&o).contains("no"), "{}", stderr(&o));
    drop(py);
    cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn the_command_line_publishes_subscribes_and_calls_with_faithful_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let path = write_config(dir.path(), &mut ports);
    let (_c, nodes) = start(&path, &ports).await;
    let cfg = path.to_str().unwrap().to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let actor = Actor1 { tx }.start();
    nodes[2].subscribe::<Temperature>(actor.clone().recipient());
    nodes[2].implement::<Scale>(actor.recipient());

    // pub: JSON becomes the typed event of a Rust actor (1.0 stays a float).
    let o = nodecloud(&[
        "pub",
        "sensor.temperature",
        r#"{"celsius": 1.0}"#,
        "--config",
        &cfg,
        "--via",
        "worker-1",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let (from, t) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from.as_str(), t.celsius), ("worker-1", 1.0));

    // sub: a Rust publish prints as one JSON line; --count ends it.
    let mut sub = Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .args([
            "sub",
            "sensor.temperature",
            "--config",
            &cfg,
            "--via",
            "worker-1",
            "--count",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = sub.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || BufReader::new(out).lines().next());
    tokio::pin!(line);
    // Publish until the subscriber, which attaches on its own schedule, prints one.
    let deadline = Instant::now() + WAIT;
    let printed = loop {
        nodes[0].publish(&Temperature { celsius: 2.5 }).unwrap();
        if let Ok(l) = tokio::time::timeout(Duration::from_millis(200), &mut line).await {
            break l.unwrap().unwrap().unwrap();
        }
        assert!(Instant::now() < deadline, "nodecloud sub printed nothing");
    };
    assert_eq!(
        printed,
        r#"{"from":"master","payload":{"celsius":2.5},"topic":"sensor.temperature"}"#
    );
    let status = tokio::task::spawn_blocking(move || sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // call: a Rust actor's method; its error; the errors of the call itself.
    let o = nodecloud(&[
        "call",
        "rust.scale",
        r#"{"values": [1, 2.5], "by": 2.0}"#,
        "--config",
        &cfg,
        "--via",
        "master",
        "--to",
        "worker-2",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "[2.0,5.0]");
    let o = nodecloud(&[
        "call",
        "rust.scale",
        r#"{"values": [], "by": 0.0}"#,
        "--config",
        &cfg,
        "--via",
        "master",
        "--to",
        "worker-2",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("remote_error") && stderr(&o).contains("scaling by zero"),
        "{}",
        stderr(&o)
    );
    let o = nodecloud(&[
        "call",
        "rust.scale",
        r#""not a request""#,
        "--config",
        &cfg,
        "--via",
        "master",
        "--to",
        "worker-2",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad_payload"), "{}", stderr(&o));
    let o = nodecloud(&[
        "call",
        "nobody.home",
        "{}",
        "--config",
        &cfg,
        "--via",
        "master",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no_implementer"), "{}", stderr(&o));
    let o = nodecloud(&[
        "call",
        "rust.scale",
        "{}",
        "--config",
        &cfg,
        "--via",
        "master",
        "--to",
        "worker-2",
        "--timeout",
        "1",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = nodecloud(&[
        "call",
        "x",
        "{not json",
        "--config",
        &cfg,
        "--via",
        "master",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not JSON"), "{}", stderr(&o));
    let o = nodecloud(&[
        "pub", "t", "1", "--config", &cfg, "--via", "master", "--to", "nowhere",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown_node"), "{}", stderr(&o));
    cluster::stop(&nodes).await;
}

#[test]
fn the_python_client_passes_its_own_tests_against_the_built_node() {
    let out = python()
        .args(["clients/python/test_client.py"])
        .env("NODECLOUD_BIN", env!("CARGO_BIN_EXE_nodecloud"))
        .output()
        .expect("the environment's python runs");
    let mut err = std::io::stderr();
    let _ = err.write_all(&out.stderr);
    assert!(out.status.success(), "the Python client's tests failed");
}

#[test]
fn the_python_package_is_installed_in_the_test_environment_with_its_dependency() {
    let env_dir = common::python::env().unwrap();
    let out = python()
        .args([
            "-c",
            "import cbor2, nodecloud; print(nodecloud.__file__); print(nodecloud.__version__)",
        ])
        .output()
        .expect("the environment's python runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let file = PathBuf::from(lines.next().unwrap_or_default());
    // The installed copy, not the source tree: the packaging works.
    assert!(
        file.starts_with(env_dir),
        "{} is outside {}",
        file.display(),
        env_dir.display()
    );
    assert!(
        file.components().any(|c| c.as_os_str() == "site-packages"),
        "{}",
        file.display()
    );
    let pyproject =
        std::fs::read_to_string(common::python::package_source().join("pyproject.toml")).unwrap();
    let version = lines.next().unwrap_or_default();
    assert!(
        pyproject.contains(&format!("version = \"{version}\"")),
        "nodecloud.__version__ {version:?} is not pyproject.toml's"
    );
}
