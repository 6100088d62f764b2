//! Real processes of the built `nodecloud` binary on loopback: one process per node, a whole
//! cluster in one process, kill -9 and restart, signals, and `check`.
//!
//! The test binds every port itself and the processes inherit the listeners (socket
//! activation), so no port is ever free for another test to take; a node that tried to bind
//! its configured address itself would fail, since the test holds it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod procs;
}

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::procs::{inherit, Proc};
use nodecloud::config::Config;
use nodecloud::testing::Ports;

const WAIT: Duration = Duration::from_secs(15);
/// heartbeat_interval_ms × failure_threshold in the test config.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(500);

/// A star config (master + 3 workers) on ports reserved in `ports`, written to a temp dir.
fn star_config(dir: &Path, ports: &mut Ports) -> PathBuf {
    let mut text = String::from(
        "[cluster]\nname = \"proc-test\"\ntopology = \"star\"\nsecret = \"process-test-secret-0123\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n",
    );
    for (name, role) in [
        ("master", "master"),
        ("worker-1", "worker"),
        ("worker-2", "worker"),
        ("worker-3", "worker"),
    ] {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"{}\"\n",
            ports.reserve()
        ));
    }
    let path = dir.join("star.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn four_processes_form_a_star_and_a_killed_worker_goes_down_then_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut master = Proc::start(&cfg, "master", &ports);
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| Proc::start(&cfg, &format!("worker-{i}"), &ports))
        .collect();
    for i in 1..=3 {
        master.expect_line(&[&format!("membership: worker-{i} up")], WAIT);
    }
    // Every worker learns of the others through the master's floods.
    workers[0].expect_line(&["membership: worker-2 up"], WAIT);
    workers[0].expect_line(&["membership: worker-3 up"], WAIT);

    let killed_at = Instant::now();
    let mut w2 = workers.remove(1);
    w2.child.kill().unwrap(); // SIGKILL: no bye
    let _ = w2.child.wait();
    master.expect_line(&["membership: worker-2 down"], WAIT);
    let took = killed_at.elapsed();
    assert!(
        took <= FAILURE_TIMEOUT + Duration::from_secs(1),
        "down after {took:?}"
    );
    workers[0].expect_line(&["membership: worker-2 down"], WAIT);

    let _w2 = Proc::start(&cfg, "worker-2", &ports);
    master.expect_line(&["membership: worker-2 up"], WAIT);
    workers[0].expect_line(&["membership: worker-2 up"], WAIT);
}

#[test]
fn workers_rejoin_after_the_master_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut master = Proc::start(&cfg, "master", &ports);
    let mut w1 = Proc::start(&cfg, "worker-1", &ports);
    master.expect_line(&["membership: worker-1 up"], WAIT);
    w1.expect_line(&["membership: master up"], WAIT);

    master.child.kill().unwrap();
    let _ = master.child.wait();
    w1.expect_line(&["membership: master down"], WAIT);

    let mut master = Proc::start(&cfg, "master", &ports);
    master.expect_line(&["membership: worker-1 up"], WAIT);
    w1.expect_line(&["membership: master up"], WAIT);
}

#[test]
fn sigterm_stops_a_node_cleanly_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut master = Proc::start(&cfg, "master", &ports);
    let mut w1 = Proc::start(&cfg, "worker-1", &ports);
    master.expect_line(&["membership: worker-1 up"], WAIT);
    w1.signal("TERM");
    let status = w1.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0));
    // It closed its link (a `bye`, or at least a clean close), so the master knows at once.
    master.expect_line(&["peer closed the", "worker-1"], WAIT);
    master.expect_line(&["membership: worker-1 down"], WAIT);
}

