//! Node processes for tests: the built `nodecloud` binary started on listeners the test holds
//! (socket activation), its log read line by line on a thread, every wait bounded. Nothing
//! supervises these but the test: dropping a [`Proc`] kills and reaps the process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nodecloud::config::Config;
use nodecloud::testing::Ports;

/// One running `nodecloud` process and the lines of its log.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, in order.
    pub seen: Vec<String>,
    unmatched: Vec<String>,
}

impl Proc {
    /// `nodecloud --config CONFIG --node NODE`, handed the listeners `ports` holds for it.
    pub fn start(config: &Path, node: &str, ports: &Ports) -> Proc {
        Proc::spawn(config, Some(node), sockets(config, Some(node), ports))
    }

    /// `nodecloud --config CONFIG`: every node of the file in one process, each handed its
    /// listeners from `ports` (named `NODE.peer` / `NODE.service`).
    pub fn start_cluster(config: &Path, ports: &Ports) -> Proc {
        Proc::spawn(config, None, sockets(config, None, ports))
    }

    /// `nodecloud --config CONFIG --node NODE` on the named listeners `sockets`.
    pub fn start_on(config: &Path, node: &str, sockets: Vec<(String, TcpListener)>) -> Proc {
        Proc::spawn(config, Some(node), sockets)
    }

    fn spawn(config: &Path, node: Option<&str>, sockets: Vec<(String, TcpListener)>) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodecloud"));
        cmd.arg("--config").arg(config);
        if let Some(n) = node {
            cmd.arg("--node").arg(n);
        }
        Proc::command(cmd, sockets)
    }

    /// `cmd` (the `nodecloud` binary with its arguments) run on the named listeners
    /// `sockets`, its log read as for every other process.
    pub fn command(mut cmd: Command, sockets: Vec<(String, TcpListener)>) -> Proc {
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        inherit(&mut cmd, sockets);
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

    /// Wait for a log line containing every one of `parts` that no earlier call matched.
    pub fn expect_line(&mut self, parts: &[&str], timeout: Duration) -> String {
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

    /// Read whatever the process logs during `window` (an observation window, for asserting
    /// that something does *not* happen), then return every line seen so far.
    pub fn observe(&mut self, window: Duration) -> &[String] {
        let deadline = Instant::now() + window;
        loop {
            let line = match self.lines.try_recv() {
                Ok(line) => line,
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.lines.recv_timeout(left) {
                        Ok(line) => line,
                        Err(_) => break,
                    }
                }
            };
            self.seen.push(line.clone());
            self.unmatched.push(line);
        }
        &self.seen
    }

    /// Every line the process logged until it exited (after [`Proc::wait_exit`]).
    pub fn drain(&mut self, timeout: Duration) -> &[String] {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    self.unmatched.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("log still open after {timeout:?}"),
            }
        }
        &self.seen
    }

    /// The incarnation the process logged at start (`incarnation=…` on `node started`).
    pub fn incarnation(&mut self, timeout: Duration) -> String {
        let line = self.expect_line(&["node started"], timeout);
        line.split("incarnation=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no incarnation in {line:?}"))
            .to_owned()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
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
        // A stopped process must be continued to die of anything but SIGKILL; SIGKILL is sent.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listeners `ports` holds for the node(s) a process runs, with their activation names
/// (`peer`/`service` for one node, `NODE.peer`/`NODE.service` for a whole cluster).
pub fn sockets(config: &Path, node: Option<&str>, ports: &Ports) -> Vec<(String, TcpListener)> {
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
        out.extend(bound.api.map(|l| (format!("{prefix}api"), l)));
        out.extend(bound.proxy.map(|l| (format!("{prefix}proxy"), l)));
    }
    out
}

/// Socket activation: the listeners become the child's fds 3, 4, … and are named in
/// LISTEN_FDNAMES (LISTEN_PID is left unset: the child's pid is not known before it starts).
pub fn inherit(cmd: &mut Command, sockets: Vec<(String, TcpListener)>) {
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
