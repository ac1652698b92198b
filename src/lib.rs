//! The `threads` binary's parts: the follower server, its configuration, and the command line.
//!
//! | module | what |
//! |---|---|
//! | [`server`] | the follower: HTTP API, WebSocket push, live fan-out, operations endpoints |
//! | [`config`] | layered configuration (defaults < file < `THREADS_*` env < flags) |
//! | [`cli`] | the `threads` subcommands |

pub mod cli;
pub mod config;
pub mod server;
