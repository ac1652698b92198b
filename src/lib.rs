//! The `threads` binary's parts: the follower server, its configuration, and the command line.
//!
//! | module | what |
//! |---|---|
//! | [`follower`] | the follower's core: every operation it offers, whatever the transport |
//! | [`server`] | the follower's transports: HTTP API, WebSocket push, libp2p, operations endpoints |
//! | [`feeds`] | Atom and RSS feeds with RFC 5005 archives, for the follower and the bot alike |
//! | [`webhooks`] | webhook subscriptions and deliveries, for the follower and the bot alike |
//! | [`bot`] | the bot: a separate process holding read keys it was granted, serving views |
//! | [`config`] | layered configuration (defaults < file < `THREADS_*` env < flags) |
//! | [`cli`] | the `threads` subcommands |

pub mod bot;
pub mod cli;
pub mod config;
pub mod feeds;
pub mod follower;
pub mod server;
pub mod webhooks;
