//! Storage as it grows, on Postgres: ingest, catch-up, block lookups, index sizes and vacuum
//! at each size from 1M to 20M stored records, with the records table as the migrations make
//! it (`plain`) and hash-partitioned by thread (`partitioned`).
//!
//! ```text
//! cargo bench --bench storage                          # both layouts, 1M, 5M, 10M and 20M
//! cargo bench --bench storage -- partitioned 1,2       # one layout, sizes in millions
//! ```
//!
//! Needs `THREADS_TEST_PG`. The table grows by SQL between sizes: rows of real size (the
//! blocks of one record made here) under random CIDs, in threads of 2,000 records across 10
//! logs, interleaved in arrival order as a busy follower stores them. What is measured at each
//! size goes through the server: real records pushed and verified, pulls and lookups over HTTP.

mod common;

use std::time::Instant;

use sqlx::{Connection, PgConnection};
use threads_core::{Cid, VerifiedRecord};

/// Bodies of a chat message or a document patch. (1 KiB bodies would need about 38 GB at
/// 20M records, more than this machine's free disk.)
const BODY: usize = 256;
/// Each size's ingest: 1,000 new logs in 100 threads (so every partition takes writes), 100
/// records each, pushed in batches.
const LOGS: usize = 1000;
const THREADS: usize = 100;
const RECORDS_PER_LOG: usize = 100;
const BATCH: usize = 500;
const PUSHERS: usize = 4;
/// Filler threads: 2,000 records in 10 logs; inserted 500 threads per statement.
const FILL_RECORDS: i64 = 2000;
const FILL_LOGS: usize = 10;
const FILL_CHUNK: i64 = 500;
/// Hash partitions of the partitioned layout.
const PARTITIONS: usize = 16;
/// Old threads pulled at each size (100,000 records spread over the whole table), and block
/// lookups timed one at a time.
const OLD_THREADS: i64 = 50;
const LOOKUPS: usize = 1000;

/// The records table of the migrations, partitioned by thread; the same columns and indexes.
fn partitioned_schema() -> String {
    let mut sql = String::from(
        "DROP TABLE records;
         CREATE TABLE records (
             thread_id BYTEA NOT NULL, seq BIGINT NOT NULL, log_id BYTEA NOT NULL,
             counter BIGINT NOT NULL, cid BYTEA NOT NULL, prev BYTEA, event_cid BYTEA NOT NULL,
             header_cid BYTEA NOT NULL, body_cid BYTEA NOT NULL, record BYTEA NOT NULL,
             event BYTEA NOT NULL, header BYTEA NOT NULL, body BYTEA NOT NULL,
             arrived_at BIGINT NOT NULL,
             PRIMARY KEY (thread_id, seq),
             FOREIGN KEY (thread_id, log_id) REFERENCES logs (thread_id, log_id) ON DELETE CASCADE
         ) PARTITION BY HASH (thread_id);",
    );
    for i in 0..PARTITIONS {
        sql += &format!(
            "CREATE TABLE records_{i} PARTITION OF records FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i});"
        );
    }
    sql += "CREATE UNIQUE INDEX records_log_counter ON records (thread_id, log_id, counter);
            CREATE INDEX records_cid_prefix ON records ((substr(cid, 5, 8)));
            CREATE INDEX records_event_cid_prefix ON records (thread_id, (substr(event_cid, 5, 8)));
            CREATE INDEX records_header_cid_prefix ON records (thread_id, (substr(header_cid, 5, 8)));
            CREATE INDEX records_body_cid_prefix ON records (thread_id, (substr(body_cid, 5, 8)));";
    sql
}

/// The tables that hold the rows: the partitions, or the one table. (`pg_partition_tree`
/// lists nothing for a table that is not partitioned.)
const LEAVES: &str = "WITH leaves AS (
    SELECT relid FROM pg_partition_tree('records') WHERE isleaf
    UNION SELECT 'records'::regclass WHERE NOT EXISTS (SELECT FROM pg_partition_tree('records')))";

