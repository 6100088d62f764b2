//! The cluster topology file: parsing, secret resolution and validation.
//!
//! This module owns the TOML schema (`[cluster]`, `[[nodes]]`, `[[links]]`, `[[pools]]`), the typed
//! [`Config`] the runtime reads, and [`ConfigError`], whose every message names the file,
//! the line (and column), the offending field and what was expected. Validation is strict:
//! a config that loads is one the runtime can run without further checks.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::topology;

mod address;
mod secret_file;

pub use secret_file::{read_secret_file, MAX_SECRET_FILE_BYTES};

pub use address::{binds_overlap, local_dial, valid_host_name, AddressError, Host, HostPort};

/// A fully validated cluster configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a file path), used in messages.
    pub source: String,
    pub cluster: ClusterConfig,
    /// Nodes in declared order; presets (ring order, mesh pairs) depend on this order.
    pub nodes: Vec<NodeConfig>,
    /// Explicit links; only non-empty for [`TopologyKind::Custom`].
    pub links: Vec<LinkConfig>,
    /// Things that load but are probably wrong for a real deployment (a wildcard `listen`
    /// without `advertise`); `nodecloud check` prints them.
    pub warnings: Vec<Warning>,
    /// `[[pools]]`: undeclared nodes a declared node admits by name prefix.
    pub pools: Vec<PoolConfig>,
    /// Set for a node started with `--join` (no file): it tracks whatever members its master
    /// reports (the master checked their names), up to `member_bound`. It holds the
    /// incarnation the node showed when it read the settings from its master, and runs with:
    /// its first real link is then the same process reconnecting, never a `duplicate_node`.
    pub joined: Option<uuid::Uuid>,
    /// The most members (declared nodes and pool members) a node tracks: declared nodes plus
    /// every pool's `max`; for a joined node, what its master stated.
    pub member_bound: usize,
}

/// One `[[pools]]` entry: nodes named `prefix…`, not declared, that link to `hub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// What every member's name starts with (a member's name is longer than it).
    pub prefix: String,
    /// The declared node members link to (`master` or `parent` in the file).
    pub hub: String,
    /// How many members may be live at once; past it the hub refuses newcomers.
    pub max: usize,
}

impl PoolConfig {
    /// Whether an undeclared `name` is one of this pool's: it starts with the prefix and is
    /// longer.
    fn admits_undeclared(&self, name: &str) -> bool {
        name.len() > self.prefix.len() && name.starts_with(&self.prefix)
    }
}

/// Cluster-wide settings from `[cluster]`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub topology: TopologyKind,
    /// The shared secret every link authenticates with (already resolved from env/file).
    pub secret: Secret,
    /// Key for the local service protocol; `None` means use the cluster secret.
    pub service_key: Option<Secret>,
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a node is declared down.
    pub failure_threshold: u32,
    pub max_frame_bytes: usize,
    pub handshake_timeout: Duration,
    /// `[cluster.tls]`: peer links (and, unless `service_tls = false`, the service listener)
    /// run inside TLS. `None`: plaintext. The files are read when a node starts (see `tls`).
    pub tls: Option<TlsConfig>,
    /// The bearer token the HTTP API asks for (`api_token`, `api_token_env` or
    /// `api_token_file`). `None`: the API is open, so `api` must be a loopback address.
    /// Never resolved for an application reading the file (it does not serve the API).
    pub api_token: Option<Secret>,
    /// The bounds and timeouts of every node's HTTP proxy (`proxy_*` keys).
    pub proxy: ProxyConfig,
    /// How long a pool member that went down stays listed (as `down`) before it is forgotten
    /// (`forget_after_ms`; default 10 × the failure timeout). One that left with `bye` is
    /// forgotten at once by the node it said goodbye to.
    pub forget_after: Duration,
    /// How often a node looks at its load and memory for replication (`stats_interval_ms`,
    /// default 5 s); they are sent only when they moved past a threshold.
    pub stats_interval: Duration,
}

/// How a node's HTTP proxy (`proxy = "ADDR"`) bounds what it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The largest request body forwarded (`proxy_max_body_bytes`); larger ones get 413.
    pub max_body_bytes: u64,
    /// Requests forwarded at once (`proxy_max_requests`); past it, 503 with `Retry-After`.
    pub max_requests: usize,
    /// How long a connection to a backend may take (`proxy_connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// How long a backend may take to start its response (`proxy_response_timeout_ms`);
    /// past it, 504.
    pub response_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body_bytes: PROXY_MAX_BODY_BYTES.2 as u64,
            max_requests: PROXY_MAX_REQUESTS.2 as usize,
            connect_timeout: Duration::from_millis(PROXY_CONNECT_MS.2 as u64),
            response_timeout: Duration::from_millis(PROXY_RESPONSE_MS.2 as u64),
        }
    }
}

/// `[cluster.tls]`, paths resolved against the configuration file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA (PEM) every peer's certificate must chain to; applications verify nodes with it.
    pub ca: PathBuf,
    /// The certificate chain (PEM) of every node without `tls_cert`.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of every node without `tls_key`.
    pub key: Option<PathBuf>,
    /// Whether the service TCP listener speaks TLS too (default true); the Unix socket never
    /// does (it is local and owner-only).
    pub service_tls: bool,
}

/// Secret key material. `Debug` never prints the bytes, so configs can be logged safely.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The link preset a cluster uses (see `topology::plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyKind {
    Star,
    Ring,
    MasterRingSlave,
    Mesh,
    Tree,
    Custom,
}

impl TopologyKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [TopologyKind; 6] = [
        TopologyKind::Star,
        TopologyKind::Ring,
        TopologyKind::MasterRingSlave,
        TopologyKind::Mesh,
        TopologyKind::Tree,
        TopologyKind::Custom,
    ];

    /// The name used in TOML and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TopologyKind::Star => "star",
            TopologyKind::Ring => "ring",
            TopologyKind::MasterRingSlave => "master-ring-slave",
            TopologyKind::Mesh => "mesh",
            TopologyKind::Tree => "tree",
            TopologyKind::Custom => "custom",
        }
    }

    /// Parses the TOML name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node does in the cluster.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Master,
    #[default]
    Worker,
}

impl Role {
    /// The name used in TOML and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }

    /// Parses the TOML name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "master" => Some(Role::Master),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    /// Where this node accepts links from its peers: an IP literal, possibly a wildcard
    /// (`0.0.0.0`, `[::]`). Host names are refused here: a bind address names a local
    /// interface, and a name can resolve to several, or to none of this machine's.
    pub listen: SocketAddr,
    /// What peers dial to reach this node (a host name is resolved at each dial); `None`
    /// means `listen`. The port may differ from listen's (NAT, container port mapping).
    pub advertise: Option<HostPort>,
    /// Optional TCP endpoint for local services.
    pub service: Option<SocketAddr>,
    /// Optional Unix socket for local services.
    pub service_socket: Option<PathBuf>,
    /// Optional HTTP API endpoint.
    pub api: Option<SocketAddr>,
    /// The HTTP server of the application beside this node, advertised as an HTTP backend
    /// (proxies dial it as written: a host name is resolved at each connection).
    pub http: Option<HostPort>,
    /// Where this node serves the HTTP proxy that forwards to the cluster's backends.
    pub proxy: Option<SocketAddr>,
    /// The master this node joins (star, master-ring-slave).
    pub master: Option<String>,
    /// Masters tried in order when `master` is down (master-ring-slave).
    pub fallback_masters: Vec<String>,
    /// This node's parent (tree).
    pub parent: Option<String>,
    /// This node's own TLS certificate chain and key, overriding `[cluster.tls]`'s.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The local address this node dials its peers from (`None`: the one the system picks).
    /// For a host with several addresses where peers expect one, and for clusters of many
    /// nodes on one machine, each on a loopback address of its own, as they would be on
    /// machines of their own.
    pub dial_from: Option<IpAddr>,
}

