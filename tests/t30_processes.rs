//! Real processes of the built `nodecloud` binary on loopback: one process per node, a whole
//! cluster in one process, kill -9 and restart, signals, and `check`.
//!
//! The test binds every port itself and the processes inherit the listeners (socket
//! activation), so no port is ever free for another test to take; a node that tried to bind
//! its configured address itself would fail, since the test holds it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nodecloud::config::Config;
use nodecloud::testing::Ports;

const WAIT: Duration = Duration::from_secs(15);
/// heartbeat_interval_ms × failure_threshold in the test config.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(500);

/// One running `nodecloud` process and the lines of its log.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    unmatched: Vec<String>,
}

impl Proc {
    /// `nodecloud --config CONFIG [--node NODE]`, handed its nodes' listeners from `ports`
    /// (named `peer`/`service` for one node, `NODE.peer`/`NODE.service` for a whole cluster).
    fn start(config: &Path, node: Option<&str>, ports: &Ports) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
        cmd.arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = node {
            cmd.arg("--node").arg(n);
        }
        inherit(&mut cmd, sockets(config, node, ports));
        let mut child = cmd.spawn().expect("spawn nodecloud");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    /// Wait for a log line containing every one of `parts` that no earlier call matched
    /// (lines may arrive in any order).
    fn expect_line(&mut self, parts: &[&str], timeout: Duration) -> String {
        let hit = |line: &str| parts.iter().all(|p| line.contains(p));
        if let Some(i) = self.unmatched.iter().position(|l| hit(l)) {
            return self.unmatched.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if hit(&line) {
                        return line;
                    }
                    self.unmatched.push(line);
                }
                Err(_) => panic!(
                    "no line with {parts:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10)); // polling a pid: there is no event to await
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listeners `ports` holds for the node(s) a process runs, with their activation names.
fn sockets(config: &Path, node: Option<&str>, ports: &Ports) -> Vec<(String, TcpListener)> {
    let cfg = Config::load(config).unwrap();
    let mut out = Vec::new();
    for n in cfg
        .nodes
        .iter()
        .filter(|n| node.is_none_or(|o| o == n.name))
    {
        let prefix = match node {
            Some(_) => String::new(),
            None => format!("{}.", n.name),
        };
        let bound = ports.bound(n);
        out.extend(bound.peer.map(|l| (format!("{prefix}peer"), l)));
        out.extend(bound.service.map(|l| (format!("{prefix}service"), l)));
    }
    out
}

/// Socket activation: the listeners become the child's fds 3, 4, … and are named in
/// LISTEN_FDNAMES (LISTEN_PID is left unset: the child's pid is not known before it starts).
fn inherit(cmd: &mut Command, sockets: Vec<(String, TcpListener)>) {
    cmd.env_remove("LISTEN_PID");
    if sockets.is_empty() {
        cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
        return;
    }
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    cmd.env("LISTEN_FDS", sockets.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    let mappings = sockets
        .into_iter()
        .zip(3..)
        .map(|((_, l), child_fd)| FdMapping {
            parent_fd: l.into(),
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings).unwrap();
}

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
    let mut master = Proc::start(&cfg, Some("master"), &ports);
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| Proc::start(&cfg, Some(&format!("worker-{i}")), &ports))
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

    let _w2 = Proc::start(&cfg, Some("worker-2"), &ports);
    master.expect_line(&["membership: worker-2 up"], WAIT);
    workers[0].expect_line(&["membership: worker-2 up"], WAIT);
}

#[test]
fn workers_rejoin_after_the_master_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut master = Proc::start(&cfg, Some("master"), &ports);
    let mut w1 = Proc::start(&cfg, Some("worker-1"), &ports);
    master.expect_line(&["membership: worker-1 up"], WAIT);
    w1.expect_line(&["membership: master up"], WAIT);

    master.child.kill().unwrap();
    let _ = master.child.wait();
    w1.expect_line(&["membership: master down"], WAIT);

    let mut master = Proc::start(&cfg, Some("master"), &ports);
    master.expect_line(&["membership: worker-1 up"], WAIT);
    w1.expect_line(&["membership: master up"], WAIT);
}

#[test]
fn sigterm_stops_a_node_cleanly_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let mut master = Proc::start(&cfg, Some("master"), &ports);
    let mut w1 = Proc::start(&cfg, Some("worker-1"), &ports);
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
    let mut all = Proc::start(&cfg, None, &ports);
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
fn a_node_process_serves_on_the_listener_it_inherits() {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let cfg = star_config(dir.path(), &mut ports);
    let listen = Config::load(&cfg).unwrap().node("master").unwrap().listen;
    // The test holds `listen` all along: binding it in the child would fail.
    let mut master = Proc::start(&cfg, Some("master"), &ports);
    master.expect_line(
        &[
            "peer listener inherited (socket activation)",
            &listen.to_string(),
        ],
        WAIT,
    );
    master.expect_line(&["node started", &format!("listen={listen}")], WAIT);
    let _w1 = Proc::start(&cfg, Some("worker-1"), &ports);
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
