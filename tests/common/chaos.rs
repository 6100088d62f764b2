//! One chaos run: a star of three separate node processes (`master`, `worker-1`,
//! `worker-2`), a publisher application on `worker-1` and a subscriber application on
//! `worker-2`, events carrying their origin and sequence, and N cuts of one worker's link
//! while they flow. [`run`] returns what was sent, received, lost, duplicated and reordered,
//! and how many `down`s the nodes logged; tests assert on the [`Report`], `examples/chaos.rs`
//! prints it.
//!
//! - **Network.** In namespaces ([`Network::Namespaces`], needs root): one per node on a
//!   private bridge (`netns.rs`), a cut is the worker's bridge port going down, so its sockets
//!   stay open and go silent. On loopback ([`Network::Loopback`]): every node on 127.0.0.1,
//!   each worker dialling the master through a forwarder in this process, a cut is a
//!   blackhole of that forwarder; the nodes' listeners are bound here and handed over
//!   (socket activation), so no port is raced for.
//! - **Loss and delay** go through `nodecloud::testing::forwarder` on every worker's link. In
//!   namespaces the forwarder must run inside the worker's namespace, as a process: the
//!   caller says which program ([`Programs::forwarder`]); on loopback it runs here.
//! - **Counting.** `lost` is sent and never received; `duplicated`, received more than once;
//!   `reordered`, arrivals with a sequence lower than one already received; `downs`, the
//!   `membership: … down` lines of every node's log; `refused`, the refusals the publisher got.
//!
//! Owned by the caller's tokio runtime (current-thread is enough); everything it starts is
//! killed when the run ends, on an error too (the lab and the processes clean up on drop).
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nodecloud::service::{Client, Endpoint, Incoming, Overflow};
use nodecloud::testing::forwarder::{Faults, ForwarderHandle};
use serde::{Deserialize, Serialize};

use super::netns::{Lab, Proc};

const CLUSTER: &str = "chaos";
const SECRET: &str = "chaos-run-secret-0123456789";
const TOPIC: &str = "chaos.event";
/// The publisher application's name: the origin its events carry.
const ORIGIN: &str = "chaos-pub";
/// The peer port of every node in a namespace (each is its own machine).
const PORT: u16 = 7601;
/// Where a forwarder inside a worker's namespace listens (its loopback).
const FORWARD_PORT: u16 = 7700;
/// Starting the cluster and attaching the applications.
const SETUP_WAIT: Duration = Duration::from_secs(30);
/// After the last event and the last flap, how long the count may stay still before the run
/// ends (a failure timeout more is added).
const QUIET: Duration = Duration::from_secs(2);
/// The longest the drain after traffic may take.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

pub const NAMES: [&str; 3] = ["master", "worker-1", "worker-2"];

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Namespaces,
    Loopback,
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub network: Network,
    /// Cuts of `link`.
    pub flaps: u32,
    pub events: u64,
    /// Events per second.
    pub rate: u64,
    /// Each cut lasts a random time in this range.
    pub cut: (Duration, Duration),
    /// Before each cut the link stays up a random time in this range.
    pub gap: (Duration, Duration),
    pub heartbeat_ms: u64,
    pub threshold: u32,
    /// Probability that a forwarded chunk stalls as a lost segment would.
    pub loss: f64,
    /// Added each way on every worker's link.
    pub delay: Duration,
    /// The worker whose link is cut: 1 (the publisher's) or 2 (the subscriber's).
    pub link: usize,
    /// Seed of the cut lengths and stalls.
    pub seed: u64,
    /// Where to keep each node's log (`NAME.log`, at debug level) and the cuts (`cuts.log`,
    /// milliseconds since the first event), to see what happened in a run.
    pub logs: Option<PathBuf>,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            network: Network::Loopback,
            flaps: 5,
            events: 5000,
            rate: 1000,
            cut: (Duration::from_millis(200), Duration::from_millis(2000)),
            gap: (Duration::from_millis(200), Duration::from_millis(1000)),
            heartbeat_ms: 250,
            threshold: 6,
            loss: 0.0,
            delay: Duration::ZERO,
            link: 2,
            seed: 1,
            logs: None,
        }
    }
}

