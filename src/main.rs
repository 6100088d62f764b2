//! The `nodecloud` command: parses arguments and calls the library ([`nodecloud::cli`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    nodecloud::cli::run(nodecloud::cli::Cli::parse())
}
