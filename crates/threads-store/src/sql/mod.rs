//! The SQL both backends share, and the ingest rule.
//!
//! | module | what |
//! |---|---|
//! | `rows` | row types and their decoding into the model's values |
//! | `rule` | the ingest rule: duplicate, gap and fork decisions, before any row is written |
//! | `group` | a group commit's decisions: what each backend's ingest writes, decided alike |
//! | `records` | [`Store`](crate::Store): threads, logs, records, nonces, tokens |
//! | `webhooks` | [`WebhookStore`](crate::WebhookStore): subscriptions, cursors, deliveries |
//!
//! The statements are the same text on SQLite and Postgres (`$n` placeholders, `RETURNING`,
//! `ON CONFLICT`), so one macro expands the [`Store`](crate::Store) implementation for each
//! backend type. A backend struct provides `write` and `read` connections, a `changes` sender
//! and its own group commit (`ingest_group`), which reads and writes as suits the backend and
//! decides through [`group::Group`]: Postgres locks the threads' rows in ID order and announces
//! changes with `pg_notify`, delivered at commit; SQLite runs the whole transaction on a
//! thread of its own (`sqlite::ingest`) and announces changes in-process.

pub(crate) mod group;
pub(crate) mod records;
pub(crate) mod rows;
pub(crate) mod rule;
pub(crate) mod webhooks;
