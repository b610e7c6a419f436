//! The store: the only shared state, and its contract.
//!
//! Every operation is one atomic state transition (the transitions themselves
//! are [`Job`]'s methods). A front door or a worker never reads a job, changes
//! it and writes it back behind the store's back.
//!
//! | operation | transition |
//! |---|---|
//! | [`enqueue`](Store::enqueue) | new -> `queued` (or the first job of an idempotency key) |
//! | [`claim`](Store::claim) | `queued` -> `in_progress`, with a lease, by priority then age |
//! | [`claim_batch`](Store::claim_batch) | more `queued` jobs of one batch key -> `in_progress`, each with its own lease |
//! | [`extend`](Store::extend) | renews the lease (fenced) |
//! | [`complete`](Store::complete), [`complete_status`](Store::complete_status) | `in_progress` -> `succeeded` \| `failed` (fenced) |
//! | [`complete_and_claim`](Store::complete_and_claim) | `complete_status`, then `claim`, in one call where the store can |
//! | [`retry_later`](Store::retry_later) | `in_progress` -> `queued`, runnable later (fenced) |
//! | [`wake_unavailable`](Store::wake_unavailable) | `queued` waiting out a backoff for an unavailable upstream -> runnable now |
//! | [`cancel`](Store::cancel) | `queued` \| `in_progress` -> `canceled` |
//! | [`cancel_queued`](Store::cancel_queued) | `queued` -> `canceled` only |
//! | [`claim_delivery`](Store::claim_delivery) | a due webhook delivery, with a lease |
//! | [`record_delivery`](Store::record_delivery) | one delivery attempt's result (fenced) |
//! | [`sweep`](Store::sweep) | deadlines -> `expired`; lapsed leases -> `queued`, or `failed` (`abandoned`) at the last allowed lapse; both ends reported as counts; past TTL -> forgotten |
//!
//! Beside the jobs, a store keeps what the live page shows
//! ([`activity`](self::activity)): each process hands it counts of what it
//! saw every few seconds ([`record_activity`](Store::record_activity)), and
//! it answers the sum over every process ([`activity`](Store::activity)).
//! Not a transition: nothing of it is written on a job's path.
//!
//! "Fenced" means refused with [`StoreError::is_stale_lease`] when the lease
//! token is not the job's current one: a worker that lost its lease (it was
//! too slow, the job was canceled, another worker took over) cannot overwrite
//! what happened since. Delivery is at-least-once: a job whose lease lapses
//! runs again.
//!
//! Every store passes the same conformance suite (`tests/store/`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::job::{
    CancelOutcome, DeliveryAttempt, Job, JobId, JobStatus, Lease, LeaseToken, NewJob, Outcome,
    Priority, Retry,
};
use crate::time::Timestamp;

pub mod activity;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use activity::{Activity, ActivityBatch, ActivityBucket, Histogram};

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use memory::MemoryStore;

/// How many ready jobs of each priority level
/// [`claim_batch`](Store::claim_batch) looks at, at most: it bounds the
/// work of one call (a Redis script blocks the server while it runs) when
/// jobs of many batch keys are queued together.
pub const BATCH_SCAN: usize = 256;

/// A job handed to a worker, with the lease that fences its writes.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The job as it was claimed (`in_progress`).
    pub job: Job,
    /// The worker's hold on it.
    pub lease: Lease,
}

impl Claim {
    /// The claimed job's id.
    pub fn id(&self) -> JobId {
        self.job.id
    }

    /// The lease token that fences this claim's writes.
    pub fn token(&self) -> LeaseToken {
        self.lease.token
    }
}

/// The answer to [`Store::complete_and_claim`]: the completion's, then
/// the claim's.
#[derive(Debug)]
pub struct CompletedAndClaimed {
    /// What [`complete_status`](Store::complete_status) answers.
    pub status: Result<JobStatus, StoreError>,
    /// What [`claim`](Store::claim) answers (`None` may also mean that the
    /// store did not look everywhere: see the method).
    pub next: Result<Option<Claim>, StoreError>,
}

