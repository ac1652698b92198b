//! What a bot remembers besides keys and records, in `bot.db` (SQLite): the grants it holds,
//! the read tokens its operator issued (only their SHA-256), the threads it publishes as
//! feeds, and the nonces of signed requests it has answered, until their window closes.

use std::path::Path;

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::Row;
use threads_core::ThreadId;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS grants (
    thread TEXT PRIMARY KEY,
    follower TEXT NOT NULL,
    granted_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    thread TEXT NOT NULL REFERENCES grants (thread) ON DELETE CASCADE,
    hash BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS feeds (
    thread TEXT PRIMARY KEY REFERENCES grants (thread) ON DELETE CASCADE,
    -- NULL: the whole thread.
    collection TEXT,
    published_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
";

/// A grant as stored.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub thread: ThreadId,
    /// The follower the bot follows the thread from.
    pub follower: String,
    pub granted_ms: i64,
}

/// A thread published as a feed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// `None`: the whole thread.
    pub collection: Option<String>,
    pub published_ms: i64,
}

#[derive(Clone)]
pub struct State(SqlitePool);

impl State {
    pub async fn open(path: &Path) -> sqlx::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self(pool))
    }

    pub async fn grants(&self) -> sqlx::Result<Vec<GrantRow>> {
        let rows = sqlx::query("SELECT thread, follower, granted_ms FROM grants ORDER BY thread")
            .fetch_all(&self.0)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                Some(GrantRow {
                    thread: row.get::<String, _>(0).parse().ok()?,
                    follower: row.get(1),
                    granted_ms: row.get(2),
                })
            })
            .collect())
    }

    pub async fn put_grant(&self, grant: &GrantRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO grants (thread, follower, granted_ms) VALUES (?, ?, ?)
             ON CONFLICT (thread) DO UPDATE SET follower = excluded.follower",
        )
        .bind(grant.thread.to_string())
        .bind(&grant.follower)
        .bind(grant.granted_ms)
        .execute(&self.0)
        .await?;
        Ok(())
    }

    /// Deletes a grant and its tokens. Returns whether there was one.
    pub async fn delete_grant(&self, thread: &ThreadId) -> sqlx::Result<bool> {
        let done = sqlx::query("DELETE FROM grants WHERE thread = ?")
            .bind(thread.to_string())
            .execute(&self.0)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn add_token(
        &self,
        id: &str,
        thread: &ThreadId,
        token: &str,
        now_ms: i64,
    ) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO tokens (id, thread, hash, created_ms) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(thread.to_string())
            .bind(Sha256::digest(token).to_vec())
            .bind(now_ms)
            .execute(&self.0)
            .await?;
        Ok(())
    }

    /// Whether `token` was issued for `thread` (and not revoked).
    pub async fn token_opens(&self, thread: &ThreadId, token: &str) -> sqlx::Result<bool> {
        let row = sqlx::query("SELECT 1 FROM tokens WHERE hash = ? AND thread = ?")
            .bind(Sha256::digest(token).to_vec())
            .bind(thread.to_string())
            .fetch_optional(&self.0)
            .await?;
        Ok(row.is_some())
    }

    pub async fn delete_token(&self, thread: &ThreadId, id: &str) -> sqlx::Result<bool> {
        let done = sqlx::query("DELETE FROM tokens WHERE id = ? AND thread = ?")
            .bind(id)
            .bind(thread.to_string())
            .execute(&self.0)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Publishes a granted thread (or one collection of it) as a plaintext feed.
    pub async fn publish(
        &self,
        thread: &ThreadId,
        collection: Option<&str>,
        now_ms: i64,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO feeds (thread, collection, published_ms) VALUES (?, ?, ?)
             ON CONFLICT (thread) DO UPDATE SET collection = excluded.collection,
                                              published_ms = excluded.published_ms",
        )
        .bind(thread.to_string())
        .bind(collection)
        .bind(now_ms)
        .execute(&self.0)
        .await?;
        Ok(())
    }

    /// Stops publishing a thread. Returns whether it was published.
    pub async fn unpublish(&self, thread: &ThreadId) -> sqlx::Result<bool> {
        let done = sqlx::query("DELETE FROM feeds WHERE thread = ?")
            .bind(thread.to_string())
            .execute(&self.0)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// How a thread is published, if it is.
    pub async fn published(&self, thread: &ThreadId) -> sqlx::Result<Option<Published>> {
        let row = sqlx::query("SELECT collection, published_ms FROM feeds WHERE thread = ?")
            .bind(thread.to_string())
            .fetch_optional(&self.0)
            .await?;
        Ok(row.map(|row| Published {
            collection: row.get(0),
            published_ms: row.get(1),
        }))
    }

    /// How many threads are published.
    pub async fn published_count(&self) -> sqlx::Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM feeds")
            .fetch_one(&self.0)
            .await?;
        Ok(row.get(0))
    }

    /// Spends a signed request's nonce: false when it was spent already. Expired nonces are
    /// dropped on the way (a request that old is refused by its timestamp anyway).
    pub async fn spend_nonce(
        &self,
        nonce: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> sqlx::Result<bool> {
        sqlx::query("DELETE FROM nonces WHERE expires_ms < ?")
            .bind(now_ms)
            .execute(&self.0)
            .await?;
        let done = sqlx::query(
            "INSERT INTO nonces (nonce, expires_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(expires_ms)
        .execute(&self.0)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
