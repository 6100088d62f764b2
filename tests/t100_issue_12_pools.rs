//! Issue 12, dynamic members: a master declares a `[[pools]]` entry, and nodes no file declares
//! join it with `nodecloud --join` as processes of their own. A member serves a call and
//! receives a broadcast, leaves with `bye` and vanishes from the master's view; a name outside
//! every pool and a newcomer past the pool's `max` are refused, with the reason on both sides.
//! A member that dies is `down`, listed as such, and forgotten after `forget_after_ms`; it can
//! then join again under the same name, as a newcomer.
//!
//! Every port is bound by the test and inherited by the processes (socket activation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod procs;
}

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::procs::Proc;
use nodecloud::service::{Client, Endpoint, Incoming};
use nodecloud::testing::Ports;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "pool-test-secret-0123456789";
const SECRET_VAR: &str = "POOL_TEST_SECRET";

/// A star of one master (with a service listener) and one declared worker, and a pool
/// `member-` of at most one member on the master.
fn config(dir: &Path, ports: &mut Ports) -> (PathBuf, SocketAddr, SocketAddr) {
    config_with(dir, ports, "")
}

/// [`config`] with more `[cluster]` lines.
fn config_with(dir: &Path, ports: &mut Ports, cluster: &str) -> (PathBuf, SocketAddr, SocketAddr) {
    let (master, service, worker) = (ports.reserve(), ports.reserve(), ports.reserve());
    let text = format!(
        "[cluster]\nname = \"pool-test\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n{cluster}\
         \n[[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{master}\"\nservice = \"{service}\"\n\
         \n[[nodes]]\nname = \"worker-1\"\nlisten = \"{worker}\"\n\
         \n[[pools]]\nprefix = \"member-\"\nmaster = \"master\"\nmax = 1\n"
    );
    let path = dir.join("pool.toml");
    std::fs::write(&path, text).unwrap();
    (path, master, service)
}

/// `nodecloud --join MASTER --name NAME`, on a peer listener (and a service listener, if
/// given) the test holds.
fn join(master: SocketAddr, name: &str, service: Option<TcpListener>) -> Proc {
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
    cmd.arg("--join")
        .arg(master.to_string())
        .args([
            "--name",
            name,
            "--cluster",
            "pool-test",
            "--secret-env",
            SECRET_VAR,
        ])
        .env(SECRET_VAR, SECRET);
    let mut sockets = vec![("peer".to_owned(), peer)];
    if let Some(s) = service {
        cmd.arg("--service")
            .arg(s.local_addr().unwrap().to_string());
        sockets.push(("service".to_owned(), s));
    }
    Proc::command(cmd, sockets)
}

/// Wait for a log line off the runtime's thread (the applications' tasks keep running).
async fn expect(mut p: Proc, parts: &[&str]) -> (Proc, String) {
    let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let line = p.expect_line(&refs, WAIT);
        (p, line)
    })
    .await
    .unwrap()
}

/// The master's view of the cluster: (name, state) per member.
async fn view(app: &Client) -> Vec<(String, String)> {
    let view = tokio::time::timeout(WAIT, app.cluster())
        .await
        .unwrap()
        .unwrap();
    view.members
        .into_iter()
        .map(|m| (m.name, m.state))
        .collect()
}

/// `nodecloud ARGS` attached to the master through the file, to completion (bounded).
async fn cli(args: &[&str], cfg: &Path) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_nodecloud"));
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .args(["--via", "master"]);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap()
        .unwrap()
}

