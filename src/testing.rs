//! Helpers for tests of nodecloud and of applications built on it: loopback configurations on
//! free ports, and waiting on membership with a deadline instead of sleeping.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::config::{Config, NodeConfig, Role, TopologyKind};
use crate::node::NodeHandle;

/// A loopback address whose port was free a moment ago (bound to port 0, then released).
///
/// # Panics
/// If the machine cannot bind a loopback socket at all.
#[allow(clippy::expect_used)]
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("loopback address")
}

/// A star: `master` plus `workers` workers named `worker-1`..., on free loopback ports.
pub fn star(workers: usize) -> Config {
    let mut nodes = vec![NodeConfig::new("master", Role::Master, free_addr())];
    nodes.extend(
        (1..=workers).map(|i| NodeConfig::new(&format!("worker-{i}"), Role::Worker, free_addr())),
    );
    Config::for_test(TopologyKind::Star, nodes)
}

/// Nodes `n1`..`nN` (all workers) for ring, mesh or custom topologies, on free loopback ports.
pub fn peers(topology: TopologyKind, n: usize) -> Config {
    let nodes = (1..=n)
        .map(|i| NodeConfig::new(&format!("n{i}"), Role::Worker, free_addr()))
        .collect();
    Config::for_test(topology, nodes)
}

/// Wait until `node` sees every name in `names` up.
///
/// # Errors
/// After `timeout`, with the names still missing.
pub async fn wait_up(node: &NodeHandle, names: &[&str], timeout: Duration) -> Result<(), String> {
    let mut rx = node.membership();
    let ok = tokio::time::timeout(timeout, rx.wait_for(|v| names.iter().all(|n| v.is_up(n))))
        .await
        .is_ok_and(|r| r.is_ok());
    match ok {
        true => Ok(()),
        false => {
            let view = node.membership().borrow().clone();
            let missing: Vec<&str> = names.iter().copied().filter(|n| !view.is_up(n)).collect();
            Err(format!(
                "{}: after {timeout:?} still not up: {missing:?}",
                node.name()
            ))
        }
    }
}

/// Wait until `name` is down in `node`'s view.
///
/// # Errors
/// After `timeout`, if it is still up.
pub async fn wait_down(node: &NodeHandle, name: &str, timeout: Duration) -> Result<(), String> {
    let mut rx = node.membership();
    let down = tokio::time::timeout(timeout, rx.wait_for(|v| !v.is_up(name)))
        .await
        .is_ok_and(|r| r.is_ok());
    if down {
        Ok(())
    } else {
        Err(format!(
            "{}: after {timeout:?} {name} is still up",
            node.name()
        ))
    }
}

/// Wait until every node sees every other node up.
///
/// # Errors
/// After `timeout`, naming what is missing where.
pub async fn wait_converged(nodes: &[NodeHandle], timeout: Duration) -> Result<(), String> {
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_owned()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for node in nodes {
        wait_up(node, &names, timeout).await?;
    }
    Ok(())
}

/// Wait until `node` sees `method` served by exactly the nodes in `by`.
///
/// # Errors
/// After `timeout`, naming who serves it then.
pub async fn wait_implemented(
    node: &NodeHandle,
    method: &str,
    by: &[&str],
    timeout: Duration,
) -> Result<(), String> {
    let serving = |v: &crate::node::MembershipView| -> Vec<String> {
        v.implementers(method).map(|m| m.name.clone()).collect()
    };
    let mut want: Vec<String> = by.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let mut rx = node.membership();
    let ok = tokio::time::timeout(timeout, rx.wait_for(|v| serving(v) == want))
        .await
        .is_ok_and(|r| r.is_ok());
    if ok {
        Ok(())
    } else {
        let now = serving(&node.membership().borrow());
        Err(format!(
            "{}: after {timeout:?} {method} is served by {now:?}, not {want:?}",
            node.name()
        ))
    }
}
