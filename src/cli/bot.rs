//! `threads bot ...`: run a bot (the trusted reader a writer grants threads to), and the
//! operator's commands around it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use threads_client::{Keystore, MainKey, MainKeys};
use tokio_util::sync::CancellationToken;

use crate::bot::{Bot, Settings};
use crate::config::{Limits, LogFormat};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the bot: follow granted threads, run their views, answer queries over HTTP.
    Serve(ServeArgs),
    /// Print the bot's identity: what writers share threads to (`threads share T --to ID`).
    Id {
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Hand a bot an invite (made with `threads share T --role reader --to BOT_ID`).
    Grant {
        /// The bot's URL.
        bot: String,
        invite: String,
        /// The follower to follow the thread from (default: the invite's first).
        #[arg(long)]
        follower: Option<String>,
        /// The bot's admin token, when it takes grants only from its operator.
        #[arg(long, env = "THREADS_BOT_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Seal every key file under a new main key (the bot must be stopped). Files sealed
    /// under the old key keep their data keys; only those are sealed again.
    RotateMainKey {
        #[command(flatten)]
        keys: KeyArgs,
        /// A file holding the new main key.
        #[arg(long)]
        new_main_key_file: PathBuf,
    },
    /// Print a fresh random main key (base64), to keep in a file or a secret store.
    NewMainKey,
    /// Ask a bot about a thread as a member: the request is signed with this peer's log key
    /// of the thread (the thread's ACLs decide what it may read). PATH is the bot API's, e.g.
    /// `/v1/threads/T/kv/color`; with --body the request is a POST of that JSON.
    Query {
        /// The bot's URL.
        bot: String,
        thread: threads_core::ThreadId,
        path: String,
        #[arg(long)]
        body: Option<String>,
    },
}

/// Where the bot's files are and how its keys are sealed.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The bot's data directory.
    #[arg(
        long,
        env = "THREADS_BOT_DATA_DIR",
        default_value = "./threads-bot-data"
    )]
    data_dir: PathBuf,
    /// A file holding the main key that seals the keys at rest (32 bytes, base64 or hex).
    #[arg(long, env = "THREADS_BOT_MAIN_KEY_FILE")]
    main_key_file: Option<PathBuf>,
    /// An earlier main key, still accepted to open files it sealed (repeatable).
    #[arg(long = "earlier-main-key-file")]
    earlier_main_key_files: Vec<PathBuf>,
    /// Keep keys in clear on disk. Without a main key the bot refuses to start unless this
    /// is given.
    #[arg(long)]
    keys_in_clear: bool,
}

