//! How a local cluster scales with its node count: a ring, a mesh, a star (one master,
//! N − 1 workers) or a pool (a star whose master declares only itself and a `[[pools]]` entry,
//! its workers started as `nodecloud --join` configures them) of 8 to 1,000 nodes, every node
//! in this one process, over loopback TCP.
//!
//! ```text
//! cargo run --release --example scale -- --topology ring --nodes 8,16,32,64
//! cargo run --release --example scale -- --topology mesh --nodes 8,16,32,64
//! cargo run --release --example scale -- --topology star --nodes 64,256,1000 --heartbeat-ms 1000
//! cargo run --release --example scale -- --topology pool --nodes 64,256,1000 --heartbeat-ms 1000
//! ```
//!
//! One line per size:
//!
//! ```text
//! topology=ring nodes=64 converge_ms=… rss_per_node_kib=… broadcast_events_per_s=… …
//! ```
//!
//! * `threads`: the arbiter threads the nodes share (`--threads`; 0: a thread per node).
//! * `links_ms`: from the first node's start until every planned link is up (0: never).
//! * `converge_ms`: from the first node's start until every node sees all N nodes up.
//! * `converge_cpu_ms`: CPU time the whole process used from the first node's start until
//!   convergence (every thread; on 2 cores at most twice `converge_ms`).
//! * `graph_ms`: until every node also sees every planned link (routes are final).
//! * `rss_per_node_kib`: growth of the process's resident memory from before the cluster
//!   started to after convergence, divided by N.
//! * `idle_rss_per_node_kib`: the same growth at the end of the idle window, once buffers
//!   sized for the burst of converging were given back.
//! * `idle_cpu_pct`: CPU the converged, idle cluster uses (heartbeats, status flooding), in
//!   percent of one core, over `--idle-ms`; `status_frames_per_s` is what flooding implies:
//!   every node announces a status per heartbeat interval, sent to each of its peers and
//!   relayed once by every node to its links except the one it came on, the origin and the
//!   origin's peers (simulated here with statuses arriving along shortest paths).
//! * `idle_frames_per_node_s`, `idle_bytes_per_node_s`: what the idle cluster's links sent,
//!   per node and second (counters of the current connections); then every membership
//!   replication counter that moved over the idle window, cluster total per second
//!   (`digests_sent_per_s`, `delta_records_sent_per_s`, `own_stats_set_per_s`, …; see
//!   `nodecloud_replication_total` in the README).
//! * `broadcast_events_per_s`: one node publishes K events with `publish_wait`; every node
//!   counts them; K×N deliveries divided by the time until every node has all K. K is picked
//!   from a 500-event calibration run so the measured run takes about `--seconds`.
//!
//! `--failure-threshold` (default 5, as in a config file) sets how many silent heartbeat
//! intervals close a link; raising it shows whether a size fails for lack of CPU (starved
//! links time out) or for another reason.
//!
//! Each size runs in a child process of its own (a clean RSS baseline, no threads or sockets
//! left from the previous size) and gives up after `--limit-s` seconds with a `timeout=1` line
//! saying how far it got.