/// The tables whose autovacuum is turned off, so that each vacuum is the one timed here.
async fn heap_tables(db: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "{LEAVES} SELECT relid::regclass::text FROM leaves"
    ))
    .fetch_all(db)
    .await
    .unwrap()
}

/// Adds filler threads `from..to` (by number) with `FILL_RECORDS` each.
async fn fill(url: &str, from: i64, to: i64, sample: &VerifiedRecord, logs: &[Vec<u8>]) {
    let mut db = PgConnection::connect(url).await.unwrap();
    // Filler rows are consistent by construction: no foreign-key triggers while they go in.
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut db)
        .await
        .unwrap();
    let b = sample.blocks();
    let id = "'\\x0155'::bytea || sha256(int8send(t))";
    let cid = |tag: u8, s: &str| {
        format!(
            "'\\x01711220'::bytea || sha256(int8send(t) || int8send({s}) || '\\x{tag:02x}'::bytea)"
        )
    };
    let per_log = FILL_RECORDS / FILL_LOGS as i64;
    let mut start = from;
    while start < to {
        let end = (start + FILL_CHUNK).min(to) - 1;
        let mut tx = db.begin().await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO threads (id, public, follow_key, seq, record_count, byte_count, created_at)
             SELECT {id}, true, $1, $2, $2, 0, 0 FROM generate_series($3::bigint, $4::bigint) t"
        ))
        .bind(vec![9u8; 32])
        .bind(FILL_RECORDS)
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(&format!(
            "INSERT INTO logs (thread_id, log_id, head_counter, registered_at)
             SELECT {id}, l, $1, 0 FROM generate_series($2::bigint, $3::bigint) t, unnest($4::bytea[]) l"
        ))
        .bind(per_log)
        .bind(start)
        .bind(end)
        .bind(logs)
        .execute(&mut *tx)
        .await
        .unwrap();
        // `s` outer, `t` inner: the threads' records interleave in arrival order.
        sqlx::query(&format!(
            "INSERT INTO records (thread_id, seq, log_id, counter, cid, prev, event_cid, header_cid,
                                  body_cid, record, event, header, body, arrived_at)
             SELECT {id}, s, ($1::bytea[])[1 + (s - 1) % {FILL_LOGS}], 1 + (s - 1) / {FILL_LOGS}, {},
                    CASE WHEN s > {FILL_LOGS} THEN {} END, {}, {}, {}, $2, $3, $4, $5, 0
             FROM generate_series(1, $6::bigint) s, generate_series($7::bigint, $8::bigint) t",
            cid(1, "s"),
            cid(1, &format!("s - {FILL_LOGS}")),
            cid(2, "s"),
            cid(3, "s"),
            cid(4, "s"),
        ))
        .bind(logs)
        .bind(&b.record)
        .bind(&b.event)
        .bind(&b.header)
        .bind(&b.body)
        .bind(FILL_RECORDS)
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        start = end + 1;
    }
}

async fn count(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Pulls whole threads by cursor in CAR pages, as a follower or a reader storing pages does.
async fn catch_up(http: &reqwest::Client, url: &str, threads: &[String]) -> (usize, f64) {
    let started = Instant::now();
    let mut pulled = 0;
    for thread in threads {
        let mut cursor = String::new();
        loop {
            let r = http
                .get(format!(
                    "{url}/v1/threads/{thread}/records?limit=1000&format=car&after={cursor}"
                ))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "pull: {}", r.status());
            cursor = r.headers()["x-threads-cursor"].to_str().unwrap().to_owned();
            pulled += r.headers()["x-threads-count"]
                .to_str()
                .unwrap()
                .parse::<usize>()
                .unwrap();
            let more = r.headers()["x-threads-more"] == "true";
            std::hint::black_box(r.bytes().await.unwrap().len());
            if !more {
                break;
            }
        }
    }
    (pulled, started.elapsed().as_secs_f64())
}

