//! Server configuration: built-in defaults < `--config FILE` < `THREADS_*` environment < flags.
//!
//! Validated once at start; an invalid value fails fast naming its field.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The commented defaults, also the reference for every setting.
pub const DEFAULTS: &str = include_str!("config.default.toml");
/// Most worker threads asked for: more is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

#[derive(Clone, Deserialize, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database_read_url: String,
    pub roles: Vec<Role>,
    /// Worker threads of the async runtime; 0 is one per core.
    pub workers: usize,
    pub log_format: LogFormat,
    pub registration: RegistrationMode,
    pub admin_token: String,
    pub allow_legacy_signatures: bool,
    pub trust_forwarded_headers: bool,
    pub limits: Limits,
    pub quotas: QuotaConfig,
    pub rate_limit: RateLimit,
    pub websocket: WebSocket,
    pub cors: Cors,
    pub webhooks: Webhooks,
    pub p2p: P2p,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct P2p {
    pub listen: Vec<String>,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub requests_per_second: u32,
    pub request_burst: u32,
    pub max_message_bytes: usize,
    pub address_ttl_secs: u64,
    pub sync_interval_secs: u64,
    /// Threads this server follows from another follower.
    pub replicate: Vec<Replica>,
}

/// A thread to follow from another follower: where (`<peer addr>/thread/<thread id>`), and its
/// follow key (never the read key).
#[derive(Clone, Deserialize, Serialize)]
pub struct Replica {
    pub from: String,
    pub follow_key: String,
}

/// The follow key is a secret: debug output names the source only.
impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("from", &self.from)
            .field("follow_key", &"<redacted>")
            .finish()
    }
}