/// As the `nodecloud` command (the `mimalloc` feature, on by default); `--no-default-features`
/// measures with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: nodecloud::alloc::Mimalloc = nodecloud::alloc::Mimalloc;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use actix::prelude::*;
use clap::Parser;
use nodecloud::config::{Config, HostPort, NodeConfig, PoolConfig, Role, TopologyKind};
use nodecloud::node::Host;
use nodecloud::testing::TestCluster;
use nodecloud::topology::{self, Graph};
use nodecloud::{cluster, Delivery, Event, NodeHandle};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug, Clone)]
#[command(about = "time to converge, memory per node and broadcast throughput of local clusters")]
struct Args {
    /// ring, mesh, star (one master `n1`, every other node its worker) or pool (the same star,
    /// its workers undeclared members of a pool of `n1`).
    #[arg(long, default_value = "ring")]
    topology: String,
    /// Cluster sizes, comma-separated.
    #[arg(long, default_value = "8,16,32,64", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Heartbeat interval of the clusters.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// Missed heartbeat intervals before a link or node is declared dead (the default of a
    /// config file is 5).
    #[arg(long, default_value_t = 5)]
    failure_threshold: u32,
    /// Payload bytes per broadcast event.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Target duration of the measured broadcast run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Idle period over which the cluster's CPU use is measured.
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
    /// Each size gives up after this long.
    #[arg(long, default_value_t = 60)]
    limit_s: u64,
    /// Stop after the idle measurement (large stars: the broadcast run is not what is
    /// measured there).
    #[arg(long)]
    no_broadcast: bool,
    /// Every node on 127.0.0.1, dialling from it. By default each node listens on and dials
    /// from a loopback address of its own (127.1.x.y), as nodes on machines of their own
    /// would: a listener's per-source admission cap then sees one source per peer.
    #[arg(long)]
    one_address: bool,
    /// Print to stderr, once a second until convergence, how many links are up and how many
    /// nodes see every node up: where the time to converge goes.
    #[arg(long)]
    progress: bool,
    /// Arbiter threads the nodes share, dealt in turn (a star's master keeps one of its own,
    /// as it would have a machine of its own); 0 puts every node on an arbiter of its own.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Hidden: run one size in this process (what the parent spawns).
    #[arg(long, hide = true)]
    child: bool,
}

/// The broadcast event: a sequence number and `--size` bytes.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Load {
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Event for Load {
    const TOPIC: &'static str = "scale.load";
}