impl NodeConfig {
    /// A node with every optional field empty.
    pub fn new(name: &str, role: Role, listen: SocketAddr) -> Self {
        NodeConfig {
            name: name.to_owned(),
            role,
            listen,
            advertise: None,
            service: None,
            service_socket: None,
            api: None,
            http: None,
            proxy: None,
            master: None,
            fallback_masters: Vec::new(),
            parent: None,
            tls_cert: None,
            tls_key: None,
            dial_from: None,
        }
    }

    /// What peers dial to reach this node: `advertise`, else `listen`, a wildcard listen
    /// being dialled at loopback (which only works for peers on the same machine; `check`
    /// warns about it).
    pub fn dial_address(&self) -> HostPort {
        self.advertise
            .clone()
            .unwrap_or_else(|| local_dial(self.listen).into())
    }
}

/// One `[[links]]` entry: `from` dials `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub from: String,
    pub to: String,
}

/// Where in a config file an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based; `None` when the parser could not say.
    pub line: Option<usize>,
    /// 1-based, counted in characters.
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// What is wrong, and where: the payload of [`ConfigError::Toml`] and
/// [`ConfigError::Invalid`] (boxed so `Result<_, ConfigError>` stays small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    pub at: Location,
    /// Dotted path of the offending field, e.g. `nodes[2].master`.
    pub field: String,
    pub problem: String,
    pub expected: String,
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}; expected {}",
            self.at, self.field, self.problem, self.expected
        )
    }
}

/// A rule of thumb a loadable config breaks; printed, never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub at: Location,
    /// Dotted path of the field concerned, e.g. `nodes[0].listen`.
    pub field: String,
    pub problem: String,
    /// What to change to silence it.
    pub advice: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}; {}",
            self.at, self.field, self.problem, self.advice
        )
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("{path}: cannot read config file: {source}; expected a readable UTF-8 TOML file")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// TOML syntax error, unknown or missing field, or a value of the wrong type.
    #[error("{0}")]
    Toml(Box<ErrorDetail>),
    /// The file is well-formed TOML but a value breaks a rule.
    #[error("{0}")]
    Invalid(Box<ErrorDetail>),
}

impl ConfigError {
    /// Where and what, for every error but I/O.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Toml(detail) | ConfigError::Invalid(detail) => Some(detail),
        }
    }
}

// Inclusive ranges for the numeric settings; the bounds keep timers and buffers sane
// (a 1 ms heartbeat would flood links, a 1 GiB frame would be a memory DoS).
const HEARTBEAT_MS: (i64, i64, i64) = (10, 60_000, 1_000);
const FAILURE_THRESHOLD: (i64, i64, i64) = (2, 100, 5);
const MAX_FRAME_BYTES: (i64, i64, i64) = (1024, 64 * 1024 * 1024, 1024 * 1024);
const PROXY_MAX_BODY_BYTES: (i64, i64, i64) = (0, 1 << 40, 8 * 1024 * 1024);
const PROXY_MAX_REQUESTS: (i64, i64, i64) = (1, 1_000_000, 1024);
const PROXY_CONNECT_MS: (i64, i64, i64) = (1, 600_000, 2_000);
const PROXY_RESPONSE_MS: (i64, i64, i64) = (1, 3_600_000, 30_000);
const HANDSHAKE_MS: (i64, i64, i64) = (10, 60_000, 5_000);
/// `forget_after_ms`; the default (0 here) means 10 × the failure timeout.
const FORGET_AFTER_MS: (i64, i64, i64) = (100, 86_400_000, 0);
const STATS_INTERVAL_MS: (i64, i64, i64) = (10, 60_000, 5_000);
/// `[[pools]] max`: a pool's members are tracked by every node, so the bound is the cost.
pub const MAX_POOL_MEMBERS: usize = 10_000;
/// How many `[[pools]]` a file may declare.
pub const MAX_POOLS: usize = 16;
/// Shorter secrets are too easy to guess for an HMAC key.
const MIN_SECRET_BYTES: usize = 16;
const NAME_RULE: &str = "1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'";

impl Config {
    /// Reads and validates a config file; `secret_file` paths are relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_as(path, Purpose::Node)
    }

    fn load_as(path: &Path, purpose: Purpose) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
            path: source.clone(),
            source: err,
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        Config::parse_for(&text, &source, base_dir, purpose)
    }

    /// Parses and validates config text. `source` names it in messages; relative
    /// `secret_file` / `service_key_file` paths are resolved against `base_dir`.
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::parse_for(text, source, base_dir, Purpose::Node)
    }

    /// Like [`Config::load`], for an application attaching to one of the file's nodes: when
    /// the file gives a service key, the cluster secret is not read (it may be unset where the
    /// application runs) and `cluster.secret` holds the service key.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_for_application(path: &Path) -> Result<Config, ConfigError> {
        Config::load_as(path, Purpose::Application)
    }

    fn parse_for(
        text: &str,
        source: &str,
        base_dir: &Path,
        purpose: Purpose,
    ) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, source };
        let raw: RawFile = toml::from_str(text).map_err(|err| ctx.toml_error(&err))?;
        Validator::new(&ctx, &raw, base_dir, purpose).run()
    }

    /// The node called `name`, if declared.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Whether `name` may be a member of this cluster: declared, or an undeclared name of a
    /// pool (see [`Config::pool_of`]); for a joined node, any valid name (its master checked
    /// it). How many pool members are live at once is bounded where they are admitted.
    pub fn admits(&self, name: &str) -> bool {
        self.node(name).is_some() || self.admits_undeclared(name)
    }

    /// [`Config::admits`] for a name the caller knows is not declared (it looked it up in
    /// an index of its own): no scan of the declared nodes, which costs a thousand string
    /// comparisons per name in a cluster of a thousand.
    pub fn admits_undeclared(&self, name: &str) -> bool {
        valid_name(name)
            && (self.joined.is_some() || self.pools.iter().any(|p| p.admits_undeclared(name)))
    }

    /// The pool an undeclared `name` belongs to: the one whose prefix it starts with (and is
    /// longer than). `None` for declared names and names outside every pool.
    pub fn pool_of(&self, name: &str) -> Option<&PoolConfig> {
        if !valid_name(name) || self.node(name).is_some() {
            return None;
        }
        self.pools.iter().find(|p| p.admits_undeclared(name))
    }

    /// The configuration of a node started with `--join`: the cluster's settings as its
    /// master stated them in the handshake, two nodes (the master, dialled at `master_addr`,
    /// and `me`, which links to it) in a star, and membership open to the names the master
    /// reports, up to `member_bound`.
    pub fn joined(
        cluster: ClusterConfig,
        master: &str,
        master_addr: HostPort,
        mut me: NodeConfig,
        member_bound: usize,
        incarnation: uuid::Uuid,
    ) -> Config {
        // The master's own listen address is never bound here; only its dial address counts.
        let mut hub = NodeConfig::new(master, Role::Master, SocketAddr::from(([0, 0, 0, 0], 0)));
        hub.advertise = Some(master_addr);
        me.role = Role::Worker;
        me.master = Some(master.to_owned());
        Config {
            source: "--join".to_owned(),
            cluster: ClusterConfig {
                topology: TopologyKind::Star,
                ..cluster
            },
            nodes: vec![hub, me],
            links: Vec::new(),
            warnings: Vec::new(),
            pools: Vec::new(),
            joined: Some(incarnation),
            member_bound: member_bound.max(2),
        }
    }

    /// A small unvalidated config for tests: fast heartbeats, no links.
    pub fn for_test(topology: TopologyKind, nodes: Vec<NodeConfig>) -> Config {
        Config {
            source: "<test>".to_owned(),
            cluster: ClusterConfig {
                name: "test".to_owned(),
                topology,
                secret: Secret::new(b"test-secret-0123456789".to_vec()),
                service_key: None,
                heartbeat_interval: Duration::from_millis(100),
                failure_threshold: 5,
                max_frame_bytes: 1024 * 1024,
                handshake_timeout: Duration::from_secs(2),
                tls: None,
                api_token: None,
                proxy: ProxyConfig::default(),
                forget_after: Duration::from_secs(5),
                stats_interval: Duration::from_secs(5),
            },
            member_bound: nodes.len(),
            nodes,
            links: Vec::new(),
            warnings: Vec::new(),
            pools: Vec::new(),
            joined: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw deserialization. Strings are kept as strings (not enums or addresses) so that
// validation, not serde, reports bad values: it knows the field and what to expect.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
    #[serde(default)]
    links: Vec<Spanned<RawLink>>,
    #[serde(default)]
    pools: Vec<Spanned<RawPool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    prefix: Spanned<String>,
    master: Option<Spanned<String>>,
    parent: Option<Spanned<String>>,
    max: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    topology: Spanned<String>,
    secret: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    service_key: Option<Spanned<String>>,
    service_key_env: Option<Spanned<String>>,
    service_key_file: Option<Spanned<String>>,
    heartbeat_interval_ms: Option<Spanned<i64>>,
    failure_threshold: Option<Spanned<i64>>,
    max_frame_bytes: Option<Spanned<i64>>,
    handshake_timeout_ms: Option<Spanned<i64>>,
    tls: Option<Spanned<RawTls>>,
    api_token: Option<Spanned<String>>,
    api_token_env: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    proxy_max_body_bytes: Option<Spanned<i64>>,
    proxy_max_requests: Option<Spanned<i64>>,
    proxy_connect_timeout_ms: Option<Spanned<i64>>,
    proxy_response_timeout_ms: Option<Spanned<i64>>,
    forget_after_ms: Option<Spanned<i64>>,
    stats_interval_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Spanned<String>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    service_tls: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    role: Option<Spanned<String>>,
    listen: Spanned<String>,
    advertise: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
    service_socket: Option<Spanned<String>>,
    api: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    master: Option<Spanned<String>>,
    #[serde(default)]
    fallback_masters: Vec<Spanned<String>>,
    parent: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    dial_from: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    from: Spanned<String>,
    to: Spanned<String>,
}

// ---------------------------------------------------------------------------------------
// Error construction: byte spans to line/column, and toml errors to field paths.

/// The text being parsed, so spans can be turned into locations.
struct Ctx<'a> {
    text: &'a str,
    source: &'a str,
}

