//! The writer's and reader's commands: identity, threads, events, followers, sharing. Each
//! works on a peer kept in `--home` (default `~/.local/share/threads/peer`).
//!
//! Exit codes: 0 done; 1 other failure; 2 bad input; 3 a record was not authentic;
//! 4 a follower could not be reached; 5 a follower refused.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use threads_client::{Client, Error, Role};
use threads_core::{LogId, PublicKey, ThreadId};

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct Peer {
    /// Where this peer keeps its keys and records.
    #[arg(long, global = true, env = "THREADS_HOME")]
    home: Option<PathBuf>,
    /// Print results as JSON (one document per command).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print this peer's identity (its public key; made on first use).
    Id,
    /// Create or list threads.
    #[command(subcommand)]
    Thread(ThreadCommand),
    /// Append events (JSON from the argument, `--file`, or standard input; several values are
    /// written in order, in one transaction) to your log.
    Write {
        thread: ThreadId,
        /// The event as JSON; omit it (or give `-`) to read standard input.
        event: Option<String>,
        #[arg(long, conflicts_with = "event")]
        file: Option<PathBuf>,
    },
    /// Print a thread's events held locally, decrypted, in arrival order.
    Read {
        thread: ThreadId,
        /// Only events after this local sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Follow a thread live: print each new event as a follower pushes it (catching up first,
    /// reconnecting by itself). Runs until interrupted.
    Tail {
        thread: ThreadId,
        /// Which follower (default: the thread's first).
        #[arg(long)]
        follower: Option<String>,
        /// Show held events after this local sequence number first (0: all of them).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Add or remove a follower server.
    #[command(subcommand)]
    Follower(FollowerCommand),
    /// Push your log to every follower of the thread, from where each one is.
    Push { thread: ThreadId },
    /// Pull what the thread's followers have that this peer lacks, verifying every record.
    Pull {
        thread: ThreadId,
        /// Accept records signed under go-threads' weaker rule (js-threads and go-threads
        /// write them), from now on for this thread: see docs/protocol.md for what it gives
        /// away.
        #[arg(long)]
        allow_legacy_signatures: bool,
    },
    /// Print a link (or, with --to, an invite sealed to an identity) to join the thread.
    Share {
        thread: ThreadId,
        #[arg(long, default_value = "writer")]
        role: Role,
        /// The recipient's identity (`threads id` on their side).
        #[arg(long)]
        to: Option<PublicKey>,
    },
    /// Join a thread from a link or an invite.
    Join { invite: String },
    /// Write the thread's records held here (or one log's) to a CAR file.
    Export {
        thread: ThreadId,
        #[arg(long)]
        log: Option<LogId>,
        /// The CAR file to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Verify and keep the records of a CAR file (of threads this peer knows).
    Import { file: PathBuf },
    /// Use a thread as a database: key/value entries, document collections, live changes.
    #[command(subcommand)]
    Db(super::db::Command),
}

#[derive(Debug, clap::Subcommand)]
pub enum ThreadCommand {
    /// A new thread with your own log in it.
    Create {
        /// Readers then need a pull token (derived from the follow key) at followers.
        #[arg(long)]
        private: bool,
    },
    List,
}

#[derive(Debug, clap::Subcommand)]
pub enum FollowerCommand {
    /// Register your log at a follower (it gets the follow key only) and push to it.
    Add {
        thread: ThreadId,
        url: String,
        /// A registration token, for servers that require one.
        #[arg(long)]
        token: Option<String>,
    },
    /// Have a follower delete your log, and stop using it.
    Remove { thread: ThreadId, url: String },
}

impl Peer {
    pub fn run(self, command: Command) -> ExitCode {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime starts");
        match runtime.block_on(self.execute(command)) {
            Ok(out) => {
                if self.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&out).expect("JSON prints")
                    );
                } else if let Some(text) = human(&out) {
                    println!("{text}");
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                let code = exit_code(&error);
                if self.json {
                    println!("{}", json!({"error": format!("{error:#}"), "exit": code}));
                } else {
                    eprintln!("threads: {error:#}");
                }
                ExitCode::from(code)
            }
        }
    }

    pub(crate) fn home(&self) -> anyhow::Result<PathBuf> {
        match (&self.home, std::env::var_os("HOME")) {
            (Some(home), _) => Ok(home.clone()),
            (None, Some(home)) => Ok(PathBuf::from(home).join(".local/share/threads/peer")),
            (None, None) => anyhow::bail!("no home directory: pass --home"),
        }
    }

    fn progress(&self, what: &str) -> ProgressBar {
        if self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(0).with_message(what.to_owned());
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} records ({per_sec})")
                .expect("a valid template"),
        );
        bar
    }

    /// Pushes the thread to its followers, with a progress bar.
    async fn push(&self, client: &Client, thread: &ThreadId) -> anyhow::Result<u64> {
        let bar = self.progress("push");
        let pushed = client
            .push(thread, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
        bar.finish_and_clear();
        Ok(pushed)
    }

    async fn execute(&self, command: Command) -> anyhow::Result<Value> {
        let home = self.home()?;
        let client = Client::open(&home)
            .await
            .with_context(|| format!("opening the peer in {}", home.display()))?;
        Ok(match command {
            Command::Id => json!({"identity": client.identity().to_string()}),
            Command::Thread(ThreadCommand::Create { private }) => {
                let entry = client.create_thread(!private).await?;
                json!({"thread": entry.thread.to_string(), "log": entry.log_id().map(|l| l.to_string())})
            }
            Command::Thread(ThreadCommand::List) => {
                let threads: Vec<Value> = client
                    .keystore()
                    .threads()?
                    .into_iter()
                    .map(|e| {
                        json!({
                            "thread": e.thread.to_string(),
                            "log": e.log_id().map(|l| l.to_string()),
                            "can_read": e.key.read().is_some(),
                            "public": e.public,
                            "followers": e.followers.iter().map(|f| f.url.clone()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({"threads": threads})
            }
            Command::Write {
                thread,
                event,
                file,
            } => {
                let text = match (event, file) {
                    (Some(text), None) if text != "-" => text,
                    (None, Some(path)) => std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                    _ => {
                        let mut text = String::new();
                        std::io::stdin().read_to_string(&mut text)?;
                        text
                    }
                };
                // One JSON value, or many (a JSON stream, e.g. one per line): one transaction.
                let events = serde_json::Deserializer::from_str(&text)
                    .into_iter::<Value>()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BadInput(format!("the event is not JSON: {e}")))?;
                if events.is_empty() {
                    return Err(BadInput("no event given".into()).into());
                }
                let written: Vec<Value> = client
                    .write_many(&thread, &events)
                    .await?
                    .into_iter()
                    .map(|(cid, counter)| json!({"cid": cid.to_string(), "counter": counter}))
                    .collect();
                match <[Value; 1]>::try_from(written) {
                    Ok([one]) => one,
                    Err(many) => json!({"written": many}),
                }
            }
            Command::Read { thread, after } => {
                let mut events = Vec::new();
                let mut after = after;
                loop {
                    let page = client.read(&thread, after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    events.extend(page);
                }
                json!({"events": events})
            }
            Command::Tail {
                thread,
                follower,
                after,
            } => {
                let json = self.json;
                client
                    .tail(&thread, follower.as_deref(), after, |event| {
                        let event = serde_json::to_value(event).expect("events serialize");
                        if json {
                            println!("{event}");
                        } else if let Some(line) = human(&json!({"events": [event]})) {
                            println!("{line}");
                        }
                    })
                    .await?;
                Value::Null
            }
            Command::Follower(FollowerCommand::Add { thread, url, token }) => {
                client.add_follower(&thread, &url, token.as_deref()).await?;
                json!({"follower": url, "pushed": self.push(&client, &thread).await?})
            }
            Command::Follower(FollowerCommand::Remove { thread, url }) => {
                client.remove_follower(&thread, &url).await?;
                json!({"removed": url})
            }
            Command::Push { thread } => json!({"pushed": self.push(&client, &thread).await?}),
            Command::Pull {
                thread,
                allow_legacy_signatures,
            } => {
                if allow_legacy_signatures {
                    client.allow_legacy_signatures(&thread, true)?;
                }
                let bar = self.progress("pull");
                let pulled = client.pull(&thread, |n, _| bar.set_position(n)).await?;
                bar.finish_and_clear();
                json!({"pulled": pulled.new, "legacy_signatures": pulled.legacy})
            }
            Command::Share { thread, role, to } => {
                json!({"invite": client.share(&thread, role, to.as_ref())?})
            }
            Command::Export { thread, log, out } => {
                let car = client.export(&thread, log.as_ref()).await?;
                std::fs::write(&out, &car).with_context(|| format!("writing {}", out.display()))?;
                json!({"exported": out, "bytes": car.len()})
            }
            Command::Import { file } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let bar = self.progress("import");
                let imported = client
                    .import(&bytes, |done, total| {
                        bar.set_length(total);
                        bar.set_position(done);
                    })
                    .await?;
                bar.finish_and_clear();
                json!({"imported": imported})
            }
            Command::Db(command) => {
                return super::db::execute(client, &home, command, self.json).await
            }
            Command::Join { invite } => {
                let entry = client.join(&invite).await?;
                json!({"thread": entry.thread.to_string(), "log": entry.log_id().map(|l| l.to_string())})
            }
        })
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<BadInput>().is_some() {
        return 2;
    }
    let client_error = match error.downcast_ref::<threads_db::Error>() {
        Some(threads_db::Error::UnknownStore(_) | threads_db::Error::Refused { .. }) => return 2,
        Some(threads_db::Error::Client(e)) => Some(e),
        Some(_) => return 1,
        None => error.downcast_ref::<Error>(),
    };
    match client_error {
        Some(Error::Rejected { .. }) => 3,
        Some(Error::Network(_)) => 4,
        Some(Error::Server { .. }) => 5,
        Some(
            Error::UnknownThread(_)
            | Error::BadInvite(_)
            | Error::BadCar(_)
            | Error::BadUrl(_)
            | Error::NotAWriter
            | Error::NoReadKey
            | Error::Body(_),
        ) => 2,
        _ => 1,
    }
}

/// What a person reads: the one value that matters, or events one per line.
fn human(out: &Value) -> Option<String> {
    if let Some(events) = out["events"].as_array() {
        return Some(
            events
                .iter()
                .map(|e| {
                    format!(
                        "{}#{} {}",
                        e["log"].as_str().unwrap_or("?"),
                        e["counter"],
                        e["body"]
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .filter(|s| !s.is_empty());
    }
    if let Some(docs) = out["docs"].as_array() {
        let mut lines: Vec<String> = docs.iter().map(Value::to_string).collect();
        if let Some(next) = out["next"].as_str() {
            lines.push(format!("next: {next}"));
        }
        return Some(lines.join("\n")).filter(|s| !s.is_empty());
    }
    if let Some(entries) = out["entries"].as_array() {
        let lines: Vec<String> = entries
            .iter()
            .map(|e| format!("{} {}", e["key"].as_str().unwrap_or("?"), e["value"]))
            .collect();
        return Some(lines.join("\n")).filter(|s| !s.is_empty());
    }
    if let Some(value) = out.get("value") {
        return Some(value.to_string());
    }
    for key in ["invite", "thread", "identity"] {
        if let Some(text) = out[key].as_str() {
            return Some(text.to_owned());
        }
    }
    Some(out.to_string())
}