impl Scenario {
    /// The nodes' `RUST_LOG`.
    fn log_level(&self) -> &'static str {
        if self.logs.is_some() {
            "info,nodecloud=debug"
        } else {
            "info"
        }
    }

    fn faulty(&self) -> bool {
        self.loss > 0.0 || !self.delay.is_zero()
    }

    fn faults(&self, seed: u64) -> Faults {
        Faults {
            delay: self.delay,
            stall_probability: self.loss,
            seed,
            ..Faults::default()
        }
    }
}

/// How to start a program: `program ARGS…` followed by the arguments of the occasion.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
}

/// The programs a run starts.
#[derive(Debug, Clone)]
pub struct Programs {
    /// Followed by `--config FILE --node NAME`: the `nodecloud` command, or a program that
    /// runs its code.
    pub node: Launch,
    /// Followed by `LISTEN TO DELAY_MS LOSS SEED`, and printing a line containing
    /// `forwarding` once it accepts (see [`serve_forwarder`]). Needed only for loss or
    /// delay in namespaces.
    pub forwarder: Option<Launch>,
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub flaps: u32,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub downs: usize,
    /// The lines counted in `downs`, each prefixed with the node that logged it.
    pub down_lines: Vec<String>,
    pub refused: u64,
    /// The first refusal, `code: message`.
    pub first_refusal: Option<String>,
    /// Why publishing stopped early, if it did.
    pub broke: Option<String>,
    /// From the first event to the last flap or event, whichever came later.
    pub traffic: Duration,
    pub network: Option<Network>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flaps={} sent={} received={} lost={} duplicated={} reordered={} downs={} refused={} \
             seconds={:.1}",
            self.flaps,
            self.sent,
            self.received,
            self.lost,
            self.duplicated,
            self.reordered,
            self.downs,
            self.refused,
            self.traffic.as_secs_f64()
        )?;
        match self.network {
            Some(Network::Namespaces) => write!(f, " mode=netns")?,
            Some(Network::Loopback) => write!(f, " mode=loopback")?,
            None => {}
        }
        if let Some(r) = &self.first_refusal {
            write!(f, " first_refusal={r:?}")?;
        }
        if let Some(b) = &self.broke {
            write!(f, " error={b:?}")?;
        }
        Ok(())
    }
}

/// The event payload: who published it and its place in the publisher's sequence.
#[derive(Serialize, Deserialize, Debug)]
struct Stamp {
    origin: String,
    seq: u64,
}

/// The body of a forwarder process started by a run: `args` are `LISTEN TO DELAY_MS LOSS
/// SEED`; prints `forwarding LISTEN to TO` on stderr once it accepts, then serves until
/// killed.
///
/// # Errors
/// Bad arguments, or the address cannot be bound.
pub async fn serve_forwarder(args: &[String]) -> Result<(), String> {
    let [listen, to, delay_ms, loss, seed] = args else {
        return Err("expected LISTEN TO DELAY_MS LOSS SEED".into());
    };
    let bad = |what: &str| format!("{what}: not understood");
    let listen: SocketAddr = listen.parse().map_err(|_| bad(listen))?;
    let to: SocketAddr = to.parse().map_err(|_| bad(to))?;
    let faults = Faults {
        delay: Duration::from_millis(delay_ms.parse().map_err(|_| bad(delay_ms))?),
        stall_probability: loss.parse().map_err(|_| bad(loss))?,
        seed: seed.parse().map_err(|_| bad(seed))?,
        ..Faults::default()
    };
    let _fwd = ForwarderHandle::bind(listen, to, faults)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("forwarding {listen} to {to}");
    std::future::pending::<()>().await;
    Ok(())
}

/// The cluster under test, in whichever network. Drop order kills the processes first.
struct Cluster {
    /// The nodes, in the order of NAMES.
    procs: Vec<Proc>,
    /// Forwarder processes inside namespaces.
    _helpers: Vec<Proc>,
    cutter: Cutter,
}

