//! Atom and RSS feeds: entries, RFC 5005 archives, conditional GET, private threads, and
//! acceptance by feed parsers that are not ours (feed-rs, and Python's feedparser).

use reqwest::header;
use reqwest::StatusCode;
use threads_core::auth::pull_token;
use threads_core::{SignaturePolicy, VerifiedRecord};
use threads_store::testing::TestLog;

use crate::harness::{Backend, Server};

async fn get(
    server: &Server,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> reqwest::Response {
    let mut request = server.http.get(format!("{}{path}", server.url));
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.send().await.unwrap()
}

async fn parsed(server: &Server, path: &str) -> feed_rs::model::Feed {
    let response = get(server, path, &[]).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    feed_rs::parser::parse(&response.bytes().await.unwrap()[..]).expect("feed-rs parses it")
}

fn link<'a>(feed: &'a feed_rs::model::Feed, rel: &str) -> Option<&'a str> {
    feed.links
        .iter()
        .find(|l| l.rel.as_deref() == Some(rel))
        .map(|l| l.href.as_str())
}

/// Pushes `n` records to a log, in batches.
async fn push(server: &Server, log: &mut TestLog, n: usize) -> Vec<VerifiedRecord> {
    let records: Vec<VerifiedRecord> = (0..n).map(|_| log.next(64)).collect();
    for chunk in records.chunks(100) {
        let batch: Vec<_> = chunk.iter().map(|r| (&*log, r)).collect();
        assert_eq!(server.push(&batch).await.0, StatusCode::OK);
    }
    records
}

