//! Running nodes from a configuration: every node of the file in one process (the local
//! cluster a newcomer starts with one command), or one node of it (one process per machine).
//! Each node gets its own arbiter; shutdown is two-phase: every node closes its links with a
//! `bye`, then the process exits. Sockets bound beforehand (socket activation, tests) are
//! handed to their nodes as [`Bound`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::node::{Host, Node, NodeHandle, StartError};
// `Node` starts the actor tree; `start_node` adds the HTTP API the runtime knows nothing of.
use crate::sockets::Bound;

/// How long a shutdown may take before the process exits anyway.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(1500);

/// Start `only` (or every node of `config`) on the sockets in `bound` (by node name; the rest
/// bound from the configuration), run until `shutdown` resolves or a node asks to stop (an
/// escalation or a fatal error), then shut every node down.
///
/// # Errors
/// [`StartError`] if a node cannot start (the nodes already started are shut down first), or
/// [`StartError::Fatal`] after a node stopped on a fatal error (`duplicate_node`), and
/// [`StartError::Degraded`] after a node escalated (its supervisor gave up restarting), so
/// the process exits non-zero and a service manager restarts it.
pub async fn run<S>(
    config: Arc<Config>,
    only: Option<&str>,
    bound: BTreeMap<String, Bound>,
    shutdown: S,
) -> Result<(), StartError>
where
    S: Future<Output = ()>,
{
    let handles = start_bound(config.clone(), only, bound).await?;
    tracing::info!(
        cluster = %config.cluster.name,
        topology = %config.cluster.topology,
        "{} node(s) running; Ctrl-C to stop",
        handles.len()
    );
    let escalated =
        futures_util::future::select_all(handles.iter().map(|h| Box::pin(h.stop_requested())));
    tokio::select! {
        () = shutdown => {}
        _ = escalated => {}
    }
    stop(&handles).await;
    if let Some(reason) = handles.iter().find_map(NodeHandle::fatal) {
        return Err(StartError::Fatal(reason));
    }
    let degraded: Vec<&str> = handles
        .iter()
        .filter(|h| h.is_degraded())
        .map(NodeHandle::name)
        .collect();
    match degraded.as_slice() {
        [] => Ok(()),
        names => Err(StartError::Degraded(names.join(", "))),
    }
}

/// Start `only` (or every node of `config`), each on its own arbiter.
///
/// # Errors
/// [`StartError`] if a node cannot start; the nodes already started are shut down first.
pub async fn start(config: Arc<Config>, only: Option<&str>) -> Result<Vec<NodeHandle>, StartError> {
    start_bound(config, only, BTreeMap::new()).await
}

/// [`start`], handing each node the sockets `bound` holds for it (see [`Node::start_bound`]).
///
/// # Errors
/// [`StartError`] if a node cannot start; the nodes already started are shut down first.
pub async fn start_bound(
    config: Arc<Config>,
    only: Option<&str>,
    mut bound: BTreeMap<String, Bound>,
) -> Result<Vec<NodeHandle>, StartError> {
    let names = names(&config, only);
    let mut handles = Vec::with_capacity(names.len());
    for name in &names {
        let sockets = bound.remove(name).unwrap_or_default();
        match start_node(config.clone(), name, sockets).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop(&handles).await;
                return Err(e);
            }
        }
    }
    Ok(handles)
}

/// Start node `name` on the sockets in `bound`, its HTTP API when it has `api` (on
/// `bound.api` if given) and its HTTP proxy when it has `proxy` (on `bound.proxy`): both run
/// on the node's thread and stop with the node.
///
/// # Errors
/// [`StartError`] if the node cannot start, or [`StartError::Api`] or [`StartError::Proxy`] if its API or proxy cannot (the
/// node is shut down again).
pub async fn start_node(
    config: Arc<Config>,
    name: &str,
    bound: Bound,
) -> Result<NodeHandle, StartError> {
    start_node_hosted(config, name, bound, Host::OwnArbiter).await
}

/// [`start_node`] on `host`: an arbiter of the node's own, or one shared with other nodes of
/// this process.
///
/// # Errors
/// As [`start_node`].
pub async fn start_node_hosted(
    config: Arc<Config>,
    name: &str,
    mut bound: Bound,
    host: Host,
) -> Result<NodeHandle, StartError> {
    let api = bound.api.take();
    let proxy = bound.proxy.take();
    let node = Node::start_hosted(config, name, bound, host).await?;
    if let Err(e) = crate::api::start_configured(&node, api).await {
        node.shutdown().await;
        return Err(StartError::Api {
            node: name.to_owned(),
            message: e.to_string(),
        });
    }
    if let Err(e) = crate::proxy::start_configured(&node, proxy).await {
        node.shutdown().await;
        return Err(StartError::Proxy {
            node: name.to_owned(),
            message: e.to_string(),
        });
    }
    Ok(node)
}

/// The nodes a process runs: `only`, or every node of `config` in declared order.
pub fn names(config: &Config, only: Option<&str>) -> Vec<String> {
    match only {
        Some(name) => vec![name.to_owned()],
        None => config.nodes.iter().map(|n| n.name.clone()).collect(),
    }
}

/// Shut nodes down concurrently, bounded by [`SHUTDOWN_DEADLINE`].
pub async fn stop(handles: &[NodeHandle]) {
    let all = futures_util::future::join_all(handles.iter().map(NodeHandle::shutdown));
    if tokio::time::timeout(SHUTDOWN_DEADLINE, all).await.is_err() {
        tracing::warn!("shutdown deadline passed; exiting with links still open");
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