/// How a cut is made.
enum Cutter {
    Lab {
        lab: Lab,
        index: usize,
    },
    /// The forwarder of the cut worker's link, and every worker's (kept alive here).
    Blackhole {
        index: usize,
        forwarders: Vec<ForwarderHandle>,
    },
}

impl Cluster {
    fn cut(&self, on: bool) -> Result<(), String> {
        match &self.cutter {
            Cutter::Lab { lab, index } if on => lab.cut(*index),
            Cutter::Lab { lab, index } => lab.restore(*index),
            Cutter::Blackhole { index, forwarders } => {
                if let Some(f) = forwarders.get(*index) {
                    f.blackhole(on);
                }
                Ok(())
            }
        }
    }

    /// Write every node's log as `dir/NAME.log` and the cuts as `dir/cuts.log`.
    fn keep_logs(&mut self, dir: &Path, cuts: &str) -> Result<(), String> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        write("cuts.log", cuts)?;
        for (p, name) in self.procs.iter_mut().zip(NAMES) {
            p.drain();
            write(&format!("{name}.log"), &p.seen.join("\n"))?;
        }
        Ok(())
    }

    /// The `membership: … down` lines of every node's log, each prefixed with its node.
    fn down_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for (p, name) in self.procs.iter_mut().zip(NAMES) {
            p.drain();
            lines.extend(
                p.seen
                    .iter()
                    .filter(|l| l.contains("membership:") && l.contains(" down"))
                    .map(|l| format!("{name}: {l}")),
            );
        }
        lines
    }
}

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

fn cluster_header(s: &Scenario) -> String {
    format!(
        "[cluster]\nname = \"{CLUSTER}\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\
         heartbeat_interval_ms = {}\nfailure_threshold = {}\n",
        s.heartbeat_ms, s.threshold
    )
}

/// Write `text` as `dir/<name>.toml`.
fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn node_args(launch: &Launch, config: &Path, name: &str) -> Vec<String> {
    let mut args = launch.args.clone();
    args.extend([
        "--config".to_owned(),
        config.display().to_string(),
        "--node".to_owned(),
        name.to_owned(),
    ]);
    args
}

/// One namespace per node; forwarder processes in the workers' namespaces when faulty.
fn start_netns(s: &Scenario, programs: &Programs, dir: &Path) -> Result<Cluster, String> {
    let forwarder = match (&programs.forwarder, s.faulty()) {
        (Some(f), true) => Some(f),
        (None, true) => return Err("loss or delay in namespaces needs a forwarder program".into()),
        (_, false) => None,
    };
    let lab = Lab::new(NAMES.len())?;
    let (mut procs, mut helpers) = (Vec::new(), Vec::new());
    for (i, name) in NAMES.iter().enumerate() {
        let mut text = cluster_header(s);
        for (j, other) in NAMES.iter().enumerate() {
            // A faulty worker dials the master through the forwarder on its own loopback.
            let advertise = if j == 0 && i != 0 && forwarder.is_some() {
                format!("127.0.0.1:{FORWARD_PORT}")
            } else {
                format!("{}:{PORT}", Lab::address(j))
            };
            let listen = format!("0.0.0.0:{PORT}");
            text.push_str(&node_entry(other, &listen, Some(&advertise), dir));
        }
        let config = write_config(dir, name, &text)?;
        if let (Some(f), true) = (forwarder, i != 0) {
            let mut args = f.args.clone();
            args.extend([
                format!("127.0.0.1:{FORWARD_PORT}"),
                format!("{}:{PORT}", Lab::address(0)),
                s.delay.as_millis().to_string(),
                s.loss.to_string(),
                (s.seed ^ i as u64).to_string(),
            ]);
            let mut fwd = lab.spawn(lab.node_ns(i), &f.program, &args, &[])?;
            fwd.wait_line("forwarding", SETUP_WAIT)?;
            helpers.push(fwd);
        }
        let args = node_args(&programs.node, &config, name);
        let env = [("RUST_LOG", s.log_level())];
        procs.push(lab.spawn(lab.node_ns(i), &programs.node.program, &args, &env)?);
    }
    Ok(Cluster {
        procs,
        _helpers: helpers,
        cutter: Cutter::Lab { lab, index: s.link },
    })
}

