//! Addresses in one process: a star on IPv6 loopback, and a master that peers reach through
//! its `advertise` address (a host name, on a port other than its `listen` port, in front of
//! which sits a forwarder standing in for NAT).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nodecloud::config::{Config, HostPort, NodeConfig, Role, TopologyKind};
use nodecloud::sockets::Bound;
use nodecloud::{cluster, testing, NodeHandle};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// Start `config`, the master on the listener `master` (bound by the test, so no other test
/// can take its port), and wait until every node sees every other.
async fn converged(config: Config, master: std::net::TcpListener) -> Vec<NodeHandle> {
    let bound = BTreeMap::from([(
        "master".to_owned(),
        Bound {
            peer: Some(master),
            service: None,
            api: None,
            proxy: None,
        },
    )]);
    let nodes = cluster::start_bound(Arc::new(config), None, bound)
        .await
        .expect("cluster starts");
    testing::wait_converged(&nodes, WAIT)
        .await
        .expect("membership converges");
    nodes
}

/// A star whose master listens at `master` and whose workers listen on port 0 (nobody dials
/// a worker in a star, so their ports need not be known).
fn star(master: SocketAddr, workers: usize) -> Config {
    let any_port = SocketAddr::new(master.ip(), 0);
    let mut nodes = vec![NodeConfig::new("master", Role::Master, master)];
    nodes.extend(
        (1..=workers).map(|i| NodeConfig::new(&format!("worker-{i}"), Role::Worker, any_port)),
    );
    Config::for_test(TopologyKind::Star, nodes)
}

#[actix_rt::test]
async fn a_star_on_ipv6_loopback_converges() {
    // Bound here and handed to the master: nobody else can take the port.
    let master = match std::net::TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: no IPv6 loopback on this machine ([::1]:0: {e})");
            return;
        }
    };
    let addr = master.local_addr().unwrap();
    let nodes = converged(star(addr, 2), master).await;
    let view = nodes[1].membership().borrow().clone();
    assert_eq!(
        view.members.len(),
        3,
        "{:?}",
        view.members.keys().collect::<Vec<_>>()
    );
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Accepts on `front` and pipes every connection to `back`, counting connections: what a NAT
/// port mapping does for the peers that dial the advertised address.
fn forward(front: TcpListener, back: SocketAddr) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(back).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    count
}

#[actix_rt::test]
async fn workers_dial_the_host_name_and_port_a_master_advertises() {
    let master = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = master.local_addr().unwrap();
    // Held for the whole test, so this port cannot be taken by anyone else.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let advertised = front.local_addr().unwrap().port();
    assert_ne!(advertised, listen.port());
    let through_front = forward(front, listen);
    let mut config = star(listen, 2);
    config.nodes[0].advertise = Some(HostPort::parse(&format!("localhost:{advertised}")).unwrap());
    let nodes = converged(config, master).await;
    // Each worker's link went through the advertised address, not straight to listen.
    assert!(
        through_front.load(Ordering::SeqCst) >= 2,
        "{} connections through the advertised port",
        through_front.load(Ordering::SeqCst)
    );
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Runs `nodecloud check` on `text`: (exit code, stdout, stderr).
fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodecloud"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

const CLUSTER: &str =
    "[cluster]\nname = \"c\"\ntopology = \"star\"\nsecret = \"check-test-secret-0123\"\n";

#[test]
fn check_prints_the_advertised_address_of_every_node() {
    let text = format!(
        "{CLUSTER}\n[[nodes]]\nname = \"m\"\nrole = \"master\"\nlisten = \"0.0.0.0:7601\"\n\
         advertise = \"m.example.org:17601\"\n\n[[nodes]]\nname = \"w\"\nlisten = \"[::1]:7602\"\n"
    );
    let (code, out, err) = check(&text);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(
            "m (master) listen 0.0.0.0:7601 advertise m.example.org:17601  dials: nothing"
        ),
        "{out}"
    );
    assert!(
        out.contains("w (worker) listen [::1]:7602 advertise [::1]:7602 (from listen)  dials: m"),
        "{out}"
    );
    assert_eq!(err, "", "no warning when every wildcard has advertise");
}

#[test]
fn check_warns_on_a_wildcard_listen_without_advertise_and_still_succeeds() {
    let text = format!(
        "{CLUSTER}\n[[nodes]]\nname = \"m\"\nrole = \"master\"\nlisten = \"[::]:7601\"\n\n\
         [[nodes]]\nname = \"w\"\nlisten = \"127.0.0.1:7602\"\n"
    );
    let (code, out, err) = check(&text);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("listen [::]:7601 advertise [::1]:7601 (from listen)"),
        "{out}"
    );
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with("warning: ")
            && warnings[0].contains(
                "cluster.toml:9:10: nodes[0].listen: wildcard address [::]:7601 without advertise"
            ),
        "{err}"
    );
}

#[actix_rt::test]
async fn an_application_attaches_via_a_wildcard_service_at_loopback() {
    // Both listeners bound here and handed over: no port race. The service one on the
    // wildcard, as the configuration says.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mut config = star(peer.local_addr().unwrap(), 0);
    config.nodes[0].service = Some(service.local_addr().unwrap());
    let config = Arc::new(config);
    let bound = BTreeMap::from([(
        "master".to_owned(),
        Bound {
            peer: Some(peer),
            service: Some(service),
            api: None,
            proxy: None,
        },
    )]);
    let nodes = cluster::start_bound(config.clone(), None, bound)
        .await
        .expect("cluster starts");
    // Dialling 0.0.0.0 literally is not portable; the client dials 127.0.0.1 instead.
    let client = tokio::time::timeout(
        WAIT,
        nodecloud::service::Client::connect_via(&config, "master", "wildcard-test"),
    )
    .await
    .expect("attached within the deadline")
    .expect("attached");
    client.close().await;
    for node in &nodes {
        node.shutdown().await;
    }
}
