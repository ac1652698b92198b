//! Who may read a thread, and where a reader is in it: public threads are read by anyone,
//! private ones with their pull token (derived from the follow key, which only writers and
//! their followers hold); a thread cursor is opaque to readers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use threads_core::auth::check_pull_token;
use threads_core::{LogId, ThreadId};
use threads_store::{LogInfo, ThreadInfo};

use super::{Error, Follower, Result};

impl Follower {
    /// The thread, if this follower has it (`NotFound` otherwise). Says nothing of access.
    pub async fn known_thread(&self, thread: &ThreadId) -> Result<ThreadInfo> {
        self.0
            .store
            .thread(thread)
            .await?
            .ok_or(Error::NotFound("thread"))
    }

    /// The thread, if it exists and the caller may read it: public, or with its pull token.
    pub async fn readable_thread(
        &self,
        thread: &ThreadId,
        token: Option<&str>,
    ) -> Result<ThreadInfo> {
        let info = self.known_thread(thread).await?;
        check_access(&info, token)?;
        Ok(info)
    }

    /// The log with its thread, if the thread is readable by the caller and the log is
    /// registered in it.
    pub async fn readable_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        token: Option<&str>,
    ) -> Result<(ThreadInfo, LogInfo)> {
        let info = self.readable_thread(thread, token).await?;
        let log = self
            .0
            .store
            .log(thread, log)
            .await?
            .ok_or(Error::NotFound("log"))?;
        Ok((info, log))
    }
}

/// Whether `token` opens the thread: always for a public one.
pub fn check_access(info: &ThreadInfo, token: Option<&str>) -> Result<()> {
    if info.public {
        return Ok(());
    }
    match token {
        None => Err(Error::PullTokenRequired),
        Some(token) if check_pull_token(&info.follow_key, &info.id, token) => Ok(()),
        Some(_) => Err(Error::BadPullToken),
    }
}

/// The largest sequence number or counter a thread or log can reach (storage keeps them as
/// signed 64-bit integers); a cursor past it is refused rather than wrapped around.
pub const MAX_POSITION: u64 = i64::MAX as u64;

/// A thread cursor: opaque to clients, `created_ms || seq` inside, so a cursor from a deleted and
/// re-created thread restarts from the beginning instead of skipping records.
pub fn encode_cursor(info: &ThreadInfo, seq: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&info.created_ms.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The sequence number after which to continue; an empty cursor starts at the beginning.
pub fn decode_cursor(info: &ThreadInfo, cursor: Option<&str>) -> Result<u64> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(0);
    };
    let bytes: [u8; 16] = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::BadCursor("not a cursor from this server"))?;
    let created = i64::from_be_bytes(bytes[..8].try_into().unwrap());
    let seq = u64::from_be_bytes(bytes[8..].try_into().unwrap());
    // Storage counts in signed 64 bits: this server never made a cursor past that.
    if seq > MAX_POSITION {
        return Err(Error::BadCursor("not a cursor from this server"));
    }
    Ok(if created == info.created_ms { seq } else { 0 })
}
