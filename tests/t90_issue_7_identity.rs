//! Issue 7, identity and freezes, with real processes on loopback: a second process claiming
//! a node that is up is refused (`duplicate_node`) and exits 1 while the original keeps
//! serving; a restart still replaces the old process; a node stopped (SIGSTOP) past the failure
//! timeout and continued keeps its applications attached and comes back with its incarnation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod procs;
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::procs::Proc;
use nodecloud::config::Config;
use nodecloud::service::{Client, Incoming};
use nodecloud::testing::Ports;

const WAIT: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_millis(100);
/// heartbeat_interval_ms × failure_threshold in the test config.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(500);

/// A star (master + 2 workers) on ports reserved in `ports`; worker-1 serves applications.
fn star_config(dir: &Path, ports: &mut Ports) -> PathBuf {
    let mut text = String::from(
        "[cluster]\nname = \"identity-test\"\ntopology = \"star\"\n\
         secret = \"identity-test-secret-0123\"\nheartbeat_interval_ms = 100\nfailure_threshold = 5\n",
    );
    for (name, role) in [
        ("master", "master"),
        ("worker-1", "worker"),
        ("worker-2", "worker"),
    ] {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"{}\"\n",
            ports.reserve()
        ));
        if name == "worker-1" {
            text.push_str(&format!("service = \"{}\"\n", ports.reserve()));
        }
    }
    let path = dir.join("star.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn count(lines: &[String], parts: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

#[test]
fn a_second_process_claiming_a_node_that_is_up_exits_1_and_the_original_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut master = Proc::start(&cfg, "master", &ports);
    let mut w1 = Proc::start(&cfg, "worker-1", &ports);
    let original = w1.incarnation(WAIT);
    master.expect_line(&["membership: worker-1 up", &original], WAIT);
    w1.expect_line(&["membership: master up"], WAIT);

    // --- a second worker-1 (as if on another machine: its own listeners)
    let (peer, service) = (ports.reserve(), ports.reserve());
    let mut second = Proc::start_on(
        &cfg,
        "worker-1",
        vec![
            ("peer".to_owned(), ports.listener(peer).unwrap()),
            ("service".to_owned(), ports.listener(service).unwrap()),
        ],
    );
    let status = second.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "the newcomer exits 1");
    let log = second.drain(WAIT).join("\n");
    let fatal = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line; log:\n{log}"));
    assert!(
        fatal.contains("duplicate_node")
            && fatal.contains("node worker-1")
            && fatal.contains("master refused"),
        "the exit message names the node and the peer that refused: {fatal}"
    );

    let warn = master.expect_line(&["duplicate_node", "worker-1"], WAIT);
    assert!(warn.contains("WARN"), "{warn}");
    // The original keeps its link: for 10 heartbeats nothing changes at the master or at it.
    let seen = master.observe(HEARTBEAT * 10).to_vec();
    assert_eq!(
        count(&seen, &["duplicate_node"]),
        1,
        "one WARN:\n{}",
        seen.join("\n")
    );
    assert_eq!(
        count(&seen, &["membership: worker-1"]),
        1,
        "only the first up"
    );
    assert_eq!(count(&seen, &["replaced by a newer link"]), 0);
    assert_eq!(count(&seen, &["closing link"]), 0);
    let w1_seen = w1.observe(Duration::ZERO).to_vec();
    assert_eq!(count(&w1_seen, &["membership: master down"]), 0);
    assert_eq!(count(&w1_seen, &["peer closed"]), 0);
    assert!(
        w1.child.try_wait().unwrap().is_none(),
        "the original runs on"
    );

    // --- a restart: the original dies, a new process takes the name
    w1.child.kill().unwrap(); // SIGKILL: no bye
    let _ = w1.child.wait();
    master.expect_line(&["membership: worker-1 down"], WAIT);
    let mut restarted = Proc::start(&cfg, "worker-1", &ports);
    let new = restarted.incarnation(WAIT);
    assert_ne!(new, original);
    master.expect_line(&["membership: worker-1 up", &new], WAIT);
    restarted.expect_line(&["membership: master up"], WAIT);
    assert!(restarted.child.try_wait().unwrap().is_none());
}

#[test]
fn a_node_stopped_past_the_failure_timeout_keeps_its_applications_when_continued() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let config = Config::load(&cfg).unwrap();
    let mut master = Proc::start(&cfg, "master", &ports);
    let mut w1 = Proc::start(&cfg, "worker-1", &ports);
    let incarnation = w1.incarnation(WAIT);
    master.expect_line(&["membership: worker-1 up", &incarnation], WAIT);
    w1.expect_line(&["membership: master up"], WAIT);

    let system = actix_rt::System::new();
    system.block_on(async {
        let mut app = Client::connect_via(&config, "worker-1", "frozen-app")
            .await
            .unwrap();
        app.subscribe("freeze.echo").await.unwrap();
        app.sync().await.unwrap();
        round_trip(&mut app, 1).await;

        // --- stop worker-1 until its peers have given up on it, and then some
        let stopped_at = Instant::now();
        w1.signal("STOP");
        master.expect_line(&["membership: worker-1 down"], WAIT);
        let frozen = FAILURE_TIMEOUT * 3;
        // The length of the freeze is the scenario, not a synchronisation.
        tokio::time::sleep(frozen.saturating_sub(stopped_at.elapsed())).await;
        w1.signal("CONT");

        // --- the application is still attached, over the same connection
        tokio::time::timeout(WAIT, app.sync())
            .await
            .expect("sync within bound")
            .expect("the node answers the application after it resumed");
        round_trip(&mut app, 2).await;
        // Peers see it back with the same incarnation.
        master.expect_line(&["membership: worker-1 up", &incarnation], WAIT);
        // The application stays attached for a while after (several failure timeouts).
        let settle = Instant::now() + FAILURE_TIMEOUT * 4;
        while Instant::now() < settle {
            tokio::time::timeout(WAIT, app.sync())
                .await
                .expect("sync within bound")
                .expect("still attached");
            while let Some(incoming) = app.try_next() {
                assert!(
                    !matches!(incoming, Incoming::Closed(_)),
                    "closed: {incoming:?}"
                );
            }
            tokio::time::sleep(HEARTBEAT).await; // pacing the probes, not waiting for an event
        }
        round_trip(&mut app, 3).await;
    });
    let seen = w1.observe(Duration::ZERO).to_vec();
    assert_eq!(
        count(&seen, &["closing application"]),
        0,
        "worker-1 closed its application:\n{}",
        seen.join("\n")
    );
    assert!(
        count(&seen, &["did not run for"]) >= 1,
        "worker-1 noticed its pause:\n{}",
        seen.join("\n")
    );
}

