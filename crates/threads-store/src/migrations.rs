//! Schema migrations compiled into the binary, run with sqlx's migrator.
//!
//! sqlx's `migrate!` macro does the same at compile time, but it builds sqlx and both drivers
//! a second time for the host; `include_str!` keeps the SQL in the binary for free. A file
//! listed here is parsed as `sqlx migrate` parses a directory (`<VERSION>_<DESCRIPTION>.sql`),
//! so the checksums recorded in existing databases still match.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

/// Migration files as (file name, SQL), in any order.
pub type Files = &'static [(&'static str, &'static str)];

/// Lists a directory's migration files, relative to the calling source file.
#[macro_export]
macro_rules! migration_files {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!($dir, "/", $name)))),*]
    };
}

/// The follower's files: each migration is written once per backend, under the same name.
/// A peer's local store drops the indexes of event, header and body CIDs once migrated
/// (`sqlite.rs`), so a later SQLite migration that touches them must say `IF EXISTS`.
macro_rules! follower_files {
    ($dir:literal) => {
        migration_files!($dir:
            "0001_follower.sql",
            "0002_cid_prefix_indexes.sql",
            "0003_webhooks.sql",
            "0004_webhook_cursors.sql",
            "0005_addrs_renewed.sql",
            "0006_leases.sql",
            "0007_node_cids_within_thread.sql",
            "0008_webhooks_by_thread.sql",
            "0009_records_without_log_check.sql",
        )
    };
}

/// The follower's schema, per backend.
pub(crate) const SQLITE: Files = follower_files!("../../../migrations/sqlite");
pub(crate) const POSTGRES: Files = follower_files!("../../../migrations/postgres");

/// A migrator over embedded files.
pub async fn migrator(files: Files) -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded(files)).await
}

#[derive(Debug)]
struct Embedded(Files);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send>> {
        Box::pin(async move {
            let mut migrations = self
                .0
                .iter()
                .map(|&(name, sql)| parse(name, sql))
                .collect::<Result<Vec<_>, _>>()?;
            migrations.sort_by_key(|m| m.version);
            Ok(migrations)
        })
    }
}

fn parse(name: &'static str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = name
        .split_once('_')
        .filter(|(_, rest)| rest.ends_with(".sql"))
        .ok_or_else(|| format!("migration {name:?} is not named <VERSION>_<DESCRIPTION>.sql"))?;
    let version = version
        .parse()
        .map_err(|_| format!("migration {name:?} has no integer version"))?;
    let kind = MigrationType::from_filename(rest);
    let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        kind,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

/// Whether `files` are what sqlx reads from the directory `dir` (the same versions,
/// descriptions and checksums): a test that a new file was listed.
pub async fn match_directory(files: Files, dir: &std::path::Path) -> Result<bool, MigrateError> {
    let key = |m: &Migration| (m.version, m.description.to_string(), m.checksum.to_vec());
    let from_dir = Migrator::new(dir).await?;
    let embedded = migrator(files).await?;
    Ok(from_dir.iter().map(key).eq(embedded.iter().map(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_migration_file_is_compiled_in() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
        assert!(match_directory(SQLITE, &root.join("sqlite")).await.unwrap());
        assert!(match_directory(POSTGRES, &root.join("postgres"))
            .await
            .unwrap());
    }
}
