//! The `nodecloud` command: parses arguments and calls the library ([`nodecloud::cli`]).

use std::process::ExitCode;

use clap::Parser;

/// See the `mimalloc` feature in Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: nodecloud::alloc::Mimalloc = nodecloud::alloc::Mimalloc;

fn main() -> ExitCode {
    nodecloud::cli::run(nodecloud::cli::Cli::parse())
}
