//! The `nodecloud` command: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use nodecloud::config::Config;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    let system = actix_rt::System::new();
    let result = system.block_on(nodecloud::cluster::run(
        cfg,
        node,
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
