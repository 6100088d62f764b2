//! The machinery of the chaos tests, tried on its own: the namespace lab cuts a node's link
//! and restores it, cleans up after itself (on panic too), the fault-injecting forwarder's
//! delay shows in calls between two nodes linked through it, and a chaos run
//! (`common/chaos.rs`, what `examples/chaos.rs` prints) counts what it should.
//!
//! The namespace tests need root and `ip netns`. Without them a test prints why it is skipped,
//! unless the environment variable CI is set, where it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod chaos;
    pub mod netns;
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::chaos::{Launch, Network, Programs, Scenario};
use common::netns::{ip, missing_prerequisite, skip, Lab, Proc};
use nodecloud::testing::forwarder::{Faults, ForwarderHandle};
use nodecloud::{testing, Invocation, Request};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);
/// Every node binds this port; they are on different "machines", so it never clashes.
const PORT: u16 = 7601;

/// A star of `names` (the first is the master), one per namespace of a lab, heartbeat
/// `heartbeat_ms` × `threshold`.
fn star_config(dir: &Path, names: &[&str], heartbeat_ms: u64, threshold: u32) -> PathBuf {
    let mut text = format!(
        "[cluster]\nname = \"chaos-test\"\ntopology = \"star\"\nsecret = \"chaos-test-secret-0123\"\n\
         heartbeat_interval_ms = {heartbeat_ms}\nfailure_threshold = {threshold}\n",
    );
    for (i, name) in names.iter().enumerate() {
        let role = if i == 0 { "master" } else { "worker" };
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"0.0.0.0:{PORT}\"\n\
             advertise = \"{}:{PORT}\"\n",
            Lab::address(i)
        ));
    }
    let path = dir.join("star.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_node(lab: &Lab, i: usize, config: &Path, name: &str) -> Proc {
    let args = [
        "--config".to_owned(),
        config.to_str().unwrap().to_owned(),
        "--node".to_owned(),
        name.to_owned(),
    ];
    lab.spawn(lab.node_ns(i), env!("CARGO_BIN_EXE_nodecloud"), &args, &[])
        .unwrap()
}

#[test]
fn a_cut_longer_than_the_failure_timeout_takes_the_node_down_and_a_restore_brings_it_back_up() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let names = ["master", "worker-1"];
    // Failure timeout 100 ms × 5 = 0.5 s.
    let config = star_config(dir.path(), &names, 100, 5);
    let lab = Lab::new(names.len()).expect("build the namespaces");
    let mut master = start_node(&lab, 0, &config, "master");
    let mut worker = start_node(&lab, 1, &config, "worker-1");
    master.expect_line("membership: worker-1 up", WAIT);
    worker.expect_line("membership: master up", WAIT);

    lab.cut(1).unwrap();
    master.expect_line("membership: worker-1 down", WAIT);
    worker.expect_line("membership: master down", WAIT);

    lab.restore(1).unwrap();
    master
        .wait_lines("membership: worker-1 up", 2, WAIT)
        .unwrap();
    worker.wait_lines("membership: master up", 2, WAIT).unwrap();
    assert_eq!(master.count("membership: worker-1 down"), 1);
}

/// The lab's namespaces whose names start with `prefix`.
fn namespaces_named(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Whether process `pid` still exists (a zombie counts as gone: it runs nothing).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn a_lab_dropped_by_a_panic_kills_its_processes_then_deletes_its_namespaces() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let lab = Lab::new(2).expect("build the namespaces");
        let prefix = lab.bridge_ns().trim_end_matches("-br").to_owned();
        let sleeper = lab
            .spawn(lab.node_ns(1), "sleep", &["600".to_owned()], &[])
            .unwrap();
        tx.send((prefix, sleeper.id().unwrap())).unwrap();
        // The Proc is forgotten: only the lab can stop it now.
        std::mem::forget(sleeper);
        panic!("a test failing half-way");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let (prefix, pid) = rx.recv().unwrap();
    assert!(!running(pid), "process {pid} survived its lab");
    assert_eq!(
        namespaces_named(&format!("{prefix}-")),
        Vec::<String>::new()
    );
}

#[derive(Serialize, Deserialize, Debug)]
struct Echo(u64);
impl Request for Echo {
    const METHOD: &'static str = "chaos.echo";
    type Response = u64;
}

struct Echoer;
impl Actor for Echoer {
    type Context = Context<Self>;
}
impl Handler<Invocation<Echo>> for Echoer {
    type Result = Result<u64, String>;
    fn handle(&mut self, call: Invocation<Echo>, _: &mut Context<Self>) -> Self::Result {
        Ok(call.request.0)
    }
}

/// The fastest of `n` calls master → worker-1.
async fn best_rtt(master: &nodecloud::NodeHandle, n: u64) -> Duration {
    let mut best = Duration::MAX;
    for i in 0..n {
        let started = Instant::now();
        let back = master
            .call_timeout("worker-1", &Echo(i), WAIT)
            .await
            .unwrap();
        assert_eq!(back, i);
        best = best.min(started.elapsed());
    }
    best
}

