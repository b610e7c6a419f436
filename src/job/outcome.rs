//! How an attempt ended, why a job failed, and what a cancel found.

use std::fmt;

use super::{Job, JobStatus, StoredResponse};
use crate::time::Timestamp;

/// Why a job failed, ended, or is waiting to retry, in a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not started before its queue deadline.
    QueueTimeout,
    /// The inner call ran past the job's execution timeout.
    ExecutionTimeout,
    /// The inner response was larger than the stored-output limit.
    ResponseTooLarge,
    /// The inner service could not be reached (no connection could be made:
    /// refused, a connect timeout, a name that did not resolve), or asked to
    /// wait (429/503 with `Retry-After`). No attempt is spent.
    UpstreamUnavailable,
    /// The inner service answered with a status code that is retried (5xx).
    UpstreamStatus,
    /// The inner service returned an error instead of a response (for an
    /// upstream: the connection was reset or closed after the request went
    /// out). An attempt is spent.
    UpstreamError,
    /// The inner response body failed while it was read.
    ResponseBodyError,
    /// The worker running it stopped renewing its lease (it died or hung); the
    /// job runs again, without spending an attempt (shown while it waits).
    LeaseExpired,
    /// Its workers' leases lapsed [`MAX_LAPSES`](super::MAX_LAPSES) times: it
    /// was abandoned, and may be crashing them.
    Abandoned,
    /// Canceled by its client.
    Canceled,
    /// The worker shut down mid-call and handed the job back (it runs again).
    WorkerShutdown,
    /// The job ran in a batch whose answer did not hold one item per input
    /// (or could not be split): no member can tell which items are its own.
    BatchMismatch,
}

impl ErrorCode {
    /// The code as shown to clients, in `snake_case`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::QueueTimeout => "queue_timeout",
            ErrorCode::ExecutionTimeout => "execution_timeout",
            ErrorCode::ResponseTooLarge => "response_too_large",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamStatus => "upstream_status",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::ResponseBodyError => "response_body_error",
            ErrorCode::LeaseExpired => "lease_expired",
            ErrorCode::Abandoned => "abandoned",
            ErrorCode::Canceled => "canceled",
            ErrorCode::WorkerShutdown => "worker_shutdown",
            ErrorCode::BatchMismatch => "batch_mismatch",
        }
    }

    /// All codes, for stores that persist them as text.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::QueueTimeout,
        ErrorCode::ExecutionTimeout,
        ErrorCode::ResponseTooLarge,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamStatus,
        ErrorCode::UpstreamError,
        ErrorCode::ResponseBodyError,
        ErrorCode::LeaseExpired,
        ErrorCode::Abandoned,
        ErrorCode::Canceled,
        ErrorCode::WorkerShutdown,
        ErrorCode::BatchMismatch,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong with a job: a stable code and a human message.
///
/// Non-exhaustive, so that it can carry more detail: make one with
/// [`JobError::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobError {
    /// The stable code.
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

impl JobError {
    /// An error with its code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobError {
            code,
            message: message.into(),
        }
    }
}

/// How a worker's inner call ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The inner response, if it answered.
    pub response: Option<StoredResponse>,
    /// What went wrong, if anything.
    pub error: Option<JobError>,
    /// How many jobs shared the call, when it was a batch's (see [`crate::batch`]).
    pub batch_size: Option<u32>,
}

impl Outcome {
    /// The inner service answered.
    pub fn response(response: StoredResponse) -> Self {
        Outcome {
            response: Some(response),
            error: None,
            batch_size: None,
        }
    }

    /// The job failed without (or despite) an answer.
    pub fn error(error: JobError) -> Self {
        Outcome {
            response: None,
            error: Some(error),
            batch_size: None,
        }
    }

    /// This outcome, of a call `size` jobs shared.
    pub fn with_batch_size(mut self, size: u32) -> Self {
        self.batch_size = Some(size);
        self
    }

    /// `succeeded` for a 2xx answer without error, otherwise `failed`.
    pub fn status(&self) -> JobStatus {
        match (&self.response, &self.error) {
            (Some(r), None) if r.status.is_success() => JobStatus::Succeeded,
            _ => JobStatus::Failed,
        }
    }
}

/// What a retry does: when, why, and whether it spends an attempt.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Not runnable before this time.
    pub at: Timestamp,
    /// Why it is retried (shown while it waits).
    pub error: JobError,
    /// The response that caused it, kept in case the job ends with it.
    pub response: Option<StoredResponse>,
    /// Whether the attempt counts (5xx) or not (upstream unavailable).
    pub spend_attempt: bool,
}

/// The answer to a cancel.
///
/// Non-exhaustive, so that a cancel can answer more cases.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The job was queued or running and is now canceled.
    Canceled(Job),
    /// The job had already ended; it is unchanged.
    AlreadyTerminal(Job),
    /// No such job (or not this owner's, or forgotten).
    NotFound,
}
