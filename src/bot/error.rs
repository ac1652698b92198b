//! Why a bot refused a request: one variant per reason, each with a stable code and status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use threads_core::auth::RequestError;

use crate::server::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad invite: {0}")]
    BadInvite(String),
    #[error("the invite carries no read key: a bot is given a thread to read it (share it with --role reader or writer)")]
    FollowOnly,
    #[error("the invite names no follower, and none was given: the bot cannot reach the thread")]
    NoFollower,
    #[error("the follower: {0}")]
    BadFollowerUrl(String),
    #[error("cannot reach the follower: {0}")]
    Unreachable(String),
    #[error("the follower refused ({code}): {detail}")]
    FollowerRefused { code: String, detail: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("present a read token (Authorization: Bearer) or a request signed by a member (Threads-Request)")]
    AuthRequired,
    #[error("admin token required")]
    AdminTokenRequired,
    #[error("the token opens nothing here")]
    BadToken,
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the signed request names another thread")]
    WrongThread,
    #[error("the signature covers another request (method, path with query, or body)")]
    RequestMismatch,
    #[error("this request was already used")]
    Replayed,
    #[error("the signing key is not a member of the thread (no log of it, and no ACL names it)")]
    NotAMember,
    #[error("the thread's ACL does not give this member the read role")]
    NoReadRole,
    #[error("{0}")]
    BadQuery(String),
    #[error("this thread is not published as a feed")]
    NotPublished,
    #[error("a webhook receives the whole thread: subscribe with the admin token or a read token for the thread")]
    TrustedOnly,
    #[error(transparent)]
    Hook(#[from] crate::webhooks::HookError),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Error::Internal(error.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Error::BadInvite(_) => (S::BAD_REQUEST, "bad_invite"),
            Error::FollowOnly => (S::BAD_REQUEST, "not_readable"),
            Error::NoFollower => (S::UNPROCESSABLE_ENTITY, "no_follower"),
            Error::BadFollowerUrl(_) => (S::BAD_REQUEST, "bad_follower_url"),
            Error::Unreachable(_) => (S::BAD_GATEWAY, "follower_unreachable"),
            Error::FollowerRefused { .. } => (S::BAD_GATEWAY, "follower_refused"),
            Error::NotFound(_) => (S::NOT_FOUND, "not_found"),
            Error::AuthRequired => (S::UNAUTHORIZED, "auth_required"),
            Error::AdminTokenRequired => (S::UNAUTHORIZED, "admin_token_required"),
            Error::BadToken => (S::FORBIDDEN, "bad_token"),
            Error::Request(e) => match e {
                RequestError::Payload(_) | RequestError::SignatureEncoding => {
                    (S::BAD_REQUEST, e.code())
                }
                _ => (S::UNAUTHORIZED, e.code()),
            },
            Error::WrongThread => (S::FORBIDDEN, "wrong_thread"),
            Error::RequestMismatch => (S::FORBIDDEN, "request_mismatch"),
            Error::Replayed => (S::UNAUTHORIZED, "replayed"),
            Error::NotAMember => (S::FORBIDDEN, "not_a_member"),
            Error::NoReadRole => (S::FORBIDDEN, "no_read_role"),
            Error::BadQuery(_) => (S::BAD_REQUEST, "bad_query"),
            Error::TrustedOnly => (S::FORBIDDEN, "token_required"),
            Error::NotPublished => (S::NOT_FOUND, "not_published"),
            // Answered by the webhook API's own mapping.
            Error::Hook(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
            Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::internal(e)
    }
}

impl From<threads_db::Error> for Error {
    fn from(e: threads_db::Error) -> Self {
        Error::internal(e)
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = error.status_and_code();
        match error {
            Error::Internal(_) => ApiError::internal(error),
            Error::Hook(e) => e.into(),
            _ => ApiError::new(status, code, error.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
