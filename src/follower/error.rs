//! Why the follower refused a request: one variant per reason, each with a stable code. The
//! transports map variants to their own statuses (HTTP: [`crate::server::error`]).

use threads_core::auth::RequestError;
use threads_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was asked for is not here (or the caller may not know it is).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A thread-less block lookup finds records only: the other nodes are indexed per thread.
    #[error("no record has this CID (a record's event, header and body are found within its thread: /v1/threads/{{id}}/blocks/{{cid}})")]
    NoRecordCid,
    #[error("this thread is private: present its pull token")]
    PullTokenRequired,
    #[error("the pull token does not match this thread")]
    BadPullToken,
    #[error("{0}")]
    BadCursor(&'static str),
    #[error("no records to push")]
    EmptyBatch,
    #[error("{records} records in one batch; the limit is {max}")]
    BatchTooLarge { records: usize, max: usize },
    /// A signed request that does not verify, has expired or names another server.
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{0}")]
    BadAction(&'static str),
    #[error("this server registers logs only with a token from its operator")]
    RegistrationTokenRequired,
    #[error("unknown registration token")]
    BadRegistrationToken,
    #[error("bad follow key: {0}")]
    BadFollowKey(String),
    #[error("send the follow key only: a follower must never hold the read key")]
    ReadKeyRefused,
    #[error("{0}")]
    BadAddrs(String),
    #[error("this request was already used")]
    Replayed,
    /// The request's log is not registered in the thread; the string says what it wanted.
    #[error("only a log registered in the thread may {0}")]
    NotAWriter(&'static str),
    #[error("{0}")]
    BadLogId(String),
    /// Other logs of the thread hold records: what was asked would decide for their writers.
    #[error("other logs of this thread hold records: only a thread's sole writer may {0} (each writer can unregister its own log)")]
    OtherWriters(&'static str),
    #[error("{0} is not a log of this thread here")]
    UnknownLog(String),
    #[error("{0}")]
    BadWebhookUrl(String),
    /// The operator's API without the operator's token.
    #[error("admin token required")]
    AdminTokenRequired,
    #[error("the thread is registered with a different follow key")]
    FollowKeyMismatch,
    /// Another rule of the stored data; the string names it.
    #[error("{0}")]
    Conflict(&'static str),
    /// Too many pushed records wait to be committed: try again shortly.
    #[error("the server is busy storing other pushes; retry shortly")]
    Busy,
    /// Storage failed: nothing about the request was wrong.
    #[error(transparent)]
    Store(StoreError),
    /// A bug or a lost task: nothing about the request was wrong either.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) | Error::NoRecordCid => "not_found",
            Error::PullTokenRequired => "pull_token_required",
            Error::BadPullToken => "bad_pull_token",
            Error::BadCursor(_) => "bad_cursor",
            Error::EmptyBatch => "empty_batch",
            Error::BatchTooLarge { .. } => "batch_too_large",
            Error::Request(e) => e.code(),
            Error::BadAction(_) => "bad_action",
            Error::RegistrationTokenRequired => "registration_token_required",
            Error::BadRegistrationToken => "bad_registration_token",
            Error::BadFollowKey(_) => "bad_follow_key",
            Error::ReadKeyRefused => "read_key_refused",
            Error::BadAddrs(_) => "bad_addrs",
            Error::Replayed => "replayed",
            Error::NotAWriter(_) => "not_a_writer",
            Error::BadLogId(_) => "bad_log_id",
            Error::UnknownLog(_) => "unknown_log",
            Error::OtherWriters(_) => "other_writers",
            Error::BadWebhookUrl(_) => "bad_webhook_url",
            Error::AdminTokenRequired => "unauthorized",
            Error::FollowKeyMismatch => "follow_key_mismatch",
            Error::Conflict(rule) => rule,
            Error::Busy => "busy",
            Error::Store(_) | Error::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Error::NotFound("resource"),
            StoreError::Conflict("follow_key_mismatch") => Error::FollowKeyMismatch,
            StoreError::Conflict(rule) => Error::Conflict(rule),
            other => Error::Store(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
