//! `threads`: the follower server and the command line, in one binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    threads::cli::Cli::parse().run()
}