impl P2p {
    /// The host's settings; addresses were checked by validation.
    pub fn host_config(&self, max_body_bytes: usize) -> threads_net::Config {
        threads_net::Config {
            listen: self
                .listen
                .iter()
                .map(|a| a.parse().expect("validated"))
                .collect(),
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            requests_per_second: self.requests_per_second,
            request_burst: self.request_burst,
            max_message_bytes: self.max_message_bytes,
            max_request_bytes: max_body_bytes as u64,
            address_ttl: std::time::Duration::from_secs(self.address_ttl_secs),
            ..threads_net::Config::default()
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
pub struct Webhooks {
    pub allow_private_addresses: bool,
    pub concurrency: usize,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub disable_after_failures: u64,
    pub inline_max_bytes: usize,
    pub max_per_second: u32,
    /// Seals webhook secrets at rest (64 hex digits); empty: stored as they are.
    pub secret_key: String,
}

/// A part of the follower a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The HTTP API, WebSocket push and the page.
    Api,
    /// Delivering webhooks.
    Webhooks,
    /// The libp2p host: the API over streams, gossip.
    P2p,
    /// Following the threads of `[[p2p.replicate]]` from other followers.
    Replication,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    Open,
    Token,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
    pub max_page_records: u32,
    pub request_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    pub header_read_timeout_secs: u64,
    pub max_connections_per_address: usize,
    pub max_queued_records: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct QuotaConfig {
    pub max_records_per_log: u64,
    pub max_bytes_per_thread: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebSocket {
    pub max_connections: usize,
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
}

/// Values given on the command line; `None` leaves the layers below in force.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p2p: Option<P2pOverrides>,
}

#[derive(Debug, Default, Serialize)]
pub struct P2pOverrides {
    pub listen: Vec<String>,
}

impl Config {
    /// Loads the layers and validates the result. Reads files; never writes any.
    pub fn load(file: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("THREADS_").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        config.validated()
    }

    fn validated(mut self) -> anyhow::Result<Self> {
        if self.data_dir.as_os_str().is_empty() {
            self.data_dir = match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".local/share/threads"),
                None => PathBuf::from("threads-data"),
            };
        }
        if self.workers > MAX_WORKERS {
            bail!(
                "workers: at most {MAX_WORKERS} (0 is one per core), got {}",
                self.workers
            );
        }
        let url = &self.database_url;
        if !(url.is_empty()
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            bail!("database_url: expected empty, postgres://... or sqlite:..., got {url:?}");
        }
        // The writer and the read pool are separate connections: each would get its own
        // empty in-memory database.
        if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) {
            bail!("database_url: an in-memory SQLite database is not supported; leave it empty for the embedded file");
        }
        let read = &self.database_read_url;
        if !read.is_empty() {
            if !(read.starts_with("postgres://") || read.starts_with("postgresql://")) {
                bail!(
                    "database_read_url: expected a postgres://... URL of a hot standby, got {:?}",
                    redact_url(read)
                );
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("database_read_url needs database_url to be Postgres: a standby is a Postgres replica of it");
            }
        }
        if self.limits.max_batch_records == 0 {
            bail!("limits.max_batch_records must be at least 1");
        }
        if self.limits.max_page_records == 0 {
            bail!("limits.max_page_records must be at least 1");
        }
        if self.limits.max_body_bytes < 1024 {
            bail!("limits.max_body_bytes must be at least 1024");
        }
        if self.limits.header_read_timeout_secs == 0 {
            bail!("limits.header_read_timeout_secs must be at least 1");
        }
        if self.registration == RegistrationMode::Token && self.admin_token.is_empty() {
            bail!("registration = \"token\" needs admin_token, to issue registration tokens");
        }
        if self.rate_limit.per_second > 0 && self.rate_limit.burst == 0 {
            bail!("rate_limit.burst must be at least 1 when rate_limit.per_second is set");
        }
        self.webhooks.validate()?;
        if self.roles.is_empty() {
            bail!("roles: give at least one of api, webhooks, p2p, replication");
        }
        if self.runs(Role::Replication) && !self.runs(Role::P2p) && !self.p2p.replicate.is_empty() {
            bail!("roles: replication needs p2p (the source followers are reached over libp2p)");
        }
        for addr in &self.p2p.listen {
            if addr.parse::<threads_net::Multiaddr>().is_err() {
                bail!("p2p.listen: {addr:?} is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/4006)");
            }
        }
        if self.p2p.max_connections == 0 || self.p2p.max_connections_per_peer == 0 {
            bail!("p2p.max_connections and p2p.max_connections_per_peer must be at least 1");
        }
        if self.p2p.max_message_bytes < 1024 || self.p2p.sync_interval_secs == 0 {
            bail!(
                "p2p.max_message_bytes must be at least 1024 and p2p.sync_interval_secs at least 1"
            );
        }
        for replica in &self.p2p.replicate {
            let addr: threads_core::addr::ThreadAddr = replica.from.parse().map_err(|e| {
                anyhow::anyhow!(
                    "p2p.replicate: {:?} is not <peer addr>/p2p/<peer id>/thread/<thread id>: {e}",
                    replica.from
                )
            })?;
            if addr.peer_id().is_none() {
                bail!(
                    "p2p.replicate: {:?} names no peer (/p2p/<peer id>)",
                    replica.from
                );
            }
            let key: threads_core::ThreadKey = replica.follow_key.parse().map_err(|e| {
                anyhow::anyhow!("p2p.replicate: bad follow_key for {}: {e}", replica.from)
            })?;
            if key.read().is_some() {
                bail!(
                    "p2p.replicate: give the follow key only for {}, never the read key",
                    replica.from
                );
            }
        }
        Ok(self)
    }

    /// A hot standby of the database for reads, if one is set.
    pub fn database_read_url(&self) -> Option<&str> {
        Some(self.database_read_url.as_str()).filter(|u| !u.is_empty())
    }

    /// Whether this process runs a role.
    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The database URL, or `None` for the embedded default.
    pub fn database_url(&self) -> Option<&str> {
        Some(self.database_url.as_str()).filter(|u| !u.is_empty())
    }
}

