//! What flapping links do to events: a star of separate node processes, a publisher
//! application on one worker and a subscriber application on another, and N cuts of one
//! worker's link while events flow.
//!
//! ```text
//! cargo run --release --example chaos -- --flaps 5 --events 5000
//! cargo run --release --example chaos -- --flaps 1000 --events 1000000 --rate 1000
//! cargo run --release --example chaos -- --flaps 0 --loss 0.05 --delay-ms 20 --events 20000
//! ```
//!
//! - **Network.** As root (with `ip netns`): one namespace per node on a private bridge
//!   (`tests/common/netns.rs`), a cut is the worker's bridge port going down. Otherwise, or
//!   with `--loopback`: every node on 127.0.0.1, each worker dialling the master through a
//!   forwarder in this process (`nodecloud::testing::forwarder`), a cut is a blackhole of
//!   that forwarder. Either way the sockets stay open across a cut, as across a pulled cable.
//! - **Loss and delay** (`--loss P --delay-ms D`): every worker's link to the master goes
//!   through a forwarder that adds D ms each way and stalls a chunk 200 ms with probability P,
//!   which is how a lost segment shows through TCP. In a namespace the forwarder is this
//!   program again (hidden `--forward`), started inside the worker's namespace.
//! - **Nodes** are this program again (hidden `--run-node`), running the `nodecloud` command
//!   line's own code: `nodecloud --config FILE --node NAME`.
//! - The run itself is `tests/common/chaos.rs`, shared with the tests that assert on it.
//! - **Traffic.** The publisher (on worker-1) publishes `--events` events at `--rate` per
//!   second, alternately to every node and to worker-2 alone, each carrying its origin and
//!   sequence number; the subscriber (on worker-2) counts what arrives.
//! - **Flaps.** `--flaps` cuts of `--link`, each lasting a random `--min-cut-ms`..
//!   `--max-cut-ms` and followed by a random `--min-gap-ms`..`--max-gap-ms` with the link up.
//!
//! Prints one line and exits 0 (the figures are measured, not judged):
//!
//! ```text
//! flaps=5 sent=5000 received=4213 lost=787 duplicated=0 reordered=0 downs=4 refused=0 seconds=8.4 mode=netns ...
//! ```
//!
//! `lost` is what the publisher sent and the subscriber never received; `reordered` counts
//! arrivals with a sequence lower than one already received; `downs` counts `membership: …
//! down` lines in every node's log; `refused` the refusals the publisher received.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

// The run and the lab are shared with the tests.
#[path = "../tests/common"]
mod common {
    pub mod chaos;
    pub mod netns;
}

use common::chaos::{Launch, Network, Programs, Scenario};

#[derive(Parser, Debug, Clone)]
#[command(about = "nodecloud chaos benchmark: events across flapping links")]
struct Args {
    /// Cuts of the link.
    #[arg(long, default_value_t = 5)]
    flaps: u32,
    /// Events to publish.
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// Events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 200)]
    min_cut_ms: u64,
    #[arg(long, default_value_t = 2000)]
    max_cut_ms: u64,
    /// The link stays up this long at least before each cut.
    #[arg(long, default_value_t = 200)]
    min_gap_ms: u64,
    #[arg(long, default_value_t = 1000)]
    max_gap_ms: u64,
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    /// Failure threshold: by default 250 ms × 12 = 3 s, longer than the longest default cut,
    /// so a cut should take nobody down.
    #[arg(long, default_value_t = 12)]
    threshold: u32,
    /// Probability (0..=1) that a forwarded chunk stalls as a lost segment would.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Added delay each way, ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The worker whose link is cut: worker-1 (the publisher's) or worker-2 (the subscriber's).
    #[arg(long, default_value = "worker-2")]
    link: String,
    /// Seed of the random cut lengths and stalls (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Loopback and forwarders even when namespaces are available.
    #[arg(long)]
    loopback: bool,
    /// Print the nodes' `down` lines on stderr.
    #[arg(long)]
    show_downs: bool,
    /// Keep each node's log (at debug level) and the cuts in this directory.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
}

/// Hidden first arguments: this program as a node, or as a forwarder in a namespace.
const RUN_NODE: &str = "--run-node";
const FORWARD: &str = "--forward";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(RUN_NODE) => {
            let node_argv =
                std::iter::once("nodecloud".to_owned()).chain(argv[2..].iter().cloned());
            return nodecloud::cli::run(<nodecloud::cli::Cli as Parser>::parse_from(node_argv));
        }
        Some(FORWARD) => return block_on(common::chaos::serve_forwarder(&argv[2..])),
        _ => {}
    }
    let args = Args::parse();
    block_on(bench(args))
}

/// Run `work` on a current-thread runtime; an error is printed and is exit status 1.
fn block_on(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
        .and_then(|rt| rt.block_on(work));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> Result<(), String> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let link = match args.link.as_str() {
        "worker-1" => 1,
        "worker-2" => 2,
        other => return Err(format!("--link {other}: expected worker-1 or worker-2")),
    };
    let network = if !args.loopback && common::netns::missing_prerequisite().is_none() {
        Network::Namespaces
    } else {
        Network::Loopback
    };
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .map_err(|e| format!("where is this program: {e}"))?;
    let programs = Programs {
        node: Launch {
            program: me.clone(),
            args: vec![RUN_NODE.to_owned()],
        },
        forwarder: Some(Launch {
            program: me,
            args: vec![FORWARD.to_owned()],
        }),
    };
    let ms = Duration::from_millis;
    let scenario = Scenario {
        network,
        flaps: args.flaps,
        events: args.events,
        rate: args.rate,
        cut: (ms(args.min_cut_ms), ms(args.max_cut_ms)),
        gap: (ms(args.min_gap_ms), ms(args.max_gap_ms)),
        heartbeat_ms: args.heartbeat_ms,
        threshold: args.threshold,
        loss: args.loss,
        delay: ms(args.delay_ms),
        link,
        seed,
        logs: args.logs.clone(),
    };
    let report = common::chaos::run(&scenario, &programs).await?;
    if args.show_downs {
        for line in &report.down_lines {
            eprintln!("{line}");
        }
    }
    println!(
        "{report} heartbeat_ms={} threshold={} loss={} delay_ms={} link={} seed={seed}",
        args.heartbeat_ms, args.threshold, args.loss, args.delay_ms, args.link
    );
    Ok(())
}
