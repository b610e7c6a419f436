//! Jobs: what was asked, how it is going, and how it ended.
//!
//! A [`Job`] is a stored request plus its options, its lifecycle and its
//! outcome. Its state machine lives here, as plain methods on `Job` that take
//! the time as an argument: every [`Store`](crate::store::Store) applies the
//! same transitions atomically, and they are tested without any I/O.
//!
//! ```text
//! queued ──claim──> in_progress ──finish──> succeeded | failed
//!   │  ^                 │
//!   │  └──requeue/lapse──┤
//!   ├──cancel──> canceled <──cancel──┘
//!   └──deadline──> expired
//! ```
//!
//! Terminal states never change again.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use crate::time::Timestamp;

/// Length of every [`JobId`].
pub const JOB_ID_LEN: usize = 16;

/// A job's id: 16 characters of `[0-9a-z]` from the OS CSPRNG (about 82 bits).
///
/// Valid for VESSL clients (1–16 lowercase alphanumerics) and unguessable.
///
/// ```
/// use tower_defer::JobId;
///
/// let id = JobId::random();
/// assert_eq!(id.as_str().len(), 16);
/// assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
/// assert!("NOT-AN-ID".parse::<JobId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId([u8; JOB_ID_LEN]);

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

impl JobId {
    /// A fresh id from the operating system's CSPRNG (drawn through a
    /// per-thread buffer: one system call serves about sixty ids).
    ///
    /// # Panics
    ///
    /// If the operating system has no random source to offer, which no
    /// supported platform lacks.
    pub fn random() -> Self {
        let mut out = [0u8; JOB_ID_LEN];
        let mut filled = 0;
        while filled < JOB_ID_LEN {
            // Rejection sampling: 252 = 7 * 36, so `b % 36` is uniform below it.
            for b in crate::random::bytes::<JOB_ID_LEN>() {
                if b < 252 && filled < JOB_ID_LEN {
                    out[filled] = ALPHABET[usize::from(b % 36)];
                    filled += 1;
                }
            }
        }
        JobId(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from ALPHABET bytes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.as_str())
    }
}

/// The error of parsing a [`JobId`] from text that is not 16 of `[0-9a-z]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJobId(());

impl fmt::Display for InvalidJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a job id is 16 characters of 0-9 and a-z")
    }
}

impl std::error::Error for InvalidJobId {}

impl FromStr for JobId {
    type Err = InvalidJobId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; JOB_ID_LEN] = s.as_bytes().try_into().map_err(|_| InvalidJobId(()))?;
        if bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            Ok(JobId(bytes))
        } else {
            Err(InvalidJobId(()))
        }
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a job is in its life, with the native names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting to run (also while waiting out a retry's backoff).
    Queued,
    /// A worker is calling the inner service.
    InProgress,
    /// The inner service answered 2xx.
    Succeeded,
    /// Any other final answer, or an error on the way.
    Failed,
    /// Canceled by its client.
    Canceled,
    /// Not started before its queue deadline.
    Expired,
}