/// A webhook delivery handed to a deliverer, with the lease that fences it.
#[derive(Clone, Debug)]
pub struct DeliveryClaim {
    /// The (terminal) job whose end is delivered.
    pub job: Job,
    /// The deliverer's hold on this attempt.
    pub lease: Lease,
}

/// The answer to [`Store::cancel_queued`].
///
/// Non-exhaustive, so that a cancel can answer more cases.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum QueuedCancel {
    /// The job was queued and is now canceled.
    Canceled(Job),
    /// The job is running or has ended; it is unchanged.
    NotQueued(Job),
    /// No such job (or not this owner's, or forgotten).
    NotFound,
}

/// The answer to an enqueue.
#[derive(Clone, Debug)]
pub struct Enqueued {
    /// The job.
    pub job: Job,
    /// `false` when an idempotency key matched an earlier job, which is returned instead.
    pub created: bool,
}

/// Queue statistics.
///
/// Non-exhaustive, so that statistics can be added: a store starts from
/// [`QueueStats::default`] and sets the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Queued jobs, ready or waiting for a retry.
    pub queued: u64,
    /// Queued jobs by priority level (0, 1, 2).
    pub queued_by_priority: [u64; Priority::LEVELS],
    /// Of the queued jobs, those waiting out a retry's backoff.
    pub retrying: u64,
    /// Jobs a worker is running.
    pub in_progress: u64,
    /// When the oldest job that is ready to run was submitted.
    pub oldest_queued_at: Option<Timestamp>,
}

/// What a [`sweep`](Store::sweep) did.
///
/// Non-exhaustive, so that more can be reported: a store starts from
/// [`Swept::default`] and sets the fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swept {
    /// When something is next due (at or before now when the store applied
    /// only part of what was due, to be called again soon).
    pub next_due: Option<Timestamp>,
    /// Jobs that expired (`queued` past their deadline) since the last
    /// sweep reported any.
    pub expired: u64,
    /// Jobs that failed as abandoned (their lease lapsed for the
    /// [`MAX_LAPSES`](crate::job::MAX_LAPSES)th time, error
    /// [`Abandoned`](crate::job::ErrorCode::Abandoned)) since the last sweep
    /// reported any. Every other failure is recorded by the process whose
    /// write ended the job, so this is not all `failed` jobs.
    pub abandoned: u64,
}

