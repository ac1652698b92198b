//! Who may read a granted thread through the bot, decided per request:
//!
//! - `Authorization: Bearer <token>`: the operator's admin token, or a read token the
//!   operator issued for this thread (for Web 2.0 consumers). Either reads the whole thread.
//! - `Threads-Request: <base64url of a signed request>`: a member signs a
//!   [`Action::Read`] naming this bot, the thread, the request's method, its path with query
//!   and its body's SHA-256 (the scheme of [`threads_core::auth`]). A member is a key with a
//!   log in the thread, or one an ACL names; the thread's ACLs then decide what it may read,
//!   as every replica enforces them.

use axum::http::{header, HeaderMap, Method, Uri};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use sha2::{Digest, Sha256};
use threads_core::auth::{Action, SignedRequest, REQUEST_WINDOW_MS};

use super::{now_ms, Bot, Error, Grant};

pub const REQUEST_HEADER: &str = "threads-request";

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// The operator (admin token) or a holder of a read token: reads the whole thread.
    Trusted,
    /// A member, by the key it signed with.
    Member([u8; 32]),
}

impl Reader {
    /// Whether this reader may read `entity` of `store` (the thread itself when `None`).
    pub async fn may_read(&self, grant: &Grant, store: &str, entity: Option<&str>) -> bool {
        match self {
            Reader::Trusted => true,
            Reader::Member(key) => {
                grant
                    .db
                    .dispatcher()
                    .acls(|acls| acls.may_read(key, store, entity))
                    .await
            }
        }
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether the request carries the operator's admin token.
pub fn is_admin(bot: &Bot, headers: &HeaderMap) -> bool {
    is_admin_token(bot, bearer(headers))
}

/// Whether a token is the operator's admin token.
pub fn is_admin_token(bot: &Bot, token: Option<&str>) -> bool {
    match (&bot.settings.admin_token, token) {
        // Digests compared, so the time taken says nothing about the token.
        (Some(admin), Some(given)) => Sha256::digest(admin) == Sha256::digest(given),
        _ => false,
    }
}

pub fn require_admin(bot: &Bot, headers: &HeaderMap) -> Result<(), Error> {
    match is_admin(bot, headers) {
        true => Ok(()),
        false => Err(Error::AdminTokenRequired),
    }
}

/// Decides who is reading the granted thread, and that they may read it at all.
pub async fn reader(
    bot: &Bot,
    grant: &Grant,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reader, Error> {
    let thread = &grant.row.thread;
    if let Some(token) = bearer(headers) {
        if is_admin(bot, headers) || bot.state.token_opens(thread, token).await? {
            return Ok(Reader::Trusted);
        }
        return Err(Error::BadToken);
    }
    let Some(signed) = headers.get(REQUEST_HEADER) else {
        return Err(Error::AuthRequired);
    };
    let signed: SignedRequest = signed
        .to_str()
        .ok()
        .and_then(|text| B64URL.decode(text.trim()).ok())
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| {
            Error::BadQuery(format!(
                "{REQUEST_HEADER} is not the base64url of a signed request"
            ))
        })?;
    let now = now_ms();
    let payload = signed.verify(&bot.id, now)?;
    if &payload.thread != thread {
        return Err(Error::WrongThread);
    }
    let body_sha256 = (!body.is_empty()).then(|| hex::encode(Sha256::digest(body)));
    let asked = Action::Read {
        method: method.as_str().to_owned(),
        path: uri
            .path_and_query()
            .map_or(uri.path(), |p| p.as_str())
            .to_owned(),
        body_sha256,
    };
    if payload.action != asked {
        return Err(Error::RequestMismatch);
    }
    let key = *payload.log.public_key().as_bytes();
    let member = bot
        .client
        .log_ids(thread)
        .await
        .map_err(Error::internal)?
        .contains(&payload.log)
        || grant.db.dispatcher().acls(|acls| acls.names(&key)).await;
    if !member {
        return Err(Error::NotAMember);
    }
    let reader = Reader::Member(key);
    if !reader.may_read(grant, "", None).await {
        return Err(Error::NoReadRole);
    }
    // Last, so a refused request can be corrected and sent again.
    if !bot
        .state
        .spend_nonce(
            &payload.nonce,
            payload.timestamp_ms + REQUEST_WINDOW_MS,
            now,
        )
        .await?
    {
        return Err(Error::Replayed);
    }
    Ok(reader)
}

/// The `Threads-Request` header value for a request signed by `log` (what a member's client
/// sends; the CLI and tests use it).
pub fn sign_header(
    bot_id: &str,
    thread: &threads_core::ThreadId,
    log: &threads_core::Keypair,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let action = Action::Read {
        method: method.to_owned(),
        path: path_and_query.to_owned(),
        body_sha256: (!body.is_empty()).then(|| hex::encode(Sha256::digest(body))),
    };
    let signed = SignedRequest::sign(bot_id, thread, log, action, now_ms(), &mut rand_core::OsRng);
    B64URL.encode(serde_json::to_vec(&signed).expect("strings serialize"))
}