impl JobStatus {
    /// The native name: `queued`, `in_progress`, `succeeded`, `failed`,
    /// `canceled`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::Expired => "expired",
        }
    }

    /// Whether this state is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::InProgress)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's priority: 0 runs first, 2 last; 1 is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// The highest priority (0).
    pub const HIGH: Priority = Priority(0);
    /// The default priority (1).
    pub const NORMAL: Priority = Priority(1);
    /// The lowest priority (2).
    pub const LOW: Priority = Priority(2);
    /// How many levels there are.
    pub const LEVELS: usize = 3;

    /// A priority from 0 to 2; `None` outside that range.
    pub fn new(level: u8) -> Option<Self> {
        (usize::from(level) < Self::LEVELS).then_some(Priority(level))
    }

    /// The level, 0 to 2.
    pub fn level(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

/// The request a job replays against the inner service.
///
/// Credentials and hop-by-hop headers were dropped when it was stored (see
/// [`DeferLayer::forward_credentials`](crate::DeferLayer::forward_credentials)).
#[derive(Clone, Debug)]
pub struct StoredRequest {
    /// The method.
    pub method: Method,
    /// Path and query, as the inner service will see them.
    pub path_and_query: PathAndQuery,
    /// The headers to send.
    pub headers: HeaderMap,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// The inner service's answer, kept to be replayed verbatim.
#[derive(Clone, Debug)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers, less hop-by-hop ones.
    pub headers: HeaderMap,
    /// The body, byte for byte.
    pub body: Bytes,
}

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
    /// The inner service could not be reached (refused, reset, 429/503 with `Retry-After`).
    UpstreamUnavailable,
    /// The inner service answered with a status code that is retried (5xx).
    UpstreamStatus,
    /// The inner service returned an error instead of a response.
    UpstreamError,
    /// The inner response body failed while it was read.
    ResponseBodyError,
    /// The worker running it stopped renewing its lease too often (it died or hung).
    LeaseExpired,
    /// Canceled by its client.
    Canceled,
    /// The worker shut down mid-call and handed the job back (it runs again).
    WorkerShutdown,
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
            ErrorCode::Canceled => "canceled",
            ErrorCode::WorkerShutdown => "worker_shutdown",
        }
    }

    /// All codes, for stores that persist them as text.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::QueueTimeout,
        ErrorCode::ExecutionTimeout,
        ErrorCode::ResponseTooLarge,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamStatus,
        ErrorCode::UpstreamError,
        ErrorCode::ResponseBodyError,
        ErrorCode::LeaseExpired,
        ErrorCode::Canceled,
        ErrorCode::WorkerShutdown,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong with a job: a stable code and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// How often, and how patiently, a job is retried after a 5xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay before the second attempt; it doubles after each.
    pub initial_delay: Duration,
    /// The cap on the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(5000),
        }
    }
}

/// A job's options, fixed when it is submitted.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// 0 runs first, 2 last.
    pub priority: Priority,
    /// A job not started this long after submission ends `expired`.
    pub max_time_in_queue: Duration,
    /// How long a finished job stays retrievable.
    pub result_ttl: Duration,
    /// How long one inner call may run.
    pub execution_timeout: Duration,
    /// Retries after a 5xx.
    pub retry: RetryPolicy,
    /// Who submitted it: lookups and cancels by anyone else answer 404.
    pub owner: Option<Arc<str>>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<Arc<str>>,
    /// Where to deliver the job's end, if anywhere.
    pub webhook: Option<WebhookTarget>,
}

/// Where, and in which format, a job's end is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// An `http` or `https` URL.
    pub url: String,
    /// The body and signature scheme.
    pub format: WebhookFormat,
}

/// A webhook's body and signature scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The native event, signed per the Standard Webhooks specification.
    Standard,
    /// Baseten's body, signed with `X-BASETEN-SIGNATURE`.
    Baseten,
}

/// Where a job's webhook delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not yet delivered; more attempts to come.
    Pending,
    /// A receiver answered 2xx.
    Succeeded,
    /// The schedule ended (or the receiver refused for good) without a 2xx.
    Failed,
}

impl DeliveryStatus {
    /// `pending`, `succeeded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// A job's webhook delivery: its state, and the lease of whoever is delivering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's status code at the last attempt, if it answered.
    pub last_status_code: Option<u16>,
    /// What went wrong at the last attempt, if anything did.
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<Timestamp>,
    /// The deliverer's hold, while an attempt runs.
    pub lease: Option<Lease>,
    /// How many times delivery was claimed; the next lease token.
    pub claims: u64,
}

/// How one delivery attempt went.
#[derive(Clone, Debug)]
pub struct DeliveryAttempt {
    /// The receiver's status code, if it answered.
    pub status_code: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Whether it was delivered (a 2xx).
    pub delivered: bool,
    /// When to try again; `None` ends the schedule (failed unless delivered).
    pub retry_at: Option<Timestamp>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            priority: Priority::NORMAL,
            max_time_in_queue: Duration::from_secs(600),
            result_ttl: Duration::from_secs(3600),
            execution_timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            owner: None,
            idempotency_key: None,
            webhook: None,
        }
    }
}

/// A job as submitted, before a store gives it an id.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// What to send to the inner service.
    pub request: StoredRequest,
    /// Its options.
    pub options: JobOptions,
}

/// The token of one claim on a job: it fences the worker's writes.
///
/// Tokens of one job only grow, so a stale worker's token never matches again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken(pub u64);