impl KeyArgs {
    /// The main keys, from the files or `THREADS_BOT_MAIN_KEY`; `None` only when keys may be
    /// kept in clear.
    fn main_keys(&self) -> anyhow::Result<Option<MainKeys>> {
        let current = match (&self.main_key_file, std::env::var("THREADS_BOT_MAIN_KEY")) {
            (Some(path), _) => Some(read_key(path)?),
            (None, Ok(text)) => Some(MainKey::parse(&text).context("THREADS_BOT_MAIN_KEY")?),
            (None, Err(_)) => None,
        };
        let earlier = self
            .earlier_main_key_files
            .iter()
            .map(|p| read_key(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match current {
            Some(_) if self.keys_in_clear => {
                anyhow::bail!("--keys-in-clear and a main key: choose one")
            }
            Some(current) => Ok(Some(MainKeys { current, earlier })),
            None if self.keys_in_clear => Ok(None),
            None => anyhow::bail!(
                "no main key: give --main-key-file (or THREADS_BOT_MAIN_KEY) to seal the read \
                 keys at rest, or --keys-in-clear to keep them in clear on disk \
                 (`threads bot new-main-key` makes one)"
            ),
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<MainKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    MainKey::parse(&text).with_context(|| path.display().to_string())
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Address to listen on.
    #[arg(long, env = "THREADS_BOT_LISTEN", default_value = "127.0.0.1:8007")]
    listen: std::net::SocketAddr,
    /// Keep journals and views in memory only (rebuilt at each start from the stored,
    /// encrypted records): no plaintext is written to disk.
    #[arg(long)]
    views_in_memory: bool,
    /// The operator's token: needed to list, revoke and (unless --open-grants) take grants,
    /// and to issue read tokens.
    #[arg(long, env = "THREADS_BOT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Take grants from anyone holding an invite sealed to this bot, even with an admin token.
    #[arg(long)]
    open_grants: bool,
    /// Log output: pretty or json.
    #[arg(long, value_parser = ["pretty", "json"], default_value = "pretty")]
    log_format: String,
}

pub fn run(command: Command, peer: &super::peer::Peer) -> ExitCode {
    let json_output = peer.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("threads bot: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Serve(args) => runtime.block_on(serve(args)).map(|()| Value::Null),
        Command::Query {
            bot,
            thread,
            path,
            body,
        } => runtime.block_on(async {
            let home = peer.home()?;
            query(&home, &bot, &thread, &path, body.as_deref()).await
        }),
        other => runtime.block_on(execute(other)),
    };
    match result {
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(out) => {
            match (json_output, &out) {
                (false, Value::Object(map)) if map.len() == 1 => match map.values().next() {
                    Some(Value::String(s)) => println!("{s}"),
                    Some(other) => println!("{other}"),
                    None => {}
                },
                _ => println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("JSON prints")
                ),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("threads bot: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<Value> {
    match command {
        Command::Serve(_) | Command::Query { .. } => unreachable!("run above"),
        Command::Id { keys } => {
            let main = keys.main_keys()?;
            let store = Keystore::open_with(&keys.data_dir, main)?;
            Ok(json!({"identity": store.identity()?.public().to_string()}))
        }
        Command::RotateMainKey {
            keys,
            new_main_key_file,
        } => {
            let old = keys
                .main_keys()?
                .context("rotating needs the current main key (--main-key-file)")?;
            let mut earlier = vec![old.current];
            earlier.extend(old.earlier);
            let rotated = MainKeys {
                current: read_key(&new_main_key_file)?,
                earlier,
            };
            let store = Keystore::open_with(&keys.data_dir, Some(rotated))?;
            Ok(json!({"resealed": store.seal_all()?}))
        }
        Command::NewMainKey => Ok(json!({"main_key": MainKey::random().to_base64().as_str()})),
        Command::Grant {
            bot,
            invite,
            follower,
            token,
        } => {
            let http = reqwest::Client::new();
            let mut request = http
                .post(format!("{}/v1/grants", bot.trim_end_matches('/')))
                .json(&json!({"invite": invite, "follower": follower}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            answer(request, &bot).await
        }
    }
}

/// A member's signed request to a bot; the bot's answer.
async fn query(
    home: &Path,
    bot: &str,
    thread: &threads_core::ThreadId,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<Value> {
    let entry = Keystore::open(home)?.thread(thread)?;
    let log = entry.log.as_ref().context(
        "this peer has no log in the thread to sign with: ask the bot's operator for a read token",
    )?;
    let bot = bot.trim_end_matches('/');
    let http = reqwest::Client::new();
    let info: Value = http
        .get(format!("{bot}/v1/bot"))
        .send()
        .await
        .with_context(|| format!("reaching {bot}"))?
        .json()
        .await?;
    let id = info["identity"]
        .as_str()
        .context("the bot did not say its identity")?;
    let (method, bytes) = match body {
        Some(body) => ("POST", body.as_bytes()),
        None => ("GET", &b""[..]),
    };
    let header = crate::bot::access::sign_header(id, thread, log, method, path, bytes);
    let request = match body {
        Some(body) => http
            .post(format!("{bot}{path}"))
            .header("content-type", "application/json")
            .body(body.to_owned()),
        None => http.get(format!("{bot}{path}")),
    };
    answer(
        request.header(crate::bot::access::REQUEST_HEADER, header),
        bot,
    )
    .await
}

/// Sends a request to the bot: its JSON answer, or its refusal as an error.
async fn answer(request: reqwest::RequestBuilder, bot: &str) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("reaching {bot}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "the bot refused ({status} {}): {}",
            body["code"].as_str().unwrap_or("?"),
            body["detail"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    super::serve::init_logging(if args.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    });
    let settings = Settings {
        main_keys: args.keys.main_keys()?,
        data_dir: args.keys.data_dir.clone(),
        views_in_memory: args.views_in_memory,
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        open_grants: args.open_grants,
        webhooks: crate::config::Webhooks::from_env("THREADS_BOT_")?,
    };
    if settings.main_keys.is_none() {
        tracing::warn!("keys are kept in clear on disk (--keys-in-clear)");
    }
    let bot = Bot::open(settings).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, identity = %bot.id, "threads bot serving");
    println!("listening on http://{addr}");
    println!("identity {}", bot.id);
    let shutdown = CancellationToken::new();
    tokio::spawn(super::serve::stop_on_signal(shutdown.clone()));
    let _deliveries = bot.hooks.spawn(shutdown.clone());
    // The bot takes no pushes or pages: the fields for those are 0.
    let limits = Limits {
        max_body_bytes: 1 << 20,
        max_batch_records: 0,
        max_page_records: 0,
        request_timeout_secs: 30,
        shutdown_grace_secs: 10,
        header_read_timeout_secs: 10,
        max_connections_per_address: 256,
        max_queued_records: 0,
    };
    let routed = crate::bot::api::router(bot)
        .fallback(|| async { crate::server::error::ApiError::not_found("route") })
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let app = crate::server::bounded(routed, &limits);
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    crate::server::listener::serve(listener, app, &limits, shutdown, grace).await?;
    Ok(())
}
