//! `nodecloud --join HOST:PORT --name NAME --cluster NAME`: run one node that no topology file
//! declares, as a member of a `[[pools]]` entry of the node at HOST:PORT (its hub: the pool's
//! master or parent).
//!
//! The node has no file to read the cluster's settings from, so it asks its hub: it dials it
//! once and runs the handshake, whose `welcome` carries the settings (heartbeat, failure
//! threshold, handshake deadline, forget time, member bound), says `bye`, and then starts with
//! them, under the incarnation it showed (its first real link is then the same process
//! reconnecting, never a second process claiming the name). A refusal (a name outside every
//! pool, a full pool, a wrong secret or cluster) ends the process with the hub's reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio_util::codec::Framed;
use uuid::Uuid;

use super::exit::CliError;
use crate::config::{
    ClusterConfig, Config, Host, HostPort, NodeConfig, ProxyConfig, Role, Secret, TopologyKind,
};
use crate::wire::{self, Bye, FrameCodec, HandshakeError, Identity, Message, PeerInfo};

/// How long the first contact with the hub may take (connect and handshake), before the
/// cluster's own handshake deadline is known.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// The shortest secret a node accepts (as in the topology file).
const MIN_SECRET_BYTES: usize = 16;

/// The options of `--join`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JoinArgs {
    /// Join the cluster whose pool hub (a pool's master or parent) is at HOST:PORT, as a node
    /// the topology file does not declare (a member of a `[[pools]]` entry). No --config.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["config", "node"], requires_all = ["name", "cluster"])]
    pub join: Option<String>,
    /// With --join: this node's name (it must start with a pool's prefix).
    #[arg(long, value_name = "NAME", requires = "join")]
    pub name: Option<String>,
    /// With --join: the cluster's name.
    #[arg(long, value_name = "NAME", requires = "join")]
    pub cluster: Option<String>,
    /// With --join: the environment variable holding the cluster secret
    /// [default: NODECLOUD_SECRET].
    #[arg(long, value_name = "VAR", requires = "join")]
    pub secret_env: Option<String>,
    /// With --join: where this node accepts peer links [default: 127.0.0.1:0]. Pool members
    /// dial their hub and are not dialled, so any free port will do.
    #[arg(long, value_name = "ADDR", requires = "join")]
    pub listen: Option<SocketAddr>,
    /// With --join: what peers would dial to reach this node [default: listen].
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    pub advertise: Option<String>,
    /// With --join: where applications attach (the service protocol over TCP).
    #[arg(long, value_name = "ADDR", requires = "join")]
    pub service: Option<SocketAddr>,
    /// With --join: the HTTP server beside this node, advertised as a proxy backend.
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    pub http: Option<String>,
}

/// What the hub said about itself and the cluster.
struct Hub {
    name: String,
    settings: wire::ClusterSettings,
    max_frame_bytes: usize,
}

