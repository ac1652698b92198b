//! Bot benchmark: prints how fast a bot catches up a granted thread into its views, end to end
//! from a follower on this machine, how fast it answers indexed document queries, and how many
//! decrypted webhook deliveries per second it sends to 50 endpoints. The
//! catch-up is measured twice: writers who take turns and see each other's events (their
//! clocks follow the arrival order), and writers who wrote apart (every writer's clocks
//! overlap the others': most pages hold events that sort before what is applied already).
//!
//! ```text
//! cargo bench --bench bot
//! ```

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use threads_client::{Client, Role};
use threads_db::{docs, Envelope};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// As the targets are stated: 100,000 events of about 1 KiB from 10 writers.
const EVENTS: usize = 100_000;
const WRITERS: usize = 10;
const WRITE_BATCH: usize = 1000;
const QUERIES: usize = 2000;
/// Decrypted webhooks: 50 endpoints, each sent every one of 2,000 new events.
const ENDPOINTS: usize = 50;
const HOOKED_EVENTS: usize = 2000;

/// One document insert into `items`, about 1 KiB as an event body, at logical clock `clock`.
fn event(writer: usize, i: usize, clock: u64) -> Value {
    let doc = json!({"_id": format!("w{writer}-{i}"), "n": i * WRITERS + writer,
        "writer": writer, "data": "x".repeat(900)});
    Envelope::new(clock, 0, vec![docs::insert("items", doc)]).to_body()
}

/// Ten writers fill a new thread at the follower: a collection indexed by `n`, then
/// documents, in rounds of one batch per writer. `apart`: each writer's clocks start again
/// from the same place (they never saw each other's events); otherwise each batch's clocks
/// follow the one pushed before it. Returns the writers (the first made the thread).
async fn fill(
    dir: &std::path::Path,
    url: &str,
    apart: bool,
) -> (Vec<Client>, threads_core::ThreadId) {
    let first = Client::open(&dir.join("w0")).await.unwrap();
    let thread = first.create_thread(true).await.unwrap().thread;
    first.add_follower(&thread, url, None).await.unwrap();
    let create = Envelope::new(1, 0, vec![docs::create_collection("items", None, &["n"])]);
    first.write(&thread, &create.to_body()).await.unwrap();
    let link = first.share(&thread, Role::Writer, None).unwrap();
    let mut writers = vec![first];
    for i in 1..WRITERS {
        let w = Client::open(&dir.join(format!("w{i}"))).await.unwrap();
        w.join(&link).await.unwrap();
        w.add_follower(&thread, url, None).await.unwrap();
        writers.push(w);
    }
    for round in 0..EVENTS / WRITERS / WRITE_BATCH {
        for (n, w) in writers.iter().enumerate() {
            let batch: Vec<Value> = (0..WRITE_BATCH)
                .map(|i| {
                    let at = round * WRITE_BATCH + i;
                    let turn = if apart {
                        at
                    } else {
                        (round * WRITERS + n) * WRITE_BATCH + i
                    };
                    event(n, at, turn as u64 + 2)
                })
                .collect();
            w.write_many(&thread, &batch).await.unwrap();
            w.push(&thread, |_, _| {}).await.unwrap();
        }
    }
    (writers, thread)
}