/// Why an enqueue was refused.
///
/// Non-exhaustive, so that a store can refuse for new reasons.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The queue holds `limit` jobs already.
    QueueFull {
        /// The limit that was reached.
        limit: usize,
    },
    /// The idempotency key was used, by the same owner, for a different request.
    IdempotencyConflict {
        /// The job that holds the key.
        existing: JobId,
    },
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnqueueError::QueueFull { limit } => write!(f, "the queue is full ({limit} jobs)"),
            EnqueueError::IdempotencyConflict { existing } => write!(
                f,
                "the idempotency key was used for a different request (job {existing})"
            ),
            EnqueueError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EnqueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnqueueError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for EnqueueError {
    fn from(e: StoreError) -> Self {
        EnqueueError::Store(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreErrorKind {
    StaleLease,
    Unavailable,
}

/// A store operation that failed.
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// The lease token is not the job's current one: the write was refused.
    pub fn stale_lease() -> Self {
        StoreError {
            kind: StoreErrorKind::StaleLease,
            message: "the lease is no longer held".into(),
            source: None,
        }
    }

    /// The store cannot be reached or failed; the operation may be retried.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            kind: StoreErrorKind::Unavailable,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether a fenced write was refused because the lease is stale.
    pub fn is_stale_lease(&self) -> bool {
        self.kind == StoreErrorKind::StaleLease
    }

    /// Whether the store itself failed (as opposed to refusing a stale write).
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The store contract. See the [module docs](self) for the transitions.
///
/// Methods return `impl Future + Send` rather than using `async-trait`, so the
/// layer stays generic over its store without boxing a future per call.
pub trait Store: Send + Sync + 'static {
    /// Adds a job, `queued`, unless `max_queued` jobs are queued already.
    ///
    /// With an idempotency key in its options, a second enqueue by the same
    /// owner with the same key, while the first job is remembered, returns the
    /// first job (`created: false`), or [`EnqueueError::IdempotencyConflict`]
    /// if the request differs. It never makes a second job.
    fn enqueue(
        &self,
        job: NewJob,
        max_queued: usize,
    ) -> impl Future<Output = Result<Enqueued, EnqueueError>> + Send;

    /// The job, or `None` if unknown or forgotten.
    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// Resolves with the job as soon as its revision exceeds `seen`, or at
    /// `until` with the job as it is then; `None` if it is unknown or forgotten.
    /// Waiters are woken by the change itself: no polling.
    fn wait(
        &self,
        id: JobId,
        seen: u64,
        until: Timestamp,
    ) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// Takes the next runnable job, by priority then age, marks it
    /// `in_progress` and hands out a lease of `lease`.
    ///
    /// Priority is strict between levels, FIFO within a level, with aging:
    /// with `priority_aging` = `A`, a job that has been ready for `k * A`
    /// competes as if `k` levels higher (never above 0), and among equal levels
    /// the one ready longest goes first. So under any stream of level-0 work a
    /// level-2 job starts within `2 * A` plus the work queued ahead of it when
    /// it came due. `None` means strict priority.
    fn claim(
        &self,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> impl Future<Output = Result<Option<Claim>, StoreError>> + Send;

    /// Takes more runnable jobs whose batch key is `key`
    /// ([`BatchTag`](crate::job::BatchTag)), to share one call with a job
    /// the caller claimed: in the order [`claim`](Store::claim) would take
    /// them (priority with aging, then age), while their inputs add up to
    /// at most `max_items` and their request bodies to at most `max_bytes`;
    /// a job that does not fit is passed over. Each is claimed as `claim`
    /// claims a job, with a lease of its own that fences its writes alone.
    /// One call, however many jobs it takes.
    ///
    /// A store looks at the first [`BATCH_SCAN`] ready jobs of each priority
    /// level, no further: a compatible job behind them runs later, as the
    /// head of a batch of its own.
    ///
    /// The default takes none (every job then runs alone, which is still
    /// correct); both stores of this crate implement it.
    fn claim_batch(
        &self,
        key: &str,
        max_items: u32,
        max_bytes: u64,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Claim>, StoreError>> + Send {
        let _ = (key, max_items, max_bytes, lease, priority_aging);
        async { Ok(Vec::new()) }
    }

    /// Resolves when a [`claim`](Store::claim) may find work (a job was
    /// enqueued or became runnable), or at `until`.
    fn work_available(&self, until: Timestamp) -> impl Future<Output = ()> + Send;

    /// Renews a lease to `lease` from now. Fenced.
    fn extend(
        &self,
        id: JobId,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Records how an attempt ended: `succeeded` or `failed`. Fenced.
    fn complete(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// [`complete`](Store::complete), answering only the status the job
    /// ended with, for a caller that needs no more (the worker). A store
    /// that must ship the job back to answer `complete` (Redis) saves that
    /// here; by default it is `complete` itself. Fenced.
    fn complete_status(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
    ) -> impl Future<Output = Result<JobStatus, StoreError>> + Send {
        async move { Ok(self.complete(id, token, outcome).await?.status) }
    }

    /// [`complete_status`](Store::complete_status), then
    /// [`claim`](Store::claim) with `lease` and `priority_aging`, for a
    /// worker that has a slot for its next job once this one is recorded.
    /// A store may make both in one call (Redis: one round trip and one
    /// script call rather than two of each); by default it makes one after
    /// the other. The claim is made whatever the completion answers, and
    /// may find no job where `claim` would have found one (Redis: when the
    /// job's shard has none, or the claim is not that shard's turn): a
    /// worker answered `None` claims as usual. Fenced.
    fn complete_and_claim(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> impl Future<Output = CompletedAndClaimed> + Send {
        async move {
            let status = self.complete_status(id, token, outcome).await;
            let next = self.claim(lease, priority_aging).await;
            CompletedAndClaimed { status, next }
        }
    }

    /// Hands the job back to the queue, runnable at `retry.at`. Fenced.
    fn retry_later(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// Makes runnable now every queued job that waits out a backoff because
    /// the upstream was unavailable (its retry's error is
    /// [`UpstreamUnavailable`](crate::job::ErrorCode::UpstreamUnavailable)),
    /// oldest first behind the work already ready; returns how many. The
    /// worker calls it when a call is answered after the upstream was seen
    /// unavailable, so that a backlog starts as soon as the upstream is back
    /// instead of each job sleeping out its backoff. A store keeps an index
    /// of such jobs: this costs the jobs it wakes, not a scan of all.
    ///
    /// The default wakes none (the jobs sleep out their backoffs, which is
    /// still correct); both stores of this crate implement it.
    fn wake_unavailable(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async { Ok(0) }
    }

    /// Cancels a queued or running job of `owner` (a running job's worker sees
    /// its lease go and drops the inner call).
    fn cancel(
        &self,
        id: JobId,
        owner: Option<&str>,
    ) -> impl Future<Output = Result<CancelOutcome, StoreError>> + Send;

    /// Cancels a job of `owner` only if it is still queued (Baseten's cancel).
    fn cancel_queued(
        &self,
        id: JobId,
        owner: Option<&str>,
    ) -> impl Future<Output = Result<QueuedCancel, StoreError>> + Send;

    /// Takes a due webhook delivery (a terminal job whose webhook is pending,
    /// due, and held by nobody) with a lease of `lease` for one attempt.
    fn claim_delivery(
        &self,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<DeliveryClaim>, StoreError>> + Send;

    /// Records one delivery attempt. Fenced by the delivery's lease token.
    fn record_delivery(
        &self,
        id: JobId,
        token: LeaseToken,
        attempt: DeliveryAttempt,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// Resolves when a [`claim_delivery`](Store::claim_delivery) may find a
    /// delivery (a job with a webhook ended, or a retry came due), or at `until`.
    fn delivery_available(&self, until: Timestamp) -> impl Future<Output = ()> + Send;

    /// Queue statistics.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;

    /// Adds one process's activity to what the store keeps for every
    /// process: each bucket's counts add to those the store has for the
    /// same start (a bucket's depth sample is kept only when the store has
    /// none for it yet), and the ids go on the front of the recent list,
    /// of which the store keeps the last [`RECENT`](activity::RECENT).
    /// A bucket is kept [`KEEP`](activity::KEEP) from when it was last
    /// written, then forgotten.
    ///
    /// Called by each process every few seconds, never per job. The
    /// default keeps nothing (the live page then shows only its own
    /// process's jobs); both stores of this crate implement it.
    fn record_activity(
        &self,
        batch: ActivityBatch,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = batch;
        async { Ok(()) }
    }

    /// What every process recorded in the buckets that start at or after
    /// the bucket of `since` (oldest first, only those that hold
    /// anything), and the recent ids, newest first.
    ///
    /// The default has none.
    fn activity(
        &self,
        since: Timestamp,
    ) -> impl Future<Output = Result<Activity, StoreError>> + Send {
        let _ = since;
        async { Ok(Activity::default()) }
    }

    /// Applies what is due: queue deadlines, lapsed leases, retries coming
    /// due, results past their TTL. Returns when something is next due, and
    /// how many jobs expired, and how many failed as abandoned, since the
    /// last sweep of the store (by any process): in this sweep, and in the
    /// claims that applied what was due before choosing. Each is reported
    /// by one sweep only, so the sum over every process's sweeps is every
    /// job that ended so; that is how the live page and the metrics count
    /// them, since no process ends an expired or an abandoned job.
    fn sweep(&self) -> impl Future<Output = Result<Swept, StoreError>> + Send;
}
