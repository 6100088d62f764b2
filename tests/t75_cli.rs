//! The `nodecloud` command line as an operator meets it, running the built binary against a
//! real cluster: attaching by `--address` without a topology file, bodies from stdin and
//! files, the `subscribed` line, one table of exit codes and one vocabulary of error codes,
//! and logs (JSON lines that parse, invalid filters refused, `down` at WARN, a rejoin naming
//! its new incarnation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use command_fds::{CommandFdExt, FdMapping};
use nodecloud::config::Config;
use nodecloud::testing::{self, Ports};
use nodecloud::{Delivery, Event, Invocation, Node, NodeHandle, Request};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "cli-test-secret-0123456789";
const KEY: &str = "cli-test-service-key-0123";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Note {
    text: String,
}
impl Event for Note {
    const TOPIC: &'static str = "notes.new";
}

#[derive(Serialize, Deserialize, Debug)]
struct Echo {
    text: String,
}
impl Request for Echo {
    const METHOD: &'static str = "cli.echo";
    type Response = String;
}

/// Forwards notes; echoes text.
struct Sink {
    tx: mpsc::UnboundedSender<Note>,
}
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<Delivery<Note>> for Sink {
    type Result = ();
    fn handle(&mut self, d: Delivery<Note>, _: &mut Context<Self>) {
        let _ = self.tx.send(d.event);
    }
}
impl Handler<Invocation<Echo>> for Sink {
    type Result = Result<String, String>;
    fn handle(&mut self, c: Invocation<Echo>, _: &mut Context<Self>) -> Self::Result {
        Ok(c.request.text)
    }
}

/// A star of three whose secret comes from a variable the CLI never has, and whose
/// applications use a separate service key. `worker-2` is declared but never started, so it
/// is down. Only `master` accepts applications.
struct Cluster {
    _dir: tempfile::TempDir,
    path: PathBuf,
    config: Arc<Config>,
    nodes: Vec<NodeHandle>,
    notes: mpsc::UnboundedReceiver<Note>,
    /// Holds every reserved port (worker-2's too: no one else may take it while it is down).
    ports: Ports,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Ports::new();
        let mut port = || ports.reserve().port();
        let mut text = format!(
            "[cluster]\nname = \"cli\"\ntopology = \"star\"\nsecret_env = \"NC_T75_SECRET\"\n\
             service_key = \"{KEY}\"\nheartbeat_interval_ms = 100\nfailure_threshold = 5\n"
        );
        text += &format!(
            "\n[[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"127.0.0.1:{}\"\n\
             service = \"127.0.0.1:{}\"\n",
            port(),
            port()
        );
        for w in ["worker-1", "worker-2"] {
            text += &format!(
                "\n[[nodes]]\nname = \"{w}\"\nlisten = \"127.0.0.1:{}\"\n",
                port()
            );
        }
        let path = dir.path().join("cli.toml");
        std::fs::write(&path, &text).unwrap();
        // The nodes get the secret; the command-line processes never see it.
        let config = Arc::new(
            Config::parse(
                &text.replace(
                    "secret_env = \"NC_T75_SECRET\"",
                    &format!("secret = \"{SECRET}\""),
                ),
                "cli.toml",
                dir.path(),
            )
            .unwrap(),
        );
        let on_ports = |name| ports.bound(config.node(name).unwrap());
        let master = Node::start_bound(config.clone(), "master", on_ports("master"))
            .await
            .unwrap();
        let worker = Node::start_bound(config.clone(), "worker-1", on_ports("worker-1"))
            .await
            .unwrap();
        let nodes = vec![master, worker];
        testing::wait_converged(&nodes, WAIT).await.unwrap();
        let (tx, notes) = mpsc::unbounded_channel();
        let sink = Sink { tx }.start();
        nodes[1].subscribe::<Note>(sink.clone().recipient());
        nodes[1].implement::<Echo>(sink.recipient());
        testing::wait_implemented(&nodes[0], Echo::METHOD, &["worker-1"], WAIT)
            .await
            .unwrap();
        Cluster {
            _dir: dir,
            path,
            config,
            nodes,
            notes,
            ports,
        }
    }

    fn service(&self) -> String {
        self.config
            .node("master")
            .unwrap()
            .service
            .unwrap()
            .to_string()
    }

    fn peer_port(&self) -> String {
        self.config.node("master").unwrap().listen.to_string()
    }

    fn file(&self) -> &str {
        self.path.to_str().unwrap()
    }

    async fn note(&mut self) -> Note {
        tokio::time::timeout(WAIT, self.notes.recv())
            .await
            .expect("a note arrives")
            .unwrap()
    }

    async fn stop(self) {
        nodecloud::cluster::stop(&self.nodes).await;
    }
}