#[actix_rt::test]
async fn the_forwarders_delay_shows_in_the_round_trip_of_calls_through_it() {
    let mut cluster = testing::star(1);
    let master_listen = cluster.config.nodes[0].listen;
    let fwd = ForwarderHandle::bind(
        "127.0.0.1:0".parse().unwrap(),
        master_listen,
        Faults::default(),
    )
    .await
    .unwrap();
    // The worker dials the master's advertised address: the forwarder.
    cluster.config.nodes[0].advertise = Some(fwd.local_addr().into());
    let nodes = cluster.start().await.expect("cluster starts");
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    let _echo = nodes[1].implement::<Echo>(Echoer.start().recipient());
    testing::wait_implemented(&nodes[0], Echo::METHOD, &["worker-1"], WAIT)
        .await
        .unwrap();
    assert_eq!(fwd.accepted(), 1, "the link goes through the forwarder");

    let direct = best_rtt(&nodes[0], 5).await;
    let delay = Duration::from_millis(40);
    fwd.set_faults(Faults {
        delay,
        ..Faults::default()
    });
    let delayed = best_rtt(&nodes[0], 5).await;
    assert!(
        delayed >= direct.max(2 * delay),
        "with {delay:?} each way a call took {delayed:?} (without: {direct:?})"
    );
    assert!(
        delayed < direct + 2 * delay + Duration::from_secs(1),
        "with {delay:?} each way a call took {delayed:?} (without: {direct:?})"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// The chaos run's programs: the built `nodecloud` for nodes; no forwarder process (faults
/// are tried on loopback, where the forwarders run in the test).
fn programs() -> Programs {
    Programs {
        node: Launch {
            program: env!("CARGO_BIN_EXE_nodecloud").to_owned(),
            args: Vec::new(),
        },
        forwarder: None,
    }
}

#[actix_rt::test]
async fn a_chaos_run_without_faults_counts_every_event_once_and_in_order() {
    let scenario = Scenario {
        network: Network::Loopback,
        flaps: 0,
        events: 600,
        rate: 2000,
        ..Scenario::default()
    };
    let report = common::chaos::run(&scenario, &programs()).await.unwrap();
    assert_eq!(
        (report.sent, report.received, report.lost),
        (600, 600, 0),
        "{report}"
    );
    assert_eq!((report.duplicated, report.reordered), (0, 0), "{report}");
    assert_eq!((report.downs, report.refused), (0, 0), "{report}");
}

/// 5 % of forwarded chunks stalled as a lost segment would be, and 20 ms each way, for 20 s:
/// every event arrives, once and in order, and nobody is declared down.
#[actix_rt::test]
async fn twenty_seconds_of_loss_and_delay_lose_nothing_and_take_nobody_down() {
    let scenario = Scenario {
        network: Network::Loopback,
        flaps: 0,
        events: 10_000,
        rate: 500,
        loss: 0.05,
        delay: Duration::from_millis(20),
        ..Scenario::default()
    };
    let report = common::chaos::run(&scenario, &programs()).await.unwrap();
    assert_eq!(
        (report.sent, report.received, report.lost),
        (10_000, 10_000, 0),
        "{report}"
    );
    assert_eq!((report.duplicated, report.reordered), (0, 0), "{report}");
    assert_eq!((report.downs, report.refused), (0, 0), "{report}");
}

#[actix_rt::test]
async fn a_chaos_run_counts_the_downs_of_a_cut_longer_than_the_failure_timeout() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let cut = Duration::from_millis(1500);
    let scenario = Scenario {
        network: Network::Namespaces,
        flaps: 1,
        events: 1000,
        rate: 500,
        cut: (cut, cut),
        gap: (Duration::from_millis(200), Duration::from_millis(200)),
        // Failure timeout 0.5 s: the cut is three times as long.
        heartbeat_ms: 100,
        threshold: 5,
        ..Scenario::default()
    };
    let report = common::chaos::run(&scenario, &programs()).await.unwrap();
    // The master declares worker-2 down, and worker-2 the master (at least).
    assert!(report.downs >= 2, "{report}");
    assert_eq!(report.sent, 1000, "{report}");
    assert_eq!(
        report.received - report.duplicated + report.lost,
        report.sent,
        "{report}"
    );
}

/// Resumable links: with a failure timeout (250 ms × 12 = 3 s) longer than any cut, 100 flaps
/// of 0.2–2 s of the subscriber's link, each after 0.2–1 s up, under broadcast and targeted
/// traffic, lose, repeat and reorder nothing, and take nobody down.
#[actix_rt::test]
async fn a_hundred_flaps_shorter_than_the_failure_timeout_lose_repeat_and_reorder_nothing() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let scenario = Scenario {
        network: Network::Namespaces,
        flaps: 100,
        events: 60_000,
        rate: 400,
        cut: (Duration::from_millis(200), Duration::from_millis(2000)),
        gap: (Duration::from_millis(200), Duration::from_millis(1000)),
        heartbeat_ms: 250,
        threshold: 12,
        link: 2,
        seed: 7,
        ..Scenario::default()
    };
    let report = common::chaos::run(&scenario, &programs()).await.unwrap();
    assert_eq!(report.flaps, 100, "{report}");
    assert!(report.down_lines.is_empty(), "{:#?}", report.down_lines);
    assert_eq!((report.sent, report.received), (60_000, 60_000), "{report}");
    assert_eq!(
        (report.lost, report.duplicated, report.reordered),
        (0, 0, 0),
        "{report}"
    );
    assert_eq!((report.downs, report.refused), (0, 0), "{report}");
}