#[tokio::test]
async fn atom_feeds_page_into_immutable_archives() {
    let server = Server::start(Backend::Sqlite).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let records = push(&server, &mut log, 250).await;
    let base = format!("/v1/threads/{}/feed.atom", log.thread);

    // The current feed: the newest 100, newest first, and a link to the newest archive.
    let current = parsed(&server, &base).await;
    assert_eq!(current.entries.len(), 100);
    assert_eq!(
        current.entries[0].id,
        format!("urn:threads:record:{}", records[249].cid())
    );
    assert_eq!(
        current.entries[99].id,
        format!("urn:threads:record:{}", records[150].cid())
    );
    assert!(link(&current, "prev-archive")
        .unwrap()
        .ends_with("feed.atom?page=2"));
    assert!(link(&current, "self").unwrap().ends_with("feed.atom"));

    // An entry's content is the record as a CAR: the reader with keys verifies and opens it.
    let entry = &current.entries[0];
    let content = entry.content.as_ref().unwrap();
    assert_eq!(content.content_type.to_string(), "application/vnd.ipld.car");
    let car = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        content.body.as_ref().unwrap().trim(),
    )
    .unwrap();
    let pushed = threads::server::v1::wire::read_car(&car).await.unwrap();
    let record = pushed[0]
        .blocks
        .clone()
        .verify(log.keys.service(), &log.id, SignaturePolicy::CurrentOnly)
        .unwrap();
    assert_eq!(record.cid(), records[249].cid());
    assert_eq!(record.read(log.keys.read().unwrap()).unwrap().len(), 66);
    // Its four nodes link to raw blocks within the thread, and each link answers.
    let related: Vec<_> = entry
        .links
        .iter()
        .filter(|l| l.rel.as_deref() == Some("related"))
        .collect();
    assert_eq!(related.len(), 4);
    for l in related {
        let block = server.http.get(&l.href).send().await.unwrap();
        assert_eq!(block.status(), StatusCode::OK, "{}", l.href);
    }

    // Archives: complete pages only, linked both ways, immutable.
    let page2 = get(&server, &format!("{base}?page=2"), &[]).await;
    assert!(page2.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let text = page2.text().await.unwrap();
    assert!(text.contains("<fh:archive"), "{}", &text[..400]);
    let page2 = feed_rs::parser::parse(text.as_bytes()).unwrap();
    assert_eq!(page2.entries.len(), 100);
    assert_eq!(
        page2.entries[0].id,
        format!("urn:threads:record:{}", records[199].cid())
    );
    assert!(link(&page2, "prev-archive").unwrap().ends_with("page=1"));
    assert!(link(&page2, "current").unwrap().ends_with("feed.atom"));
    assert!(link(&page2, "next-archive").is_none());
    let page1 = parsed(&server, &format!("{base}?page=1")).await;
    assert!(link(&page1, "prev-archive").is_none());
    assert!(link(&page1, "next-archive").unwrap().ends_with("page=2"));
    for missing in ["0", "3"] {
        let (status, body) = server.get(&format!("{base}?page={missing}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "no_such_archive");
    }

    // Conditional GET: an unchanged feed answers 304, by ETag or by date.
    let first = get(&server, &base, &[]).await;
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    let modified = first.headers()[header::LAST_MODIFIED]
        .to_str()
        .unwrap()
        .to_owned();
    let again = get(&server, &base, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let again = get(&server, &base, &[(header::IF_MODIFIED_SINCE, &modified)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    push(&server, &mut log, 1).await;
    let changed = get(&server, &base, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()[header::ETAG].to_str().unwrap(), etag);
    // An archive page does not change when records arrive.
    let page2_again = get(&server, &format!("{base}?page=2"), &[]).await;
    assert_eq!(page2_again.status(), StatusCode::OK);

    // The log's own feed pages by counter.
    let log_feed = parsed(
        &server,
        &format!("/v1/threads/{}/logs/{}/feed.atom", log.thread, log.id),
    )
    .await;
    assert_eq!(log_feed.entries.len(), 100);
}

#[tokio::test]
async fn rss_feeds_and_private_threads() {
    let server = Server::start(Backend::Sqlite).await;
    let mut log = TestLog::new();
    server.register(&log, false).await;
    let records = push(&server, &mut log, 3).await;
    let base = format!("/v1/threads/{}/feed.rss", log.thread);

    // Private: refused without the pull token, served with it in the query (feed readers
    // cannot set headers), and the feed's links carry it on.
    let (status, body) = server.get(&base).await;
    assert!(status.is_client_error(), "{status} {body}");
    let token = pull_token(log.keys.service(), &log.thread);
    let with_token = format!("{base}?token={token}");
    let feed = parsed(&server, &with_token).await;
    assert_eq!(feed.entries.len(), 3);
    let item = &feed.entries[0];
    assert_eq!(item.id, format!("urn:threads:record:{}", records[2].cid()));
    let car = item.links[0].href.clone();
    assert!(car.contains(&format!("token={token}")), "{car}");
    let response = server.http.get(&car).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let pulled = threads::server::v1::wire::read_car(&response.bytes().await.unwrap())
        .await
        .unwrap();
    assert_eq!(pulled[0].blocks, *records[2].blocks());
}

/// Python's feedparser, the parser behind many feed readers, reads both formats without
/// complaint (`bozo` is false) and sees every entry.
#[tokio::test]
async fn feedparser_accepts_both_formats() {
    let server = Server::start(Backend::Sqlite).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    push(&server, &mut log, 120).await;
    for (format, version) in [("atom", "atom10"), ("rss", "rss20")] {
        for page in ["", "?page=1"] {
            let url = format!(
                "{}/v1/threads/{}/feed.{format}{page}",
                server.url, log.thread
            );
            let script = format!(
                "import feedparser; d = feedparser.parse({url:?}); \
                 print(d.version, int(bool(d.bozo)), len(d.entries), repr(d.get('bozo_exception')))"
            );
            let output = tokio::process::Command::new("python3")
                .args(["-c", &script])
                .output()
                .await
                .expect("python3 runs");
            let out = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(out.trim(), format!("{version} 0 100 None"), "{url}");
        }
    }
}

/// Feed links name the host the client reached; `X-Forwarded-Host` and `-Proto` count only
/// when the operator says a proxy sets them (a shared cache keeps archives for a year), and a
/// token carried on in links is URL-encoded.
#[tokio::test]
async fn forwarding_headers_are_trusted_only_when_configured() {
    let forged = [
        (
            header::HeaderName::from_static("x-forwarded-host"),
            "evil.example",
        ),
        (
            header::HeaderName::from_static("x-forwarded-proto"),
            "https",
        ),
    ];
    let server = Server::start(Backend::Sqlite).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    push(&server, &mut log, 150).await;
    let path = format!("/v1/threads/{}/feed.atom", log.thread);
    let response = get(&server, &path, &forged).await;
    let feed = feed_rs::parser::parse(&response.bytes().await.unwrap()[..]).unwrap();
    let prev = link(&feed, "prev-archive").unwrap();
    assert!(prev.starts_with(&server.url), "{prev}");

    // A public thread reads with any token, which is carried on in links: URL-encoded.
    let token: String = url::form_urlencoded::byte_serialize(b"a&page=1 <b>").collect();
    let feed = parsed(&server, &format!("{path}?token={token}")).await;
    let prev = link(&feed, "prev-archive").unwrap();
    assert!(prev.ends_with("token=a%26page%3D1+%3Cb%3E"), "{prev}");

    let proxied = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_TRUST_FORWARDED_HEADERS", "true")],
    )
    .await;
    let mut log = TestLog::new();
    proxied.register(&log, true).await;
    push(&proxied, &mut log, 150).await;
    let path = format!("/v1/threads/{}/feed.atom", log.thread);
    let response = get(&proxied, &path, &forged).await;
    let feed = feed_rs::parser::parse(&response.bytes().await.unwrap()[..]).unwrap();
    let prev = link(&feed, "prev-archive").unwrap();
    assert!(prev.starts_with("https://evil.example/"), "{prev}");
}
