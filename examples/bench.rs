//! Throughput and latency of nodecloud links, every node in its own process, over loopback.
//!
//! ```text
//! cargo run --release --example bench -- --workload w1 --size 64 --count 2000000
//! cargo run --release --example bench -- --workload w2 --size 64 --count 20000
//! cargo run --release --example bench -- --workload w3 --size 64 --count 500000 --subscribers 8
//! cargo run --release --example bench -- --workload idle
//! cargo run --release --example bench -- --workload w2call --size 64 --count 20000
//! cargo run --release --example bench -- --workload w1app --size 64 --count 2000000
//! cargo run --release --example bench -- --workload w2app --size 64 --count 20000
//! cargo run --release --example bench -- --workload w1 --tls      # any workload, inside TLS
//! ```
//!
//! `--tls` runs every link and the service listener inside TLS (`[cluster.tls]`), with a CA
//! and a node certificate made for the run in a temporary directory; the result line then
//! ends in `tls=1`, to set beside the plaintext line of the same workload.
//!
//! * `w1`: one-way throughput between two nodes of a star (the receiver is the master, the
//!   sender a worker publishing with `publish_wait`). Measured at the receiver, from the first
//!   event to the last.
//! * `w2`: ping-pong with `send_to` between two nodes; latency percentiles of `--count` round
//!   trips after `--warmup` ones.
//! * `w3`: one publisher (the star's master) and `--subscribers` subscriber nodes; events
//!   delivered per second across all subscribers, and how many never arrived.
//! * `idle`: one node alone for 2 s; its resident memory.
//! * `w2call`: as `w2`, with a call of a method an actor of the other node implements.
//! * `w1app`: one-way throughput from an application attached to one node to an application
//!   attached to the other (four processes). The publisher hands its events to its client
//!   `--app-batch` (256) at a time (`Client::publish_batch`) and the subscriber takes them as
//!   many at a time (`Client::next_many`); `--app-batch 1` publishes and takes one by one.
//! * `w2app`: ping-pong between two applications attached to two nodes: the pinger publishes
//!   `bench.ping` targeted at the ponger's node, the ponger publishes the same payload back as
//!   `bench.pong` targeted at the node the ping came from. A NATS request/reply is the same
//!   two publishes (the reply goes to the requester's inbox subject), so this is the round
//!   trip a NATS user compares with; `w2` is its actor-to-actor counterpart.
//!
//! The parent process spawns itself (hidden `--role` arguments) once per node, passes the
//! cluster layout on the command line, and drives the children through their stdin: `go`,
//! `drain`, `quit`. A child exits when its stdin closes (the parent died) or when its hard
//! deadline passes. The parent binds every node's ports and hands the listeners to the
//! children (socket activation), so no port is free for another process to take meanwhile. Children print `ready` / `result ...` lines on stdout; only the parent's
//! final line goes to the parent's stdout. Every run ends within 60 s: on a timeout the line
//! carries what was achieved and `timeout=1`, and the exit status is non-zero.

/// As the `nodecloud` command (the `mimalloc` feature, on by default); `--no-default-features`
/// measures with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: nodecloud::alloc::Mimalloc = nodecloud::alloc::Mimalloc;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use clap::Parser;
use command_fds::{CommandFdExt, FdMapping};
use nodecloud::config::{Config, NodeConfig, Role, TlsConfig, TopologyKind};
use nodecloud::service::{Client, Incoming, Overflow};
use nodecloud::sockets::{Bound, Inherited};
use nodecloud::testing::Ports;
use nodecloud::{testing, Delivery, Event, Invocation, Node, NodeHandle, Request};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The benchmark event: a sequence number and `--size` bytes of payload.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Bench {
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Event for Bench {
    const TOPIC: &'static str = "bench.data";
}

/// W2CALL calls an echo method with the same value.
impl Request for Bench {
    const METHOD: &'static str = "bench.echo";
    type Response = Bench;
}

/// Whole-run budget: the parent gives up (and kills its children) after this.
const RUN_BUDGET: Duration = Duration::from_secs(55);
/// Children stop measuring this long before the parent's budget ends, to report in time.
const CHILD_REPORT_MARGIN: Duration = Duration::from_secs(6);
/// After the sender finished, how long a receiver may make no progress before it reports.
const STRAGGLER_WAIT: Duration = Duration::from_secs(2);
/// Deliveries a subscriber's mailbox holds before the event bus waits for it.
const SINK_MAILBOX: usize = 4096;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "nodecloud benchmarks: w1 (throughput), w2 (ping-pong latency), w3 (fan-out), idle (RSS), w2call (call latency), w1app (application throughput), w2app (application round trip)"
)]
struct Args {
    /// w1, w2, w3, idle, w2call, w1app or w2app.
    #[arg(long, default_value = "w1")]
    workload: String,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Events (w1, w3) or measured round trips (w2). Default: 2000000 / 20000 / 500000.
    #[arg(long)]
    count: Option<u64>,
    /// Subscriber nodes (w3).
    #[arg(long, default_value_t = 8)]
    subscribers: usize,
    /// Unmeasured round trips before w2 measures.
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// Heartbeat interval of the benchmark cluster.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Where the sending loop runs: `node` (the node's arbiter) or `main` (the System thread).
    #[arg(long, default_value = "node")]
    sender_on: String,
    /// w1 only: `publish` (broadcast) or `send` (targeted `send_to_wait`).
    #[arg(long, default_value = "publish")]
    mode: String,
    /// w1app: the publishing application hands its events to the client this many at a time
    /// (`Client::publish_batch`), and the receiving one takes up to this many at a time
    /// (`Client::next_many`); 1 publishes each with `publish_raw` and takes each alone.
    /// Batches are the faster of the two; on the wire each event is its own frame either way.
    #[arg(long, default_value_t = 256)]
    app_batch: usize,
    /// Run every link and the service listener inside TLS, with certificates made for the run.
    #[arg(long)]
    tls: bool,

    // ---- hidden: how the parent configures a child ----
    #[arg(long, hide = true)]
    role: Option<String>,
    #[arg(long, hide = true)]
    name: Option<String>,
    /// `name=role@addr[/service-addr],...`
    #[arg(long, hide = true)]
    nodes: Option<String>,
    /// The nodes a child waits for before it says `ready`, comma-separated.
    #[arg(long, hide = true)]
    peers: Option<String>,
    /// The node a child sends to (w1 `send` mode, w2).
    #[arg(long, hide = true)]
    target: Option<String>,
    /// Unix ms after which a child stops measuring and reports what it has.
    #[arg(long, hide = true)]
    deadline_ms: Option<u64>,
    /// With --tls: the directory holding ca.pem, node.pem and node.key (made by the parent).
    #[arg(long, hide = true)]
    tls_dir: Option<std::path::PathBuf>,
}