/// Hides the database password and the admin token.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_read_url", &redact_url(&self.database_read_url))
            .field("roles", &self.roles)
            .field("workers", &self.workers)
            .field("log_format", &self.log_format)
            .field("registration", &self.registration)
            .field(
                "admin_token",
                &if self.admin_token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("allow_legacy_signatures", &self.allow_legacy_signatures)
            .field("trust_forwarded_headers", &self.trust_forwarded_headers)
            .field("limits", &self.limits)
            .field("quotas", &self.quotas)
            .field("rate_limit", &self.rate_limit)
            .field("websocket", &self.websocket)
            .field("cors", &self.cors)
            .finish()
    }
}

impl Webhooks {
    /// The defaults, under environment variables `{prefix}WEBHOOKS__*` (the bot's settings,
    /// which has no configuration file).
    pub fn from_env(prefix: &str) -> anyhow::Result<Self> {
        let webhooks: Webhooks = Figment::from(Toml::string(DEFAULTS))
            .merge(Env::prefixed(prefix).split("__"))
            .extract_inner("webhooks")
            .context("invalid webhook settings")?;
        webhooks.validate()?;
        Ok(webhooks)
    }

    fn validate(&self) -> anyhow::Result<()> {
        crate::webhooks::secrets::Secrets::from_hex(&self.secret_key)
            .map_err(|e| anyhow::anyhow!("webhooks.secret_key: {e}"))?;
        if self.concurrency == 0 || self.max_attempts == 0 || self.timeout_secs == 0 {
            bail!("webhooks.concurrency, webhooks.max_attempts and webhooks.timeout_secs must be at least 1");
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            bail!("webhooks.retry_base_ms must be at least 1 and at most webhooks.retry_max_ms");
        }
        // Leases are derived from the timeout: keep them within reason (and within i64 ms).
        if self.timeout_secs > 3600 {
            bail!("webhooks.timeout_secs must be at most 3600");
        }
        Ok(())
    }
}

/// The secret key never prints.
impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("allow_private_addresses", &self.allow_private_addresses)
            .field("concurrency", &self.concurrency)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("disable_after_failures", &self.disable_after_failures)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .field("max_per_second", &self.max_per_second)
            .field(
                "secret_key",
                &if self.secret_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let config = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 8006);
        assert_eq!(config.database_url(), None);
        assert!(!config.data_dir.as_os_str().is_empty());
    }

    #[test]
    fn flags_override_and_bad_values_name_their_field() {
        let config = Config::load(
            None,
            Overrides {
                database_url: Some("postgres://u:pw@h/db".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("postgres://u:<redacted>@h/db") && !shown.contains("pw"));

        let err = Config::load(
            None,
            Overrides {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("database_url"), "{err}");
    }

    #[test]
    fn in_memory_sqlite_is_refused() {
        let err = Config::load(
            None,
            Overrides {
                database_url: Some("sqlite::memory:".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("in-memory"), "{err}");
    }

    /// Loads a settings file holding `toml`, with no other overrides.
    fn load_file(toml: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("threads.toml");
        std::fs::write(&file, toml).unwrap();
        Config::load(Some(&file), Overrides::default())
    }

    #[test]
    fn webhook_timeouts_are_bounded() {
        let err = load_file("[webhooks]\ntimeout_secs = 9223372036854775807\n").unwrap_err();
        assert!(err.to_string().contains("webhooks.timeout_secs"), "{err}");
    }

    #[test]
    fn worker_threads_are_bounded() {
        let err = load_file("workers = 100000\n").unwrap_err();
        assert!(err.to_string().contains("workers"), "{err}");
        assert_eq!(load_file("workers = 1\n").unwrap().workers, 1);
    }

    #[test]
    fn missing_file_fails_fast() {
        let err =
            Config::load(Some("/nonexistent.toml".as_ref()), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
