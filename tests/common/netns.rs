//! A private network for tests and the chaos benchmark: one network namespace per node, each
//! joined by a veth pair to a bridge that lives in a namespace of its own, so nothing here
//! touches the machine's own network. Node `i` has `eth0` at 10.77.0.(i+1)/24; that subnet
//! exists only inside the namespaces.
//!
//! - [`Lab`] builds the namespaces, cuts and restores one node's link (the bridge-side end of
//!   its veth, as a pulled cable at the switch: the node's own interface keeps its address
//!   and routes, so TCP sees silence, not an error), and starts processes inside them.
//! - [`Proc`] is one such process (or one started outside the lab, [`Proc::start`]) with its
//!   stderr lines captured.
//! - **Cleanup on every exit path.** Every process started through a lab is registered with
//!   it; dropping the lab (after a panic too, as the stack unwinds) kills and reaps those
//!   processes, then any other process still inside its namespaces, and only then deletes
//!   the namespaces (deleting one deletes its interfaces). A run killed outright leaves its
//!   namespaces behind: the next lab deletes the empty ones whose creating process is gone.
//! - **Unique names.** Namespaces are `nc<pid>-<n>-…`: the pid keeps concurrent runs apart,
//!   the counter the labs of one run.
//!
//! Plain blocking code, owned by the test (or benchmark) that builds the lab; no actor
//! supervises it. Shared with `examples/chaos.rs` by path, so it holds no `unwrap`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `ip ARGS`; the error names the command and what it printed.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot build a lab, if it cannot (not root, or no `ip netns`).
pub fn missing_prerequisite() -> Option<String> {
    let uid = match Command::new("id").arg("-u").output() {
        Ok(out) => out,
        Err(e) => return Some(format!("cannot run id: {e}")),
    };
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    ip(&["netns", "list"]).err()
}

/// Why a test cannot run here: fine on a developer's machine (it says so), a failure in CI.
///
/// # Panics
/// When the environment variable CI is set.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the network namespace tests, but: {why}"
    );
    eprintln!("skipped: needs root and ip netns ({why})");
}

/// The processes started in a lab, shared between the lab and each [`Proc`]: whichever is
/// dropped first kills and reaps the child, and the lab's drop always comes before its
/// namespaces go.
type Children = Arc<Mutex<Vec<Arc<Mutex<Option<Child>>>>>>;

/// Namespaces `<prefix>-br` (holding the bridge) and `<prefix>-0..n`.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    nodes: usize,
    children: Children,
}

