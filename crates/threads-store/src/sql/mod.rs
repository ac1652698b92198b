//! The SQL both backends share, and the ingest rule.
//!
//! | module | what |
//! |---|---|
//! | `rows` | row types and their decoding into the model's values |
//! | `rule` | the ingest rule: duplicate, gap and fork decisions, before any row is written |
//! | `records` | [`Store`](crate::Store): threads, logs, records, nonces, tokens |
//! | `webhooks` | [`WebhookStore`](crate::WebhookStore): subscriptions, cursors, deliveries |
//!
//! The statements are the same text on SQLite and Postgres (`$n` placeholders, `RETURNING`,
//! `ON CONFLICT`), so one macro expands the [`Store`](crate::Store) implementation for each
//! backend type. A backend struct provides `write` and `read` pools, a `changes` sender, and the
//! group commit's hooks: `BEGIN_INGEST` and `read_heads` (Postgres: row locks in ID order, then
//! the logs' heads; SQLite: its one write lock from `BEGIN IMMEDIATE`, and one statement),
//! `write_group` (Postgres: a statement each; SQLite: one call of several statements),
//! `notify_in_tx` (Postgres: `pg_notify`, delivered at commit) and `after_commit` (SQLite:
//! in-process broadcast).

pub(crate) mod records;
pub(crate) mod rows;
pub(crate) mod rule;
pub(crate) mod webhooks;
