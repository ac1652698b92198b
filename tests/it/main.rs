//! End-to-end tests: real `threads serve` processes on real sockets, driven by real HTTP and
//! WebSocket clients, on both storage backends.

mod harness;

mod backup;
mod bot;
mod bot_bridges;
mod cluster;
mod commands;
mod database;
mod feeds;
mod group_commit;
mod interop;
mod live_http;
mod operations;
mod p2p;
mod peers;
mod push_pull;
mod registration;
mod replica;
mod web_client;
mod webhooks;
mod websocket;