impl Lab {
    /// Build `n` node namespaces on one bridge. A failure half-way deletes what was built.
    ///
    /// # Errors
    /// The `ip` command that failed and what it printed.
    pub fn new(n: usize) -> Result<Lab, String> {
        static LABS: AtomicUsize = AtomicUsize::new(0);
        sweep_stale();
        let lab_no = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nc{}-{lab_no}", std::process::id());
        let mut lab = Lab {
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            nodes: n,
            children: Arc::default(),
        };
        let bridge = format!("{prefix}-br");
        lab.add(&bridge)?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{prefix}-{i}");
            lab.add(&ns)?;
            let port = Lab::bridge_port(i);
            let addr = format!("{}/24", Lab::address(i));
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "address", &Lab::mac(i)])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Fixed neighbours: a cut drops the node's carrier, which flushes its ARP cache, and
        // the kernel then re-resolves with one request a second, so a link would come back
        // up to a second after the cable. Pinned entries make a restore a restore at once:
        // the cut measures the nodes, not ARP's retransmission timer.
        for i in 0..n {
            let ns = format!("{prefix}-{i}");
            for j in (0..n).filter(|j| *j != i) {
                let (addr, mac) = (Lab::address(j), Lab::mac(j));
                ip(&[
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(lab)
    }

    fn add(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        Ok(())
    }

    /// The address of the `i`th node namespace.
    pub fn address(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// The hardware address of node `i`'s `eth0` (locally administered).
    fn mac(i: usize) -> String {
        format!("02:00:00:77:00:{:02x}", i + 1)
    }

    /// The bridge-side end of node `i`'s veth pair (in the bridge's namespace).
    fn bridge_port(i: usize) -> String {
        format!("v{i}")
    }

    /// The name of the bridge's namespace.
    pub fn bridge_ns(&self) -> &str {
        &self.namespaces[0]
    }

    /// The name of the `i`th node namespace.
    ///
    /// # Panics
    /// If `i` is not below the number of nodes the lab was built with.
    pub fn node_ns(&self, i: usize) -> &str {
        assert!(i < self.nodes, "the lab has {} node namespaces", self.nodes);
        // namespaces[0] is the bridge's.
        &self.namespaces[i + 1]
    }

    /// Cut node `i` off the bridge: its veth's bridge-side end goes down. Packets to and
    /// from it are dropped silently; its own interface, address and routes stay, so its TCP
    /// connections stay open and retransmit, as across a pulled cable.
    ///
    /// # Errors
    /// The `ip` command that failed.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        let port = Lab::bridge_port(i);
        ip(&["-n", self.bridge_ns(), "link", "set", &port, "down"]).map(|_| ())
    }

    /// Put node `i` back on the bridge after [`cut`](Self::cut).
    ///
    /// # Errors
    /// The `ip` command that failed.
    pub fn restore(&self, i: usize) -> Result<(), String> {
        let port = Lab::bridge_port(i);
        ip(&["-n", self.bridge_ns(), "link", "set", &port, "up"]).map(|_| ())
    }

    /// `program ARGS…` inside namespace `ns` with `RUST_LOG=info` (unless `envs` sets it),
    /// stdout discarded, stderr captured line by line. Killed when the [`Proc`] or the lab
    /// is dropped, whichever comes first.
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn spawn(
        &self,
        ns: &str,
        program: &str,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Result<Proc, String> {
        // `ip netns exec` enters the namespace and execs the command: the child is the
        // program itself, so killing it by its handle kills the program.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {program} in {ns}: {e}"))?;
        let proc = Proc::capture(child, program)?;
        if let Ok(mut children) = self.children.lock() {
            children.push(Arc::clone(&proc.child));
        }
        Ok(proc)
    }

    /// Kill every process this lab started, then anything else still inside its namespaces.
    fn kill_all(&self) {
        if let Ok(children) = self.children.lock() {
            for child in children.iter() {
                reap(child);
            }
        }
        for ns in &self.namespaces {
            kill_inside(ns);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_all();
        // Deleting a namespace deletes the interfaces in it: veths, bridge and all.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup of lab {}: {e}", self.prefix);
            }
        }
    }
}

/// Kill (SIGKILL) and reap the child, if it was not already.
fn reap(child: &Mutex<Option<Child>>) {
    if let Ok(mut slot) = child.lock() {
        if let Some(mut c) = slot.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pids of the processes inside namespace `ns`.
fn pids_inside(ns: &str) -> Vec<String> {
    ip(&["netns", "pids", ns])
        .map(|out| out.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Kill whatever still runs inside namespace `ns` (a grandchild of a killed process, say):
/// only processes the lab started can be there.
fn kill_inside(ns: &str) {
    for pid in pids_inside(ns) {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
}

/// Delete empty namespaces left by an earlier run that was killed before its lab dropped:
/// those named `nc<pid>-…` whose process no longer exists.
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = ns
            .strip_prefix("nc")
            .and_then(|rest| rest.split('-').next())
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid).exists();
        if !alive && pids_inside(ns).is_empty() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// One process started in a lab, and the lines of its stderr.
pub struct Proc {
    child: Arc<Mutex<Option<Child>>>,
    lines: mpsc::Receiver<String>,
    /// Every line received so far, in order.
    pub seen: Vec<String>,
}

impl Proc {
    /// Start `cmd` outside any lab (in this process's own namespace) with its stderr
    /// captured. Killed when dropped.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn start(mut cmd: Command, what: &str) -> Result<Proc, String> {
        let child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {what}: {e}"))?;
        Proc::capture(child, what)
    }

    fn capture(mut child: Child, program: &str) -> Result<Proc, String> {
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{program}: stderr was not captured"));
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child: Arc::new(Mutex::new(Some(child))),
            lines,
            seen: Vec::new(),
        })
    }

    /// The process id (`None` once killed).
    pub fn id(&self) -> Option<u32> {
        self.child
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Child::id))
    }

    /// Move every line that has arrived into [`seen`](Self::seen), without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// How many lines seen so far (after a [`drain`](Self::drain)) contain `text`.
    pub fn count(&mut self, text: &str) -> usize {
        self.drain();
        self.seen.iter().filter(|l| l.contains(text)).count()
    }

    /// Wait for a line (seen before or arriving within `timeout`) containing `text`.
    ///
    /// # Errors
    /// After `timeout`, with every line seen.
    pub fn wait_line(&mut self, text: &str, timeout: Duration) -> Result<(), String> {
        self.wait_lines(text, 1, timeout)
    }

    /// Wait until `n` lines containing `text` have been seen (before or within `timeout`).
    ///
    /// # Errors
    /// After `timeout`, with every line seen.
    pub fn wait_lines(&mut self, text: &str, n: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut hits = self.seen.iter().filter(|l| l.contains(text)).count();
        while hits < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    hits += usize::from(line.contains(text));
                    self.seen.push(line);
                }
                Err(_) => {
                    return Err(format!(
                        "{hits} of {n} lines with {text:?} within {timeout:?}; saw:\n{}",
                        self.seen.join("\n")
                    ))
                }
            }
        }
        Ok(())
    }

    /// Wait for a line containing `text`.
    ///
    /// # Panics
    /// After `timeout`, with every line seen.
    pub fn expect_line(&mut self, text: &str, timeout: Duration) {
        if let Err(e) = self.wait_line(text, timeout) {
            panic!("{e}");
        }
    }

    /// Send a signal (`"STOP"`, `"CONT"`, `"TERM"`…) to the process.
    ///
    /// # Errors
    /// If it is gone or `kill` fails.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.id().ok_or("the process was killed")?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .map_err(|e| format!("kill -{signal} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pid}: {status}"))
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        reap(&self.child);
    }
}