/// A worker's hold on a running job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Fences writes.
    pub token: LeaseToken,
    /// The lease lapses (the job may be claimed again) at this time.
    pub until: Timestamp,
}

/// A job: its request, options, lifecycle and outcome.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What it sends to the inner service.
    pub request: Arc<StoredRequest>,
    /// Its options.
    pub options: JobOptions,
    /// Where it is.
    pub status: JobStatus,
    /// Attempts spent (a retry for unavailability spends none).
    pub attempts: u32,
    /// Grows by one on every change: waiters compare it.
    pub revision: u64,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub status_at: Timestamp,
    /// When its latest attempt started.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub completed_at: Option<Timestamp>,
    /// When a terminal job is forgotten.
    pub expires_at: Option<Timestamp>,
    /// A queued job still queued at this time ends `expired`.
    pub queue_deadline: Timestamp,
    /// A queued job waiting out a backoff runs no earlier than this.
    pub retry_at: Option<Timestamp>,
    /// The inner service's answer, once there is one (the last one after retries).
    pub response: Option<Arc<StoredResponse>>,
    /// What went wrong, if anything did (for a queued job: why it is retrying).
    pub error: Option<JobError>,
    /// The current worker's hold, while in progress.
    pub lease: Option<Lease>,
    /// How many times it was claimed; the next lease token.
    pub claims: u64,
    /// Its webhook delivery, once it has ended (when it has a webhook).
    /// Boxed: most jobs have none, and a queued job should cost little.
    pub webhook: Option<Box<WebhookDelivery>>,
}

/// How a worker's inner call ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The inner response, if it answered.
    pub response: Option<StoredResponse>,
    /// What went wrong, if anything.
    pub error: Option<JobError>,
}

impl Outcome {
    /// The inner service answered.
    pub fn response(response: StoredResponse) -> Self {
        Outcome {
            response: Some(response),
            error: None,
        }
    }

    /// The job failed without (or despite) an answer.
    pub fn error(error: JobError) -> Self {
        Outcome {
            response: None,
            error: Some(error),
        }
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
#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// The job was queued or running and is now canceled.
    Canceled(Job),
    /// The job had already ended; it is unchanged.
    AlreadyTerminal(Job),
    /// No such job (or not this owner's, or forgotten).
    NotFound,
}

/// A write with a lease that no longer holds (another worker owns the job,
/// or it was canceled or expired meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleLease;

impl Job {
    /// A new queued job submitted at `now`.
    pub fn new(id: JobId, mut new: NewJob, now: Timestamp) -> Self {
        let queue_deadline = now.after(new.options.max_time_in_queue);
        // A HeaderMap grows in steps; a queued job keeps its headers for
        // minutes, so keep them at their exact size.
        if new.request.headers.capacity() > new.request.headers.len() {
            let mut exact = HeaderMap::with_capacity(new.request.headers.len());
            exact.extend(std::mem::take(&mut new.request.headers));
            new.request.headers = exact;
        }
        Job {
            id,
            request: Arc::new(new.request),
            options: new.options,
            status: JobStatus::Queued,
            attempts: 0,
            revision: 1,
            created_at: now,
            status_at: now,
            started_at: None,
            completed_at: None,
            expires_at: None,
            queue_deadline,
            retry_at: None,
            response: None,
            error: None,
            lease: None,
            claims: 0,
            webhook: None,
        }
    }

    /// Whether `owner` may see this job: owners must match exactly
    /// (a job without owner is visible only to requests without owner).
    pub fn is_visible_to(&self, owner: Option<&str>) -> bool {
        self.options.owner.as_deref() == owner
    }

    /// Whether a worker may claim it at `now`.
    pub fn is_runnable(&self, now: Timestamp) -> bool {
        self.status == JobStatus::Queued
            && self.queue_deadline > now
            && self.retry_at.is_none_or(|at| at <= now)
    }

    /// When this job next needs the store's attention on its own:
    /// a deadline, a retry coming due, a lease lapsing, or being forgotten.
    pub fn next_due(&self) -> Option<Timestamp> {
        match self.status {
            JobStatus::Queued => Some(match self.retry_at {
                Some(at) => at.min(self.queue_deadline),
                None => self.queue_deadline,
            }),
            JobStatus::InProgress => self.lease.map(|l| l.until),
            // A pending delivery keeps the job (see `is_forgotten`): its
            // next attempt or its lapsing lease is what comes due first.
            _ => match &self.webhook {
                Some(w) if w.status == DeliveryStatus::Pending => {
                    w.lease.map(|l| l.until).or(w.next_attempt_at)
                }
                _ => self.expires_at,
            },
        }
    }

