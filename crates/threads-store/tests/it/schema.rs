//! The Postgres schema as a distributed Postgres takes it (`docs/scaling.md`): every table is
//! either placed by thread or small, and a per-thread table's primary key, unique indexes and
//! foreign keys all hold within one thread. Read from the catalog of a migrated database, so
//! a table or key added later without its thread fails here.

use sqlx::{Connection, PgConnection};
use threads_store::testing::fresh_postgres_database;

/// Tables placed by thread, with the column that names it.
const BY_THREAD: &[(&str, &str)] = &[
    ("threads", "id"),
    ("logs", "thread_id"),
    ("records", "thread_id"),
    ("forks", "thread_id"),
    ("webhooks", "thread_id"),
    ("deliveries", "thread_id"),
    ("delivery_attempts", "thread_id"),
];

/// Tables not placed by thread: small ones copied to every node, and the nonces of signed
/// requests, placed by nonce.
const OTHERS: &[&str] = &[
    "settings",
    "registration_tokens",
    "leases",
    "request_nonces",
    "_sqlx_migrations",
];

fn thread_column(table: &str) -> Option<&'static str> {
    BY_THREAD.iter().find(|(t, _)| *t == table).map(|(_, c)| *c)
}

#[tokio::test]
async fn every_key_of_a_per_thread_table_holds_within_its_thread() {
    let url = fresh_postgres_database().await;
    drop(
        threads_store::open(Some(&url), std::path::Path::new("/nonexistent"))
            .await
            .unwrap(),
    );
    let mut db = PgConnection::connect(&url).await.unwrap();

    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    for (table,) in &tables {
        assert!(
            thread_column(table).is_some() || OTHERS.contains(&table.as_str()),
            "table {table} is neither placed by thread nor listed as small"
        );
    }

    // Primary keys and unique indexes (expression columns have no name and count as none).
    let unique: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, i.relname::text, \
           ARRAY(SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = c.oid AND a.attnum = ANY(x.indkey)) \
         FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND x.indisunique",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut checked = 0;
    for (table, index, columns) in &unique {
        if let Some(column) = thread_column(table) {
            assert!(
                columns.iter().any(|c| c == column),
                "{table}: unique index {index} on {columns:?} does not hold {column}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= BY_THREAD.len(),
        "every per-thread table has a key"
    );

    // Foreign keys: from a per-thread table to one, thread column to thread column.
    let foreign: Vec<(String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT f.conrelid::regclass::text, f.confrelid::regclass::text, \
           ARRAY(SELECT a.attname::text FROM unnest(f.conkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n ORDER BY k.o), \
           ARRAY(SELECT a.attname::text FROM unnest(f.confkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.n ORDER BY k.o) \
         FROM pg_constraint f WHERE f.contype = 'f' \
           AND f.connamespace = current_schema()::regnamespace",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(!foreign.is_empty());
    for (from, to, columns, referenced) in &foreign {
        let (Some(own), Some(theirs)) = (thread_column(from), thread_column(to)) else {
            panic!("a foreign key from {from} to {to} leaves the per-thread tables");
        };
        let at = columns.iter().position(|c| c == own);
        assert!(
            at.is_some() && referenced.get(at.unwrap()).map(String::as_str) == Some(theirs),
            "{from} {columns:?} -> {to} {referenced:?}: not thread to thread"
        );
    }
}