#[actix_rt::test]
async fn a_joined_member_serves_a_call_gets_a_broadcast_and_vanishes_after_bye() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let (cfg, master_addr, master_service) = config(dir.path(), &mut ports);
    let master = Proc::start(&cfg, "master", &ports);
    let _worker = Proc::start(&cfg, "worker-1", &ports);

    let member_service = TcpListener::bind("127.0.0.1:0").unwrap();
    let member_service_addr = member_service.local_addr().unwrap();
    let member = join(master_addr, "member-17", Some(member_service));
    let (master, _) = expect(master, &["membership: member-17 up"]).await;
    let (member, _) = expect(member, &["membership: worker-1 up"]).await;

    // An application on the member implements `pool.echo` and listens to `pool.news`.
    let mut app = Client::connect(
        &Endpoint::Tcp(member_service_addr),
        "pool-test",
        SECRET.as_bytes(),
        "echo-app",
    )
    .await
    .unwrap();
    app.implement("pool.echo").await.unwrap();
    app.subscribe("pool.news").await.unwrap();
    let (events, mut heard) = tokio::sync::mpsc::channel::<String>(16);
    actix_rt::spawn(async move {
        while let Some(incoming) = app.next().await {
            match incoming {
                Incoming::Request { id, payload, .. } => {
                    let _ = app.respond(id, Ok(payload)).await;
                }
                Incoming::Event { topic, from, .. } => {
                    let _ = events.send(format!("{topic} from {from}")).await;
                }
                _ => {}
            }
        }
    });
    let observer = Client::connect(
        &Endpoint::Tcp(master_service),
        "pool-test",
        SECRET.as_bytes(),
        "observer",
    )
    .await
    .unwrap();
    // The master sees the method once the member's status carries it: wait for it in its view.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = observer.cluster().await.unwrap();
        let serves = v
            .members
            .iter()
            .any(|m| m.name == "member-17" && m.methods.iter().any(|x| x == "pool.echo"));
        if serves {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member-17 never advertised pool.echo: {v:?}"
        );
        // Statuses come every heartbeat (100 ms): ask again at that pace.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        view(&observer)
            .await
            .contains(&("member-17".to_owned(), "up".to_owned())),
        "the master lists the pool member as up"
    );

    let called = cli(&["call", "pool.echo", r#"{"hello":"pool"}"#], &cfg).await;
    assert!(called.status.success(), "{called:?}");
    let out = String::from_utf8_lossy(&called.stdout);
    assert!(out.contains(r#""hello":"pool""#), "{out}");

    let published = cli(&["pub", "pool.news", r#"{"n":1}"#], &cfg).await;
    assert!(published.status.success(), "{published:?}");
    let got = tokio::time::timeout(WAIT, heard.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some("pool.news from master"));

    // Leaving with `bye`: the master forgets it at once.
    member.signal("TERM");
    let (mut member, _) = (member, ());
    let status = tokio::task::spawn_blocking(move || {
        let s = member.wait_exit(Duration::from_secs(5));
        (member, s)
    })
    .await
    .unwrap()
    .1;
    assert_eq!(status.code(), Some(0));
    let (_master, _) = expect(master, &["membership: member-17 forgotten"]).await;
    // The view follows the log line by one hop inside the master (its Router publishes it).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names: Vec<String> = view(&observer).await.into_iter().map(|(n, _)| n).collect();
        if !names.iter().any(|n| n == "member-17") {
            assert_eq!(names, vec!["master".to_owned(), "worker-1".to_owned()]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member-17 still listed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn names_outside_every_pool_and_members_past_max_are_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let (cfg, master_addr, _) = config(dir.path(), &mut ports);
    let master = Proc::start(&cfg, "master", &ports);

    let outsider = join(master_addr, "intruder-1", None);
    let (outsider, status) = exited(outsider).await;
    assert_eq!(status, Some(1));
    let why = "\"intruder-1\" is not in this cluster's configuration and matches no pool's prefix";
    assert!(
        outsider
            .seen
            .iter()
            .any(|l| l.contains("refused this node") && l.contains(why)),
        "{:?}",
        outsider.seen
    );
    let (master, _) = expect(master, &["handshake failed", why]).await;

    // The pool holds one member: a second is refused while the first is live.
    let first = join(master_addr, "member-1", None);
    let (master, _) = expect(master, &["membership: member-1 up"]).await;
    let second = join(master_addr, "member-2", None);
    let (second, status) = exited(second).await;
    assert_eq!(status, Some(1));
    let full = "pool \"member-\" of \"master\" is full: 1 of at most 1 members are live";
    assert!(
        second.seen.iter().any(|l| l.contains(full)),
        "{:?}",
        second.seen
    );
    let (_master, _) = expect(master, &["handshake failed", full]).await;
    drop(first);
}

#[actix_rt::test]
async fn a_member_that_dies_is_listed_down_then_forgotten_after_forget_after_ms() {
    const FORGET_AFTER: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let (cfg, master_addr, master_service) = config_with(
        dir.path(),
        &mut ports,
        &format!("forget_after_ms = {}\n", FORGET_AFTER.as_millis()),
    );
    let master = Proc::start(&cfg, "master", &ports);
    let member = join(master_addr, "member-9", None);
    let (master, _) = expect(master, &["membership: member-9 up"]).await;
    let observer = Client::connect(
        &Endpoint::Tcp(master_service),
        "pool-test",
        SECRET.as_bytes(),
        "observer",
    )
    .await
    .unwrap();

    member.signal("KILL");
    let (master, _) = expect(master, &["membership: member-9 down"]).await;
    let down_seen = tokio::time::Instant::now();
    assert!(
        view(&observer)
            .await
            .contains(&("member-9".to_owned(), "down".to_owned())),
        "a dead pool member is listed as down until it is forgotten"
    );
    let (master, _) = expect(master, &["membership: member-9 forgotten"]).await;
    // The down line was read after the member went down, so the wait seen here is at most
    // the real one; 200 ms covers reading the line late.
    assert!(
        down_seen.elapsed() + Duration::from_millis(200) >= FORGET_AFTER,
        "forgotten {:?} after it was seen down, before forget_after_ms",
        down_seen.elapsed()
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names: Vec<String> = view(&observer).await.into_iter().map(|(n, _)| n).collect();
        if !names.iter().any(|n| n == "member-9") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member-9 still listed after it was forgotten: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(member);

    // Forgotten whole: the same name joins again as a newcomer, and is up.
    let again = join(master_addr, "member-9", None);
    let (_master, line) = expect(master, &["membership: member-9 up"]).await;
    assert!(
        !line.contains("rejoined"),
        "a forgotten member comes back as a newcomer: {line}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !view(&observer)
        .await
        .contains(&("member-9".to_owned(), "up".to_owned()))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member-9 not listed up after it joined again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(again);
}

/// Wait for `p` to exit (bounded) and read its whole log.
async fn exited(mut p: Proc) -> (Proc, Option<i32>) {
    tokio::task::spawn_blocking(move || {
        let status = p.wait_exit(WAIT);
        p.drain(WAIT);
        (p, status.code())
    })
    .await
    .unwrap()
}
