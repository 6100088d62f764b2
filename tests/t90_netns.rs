//! Real network namespaces: one `nodecloud --node` process per namespace, the namespaces
//! joined by veth pairs to a bridge, every node listening on the wildcard `0.0.0.0:7601` and
//! advertising its namespace's address. Nothing here touches the machine's own network: the
//! bridge lives in a namespace of its own, and 10.77.0.0/24 exists only inside them.
//!
//! The deployment files are tried the same way: `deploy/nodecloud.service`'s command line and
//! `deploy/cluster.toml`, one "machine" per namespace, the secret read from a credentials file.
//!
//! Needs root and `ip netns`. Without them the test prints why it is skipped, unless the
//! environment variable CI is set, where it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
/// Every node binds this port; they are on different "machines", so it never clashes.
const PORT: u16 = 7601;

/// Runs `ip ARGS`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    ip(&["netns", "list"]).err()
}

/// Namespaces `<prefix>-br` (holding the bridge) and `<prefix>-0..n`, each of the latter with
/// `eth0` at 10.77.0.(i+1)/24 on the bridge. Every namespace created is deleted on drop,
/// including after a failure half-way through building them.
struct Lab {
    namespaces: Vec<String>,
}

impl Lab {
    fn new(n: usize) -> Result<Lab, String> {
        // The pid keeps concurrent runs (and leftovers of a killed run) apart; the counter,
        // the tests of one run.
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let lab_no = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("nc{}-{lab_no}", std::process::id());
        let mut lab = Lab {
            namespaces: Vec::new(),
        };
        let bridge = format!("{prefix}-br");
        lab.add(&bridge)?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{prefix}-{i}");
            lab.add(&ns)?;
            let port = format!("v{i}");
            let addr = format!("{}/24", Lab::address(i));
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn add(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        Ok(())
    }

    /// The address of the `i`th node namespace.
    fn address(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// The name of the `i`th node namespace.
    fn node_ns(&self, i: usize) -> &str {
        // namespaces[0] is the bridge's.
        &self.namespaces[i + 1]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the interfaces in it: veths, bridge and all.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// One `nodecloud` process inside a namespace, and the lines of its log.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(ns: &str, config: &Path, node: &str) -> Proc {
        let args = [
            "--config".to_owned(),
            config.to_str().unwrap().to_owned(),
            "--node".to_owned(),
            node.to_owned(),
        ];
        Proc::spawn(ns, env!("CARGO_BIN_EXE_nodecloud"), &args)
    }

    /// `program ARGS…` inside namespace `ns`.
    fn spawn(ns: &str, program: &str, args: &[String]) -> Proc {
        // `ip netns exec` enters the namespace and execs the command: the child is the node.
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nodecloud in a namespace");
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
        }
    }

    /// Wait for a log line (seen before or arriving within `timeout`) containing `text`.
    fn expect_line(&mut self, text: &str, timeout: Duration) {
        if self.seen.iter().any(|l| l.contains(text)) {
            return;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(text);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

/// A mesh of the three nodes: every node dials or is dialled by both others, so every
/// advertised address is used. Each listens on the wildcard, as in a container.
fn mesh_config(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from(
        "[cluster]\nname = \"netns-test\"\ntopology = \"mesh\"\nsecret = \"netns-test-secret-0123\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n",
    );
    for (i, name) in NAMES.iter().enumerate() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nlisten = \"0.0.0.0:{PORT}\"\nadvertise = \"{}:{PORT}\"\n",
            Lab::address(i)
        ));
    }
    let path = dir.join("mesh.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Why the test cannot run here: fine on a developer's machine (it says so), a failure in CI.
fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the network namespace tests, but: {why}"
    );
    eprintln!("skipped: needs root and ip netns ({why})");
}

#[test]
fn nodes_in_three_namespaces_listening_on_a_wildcard_link_up_through_their_advertised_addresses() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = mesh_config(dir.path());
    // Declared before the processes, so it is dropped after them: kill, then delete.
    let lab = Lab::new(NAMES.len()).expect("build the namespaces");
    let mut procs: Vec<Proc> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| Proc::start(lab.node_ns(i), &config, name))
        .collect();
    for (i, (proc, me)) in procs.iter_mut().zip(NAMES).enumerate() {
        proc.expect_line(&format!("advertise={}:{PORT}", Lab::address(i)), WAIT);
        for other in NAMES.iter().filter(|n| **n != me) {
            // Had a node dialled 0.0.0.0 it would have reached itself, and the handshake
            // would have refused the wrong node: a peer up means advertise was dialled.
            proc.expect_line(&format!("membership: {other} up"), WAIT);
        }
    }
}

/// The repository's file `path`.
fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The unit's `ExecStart=` command line, split on spaces (it has no quoting).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_systemd_unit_runs_the_deploy_cluster_one_machine_per_namespace() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let unit = repo_file("deploy/nodecloud.service");
    let cluster = repo_file("deploy/cluster.toml");
    let argv = exec_start(&unit);
    assert_eq!(argv[0], "/usr/local/bin/nodecloud");
    // The credential the unit loads is the file the cluster reads its secret from.
    let credential = unit
        .lines()
        .find_map(|l| l.strip_prefix("LoadCredential="))
        .and_then(|c| c.split_once(':'))
        .map(|(name, _)| format!("/run/credentials/nodecloud.service/{name}"))
        .expect("the unit loads the secret as a credential");
    assert!(
        cluster.contains(&format!("secret_file = \"{credential}\"")),
        "deploy/cluster.toml reads {credential}"
    );

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "deploy-test-secret-0123456789\n").unwrap();
    let names = ["master", "worker-1", "worker-2"];
    let lab = Lab::new(names.len()).expect("build the namespaces");
    let mut procs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Each machine's copy of the file; here they share one filesystem, so the
        // credential and the socket get paths of their own.
        let mut text = cluster.replace(&credential, secret.to_str().unwrap());
        for (j, other) in names.iter().enumerate() {
            text = text.replace(
                &format!("\"{other}.example:7601\""),
                &format!("\"{}:7601\"", Lab::address(j)),
            );
        }
        let node_dir = dir.path().join(name);
        std::fs::create_dir(&node_dir).unwrap();
        let text = text.replace("/run/nodecloud/", &format!("{}/", node_dir.display()));
        let config = node_dir.join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| match a.as_str() {
                "/etc/nodecloud/cluster.toml" => config.to_str().unwrap().to_owned(),
                "${NODECLOUD_NODE}" => (*name).to_owned(),
                other => other.to_owned(),
            })
            .collect();
        procs.push(Proc::spawn(
            lab.node_ns(i),
            env!("CARGO_BIN_EXE_nodecloud"),
            &args,
        ));
    }
    // The unit asks for JSON logs: every line parses, and the cluster forms.
    procs[0].expect_line("membership: worker-1 up", WAIT);
    procs[0].expect_line("membership: worker-2 up", WAIT);
    procs[1].expect_line("membership: worker-2 up", WAIT);
    for p in &procs {
        for line in &p.seen {
            let record: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(record.is_ok(), "not a JSON log line: {line}");
        }
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must verify the systemd unit, but systemd-analyze is missing"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let unit = repo_file("deploy/nodecloud.service")
        .replace("/usr/local/bin/nodecloud", env!("CARGO_BIN_EXE_nodecloud"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodecloud.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Unknown keys are only warnings to systemd, but a unit with one is wrong.
    assert!(!err.contains("Unknown"), "{err}");
}
