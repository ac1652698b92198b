//! Client benchmark: prints how fast a writer appends to its local store and how fast a reader
//! catches up from a local follower, verifying and decrypting every record.
//!
//! ```text
//! cargo bench --bench peer
//! ```

mod common;

use std::time::Instant;

use serde_json::{json, Value};
use threads_client::Client;

/// As the targets are stated: 1 KiB bodies, 10,000 appended records, 100,000 caught up.
const BODY: usize = 1024;
const APPENDS: usize = 10_000;
const CATCH_UP: usize = 100_000;
/// Catch-up records come from this many writers (interleaved at the follower, as in a busy
/// thread), each writing in batches of this size.
const WRITERS: usize = 10;
const WRITE_BATCH: usize = 1000;

fn event(i: usize) -> Value {
    json!({"n": i, "data": "x".repeat(BODY)})
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("peer benchmark: {BODY} B bodies");

    // Writer: appends to its local store (durable SQLite), no network.
    let writer = Client::open(&dir.path().join("writer")).await.unwrap();
    let thread = writer.create_thread(true).await.unwrap().thread;
    let events: Vec<Value> = (0..APPENDS).map(event).collect();
    let started = Instant::now();
    writer.write_many(&thread, &events).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "append {APPENDS} records in one batch: {secs:.3} s = {:.0} records/s",
        APPENDS as f64 / secs
    );
    let started = Instant::now();
    for chunk in events.chunks(100) {
        writer.write_many(&thread, chunk).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "append {APPENDS} records in batches of 100: {secs:.3} s = {:.0} records/s",
        APPENDS as f64 / secs
    );

    // A follower on this machine (release build, embedded SQLite).
    let (server, url) = common::serve(&dir.path().join("server"), None, &[]).await;

    // Writers fill one thread at the follower.
    let first = Client::open(&dir.path().join("w0")).await.unwrap();
    let shared = first.create_thread(true).await.unwrap().thread;
    first.add_follower(&shared, &url, None).await.unwrap();
    let link = first
        .share(&shared, threads_client::Role::Writer, None)
        .unwrap();
    let mut writers = vec![first];
    for i in 1..WRITERS {
        let w = Client::open(&dir.path().join(format!("w{i}")))
            .await
            .unwrap();
        w.join(&link).await.unwrap();
        w.add_follower(&shared, &url, None).await.unwrap();
        writers.push(w);
    }
    let per_writer = CATCH_UP / WRITERS;
    for round in 0..per_writer / WRITE_BATCH {
        for w in &writers {
            let batch: Vec<Value> = (0..WRITE_BATCH)
                .map(|i| event(round * WRITE_BATCH + i))
                .collect();
            w.write_many(&shared, &batch).await.unwrap();
            w.push(&shared, |_, _| {}).await.unwrap();
        }
    }

    // The reader: pulls everything (verifying each record), then reads it all (decrypting).
    let reader = Client::open(&dir.path().join("reader")).await.unwrap();
    reader
        .join(
            &writers[0]
                .share(&shared, threads_client::Role::Reader, None)
                .unwrap(),
        )
        .await
        .unwrap();
    eprintln!("pulling");
    let server_pid = server.id().unwrap();
    let cpu_before = (
        common::cpu_secs("self"),
        common::cpu_secs(&server_pid.to_string()),
    );
    let started = Instant::now();
    let pulled = reader.pull(&shared, |_, _| {}).await.unwrap();
    let pull_secs = started.elapsed().as_secs_f64();
    println!(
        "pull: {pull_secs:.2} s; CPU time: reader {:.2} s, follower {:.2} s",
        common::cpu_secs("self") - cpu_before.0,
        common::cpu_secs(&server_pid.to_string()) - cpu_before.1
    );
    let (mut after, mut read) = (0, 0);
    loop {
        let page = reader.read(&shared, after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        read += page.len();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!((pulled.new as usize, read), (CATCH_UP, CATCH_UP));
    println!(
        "catch up {CATCH_UP} records from a local follower: pull and verify {pull_secs:.2} s, \
         then read and decrypt {:.2} s; {secs:.2} s in all = {:.0} records/s",
        secs - pull_secs,
        CATCH_UP as f64 / secs
    );
}