impl Ctx<'_> {
    fn location(&self, offset: Option<usize>) -> Location {
        let (line, column) = match offset {
            Some(offset) => {
                let (line, column) = line_col(self.text, offset);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Location {
            file: self.source.to_owned(),
            line,
            column,
        }
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn invalid(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        problem: impl Into<String>,
        expected: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid(Box::new(ErrorDetail {
            at: self.location(Some(span.start)),
            field: field.into(),
            problem: problem.into(),
            expected: expected.into(),
        }))
    }

    /// Translates a toml/serde error into our format. toml reports a span and a message
    /// but not the key path, so the path is recovered from the text around the span.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let parsed = ParsedMessage::from(err.message());
        let field = match &span {
            Some(span) => field_path(self.text, span, &parsed.kind),
            None => parsed.kind.name().unwrap_or("document").to_owned(),
        };
        ConfigError::Toml(Box::new(ErrorDetail {
            at: self.location(span.map(|s| s.start)),
            field,
            problem: parsed.problem,
            expected: parsed.expected,
        }))
    }
}

/// 1-based line and character column of a byte offset (clamped to the text).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let before = bytes.get(..offset).unwrap_or(bytes);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = before
        .get(line_start..)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

/// What a serde message says about the field it concerns.
enum FieldKind {
    Unknown(String),
    Missing(String),
    Other,
}

impl FieldKind {
    fn name(&self) -> Option<&str> {
        match self {
            FieldKind::Unknown(name) | FieldKind::Missing(name) => Some(name),
            FieldKind::Other => None,
        }
    }
}

struct ParsedMessage {
    kind: FieldKind,
    problem: String,
    expected: String,
}

impl From<&str> for ParsedMessage {
    fn from(message: &str) -> Self {
        let message = message.trim();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
            let tail = tail.trim_start_matches(',').trim();
            let expected = match tail.strip_prefix("expected ") {
                Some(list) => list.replace('`', ""),
                None => "no fields here".to_owned(),
            };
            return ParsedMessage {
                kind: FieldKind::Unknown(name.to_owned()),
                problem: "unknown field".to_owned(),
                expected,
            };
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            return ParsedMessage {
                kind: FieldKind::Missing(name.to_owned()),
                problem: "missing required field".to_owned(),
                expected: format!("`{name} = ...` in this table"),
            };
        }
        // Serde type errors read "invalid type: X, expected Y"; TOML syntax errors put an
        // "expected ..." line after the problem. Either way, split the two halves.
        let (problem, expected) =
            if let Some((problem, expected)) = message.rsplit_once(", expected ") {
                (problem.to_owned(), expected.to_owned())
            } else {
                let mut problem = Vec::new();
                let mut expected = None;
                for line in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    match line.strip_prefix("expected ") {
                        Some(rest) if expected.is_none() => expected = Some(rest.to_owned()),
                        _ => problem.push(line),
                    }
                }
                let expected = expected.unwrap_or_else(|| "valid TOML for this value".to_owned());
                (problem.join(": "), expected)
            };
        // Say it in TOML terms rather than Rust/serde ones.
        let expected = match expected.as_str() {
            "i64" => "an integer".to_owned(),
            "a sequence" => "an array".to_owned(),
            e if e.starts_with("struct ") => "a table".to_owned(),
            e => e.to_owned(),
        };
        let problem = if problem.is_empty() {
            "invalid TOML syntax".to_owned()
        } else {
            problem
        };
        ParsedMessage {
            kind: FieldKind::Other,
            problem,
            expected,
        }
    }
}

/// Best-effort dotted path (`nodes[2].listen`) of the field at `span`, found by scanning
/// the table headers before it. Only used for messages, so imperfect guesses in exotic
/// layouts (inline arrays of tables, multi-line strings) are acceptable.
fn field_path(text: &str, span: &Range<usize>, kind: &FieldKind) -> String {
    // serde reports a missing top-level field with an empty span at the very start.
    if span.start == 0 && span.end == 0 {
        return kind.name().unwrap_or("document").to_owned();
    }
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    // The key of a multi-line array still open above the current line.
    let mut open_array: Option<&str> = None;
    let mut current: Option<(usize, &str)> = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if line_start > span.start {
            break;
        }
        if let Some((_, prev)) = current {
            open_array = match (header(prev), key_value(prev)) {
                (Some(_), _) => None,
                (None, Some((key, value))) => {
                    let value = value.trim_start();
                    (value.starts_with('[') && !value.contains(']')).then_some(key)
                }
                (None, None) if prev.trim_start().starts_with(']') => None,
                (None, None) => open_array,
            };
        }
        if let Some((is_array, name)) = header(line) {
            table = if is_array {
                let count = counts.entry(name.clone()).or_insert(0);
                *count += 1;
                format!("{name}[{}]", *count - 1)
            } else {
                name
            };
        }
        current = Some((line_start, line));
        line_start += line.len();
    }
    let Some((line_start, line)) = current else {
        return kind.name().unwrap_or("document").to_owned();
    };
    if let Some((_, name)) = header(line) {
        return match kind {
            // The header itself names the unknown (or mistyped) table.
            FieldKind::Unknown(_) | FieldKind::Other => name,
            FieldKind::Missing(field) => join(&[&table, field]),
        };
    }
    // A `key = value` line: if the span is inside the value, the error is about the key
    // (a type error) or about a field of an inline table assigned to the key.
    let (key, in_value) = match key_value(line) {
        Some((key, value)) => (key, span.start >= line_start + line.len() - value.len()),
        None => (open_array.unwrap_or(""), open_array.is_some()),
    };
    match kind {
        FieldKind::Unknown(field) | FieldKind::Missing(field) if in_value => {
            join(&[&table, key, field])
        }
        FieldKind::Unknown(field) | FieldKind::Missing(field) => join(&[&table, field]),
        FieldKind::Other => join(&[&table, key]),
    }
}

/// `key = value` → `Some((key, value))` with quotes stripped from the key; `None` for
/// comments and lines without `=`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    Some((key.trim().trim_matches(|c| c == '"' || c == '\''), value))
}

