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

mod common {
    pub mod netns;
}

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::netns::{missing_prerequisite, skip, Lab, Proc};

const WAIT: Duration = Duration::from_secs(20);
/// Every node binds this port; they are on different "machines", so it never clashes.
const PORT: u16 = 7601;

/// Node `name` of `config` in the lab's `i`th namespace.
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

#[test]
fn nodes_in_three_namespaces_listening_on_a_wildcard_link_up_through_their_advertised_addresses() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = mesh_config(dir.path());
    let lab = Lab::new(NAMES.len()).expect("build the namespaces");
    let mut procs: Vec<Proc> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| start_node(&lab, i, &config, name))
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
        procs.push(
            lab.spawn(lab.node_ns(i), env!("CARGO_BIN_EXE_nodecloud"), &args, &[])
                .unwrap(),
        );
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