/// Run `args` (whose `join` is set) until a signal, as [`super::run_nodes`] runs a file's node.
///
/// # Errors
/// [`CliError::Usage`] for bad options or a secret that is not set; [`CliError::Failed`]
/// when the hub refuses this node (the hub's reason in the message) or the node stops on a
/// fatal error; [`CliError::Down`] when the hub cannot be reached.
pub fn run(args: &JoinArgs) -> Result<(), CliError> {
    super::raise_open_files_limit();
    let usage = |m: String| CliError::Usage(m);
    let (Some(join), Some(name), Some(cluster)) = (&args.join, &args.name, &args.cluster) else {
        return Err(usage("--join needs --name and --cluster".into()));
    };
    let hub_addr = HostPort::parse(join).map_err(|e| usage(format!("--join {join}: {e}")))?;
    if !wire::valid_name(name) {
        return Err(usage(format!(
            "--name {name:?}: expected 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        )));
    }
    let var = args.secret_env.as_deref().unwrap_or("NODECLOUD_SECRET");
    let secret = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| usage(format!("--secret-env {var}: the variable is not set")))?
        .into_encoded_bytes();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(usage(format!(
            "--secret-env {var}: the secret is too short ({} bytes; at least {MIN_SECRET_BYTES})",
            secret.len()
        )));
    }
    let advertise = args
        .advertise
        .as_deref()
        .map(|a| HostPort::parse(a).map_err(|e| usage(format!("--advertise {a}: {e}"))))
        .transpose()?;
    let http = args
        .http
        .as_deref()
        .map(|a| HostPort::parse(a).map_err(|e| usage(format!("--http {a}: {e}"))))
        .transpose()?;
    let inherited = crate::sockets::Inherited::from_env()
        .map_err(|e| usage(format!("socket activation: {e}")))?;
    let bound = inherited
        .into_bound(std::slice::from_ref(name))
        .map_err(|e| usage(format!("socket activation: {e}")))?;

    let incarnation = Uuid::new_v4();
    let identity = Identity {
        cluster: cluster.clone(),
        node: name.clone(),
        incarnation,
        secret: secret.clone(),
        welcome: wire::Welcome::default(),
    };
    let system = actix_rt::System::new();
    let hub = system.block_on(ask_hub(&hub_addr, &identity))?;
    tracing::info!(node = %name, hub = %hub.name, address = %hub_addr,
        heartbeat_ms = hub.settings.heartbeat_interval_ms, "joining the cluster through {}", hub.name);

    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut me = NodeConfig::new(name, Role::Worker, listen);
    me.advertise = advertise;
    me.service = args.service;
    me.http = http;
    let s = hub.settings;
    let cluster = ClusterConfig {
        name: cluster.clone(),
        topology: TopologyKind::Star,
        secret: Secret::new(secret),
        service_key: None,
        heartbeat_interval: Duration::from_millis(s.heartbeat_interval_ms),
        failure_threshold: s.failure_threshold,
        max_frame_bytes: hub.max_frame_bytes,
        handshake_timeout: Duration::from_millis(s.handshake_timeout_ms),
        tls: None,
        api_token: None,
        proxy: ProxyConfig::default(),
        forget_after: Duration::from_millis(s.forget_after_ms),
        // The hub's, within the bounds a file may state (a hub that predates the key: 5 s).
        stats_interval: Duration::from_millis(
            s.stats_interval_ms.unwrap_or(5_000).clamp(10, 60_000),
        ),
    };
    let bound_max = usize::try_from(s.max_members).unwrap_or(usize::MAX);
    let config = Config::joined(cluster, &hub.name, hub_addr, me, bound_max, incarnation);
    system
        .block_on(crate::cluster::run(
            Arc::new(config),
            Some(name),
            bound,
            crate::cluster::signal(),
        ))
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// Dial the hub, run the handshake as `me`, read the settings from its `welcome`, and say
/// goodbye.
async fn ask_hub(addr: &HostPort, me: &Identity) -> Result<Hub, CliError> {
    let down = |e: String| CliError::Down(format!("cannot reach the hub at {addr}: {e}"));
    let connect = async {
        match &addr.host {
            Host::Ip(ip) => tokio::net::TcpStream::connect(SocketAddr::new(*ip, addr.port)).await,
            Host::Name(n) => tokio::net::TcpStream::connect((n.as_str(), addr.port)).await,
        }
    };
    let stream = tokio::time::timeout(JOIN_DEADLINE, connect)
        .await
        .map_err(|_| down(format!("no connection within {JOIN_DEADLINE:?}")))?
        .map_err(|e| down(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::new(wire::MAX_HANDSHAKE_FRAME_BYTES));
    let peer: PeerInfo = wire::dial(&mut framed, me, JOIN_DEADLINE)
        .await
        .map_err(|e| refused(addr, &e))?;
    let _ = framed
        .send(&Message::Bye(Bye {
            reason: "joining: settings read; linking for good".into(),
        }))
        .await;
    let settings = peer.welcome.cluster.ok_or_else(|| {
        CliError::Failed(format!(
            "the node at {addr} ({}) did not state the cluster's settings: is it a nodecloud version without pools?",
            peer.node
        ))
    })?;
    Ok(Hub {
        name: peer.node,
        settings,
        max_frame_bytes: peer
            .welcome
            .max_frame_bytes
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(1 << 20),
    })
}

/// The process's error for a failed first handshake: the hub's own words when it refused.
fn refused(addr: &HostPort, e: &HandshakeError) -> CliError {
    match e {
        HandshakeError::Refused { code, message } => CliError::Failed(format!(
            "the hub at {addr} refused this node: {code}: {message}"
        )),
        HandshakeError::Timeout(_) | HandshakeError::Closed => {
            CliError::Down(format!("the hub at {addr} did not answer: {e}"))
        }
        _ => CliError::Failed(format!("joining through {addr} failed: {e}")),
    }
}