/// `[name]` → `(false, "name")`, `[[name]]` → `(true, "name")`; `None` for other lines.
fn header(line: &str) -> Option<(bool, String)> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (is_array, inner) = if let Some(inner) = line.strip_prefix("[[") {
        (true, inner.strip_suffix("]]")?)
    } else {
        (false, line.strip_prefix('[')?.strip_suffix(']')?)
    };
    let name: Vec<&str> = inner
        .split('.')
        .map(|part| part.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect();
    Some((is_array, name.join(".")))
}

fn join(parts: &[&str]) -> String {
    let parts: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "document".to_owned()
    } else {
        parts.join(".")
    }
}

// ---------------------------------------------------------------------------------------
// Validation.

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks the raw file rule by rule and builds the typed [`Config`]. Stops at the first
/// error: later rules may assume earlier ones hold (e.g. names are unique).
struct Validator<'a> {
    ctx: &'a Ctx<'a>,
    raw: &'a RawFile,
    base_dir: &'a Path,
    /// Node name → index in declared order (filled once names are known unique).
    index: BTreeMap<&'a str, usize>,
    /// What the file is read for: an application needs only the service key.
    purpose: Purpose,
}

/// What a configuration file is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Running nodes: the cluster secret must resolve.
    Node,
    /// Attaching an application: with a service key given, the cluster secret is not read
    /// (an application host need not hold it).
    Application,
}

impl<'a> Validator<'a> {
    fn new(ctx: &'a Ctx<'a>, raw: &'a RawFile, base_dir: &'a Path, purpose: Purpose) -> Self {
        Validator {
            ctx,
            raw,
            base_dir,
            index: BTreeMap::new(),
            purpose,
        }
    }

    fn run(mut self) -> Result<Config, ConfigError> {
        let cluster = self.cluster()?;
        let nodes = self.nodes()?;
        self.open_api(&cluster, &nodes)?;
        self.references()?;
        let links = self.links(cluster.topology)?;
        let pools = self.pools(&nodes)?;
        let member_bound = nodes.len() + pools.iter().map(|p| p.max).sum::<usize>();
        let config = Config {
            source: self.ctx.source.to_owned(),
            cluster,
            warnings: self.warnings(&nodes),
            nodes,
            links,
            pools,
            joined: None,
            member_bound,
        };
        self.topology_rules(&config)?;
        self.connected(&config)?;
        Ok(config)
    }

    /// Without a token the API answers anyone who reaches it: only loopback may serve it so.
    fn open_api(&self, cluster: &ClusterConfig, nodes: &[NodeConfig]) -> Result<(), ConfigError> {
        if cluster.api_token.is_some() || self.purpose == Purpose::Application {
            return Ok(());
        }
        for (i, node) in nodes.iter().enumerate() {
            let (Some(addr), Some(raw)) = (node.api, self.raw_node(i).and_then(|n| n.api.as_ref()))
            else {
                continue;
            };
            if !addr.ip().is_loopback() {
                return Err(self.ctx.invalid(
                    &raw.span(),
                    format!("nodes[{i}].api"),
                    format!("the API on {addr} would be open to the network: no api token is configured"),
                    "api_token, api_token_env or api_token_file in [cluster] (at least 16 bytes), or a loopback api address such as \"127.0.0.1:8080\"",
                ));
            }
        }
        Ok(())
    }

