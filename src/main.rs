//! `threads`: the follower server and the command line, in one binary.

use std::process::ExitCode;

use clap::Parser;

/// Requests, pages and views allocate and free many small buffers across threads, which
/// mimalloc serves with less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    threads::cli::Cli::parse().run()
}
