//! The `nodecloud` command: parses arguments and calls the library.
//!
//! `nodecloud --config F [--node N]` runs nodes; `check` validates a file; `sub`, `pub` and
//! `call` are applications attached to a node's service listener, with JSON on the command
//! line and CBOR on the wire.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use nodecloud::config::Config;
use nodecloud::service::{Client, Incoming};
use nodecloud::wire::json;

#[derive(Parser)]
#[command(
    name = "nodecloud",
    version,
    about = "Run a nodecloud cluster, or one node of it, from a topology file"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// The topology file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start only this node (one process per machine). Without it, every node of the file
    /// starts in this process.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a topology file and print each node and the links it will dial.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print each event of TOPIC as one JSON line: {"topic":…,"from":…,"payload":…}.
    Sub {
        topic: String,
        #[command(flatten)]
        via: Via,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Publish one event: JSON, sent as CBOR.
    Pub {
        topic: String,
        json: String,
        #[command(flatten)]
        via: Via,
        /// Only this node receives it (default: every node).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// Call a method with a JSON request; print the JSON response.
    Call {
        method: String,
        json: String,
        #[command(flatten)]
        via: Via,
        /// The node that serves it (default: the least loaded implementer).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Give up after this many milliseconds (default 5000).
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
    },
}

/// Which node an application command attaches to.
#[derive(clap::Args)]
struct Via {
    /// The topology file (for the node's service address and the service key).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// The node to attach to (it needs `service` or `service_socket`).
    #[arg(long, value_name = "NODE")]
    via: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let app = matches!(
        cli.command,
        Some(Command::Sub { .. } | Command::Pub { .. } | Command::Call { .. })
    );
    init_logging(if app { "warn" } else { "info" });
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Sub { topic, via, count }) => attached(&via, |c| sub(c, topic, count)),
        Some(Command::Pub {
            topic,
            json,
            via,
            to,
        }) => match parse_json(&json) {
            Ok(v) => attached(&via, |c| publish(c, topic, v, to)),
            Err(code) => code,
        },
        Some(Command::Call {
            method,
            json,
            via,
            to,
            timeout,
        }) => match parse_json(&json) {
            Ok(v) => attached(&via, |c| call(c, method, v, to, timeout)),
            Err(code) => code,
        },
        None => {
            let Some(path) = cli.config else {
                eprintln!(
                    "error: --config FILE is required (try: nodecloud --config config/star.toml)"
                );
                return ExitCode::from(2);
            };
            run(&path, cli.node.as_deref())
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    nodecloud::node::install_panic_hook();
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(cfg) => {
            let plan = nodecloud::topology::plan(&cfg);
            print!("{}", nodecloud::topology::describe(&cfg, &plan));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &std::path::Path, node: Option<&str>) -> ExitCode {
    // Before any thread starts: taking the inherited sockets clears LISTEN_* variables.
    let inherited = match nodecloud::sockets::Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match load(path) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    if let Some(name) = node {
        if cfg.node(name).is_none() {
            let known: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
            eprintln!(
                "error: {}: no node named {name:?}; expected one of: {}",
                path.display(),
                known.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let bound = match inherited.into_bound(&nodecloud::cluster::names(&cfg, node)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
    let system = actix_rt::System::new();
    let result = system.block_on(nodecloud::cluster::run(
        cfg,
        node,
        bound,
        nodecloud::cluster::signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Application commands. Exit codes: 0 done, 1 refused or failed (the reason on stderr),
// 2 bad arguments or configuration.

fn parse_json(text: &str) -> Result<serde_json::Value, ExitCode> {
    serde_json::from_str(text).map_err(|e| {
        eprintln!("error: the argument is not JSON: {e}");
        ExitCode::from(2)
    })
}

/// Attach to `--via` and run `body`; print its error, if any.
fn attached<F, Fut>(via: &Via, body: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let cfg = match load(&via.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.node(&via.via).is_none() {
        eprintln!(
            "error: {}: no node named {:?}",
            via.config.display(),
            via.via
        );
        return ExitCode::from(2);
    }
    let system = actix_rt::System::new();
    let result = system.block_on(async {
        let name = format!("cli-{}", std::process::id());
        let client = Client::connect_via(&cfg, &via.via, &name)
            .await
            .map_err(|e| e.to_string())?;
        body(client).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn sub(mut client: Client, topic: String, count: Option<u64>) -> Result<(), String> {
    client.subscribe(&topic).await.map_err(|e| e.to_string())?;
    let mut printed = 0u64;
    let stop = nodecloud::cluster::signal();
    tokio::pin!(stop);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|n| printed < n) {
        let item = tokio::select! {
            item = client.next() => item,
            () = &mut stop => break,
        };
        match item {
            Some(Incoming::Event {
                topic,
                from,
                payload,
            }) => {
                let payload = json::cbor_to_json(&payload)
                    .unwrap_or_else(|e| serde_json::json!({"$undecodable": e.to_string()}));
                let line = serde_json::json!({"topic": topic, "from": from, "payload": payload});
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|e| e.to_string())?;
                printed += 1;
            }
            Some(Incoming::Refused { op, code, message }) => {
                return Err(format!("{op} refused: {code}: {message}"))
            }
            // Nothing is implemented here, so no request comes.
            Some(Incoming::Request { .. }) => {}
            Some(Incoming::Closed(why)) => return Err(why),
            None => return Err("the connection closed".into()),
        }
    }
    client.close().await;
    Ok(())
}

async fn publish(
    mut client: Client,
    topic: String,
    value: serde_json::Value,
    to: Option<String>,
) -> Result<(), String> {
    let payload = json::json_to_cbor(&value).map_err(|e| e.to_string())?;
    client
        .publish_raw(&topic, payload, to.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    // The node has handled the publish once it answers a later ping; a refusal comes first.
    client.sync().await.map_err(|e| e.to_string())?;
    if let Ok(Some(Incoming::Refused { op, code, message })) =
        tokio::time::timeout(std::time::Duration::ZERO, client.next()).await
    {
        return Err(format!("{op} refused: {code}: {message}"));
    }
    client.close().await;
    Ok(())
}

async fn call(
    client: Client,
    method: String,
    value: serde_json::Value,
    to: Option<String>,
    timeout: Option<u64>,
) -> Result<(), String> {
    let payload = json::json_to_cbor(&value).map_err(|e| e.to_string())?;
    let timeout = timeout.map(std::time::Duration::from_millis);
    let result = client
        .call_raw(&method, to.as_deref(), timeout, payload)
        .await
        .map_err(|e| format!("{}: {e}", e.code()))?;
    let reply = json::cbor_to_json(&result).map_err(|e| format!("the reply is not CBOR: {e}"))?;
    println!("{reply}");
    client.close().await;
    Ok(())
}