    /// When its webhook can be claimed for delivery: pending, not held by a
    /// deliverer, at its next attempt's time.
    pub fn delivery_ready_at(&self) -> Option<Timestamp> {
        let w = self.webhook.as_ref()?;
        (w.status == DeliveryStatus::Pending && w.lease.is_none())
            .then_some(w.next_attempt_at)
            .flatten()
    }

    fn touch(&mut self, status: JobStatus, now: Timestamp) {
        self.status = status;
        self.status_at = now;
        self.revision += 1;
    }

    fn end(&mut self, status: JobStatus, now: Timestamp) {
        self.touch(status, now);
        self.lease = None;
        self.retry_at = None;
        self.completed_at = Some(now);
        self.expires_at = Some(now.after(self.options.result_ttl));
        if self.options.webhook.is_some() {
            self.webhook = Some(Box::new(WebhookDelivery {
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_status_code: None,
                last_error: None,
                next_attempt_at: Some(now),
                lease: None,
                claims: 0,
            }));
        }
    }

    /// Queued and past its deadline: ends `expired` (`queue_timeout`).
    /// Returns whether it changed.
    pub fn expire_if_due(&mut self, now: Timestamp) -> bool {
        if self.status != JobStatus::Queued || self.queue_deadline > now {
            return false;
        }
        let waited = self.queue_deadline.since(self.created_at).as_secs();
        self.error = Some(JobError::new(
            ErrorCode::QueueTimeout,
            format!("not started within its {waited} s queue deadline"),
        ));
        self.end(JobStatus::Expired, now);
        true
    }

    /// Starts an attempt: `in_progress`, one more attempt, a fresh lease.
    /// `None` if it is not runnable at `now`.
    pub fn claim(&mut self, now: Timestamp, lease: Duration) -> Option<Lease> {
        if !self.is_runnable(now) {
            return None;
        }
        self.claims += 1;
        let lease = Lease {
            token: LeaseToken(self.claims),
            until: now.after(lease),
        };
        self.attempts += 1;
        self.lease = Some(lease);
        self.retry_at = None;
        self.started_at = Some(now);
        // The previous attempt's error no longer describes the job (the last
        // response stays: a final failure keeps it).
        self.error = None;
        self.touch(JobStatus::InProgress, now);
        Some(lease)
    }

    fn check_lease(&self, token: LeaseToken) -> Result<(), StaleLease> {
        match self.lease {
            Some(l) if l.token == token && self.status == JobStatus::InProgress => Ok(()),
            _ => Err(StaleLease),
        }
    }

    /// Pushes the lease out to `now + lease`. Does not change the revision:
    /// waiters are not woken by a heartbeat.
    pub fn extend(
        &mut self,
        token: LeaseToken,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Lease, StaleLease> {
        self.check_lease(token)?;
        let renewed = Lease {
            token,
            until: now.after(lease),
        };
        self.lease = Some(renewed);
        Ok(renewed)
    }

    /// Records the outcome of the attempt holding `token`.
    pub fn finish(
        &mut self,
        token: LeaseToken,
        now: Timestamp,
        outcome: Outcome,
    ) -> Result<(), StaleLease> {
        self.check_lease(token)?;
        let status = outcome.status();
        if let Some(response) = outcome.response {
            self.response = Some(Arc::new(response));
        }
        self.error = outcome.error;
        self.end(status, now);
        Ok(())
    }

    /// Puts the job back in the queue, runnable at `retry.at`.
    pub fn requeue(
        &mut self,
        token: LeaseToken,
        now: Timestamp,
        retry: Retry,
    ) -> Result<(), StaleLease> {
        self.check_lease(token)?;
        if !retry.spend_attempt {
            self.attempts = self.attempts.saturating_sub(1);
        }
        if let Some(response) = retry.response {
            self.response = Some(Arc::new(response));
        }
        self.error = Some(retry.error);
        self.lease = None;
        self.retry_at = (retry.at > now).then_some(retry.at);
        self.touch(JobStatus::Queued, now);
        Ok(())
    }

    /// A lease that lapsed (its worker died or hung) hands the job back to the
    /// queue, or fails it once its attempts are spent: a job that kills its
    /// worker every time must not kill workers forever. Returns whether it changed.
    pub fn lapse_if_due(&mut self, now: Timestamp) -> bool {
        match self.lease {
            Some(l) if self.status == JobStatus::InProgress && l.until <= now => {}
            _ => return false,
        }
        let error = JobError::new(
            ErrorCode::LeaseExpired,
            "the worker running it stopped renewing its lease",
        );
        self.error = Some(error);
        if self.attempts >= self.options.retry.max_attempts {
            self.end(JobStatus::Failed, now);
        } else {
            self.lease = None;
            self.touch(JobStatus::Queued, now);
        }
        true
    }

    /// Cancels a queued or running job; a terminal job is left as it is.
    /// Returns whether it changed.
    pub fn cancel(&mut self, now: Timestamp) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.error = Some(JobError::new(ErrorCode::Canceled, "canceled by the client"));
        self.end(JobStatus::Canceled, now);
        true
    }

