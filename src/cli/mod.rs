//! Command-line entry points. Each subcommand is a module.

mod bot;
mod db;
mod inspect;
mod ops;
mod peer;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Threads: signed, hash-linked, encrypted single-writer logs, and the follower that keeps them.
#[derive(Debug, Parser)]
#[command(name = "threads", version, about)]
pub struct Cli {
    #[command(flatten)]
    peer: peer::Peer,
    #[command(subcommand)]
    command: Command,
}

/// Input the user must correct (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

#[derive(Debug, Subcommand)]
enum Command {
    Serve(serve::Args),
    Healthcheck(ops::Healthcheck),
    Migrate(ops::Migrate),
    CheckConfig(ops::CheckConfig),
    Inspect(inspect::Args),
    /// A bot: the trusted reader writers grant threads to, serving their views.
    Bot {
        #[command(subcommand)]
        command: bot::Command,
    },
    #[command(flatten)]
    Peer(peer::Command),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Serve(args) => serve::run(args),
            Command::Healthcheck(c) => c.run(),
            Command::Migrate(c) => c.run(),
            Command::CheckConfig(c) => c.run(),
            Command::Inspect(args) => inspect::run(args),
            Command::Bot { command } => bot::run(command, &self.peer),
            Command::Peer(command) => self.peer.run(command),
        }
    }
}