impl Args {
    fn count(&self) -> u64 {
        self.count.unwrap_or(match self.workload.as_str() {
            "w2" | "w2call" | "w2app" => 20_000,
            "w3" => 500_000,
            _ => 2_000_000,
        })
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    nodecloud::node::install_panic_hook();
    match args.role.clone() {
        Some(role) => child_main(&role, &args),
        None => {
            // Held until the run ends: the children read their certificates from it.
            let _pki = match args.tls.then(make_pki).transpose() {
                Ok(dir) => {
                    args.tls_dir = dir.as_ref().map(|d| d.path().to_path_buf());
                    dir
                }
                Err(e) => {
                    eprintln!("error: cannot make the TLS certificates: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let args = args;
            match args.workload.as_str() {
                "w1" => parent_w1(&args),
                "w2" => parent_w2(&args, ("ponger", "pinger"), "W2"),
                "w2call" => parent_w2(&args, ("callee", "caller"), "W2CALL"),
                "w1app" => parent_w1app(&args),
                "w2app" => parent_w2app(&args),
                "w3" => parent_w3(&args),
                "idle" => idle(&args),
                other => {
                    eprintln!("error: unknown workload {other:?}; expected w1, w2, w3, idle, w2call, w1app or w2app");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn unix_ms() -> u64 {
    unix_ns() / 1_000_000
}

// ------------------------------------------------------------------------------------------
// Cluster layout, shared by parent and children through `--nodes`.

fn node_spec(nodes: &[(String, Role, SocketAddr)]) -> String {
    nodes
        .iter()
        .map(|(n, r, a)| format!("{n}={}@{a}", r.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_nodes(spec: &str) -> Result<Vec<NodeConfig>, String> {
    spec.split(',')
        .map(|item| {
            let (name, rest) = item
                .split_once('=')
                .ok_or_else(|| format!("bad node {item:?}"))?;
            let (role, addrs) = rest
                .split_once('@')
                .ok_or_else(|| format!("bad node {item:?}"))?;
            let role = Role::from_name(role).ok_or_else(|| format!("bad role {role:?}"))?;
            // `addr` or `addr/service-addr`.
            let (addr, service) = match addrs.split_once('/') {
                Some((a, s)) => (a, Some(s)),
                None => (addrs, None),
            };
            let parse = |a: &str| -> Result<SocketAddr, String> {
                a.parse().map_err(|e| format!("bad address {a:?}: {e}"))
            };
            let mut node = NodeConfig::new(name, role, parse(addr)?);
            node.service = service.map(parse).transpose()?;
            Ok(node)
        })
        .collect()
}

fn bench_config(nodes: Vec<NodeConfig>, heartbeat_ms: u64, tls: Option<&Path>) -> Config {
    let mut config = Config::for_test(TopologyKind::Star, nodes);
    config.cluster.name = "bench".to_owned();
    config.cluster.heartbeat_interval = Duration::from_millis(heartbeat_ms);
    config.cluster.tls = tls.map(|dir| TlsConfig {
        ca: dir.join("ca.pem"),
        cert: Some(dir.join("node.pem")),
        key: Some(dir.join("node.key")),
        service_tls: true,
    });
    config
}

/// A CA and one certificate every node uses (127.0.0.1 and localhost as names), as PEM files
/// in a temporary directory.
fn make_pki() -> Result<tempfile::TempDir, String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let dir = tempfile::tempdir().map_err(|x| e(&x))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|x| e(&x))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(|x| e(&x))?;
    let ca = ca.self_signed(&ca_key).map_err(|x| e(&x))?;
    let node = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(|x| e(&x))?;
    let key = KeyPair::generate().map_err(|x| e(&x))?;
    let cert = node.signed_by(&key, &ca, &ca_key).map_err(|x| e(&x))?;
    for (file, pem) in [
        ("ca.pem", ca.pem()),
        ("node.pem", cert.pem()),
        ("node.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.path().join(file), pem).map_err(|x| e(&x))?;
    }
    Ok(dir)
}

fn star_layout(ports: &mut Ports, workers: usize) -> Vec<(String, Role, SocketAddr)> {
    let mut v = vec![("master".to_owned(), Role::Master, ports.reserve())];
    v.extend((1..=workers).map(|i| (format!("worker-{i}"), Role::Worker, ports.reserve())));
    v
}

/// Roles whose child runs a node (the others attach to one as applications).
const NODE_ROLES: [&str; 7] = [
    "sink", "source", "ponger", "pinger", "callee", "caller", "appnode",
];

// ------------------------------------------------------------------------------------------
// Parent: spawn, drive and reap the children.

struct Kid {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

struct Kids {
    kids: Vec<Kid>,
    lines: std_mpsc::Receiver<(usize, Option<String>)>,
    lines_tx: std_mpsc::SyncSender<(usize, Option<String>)>,
    deadline: Instant,
    /// Every node's ports, bound here and handed to the child that runs the node.
    ports: Ports,
}

impl Kids {
    fn new() -> Self {
        let (lines_tx, lines) = std_mpsc::sync_channel(256);
        Kids {
            kids: Vec::new(),
            lines,
            lines_tx,
            ports: Ports::new(),
            deadline: Instant::now() + RUN_BUDGET,
        }
    }

    fn child_deadline_ms(&self) -> u64 {
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(CHILD_REPORT_MARGIN);
        unix_ms() + left.as_millis() as u64
    }

    fn spawn(
        &mut self,
        args: &Args,
        role: &str,
        name: &str,
        nodes: &str,
        peers: &[&str],
        target: Option<&str>,
    ) -> Result<usize, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        // Profiling aid: BENCH_WRAP="sink=valgrind --tool=callgrind" runs that role's children
        // under the given command.
        let wrap = std::env::var("BENCH_WRAP").ok().and_then(|w| {
            let (r, cmd) = w.split_once('=')?;
            (r == role).then(|| {
                cmd.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        });
        let mut cmd = match wrap.as_deref() {
            Some([prog, args @ ..]) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&exe);
                c
            }
            _ => Command::new(exe),
        };
        cmd.args(["--workload", &args.workload])
            .args(["--size", &args.size.to_string()])
            .args(["--count", &args.count().to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--heartbeat-ms", &args.heartbeat_ms.to_string()])
            .args(["--sender-on", &args.sender_on])
            .args(["--mode", &args.mode])
            .args(["--app-batch", &args.app_batch.to_string()])
            .args(["--role", role, "--name", name, "--nodes", nodes])
            .args(["--deadline-ms", &self.child_deadline_ms().to_string()]);
        if !peers.is_empty() {
            cmd.args(["--peers", &peers.join(",")]);
        }
        if let Some(t) = target {
            cmd.args(["--target", t]);
        }
        if let Some(dir) = &args.tls_dir {
            cmd.arg("--tls-dir").arg(dir);
        }
        if NODE_ROLES.contains(&role) {
            self.hand_over(&mut cmd, name, nodes)?;
        }
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {name}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let stdin = child.stdin.take();
        let idx = self.kids.len();
        let tx = self.lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send((idx, Some(l))).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send((idx, None));
        });
        self.kids.push(Kid {
            name: name.to_owned(),
            child,
            stdin,
        });
        Ok(idx)
    }

    /// Socket activation: the child gets node `name`'s listeners as fds 3 (peer) and 4
    /// (service), named in LISTEN_FDNAMES.
    fn hand_over(&self, cmd: &mut Command, name: &str, nodes: &str) -> Result<(), String> {
        let layout = parse_nodes(nodes)?;
        let node = layout
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("{name} is not in the layout"))?;
        let bound = self.ports.bound(node);
        let named = [("peer", bound.peer), ("service", bound.service)];
        let named: Vec<_> = named
            .into_iter()
            .filter_map(|(n, l)| l.map(|l| (n, l)))
            .collect();
        let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
        cmd.env("LISTEN_FDS", named.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("LISTEN_PID");
        let mappings = named
            .into_iter()
            .zip(3..)
            .map(|((_, l), child_fd)| FdMapping {
                parent_fd: l.into(),
                child_fd,
            })
            .collect();
        cmd.fd_mappings(mappings)
            .map(|_| ())
            .map_err(|e| format!("hand {name} its sockets: {e}"))
    }

    fn tell(&mut self, idx: usize, what: &str) {
        if let Some(stdin) = self.kids[idx].stdin.as_mut() {
            let _ = writeln!(stdin, "{what}");
            let _ = stdin.flush();
        }
    }

    /// The next line from any child, until the run's deadline. A child whose stdout closes
    /// before it reported is a failure.
    fn next(&mut self) -> Result<(usize, String), Outcome> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok((idx, Some(line))) => Ok((idx, line)),
            Ok((idx, None)) => {
                let status = self.status(idx);
                Err(Outcome::Failed(format!(
                    "{} exited early ({status})",
                    self.kids[idx].name
                )))
            }
            Err(_) => Err(Outcome::Timeout),
        }
    }

    fn status(&mut self, idx: usize) -> String {
        std::thread::sleep(Duration::from_millis(50));
        match self.kids[idx].child.try_wait() {
            Ok(Some(s)) => s.to_string(),
            _ => "still running".to_owned(),
        }
    }

    /// Wait until child `idx` listens for peers (so nodes that dial it do not start with a
    /// refused connection).
    fn wait_listening(&mut self, idx: usize) -> Result<(), Outcome> {
        loop {
            let (i, line) = self.next()?;
            if i == idx && line == "listening" {
                return Ok(());
            }
            eprintln!("bench: unexpected line from {}: {line}", self.kids[i].name);
        }
    }

    /// Wait until every child in `which` printed `ready`.
    fn wait_ready(&mut self, which: &[usize]) -> Result<(), Outcome> {
        let mut left: Vec<usize> = which.to_vec();
        while !left.is_empty() {
            let (idx, line) = self.next()?;
            if line == "ready" {
                left.retain(|i| *i != idx);
            } else if line != "listening" {
                eprintln!(
                    "bench: unexpected line from {}: {line}",
                    self.kids[idx].name
                );
            }
        }
        Ok(())
    }

    /// Ask every child to stop, give them a moment, then kill the ones still running.
    fn finish(mut self) {
        for i in 0..self.kids.len() {
            self.tell(i, "quit");
        }
        let until = Instant::now() + Duration::from_secs(3);
        for kid in &mut self.kids {
            drop(kid.stdin.take());
            loop {
                match kid.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("bench: {} did not exit; killing it", kid.name);
                        let _ = kid.child.kill();
                        let _ = kid.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

enum Outcome {
    Timeout,
    Failed(String),
}

/// `key=value` fields of a child's `result` line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// What a sink reported: events, first and last arrival (unix ns), errors, and whether it
/// stopped at its deadline.
#[derive(Default, Clone, Copy)]
struct SinkReport {
    received: u64,
    first_ns: u64,
    last_ns: u64,
    errors: u64,
    timeout: bool,
}

impl SinkReport {
    fn parse(line: &str) -> Self {
        SinkReport {
            received: field(line, "received"),
            first_ns: field(line, "first_ns"),
            last_ns: field(line, "last_ns"),
            errors: field(line, "errors"),
            timeout: field(line, "timeout") == 1,
        }
    }
}

/// Run a one-sender, many-sinks workload; returns each sink's report (missing ones default).
fn run_fanout(args: &Args, sinks: usize) -> (Vec<SinkReport>, bool, Option<String>) {
    let mut kids = Kids::new();
    let layout = star_layout(&mut kids.ports, sinks);
    let spec = node_spec(&layout);
    // The sender is the master for w3 (it reaches every subscriber directly) and a worker for
    // w1 (the receiver is the master).
    let (sender_name, sink_names): (String, Vec<String>) = if args.workload == "w1" {
        ("worker-1".to_owned(), vec!["master".to_owned()])
    } else {
        (
            "master".to_owned(),
            (1..=sinks).map(|i| format!("worker-{i}")).collect(),
        )
    };
    let mut reports = vec![SinkReport::default(); sink_names.len()];
    let mut failure = None;
    let mut timed_out = false;
    let result = (|| -> Result<(), Outcome> {
        let peers: Vec<&str> = sink_names.iter().map(String::as_str).collect();
        let target = (args.mode == "send").then(|| sink_names[0].as_str());
        // The master first: the workers dial it.
        let mut sink_idx = Vec::new();
        let sender;
        if sender_name == "master" {
            sender = kids
                .spawn(args, "source", &sender_name, &spec, &peers, target)
                .map_err(Outcome::Failed)?;
            kids.wait_listening(sender)?;
            for s in &sink_names {
                sink_idx.push(
                    kids.spawn(args, "sink", s, &spec, &[&sender_name], None)
                        .map_err(Outcome::Failed)?,
                );
            }
        } else {
            for s in &sink_names {
                let idx = kids
                    .spawn(args, "sink", s, &spec, &[&sender_name], None)
                    .map_err(Outcome::Failed)?;
                kids.wait_listening(idx)?;
                sink_idx.push(idx);
            }
            sender = kids
                .spawn(args, "source", &sender_name, &spec, &peers, target)
                .map_err(Outcome::Failed)?;
        }
        let mut all = sink_idx.clone();
        all.push(sender);
        kids.wait_ready(&all)?;
        kids.tell(sender, "go");
        let mut done = vec![false; sink_idx.len()];
        while done.iter().any(|d| !d) {
            let (idx, line) = kids.next()?;
            if idx == sender && line.starts_with("sent") {
                let n = field(&line, "n").max(1);
                eprintln!("bench: sender cpu {} ns/event", field(&line, "cpu_ns") / n);
                if field(&line, "timeout") == 1 {
                    timed_out = true;
                }
                for &s in &sink_idx {
                    kids.tell(s, "drain");
                }
            } else if let Some(pos) = sink_idx.iter().position(|&s| s == idx) {
                if line.starts_with("result") {
                    let n = field(&line, "received").max(1);
                    eprintln!(
                        "bench: {} cpu {} ns/event",
                        kids.kids[idx].name,
                        field(&line, "cpu_ns") / n
                    );
                    reports[pos] = SinkReport::parse(&line);
                    done[pos] = true;
                }
            } else {
                eprintln!(
                    "bench: unexpected line from {}: {line}",
                    kids.kids[idx].name
                );
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => {}
        Err(Outcome::Timeout) => timed_out = true,
        Err(Outcome::Failed(why)) => failure = Some(why),
    }
    kids.finish();
    timed_out |= reports.iter().any(|r| r.timeout);
    (reports, timed_out, failure)
}

fn parent_w1(args: &Args) -> ExitCode {
    let (reports, timed_out, failure) = run_fanout(args, 1);
    let r = reports[0];
    let secs = r.last_ns.saturating_sub(r.first_ns) as f64 / 1e9;
    let rate = if secs > 0.0 {
        r.received as f64 / secs
    } else {
        0.0
    };
    let mut line = format!(
        "workload=W1-{}B msgs_per_s={:.0} mb_per_s={:.1}",
        args.size,
        rate,
        rate * args.size as f64 / 1e6
    );
    // Short of the count: cut off by the deadline (with timeout=1), or lost.
    let lost = args.count().saturating_sub(r.received);
    if lost > 0 {
        line.push_str(&format!(" received={}", r.received));
    }
    if r.errors > 0 {
        line.push_str(&format!(" errors={}", r.errors));
    }
    if timed_out {
        line.push_str(" timeout=1");
    }
    if args.tls {
        line.push_str(" tls=1");
    }
    println!("{line}");
    verdict(failure, timed_out || lost > 0 || r.errors > 0)
}

fn parent_w3(args: &Args) -> ExitCode {
    let (reports, timed_out, failure) = run_fanout(args, args.subscribers.max(1));
    let delivered: u64 = reports.iter().map(|r| r.received).sum();
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let first = reports
        .iter()
        .filter(|r| r.received > 0)
        .map(|r| r.first_ns)
        .min()
        .unwrap_or(0);
    let last = reports.iter().map(|r| r.last_ns).max().unwrap_or(0);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    let rate = if secs > 0.0 {
        delivered as f64 / secs
    } else {
        0.0
    };
    let expected = args.count() * reports.len() as u64;
    let lost = expected.saturating_sub(delivered);
    let mut line = format!(
        "workload=W3-{}B msgs_per_s={rate:.0} delivered={delivered} lost={lost}",
        args.size
    );
    if errors > 0 {
        line.push_str(&format!(" errors={errors}"));
    }
    if timed_out {
        line.push_str(" timeout=1");
    }
    if args.tls {
        line.push_str(" tls=1");
    }
    println!("{line}");
    verdict(failure, timed_out || lost > 0 || errors > 0)
}

/// W2 (events) and W2CALL (calls): sequential round trips between two node processes.
fn parent_w2(args: &Args, roles: (&str, &str), label: &str) -> ExitCode {
    let mut kids = Kids::new();
    let layout = star_layout(&mut kids.ports, 1);
    let spec = node_spec(&layout);
    let mut report = None;
    let result = (|| -> Result<(), Outcome> {
        let ponger = kids
            .spawn(args, roles.0, "master", &spec, &["worker-1"], None)
            .map_err(Outcome::Failed)?;
        kids.wait_listening(ponger)?;
        let pinger = kids
            .spawn(
                args,
                roles.1,
                "worker-1",
                &spec,
                &["master"],
                Some("master"),
            )
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[ponger, pinger])?;
        kids.tell(pinger, "go");
        loop {
            let (idx, line) = kids.next()?;
            if idx == pinger && line.starts_with("result") {
                report = Some(line);
                return Ok(());
            }
            eprintln!(
                "bench: unexpected line from {}: {line}",
                kids.kids[idx].name
            );
        }
    })();
    report_w2(args, label, kids, result, report)
}

/// The result line of a ping-pong workload, from the pinger's `result` line.
fn report_w2(
    args: &Args,
    label: &str,
    kids: Kids,
    result: Result<(), Outcome>,
    report: Option<String>,
) -> ExitCode {
    let mut failure = None;
    let mut timed_out = false;
    match result {
        Ok(()) => {}
        Err(Outcome::Timeout) => timed_out = true,
        Err(Outcome::Failed(why)) => failure = Some(why),
    }
    kids.finish();
    let r = report.unwrap_or_default();
    timed_out |= field(&r, "timeout") == 1;
    let us = |k: &str| field(&r, k) as f64 / 1000.0;
    let mut line = format!(
        "workload={label}-{}B p50_us={:.1} p99_us={:.1} p999_us={:.1}",
        args.size,
        us("p50_ns"),
        us("p99_ns"),
        us("p999_ns")
    );
    let rounds = field(&r, "rounds");
    if rounds < args.count() {
        line.push_str(&format!(" rounds={rounds}"));
    }
    if timed_out {
        line.push_str(" timeout=1");
    }
    if args.tls {
        line.push_str(" tls=1");
    }
    println!("{line}");
    verdict(failure, timed_out || rounds < args.count())
}

fn verdict(failure: Option<String>, bad: bool) -> ExitCode {
    match failure {
        Some(why) => {
            eprintln!("bench: failed: {why}");
            ExitCode::FAILURE
        }
        None if bad => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    }
}

fn idle(args: &Args) -> ExitCode {
    let mut ports = Ports::new();
    let layout = vec![("master".to_owned(), Role::Master, ports.reserve())];
    let Ok(nodes) = parse_nodes(&node_spec(&layout)) else {
        return ExitCode::FAILURE;
    };
    let bound = ports.bound(&nodes[0]);
    let config = Arc::new(bench_config(
        nodes,
        args.heartbeat_ms,
        args.tls_dir.as_deref(),
    ));
    let system = actix_rt::System::new();
    let rss = system.block_on(async move {
        let node = match Node::start_bound(config, "master", bound).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("bench: {e}");
                return None;
            }
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib();
        node.shutdown().await;
        rss
    });
    match rss {
        Some(kib) => {
            println!("workload=IDLE rss_kib={kib}");
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ------------------------------------------------------------------------------------------
// Children.

/// Commands from the parent, read on a thread; the process exits when stdin closes.
fn parent_commands() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.blocking_send(l).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        // The parent is gone (or closed our stdin): nobody will read our results.
        std::process::exit(3);
    });
    rx
}

/// Last resort: a child never outlives its deadline by more than a few seconds.
fn watchdog(deadline_ms: u64) {
    std::thread::spawn(move || {
        let hard = deadline_ms + CHILD_REPORT_MARGIN.as_millis() as u64;
        let wait = hard.saturating_sub(unix_ms());
        std::thread::sleep(Duration::from_millis(wait));
        eprintln!("bench child: hard deadline passed; exiting");
        std::process::exit(4);
    });
}

/// CPU time this process has used so far, all threads (ns; 0 if /proc cannot tell).
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn child_main(role: &str, args: &Args) -> ExitCode {
    // First, before any thread starts: it clears the LISTEN_* variables.
    let inherited = match Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("bench child: {e}");
            return ExitCode::from(2);
        }
    };
    let deadline_ms = args.deadline_ms.unwrap_or_else(|| unix_ms() + 40_000);
    watchdog(deadline_ms);
    let commands = parent_commands();
    let nodes = match args.nodes.as_deref().map(parse_nodes) {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("bench child: {e}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("bench child: --nodes is required");
            return ExitCode::from(2);
        }
    };
    let config = Arc::new(bench_config(
        nodes,
        args.heartbeat_ms,
        args.tls_dir.as_deref(),
    ));
    let name = args.name.clone().unwrap_or_default();
    let bound = match inherited.into_bound(std::slice::from_ref(&name)) {
        Ok(mut b) => b.remove(&name).unwrap_or_default(),
        Err(e) => {
            eprintln!("bench child: {e}");
            return ExitCode::from(2);
        }
    };
    let peers: Vec<String> = args
        .peers
        .as_deref()
        .map(|p| p.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let ctx = ChildCtx {
        args: args.clone(),
        config,
        name,
        peers,
        deadline_ms,
        commands,
        bound: std::cell::Cell::new(Some(bound)),
    };
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        match role {
            "sink" => sink(ctx).await,
            "source" => source(ctx).await,
            "ponger" => ponger(ctx).await,
            "pinger" => pinger(ctx).await,
            "callee" => callee(ctx).await,
            "caller" => pinger(ctx).await,
            "appnode" => appnode(ctx).await,
            "appsink" => appsink(ctx).await,
            "appsource" => appsource(ctx).await,
            "appponger" => appponger(ctx).await,
            "apppinger" => apppinger(ctx).await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench child: {e}");
            ExitCode::FAILURE
        }
    }
}

struct ChildCtx {
    args: Args,
    config: Arc<Config>,
    name: String,
    peers: Vec<String>,
    deadline_ms: u64,
    commands: mpsc::Receiver<String>,
    /// The node's sockets, handed over by the parent; taken by `start`.
    bound: std::cell::Cell<Option<Bound>>,
}

impl ChildCtx {
    async fn start(&self) -> Result<NodeHandle, String> {
        let bound = self.bound.take().unwrap_or_default();
        let node = Node::start_bound(self.config.clone(), &self.name, bound)
            .await
            .map_err(|e| e.to_string())?;
        say("listening");
        Ok(node)
    }

    async fn wait_peers(&self, node: &NodeHandle) -> Result<(), String> {
        let peers: Vec<&str> = self.peers.iter().map(String::as_str).collect();
        testing::wait_up(node, &peers, Duration::from_secs(20)).await
    }

    fn until_deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.saturating_sub(unix_ms()))
    }

    /// Wait for `what` from the parent (other lines are ignored), or the deadline.
    async fn expect(&mut self, what: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.until_deadline();
        loop {
            match tokio::time::timeout_at(deadline, self.commands.recv()).await {
                Ok(Some(l)) if l == what => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => return Err("parent gone".into()),
                Err(_) => return Err(format!("no {what:?} from the parent before the deadline")),
            }
        }
    }

    /// After the result: stay up (links open) until the parent says quit, then shut down.
    async fn linger(mut self, node: NodeHandle) {
        let _ = self.expect("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(1), node.shutdown()).await;
    }
}

/// Counters a sink actor shares with its process's main task.
#[derive(Default)]
struct SinkCounters {
    received: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    errors: AtomicU64,
}

/// The receiving actor: counts `Delivery<Bench>`, checks order and size.
struct Sink {
    node: NodeHandle,
    counters: Arc<SinkCounters>,
    expected: u64,
    size: usize,
    next_seq: u64,
}

impl Actor for Sink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SINK_MAILBOX);
        self.node.subscribe::<Bench>(ctx.address().recipient());
    }
}

impl Handler<Delivery<Bench>> for Sink {
    type Result = ();

    fn handle(&mut self, msg: Delivery<Bench>, _: &mut Context<Self>) {
        let n = self.counters.received.load(Ordering::Relaxed) + 1;
        if n == 1 {
            self.counters.first_ns.store(unix_ns(), Ordering::Relaxed);
        }
        if msg.event.seq != self.next_seq || msg.event.data.len() != self.size {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.next_seq = msg.event.seq + 1;
        if n == self.expected || n % 256 == 0 {
            self.counters.last_ns.store(unix_ns(), Ordering::Relaxed);
        }
        self.counters.received.store(n, Ordering::Release);
    }
}

/// Answers once every message before it was handled: the actor has started (and subscribed).
#[derive(Message)]
#[rtype(result = "()")]
struct Started;

impl Handler<Started> for Sink {
    type Result = ();
    fn handle(&mut self, _: Started, _: &mut Context<Self>) {}
}

async fn sink(mut cx: ChildCtx) -> Result<(), String> {
    let node = cx.start().await?;
    let counters = Arc::new(SinkCounters::default());
    let expected = cx.args.count();
    let size = cx.args.size;
    let sup = node
        .supervise("sink", {
            let (node, counters) = (node.clone(), counters.clone());
            move || Sink {
                node: node.clone(),
                counters: counters.clone(),
                expected,
                size,
                next_seq: 0,
            }
        })
        .await;
    let addr = sup.addr().ok_or("the sink actor did not start")?;
    addr.send(Started)
        .await
        .map_err(|e| format!("sink actor: {e}"))?;
    cx.wait_peers(&node).await?;
    say("ready");
    let cpu_at_ready = cpu_ns();
    let deadline = tokio::time::Instant::now() + cx.until_deadline();
    let mut draining: Option<(u64, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let timeout = loop {
        tokio::select! {
            _ = tick.tick() => {}
            cmd = cx.commands.recv() => match cmd.as_deref() {
                Some("drain") => draining = Some((counters.received.load(Ordering::Acquire), tokio::time::Instant::now())),
                Some(_) => {}
                None => return Err("parent gone".into()),
            },
        }
        let now = tokio::time::Instant::now();
        let received = counters.received.load(Ordering::Acquire);
        if received >= expected {
            break false;
        }
        if let Some((seen, since)) = draining.as_mut() {
            if received != *seen {
                (*seen, *since) = (received, now);
            } else if now.duration_since(*since) >= STRAGGLER_WAIT {
                break false;
            }
        }
        if now >= deadline {
            break true;
        }
    };
    let received = counters.received.load(Ordering::Acquire);
    say(&format!(
        "result received={received} first_ns={} last_ns={} errors={} timeout={} cpu_ns={}",
        counters.first_ns.load(Ordering::Relaxed),
        counters.last_ns.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
        u8::from(timeout),
        cpu_ns().saturating_sub(cpu_at_ready)
    ));
    cx.linger(node).await;
    Ok(())
}

async fn source(mut cx: ChildCtx) -> Result<(), String> {
    let node = cx.start().await?;
    cx.wait_peers(&node).await?;
    say("ready");
    cx.expect("go").await?;
    let cpu_at_go = cpu_ns();
    let count = cx.args.count();
    let size = cx.args.size;
    let target = cx.args.target.clone();
    let stop_at = tokio::time::Instant::now() + cx.until_deadline();
    let run = {
        let node = node.clone();
        async move {
            let start = unix_ns();
            let mut ev = Bench {
                seq: 0,
                data: vec![0xa5; size],
            };
            let mut sent = 0u64;
            let mut timeout = false;
            for seq in 0..count {
                ev.seq = seq;
                let r = match &target {
                    Some(t) => node.send_to_wait(t.as_str(), &ev).await,
                    None => node.publish_wait(&ev).await,
                };
                if let Err(e) = r {
                    return Err(format!("publish: {e}"));
                }
                sent += 1;
                if seq % 4096 == 0 && tokio::time::Instant::now() >= stop_at {
                    timeout = true;
                    break;
                }
            }
            Ok((sent, start, unix_ns(), timeout))
        }
    };
    let result = if cx.args.sender_on == "main" {
        run.await
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        node.arbiter().spawn(async move {
            let _ = tx.send(run.await);
        });
        rx.await.map_err(|_| "the sending task died".to_owned())?
    };
    let (sent, start, end, timeout) = result?;
    say(&format!(
        "sent n={sent} start_ns={start} end_ns={end} timeout={} cpu_ns={}",
        u8::from(timeout),
        cpu_ns().saturating_sub(cpu_at_go)
    ));
    cx.linger(node).await;
    Ok(())
}

/// W2's echo: sends every event back to the node it came from.
struct Echo {
    node: NodeHandle,
}

impl Actor for Echo {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SINK_MAILBOX);
        self.node.subscribe::<Bench>(ctx.address().recipient());
    }
}

impl Handler<Delivery<Bench>> for Echo {
    type Result = ();

    fn handle(&mut self, msg: Delivery<Bench>, ctx: &mut Context<Self>) {
        match self.node.send_to(&msg.from, &msg.event) {
            Ok(()) => {}
            Err(nodecloud::node::PublishError::Full(_)) => {
                let node = self.node.clone();
                ctx.wait(
                    async move {
                        if let Err(e) = node.send_to_wait(&msg.from, &msg.event).await {
                            tracing::warn!("echo: {e}");
                        }
                    }
                    .into_actor(self),
                );
            }
            Err(e) => tracing::warn!("echo: {e}"),
        }
    }
}

impl Handler<Started> for Echo {
    type Result = ();
    fn handle(&mut self, _: Started, _: &mut Context<Self>) {}
}

/// W2's pinger side: hands each echoed sequence number to the driving task.
struct Catcher {
    node: NodeHandle,
    tx: mpsc::Sender<u64>,
}

impl Actor for Catcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SINK_MAILBOX);
        self.node.subscribe::<Bench>(ctx.address().recipient());
    }
}

impl Handler<Delivery<Bench>> for Catcher {
    type Result = ();

    fn handle(&mut self, msg: Delivery<Bench>, _: &mut Context<Self>) {
        // One event is in flight at a time: the channel is never full.
        let _ = self.tx.try_send(msg.event.seq);
    }
}

impl Handler<Started> for Catcher {
    type Result = ();
    fn handle(&mut self, _: Started, _: &mut Context<Self>) {}
}

async fn ponger(cx: ChildCtx) -> Result<(), String> {
    let node = cx.start().await?;
    let sup = node
        .supervise("echo", {
            let node = node.clone();
            move || Echo { node: node.clone() }
        })
        .await;
    let addr = sup.addr().ok_or("the echo actor did not start")?;
    addr.send(Started)
        .await
        .map_err(|e| format!("echo actor: {e}"))?;
    cx.wait_peers(&node).await?;
    say("ready");
    cx.linger(node).await;
    Ok(())
}

async fn pinger(mut cx: ChildCtx) -> Result<(), String> {
    let node = cx.start().await?;
    let (tx, mut rx) = mpsc::channel(16);
    let sup = node
        .supervise("catcher", {
            let node = node.clone();
            move || Catcher {
                node: node.clone(),
                tx: tx.clone(),
            }
        })
        .await;
    let addr = sup.addr().ok_or("the catcher actor did not start")?;
    addr.send(Started)
        .await
        .map_err(|e| format!("catcher actor: {e}"))?;
    cx.wait_peers(&node).await?;
    say("ready");
    cx.expect("go").await?;
    let target = cx.args.target.clone().ok_or("--target is required")?;
    let (warmup, count, size) = (cx.args.warmup, cx.args.count(), cx.args.size);
    let calls = cx.args.role.as_deref() == Some("caller");
    let stop_at = tokio::time::Instant::now() + cx.until_deadline();
    // The driving loop runs on the node's arbiter, with the sessions and the catcher.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let driver = node.clone();
    node.arbiter().spawn(async move {
        let mut ev = Bench {
            seq: 0,
            data: vec![0xa5; size],
        };
        let mut rtts: Vec<u64> = Vec::with_capacity(count as usize);
        let mut outcome: Result<bool, String> = Ok(false);
        for seq in 0..warmup + count {
            ev.seq = seq;
            let t0 = Instant::now();
            if calls {
                match driver.call(target.as_str(), &ev).await {
                    Ok(back) if back.seq == seq => {}
                    Ok(back) => {
                        outcome = Err(format!("reply {} to call {seq}", back.seq));
                        break;
                    }
                    Err(e) => {
                        outcome = Err(format!("call: {e}"));
                        break;
                    }
                }
                if seq >= warmup {
                    rtts.push(t0.elapsed().as_nanos() as u64);
                }
                if tokio::time::Instant::now() >= stop_at {
                    outcome = Ok(true);
                    break;
                }
                continue;
            }
            if let Err(e) = driver.send_to_wait(target.as_str(), &ev).await {
                outcome = Err(format!("send_to: {e}"));
                break;
            }
            match tokio::time::timeout_at(stop_at, rx.recv()).await {
                Ok(Some(back)) if back == seq => {}
                Ok(Some(back)) => {
                    outcome = Err(format!("echo of {back} while waiting for {seq}"));
                    break;
                }
                Ok(None) => {
                    outcome = Err("catcher gone".into());
                    break;
                }
                Err(_) => {
                    outcome = Ok(true);
                    break;
                }
            }
            if seq >= warmup {
                rtts.push(t0.elapsed().as_nanos() as u64);
            }
        }
        let _ = done_tx.send((rtts, outcome));
    });
    let (rtts, outcome) = done_rx
        .await
        .map_err(|_| "the driving task died".to_owned())?;
    let timeout = outcome.clone().unwrap_or(false);
    say_rtts(rtts, timeout);
    outcome?;
    cx.linger(node).await;
    Ok(())
}

/// The pinger's `result` line: how many round trips, and their percentiles (the sample at
/// index ⌊n·p⌋ of the sorted round trips).
fn say_rtts(mut rtts: Vec<u64>, timeout: bool) {
    rtts.sort_unstable();
    let pct = |p: f64| -> u64 {
        if rtts.is_empty() {
            return 0;
        }
        let i = ((rtts.len() as f64 * p) as usize).min(rtts.len() - 1);
        rtts[i]
    };
    say(&format!(
        "result rounds={} p50_ns={} p99_ns={} p999_ns={} timeout={}",
        rtts.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        u8::from(timeout)
    ));
}

// ------------------------------------------------------------------------------------------
// W2CALL: the callee serves `bench.echo` with an actor.

/// Answers every call with its request.
struct EchoCalls;

impl Actor for EchoCalls {
    type Context = Context<Self>;
}

impl Handler<Invocation<Bench>> for EchoCalls {
    type Result = Result<Bench, String>;
    fn handle(&mut self, call: Invocation<Bench>, _: &mut Context<Self>) -> Self::Result {
        Ok(call.request)
    }
}

async fn callee(cx: ChildCtx) -> Result<(), String> {
    let node = cx.start().await?;
    let echo = node.supervise("echo", || EchoCalls).await;
    let addr = echo.addr().ok_or("the echo actor did not start")?;
    node.implement::<Bench>(addr.recipient());
    cx.wait_peers(&node).await?;
    say("ready");
    cx.linger(node).await;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// W1APP: application → its node → another node → that node's application. Four processes:
// two nodes with service listeners, and one application attached to each.

fn parent_w1app(args: &Args) -> ExitCode {
    let mut kids = Kids::new();
    let layout = star_layout(&mut kids.ports, 1);
    let services: Vec<SocketAddr> = layout.iter().map(|_| kids.ports.reserve()).collect();
    let spec = node_spec(&layout)
        .split(',')
        .zip(&services)
        .map(|(n, s)| format!("{n}/{s}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut report = SinkReport::default();
    let mut timed_out = false;
    let result = (|| -> Result<(), Outcome> {
        let master = kids
            .spawn(args, "appnode", "master", &spec, &["worker-1"], None)
            .map_err(Outcome::Failed)?;
        kids.wait_listening(master)?;
        let worker = kids
            .spawn(args, "appnode", "worker-1", &spec, &["master"], None)
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[master, worker])?;
        let sink = kids
            .spawn(args, "appsink", "master", &spec, &[], None)
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[sink])?;
        let source = kids
            .spawn(args, "appsource", "worker-1", &spec, &[], None)
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[source])?;
        kids.tell(source, "go");
        loop {
            let (idx, line) = kids.next()?;
            if idx == source && line.starts_with("sent") {
                timed_out |= field(&line, "timeout") == 1;
                kids.tell(sink, "drain");
            } else if idx == sink && line.starts_with("result") {
                report = SinkReport::parse(&line);
                return Ok(());
            } else {
                eprintln!(
                    "bench: unexpected line from {}: {line}",
                    kids.kids[idx].name
                );
            }
        }
    })();
    let mut failure = None;
    match result {
        Ok(()) => {}
        Err(Outcome::Timeout) => timed_out = true,
        Err(Outcome::Failed(why)) => failure = Some(why),
    }
    kids.finish();
    timed_out |= report.timeout;
    let secs = report.last_ns.saturating_sub(report.first_ns) as f64 / 1e9;
    let rate = if secs > 0.0 {
        report.received as f64 / secs
    } else {
        0.0
    };
    let mut line = format!(
        "workload=W1APP-{}B msgs_per_s={rate:.0} mb_per_s={:.1}",
        args.size,
        rate * args.size as f64 / 1e6
    );
    if report.received < args.count() {
        line.push_str(&format!(" received={}", report.received));
    }
    if report.errors > 0 {
        line.push_str(&format!(" errors={}", report.errors));
    }
    if timed_out {
        line.push_str(" timeout=1");
    }
    if args.tls {
        line.push_str(" tls=1");
    }
    println!("{line}");
    verdict(
        failure,
        timed_out || report.received < args.count() || report.errors > 0,
    )
}

async fn appnode(cx: ChildCtx) -> Result<(), String> {
    let node = cx.start().await?;
    cx.wait_peers(&node).await?;
    say("ready");
    cx.linger(node).await;
    Ok(())
}

async fn attach(cx: &ChildCtx) -> Result<Client, String> {
    Client::connect_via(&cx.config, &cx.name, "bench-app")
        .await
        .map_err(|e| e.to_string())
}

async fn appsink(mut cx: ChildCtx) -> Result<(), String> {
    let mut app = attach(&cx).await?;
    // Lossless: the node delivers at the sink's pace (the default would close a sink that
    // falls a queue behind as a slow consumer).
    app.set_overflow(Overflow::Wait)
        .await
        .map_err(|e| e.to_string())?;
    app.subscribe(Bench::TOPIC)
        .await
        .map_err(|e| e.to_string())?;
    app.sync().await.map_err(|e| e.to_string())?;
    say("ready");
    let expected = cx.args.count();
    let (mut received, mut first_ns, mut last_ns, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let deadline = tokio::time::Instant::now() + cx.until_deadline();
    let mut draining = false;
    // What the client has queued is taken `--app-batch` items at a time (1: one by one).
    let batch = cx.args.app_batch.max(1);
    let mut items = Vec::with_capacity(batch);
    let timeout = loop {
        let wait = if draining {
            STRAGGLER_WAIT
        } else {
            Duration::from_millis(100)
        };
        tokio::select! {
            n = app.next_many(&mut items, batch) => {
                if n == 0 {
                    return Err("the node closed the connection".into());
                }
                let mut done = false;
                for item in items.drain(..) {
                    match item {
                        Incoming::Event { payload, .. } => {
                            received += 1;
                            if received == 1 {
                                first_ns = unix_ns();
                            }
                            match nodecloud::wire::decode_payload::<Bench>(&payload) {
                                Ok(b) if b.seq == received - 1 && b.data.len() == cx.args.size => {}
                                _ => errors += 1,
                            }
                            if received == expected || received % 256 == 0 {
                                last_ns = unix_ns();
                            }
                            if received >= expected {
                                done = true;
                                break;
                            }
                        }
                        Incoming::Closed(why) => return Err(why),
                        _ => {}
                    }
                }
                if done {
                    break false;
                }
            },
            cmd = cx.commands.recv() => match cmd.as_deref() {
                Some("drain") => draining = true,
                Some(_) => {}
                None => return Err("parent gone".into()),
            },
            () = tokio::time::sleep(wait) => {
                if draining {
                    break false;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break true;
        }
    };
    say(&format!(
        "result received={received} first_ns={first_ns} last_ns={last_ns} errors={errors} timeout={}",
        u8::from(timeout)
    ));
    let _ = cx.expect("quit").await;
    Ok(())
}

async fn appsource(mut cx: ChildCtx) -> Result<(), String> {
    let app = attach(&cx).await?;
    say("ready");
    cx.expect("go").await?;
    let stop_at = tokio::time::Instant::now() + cx.until_deadline();
    let mut ev = Bench {
        seq: 0,
        data: vec![0xa5; cx.args.size],
    };
    let (mut sent, mut timeout) = (0u64, false);
    let batch = cx.args.app_batch.max(1);
    let mut payloads = Vec::with_capacity(batch);
    for seq in 0..cx.args.count() {
        ev.seq = seq;
        let payload = nodecloud::wire::encode_payload(&ev).map_err(|e| e.to_string())?;
        if batch == 1 {
            app.publish_raw(Bench::TOPIC, payload, None)
                .await
                .map_err(|e| e.to_string())?;
        } else {
            payloads.push(payload);
            if payloads.len() == batch || seq + 1 == cx.args.count() {
                app.publish_batch(Bench::TOPIC, std::mem::take(&mut payloads), None)
                    .await
                    .map_err(|e| e.to_string())?;
                payloads.reserve(batch);
            }
        }
        sent += 1;
        if seq % 4096 == 0 && tokio::time::Instant::now() >= stop_at {
            if !payloads.is_empty() {
                app.publish_batch(Bench::TOPIC, std::mem::take(&mut payloads), None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            timeout = true;
            break;
        }
    }
    app.sync().await.map_err(|e| e.to_string())?;
    say(&format!("sent n={sent} timeout={}", u8::from(timeout)));
    let _ = cx.expect("quit").await;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// W2APP: an application on worker-1 pings an application on the master, which answers with a
// pong event. Four processes, as W1APP.

const PING_TOPIC: &str = "bench.ping";
const PONG_TOPIC: &str = "bench.pong";

fn parent_w2app(args: &Args) -> ExitCode {
    let mut kids = Kids::new();
    let layout = star_layout(&mut kids.ports, 1);
    let services: Vec<SocketAddr> = layout.iter().map(|_| kids.ports.reserve()).collect();
    let spec = node_spec(&layout)
        .split(',')
        .zip(&services)
        .map(|(n, s)| format!("{n}/{s}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut report = None;
    let result = (|| -> Result<(), Outcome> {
        let master = kids
            .spawn(args, "appnode", "master", &spec, &["worker-1"], None)
            .map_err(Outcome::Failed)?;
        kids.wait_listening(master)?;
        let worker = kids
            .spawn(args, "appnode", "worker-1", &spec, &["master"], None)
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[master, worker])?;
        let ponger = kids
            .spawn(args, "appponger", "master", &spec, &[], None)
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[ponger])?;
        let pinger = kids
            .spawn(args, "apppinger", "worker-1", &spec, &[], Some("master"))
            .map_err(Outcome::Failed)?;
        kids.wait_ready(&[pinger])?;
        kids.tell(pinger, "go");
        loop {
            let (idx, line) = kids.next()?;
            if idx == pinger && line.starts_with("result") {
                report = Some(line);
                return Ok(());
            }
            eprintln!(
                "bench: unexpected line from {}: {line}",
                kids.kids[idx].name
            );
        }
    })();
    report_w2(args, "W2APP", kids, result, report)
}

/// Answers every ping with a pong carrying the ping's payload, to the node it came from.
async fn appponger(mut cx: ChildCtx) -> Result<(), String> {
    let mut app = attach(&cx).await?;
    app.subscribe(PING_TOPIC).await.map_err(|e| e.to_string())?;
    app.sync().await.map_err(|e| e.to_string())?;
    say("ready");
    loop {
        tokio::select! {
            item = app.next() => match item {
                Some(Incoming::Event { from, payload, .. }) => {
                    app.publish_raw(PONG_TOPIC, payload, Some(&from))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Some(Incoming::Closed(why)) => return Err(why),
                Some(Incoming::Refused { op, code, message }) => {
                    return Err(format!("{op} refused: {code}: {message}"))
                }
                Some(_) => {}
                None => return Err("the node closed the connection".into()),
            },
            cmd = cx.commands.recv() => match cmd.as_deref() {
                Some("quit") | None => return Ok(()),
                Some(_) => {}
            },
        }
    }
}

/// Pings `--target`'s application `--warmup` + `--count` times, one at a time, and reports
/// the round trips' percentiles.
async fn apppinger(mut cx: ChildCtx) -> Result<(), String> {
    let mut app = attach(&cx).await?;
    app.subscribe(PONG_TOPIC).await.map_err(|e| e.to_string())?;
    app.sync().await.map_err(|e| e.to_string())?;
    say("ready");
    cx.expect("go").await?;
    let target = cx.args.target.clone().ok_or("--target is required")?;
    let (warmup, count) = (cx.args.warmup, cx.args.count());
    let stop_at = tokio::time::Instant::now() + cx.until_deadline();
    let mut ev = Bench {
        seq: 0,
        data: vec![0xa5; cx.args.size],
    };
    let mut rtts: Vec<u64> = Vec::with_capacity(count as usize);
    let mut timeout = false;
    'rounds: for seq in 0..warmup + count {
        ev.seq = seq;
        let payload = nodecloud::wire::encode_payload(&ev).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        app.publish_raw(PING_TOPIC, payload, Some(&target))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout_at(stop_at, app.next()).await {
                Ok(Some(Incoming::Event { payload, .. })) => {
                    match nodecloud::wire::decode_payload::<Bench>(&payload) {
                        Ok(b) if b.seq == seq => break,
                        Ok(b) => return Err(format!("pong {} while waiting for {seq}", b.seq)),
                        Err(e) => return Err(format!("pong does not decode: {e}")),
                    }
                }
                Ok(Some(Incoming::Closed(why))) => return Err(why),
                Ok(Some(Incoming::Refused { op, code, message })) => {
                    return Err(format!("{op} refused: {code}: {message}"))
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the node closed the connection".into()),
                Err(_) => {
                    timeout = true;
                    break 'rounds;
                }
            }
        }
        if seq >= warmup {
            rtts.push(t0.elapsed().as_nanos() as u64);
        }
    }
    say_rtts(rtts, timeout);
    let _ = cx.expect("quit").await;
    Ok(())
}
