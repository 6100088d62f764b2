//! Helpers for tests of nodecloud and of applications built on it: loopback clusters whose
//! ports are bound before anything runs and handed to the nodes (no test races another for a
//! port), and waiting on membership with a deadline instead of sleeping.
//!
//! [`Ports`] holds one listener per reserved address for as long as it lives, so a node that
//! is stopped and started again gets the same address back (a fresh clone of the held
//! socket), and nobody else can take it in between. The flip side: while a node is stopped,
//! connections to it wait in the held socket's backlog instead of being refused.
//!
//! [`forwarder`] puts a faulty network (delay, stalls, blackholes, cuts) between two nodes.

pub mod forwarder;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster;
use crate::config::{Config, NodeConfig, Role, TopologyKind};
use crate::node::{NodeHandle, StartError};
use crate::sockets::Bound;

/// Loopback listeners bound on port 0 and held, by the address each got.
#[derive(Debug, Default)]
pub struct Ports {
    held: BTreeMap<SocketAddr, TcpListener>,
}

impl Ports {
    pub fn new() -> Ports {
        Ports::default()
    }

    /// Bind a loopback listener on a port the system picks, hold it, and return its address.
    ///
    /// # Panics
    /// If the machine cannot bind a loopback socket at all.
    pub fn reserve(&mut self) -> SocketAddr {
        self.reserve_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`Ports::reserve`] on loopback address `ip` (any of 127.0.0.0/8 on Linux: many nodes
    /// of one machine, each on an address of its own).
    ///
    /// # Panics
    /// If `ip` cannot be bound.
    #[allow(clippy::expect_used)]
    pub fn reserve_on(&mut self, ip: std::net::IpAddr) -> SocketAddr {
        let l = TcpListener::bind((ip, 0)).expect("bind a loopback port");
        let addr = l.local_addr().expect("loopback address");
        self.held.insert(addr, l);
        addr
    }

    /// A new handle on the listener held for `addr` (the same socket: what it accepts, the
    /// holder of any handle may accept). `None` if `addr` was not reserved here.
    ///
    /// # Panics
    /// If the process is out of file descriptors.
    #[allow(clippy::expect_used)]
    pub fn listener(&self, addr: SocketAddr) -> Option<TcpListener> {
        self.held
            .get(&addr)
            .map(|l| l.try_clone().expect("duplicate a listening socket"))
    }

    /// The sockets reserved for `node`'s `listen` and `service` addresses.
    pub fn bound(&self, node: &NodeConfig) -> Bound {
        Bound {
            peer: self.listener(node.listen),
            service: node.service.and_then(|a| self.listener(a)),
            api: node.api.and_then(|a| self.listener(a)),
            proxy: node.proxy.and_then(|a| self.listener(a)),
        }
    }
}

/// A test configuration and the reserved sockets its nodes serve on. Change `config` before
/// starting (take new addresses from `ports`); start and restart nodes any number of times.
#[derive(Debug)]
pub struct TestCluster {
    pub config: Config,
    pub ports: Ports,
}

impl TestCluster {
    /// Build a configuration with addresses reserved by `make`.
    pub fn new(make: impl FnOnce(&mut Ports) -> Config) -> TestCluster {
        let mut ports = Ports::new();
        let config = make(&mut ports);
        TestCluster { config, ports }
    }

    /// `config` with every node's `listen` (and `service`, where it has one) replaced by a
    /// reserved loopback address: write configurations with any placeholder address.
    pub fn reserving(mut config: Config) -> TestCluster {
        let mut ports = Ports::new();
        for n in &mut config.nodes {
            n.listen = ports.reserve();
            if n.service.is_some() {
                n.service = Some(ports.reserve());
            }
            if n.api.is_some() {
                n.api = Some(ports.reserve());
            }
            if n.proxy.is_some() {
                n.proxy = Some(ports.reserve());
            }
        }
        TestCluster { config, ports }
    }

    /// The configuration, shared the way nodes take it.
    pub fn config(&self) -> Arc<Config> {
        Arc::new(self.config.clone())
    }

    /// The reserved sockets of `name` (empty for an unknown name).
    pub fn bound(&self, name: &str) -> Bound {
        self.config
            .node(name)
            .map(|n| self.ports.bound(n))
            .unwrap_or_default()
    }

    /// Every node, in declared order, on its reserved sockets.
    ///
    /// # Errors
    /// [`StartError`] if a node cannot start; those already started are shut down.
    pub async fn start(&self) -> Result<Vec<NodeHandle>, StartError> {
        let bound = self
            .config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), self.ports.bound(n)))
            .collect();
        cluster::start_bound(self.config(), None, bound).await
    }

    /// Node `name` alone on its reserved sockets (again after a shutdown: same addresses).
    ///
    /// # Errors
    /// [`StartError`] if it cannot start.
    pub async fn start_node(&self, name: &str) -> Result<NodeHandle, StartError> {
        cluster::start_node(self.config(), name, self.bound(name)).await
    }
}

/// A star: `master` plus `workers` workers named `worker-1`..., on reserved loopback ports.
pub fn star(workers: usize) -> TestCluster {
    TestCluster::new(|ports| {
        let mut nodes = vec![NodeConfig::new("master", Role::Master, ports.reserve())];
        nodes.extend(
            (1..=workers)
                .map(|i| NodeConfig::new(&format!("worker-{i}"), Role::Worker, ports.reserve())),
        );
        Config::for_test(TopologyKind::Star, nodes)
    })
}

/// Nodes `n1`..`nN` (all workers) for ring, mesh or custom topologies, on reserved loopback
/// ports.
pub fn peers(topology: TopologyKind, n: usize) -> TestCluster {
    TestCluster::new(|ports| {
        let nodes = (1..=n)
            .map(|i| NodeConfig::new(&format!("n{i}"), Role::Worker, ports.reserve()))
            .collect();
        Config::for_test(topology, nodes)
    })
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