/// Every node on loopback, each worker dialling the master through a forwarder here.
async fn start_loopback(s: &Scenario, programs: &Programs, dir: &Path) -> Result<Cluster, String> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in NAMES {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind loopback: {e}"))?;
        addrs.push(
            l.local_addr()
                .map_err(|e| format!("loopback address: {e}"))?,
        );
        listeners.push(l);
    }
    let mut forwarders = Vec::new();
    for i in 1..NAMES.len() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let fwd = ForwarderHandle::bind(any, addrs[0], s.faults(s.seed ^ i as u64))
            .await
            .map_err(|e| e.to_string())?;
        forwarders.push(fwd);
    }
    let mut procs = Vec::new();
    for (i, (name, listener)) in NAMES.iter().zip(listeners).enumerate() {
        let mut text = cluster_header(s);
        for (j, other) in NAMES.iter().enumerate() {
            let via = (j == 0 && i != 0).then(|| forwarders[i - 1].local_addr().to_string());
            text.push_str(&node_entry(
                other,
                &addrs[j].to_string(),
                via.as_deref(),
                dir,
            ));
        }
        let config = write_config(dir, name, &text)?;
        let mut cmd = Command::new(&programs.node.program);
        cmd.args(node_args(&programs.node, &config, name))
            .env("RUST_LOG", s.log_level())
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
        cutter: Cutter::Blackhole {
            index: s.link - 1,
            forwarders,
        },
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

/// Until `text` has appeared in node `i`'s log. The lines arrive on a thread's channel:
/// polling it briefly keeps this usable beside the run's async work.
async fn wait_log(cluster: &mut Cluster, i: usize, text: &str) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_WAIT;
    while cluster.procs[i].count(text) == 0 {
        if Instant::now() > deadline {
            return Err(format!("{}: no {text:?} within {SETUP_WAIT:?}", NAMES[i]));
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

impl Seen {
    fn count(&mut self, seq: u64) {
        self.received += 1;
        if !self.distinct.insert(seq) {
            self.duplicated += 1;
        } else if self.max.is_some_and(|m| seq < m) {
            self.reordered += 1;
        }
        self.max = self.max.max(Some(seq));
    }
}

/// Probes, broadcast and targeted, until one of each arrives: the subscription is known
/// cluster-wide and both paths carry events.
async fn probe(publisher: &Client, subscriber: &mut Client) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_WAIT;
    let mut seen = [false, false];
    for n in 0u64.. {
        if Instant::now() > deadline {
            return Err(format!(
                "the subscriber received probes {seen:?} (broadcast, targeted)"
            ));
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
                            Ok("probe-0") => seen[0] = true,
                            Ok("probe-1") => seen[1] = true,
                            _ => {}
                        }
                        if seen == [true, true] {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                    None => return Err("the subscriber was closed".into()),
                },
            }
        }
    }
    Ok(())
}

/// Publish `events` at `rate`, alternately to every node and to worker-2 alone.
async fn publish(mut publisher: Client, events: u64, rate: u64) -> Report {
    let mut r = Report::default();
    let note = |item: Incoming, r: &mut Report| {
        if let Incoming::Refused { code, message, .. } = item {
            r.refused += 1;
            r.first_refusal
                .get_or_insert_with(|| format!("{code}: {message}"));
        }
    };
    let begin = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while r.sent < events {
        tick.tick().await;
        let due = (begin.elapsed().as_secs_f64() * rate as f64) as u64;
        while r.sent < due.min(events) {
            let seq = r.sent + 1;
            let stamp = Stamp {
                origin: ORIGIN.into(),
                seq,
            };
            let target = (seq % 2 == 0).then_some("worker-2");
            if let Err(e) = publisher.publish(TOPIC, &stamp, target).await {
                r.broke = Some(e.to_string());
                return r;
            }
            r.sent += 1;
        }
        while let Some(item) = publisher.try_next() {
            note(item, &mut r);
        }
    }
    // Refusals of the last events arrive before the answer to this.
    let _ = publisher.sync().await;
    while let Some(item) = publisher.try_next() {
        note(item, &mut r);
    }
    r
}

