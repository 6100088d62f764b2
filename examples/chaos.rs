//! What flapping links do to events: a star of separate node processes, a publisher
//! application on one worker and a subscriber application on another, and N cuts of one
//! worker's link while events flow.
//!
//! ```text
//! cargo run --release --example chaos -- --flaps 5 --events 5000
//! cargo run --release --example chaos -- --flaps 1000 --events 1000000 --rate 1000
//! cargo run --release --example chaos -- --flaps 0 --loss 0.05 --delay-ms 20 --events 20000
//! ```
//!
//! - **Network.** As root (with `ip netns`): one namespace per node on a private bridge
//!   (`tests/common/netns.rs`), a cut is the worker's bridge port going down. Otherwise, or
//!   with `--loopback`: every node on 127.0.0.1, each worker dialling the master through a
//!   forwarder in this process (`nodecloud::testing::forwarder`), a cut is a blackhole of
//!   that forwarder. Either way the sockets stay open across a cut, as across a pulled cable.
//! - **Loss and delay** (`--loss P --delay-ms D`): every worker's link to the master goes
//!   through a forwarder that adds D ms each way and stalls a chunk 200 ms with probability P,
//!   which is how a lost segment shows through TCP. In a namespace the forwarder is this
//!   program again (hidden `--forward`), started inside the worker's namespace.
//! - **Nodes** are this program again (hidden `--run-node`), running the `nodecloud` command
//!   line's own code: `nodecloud --config FILE --node NAME`.
//! - **Traffic.** The publisher (on worker-1) publishes `--events` events at `--rate` per
//!   second, alternately to every node and to worker-2 alone, each carrying its origin and
//!   sequence number; the subscriber (on worker-2) counts what arrives.
//! - **Flaps.** `--flaps` cuts of `--link`, each lasting a random `--min-cut-ms`..
//!   `--max-cut-ms` and followed by a random `--min-gap-ms`..`--max-gap-ms` with the link up.
//!
//! Prints one line and exits 0 (the figures are measured, not judged):
//!
//! ```text
//! flaps=5 sent=5000 received=4213 lost=787 duplicated=0 reordered=0 downs=4 refused=0 ...
//! ```
//!
//! `lost` is what the publisher sent and the subscriber never received; `reordered` counts
//! arrivals with a sequence lower than one already received; `downs` counts `membership: …
//! down` lines in every node's log; `refused` the refusals the publisher received.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use command_fds::{CommandFdExt, FdMapping};
use nodecloud::service::{Client, Endpoint, Incoming};
use nodecloud::testing::forwarder::{Faults, ForwarderHandle};
use serde::{Deserialize, Serialize};

#[path = "../tests/common/netns.rs"]
mod netns;

use netns::{Lab, Proc};

const CLUSTER: &str = "chaos";
const SECRET: &str = "chaos-bench-secret-0123456789";
const TOPIC: &str = "chaos.event";
/// The peer port of every node in a namespace (each is its own machine).
const PORT: u16 = 7601;
/// Where a forwarder inside a worker's namespace listens (its loopback).
const FORWARD_PORT: u16 = 7700;
/// Starting the cluster and attaching the applications.
const SETUP_WAIT: Duration = Duration::from_secs(30);
/// After the last event and the last flap, how long the figures may stay still before the
/// run ends (at least; a failure timeout more is added).
const QUIET: Duration = Duration::from_secs(2);
/// The longest the drain after traffic may take.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone)]
#[command(about = "nodecloud chaos benchmark: events across flapping links")]
struct Args {
    /// Cuts of the link.
    #[arg(long, default_value_t = 5)]
    flaps: u32,
    /// Events to publish.
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// Events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 200)]
    min_cut_ms: u64,
    #[arg(long, default_value_t = 2000)]
    max_cut_ms: u64,
    /// The link stays up this long at least between two cuts.
    #[arg(long, default_value_t = 200)]
    min_gap_ms: u64,
    #[arg(long, default_value_t = 1000)]
    max_gap_ms: u64,
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 6)]
    threshold: u32,
    /// Probability (0..=1) that a chunk stalls as a lost segment would.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Added delay each way, ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The worker whose link is cut: worker-1 (the publisher's) or worker-2 (the subscriber's).
    #[arg(long, default_value = "worker-2")]
    link: String,
    /// Seed of the random cut lengths and stalls (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Loopback and forwarders even when namespaces are available.
    #[arg(long)]
    loopback: bool,

    /// (internal) Run node NAME of config FILE, as `nodecloud --config FILE --node NAME`.
    #[arg(long, hide = true, num_args = 2, value_names = ["FILE", "NAME"])]
    run_node: Option<Vec<String>>,
    /// (internal) Forward LISTEN to TO with --loss and --delay-ms until killed.
    #[arg(long, hide = true, num_args = 2, value_names = ["LISTEN", "TO"])]
    forward: Option<Vec<String>>,
}

