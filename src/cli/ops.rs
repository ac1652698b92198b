//! Commands for operators and their tooling: `healthcheck` (for images with no shell tools),
//! `migrate` (a migration job before a rolling upgrade) and `check-config`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::serve::Settings;

/// Exit 0 when the server at URL answers ready (`GET /readyz`), 1 otherwise.
#[derive(Debug, clap::Args)]
pub struct Healthcheck {
    /// The server's base URL.
    #[arg(default_value = "http://127.0.0.1:8006")]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// Apply the database's schema migrations and exit.
#[derive(Debug, clap::Args)]
pub struct Migrate {
    #[command(flatten)]
    settings: Settings,
}

/// Load and validate the configuration, and print the settings in effect (secrets redacted).
#[derive(Debug, clap::Args)]
pub struct CheckConfig {
    #[command(flatten)]
    settings: Settings,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts")
}

fn finish(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("threads {command}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

impl Healthcheck {
    pub fn run(self) -> ExitCode {
        let url = format!("{}/readyz", self.url.trim_end_matches('/'));
        let result = runtime().block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(self.timeout))
                .build()?;
            let response = client.get(&url).send().await.context(url.clone())?;
            let status = response.status();
            anyhow::ensure!(status.is_success(), "{url} answered {status}");
            Ok(())
        });
        finish("healthcheck", result)
    }
}

impl Migrate {
    pub fn run(self) -> ExitCode {
        let result = self.settings.load().and_then(|config| {
            runtime().block_on(async {
                // Opening a store applies every migration it has not seen.
                threads_store::open(config.database_url(), &config.data_dir)
                    .await
                    .context("migrating the database")?;
                println!("migrations applied");
                Ok(())
            })
        });
        finish("migrate", result)
    }
}

impl CheckConfig {
    pub fn run(self) -> ExitCode {
        let result = self.settings.load().map(|config| println!("{config:#?}"));
        finish("check-config", result)
    }
}