/// Run `s`.
///
/// # Errors
/// If the cluster cannot be built or started, or the applications cannot attach.
pub async fn run(s: &Scenario, programs: &Programs) -> Result<Report, String> {
    if s.rate == 0 || s.cut.0 > s.cut.1 || s.gap.0 > s.gap.1 || !(1..=2).contains(&s.link) {
        return Err("the rate must be positive, every min at most its max, the link 1 or 2".into());
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut cluster = match s.network {
        Network::Namespaces => start_netns(s, programs, dir.path())?,
        Network::Loopback => start_loopback(s, programs, dir.path()).await?,
    };
    // Every node sees every other: a targeted event has a route from the start.
    for (i, me) in NAMES.iter().enumerate() {
        for other in NAMES.iter().filter(|n| *n != me) {
            wait_log(&mut cluster, i, &format!("membership: {other} up")).await?;
        }
    }
    let mut subscriber = attach(dir.path(), "worker-2", "chaos-sub").await?;
    let publisher = attach(dir.path(), "worker-1", ORIGIN).await?;
    // Every event counts: the node waits for the subscriber rather than close it as slow.
    subscriber
        .set_overflow(Overflow::Wait)
        .await
        .map_err(|e| e.to_string())?;
    subscriber
        .subscribe(TOPIC)
        .await
        .map_err(|e| e.to_string())?;
    subscriber.sync().await.map_err(|e| e.to_string())?;
    probe(&publisher, &mut subscriber).await?;

    let started = Instant::now();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (count_tx, count_rx) = tokio::sync::watch::channel(0u64);
    let sub_task = tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                got = subscriber.next() => match got {
                    None => break,
                    Some(Incoming::Event { payload, .. }) => {
                        match nodecloud::wire::decode_payload::<Stamp>(&payload) {
                            Ok(stamp) if stamp.origin == ORIGIN => {
                                seen.count(stamp.seq);
                                count_tx.send_replace(seen.distinct.len() as u64);
                            }
                            _ => {}
                        }
                    }
                    Some(_) => {}
                },
            }
        }
        seen
    });
    let pub_task = tokio::spawn(publish(publisher, s.events, s.rate));

    let mut rng = Rng::new(s.seed);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .saturating_sub(started.elapsed().as_millis());
    let mut cuts = format!("first event at unix time {unix_ms} ms\n");
    for _ in 0..s.flaps {
        tokio::time::sleep(rng.between(s.gap)).await;
        let cut = rng.between(s.cut);
        cluster.cut(true)?;
        let at = started.elapsed().as_millis();
        cuts.push_str(&format!("cut at {at} ms for {} ms\n", cut.as_millis()));
        tokio::time::sleep(cut).await;
        cluster.cut(false)?;
    }
    let mut report = pub_task.await.map_err(|e| e.to_string())?;
    report.traffic = started.elapsed();

    // Drain: until all arrived, or nothing new for longer than the failure timeout.
    let failure = Duration::from_millis(s.heartbeat_ms * u64::from(s.threshold));
    let quiet = QUIET + failure;
    let drain_deadline = Instant::now() + DRAIN_WAIT;
    let mut last = *count_rx.borrow();
    let mut still_since = Instant::now();
    while last < report.sent && Instant::now() < drain_deadline && still_since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = *count_rx.borrow();
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
    stop_tx.send_replace(true);
    let seen = sub_task.await.map_err(|e| e.to_string())?;
    report.flaps = s.flaps;
    report.received = seen.received;
    report.duplicated = seen.duplicated;
    report.reordered = seen.reordered;
    report.lost = report.sent.saturating_sub(seen.distinct.len() as u64);
    report.down_lines = cluster.down_lines();
    if let Some(dir) = &s.logs {
        cluster.keep_logs(dir, &cuts)?;
    }
    report.downs = report.down_lines.len();
    report.network = Some(s.network);
    Ok(report)
}

/// xorshift64*: cut lengths repeatable from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Uniform in `lo..=hi`, by the millisecond.
    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(lo + x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo + 1))
    }
}