/// Publish `n` on a topic the application subscribes to and receive it back (bounded).
async fn round_trip(app: &mut Client, n: u64) {
    app.publish("freeze.echo", &n, None).await.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match app.next().await {
                Some(Incoming::Event { payload, .. }) => break payload,
                Some(Incoming::Closed(why)) => panic!("the node closed the application: {why}"),
                Some(_) => {}
                None => panic!("the application's stream ended"),
            }
        }
    })
    .await
    .expect("own event back within bound");
    // A CBOR unsigned integer below 24 is the one byte of its value.
    assert!(n < 24);
    assert_eq!(got.as_ref(), [n as u8].as_slice(), "event {n}");
}

// ---------------------------------------------------------------------------------------
// In-process: the claims a node admits and refuses, seen from a scripted peer

mod claims {
    use std::net::SocketAddr;
    use std::time::Duration;

    use nodecloud::testing::{self, TestCluster};
    use nodecloud::wire::{self, FrameCodec, HandshakeError, Identity, MAX_HANDSHAKE_FRAME_BYTES};
    use nodecloud::NodeHandle;
    use tokio::net::TcpStream;
    use tokio_util::codec::Framed;
    use uuid::Uuid;

    const WAIT: Duration = Duration::from_secs(10);

    type Link = Framed<TcpStream, FrameCodec>;

    fn claim(c: &TestCluster, node: &str, incarnation: Uuid) -> Identity {
        Identity {
            cluster: c.config.cluster.name.clone(),
            node: node.to_owned(),
            incarnation,
            secret: c.config.cluster.secret.as_bytes().to_vec(),
            welcome: Default::default(),
        }
    }

    async fn connect(to: SocketAddr) -> Link {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(to))
            .await
            .expect("connect within bound")
            .unwrap();
        Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES))
    }

    fn link_count(node: &NodeHandle, peer: &str) -> usize {
        node.link_stats().iter().filter(|l| l.peer == peer).count()
    }

    /// Poll `cond` until it holds (bounded): link tables have no event to await.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn another_incarnation_claiming_a_linked_name_is_refused_and_the_same_one_reconnects() {
        let c = testing::star(2);
        let master = c.start_node("master").await.unwrap();
        let listen = master.listen_addr();
        let first = Uuid::new_v4();

        let mut held = connect(listen).await;
        wire::dial(&mut held, &claim(&c, "worker-2", first), WAIT)
            .await
            .unwrap();
        eventually("the master links worker-2", || {
            link_count(&master, "worker-2") == 1
        })
        .await;

        // --- another process claims worker-2 while the first link is alive
        let mut second = connect(listen).await;
        match wire::dial(&mut second, &claim(&c, "worker-2", Uuid::new_v4()), WAIT).await {
            Err(HandshakeError::Refused { code, message }) => {
                assert_eq!(code, "duplicate_node");
                assert!(
                    message.contains("worker-2") && message.contains(&first.to_string()),
                    "{message}"
                );
            }
            other => panic!("expected duplicate_node, got {other:?}"),
        }
        assert_eq!(link_count(&master, "worker-2"), 1, "the held link stays");

        // --- the same incarnation reconnecting (its old link half-dead) is admitted
        let mut again = connect(listen).await;
        wire::dial(&mut again, &claim(&c, "worker-2", first), WAIT)
            .await
            .expect("the same incarnation is admitted");
        master.shutdown().await;
    }

    #[actix_rt::test]
    async fn a_node_refused_as_duplicate_by_a_peer_that_dialled_it_stops_and_names_the_peer() {
        let c = testing::star(1);
        let master = c.start_node("master").await.unwrap();
        let mut link = connect(master.listen_addr()).await;
        // The dialler holds a live link to another process named "master": it refuses this one.
        let refused = wire::dial_with(
            &mut link,
            &claim(&c, "worker-1", Uuid::new_v4()),
            WAIT,
            None,
            |p| {
                Err(HandshakeError::Duplicate(format!(
                    "node {:?} is already up",
                    p.node
                )))
            },
        )
        .await;
        assert!(
            matches!(refused, Err(HandshakeError::Duplicate(_))),
            "{refused:?}"
        );
        tokio::time::timeout(WAIT, master.stop_requested())
            .await
            .expect("the refused node stops");
        let reason = master.fatal().unwrap_or_default();
        assert!(
            reason.contains("node master")
                && reason.contains("duplicate_node")
                && reason.contains("refused"),
            "{reason}"
        );
        master.shutdown().await;
    }
}