/// The event payload: who published it and its place in the publisher's sequence.
#[derive(Serialize, Deserialize, Debug)]
struct Stamp {
    origin: String,
    seq: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(v) = &args.run_node {
        let argv = ["nodecloud", "--config", &v[0], "--node", &v[1]];
        return nodecloud::cli::run(<nodecloud::cli::Cli as clap::Parser>::parse_from(argv));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(v) = &args.forward {
        return runtime.block_on(forward_forever(&v[0], &v[1], &args));
    }
    match runtime.block_on(run(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

fn faults(args: &Args, seed: u64) -> Faults {
    Faults {
        delay: Duration::from_millis(args.delay_ms),
        stall_probability: args.loss,
        seed,
        ..Faults::default()
    }
}

/// `--forward`: a forwarder process inside a namespace; the lab kills it.
async fn forward_forever(listen: &str, to: &str, args: &Args) -> ExitCode {
    let (Ok(listen), Ok(to)) = (listen.parse(), to.parse()) else {
        eprintln!("chaos --forward: expected two socket addresses");
        return ExitCode::FAILURE;
    };
    let seed = args.seed.unwrap_or(1);
    match ForwarderHandle::bind(listen, to, faults(args, seed)).await {
        Ok(_fwd) => {
            eprintln!("forwarding {listen} to {to}");
            std::future::pending::<()>().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chaos --forward: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The cluster under test, in whichever network.
struct Cluster {
    /// The nodes, in the order of NAMES.
    procs: Vec<Proc>,
    /// Forwarder processes inside namespaces.
    _helpers: Vec<Proc>,
    /// How a cut is made.
    cutter: Cutter,
    /// Each worker's forwarder in loopback mode (kept alive here).
    _forwarders: Vec<ForwarderHandle>,
    mode: &'static str,
}

enum Cutter {
    Lab { lab: Lab, index: usize },
    Blackhole(usize),
}

impl Cluster {
    fn cut(&self, on: bool) -> Result<(), String> {
        match &self.cutter {
            Cutter::Lab { lab, index } if on => lab.cut(*index),
            Cutter::Lab { lab, index } => lab.restore(*index),
            Cutter::Blackhole(i) => {
                self._forwarders[*i].blackhole(on);
                Ok(())
            }
        }
    }

    fn downs(&mut self) -> usize {
        self.procs
            .iter_mut()
            .map(|p| {
                p.drain();
                p.seen
                    .iter()
                    .filter(|l| l.contains("membership:") && l.contains(" down"))
                    .count()
            })
            .sum()
    }
}

const NAMES: [&str; 3] = ["master", "worker-1", "worker-2"];

/// One node's `[[nodes]]` entry.
fn node_entry(name: &str, listen: &str, advertise: Option<&str>, dir: &Path) -> String {
    let role = if name == "master" { "master" } else { "worker" };
    let mut s =
        format!("\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"{listen}\"\n");
    if let Some(a) = advertise {
        s.push_str(&format!("advertise = \"{a}\"\n"));
    }
    if name != "master" {
        s.push_str(&format!(
            "service_socket = \"{}\"\n",
            dir.join(format!("{name}.sock")).display()
        ));
    }
    s
}

fn cluster_header(args: &Args) -> String {
    format!(
        "[cluster]\nname = \"{CLUSTER}\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\
         heartbeat_interval_ms = {}\nfailure_threshold = {}\n",
        args.heartbeat_ms, args.threshold
    )
}

/// Write `text` as `dir/<name>.toml`.
fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn node_args(config: &Path, name: &str) -> Vec<String> {
    vec![
        "--run-node".to_owned(),
        config.display().to_string(),
        name.to_owned(),
    ]
}

fn me() -> Result<String, String> {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .map_err(|e| format!("where is this program: {e}"))
}

/// One namespace per node; forwarders in the workers' namespaces when faults are asked for.
fn start_netns(args: &Args, dir: &Path, link: usize, seed: u64) -> Result<Cluster, String> {
    let lab = Lab::new(NAMES.len())?;
    let exe = me()?;
    let faulty = args.loss > 0.0 || args.delay_ms > 0;
    let (mut procs, mut helpers) = (Vec::new(), Vec::new());
    for (i, name) in NAMES.iter().enumerate() {
        let mut text = cluster_header(args);
        for (j, other) in NAMES.iter().enumerate() {
            // A faulty worker dials the master through the forwarder on its own loopback.
            let advertise = if j == 0 && i != 0 && faulty {
                format!("127.0.0.1:{FORWARD_PORT}")
            } else {
                format!("{}:{PORT}", Lab::address(j))
            };
            text.push_str(&node_entry(
                other,
                &format!("0.0.0.0:{PORT}"),
                Some(&advertise),
                dir,
            ));
        }
        let config = write_config(dir, name, &text)?;
        if faulty && i != 0 {
            let mut fargs = vec![
                "--forward".to_owned(),
                format!("127.0.0.1:{FORWARD_PORT}"),
                format!("{}:{PORT}", Lab::address(0)),
                "--loss".to_owned(),
                args.loss.to_string(),
                "--delay-ms".to_owned(),
                args.delay_ms.to_string(),
                "--seed".to_owned(),
            ];
            fargs.push((seed ^ i as u64).to_string());
            let mut fwd = lab.spawn(lab.node_ns(i), &exe, &fargs, &[])?;
            fwd.wait_line("forwarding", SETUP_WAIT)?;
            helpers.push(fwd);
        }
        procs.push(lab.spawn(lab.node_ns(i), &exe, &node_args(&config, name), &[])?);
    }
    Ok(Cluster {
        procs,
        _helpers: helpers,
        cutter: Cutter::Lab { lab, index: link },
        _forwarders: Vec::new(),
        mode: "netns",
    })
}

/// Every node on loopback, each worker dialling the master through a forwarder here. The
/// nodes' listeners are bound here and handed over (socket activation): no port races.
async fn start_loopback(
    args: &Args,
    dir: &Path,
    link: usize,
    seed: u64,
) -> Result<Cluster, String> {
    let exe = me()?;
    let mut listeners = Vec::new();
    for _ in NAMES {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind loopback: {e}"))?;
        let a = l
            .local_addr()
            .map_err(|e| format!("loopback address: {e}"))?;
        listeners.push((l, a));
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    let master = addrs[0];
    let mut forwarders = Vec::new();
    for i in 1..NAMES.len() {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let fwd = ForwarderHandle::bind(any, master, faults(args, seed ^ i as u64))
            .await
            .map_err(|e| e.to_string())?;
        forwarders.push(fwd);
    }
    let mut procs = Vec::new();
    for (i, (name, (listener, _))) in NAMES.iter().zip(listeners).enumerate() {
        let mut text = cluster_header(args);
        for (j, other) in NAMES.iter().enumerate() {
            let listen = addrs[j];
            let via = (j == 0 && i != 0).then(|| forwarders[i - 1].local_addr().to_string());
            text.push_str(&node_entry(other, &listen.to_string(), via.as_deref(), dir));
        }
        let config = write_config(dir, name, &text)?;
        let mut cmd = Command::new(&exe);
        cmd.args(node_args(&config, name))
            .env("RUST_LOG", "info")
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "peer")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: listener.into(),
            child_fd: 3,
        }])
        .map_err(|e| format!("hand {name} its socket: {e}"))?;
        procs.push(Proc::start(cmd, name)?);
    }
    Ok(Cluster {
        procs,
        _helpers: Vec::new(),
        cutter: Cutter::Blackhole(link - 1),
        _forwarders: forwarders,
        mode: "loopback",
    })
}

/// Attach application `app` to worker `node`, retrying while its socket is not there yet.
async fn attach(dir: &Path, node: &str, app: &str) -> Result<Client, String> {
    let endpoint = Endpoint::Unix(dir.join(format!("{node}.sock")));
    let deadline = Instant::now() + SETUP_WAIT;
    loop {
        match Client::connect(&endpoint, CLUSTER, SECRET.as_bytes(), app).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(format!("attach {app}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Poll the nodes' logs until `text` has appeared in process `i`'s (this is a benchmark's
/// setup, not a test: a short poll is simplest next to the async work).
async fn wait_log(cluster: &mut Cluster, i: usize, text: &str) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_WAIT;
    while cluster.procs[i].count(text) == 0 {
        if Instant::now() > deadline {
            return Err(format!("no {text:?} within {SETUP_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What the subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    received: u64,
    duplicated: u64,
    reordered: u64,
    distinct: HashSet<u64>,
    max: Option<u64>,
}

async fn run(args: Args) -> Result<String, String> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let link = match args.link.as_str() {
        "worker-1" => 1,
        "worker-2" => 2,
        other => return Err(format!("--link {other}: expected worker-1 or worker-2")),
    };
    if args.rate == 0 || args.min_cut_ms > args.max_cut_ms || args.min_gap_ms > args.max_gap_ms {
        return Err("--rate must be positive and every min at most its max".into());
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let netns = !args.loopback && netns::missing_prerequisite().is_none();
    let mut cluster = if netns {
        start_netns(&args, dir.path(), link, seed)?
    } else {
        start_loopback(&args, dir.path(), link, seed).await?
    };
    // Every node sees every other: a targeted event has a route from the start.
    for (i, me) in NAMES.iter().enumerate() {
        for other in NAMES.iter().filter(|n| *n != me) {
            wait_log(&mut cluster, i, &format!("membership: {other} up")).await?;
        }
    }

    let mut subscriber = attach(dir.path(), "worker-2", "chaos-sub").await?;
    let mut publisher = attach(dir.path(), "worker-1", "chaos-pub").await?;
    subscriber
        .subscribe(TOPIC)
        .await
        .map_err(|e| e.to_string())?;
    subscriber.sync().await.map_err(|e| e.to_string())?;
    // Probes, broadcast and targeted, until one of each arrives: the subscription is known
    // cluster-wide and both paths carry events.
    let deadline = Instant::now() + SETUP_WAIT;
    let mut probes_seen = [false, false];
    'probe: for n in 0u64.. {
        if Instant::now() > deadline {
            return Err("the subscriber never received both probes".into());
        }
        let targeted = n % 2 == 1;
        let probe = Stamp {
            origin: format!("probe-{}", u8::from(targeted)),
            seq: 0,
        };
        publisher
            .publish(TOPIC, &probe, targeted.then_some("worker-2"))
            .await
            .map_err(|e| e.to_string())?;
        let wait = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                got = subscriber.next() => match got {
                    Some(Incoming::Event { payload, .. }) => {
                        let stamp = nodecloud::wire::decode_payload::<Stamp>(&payload);
                        match stamp.as_ref().map(|s| s.origin.as_str()) {
                            Ok("probe-0") => probes_seen[0] = true,
                            Ok("probe-1") => probes_seen[1] = true,
                            _ => {}
                        }
                        if probes_seen == [true, true] {
                            break 'probe;
                        }
                    }
                    Some(_) => {}
                    None => return Err("the subscriber was closed".into()),
                },
            }
        }
    }

    let started = Instant::now();
    // The subscriber counts until told to stop.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(0u64);
    let sub_task = tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                got = subscriber.next() => {
                    let Some(Incoming::Event { payload, .. }) = got else {
                        if got.is_none() { break; }
                        continue;
                    };
                    let Ok(stamp) = nodecloud::wire::decode_payload::<Stamp>(&payload) else {
                        continue;
                    };
                    if stamp.origin != "chaos-pub" {
                        continue;
                    }
                    seen.received += 1;
                    if !seen.distinct.insert(stamp.seq) {
                        seen.duplicated += 1;
                    } else if seen.max.is_some_and(|m| stamp.seq < m) {
                        seen.reordered += 1;
                    }
                    seen.max = seen.max.max(Some(stamp.seq));
                    seen_tx.send_replace(seen.received);
                }
            }
        }
        seen
    });

    let events = args.events;
    let rate = args.rate;
    let pub_task = tokio::spawn(async move {
        let (mut sent, mut refused) = (0u64, 0u64);
        let mut first_refusal = String::new();
        let count = |item: Incoming, first: &mut String| -> u64 {
            match item {
                Incoming::Refused { code, message, .. } => {
                    if first.is_empty() {
                        *first = format!("{code}: {message}");
                    }
                    1
                }
                _ => 0,
            }
        };
        let begin = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while sent < events {
            tick.tick().await;
            let due = (begin.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due.min(events) {
                let seq = sent + 1;
                let stamp = Stamp {
                    origin: "chaos-pub".into(),
                    seq,
                };
                // Alternately to every node and to the subscriber's node alone.
                let target = (seq % 2 == 0).then_some("worker-2");
                if publisher.publish(TOPIC, &stamp, target).await.is_err() {
                    return (
                        sent,
                        refused,
                        first_refusal,
                        "the publisher's connection closed",
                    );
                }
                sent += 1;
            }
            while let Some(item) = publisher.try_next() {
                refused += count(item, &mut first_refusal);
            }
        }
        // Refusals of the last events.
        let _ = publisher.sync().await;
        while let Some(item) = publisher.try_next() {
            refused += count(item, &mut first_refusal);
        }
        (sent, refused, first_refusal, "")
    });

    let mut rng = Rng::new(seed);
    for _ in 0..args.flaps {
        let gap = rng.between(args.min_gap_ms, args.max_gap_ms);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let cut = rng.between(args.min_cut_ms, args.max_cut_ms);
        cluster.cut(true)?;
        tokio::time::sleep(Duration::from_millis(cut)).await;
        cluster.cut(false)?;
    }
    let (sent, refused, first_refusal, broke) = pub_task.await.map_err(|e| e.to_string())?;
    let traffic = started.elapsed();

    // Drain: until nothing new arrived for a quiet period longer than the failure timeout.
    let failure = Duration::from_millis(args.heartbeat_ms * u64::from(args.threshold));
    let quiet = QUIET + failure;
    let drain_deadline = Instant::now() + DRAIN_WAIT;
    let mut last = *seen_rx.borrow();
    let mut still_since = Instant::now();
    while Instant::now() < drain_deadline && still_since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = *seen_rx.borrow();
        if now != last || now >= sent {
            if now >= sent {
                break;
            }
            last = now;
            still_since = Instant::now();
        }
    }
    stop_tx.send_replace(true);
    let seen = sub_task.await.map_err(|e| e.to_string())?;
    let lost = sent.saturating_sub(seen.distinct.len() as u64);
    let downs = cluster.downs();
    let mut line = format!(
        "flaps={} sent={sent} received={} lost={lost} duplicated={} reordered={} downs={downs} \
         refused={refused} mode={} heartbeat_ms={} threshold={} loss={} delay_ms={} link={} \
         seconds={:.1} seed={seed}",
        args.flaps,
        seen.received,
        seen.duplicated,
        seen.reordered,
        cluster.mode,
        args.heartbeat_ms,
        args.threshold,
        args.loss,
        args.delay_ms,
        args.link,
        traffic.as_secs_f64(),
    );
    if !first_refusal.is_empty() {
        line.push_str(&format!(" first_refusal={first_refusal:?}"));
    }
    if !broke.is_empty() {
        line.push_str(&format!(" error=\"{broke}\""));
    }
    drop(cluster);
    Ok(line)
}

/// xorshift64*: cut lengths repeatable from `--seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        lo + x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo + 1)
    }
}
