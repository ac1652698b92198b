//! The API's error: an HTTP status and a stable JSON body `{"code": "...", "detail": "..."}`.
//!
//! 4xx bodies say what was wrong; 5xx bodies say nothing internal (the cause is logged inside
//! the request's span). The core's refusals and pushed records' verdicts get their statuses
//! here, in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use threads_core::auth::RequestError;
use threads_store::{Outcome, StoreError};

use crate::follower::{Error, Verdict};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Error::from(error).into()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::Store(_) | Error::Internal(_) => return Self::internal(error),
            Error::Busy => {
                let mut busy = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.code(),
                    error.to_string(),
                );
                busy.retry_after = Some(crate::follower::commit::BUSY_RETRY_SECS);
                return busy;
            }
            Error::NotFound(_) | Error::NoRecordCid | Error::UnknownLog(_) => StatusCode::NOT_FOUND,
            Error::PullTokenRequired
            | Error::RegistrationTokenRequired
            | Error::AdminTokenRequired => StatusCode::UNAUTHORIZED,
            Error::BadPullToken | Error::BadRegistrationToken | Error::NotAWriter(_) => {
                StatusCode::FORBIDDEN
            }
            Error::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Replayed
            | Error::FollowKeyMismatch
            | Error::OtherWriters(_)
            | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Request(e) => match e {
                RequestError::Payload(_)
                | RequestError::SignatureEncoding
                | RequestError::BadNonce => StatusCode::BAD_REQUEST,
                RequestError::BadSignature | RequestError::Expired => StatusCode::UNAUTHORIZED,
                RequestError::WrongServer(_) => StatusCode::MISDIRECTED_REQUEST,
            },
            Error::BadCursor(_)
            | Error::EmptyBatch
            | Error::BadAction(_)
            | Error::BadFollowKey(_)
            | Error::ReadKeyRefused
            | Error::BadAddrs(_)
            | Error::BadLogId(_)
            | Error::BadWebhookUrl(_) => StatusCode::BAD_REQUEST,
        };
        Self::new(status, error.code(), error.to_string())
    }
}

/// The status of a pushed record that was not stored (`None` when it was).
pub fn verdict_status(verdict: &Verdict) -> Option<StatusCode> {
    Some(match verdict {
        Verdict::Stored(_) => return None,
        Verdict::Refused(Outcome::UnknownLog) => StatusCode::NOT_FOUND,
        Verdict::Refused(Outcome::QuotaExceeded(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        Verdict::Refused(_) => StatusCode::CONFLICT,
        Verdict::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            metrics::counter!("threads_server_errors_total", "code" => self.code).increment(1);
        }
        let mut response = (
            self.status,
            Json(json!({"code": self.code, "detail": self.detail})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