    /// Whether a terminal job's result is past its TTL at `now`. A job whose
    /// webhook is still being delivered is kept until delivery ends.
    pub fn is_forgotten(&self, now: Timestamp) -> bool {
        let delivering = self
            .webhook
            .as_ref()
            .is_some_and(|w| w.status == DeliveryStatus::Pending);
        !delivering && self.expires_at.is_some_and(|at| at <= now)
    }

    /// Takes the webhook delivery: a lease of `lease` for one attempt.
    /// `None` unless a delivery is due at `now` and nobody holds it.
    pub fn claim_delivery(&mut self, now: Timestamp, lease: Duration) -> Option<Lease> {
        if self.delivery_ready_at().is_none_or(|at| at > now) {
            return None;
        }
        let w = self.webhook.as_mut()?;
        w.claims += 1;
        let held = Lease {
            token: LeaseToken(w.claims),
            until: now.after(lease),
        };
        w.lease = Some(held);
        Some(held)
    }

    /// Records one delivery attempt made under `token`.
    pub fn record_delivery(
        &mut self,
        token: LeaseToken,
        attempt: DeliveryAttempt,
    ) -> Result<(), StaleLease> {
        let w = self.webhook.as_mut().ok_or(StaleLease)?;
        if w.lease.map(|l| l.token) != Some(token) || w.status != DeliveryStatus::Pending {
            return Err(StaleLease);
        }
        w.attempts += 1;
        w.lease = None;
        w.last_status_code = attempt.status_code;
        w.last_error = attempt.error;
        (w.status, w.next_attempt_at) = match (attempt.delivered, attempt.retry_at) {
            (true, _) => (DeliveryStatus::Succeeded, None),
            (false, Some(at)) => (DeliveryStatus::Pending, Some(at)),
            (false, None) => (DeliveryStatus::Failed, None),
        };
        self.revision += 1;
        Ok(())
    }

