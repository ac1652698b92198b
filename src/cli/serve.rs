//! `threads serve`: run the follower server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, Overrides};

/// Run the follower server: verify, store and serve the records of logs registered with it.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    settings: Settings,
    /// Print the built-in defaults (a commented config file) and exit.
    #[arg(long)]
    print_defaults: bool,
}

/// Where the server's settings come from: the layers below these flags, and the flags. Shared by
/// `serve`, `migrate` and `check-config`, so that all three read the same configuration.
#[derive(Debug, clap::Args)]
pub struct Settings {
    /// A TOML file of settings (see `threads serve --print-defaults`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8006.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory for the server's files (the embedded database lives here).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A postgres:// URL; without one, an embedded SQLite file is used.
    #[arg(long)]
    database_url: Option<String>,
    /// A libp2p listen address (repeatable; replaces the configured ones), e.g.
    /// /ip4/0.0.0.0/tcp/4006. `none` runs no libp2p host.
    #[arg(long = "p2p-listen")]
    p2p_listen: Vec<String>,
    /// Log output: pretty or json.
    #[arg(long, value_parser = ["pretty", "json"])]
    log_format: Option<String>,
    /// What this process runs (replaces the configured roles), e.g. `--role api,webhooks`.
    #[arg(long = "role", value_enum, value_delimiter = ',')]
    roles: Vec<crate::config::Role>,
}

impl Settings {
    /// The layered configuration, validated.
    pub fn load(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen: self.listen,
            data_dir: self.data_dir,
            database_url: self.database_url,
            roles: (!self.roles.is_empty()).then_some(self.roles),
            p2p: (!self.p2p_listen.is_empty()).then(|| crate::config::P2pOverrides {
                listen: self
                    .p2p_listen
                    .into_iter()
                    .filter(|a| a != "none")
                    .collect(),
            }),
            log_format: self.log_format.map(|f| {
                if f == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Pretty
                }
            }),
        };
        Config::load(self.config.as_deref(), overrides)
    }
}

pub fn run(args: Args) -> ExitCode {
    if args.print_defaults {
        print!("{}", crate::config::DEFAULTS);
        return ExitCode::SUCCESS;
    }
    match serve(args.settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("threads serve: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let config = settings.load()?;
    init_logging(config.log_format);
    tracing::debug!(?config, "configuration");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.workers > 0 {
        runtime.worker_threads(config.workers);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        crate::server::serve(config, listener, shutdown).await
    })
}

/// Logs to standard output in `format`, at the levels `RUST_LOG` names (default: info).
pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
}

/// Ctrl-C or SIGTERM start a graceful shutdown.
pub(crate) async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
