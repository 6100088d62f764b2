//! The `nodecloud` command line: its arguments and what each command does. `main.rs` parses
//! the arguments and calls [`run`].
//!
//! `nodecloud --config F [--node N]` runs nodes; `nodecloud --join HOST:PORT --name N
//! --cluster C` runs one pool member without a file (see [`join`]); `check` validates a file; `sub`, `pub`,
//! `call` and `status` are applications attached to one node's service listener (see [`attach`] for how
//! they find it). Exit statuses are one table for every command: [`exit`].

pub mod app;
pub mod attach;
pub mod exit;
pub mod join;
pub mod logging;
pub mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use app::Body;
use attach::Attach;
use exit::CliError;
use logging::LogFormat;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "nodecloud",
    version,
    about = "Run a nodecloud cluster, or one node of it, from a topology file; attach to it \
             from the command line"
)]
pub struct Cli {
    /// The topology file.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start only this node (one process per machine). Without it, every node of the file
    /// starts in this process.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[command(flatten)]
    pub join: join::JoinArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Log options, accepted before or after any command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log lines as text or as one JSON object per line (on stderr).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        global = true,
        default_value_t
    )]
    pub log_format: LogFormat,
    /// A level (error, warn, info, debug, trace) or directives ("info,nodecloud=debug");
    /// overrides RUST_LOG. Default: info for nodes, warn for application commands.
    #[arg(long, value_name = "FILTER", global = true)]
    pub log_level: Option<String>,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a topology file and print each node and the links it will dial.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print each event of TOPIC (`*` matches one token, `>` the rest) as one JSON line:
    /// {"topic":…,"from":…,"payload":…}. Says `subscribed to TOPIC` on stderr once the node
    /// has confirmed.
    Sub {
        topic: String,
        #[command(flatten)]
        attach: Attach,
        /// Exit after this many events.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Publish one event: JSON, sent as CBOR. Returns once the node has taken it.
    Pub {
        topic: String,
        #[command(flatten)]
        body: Body,
        #[command(flatten)]
        attach: Attach,
        /// Only this node receives it (default: every node).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// The members of the cluster as the attached node sees them. Exit 0 when every
    /// declared node is up, 3 when some are down.
    Status {
        #[command(flatten)]
        attach: Attach,
        /// Ask a node's HTTP API instead: http://HOST:PORT (its `api` address).
        #[arg(long, value_name = "URL", conflicts_with_all = ["config", "via", "address"])]
        api: Option<String>,
        /// With --api: read the API token from this environment variable
        /// [default: NODECLOUD_API_TOKEN].
        #[arg(long, value_name = "VAR", requires = "api")]
        token_env: Option<String>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Call a method with a JSON request; print the JSON response.
    Call {
        method: String,
        #[command(flatten)]
        body: Body,
        #[command(flatten)]
        attach: Attach,
        /// The node that serves it (default: the least loaded implementer).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Give up after this many milliseconds: 1 to 3600000 (default 5000).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        timeout: Option<u64>,
    },
}

/// Run what the command line asks for; the exit status follows [`exit`]'s table.
pub fn run(cli: Cli) -> ExitCode {
    let app = matches!(
        cli.command,
        Some(
            Command::Sub { .. }
                | Command::Pub { .. }
                | Command::Call { .. }
                | Command::Status { .. }
        )
    );
    // actix-web's server announces its workers at info; the node logs `HTTP API serving` itself.
    let default = if app {
        "warn"
    } else {
        "info,actix_server=warn"
    };
    if let Err(e) = logging::init(cli.log.log_format, cli.log.log_level.as_deref(), default) {
        return e.report();
    }
    if cli.command.is_some()
        && (cli.config.is_some() || cli.node.is_some() || cli.join.join.is_some())
    {
        return CliError::Usage(
            "--config/--node before a command run nodes; give the command's own options after \
             its name (nodecloud sub TOPIC --config FILE)"
                .into(),
        )
        .report();
    }
    let result = match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(command) => application(command),
        None if cli.join.join.is_some() => join::run(&cli.join),
        None => match cli.config {
            Some(path) => run_nodes(&path, cli.node.as_deref()),
            None => Err(CliError::Usage(
                "--config FILE is required (try: nodecloud --config config/star.toml)".into(),
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

fn check(path: &Path) -> Result<(), CliError> {
    let cfg = Config::load(path)?;
    // Every node's TLS files as the node would load them: readable, PEM, key matching the
    // certificate, certificate chaining to the CA.
    crate::tls::check(&cfg).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let plan = crate::topology::plan(&cfg);
    print!("{}", crate::topology::describe(&cfg, &plan));
    for warning in &cfg.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// Raise this process's soft limit on open files to its hard limit, as Go programs do at
/// start. A hub holds a descriptor per link and two per pending handshake (see
/// `node::admission`): a thousand workers need more than the soft 1,024 many systems start
/// a process with, and past it the hub's accepts fail. Says what it did, or why not.
pub(crate) fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!("open files limit raised from {soft} to {hard}"),
            Err(e) => tracing::warn!(
                "open files limit left at {soft} (cannot raise it to {hard}: {e}); a hub of \
                     many members needs about two descriptors per member"
            ),
        },
        Ok(_) => {}
        Err(e) => tracing::debug!("open files limit not read: {e}"),
    }
}

fn run_nodes(path: &Path, node: Option<&str>) -> Result<(), CliError> {
    raise_open_files_limit();
    // Before any thread starts: taking the inherited sockets clears the LISTEN_* variables.
    let inherited = crate::sockets::Inherited::from_env()
        .map_err(|e| CliError::Usage(format!("socket activation: {e}")))?;
    let cfg = Arc::new(Config::load(path)?);
    // The TLS files of the nodes this process runs (another machine's key need not be here).
    for name in crate::cluster::names(&cfg, node) {
        if let Some(n) = cfg.node(&name) {
            crate::tls::NodeTls::load(&cfg, n)
                .map_err(|e| CliError::Usage(format!("{}: node {name}: {e}", path.display())))?;
        }
    }
    if let Some(name) = node {
        if cfg.node(name).is_none() {
            let known: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(CliError::Usage(format!(
                "{}: no node named {name:?}; expected one of: {}",
                path.display(),
                known.join(", ")
            )));
        }
    }
    // One process per machine: peers elsewhere must be able to dial every node. (With every
    // node in one process, loopback is right and the warnings would be noise.)
    if node.is_some() {
        for warning in &cfg.warnings {
            tracing::warn!("{warning}");
        }
    }
    let bound = inherited
        .into_bound(&crate::cluster::names(&cfg, node))
        .map_err(|e| CliError::Usage(format!("socket activation: {e}")))?;
    let system = actix_rt::System::new();
    system
        .block_on(crate::cluster::run(
            cfg,
            node,
            bound,
            crate::cluster::signal(),
        ))
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// `sub`, `pub` and `call`: resolve where to attach, then run on a fresh actor system.
fn application(command: Command) -> Result<(), CliError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let system = actix_rt::System::new();
    match command {
        Command::Sub {
            topic,
            attach,
            count,
        } => {
            let target = attach.resolve(&env)?;
            let name = app_name(&attach);
            system.block_on(app::sub(&target, &name, &topic, count))
        }
        Command::Pub {
            topic,
            body,
            attach,
            to,
        } => {
            let payload = body.to_cbor()?;
            let target = attach.resolve(&env)?;
            let name = app_name(&attach);
            system.block_on(app::publish(&target, &name, &topic, payload, to.as_deref()))
        }
        Command::Call {
            method,
            body,
            attach,
            to,
            timeout,
        } => {
            let payload = body.to_cbor()?;
            let target = attach.resolve(&env)?;
            let name = app_name(&attach);
            let timeout = timeout.map(Duration::from_millis);
            system.block_on(app::call(
                &target,
                &name,
                &method,
                payload,
                to.as_deref(),
                timeout,
            ))
        }
        Command::Status {
            api: Some(api),
            token_env,
            json,
            ..
        } => {
            let var = token_env.as_deref().unwrap_or("NODECLOUD_API_TOKEN");
            let token = env(var);
            if token_env.is_some() && token.is_none() {
                return Err(CliError::Usage(format!(
                    "--token-env {var}: the variable is not set"
                )));
            }
            status::status_api(&api, token.as_deref(), json)
        }
        Command::Status { attach, json, .. } => {
            let target = attach.resolve(&env)?;
            let name = app_name(&attach);
            system.block_on(status::status(&target, &name, json))
        }
        Command::Check { config } => check(&config),
    }
}

fn app_name(attach: &Attach) -> String {
    attach
        .name
        .clone()
        .unwrap_or_else(|| format!("cli-{}", std::process::id()))
}