/// What one size's ingest measured.
struct Ingest {
    rate: f64,
    /// CPU per record of the server and of Postgres, in microseconds.
    server_us: f64,
    database_us: f64,
    threads: Vec<String>,
}

/// Pushes 100,000 new records in batches to the server `pid` at `url`.
async fn ingest(http: &reqwest::Client, url: &str, pid: &str) -> Ingest {
    let logs = common::logs(THREADS, LOGS / THREADS);
    for log in &logs {
        common::register(http, url, log).await;
    }
    let per_log: Vec<Vec<VerifiedRecord>> = logs
        .iter()
        .map(|log| common::records(log, RECORDS_PER_LOG, BODY, None))
        .collect();
    let batches = common::thread_batches(&logs, THREADS, &per_log, BATCH);
    let (server_cpu, database_cpu) = (common::cpu_secs(pid), common::postgres_cpu_secs());
    let started = Instant::now();
    common::push_threads(http, url, batches, PUSHERS).await;
    let n = (LOGS * RECORDS_PER_LOG) as f64;
    Ingest {
        rate: n / started.elapsed().as_secs_f64(),
        server_us: (common::cpu_secs(pid) - server_cpu) / n * 1e6,
        database_us: (common::postgres_cpu_secs() - database_cpu) / n * 1e6,
        threads: logs[..THREADS]
            .iter()
            .map(|l| l.thread.to_string())
            .collect(),
    }
}