#[test]
fn a_whole_cluster_runs_in_one_process_and_exits_zero_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut all = Proc::start_cluster(&cfg, &ports);
    for i in 1..=3 {
        all.expect_line(
            &[&format!("membership: worker-{i} up"), "node=master"],
            WAIT,
        );
    }
    all.expect_line(&["membership: master up", "node=worker-3"], WAIT);
    let t = Instant::now();
    all.signal("INT");
    let status = all.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_whole_cluster_serving_an_api_and_a_proxy_exits_zero_on_sigterm() {
    // The shape of config/star.toml: the master serves the API and the proxy, the workers
    // advertise backends (nothing listens on them).
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let mut text = String::from(
        "[cluster]\nname = \"proc-test\"\ntopology = \"star\"\nsecret = \"process-test-secret-0123\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n",
    );
    text.push_str(&format!(
        "\n[[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{}\"\nservice = \"{}\"\n\
         api = \"{}\"\nproxy = \"{}\"\n",
        ports.reserve(),
        ports.reserve(),
        ports.reserve(),
        ports.reserve()
    ));
    for i in 1..=3 {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"worker-{i}\"\nlisten = \"{}\"\nservice = \"{}\"\n\
             http = \"127.0.0.1:{}\"\n",
            ports.reserve(),
            ports.reserve(),
            ports.reserve().port()
        ));
    }
    let cfg = dir.path().join("star.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut all = Proc::start_cluster(&cfg, &ports);
    all.expect_line(&["HTTP API serving"], WAIT);
    all.expect_line(&["HTTP proxy serving"], WAIT);
    for i in 1..=3 {
        all.expect_line(
            &[&format!("membership: worker-{i} up"), "node=master"],
            WAIT,
        );
    }
    let t = Instant::now();
    all.signal("TERM");
    let status = all.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_node_process_serves_on_the_listener_it_inherits() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let listen = Config::load(&cfg).unwrap().node("master").unwrap().listen;
    // The test holds `listen` all along: binding it in the child would fail.
    let mut master = Proc::start(&cfg, "master", &ports);
    master.expect_line(
        &[
            "peer listener inherited (socket activation)",
            &listen.to_string(),
        ],
        WAIT,
    );
    master.expect_line(&["node started", &format!("listen={listen}")], WAIT);
    let _w1 = Proc::start(&cfg, "worker-1", &ports);
    master.expect_line(&["membership: worker-1 up"], WAIT);
}

#[test]
fn an_inherited_socket_named_for_no_node_of_the_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let stray = ports.reserve();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
    cmd.arg("--config").arg(&cfg).args(["--node", "master"]);
    inherit(
        &mut cmd,
        vec![("worker-7.peer".to_owned(), ports.listener(stray).unwrap())],
    );
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"worker-7.peer\"") && err.contains("master"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_reported_with_the_node_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    // Hold a port first, then give it to the master: no other test can take it meanwhile.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let master_listen = text
        .split("listen = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let text = text.replacen(master_listen, &format!("127.0.0.1:{port}"), 1);
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .arg("--config")
        .arg(&cfg)
        .arg("--node")
        .arg("master")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("master") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[test]
fn check_prints_every_node_and_the_links_it_dials() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .args(["check", "--config", "config/star.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 nodes, 3 links"), "{text}");
    for w in ["worker-1", "worker-2", "worker-3"] {
        assert!(
            text.lines()
                .any(|l| l.contains(w) && l.contains("dials: master")),
            "{text}"
        );
    }
}

#[test]
fn check_names_the_file_line_and_field_of_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"x\"\ntopology = \"star\"\nsecret = \"0123456789abcdef0123\"\n\n\
         [[nodes]]\nname = \"m\"\nrole = \"master\"\nlisten = \"127.0.0.1:7000\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:10"), "names file and line: {err}");
    assert!(err.contains("colour"), "names the field: {err}");
}

#[test]
fn an_unknown_node_name_is_refused_with_the_known_names() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .args(["--config", "config/star.toml", "--node", "worker-9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker-9") && err.contains("worker-1"),
        "{err}"
    );
}