/// Counts deliveries on one node (runs on that node's arbiter).
struct Counter(Arc<AtomicU64>);

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Delivery<Load>> for Counter {
    type Result = ();
    fn handle(&mut self, _: Delivery<Load>, _: &mut Context<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // A pool is a star whose workers are not declared: they join the master as `--join` does.
    let pool = args.topology == "pool";
    let topology = if pool { "star" } else { args.topology.as_str() };
    let Some(kind) = TopologyKind::from_name(topology).filter(|k| {
        matches!(
            k,
            TopologyKind::Ring | TopologyKind::Mesh | TopologyKind::Star
        )
    }) else {
        eprintln!(
            "error: --topology {:?}: expected ring, mesh, star or pool",
            args.topology
        );
        return ExitCode::from(2);
    };
    if args.child {
        let Some(&n) = args.nodes.first() else {
            return ExitCode::from(2);
        };
        let system = System::new();
        let line = system.block_on(one_size(&args, kind, pool, n));
        println!("{}", line.text);
        // Nodes that did not stop in time must not keep the process alive.
        std::process::exit(i32::from(!line.ok));
    }
    let mut failed = false;
    for &n in &args.nodes {
        failed |= !spawn_size(&args, n);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one size in a child process and prints its line; false if it failed or timed out.
fn spawn_size(args: &Args, n: usize) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        println!(
            "topology={} nodes={n} error=\"cannot find this executable\"",
            args.topology
        );
        return false;
    };
    let spawned = Command::new(exe)
        .args(["--child", "--topology", &args.topology])
        .args(["--nodes", &n.to_string()])
        .args(["--heartbeat-ms", &args.heartbeat_ms.to_string()])
        .args(["--failure-threshold", &args.failure_threshold.to_string()])
        .args(["--size", &args.size.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--idle-ms", &args.idle_ms.to_string()])
        .args(["--limit-s", &args.limit_s.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(args.no_broadcast.then_some("--no-broadcast"))
        .args(args.one_address.then_some("--one-address"))
        .args(args.progress.then_some("--progress"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            println!("topology={} nodes={n} error=\"spawn: {e}\"", args.topology);
            return false;
        }
    };
    let (tx, rx) = std_mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    // The child keeps its own deadline; this one only catches a child that hangs past it.
    let deadline = Instant::now() + Duration::from_secs(args.limit_s + 15);
    let mut printed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                println!("{line}");
                printed = true;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std_mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                let _ = child.kill();
                println!(
                    "topology={} nodes={n} timeout=1 error=\"the run did not end within {} s; killed\"",
                    args.topology,
                    args.limit_s + 15
                );
                let _ = child.wait();
                return false;
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let ok = child.wait().is_ok_and(|s| s.success());
    if !printed {
        println!(
            "topology={} nodes={n} error=\"the run ended without a result\"",
            args.topology
        );
    }
    ok && printed
}

struct Line {
    ok: bool,
    text: String,
}

/// One cluster of `n` nodes: start, converge, measure, stop. With `pool`, a star whose
/// master declares only itself and a pool of `n − 1`: each worker starts with the
/// configuration `nodecloud --join` builds (the cluster's settings, the master and itself),
/// the settings taken from the master's file rather than read from its `welcome`.
async fn one_size(args: &Args, kind: TopologyKind, pool: bool, n: usize) -> Line {
    let deadline = Instant::now() + Duration::from_secs(args.limit_s);
    let shown = if pool {
        "pool".to_owned()
    } else {
        kind.to_string()
    };
    let mut fields = format!("topology={shown} nodes={n} threads={}", args.threads);
    let fail = |fields: String, phase: &str, detail: String| Line {
        ok: false,
        text: format!("{fields} timeout=1 phase={phase} {detail}"),
    };

    // Every port is bound before any node starts and handed to its node: distinct, and no
    // dial can take one before its node listens.
    let one_address = args.one_address;
    let mut reserved = TestCluster::new(|ports| {
        let nodes = (1..=n)
            .map(|i| {
                let ip = if one_address {
                    std::net::Ipv4Addr::LOCALHOST
                } else {
                    let i = u32::try_from(i).unwrap_or(u32::MAX);
                    std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
                };
                let name = format!("n{i}");
                // A star: n1 is the master, every other node its worker.
                let role = if kind == TopologyKind::Star && i == 1 {
                    Role::Master
                } else {
                    Role::Worker
                };
                let mut node = NodeConfig::new(&name, role, ports.reserve_on(ip.into()));
                if kind == TopologyKind::Star && i > 1 {
                    node.master = Some("n1".to_owned());
                }
                node.dial_from = (!one_address).then_some(ip.into());
                node
            })
            .collect();
        Config::for_test(kind, nodes)
    });
    let cfg = &mut reserved.config;
    cfg.cluster.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    cfg.cluster.failure_threshold = args.failure_threshold;
    // The production defaults; `for_test` shortens them.
    cfg.cluster.handshake_timeout = Duration::from_secs(5);
    cfg.cluster.forget_after = cfg.cluster.heartbeat_interval * args.failure_threshold * 10;
    let cfg = reserved.config();
    let names: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
    // What each node starts with: the file, or for a pool the master's file and each
    // worker's joined configuration.
    let configs: Vec<Arc<Config>> = if pool {
        pool_configs(&cfg, n)
    } else {
        vec![cfg.clone(); n]
    };
    let rss_before = rss_kib();

    let t0 = Instant::now();
    let start_cpu = cpu_ms();
    // Every node starts at once, as the processes of a real cluster would: started one after
    // another, the last of a thousand waits for hundreds already busy linking up.
    let shared: Vec<ArbiterHandle> = (0..args.threads).map(|_| Arbiter::new().handle()).collect();
    let host = |i: usize, node: &NodeConfig| match shared.as_slice() {
        [] => Host::OwnArbiter,
        _ if node.role == Role::Master => Host::OwnArbiter,
        arbiters => Host::Shared(arbiters[i % arbiters.len()].clone()),
    };
    let started = futures_util::future::join_all(cfg.nodes.iter().zip(&configs).enumerate().map(
        |(i, (n, c))| {
            cluster::start_node_hosted(c.clone(), &n.name, reserved.bound(&n.name), host(i, n))
        },
    ))
    .await
    .into_iter()
    .collect::<Result<Vec<NodeHandle>, _>>();
    let nodes = match started {
        Ok(nodes) => nodes,
        Err(e) => {
            return Line {
                ok: false,
                text: format!("{fields} error=\"start: {e}\""),
            }
        }
    };
    // The time every node took to listen: part of converge_ms, shown on its own.
    fields.push_str(&format!(" start_ms={}", t0.elapsed().as_millis()));
    let all_up = |nodes: &[NodeHandle]| {
        nodes
            .iter()
            .map(|node| {
                let view = node.membership().borrow().clone();
                names.iter().filter(|n| view.is_up(n)).count()
            })
            .collect::<Vec<usize>>()
    };
    // When every planned link is up (polled): what convergence waits for beyond that is
    // replication.
    let plan_degrees: Vec<usize> = {
        let plan = topology::plan(&cfg).graph();
        names.iter().map(|n| plan.neighbours(n).count()).collect()
    };
    let links_done = Arc::new(AtomicU64::new(0));
    let poller = {
        let nodes = nodes.clone();
        let done = links_done.clone();
        let progress = args.progress;
        let names = names.clone();
        actix_rt::spawn(async move {
            let mut last_print = Instant::now();
            loop {
                let all = nodes
                    .iter()
                    .zip(&plan_degrees)
                    .all(|(node, &d)| node.link_stats().len() >= d);
                if progress && (all || last_print.elapsed() >= Duration::from_secs(1)) {
                    last_print = Instant::now();
                    let links: usize = nodes.iter().map(|n| n.link_stats().len()).sum();
                    let planned: usize = plan_degrees.iter().sum();
                    let seeing_all = nodes
                        .iter()
                        .filter(|n| {
                            let view = n.membership();
                            let view = view.borrow();
                            names.iter().all(|name| view.is_up(name))
                        })
                        .count();
                    let counters: String = traffic(&nodes)
                        .replication
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(name, n)| format!(" {name}={n}"))
                        .collect();
                    eprintln!(
                        "progress t_ms={} link_ends={links}/{planned} nodes_seeing_all={seeing_all}/{}{counters}",
                        t0.elapsed().as_millis(),
                        nodes.len()
                    );
                }
                if all {
                    let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                    done.store(ms.max(1), Ordering::Relaxed);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // The member count first: a view short of a member is passed over without a lookup per
    // name (the whole list looked up at each view of a forming thousand-node cluster was a
    // tenth of the process's CPU, taken from the nodes measured). Then the members, in order,
    // against the names in order: one comparison per name rather than a lookup (4 % of the
    // process while a thousand nodes converged).
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let converged = wait_all(&nodes, deadline, |v| {
        v.members.len() == sorted.len() && v.members.keys().eq(sorted.iter())
    })
    .await;
    poller.abort();
    let _ = std::fmt::Write::write_fmt(
        &mut fields,
        format_args!(" links_ms={}", links_done.load(Ordering::Relaxed)),
    );
    if !converged {
        let up = all_up(&nodes);
        let detail = format!(
            "elapsed_ms={} up_min={} up_max={} nodes_seeing_all={}",
            t0.elapsed().as_millis(),
            up.iter().min().copied().unwrap_or(0),
            up.iter().max().copied().unwrap_or(0),
            up.iter().filter(|&&u| u == n).count(),
        );
        stop(&nodes).await;
        return fail(fields, "converge", detail);
    }
    let converge = t0.elapsed();
    let _ = std::fmt::Write::write_fmt(
        &mut fields,
        format_args!(
            " converge_ms={} converge_cpu_ms={}",
            converge.as_millis(),
            cpu_ms().saturating_sub(start_cpu)
        ),
    );

    // Every node must know every planned link, or broadcast trees could still differ.
    let plan = topology::plan(&cfg).graph();
    let complete = |v: &nodecloud::node::MembershipView| {
        names.iter().all(|name| {
            v.members.get(name).is_some_and(|m| {
                m.links.len() == plan.neighbours(name).count()
                    && plan
                        .neighbours(name)
                        .all(|p| m.links.binary_search_by(|l| l.as_str().cmp(p)).is_ok())
            })
        })
    };
    if !wait_all(&nodes, deadline, complete).await {
        let detail = format!("{fields} elapsed_ms={}", t0.elapsed().as_millis());
        stop(&nodes).await;
        return fail(String::new(), "graph", detail);
    }
    let graph = t0.elapsed();
    let rss_after = rss_kib();
    let per_node = rss_after.saturating_sub(rss_before) / n as u64;

    // Idle: only pings and the master's ticks should flow; the counters say what did.
    let traffic0 = traffic(&nodes);
    let cpu0 = cpu_ms();
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;
    let idle_cpu_pct = (cpu_ms().saturating_sub(cpu0)) as f64 * 100.0
        / idle_start.elapsed().as_millis().max(1) as f64;
    let idle_s = idle_start.elapsed().as_secs_f64().max(1e-3);
    let traffic1 = traffic(&nodes);
    let idle_rss_per_node = rss_kib().saturating_sub(rss_before) / n as u64;
    let status_frames_per_s =
        status_frames_per_interval(&plan) as f64 * 1000.0 / args.heartbeat_ms as f64;

    let _ = std::fmt::Write::write_fmt(
        &mut fields,
        format_args!(
            " graph_ms={} rss_per_node_kib={per_node} idle_rss_per_node_kib={idle_rss_per_node} idle_cpu_pct={idle_cpu_pct:.1} status_frames_per_s={status_frames_per_s:.0}",
            graph.as_millis()
        ),
    );
    // What the idle cluster sent, per second: link frames and bytes per node, then every
    // replication counter that moved (cluster total).
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / idle_s;
    let _ = std::fmt::Write::write_fmt(
        &mut fields,
        format_args!(
            " idle_frames_per_node_s={:.1} idle_bytes_per_node_s={:.0}",
            rate(traffic0.frames, traffic1.frames) / n as f64,
            rate(traffic0.bytes, traffic1.bytes) / n as f64,
        ),
    );
    for ((name, a), (_, b)) in traffic0.replication.iter().zip(&traffic1.replication) {
        if b > a {
            let _ = std::fmt::Write::write_fmt(
                &mut fields,
                format_args!(" {name}_per_s={:.1}", rate(*a, *b)),
            );
        }
    }

    if args.no_broadcast {
        stop(&nodes).await;
        return Line {
            ok: true,
            text: fields,
        };
    }

    // Broadcast throughput.
    let counters: Vec<Arc<AtomicU64>> = nodes.iter().map(|_| Arc::default()).collect();
    for (node, count) in nodes.iter().zip(&counters) {
        let count = count.clone();
        let addr = Counter::start_in_arbiter(node.arbiter(), move |_| Counter(count));
        node.subscribe::<Load>(addr.recipient());
    }
    let publisher = &nodes[0];
    let data = vec![0x5a; args.size];
    let mut seq = 0;
    let mut delivered = 0u64;
    let mut run = |k: u64| {
        let data = data.clone();
        let counters = counters.clone();
        let start_seq = seq;
        seq += k;
        delivered += k;
        let target = delivered;
        async move {
            let start = Instant::now();
            for s in start_seq..start_seq + k {
                let event = Load {
                    seq: s,
                    data: data.clone(),
                };
                if let Err(e) = publisher.publish_wait(&event).await {
                    return Err(format!("publish: {e}"));
                }
                if Instant::now() > deadline {
                    return Err(format!("published {} of {k}", s - start_seq));
                }
            }
            // Poll the counters: cheap next to the deliveries themselves.
            while counters.iter().any(|c| c.load(Ordering::Relaxed) < target) {
                if Instant::now() > deadline {
                    let min = counters
                        .iter()
                        .map(|c| c.load(Ordering::Relaxed))
                        .min()
                        .unwrap_or(0);
                    return Err(format!("slowest node has {} of {target} deliveries", min));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(start.elapsed())
        }
    };
    let calibration = 500;
    let took = match run(calibration).await {
        Ok(t) => t,
        Err(e) => {
            stop(&nodes).await;
            return fail(fields, "calibrate", format!("error=\"{e}\""));
        }
    };
    let rate = calibration as f64 / took.as_secs_f64().max(1e-6);
    let k = ((rate * args.seconds) as u64).clamp(1_000, 2_000_000);
    let took = match run(k).await {
        Ok(t) => t,
        Err(e) => {
            stop(&nodes).await;
            return fail(fields, "broadcast", format!("events={k} error=\"{e}\""));
        }
    };
    let per_s = (k * n as u64) as f64 / took.as_secs_f64().max(1e-6);
    let _ = std::fmt::Write::write_fmt(
        &mut fields,
        format_args!(
            " broadcast_events_per_s={per_s:.0} events={k} broadcast_ms={}",
            took.as_millis()
        ),
    );
    stop(&nodes).await;
    Line {
        ok: true,
        text: fields,
    }
}

/// A pool of `n − 1` workers under `cfg`'s master `n1`: the master's configuration (itself
/// and a pool `n` of that size), then each worker's as `nodecloud --join` builds it.
fn pool_configs(cfg: &Config, n: usize) -> Vec<Arc<Config>> {
    let mut master = cfg.clone();
    master.nodes.truncate(1);
    master.pools = vec![PoolConfig {
        prefix: "n".to_owned(),
        hub: "n1".to_owned(),
        max: n.saturating_sub(1),
    }];
    master.member_bound = n;
    let Some(hub) = cfg.nodes.first().map(|m| HostPort::from(m.listen)) else {
        return vec![Arc::new(master)];
    };
    let workers = cfg.nodes.iter().skip(1).map(|me| {
        let incarnation = uuid::Uuid::new_v4();
        Arc::new(Config::joined(
            cfg.cluster.clone(),
            "n1",
            hub.clone(),
            me.clone(),
            n,
            incarnation,
        ))
    });
    std::iter::once(Arc::new(master)).chain(workers).collect()
}

/// Wait until `done` holds for every node's view, or the deadline passes.
async fn wait_all(
    nodes: &[NodeHandle],
    deadline: Instant,
    done: impl Fn(&nodecloud::node::MembershipView) -> bool,
) -> bool {
    for node in nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut rx = node.membership();
        let ok = tokio::time::timeout(left, rx.wait_for(|v| done(v)))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            return false;
        }
    }
    true
}

/// Frames and bytes sent on every link of every node, and the replication counters summed.
struct Traffic {
    frames: u64,
    bytes: u64,
    replication: Vec<(&'static str, u64)>,
}

fn traffic(nodes: &[NodeHandle]) -> Traffic {
    let mut t = Traffic {
        frames: 0,
        bytes: 0,
        replication: nodecloud::node::REPLICATION
            .iter()
            .map(|r| (*r, 0))
            .collect(),
    };
    for node in nodes {
        for l in node.link_stats() {
            t.frames += l.frames_out;
            t.bytes += l.bytes_out;
        }
        for (sum, (_, n)) in t.replication.iter_mut().zip(node.metrics().replication) {
            sum.1 += n;
        }
    }
    t
}

async fn stop(nodes: &[NodeHandle]) {
    cluster::stop(nodes).await;
}

/// Resident memory of this process (Linux; 0 elsewhere).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of this process in ms (Linux, 100 Hz clock ticks; 0 elsewhere).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `fields` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10
}

/// Status frames sent when every node announces once (see the module docs).
fn status_frames_per_interval(g: &Graph) -> u64 {
    let mut total = 0;
    for origin in g.nodes() {
        let direct: BTreeSet<&str> = g.neighbours(origin).collect();
        let mut seen = BTreeSet::from([origin]);
        // (node, the peer it got the status from)
        let mut queue: VecDeque<(&str, &str)> = direct.iter().map(|&p| (p, origin)).collect();
        total += direct.len() as u64;
        while let Some((at, via)) = queue.pop_front() {
            if !seen.insert(at) {
                continue; // a copy: dropped, not relayed
            }
            for next in g.neighbours(at) {
                if next != via && next != origin && !direct.contains(next) {
                    total += 1;
                    queue.push_back((next, at));
                }
            }
        }
    }
    total
}
