//! The WebSocket message handler takes whatever a client sends, pipelined without waiting for
//! answers: subscriptions to a thread with a backlog (while earlier ones still stream), to
//! unknown and malformed threads, with any cursor and token, unsubscriptions, any text, binary
//! and ping frames. Whatever the sequence, the server does not panic (a panic aborts the run),
//! answers every message once and in order, and keeps answering: a last message sent after
//! them is answered within seconds. The connection's queue holds 2 messages, so a backlog
//! always waits on it.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use threads::config::{Config, Overrides, P2pOverrides};
use threads_client::follower::{FollowerClient, WireRecord};
use threads_core::auth::{pull_token, Action};
use threads_store::testing::TestLog;
use tokio_tungstenite::tungstenite::Message;

/// Records in the known thread: more than the queue, so every subscription to it streams.
const BACKLOG: usize = 60;
/// Frames sent per run, at most.
const MAX_FRAMES: usize = 300;
/// The thread of the last message, whose answer closes a run.
const LAST: &str = "last";
/// How long the last message's answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

#[derive(Arbitrary, Debug)]
enum Frame {
    Subscribe {
        thread: Thread,
        cursor: Option<Cursor>,
        token: Option<Token>,
    },
    Unsubscribe {
        thread: Thread,
    },
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Thread {
    Known,
    Unknown,
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Cursor {
    Start,
    Middle,
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Token {
    Right,
    Text(String),
}

/// One server for the whole run, on loopback, with a public thread that holds a backlog.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: Server,
}

struct Server {
    ws_url: String,
    known: String,
    unknown: String,
    middle: String,
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let server = runtime.block_on(start());
        Fixture { runtime, server }
    })
}

async fn start() -> Server {
    let data_dir = std::env::temp_dir().join(format!("threads-fuzz-ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let overrides = Overrides {
        data_dir: Some(data_dir),
        p2p: Some(P2pOverrides { listen: vec![] }),
        ..Default::default()
    };
    let config = Config::load(None, overrides).expect("the default configuration loads");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    // The server on a runtime of its own, as `threads serve` runs it.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let shutdown = tokio_util::sync::CancellationToken::new();
            threads::server::serve(config, listener, shutdown).await
        })
    });

    let url = format!("http://{addr}");
    let client = FollowerClient::new(&url).unwrap();
    let mut log = TestLog::new();
    let register = Action::Register {
        follow_key: log.keys.follow_only().to_multibase().to_string(),
        addrs: vec![],
        public: true,
    };
    for attempt in 0.. {
        match client
            .signed(&log.thread, &log.pair, register.clone(), None)
            .await
        {
            Ok(()) => break,
            Err(_) if attempt < 100 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the server does not answer: {e}"),
        }
    }
    let records: Vec<WireRecord> = (0..BACKLOG)
        .map(|_| {
            let record = log.next(16);
            WireRecord::new(&log.thread, &log.id, record.blocks())
        })
        .collect();
    client.push(&records).await.expect("the backlog is stored");
    let page = client
        .page(&log.thread, log.keys.service(), "", 10)
        .await
        .expect("a page of the backlog");
    Server {
        ws_url: format!("ws://{addr}/v1/ws"),
        known: log.thread.to_string(),
        unknown: TestLog::new().thread.to_string(),
        middle: page.cursor,
        token: pull_token(log.keys.service(), &log.thread),
    }
}

impl Server {
    fn thread(&self, thread: &Thread) -> String {
        match thread {
            Thread::Known => self.known.clone(),
            Thread::Unknown => self.unknown.clone(),
            Thread::Text(text) => text.clone(),
        }
    }

    fn message(&self, frame: &Frame) -> Message {
        match frame {
            Frame::Subscribe {
                thread,
                cursor,
                token,
            } => {
                let mut m = json!({"type": "subscribe", "thread": self.thread(thread)});
                match cursor {
                    Some(Cursor::Start) => m["cursor"] = json!(""),
                    Some(Cursor::Middle) => m["cursor"] = json!(self.middle),
                    Some(Cursor::Text(text)) => m["cursor"] = json!(text),
                    None => {}
                }
                match token {
                    Some(Token::Right) => m["token"] = json!(self.token),
                    Some(Token::Text(text)) => m["token"] = json!(text),
                    None => {}
                }
                Message::Text(m.to_string().into())
            }
            Frame::Unsubscribe { thread } => {
                let m = json!({"type": "unsubscribe", "thread": self.thread(thread)});
                Message::Text(m.to_string().into())
            }
            Frame::Text(text) => Message::Text(text.clone().into()),
            Frame::Binary(bytes) => Message::Binary(bytes.clone().into()),
            Frame::Ping(bytes) => Message::Ping(bytes.iter().take(125).copied().collect()),
        }
    }

    /// Sends every frame and a last unsubscribe, reading all the while; returns the answers
    /// (every message but records), in the order they came, once there is one per message
    /// sent (pings aside). Fewer within [`ANSWER_WITHIN`] is a failure.
    async fn run(&self, frames: &[Frame]) -> Vec<Value> {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(&self.ws_url, None, true)
            .await
            .expect("the server takes a connection");
        let (mut sink, mut stream) = socket.split();
        let messages: Vec<Message> = frames.iter().map(|f| self.message(f)).collect();
        let expected = 1 + messages.iter().filter(|m| !m.is_ping()).count();
        let send = async move {
            for message in messages {
                sink.send(message).await.expect("the server reads on");
            }
            let last = json!({"type": "unsubscribe", "thread": LAST});
            sink.send(Message::Text(last.to_string().into()))
                .await
                .expect("the server reads on");
            sink
        };
        let read = async move {
            let mut answers = Vec::new();
            while answers.len() < expected {
                let message = tokio::time::timeout(ANSWER_WITHIN, stream.next())
                    .await
                    .expect("the handler stopped answering")
                    .expect("the connection stays open")
                    .expect("no protocol error");
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).expect("the server sends JSON");
                if value["type"] != "record" {
                    answers.push(value);
                }
            }
            answers
        };
        let (_sink, answers) = tokio::join!(send, read);
        answers
    }
}

fuzz_target!(|frames: Vec<Frame>| {
    let Fixture { runtime, server } = fixture();
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let answers = runtime.block_on(server.run(frames));
    // One answer per message (pings are answered by pongs), in order: unsubscribing always
    // succeeds, and its answer names the thread it was asked for.
    let asked: Vec<&Frame> = frames
        .iter()
        .filter(|f| !matches!(f, Frame::Ping(_)))
        .collect();
    let last = answers.last().expect("the last message was answered");
    assert_eq!(
        (&last["type"], &last["thread"]),
        (&json!("unsubscribed"), &json!(LAST)),
        "{answers:?}"
    );
    for (frame, answer) in asked.iter().zip(&answers) {
        if let Frame::Unsubscribe { thread } = frame {
            assert_eq!(answer["type"], "unsubscribed", "{answer}");
            assert_eq!(answer["thread"].as_str(), Some(&*server.thread(thread)));
        }
    }
});