/// The JSON a request to the bot is answered with.
async fn answer(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("bot benchmark: {EVENTS} events of ~1 KiB from {WRITERS} writers");
    let (server, url) = common::serve(&dir.path().join("server"), None, &[]).await;
    let server_pid = server.id().unwrap().to_string();

    // The bot: its own process, keys sealed under a main key, views on disk.
    let bot_dir = dir.path().join("bot");
    let key_file = dir.path().join("main.key");
    std::fs::write(
        &key_file,
        threads_client::MainKey::random().to_base64().as_bytes(),
    )
    .unwrap();
    let bin = std::env::var_os("THREADS_BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_threads").into());
    let mut bot = Command::new(bin)
        .args([
            "bot",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "bench",
        ])
        .arg("--data-dir")
        .arg(&bot_dir)
        .arg("--main-key-file")
        .arg(&key_file)
        .env("RUST_LOG", "warn")
        // The receivers are on loopback.
        .env("THREADS_BOT_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the bot starts");
    let mut lines = BufReader::new(bot.stdout.take().unwrap()).lines();
    let bot_url = lines.next_line().await.unwrap().unwrap();
    let bot_url = bot_url.strip_prefix("listening on ").unwrap().to_owned();
    let bot_id = lines.next_line().await.unwrap().unwrap();
    let bot_id = bot_id.strip_prefix("identity ").unwrap().parse().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    let bot_pid = bot.id().unwrap().to_string();
    let mut first = None;
    for (apart, label) in [(false, "writers in turn"), (true, "writers apart")] {
        let (writers, thread) = fill(&dir.path().join(label), &url, apart).await;
        let invite = writers[0]
            .share(&thread, Role::Reader, Some(&bot_id))
            .unwrap();
        let cpu_before = common::cpu_secs(&bot_pid);
        let server_cpu_before = common::cpu_secs(&server_pid);
        let written_before = common::written_bytes(&bot_pid);
        let started = Instant::now();
        let granted = answer(
            http.post(format!("{bot_url}/v1/grants"))
                .bearer_auth("bench")
                .json(&json!({"invite": invite})),
        )
        .await;
        let status_url = format!("{bot_url}/v1/threads/{thread}");
        let mut applied = granted["applied"].as_u64().unwrap_or(0);
        while applied < (EVENTS + 1) as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let status = answer(http.get(&status_url).bearer_auth("bench")).await;
            applied = status["applied"].as_u64().unwrap_or(0);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "catch up {} events into the views, end to end from the follower, {label}: \
             {secs:.2} s = {:.0} events/s (bot CPU {:.2} s, follower CPU {:.2} s; the bot \
             wrote {:.0} MB)",
            EVENTS + 1,
            (EVENTS + 1) as f64 / secs,
            common::cpu_secs(&bot_pid) - cpu_before,
            common::cpu_secs(&server_pid) - server_cpu_before,
            (common::written_bytes(&bot_pid) - written_before) as f64 / 1e6
        );
        first.get_or_insert((status_url, writers, thread));
    }
    let (status_url, writers, thread) = first.expect("measured above");

    // Indexed queries through the HTTP API, one at a time, with a read token.
    let token = answer(
        http.post(format!("{status_url}/tokens"))
            .bearer_auth("bench"),
    )
    .await;
    let token = token["token"].as_str().unwrap().to_owned();
    let find = format!("{status_url}/collections/items/find");
    let mut took = Vec::with_capacity(QUERIES);
    for q in 0..QUERIES {
        let n = (q * 7919) % EVENTS;
        let query = json!({"where": {"field": "n", "eq": n}});
        let started = Instant::now();
        let page = answer(http.post(&find).bearer_auth(&token).json(&query)).await;
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page["docs"][0]["n"], n, "{page}");
    }
    took.sort_by(f64::total_cmp);
    println!(
        "indexed find over {EVENTS} documents, {QUERIES} queries one at a time: p50 {:.2} ms, \
         p99 {:.2} ms",
        common::percentile(&took, 0.50),
        common::percentile(&took, 0.99)
    );
    // Decrypted webhooks: 50 endpoints on the thread, then new events; every event reaches
    // every endpoint.
    let (receiver, received) = common::receiver().await;
    for n in 0..ENDPOINTS {
        let hook = answer(
            http.post(format!("{bot_url}/v1/webhooks"))
                .bearer_auth("bench")
                .json(
                    &json!({"thread": thread.to_string(), "url": format!("{receiver}/hook/{n}")}),
                ),
        )
        .await;
        assert!(hook["secret"].is_string(), "{hook}");
    }
    let cpu_before = common::cpu_secs(&bot_pid);
    let started = Instant::now();
    for round in 0..HOOKED_EVENTS / WRITE_BATCH {
        let batch: Vec<Value> = (0..WRITE_BATCH)
            .map(|i| {
                let at = EVENTS + round * WRITE_BATCH + i;
                event(0, at, (EVENTS * 2 + at) as u64)
            })
            .collect();
        writers[0].write_many(&thread, &batch).await.unwrap();
        writers[0].push(&thread, |_, _| {}).await.unwrap();
    }
    let expected = HOOKED_EVENTS * ENDPOINTS;
    while received.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "decrypted webhooks, {HOOKED_EVENTS} new events to {ENDPOINTS} endpoints, from the first \
         push to the last delivery: {expected} deliveries in {secs:.2} s = {:.0} deliveries/s \
         (bot CPU {:.2} s)",
        expected as f64 / secs,
        common::cpu_secs(&bot_pid) - cpu_before
    );
}