/// `nodecloud ARGS…` with a clean environment for the NODECLOUD_ variables, plus `env`.
fn nodecloud_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
    cmd.args(args)
        .env_remove("NODECLOUD_ADDRESS")
        .env_remove("NODECLOUD_CLUSTER")
        .env_remove("NODECLOUD_KEY")
        .env_remove("RUST_LOG")
        .env_remove("NC_T75_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Run to completion off the actor thread (the cluster keeps running here), feeding `stdin`.
async fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<Vec<u8>>) -> Output {
    let mut cmd = nodecloud_cmd(args, env);
    tokio::task::spawn_blocking(move || {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run nodecloud");
        if let Some(bytes) = stdin {
            let mut input = child.stdin.take().unwrap();
            // A command that fails early closes stdin; that is its answer, not ours.
            let _ = input.write_all(&bytes);
        }
        child.wait_with_output().unwrap()
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

fn assert_exit(o: &Output, code: i32, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(needle),
        "wanted {needle:?} in: {}",
        stderr(o)
    );
}

#[actix_rt::test]
async fn the_cli_attaches_by_address_with_a_key_and_no_topology_file() {
    let mut c = Cluster::start().await;
    let addr = c.service();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("service.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();

    // Options only: address, cluster, key file.
    let o = run(
        &[
            "pub",
            "notes.new",
            r#"{"text": "by options"}"#,
            "--address",
            &addr,
            "--cluster",
            "cli",
            "--key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.note().await.text, "by options");

    // The environment only, like NATS_URL.
    let env = [
        ("NODECLOUD_ADDRESS", addr.as_str()),
        ("NODECLOUD_CLUSTER", "cli"),
        ("NODECLOUD_KEY", KEY),
    ];
    let o = run(&["call", "cli.echo", r#"{"text": "by env"}"#], &env, None).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), r#""by env""#);

    // --key-env names another variable.
    let o = run(
        &[
            "call",
            "cli.echo",
            r#"{"text": "by key-env"}"#,
            "--address",
            &addr,
            "--cluster",
            "cli",
            "--key-env",
            "MY_NODECLOUD_KEY",
        ],
        &[("MY_NODECLOUD_KEY", KEY)],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), r#""by key-env""#);
    c.stop().await;
}

#[actix_rt::test]
async fn a_config_file_without_the_peer_secret_serves_the_cli_and_via_may_be_omitted() {
    let mut c = Cluster::start().await;
    // NC_T75_SECRET is unset for the command; the file's service_key is enough, and only
    // master accepts applications, so --via is not needed.
    let o = run(
        &[
            "pub",
            "notes.new",
            r#"{"text": "by file"}"#,
            "--config",
            c.file(),
        ],
        &[],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.note().await.text, "by file");
    let o = run(
        &[
            "call",
            "cli.echo",
            r#"{"text":"x"}"#,
            "--config",
            c.file(),
            "--via",
            "master",
        ],
        &[],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    c.stop().await;
}

#[actix_rt::test]
async fn pub_reads_its_body_from_stdin_or_a_file_and_refuses_what_does_not_fit() {
    let mut c = Cluster::start().await;
    let file = c.file().to_owned();
    let o = run(
        &["pub", "notes.new", "-", "--config", &file],
        &[],
        Some(br#"{"text": "from stdin"}"#.to_vec()),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.note().await.text, "from stdin");

    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"text": "from a file"}"#).unwrap();
    let o = run(
        &[
            "pub",
            "notes.new",
            "--file",
            body.to_str().unwrap(),
            "--config",
            &file,
        ],
        &[],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.note().await.text, "from a file");

    // 2 MB: too long for an argument list, fine on stdin; the node refuses it as too large
    // for its 1 MiB frames, and says so.
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(2_000_000));
    let o = run(
        &["pub", "notes.new", "-", "--config", &file],
        &[],
        Some(big.into_bytes()),
    )
    .await;
    assert_exit(&o, 1, "too_large");

    let o = run(
        &["pub", "notes.new", "-", "--config", &file],
        &[],
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_exit(&o, 2, "stdin is not JSON");
    c.stop().await;
}

#[actix_rt::test]
async fn sub_says_subscribed_on_stderr_before_any_event_can_be_missed() {
    let c = Cluster::start().await;
    let mut sub = nodecloud_cmd(
        &["sub", "notes.new", "--config", c.file(), "--count", "1"],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let err = sub.stderr.take().unwrap();
    let first =
        tokio::task::spawn_blocking(move || BufReader::new(err).lines().next().map(|l| l.unwrap()));
    let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("subscribed to notes.new"));
    // One publish, after the line and not before: it must be printed.
    c.nodes[1]
        .publish(&Note {
            text: "once".into(),
        })
        .unwrap();
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap());
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        r#"{"from":"worker-1","payload":{"text":"once"},"topic":"notes.new"}"#
    );
    c.stop().await;
}

#[actix_rt::test]
async fn pub_and_call_share_one_vocabulary_of_errors_and_one_table_of_exit_codes() {
    let c = Cluster::start().await;
    let f = c.file().to_owned();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // A node the cluster does not have: the same code for both, exit 2.
        (
            vec!["pub", "t", "1", "--config", &f, "--to", "worker-9"],
            2,
            "unknown_node",
        ),
        (
            vec!["call", "cli.echo", "{}", "--config", &f, "--to", "worker-9"],
            2,
            "unknown_node",
        ),
        // A declared node that is down: the same code for both, exit 3.
        (
            vec!["pub", "t", "1", "--config", &f, "--to", "worker-2"],
            3,
            "target_down",
        ),
        (
            vec!["call", "cli.echo", "{}", "--config", &f, "--to", "worker-2"],
            3,
            "target_down",
        ),
        // Runtime failures: exit 1.
        (
            vec!["call", "nobody.home", "{}", "--config", &f],
            1,
            "no_implementer",
        ),
        // Usage and configuration: exit 2.
        (
            vec!["call", "cli.echo", "{}", "--config", &f, "--timeout", "0"],
            2,
            "--timeout",
        ),
        (
            vec!["call", "cli.echo", "{}", "--config", &f, "--via", "nobody"],
            2,
            "no node named \"nobody\"",
        ),
        (
            vec![
                "call", "cli.echo", "{}", "--config", &f, "--via", "worker-1",
            ],
            2,
            "does not accept applications",
        ),
        (vec!["pub", "t", "1"], 2, "--address"),
        (
            vec!["pub", "t", "1", "--address", "127.0.0.1:1"],
            2,
            "--cluster",
        ),
    ];
    for (args, code, needle) in cases {
        let o = run(&args, &[], None).await;
        assert_exit(&o, code, needle);
    }
    c.stop().await;
}

#[actix_rt::test]
async fn attaching_to_the_wrong_place_says_what_is_wrong() {
    let c = Cluster::start().await;
    let with = |addr: String, key: &'static str| {
        vec![
            "pub".to_owned(),
            "t".into(),
            "1".into(),
            "--address".into(),
            addr,
            "--cluster".into(),
            "cli".into(),
            "--key-env".into(),
            "K".into(),
        ]
        .into_iter()
        .map(move |s| (s, key))
    };
    let go = |addr: String, key: &'static str| {
        let args: Vec<(String, &str)> = with(addr, key).collect();
        async move {
            let a: Vec<&str> = args.iter().map(|(s, _)| s.as_str()).collect();
            run(&a, &[("K", key)], None).await
        }
    };
    // Nothing listens there: down (3), naming the address. The port is bound and never
    // listens, so it refuses connections and no one else can take it meanwhile.
    let closed_port = tokio::net::TcpSocket::new_v4().unwrap();
    closed_port.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = closed_port.local_addr().unwrap().to_string();
    let o = go(closed.clone(), KEY).await;
    assert_exit(&o, 3, &format!("cannot reach {closed}: "));
    // A wrong key: configuration (2).
    let o = go(c.service(), "not-the-service-key-0000").await;
    assert_exit(&o, 2, "auth_failed");
    // The peer port instead of the service port: configuration (2), with the hint.
    let o = go(c.peer_port(), KEY).await;
    assert_exit(&o, 2, "service port");
    c.stop().await;
}

#[test]
fn an_invalid_log_filter_is_an_error_not_a_silent_fallback() {
    let o = nodecloud_cmd(
        &["check", "--config", "config/star.toml"],
        &[("RUST_LOG", "info,nodecloud=loud")],
    )
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .output()
    .unwrap();
    assert_exit(&o, 2, "RUST_LOG");
    let o = nodecloud_cmd(
        &[
            "check",
            "--config",
            "config/star.toml",
            "--log-level",
            "nodecloud=loud",
        ],
        &[],
    )
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .output()
    .unwrap();
    assert_exit(&o, 2, "--log-level");
}

/// One `nodecloud --node NAME` process, logging JSON lines on stderr.
struct JsonNode {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl JsonNode {
    /// Started with its peer listener handed over from `ports` (socket activation).
    fn start(config: &Path, node: &str, listen: std::net::TcpListener) -> JsonNode {
        let mut cmd = nodecloud_cmd(
            &[
                "--config",
                config.to_str().unwrap(),
                "--node",
                node,
                "--log-format",
                "json",
            ],
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "peer")],
        );
        cmd.env_remove("LISTEN_PID")
            .fd_mappings(vec![FdMapping {
                parent_fd: listen.into(),
                child_fd: 3,
            }])
            .unwrap();
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        JsonNode {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next log record (every line must be one JSON object) whose message contains
    /// `message`.
    fn expect(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no record with {message:?}; saw:\n{}", self.seen.join("\n"))
            });
            self.seen.push(line.clone());
            let record: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            let text = record["fields"]["message"].as_str().unwrap_or_default();
            if text.contains(message) {
                return record;
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JsonNode {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn json_logs_parse_and_a_rejoin_names_its_new_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let (master_addr, worker_addr) = (ports.reserve(), ports.reserve());
    let text = format!(
        "[cluster]\nname = \"logs\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n\n\
         [[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{master_addr}\"\n\n\
         [[nodes]]\nname = \"worker-1\"\nlisten = \"{worker_addr}\"\n",
    );
    let path = dir.path().join("logs.toml");
    std::fs::write(&path, text).unwrap();
    let listener = |addr| ports.listener(addr).unwrap();
    let mut master = JsonNode::start(&path, "master", listener(master_addr));
    let mut worker = JsonNode::start(&path, "worker-1", listener(worker_addr));
    let up = master.expect("membership: worker-1 up");
    assert_eq!(up["level"], "INFO");
    let first = up["fields"]["incarnation"].as_str().unwrap().to_owned();
    assert_eq!(first.len(), 36, "a uuid: {up}");

    worker.kill();
    let down = master.expect("membership: worker-1 down");
    assert_eq!(down["level"], "WARN", "{down}");

    let _worker = JsonNode::start(&path, "worker-1", listener(worker_addr));
    let again = master.expect("membership: worker-1 up");
    assert!(
        again["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("new incarnation"),
        "{again}"
    );
    assert_eq!(again["fields"]["previous"].as_str(), Some(first.as_str()));
    assert_ne!(
        again["fields"]["incarnation"].as_str(),
        Some(first.as_str())
    );
}

#[test]
fn a_node_process_raises_its_open_files_limit_to_the_hard_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // The node inherits a soft limit below its hard one, as a shell's 1,024 often is.
    let lowered = (hard / 2).min(4096);
    setrlimit(Resource::RLIMIT_NOFILE, lowered, hard).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let addr = ports.reserve();
    let text = format!(
        "[cluster]\nname = \"limits\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\n\
         [[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{addr}\"\n",
    );
    let path = dir.path().join("limits.toml");
    std::fs::write(&path, text).unwrap();
    let mut node = JsonNode::start(&path, "master", ports.listener(addr).unwrap());
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let raised = node.expect("open files limit raised");
    assert_eq!(
        raised["fields"]["message"].as_str(),
        Some(format!("open files limit raised from {lowered} to {hard}").as_str())
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, [hard.to_string(), hard.to_string()], "{line}");
}

#[actix_rt::test]
async fn status_lists_every_declared_node_and_exits_3_while_one_is_down() {
    let mut c = Cluster::start().await;
    let env = [
        ("NODECLOUD_ADDRESS", c.service()),
        ("NODECLOUD_CLUSTER", "cli".to_owned()),
        ("NODECLOUD_KEY", KEY.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run(&["status", "--json"], &env, None).await;
    assert_exit(&o, 3, "down: worker-2");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["cluster"], "cli");
    assert_eq!(v["node"], "master");
    let states: Vec<(&str, &str)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("master", "up"), ("worker-1", "up"), ("worker-2", "down")]
    );
    let w1 = &v["members"][1];
    assert_eq!(w1["methods"], serde_json::json!(["cli.echo"]));
    assert_eq!(w1["links"], serde_json::json!(["master"]));
    assert!(w1["pid"].as_u64().unwrap() > 0, "{w1}");
    assert_eq!(w1["incarnation"], c.nodes[1].incarnation().to_string());

    // worker-2 comes up: every member is up, exit 0, and the table says so.
    let config = c.config.clone();
    let bound = c.ports.bound(config.node("worker-2").unwrap());
    let w2 = Node::start_bound(config, "worker-2", bound).await.unwrap();
    testing::wait_up(&c.nodes[0], &["worker-2"], WAIT)
        .await
        .unwrap();
    c.nodes.push(w2);
    let o = run(&["status", "--config", c.file()], &[], None).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.starts_with("cluster cli (star), seen from master: 3 of 3 up\nNAME"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("worker-2  worker  up")),
        "{table}"
    );
    c.stop().await;
}

#[actix_rt::test]
async fn sub_exits_3_when_its_node_goes_away() {
    let c = Cluster::start().await;
    let mut sub = nodecloud_cmd(&["sub", "notes.new", "--config", c.file()], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(sub.stderr.take().unwrap());
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        (line, err)
    });
    let (line, mut err) = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(line.trim(), "subscribed to notes.new");
    c.nodes[0].shutdown().await;
    let done = tokio::task::spawn_blocking(move || {
        let status = sub.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        (status, rest)
    });
    let (status, rest) = tokio::time::timeout(WAIT, done).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("error: "), "{rest}");
    c.stop().await;
}