    fn raw_node(&self, i: usize) -> Option<&'a RawNode> {
        self.raw.nodes.get(i).map(|n| n.get_ref())
    }

    // --- [cluster] ---

    fn cluster(&self) -> Result<ClusterConfig, ConfigError> {
        let ctx = self.ctx;
        let raw = self.raw.cluster.get_ref();
        if !valid_name(raw.name.get_ref()) {
            return Err(ctx.invalid(
                &raw.name.span(),
                "cluster.name",
                format!("invalid cluster name {:?}", raw.name.get_ref()),
                NAME_RULE,
            ));
        }
        let topology = TopologyKind::from_name(raw.topology.get_ref()).ok_or_else(|| {
            ctx.invalid(
                &raw.topology.span(),
                "cluster.topology",
                format!("unknown topology {:?}", raw.topology.get_ref()),
                "one of star, ring, master-ring-slave, mesh, tree, custom",
            )
        })?;
        let service_key = self.secret(
            "service_key",
            [
                &raw.service_key,
                &raw.service_key_env,
                &raw.service_key_file,
            ],
        )?;
        let secret = match (&service_key, self.purpose) {
            // The secret is never used by an application; the key stands in.
            (Some(key), Purpose::Application) => Some(key.clone()),
            _ => self.secret("secret", [&raw.secret, &raw.secret_env, &raw.secret_file])?,
        };
        let secret = secret.ok_or_else(|| {
            ctx.invalid(
                &self.raw.cluster.span(),
                "cluster.secret",
                "no cluster secret given",
                "exactly one of secret, secret_env or secret_file in [cluster]",
            )
        })?;
        let heartbeat_ms = self.number(
            &raw.heartbeat_interval_ms,
            "heartbeat_interval_ms",
            HEARTBEAT_MS,
        )?;
        let failure_threshold = self.number(
            &raw.failure_threshold,
            "failure_threshold",
            FAILURE_THRESHOLD,
        )?;
        let max_frame_bytes =
            self.number(&raw.max_frame_bytes, "max_frame_bytes", MAX_FRAME_BYTES)?;
        let handshake_ms = self.number(
            &raw.handshake_timeout_ms,
            "handshake_timeout_ms",
            HANDSHAKE_MS,
        )?;
        // Only a node serves the API; an application host need not hold its token.
        let api_token = match self.purpose {
            Purpose::Node => self.secret(
                "api_token",
                [&raw.api_token, &raw.api_token_env, &raw.api_token_file],
            )?,
            Purpose::Application => None,
        };
        let proxy = ProxyConfig {
            max_body_bytes: self.number(
                &raw.proxy_max_body_bytes,
                "proxy_max_body_bytes",
                PROXY_MAX_BODY_BYTES,
            )?,
            max_requests: usize::try_from(self.number(
                &raw.proxy_max_requests,
                "proxy_max_requests",
                PROXY_MAX_REQUESTS,
            )?)
            .unwrap_or(usize::MAX),
            connect_timeout: Duration::from_millis(self.number(
                &raw.proxy_connect_timeout_ms,
                "proxy_connect_timeout_ms",
                PROXY_CONNECT_MS,
            )?),
            response_timeout: Duration::from_millis(self.number(
                &raw.proxy_response_timeout_ms,
                "proxy_response_timeout_ms",
                PROXY_RESPONSE_MS,
            )?),
        };
        let heartbeat_interval = Duration::from_millis(heartbeat_ms);
        let forget_after =
            match self.number(&raw.forget_after_ms, "forget_after_ms", FORGET_AFTER_MS)? {
                0 => heartbeat_interval * u32::try_from(failure_threshold).unwrap_or(u32::MAX) * 10,
                ms => Duration::from_millis(ms),
            };
        let stats_interval = Duration::from_millis(self.number(
            &raw.stats_interval_ms,
            "stats_interval_ms",
            STATS_INTERVAL_MS,
        )?);
        Ok(ClusterConfig {
            forget_after,
            stats_interval,
            proxy,
            api_token,
            name: raw.name.get_ref().clone(),
            topology,
            secret,
            service_key,
            heartbeat_interval,
            // The ranges checked above fit both types; the fallbacks are unreachable.
            failure_threshold: u32::try_from(failure_threshold).unwrap_or(u32::MAX),
            max_frame_bytes: usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
            handshake_timeout: Duration::from_millis(handshake_ms),
            tls: raw.tls.as_ref().map(|t| {
                let t = t.get_ref();
                let path = |p: &Spanned<String>| self.base_dir.join(p.get_ref());
                TlsConfig {
                    ca: path(&t.ca),
                    cert: t.cert.as_ref().map(path),
                    key: t.key.as_ref().map(path),
                    service_tls: t.service_tls.unwrap_or(true),
                }
            }),
        })
    }

    /// A node's `tls_cert` / `tls_key`: only with `[cluster.tls]`; a node that runs (not an
    /// application reading the file) needs both a certificate and a key, its own or the
    /// cluster's. The files themselves are checked by `nodecloud check` and at start.
    fn node_tls(
        &self,
        i: usize,
        node: &RawNode,
    ) -> Result<(Option<PathBuf>, Option<PathBuf>), ConfigError> {
        let ctx = self.ctx;
        let tls = self.raw.cluster.get_ref().tls.as_ref().map(|t| t.get_ref());
        let own = [("tls_cert", &node.tls_cert), ("tls_key", &node.tls_key)];
        let Some(tls) = tls else {
            if let Some((field, Some(v))) = own.iter().find(|(_, v)| v.is_some()) {
                return Err(ctx.invalid(
                    &v.span(),
                    format!("nodes[{i}].{field}"),
                    format!("{field} without TLS configured"),
                    "a [cluster.tls] table with `ca` (and `cert`/`key` for nodes without their own)",
                ));
            }
            return Ok((None, None));
        };
        let path = |p: &Spanned<String>| self.base_dir.join(p.get_ref());
        let cert = node.tls_cert.as_ref().or(tls.cert.as_ref()).map(path);
        let key = node.tls_key.as_ref().or(tls.key.as_ref()).map(path);
        if self.purpose == Purpose::Node {
            for (field, missing) in [("cert", cert.is_none()), ("key", key.is_none())] {
                if missing {
                    return Err(ctx.invalid(
                        &node.name.span(),
                        format!("nodes[{i}].tls_{field}"),
                        format!("node {:?} has no TLS {field}", node.name.get_ref()),
                        format!("`{field}` in [cluster.tls] or `tls_{field}` in this node"),
                    ));
                }
            }
        }
        Ok((
            node.tls_cert.as_ref().map(path),
            node.tls_key.as_ref().map(path),
        ))
    }

    /// A numeric setting within `(min, max, default)`.
    fn number(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        (min, max, default): (i64, i64, i64),
    ) -> Result<u64, ConfigError> {
        let n = match value {
            None => default,
            Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(self.ctx.invalid(
                    &v.span(),
                    format!("cluster.{key}"),
                    format!("{} is out of range", v.get_ref()),
                    match default {
                        // Only forget_after_ms: its default depends on other keys.
                        0 if min > 0 => format!("an integer from {min} to {max} (default 10 × heartbeat_interval_ms × failure_threshold)"),
                        _ => format!("an integer from {min} to {max} (default {default})"),
                    },
                ));
            }
        };
        // In range, so non-negative.
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Resolves the secret named `key` from at most one of its sources
    /// `[key, key_env, key_file]`; `Ok(None)` when none is given.
    fn secret(
        &self,
        key: &str,
        sources: [&Option<Spanned<String>>; 3],
    ) -> Result<Option<Secret>, ConfigError> {
        let ctx = self.ctx;
        let names = [key.to_owned(), format!("{key}_env"), format!("{key}_file")];
        let one_of = format!("at most one of {}, {} or {}", names[0], names[1], names[2]);
        let mut given = names
            .iter()
            .zip(sources)
            .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)));
        let Some((name, value)) = given.next() else {
            return Ok(None);
        };
        if let Some((other, other_value)) = given.next() {
            return Err(ctx.invalid(
                &other_value.span(),
                format!("cluster.{other}"),
                format!(
                    "conflicts with cluster.{name} (line {})",
                    ctx.line_of(&value.span())
                ),
                one_of,
            ));
        }
        let field = format!("cluster.{name}");
        let text = value.get_ref();
        let bytes = if *name == names[0] {
            text.as_bytes().to_vec()
        } else if *name == names[1] {
            self.secret_from_env(value, &field)?
        } else {
            self.secret_from_file(value, &field)?
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(ctx.invalid(
                &value.span(),
                field,
                format!("secret is too short ({} bytes)", bytes.len()),
                format!("a secret of at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        Ok(Some(Secret::new(bytes)))
    }

    fn secret_from_env(&self, var: &Spanned<String>, field: &str) -> Result<Vec<u8>, ConfigError> {
        let name = var.get_ref();
        // std may panic on such names; reject them first.
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(self.ctx.invalid(
                &var.span(),
                field,
                format!("invalid environment variable name {name:?}"),
                "a non-empty name without '=' or NUL",
            ));
        }
        match std::env::var_os(name) {
            Some(value) => Ok(value.into_encoded_bytes()),
            None => Err(self.ctx.invalid(
                &var.span(),
                field,
                format!("environment variable {name} is not set"),
                format!("{name} to hold the secret (at least {MIN_SECRET_BYTES} bytes)"),
            )),
        }
    }

    fn secret_from_file(
        &self,
        path: &Spanned<String>,
        field: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        let full = self.base_dir.join(path.get_ref());
        secret_file::read_secret_file(&full).map_err(|problem| {
            self.ctx.invalid(
                &path.span(),
                field,
                problem,
                format!(
                    "a regular file of at most {MAX_SECRET_FILE_BYTES} bytes holding the secret"
                ),
            )
        })
    }

    // --- [[nodes]] ---

    fn nodes(&mut self) -> Result<Vec<NodeConfig>, ConfigError> {
        let ctx = self.ctx;
        let raw = self.raw;
        let Some(_) = raw.nodes.first() else {
            return Err(ctx.invalid(
                &raw.cluster.get_ref().topology.span(),
                "nodes",
                "no nodes declared",
                "at least one [[nodes]] table",
            ));
        };
        // Every bound address, to catch two listeners on one port.
        let mut bound: Vec<Bound> = Vec::new();
        // Every address peers dial, to catch two nodes reached at one address.
        let mut dialled: BTreeMap<HostPort, (&str, String, usize)> = BTreeMap::new();
        let mut sockets: BTreeMap<&str, (String, usize, bool)> = BTreeMap::new();
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (i, spanned) in raw.nodes.iter().enumerate() {
            let node = spanned.get_ref();
            let name = node.name.get_ref().as_str();
            if !valid_name(name) {
                return Err(ctx.invalid(
                    &node.name.span(),
                    format!("nodes[{i}].name"),
                    format!("invalid node name {name:?}"),
                    NAME_RULE,
                ));
            }
            if let Some(&first) = self.index.get(name) {
                let first_line = self
                    .raw_node(first)
                    .map_or(0, |n| ctx.line_of(&n.name.span()));
                return Err(ctx.invalid(
                    &node.name.span(),
                    format!("nodes[{i}].name"),
                    format!("duplicate node name {name:?} (first declared as nodes[{first}] on line {first_line})"),
                    "a unique name per node",
                ));
            }
            self.index.insert(name, i);
            let role = match &node.role {
                None => Role::default(),
                Some(role) => Role::from_name(role.get_ref()).ok_or_else(|| {
                    ctx.invalid(
                        &role.span(),
                        format!("nodes[{i}].role"),
                        format!("unknown role {:?}", role.get_ref()),
                        "\"master\" or \"worker\"",
                    )
                })?,
            };
            // A node with advertise may run on another machine than any other node, so its
            // bound addresses only have to differ from its own.
            let remote = node.advertise.is_some();
            let mut address = |key: &str, value: &Spanned<String>| {
                let field = format!("nodes[{i}].{key}");
                let addr: SocketAddr = value.get_ref().parse().map_err(|_| {
                    // A host name in listen: say where names go instead.
                    let named = matches!(
                        HostPort::parse(value.get_ref()),
                        Ok(HostPort { host: Host::Name(_), .. })
                    );
                    if key == "listen" && named {
                        ctx.invalid(
                            &value.span(),
                            &field,
                            format!("host name in {:?}", value.get_ref()),
                            "an IP address to bind, such as \"0.0.0.0:7100\" (every interface), \"10.0.0.5:7100\" or \"[::]:7100\"; put the host name peers dial in advertise",
                        )
                    } else {
                        ctx.invalid(
                            &value.span(),
                            &field,
                            format!("invalid socket address {:?}", value.get_ref()),
                            "IP:PORT such as \"127.0.0.1:7100\" or \"[::1]:7100\" (host names are not resolved)",
                        )
                    }
                })?;
                let clash = bound.iter().find(|b| {
                    binds_overlap(b.addr, addr) && (b.node == i || !(b.remote || remote))
                });
                if let Some(other) = clash {
                    let problem = if other.addr == addr {
                        format!(
                            "address {addr} is already used by {} (line {})",
                            other.field, other.line
                        )
                    } else {
                        format!(
                            "address {addr} overlaps {} of {} (line {})",
                            other.addr, other.field, other.line
                        )
                    };
                    return Err(ctx.invalid(
                        &value.span(),
                        &field,
                        problem,
                        "a distinct address for every listen, service, api and proxy endpoint (a node with advertise may share one with nodes on other machines)",
                    ));
                }
                bound.push(Bound {
                    addr,
                    field,
                    line: ctx.line_of(&value.span()),
                    node: i,
                    remote,
                });
                Ok(addr)
            };
            let listen = address("listen", &node.listen)?;
            let service = node
                .service
                .as_ref()
                .map(|v| address("service", v))
                .transpose()?;
            let api = node.api.as_ref().map(|v| address("api", v)).transpose()?;
            let proxy = node
                .proxy
                .as_ref()
                .map(|v| address("proxy", v))
                .transpose()?;
            let http = match &node.http {
                None => None,
                Some(value) => Some(
                    HostPort::parse(value.get_ref())
                        .ok()
                        .filter(|_| value.get_ref().len() <= 255)
                        .ok_or_else(|| {
                            ctx.invalid(
                                &value.span(),
                                format!("nodes[{i}].http"),
                                format!("invalid backend address {:?}", value.get_ref()),
                                "HOST:PORT of the HTTP server beside this node (at most 255 bytes), such as \"127.0.0.1:9001\" or \"web-1.example.org:8080\"",
                            )
                        })?,
                ),
            };
            let advertise = match &node.advertise {
                None => None,
                Some(value) => Some(HostPort::parse(value.get_ref()).map_err(|problem| {
                    ctx.invalid(
                        &value.span(),
                        format!("nodes[{i}].advertise"),
                        problem.to_string(),
                        "HOST:PORT peers can dial: a host name, an IPv4 address or a bracketed IPv6 address, such as \"node-1.example.org:7100\", \"10.0.0.5:7100\" or \"[fd00::5]:7100\"",
                    )
                })?),
            };
            // Two nodes dialled at one address: one of them is unreachable.
            let (dial, dial_key, dial_span) = match (&advertise, &node.advertise) {
                (Some(a), Some(value)) => (a.clone(), "advertise", value.span()),
                _ => (local_dial(listen).into(), "listen", node.listen.span()),
            };
            if dial.port != 0 {
                let field = format!("nodes[{i}].{dial_key}");
                if let Some((other, other_field, line)) = dialled.get(&dial) {
                    return Err(ctx.invalid(
                        &dial_span,
                        field,
                        format!("peers already dial {dial} to reach {other:?} ({other_field}, line {line})"),
                        "a distinct advertise address for every node",
                    ));
                }
                dialled.insert(dial, (name, field, ctx.line_of(&dial_span)));
            }
            if let Some(socket) = &node.service_socket {
                let field = format!("nodes[{i}].service_socket");
                if socket.get_ref().is_empty() {
                    return Err(ctx.invalid(
                        &socket.span(),
                        field,
                        "empty path",
                        "a Unix socket path",
                    ));
                }
                // As for bind addresses: nodes that advertise an address may each be on a
                // machine of their own, where one path serves each.
                let mine = advertise.is_some();
                if let Some((other, line, theirs)) = sockets.get(socket.get_ref().as_str()) {
                    if !mine && !theirs {
                        return Err(ctx.invalid(
                            &socket.span(),
                            field,
                            format!("socket path is already used by {other} (line {line})"),
                            "a distinct service_socket path per node (or `advertise` on \
                             nodes that run on machines of their own)",
                        ));
                    }
                }
                sockets.insert(socket.get_ref(), (field, ctx.line_of(&socket.span()), mine));
            }
            let (tls_cert, tls_key) = self.node_tls(i, node)?;
            let dial_from = match &node.dial_from {
                None => None,
                Some(value) => Some(
                    value
                        .get_ref()
                        .parse::<IpAddr>()
                        .ok()
                        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
                        .ok_or_else(|| {
                            ctx.invalid(
                                &value.span(),
                                format!("nodes[{i}].dial_from"),
                                format!("invalid source address {:?}", value.get_ref()),
                                "an IP address of this machine, without a port, such as \"10.0.0.5\" or \"127.0.0.2\"",
                            )
                        })?,
                ),
            };
            nodes.push(NodeConfig {
                name: name.to_owned(),
                role,
                listen,
                advertise,
                service,
                service_socket: node
                    .service_socket
                    .as_ref()
                    .map(|s| PathBuf::from(s.get_ref())),
                api,
                http,
                proxy,
                master: node.master.as_ref().map(|m| m.get_ref().clone()),
                fallback_masters: node
                    .fallback_masters
                    .iter()
                    .map(|m| m.get_ref().clone())
                    .collect(),
                parent: node.parent.as_ref().map(|p| p.get_ref().clone()),
                tls_cert,
                tls_key,
                dial_from,
            });
        }
        Ok(nodes)
    }

    /// A wildcard `listen` without `advertise` loads (a one-machine cluster works: peers dial
    /// loopback) but peers on other machines could not reach the node.
    fn warnings(&self, nodes: &[NodeConfig]) -> Vec<Warning> {
        nodes
            .iter()
            .zip(&self.raw.nodes)
            .enumerate()
            .filter(|(_, (node, _))| node.advertise.is_none() && node.listen.ip().is_unspecified())
            .map(|(i, (node, raw))| Warning {
                at: self.ctx.location(Some(raw.get_ref().listen.span().start)),
                field: format!("nodes[{i}].listen"),
                problem: format!(
                    "wildcard address {} without advertise: peers will dial {}, which reaches {:?} only from its own machine",
                    node.listen,
                    node.dial_address(),
                    node.name
                ),
                advice: "add advertise = \"HOST:PORT\" with an address the other nodes can reach".to_owned(),
            })
            .collect()
    }

    /// An error unless `value` names a declared node.
    fn declared(&self, value: &Spanned<String>, field: &str) -> Result<usize, ConfigError> {
        self.index
            .get(value.get_ref().as_str())
            .copied()
            .ok_or_else(|| {
                self.ctx.invalid(
                    &value.span(),
                    field,
                    format!("unknown node {:?}", value.get_ref()),
                    "the name of a node declared in [[nodes]]",
                )
            })
    }

    /// master / parent / fallback_masters name declared nodes other than the node itself.
    fn references(&self) -> Result<(), ConfigError> {
        for (i, spanned) in self.raw.nodes.iter().enumerate() {
            let node = spanned.get_ref();
            let single = [("master", &node.master), ("parent", &node.parent)];
            let fallbacks = node
                .fallback_masters
                .iter()
                .enumerate()
                .map(|(j, m)| (format!("fallback_masters[{j}]"), m));
            let refs = single
                .into_iter()
                .filter_map(|(key, v)| v.as_ref().map(|v| (key.to_owned(), v)))
                .chain(fallbacks);
            for (key, value) in refs {
                let field = format!("nodes[{i}].{key}");
                if self.declared(value, &field)? == i {
                    return Err(self.ctx.invalid(
                        &value.span(),
                        field,
                        format!("node {:?} names itself", value.get_ref()),
                        "the name of another node",
                    ));
                }
            }
        }
        Ok(())
    }

    // --- [[pools]] ---

    /// `[[pools]]`: a prefix no declared name and no other pool's prefix starts with (so
    /// every name belongs to one place: declared nodes are never counted or forgotten as pool
    /// members), exactly one of `master` (a node with role master) or `parent` (any declared
    /// node) naming the hub members link to, and `max` within bounds.
    fn pools(&self, nodes: &[NodeConfig]) -> Result<Vec<PoolConfig>, ConfigError> {
        let ctx = self.ctx;
        if let Some(extra) = self.raw.pools.get(MAX_POOLS) {
            return Err(ctx.invalid(
                &extra.span(),
                format!("pools[{MAX_POOLS}]"),
                format!("more than {MAX_POOLS} pools"),
                format!("at most {MAX_POOLS} [[pools]] tables"),
            ));
        }
        let mut pools: Vec<PoolConfig> = Vec::with_capacity(self.raw.pools.len());
        for (i, spanned) in self.raw.pools.iter().enumerate() {
            let raw = spanned.get_ref();
            let prefix = raw.prefix.get_ref();
            let field = |key: &str| format!("pools[{i}].{key}");
            if prefix.len() >= 64 || !valid_name(prefix) {
                return Err(ctx.invalid(
                    &raw.prefix.span(),
                    field("prefix"),
                    format!("invalid pool prefix {prefix:?}"),
                    "1 to 63 characters of A-Z, a-z, 0-9, '.', '_' or '-' (members add at least one)",
                ));
            }
            if let Some(node) = nodes.iter().find(|n| n.name.starts_with(prefix.as_str())) {
                return Err(ctx.invalid(
                    &raw.prefix.span(),
                    field("prefix"),
                    format!(
                        "declared node {:?} starts with pool prefix {prefix:?}: it would be both declared and a pool member",
                        node.name
                    ),
                    "a prefix no declared node's name starts with (rename the node or the prefix)",
                ));
            }
            if let Some((j, other)) = pools.iter().enumerate().find(|(_, p)| {
                p.prefix.starts_with(prefix.as_str()) || prefix.starts_with(p.prefix.as_str())
            }) {
                return Err(ctx.invalid(
                    &raw.prefix.span(),
                    field("prefix"),
                    format!("prefix {prefix:?} overlaps pools[{j}].prefix {:?}: a name would belong to both", other.prefix),
                    "prefixes none of which starts with another",
                ));
            }
            let hub = match (&raw.master, &raw.parent) {
                (Some(master), None) => {
                    let at = self.declared(master, &field("master"))?;
                    if nodes.get(at).map(|n| n.role) != Some(Role::Master) {
                        return Err(ctx.invalid(
                            &master.span(),
                            field("master"),
                            format!("{:?} is not a master", master.get_ref()),
                            "the name of a node with role = \"master\" (or parent = any declared node)",
                        ));
                    }
                    master.get_ref().clone()
                }
                (None, Some(parent)) => {
                    self.declared(parent, &field("parent"))?;
                    parent.get_ref().clone()
                }
                (Some(_), Some(parent)) => {
                    return Err(ctx.invalid(
                        &parent.span(),
                        field("parent"),
                        "both master and parent given",
                        "exactly one of master or parent: the declared node members link to",
                    ))
                }
                (None, None) => {
                    return Err(ctx.invalid(
                        &spanned.span(),
                        field("master"),
                        "no master or parent given",
                        "master = \"NODE\" (a node with role master) or parent = \"NODE\" (any declared node): the node members link to",
                    ))
                }
            };
            let max = *raw.max.get_ref();
            let max = usize::try_from(max)
                .ok()
                .filter(|m| (1..=MAX_POOL_MEMBERS).contains(m))
                .ok_or_else(|| {
                    ctx.invalid(
                        &raw.max.span(),
                        field("max"),
                        format!("{max} is out of range"),
                        format!("an integer from 1 to {MAX_POOL_MEMBERS}: members live at once"),
                    )
                })?;
            pools.push(PoolConfig {
                prefix: prefix.clone(),
                hub,
                max,
            });
        }
        Ok(pools)
    }

    // --- [[links]] ---

    fn links(&self, topology: TopologyKind) -> Result<Vec<LinkConfig>, ConfigError> {
        let ctx = self.ctx;
        let raw = self.raw;
        if topology != TopologyKind::Custom {
            if let Some(first) = raw.links.first() {
                return Err(ctx.invalid(
                    &first.span(),
                    "links[0]",
                    format!(
                        "[[links]] given with topology \"{topology}\", which plans its own links"
                    ),
                    "[[links]] only with topology = \"custom\"",
                ));
            }
            return Ok(Vec::new());
        }
        // Unordered pair → (field, line) of the link that first joined it.
        let mut seen: BTreeMap<(&str, &str), (String, usize)> = BTreeMap::new();
        let mut links = Vec::with_capacity(raw.links.len());
        for (i, spanned) in raw.links.iter().enumerate() {
            let link = spanned.get_ref();
            self.declared(&link.from, &format!("links[{i}].from"))?;
            self.declared(&link.to, &format!("links[{i}].to"))?;
            let (from, to) = (link.from.get_ref().as_str(), link.to.get_ref().as_str());
            if from == to {
                return Err(ctx.invalid(
                    &link.to.span(),
                    format!("links[{i}].to"),
                    format!("link from {from:?} to itself"),
                    "two different nodes",
                ));
            }
            // One connection per pair: a→b and b→a would both dial.
            let pair = if from < to { (from, to) } else { (to, from) };
            if let Some((other, line)) = seen.get(&pair) {
                return Err(ctx.invalid(
                    &spanned.span(),
                    format!("links[{i}]"),
                    format!("{from:?} and {to:?} are already linked by {other} (line {line})"),
                    "at most one link per pair of nodes, in either direction",
                ));
            }
            seen.insert(pair, (format!("links[{i}]"), ctx.line_of(&spanned.span())));
            links.push(LinkConfig {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        Ok(links)
    }

    // --- per-topology rules ---

    fn topology_rules(&self, config: &Config) -> Result<(), ConfigError> {
        let topology = config.cluster.topology;
        // Fields a preset would silently ignore are almost certainly mistakes.
        for (i, spanned) in self.raw.nodes.iter().enumerate() {
            let node = spanned.get_ref();
            let uses_master =
                matches!(topology, TopologyKind::Star | TopologyKind::MasterRingSlave);
            if let (Some(master), false) = (&node.master, uses_master) {
                return Err(self.unused(
                    master,
                    i,
                    "master",
                    topology,
                    "star or master-ring-slave",
                ));
            }
            if let (Some(parent), false) = (&node.parent, topology == TopologyKind::Tree) {
                return Err(self.unused(parent, i, "parent", topology, "tree"));
            }
            if let (Some(first), false) = (
                node.fallback_masters.first(),
                topology == TopologyKind::MasterRingSlave,
            ) {
                return Err(self.unused(
                    first,
                    i,
                    "fallback_masters",
                    topology,
                    "master-ring-slave",
                ));
            }
        }
        match topology {
            TopologyKind::Star => self.star(config),
            TopologyKind::Ring => self.ring(config),
            TopologyKind::MasterRingSlave => self.master_ring_slave(config),
            TopologyKind::Tree => self.tree(config),
            TopologyKind::Custom => self.custom(config),
            TopologyKind::Mesh => Ok(()),
        }
    }

    fn unused(
        &self,
        value: &Spanned<String>,
        i: usize,
        key: &str,
        topology: TopologyKind,
        used_by: &str,
    ) -> ConfigError {
        self.ctx.invalid(
            &value.span(),
            format!("nodes[{i}].{key}"),
            format!("not used by topology \"{topology}\""),
            format!("{key} only with topology {used_by}"),
        )
    }

    fn topology_span(&self) -> Range<usize> {
        self.raw.cluster.get_ref().topology.span()
    }

    /// Span of node `i`'s role if written, else of the whole node table.
    fn role_span(&self, i: usize) -> Range<usize> {
        match self.raw.nodes.get(i) {
            Some(node) => node
                .get_ref()
                .role
                .as_ref()
                .map_or_else(|| node.span(), |r| r.span()),
            None => self.topology_span(),
        }
    }

    fn star(&self, config: &Config) -> Result<(), ConfigError> {
        let masters: Vec<usize> = master_indices(config);
        let Some(&hub) = masters.first() else {
            return Err(self.ctx.invalid(
                &self.topology_span(),
                "cluster.topology",
                "star topology without a master",
                "exactly one node with role = \"master\"",
            ));
        };
        let hub_name = config.nodes.get(hub).map_or("", |n| n.name.as_str());
        if let Some(&second) = masters.get(1) {
            return Err(self.ctx.invalid(
                &self.role_span(second),
                format!("nodes[{second}].role"),
                format!("a second master (the first is {hub_name:?})"),
                "exactly one master in a star; the other nodes are workers",
            ));
        }
        for (i, spanned) in self.raw.nodes.iter().enumerate() {
            if let Some(master) = &spanned.get_ref().master {
                let problem = if i == hub {
                    "the star's master joins no other node".to_owned()
                } else if master.get_ref() != hub_name {
                    format!("{:?} is not the star's master", master.get_ref())
                } else {
                    continue;
                };
                return Err(self.ctx.invalid(
                    &master.span(),
                    format!("nodes[{i}].master"),
                    problem,
                    format!("no master field, or master = {hub_name:?}"),
                ));
            }
        }
        Ok(())
    }

    fn ring(&self, config: &Config) -> Result<(), ConfigError> {
        if config.nodes.len() < 2 {
            return Err(self.ctx.invalid(
                &self.topology_span(),
                "cluster.topology",
                format!("a ring of {} node", config.nodes.len()),
                "at least 2 nodes for topology \"ring\"",
            ));
        }
        Ok(())
    }

    fn master_ring_slave(&self, config: &Config) -> Result<(), ConfigError> {
        let is_master = |name: &str| config.node(name).is_some_and(|n| n.role == Role::Master);
        if master_indices(config).is_empty() {
            return Err(self.ctx.invalid(
                &self.topology_span(),
                "cluster.topology",
                "master-ring-slave topology without a master",
                "at least one node with role = \"master\"",
            ));
        }
        for (i, spanned) in self.raw.nodes.iter().enumerate() {
            let raw = spanned.get_ref();
            let role = config.nodes.get(i).map_or(Role::Worker, |n| n.role);
            if role == Role::Master {
                // Masters are joined by the master ring, not by dialling a master.
                let stray = raw.master.as_ref().map(|m| (m, "master")).or_else(|| {
                    raw.fallback_masters
                        .first()
                        .map(|m| (m, "fallback_masters"))
                });
                if let Some((value, key)) = stray {
                    return Err(self.ctx.invalid(
                        &value.span(),
                        format!("nodes[{i}].{key}"),
                        "set on a master, which joins the master ring instead",
                        format!("{key} only on workers"),
                    ));
                }
                continue;
            }
            let Some(master) = &raw.master else {
                return Err(self.ctx.invalid(
                    &spanned.span(),
                    format!("nodes[{i}].master"),
                    format!("worker {:?} has no master", raw.name.get_ref()),
                    "master = the name of a node with role = \"master\"",
                ));
            };
            let not_master = |value: &Spanned<String>, field: String| {
                self.ctx.invalid(
                    &value.span(),
                    field,
                    format!("{:?} is not a master", value.get_ref()),
                    "the name of a node with role = \"master\"",
                )
            };
            if !is_master(master.get_ref()) {
                return Err(not_master(master, format!("nodes[{i}].master")));
            }
            for (j, fallback) in raw.fallback_masters.iter().enumerate() {
                let field = format!("nodes[{i}].fallback_masters[{j}]");
                if !is_master(fallback.get_ref()) {
                    return Err(not_master(fallback, field));
                }
                if fallback.get_ref() == master.get_ref() {
                    return Err(self.ctx.invalid(
                        &fallback.span(),
                        field,
                        format!("{:?} is already the primary master", fallback.get_ref()),
                        "fallback masters other than the primary",
                    ));
                }
                let earlier = raw.fallback_masters.get(..j).unwrap_or_default();
                if earlier.iter().any(|e| e.get_ref() == fallback.get_ref()) {
                    return Err(self.ctx.invalid(
                        &fallback.span(),
                        field,
                        format!("{:?} is listed twice", fallback.get_ref()),
                        "distinct fallback masters",
                    ));
                }
            }
        }
        Ok(())
    }

    fn tree(&self, config: &Config) -> Result<(), ConfigError> {
        // Follow parent pointers from every node; revisiting a node on one walk is a cycle.
        for start in 0..config.nodes.len() {
            let mut path: Vec<usize> = Vec::new();
            let mut at = Some(start);
            while let Some(i) = at {
                if let Some(pos) = path.iter().position(|&p| p == i) {
                    let cycle = path.get(pos..).unwrap_or_default();
                    return Err(self.cycle_error(config, cycle));
                }
                path.push(i);
                at = config
                    .nodes
                    .get(i)
                    .and_then(|n| n.parent.as_deref())
                    .and_then(|p| self.index.get(p).copied());
            }
        }
        let mut roots = config
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.parent.is_none());
        // Without a cycle there is always a root; two roots make two trees.
        let first = roots.next().map_or("", |(_, n)| n.name.as_str());
        if let Some((i, node)) = roots.next() {
            let span = self
                .raw
                .nodes
                .get(i)
                .map_or_else(|| self.topology_span(), |n| n.span());
            return Err(self.ctx.invalid(
                &span,
                format!("nodes[{i}].parent"),
                format!(
                    "{:?} is a second root (no parent; the first root is {first:?})",
                    node.name
                ),
                "exactly one node without parent in a tree",
            ));
        }
        Ok(())
    }

    fn cycle_error(&self, config: &Config, cycle: &[usize]) -> ConfigError {
        // Start the cycle at its earliest-declared node so the message is stable.
        let first_pos = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, &i)| i)
            .map_or(0, |(pos, _)| pos);
        let ordered: Vec<usize> = cycle
            .iter()
            .skip(first_pos)
            .chain(cycle.iter().take(first_pos))
            .copied()
            .collect();
        let mut names: Vec<&str> = ordered
            .iter()
            .filter_map(|&i| config.nodes.get(i).map(|n| n.name.as_str()))
            .collect();
        if let Some(&first) = names.first() {
            names.push(first);
        }
        let i = ordered.first().copied().unwrap_or(0);
        let span = self
            .raw_node(i)
            .and_then(|n| n.parent.as_ref().map(|p| p.span()))
            .unwrap_or_else(|| self.topology_span());
        self.ctx.invalid(
            &span,
            format!("nodes[{i}].parent"),
            format!("parent cycle {}", names.join(" -> ")),
            "parents that lead to a single root",
        )
    }

    fn custom(&self, config: &Config) -> Result<(), ConfigError> {
        if config.links.is_empty() && config.nodes.len() > 1 {
            return Err(self.ctx.invalid(
                &self.topology_span(),
                "links",
                "custom topology without [[links]]",
                "[[links]] tables (from = \"a\", to = \"b\") joining every node",
            ));
        }
        Ok(())
    }

    /// Every topology must give one connected graph, or some nodes could never talk.
    fn connected(&self, config: &Config) -> Result<(), ConfigError> {
        let mut graph = topology::plan(config).graph();
        for node in &config.nodes {
            graph.add_node(&node.name);
        }
        let Some(first) = config.nodes.first() else {
            return Ok(());
        };
        let reachable = graph.reachable_from(&first.name);
        let Some((i, lost)) = config
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| !reachable.contains(&n.name))
        else {
            return Ok(());
        };
        let span = self
            .raw
            .nodes
            .get(i)
            .map_or_else(|| self.topology_span(), |n| n.span());
        Err(self.ctx.invalid(
            &span,
            format!("nodes[{i}]"),
            format!(
                "node {:?} cannot be reached from {:?} over the planned links",
                lost.name, first.name
            ),
            "a connected cluster (add [[links]] joining it to the others)",
        ))
    }
}

/// A bound address seen so far while validating `[[nodes]]`.
struct Bound {
    addr: SocketAddr,
    /// `nodes[i].key`, for messages.
    field: String,
    line: usize,
    node: usize,
    /// The node has advertise, so it may run on a machine of its own.
    remote: bool,
}

fn master_indices(config: &Config) -> Vec<usize> {
    config
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.role == Role::Master)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests;