    /// A delivery lease that lapsed (its deliverer died) frees the delivery
    /// for another attempt at once. Returns whether it changed.
    pub fn lapse_delivery_if_due(&mut self, now: Timestamp) -> bool {
        match self.webhook.as_mut() {
            Some(w) if w.lease.is_some_and(|l| l.until <= now) => {
                w.lease = None;
                w.next_attempt_at = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(now: Timestamp) -> Job {
        let request = StoredRequest {
            method: Method::POST,
            path_and_query: PathAndQuery::from_static("/"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        Job::new(
            JobId::random(),
            NewJob {
                request,
                options: JobOptions::default(),
            },
            now,
        )
    }

    fn response(status: u16) -> StoredResponse {
        StoredResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        }
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn ids_are_16_lowercase_alphanumerics_and_distinct() {
        let a = JobId::random();
        assert!(a
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_ne!(a, JobId::random());
        for bad in [
            "",
            "abc",
            "0123456789abcdeF",
            "0123456789abcdef0",
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_claimed_job_finishes_once_and_terminal_never_changes() {
        let t0 = Timestamp::from_millis(1_000_000);
        let mut j = job(t0);
        let lease = j.claim(t0, LEASE).unwrap();
        assert_eq!(j.status, JobStatus::InProgress);
        assert_eq!(j.attempts, 1);
        assert!(j.claim(t0, LEASE).is_none(), "in progress is not runnable");
        j.finish(lease.token, t0, Outcome::response(response(200)))
            .unwrap();
        assert_eq!(j.status, JobStatus::Succeeded);
        assert_eq!(j.expires_at, Some(t0.after(Duration::from_secs(3600))));
        assert_eq!(
            j.finish(lease.token, t0, Outcome::response(response(500))),
            Err(StaleLease)
        );
        assert!(!j.cancel(t0));
        assert!(!j.expire_if_due(t0.after(Duration::from_secs(10_000))));
        assert_eq!(j.status, JobStatus::Succeeded);
    }

    #[test]
    fn a_non_2xx_answer_fails_and_keeps_the_response() {
        let t0 = Timestamp::from_millis(5);
        let mut j = job(t0);
        let lease = j.claim(t0, LEASE).unwrap();
        j.finish(lease.token, t0, Outcome::response(response(400)))
            .unwrap();
        assert_eq!(j.status, JobStatus::Failed);
        assert_eq!(j.response.unwrap().status, 400);
    }

    #[test]
    fn a_stale_lease_cannot_write_after_a_lapse() {
        let t0 = Timestamp::from_millis(0);
        let mut j = job(t0);
        let first = j.claim(t0, LEASE).unwrap();
        let later = t0.after(LEASE);
        assert!(j.lapse_if_due(later));
        assert_eq!(j.status, JobStatus::Queued);
        let second = j.claim(later, LEASE).unwrap();
        assert!(second.token > first.token);
        assert_eq!(
            j.finish(first.token, later, Outcome::response(response(200))),
            Err(StaleLease)
        );
        j.finish(second.token, later, Outcome::response(response(200)))
            .unwrap();
        assert_eq!(j.attempts, 2);
    }

    #[test]
    fn a_job_that_lapses_every_attempt_fails() {
        let mut now = Timestamp::from_millis(0);
        let mut j = job(now);
        for _ in 0..3 {
            j.claim(now, LEASE).unwrap();
            now = now.after(LEASE);
            assert!(j.lapse_if_due(now));
        }
        assert_eq!(j.status, JobStatus::Failed);
        assert_eq!(j.error.unwrap().code, ErrorCode::LeaseExpired);
    }

    #[test]
    fn requeue_without_spending_keeps_the_attempt_count() {
        let t0 = Timestamp::from_millis(0);
        let mut j = job(t0);
        let lease = j.claim(t0, LEASE).unwrap();
        let at = t0.after(Duration::from_secs(2));
        let retry = Retry {
            at,
            error: JobError::new(ErrorCode::UpstreamUnavailable, "refused"),
            response: None,
            spend_attempt: false,
        };
        j.requeue(lease.token, t0, retry).unwrap();
        assert_eq!(j.attempts, 0);
        assert_eq!(j.retry_at, Some(at));
        assert!(!j.is_runnable(t0));
        assert!(j.is_runnable(at));
        j.claim(at, LEASE).unwrap();
        assert_eq!(j.error, None, "a new attempt clears the last one's error");
    }

    #[test]
    fn a_queued_job_expires_at_its_deadline_and_never_runs() {
        let t0 = Timestamp::from_millis(0);
        let mut j = job(t0);
        let deadline = t0.after(Duration::from_secs(600));
        assert!(!j.expire_if_due(t0));
        assert!(j.claim(deadline, LEASE).is_none());
        assert!(j.expire_if_due(deadline));
        assert_eq!(j.status, JobStatus::Expired);
        assert_eq!(j.error.as_ref().unwrap().code, ErrorCode::QueueTimeout);
        assert!(j.claim(deadline, LEASE).is_none());
    }

    #[test]
    fn cancel_of_a_running_job_invalidates_its_lease() {
        let t0 = Timestamp::from_millis(0);
        let mut j = job(t0);
        let lease = j.claim(t0, LEASE).unwrap();
        assert!(j.cancel(t0));
        assert_eq!(j.status, JobStatus::Canceled);
        assert_eq!(j.extend(lease.token, t0, LEASE), Err(StaleLease));
    }
}