/// Times `LOOKUPS` block fetches one at a time; returns p50 and p99 in milliseconds.
async fn lookups(http: &reqwest::Client, paths: &[String]) -> (f64, f64) {
    let mut ms = Vec::with_capacity(paths.len());
    for path in paths {
        let at = Instant::now();
        let r = http.get(path).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        std::hint::black_box(r.bytes().await.unwrap().len());
        ms.push(at.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (common::percentile(&ms, 0.5), common::percentile(&ms, 0.99))
}

async fn vacuum(db: &mut PgConnection, options: &str) -> f64 {
    let at = Instant::now();
    sqlx::query(&format!("VACUUM {options} records"))
        .execute(db)
        .await
        .unwrap();
    at.elapsed().as_secs_f64()
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run(layout: &str, sizes: &[i64]) {
    println!("\n## layout: {layout}");
    let url = threads_store::testing::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    // The server's first start applies the migrations; the table is then rebuilt if asked.
    let (child, _) = common::serve(dir.path(), Some(&url), &[]).await;
    drop(child);
    let mut db = PgConnection::connect(&url).await.unwrap();
    if layout == "partitioned" {
        sqlx::raw_sql(&partitioned_schema())
            .execute(&mut db)
            .await
            .unwrap();
    }
    for table in heap_tables(&mut db).await {
        sqlx::query(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = off)"
        ))
        .execute(&mut db)
        .await
        .unwrap();
    }
    let (server, server_url) = common::serve(dir.path(), Some(&url), &[]).await;
    let pid = server.id().unwrap().to_string();
    let http = reqwest::Client::new();

    // One real record's blocks give the filler rows their sizes; ten real log IDs their logs.
    let sample_logs = common::logs(1, FILL_LOGS);
    let sample = common::records(&sample_logs[0], 1, BODY, None).remove(0);
    let log_ids: Vec<Vec<u8>> = sample_logs.iter().map(|l| l.id.to_bytes()).collect();

    let mut filled = 0i64; // filler threads so far
    let mut deleted: Vec<i64> = Vec::new(); // filler threads whose records are gone
    for &millions in sizes {
        let target = millions * 1_000_000;
        let have = count(&mut db).await;
        let threads = ((target - have).max(0) + FILL_RECORDS - 1) / FILL_RECORDS;
        let at = Instant::now();
        // Two writers: one per core.
        let half = filled + threads / 2;
        tokio::join!(
            fill(&url, filled, half, &sample, &log_ids),
            fill(&url, half, filled + threads, &sample, &log_ids)
        );
        let fill_secs = at.elapsed().as_secs_f64();
        filled += threads;
        let after_fill = vacuum(&mut db, "(ANALYZE)").await;
        let stored = count(&mut db).await;
        println!(
            "\n### {:.1}M records (filled {} in {fill_secs:.0} s; vacuum of the new rows {after_fill:.1} s)",
            stored as f64 / 1e6,
            stored - have,
        );

        let wal_before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let pushed = ingest(&http, &server_url, &pid).await;
        let wal: f64 = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
        )
        .bind(&wal_before)
        .fetch_one(&mut db)
        .await
        .unwrap();
        println!(
            "ingest: {:.0} records/s ({} records, batches of {BATCH}, {PUSHERS} pushers); \
             CPU per record: server {:.0} µs, Postgres {:.0} µs; WAL {:.0} B/record",
            pushed.rate,
            LOGS * RECORDS_PER_LOG,
            pushed.server_us,
            pushed.database_us,
            wal / (LOGS * RECORDS_PER_LOG) as f64
        );

        // Catch-up: the threads just pushed, then old threads whose records are spread over
        // the whole table (one page of the table per record).
        let (n, secs) = catch_up(&http, &server_url, &pushed.threads).await;
        println!(
            "catch-up of the new threads: {n} records in {secs:.2} s = {:.0} records/s",
            n as f64 / secs
        );
        let old: Vec<String> = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT '\\x0155'::bytea || sha256(int8send(t)) FROM generate_series(0, $1 - 1) t \
             WHERE t <> ALL($3) ORDER BY random() LIMIT $2",
        )
        .bind(filled)
        .bind(OLD_THREADS)
        .bind(&deleted)
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .map(|id| threads_core::ThreadId::from_bytes(&id).unwrap().to_string())
        .collect();
        let (n, secs) = catch_up(&http, &server_url, &old).await;
        println!(
            "catch-up of {OLD_THREADS} old threads: {n} records in {secs:.2} s = {:.0} records/s",
            n as f64 / secs
        );

        // Block lookups of random stored blocks: records by CID alone, and records and bodies
        // within their thread.
        let percent = (LOOKUPS as f64 * 4.0 / stored as f64 * 100.0).min(100.0);
        let picks: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = sqlx::query_as(&format!(
            "SELECT thread_id, cid, body_cid FROM records TABLESAMPLE SYSTEM ({percent}) LIMIT {LOOKUPS}"
        ))
        .fetch_all(&mut db)
        .await
        .unwrap();
        let pick = |i: usize, p: &(Vec<u8>, Vec<u8>, Vec<u8>)| {
            let cid = Cid::try_from(if i % 2 == 0 { &p.1[..] } else { &p.2[..] }).unwrap();
            (threads_core::ThreadId::from_bytes(&p.0).unwrap(), cid)
        };
        let by_cid: Vec<String> = picks
            .iter()
            .map(|p| {
                format!(
                    "{server_url}/v1/blocks/{}",
                    Cid::try_from(&p.1[..]).unwrap()
                )
            })
            .collect();
        let in_thread: Vec<String> = picks
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (t, c) = pick(i, p);
                format!("{server_url}/v1/threads/{t}/blocks/{c}")
            })
            .collect();
        let (p50, p99) = lookups(&http, &by_cid).await;
        let (t50, t99) = lookups(&http, &in_thread).await;
        println!(
            "block by CID: p50 {p50:.2} ms, p99 {p99:.2} ms; within its thread: p50 {t50:.2} ms, p99 {t99:.2} ms ({} lookups each)",
            picks.len()
        );

        // Sizes, summed over partitions.
        let sizes: Vec<(String, i64)> = sqlx::query_as(&format!(
            "{LEAVES} SELECT 'heap', sum(pg_relation_size(relid))::bigint FROM leaves
             UNION ALL
             SELECT coalesce(p.inhparent::regclass::text, x.indexrelid::regclass::text),
                    sum(pg_relation_size(x.indexrelid))::bigint
             FROM leaves t JOIN pg_index x ON x.indrelid = t.relid
             LEFT JOIN pg_inherits p ON p.inhrelid = x.indexrelid
             GROUP BY 1"
        ))
        .fetch_all(&mut db)
        .await
        .unwrap();
        let toast: i64 = sqlx::query_scalar(&format!(
            "{LEAVES} SELECT coalesce(sum(pg_total_relation_size(c.reltoastrelid)), 0)::bigint
             FROM leaves t JOIN pg_class c ON c.oid = t.relid"
        ))
        .fetch_one(&mut db)
        .await
        .unwrap();
        let total: i64 = sizes.iter().map(|s| s.1).sum::<i64>() + toast;
        let listed: Vec<String> = sizes
            .iter()
            .map(|(name, bytes)| {
                format!(
                    "{} {:.0} MiB",
                    name.trim_start_matches("records_"),
                    mib(*bytes)
                )
            })
            .collect();
        println!(
            "on disk: {:.0} B/record; {}; toast {:.0} MiB",
            total as f64 / stored as f64,
            listed.join(", "),
            mib(toast)
        );

        // Vacuum after a thread is deleted (as `DELETE /v1/threads/{id}` does): the default
        // pass, then one forced through every index (what it costs once deletions pass the
        // 2% of pages under which Postgres skips the indexes).
        let gone: i64 = filled / 2;
        deleted.extend([gone, gone + 1]);
        for table in ["records", "logs", "threads"] {
            let column = if table == "threads" {
                "id"
            } else {
                "thread_id"
            };
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE {column} = '\\x0155'::bytea || sha256(int8send($1::bigint))"
            ))
            .bind(gone)
            .execute(&mut db)
            .await
            .unwrap();
        }
        let plain = vacuum(&mut db, "").await;
        // A second thread's rows give the forced pass something to remove.
        sqlx::query(
            "DELETE FROM records WHERE thread_id = '\\x0155'::bytea || sha256(int8send($1::bigint))",
        )
        .bind(gone + 1)
        .execute(&mut db)
        .await
        .unwrap();
        let forced = vacuum(&mut db, "(INDEX_CLEANUP ON)").await;
        println!(
            "vacuum after deleting a thread of {FILL_RECORDS} records: {plain:.2} s; through every index: {forced:.2} s"
        );
    }
    // The next layout needs the disk.
    drop((db, server));
    common::drop_postgres_database(&url).await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let layouts: Vec<&str> = ["plain", "partitioned"]
        .into_iter()
        .filter(|l| {
            !args.iter().any(|a| a == "plain" || a == "partitioned") || args.iter().any(|a| a == l)
        })
        .collect();
    let sizes: Vec<i64> = args
        .iter()
        .find(|a| a.contains(',') || a.parse::<i64>().is_ok())
        .map(|s| {
            s.split(',')
                .map(|n| n.parse().expect("sizes in millions"))
                .collect()
        })
        .unwrap_or(vec![1, 5, 10, 20]);
    if std::env::var_os(threads_store::testing::POSTGRES_ENV).is_none() {
        println!("storage benchmark: needs THREADS_TEST_PG (eval \"$(scripts/postgres start DIR)\" sets it)");
        return;
    }
    println!(
        "storage benchmark: {BODY} B bodies; filler threads of {FILL_RECORDS} records in {FILL_LOGS} logs; \
         at each size {} records pushed into {THREADS} new threads; {PARTITIONS} partitions",
        LOGS * RECORDS_PER_LOG
    );
    for layout in layouts {
        run(layout, &sizes).await;
    }
}
