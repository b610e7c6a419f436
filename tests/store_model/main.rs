//! A state-machine model test of the store contract (`src/store/mod.rs`).
//!
//! proptest draws random sequences of operations — enqueue, claim (with and
//! without priority aging), extend, complete, retry later, cancel, time
//! advancing on tokio's paused clock, sweeps, lapsing leases (counted apart
//! from attempts) and waking the jobs that wait for the upstream — and runs each
//! against a real store and against [`Model`], a small reference written from
//! the rules of `src/job.rs` and the ordering rules of `Store::claim`. After
//! every step every job the store was ever given is read back (`get`) and
//! compared with the model, and so are the queue statistics; every answer of
//! every operation is compared as it comes (which job a claim hands out,
//! refused stale writes, idempotent enqueues, cancel outcomes). On top of the
//! model: a terminal job never changes, no job is claimed after it ended,
//! and at the end (time run forward, sweeps, everything claimed and
//! completed) every job has ended and is forgotten after its TTL.
//!
//! The test is generic over the store ([`run`] and [`case`] take a factory),
//! so every store runs the same model: `MemoryStore` with proptest's default
//! case count, and, with feature `redis`, `RedisStore` on a redis-server of
//! the test's own (`redis_store_agrees_with_the_model`, 64 cases: every step
//! is a few round trips), each case in a namespace of its own.
//!
//! Transitions that time makes due (queue deadlines, lapsed leases, retries
//! coming due) are applied when the store sweeps — by `sweep`, and by `claim`,
//! which sweeps first — as the contract's table says; a result past its TTL is
//! gone for every reader at once. The model is exact except where the
//! contract leaves a choice: jobs that became ready in the same sweep at the
//! same level may be claimed in any order, and `oldest_queued_at` may come
//! from any of them.
//!
//! On failure proptest shrinks to a short sequence of operations and prints
//! it with the step that failed and why. `PROPTEST_CASES` changes the number
//! of cases (256 by default: well under a second in debug).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use tower_defer::job::{
    CancelOutcome, ErrorCode, JobError, JobOptions, LeaseToken, NewJob, Outcome, Priority, Retry,
    RetryPolicy, StoredRequest, StoredResponse, MAX_LAPSES,
};
use tower_defer::store::{EnqueueError, QueueStats};
use tower_defer::time::Timestamp;
use tower_defer::{Job, JobId, JobStatus, MemoryStore, Store};

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// What a step does. Jobs and claims are named by index into those made so far
/// (taken modulo their number), so a shrunk sequence stays meaningful.
#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        priority: u8,
        /// `max_time_in_queue`, in ms.
        queue_ms: u64,
        /// Idempotency key `k0` / `k1`.
        key: Option<u8>,
        /// Owner `o0` / `o1`.
        owner: Option<u8>,
        /// The request body: two enqueues with one key and different bodies conflict.
        body: u8,
        /// The store must not fail a job for it (only the worker reads it).
        max_attempts: u32,
        ttl_ms: u64,
        max_queued: usize,
    },
    Claim {
        lease_ms: u64,
        aging_ms: Option<u64>,
    },
    /// Renews the lease of claim `claim` (perhaps a stale one).
    Extend {
        claim: usize,
        lease_ms: u64,
    },
    Complete {
        claim: usize,
        how: How,
    },
    RetryLater {
        claim: usize,
        spend: bool,
        delay_ms: u64,
    },
    Cancel {
        job: usize,
        by: By,
    },
    Advance {
        ms: u64,
    },
    /// Advances just past the latest lease of a running job.
    LapseLeases,
    Sweep,
    /// `wake_unavailable`: the jobs waiting for the upstream run now.
    WakeUnavailable,
}

#[derive(Clone, Copy, Debug)]
enum How {
    Ok2xx,
    Non2xx,
    Error,
}

#[derive(Clone, Copy, Debug)]
enum By {
    /// The job's own owner.
    Owner,
    /// Another owner (or none, when the job has one).
    Other,
    /// An id the store never made.
    Unknown,
}

const OWNERS: [&str; 2] = ["o0", "o1"];
const KEYS: [&str; 2] = ["k0", "k1"];

fn op() -> impl Strategy<Value = Op> {
    let enqueue = (
        0..=2u8,
        prop_oneof![Just(2_000u64), Just(30_000), Just(600_000)],
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        0..2u8,
        1..=3u32,
        prop_oneof![Just(5_000u64), Just(3_600_000)],
        prop_oneof![4 => Just(1_000usize), 1 => Just(3)],
    )
        .prop_map(
            |(priority, queue_ms, key, owner, body, max_attempts, ttl_ms, max_queued)| {
                Op::Enqueue {
                    priority,
                    queue_ms,
                    key,
                    owner,
                    body,
                    max_attempts,
                    ttl_ms,
                    max_queued,
                }
            },
        );
    let lease = || prop_oneof![Just(5_000u64), Just(30_000)];
    let claim = (
        lease(),
        proptest::option::of(prop_oneof![Just(1_000u64), Just(10_000)]),
    )
        .prop_map(|(lease_ms, aging_ms)| Op::Claim { lease_ms, aging_ms });
    let index = || 0..16usize;
    let how = prop_oneof![Just(How::Ok2xx), Just(How::Non2xx), Just(How::Error)];
    let by = prop_oneof![3 => Just(By::Owner), 1 => Just(By::Other), 1 => Just(By::Unknown)];
    prop_oneof![
        4 => enqueue,
        4 => claim,
        1 => (index(), lease()).prop_map(|(claim, lease_ms)| Op::Extend { claim, lease_ms }),
        3 => (index(), how).prop_map(|(claim, how)| Op::Complete { claim, how }),
        3 => (index(), any::<bool>(), prop_oneof![Just(0u64), Just(1_000), Just(10_000)])
            .prop_map(|(claim, spend, delay_ms)| Op::RetryLater { claim, spend, delay_ms }),
        2 => (index(), by).prop_map(|(job, by)| Op::Cancel { job, by }),
        3 => prop_oneof![Just(1u64), Just(1_000), Just(5_000), 1..40_000u64, Just(700_000)]
            .prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::LapseLeases),
        1 => Just(Op::Sweep),
        1 => Just(Op::WakeUnavailable),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..40)
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// One job as the model sees it.
#[derive(Clone, Debug)]
struct MJob {
    id: JobId,
    level: u8,
    owner: Option<&'static str>,
    key: Option<&'static str>,
    body: u8,
    created_at: Timestamp,
    deadline: Timestamp,
    ttl: Duration,
    status: JobStatus,
    attempts: u32,
    /// Leases that lapsed (counted apart from attempts).
    lapses: u32,
    /// Tokens handed out so far (the next token is `claims + 1`).
    claims: u64,
    /// The current lease: token and when it lapses.
    lease: Option<(LeaseToken, Timestamp)>,
    retry_at: Option<Timestamp>,
    /// While runnable: when it became ready, and its place in line. Jobs that
    /// became ready in the same sweep share a place (the contract leaves their
    /// order open).
    ready: Option<(Timestamp, u64)>,
    error: Option<ErrorCode>,
    expires_at: Option<Timestamp>,
}

impl MJob {
    fn forgotten(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// `Job::next_due`.
    fn next_due(&self) -> Option<Timestamp> {
        match self.status {
            JobStatus::Queued => Some(
                self.retry_at
                    .map_or(self.deadline, |r| r.min(self.deadline)),
            ),
            JobStatus::InProgress => self.lease.map(|(_, until)| until),
            _ => self.expires_at,
        }
    }

    fn end(&mut self, status: JobStatus, error: Option<ErrorCode>, now: Timestamp) {
        self.status = status;
        self.error = error;
        self.lease = None;
        self.retry_at = None;
        self.ready = None;
        self.expires_at = Some(now.after(self.ttl));
    }

    fn holds(&self, token: LeaseToken) -> bool {
        self.status == JobStatus::InProgress && self.lease.is_some_and(|(t, _)| t == token)
    }
}

#[derive(Debug)]
struct Model {
    now: Timestamp,
    jobs: Vec<MJob>,
    next_seq: u64,
}

/// What the model expects of an enqueue.
#[derive(Debug, PartialEq, Eq)]
enum EnqueueExpect {
    Created,
    Existing(JobId),
    Conflict(JobId),
    Full,
}

impl Model {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn job(&mut self, id: JobId) -> Option<&mut MJob> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    fn enqueue_expect(
        &self,
        owner: Option<&str>,
        key: Option<&str>,
        body: u8,
        max_queued: usize,
    ) -> EnqueueExpect {
        if let Some(key) = key {
            let live = self
                .jobs
                .iter()
                .find(|j| j.key == Some(key) && j.owner == owner && !j.forgotten(self.now));
            if let Some(j) = live {
                return if j.body == body {
                    EnqueueExpect::Existing(j.id)
                } else {
                    EnqueueExpect::Conflict(j.id)
                };
            }
        }
        let queued = self
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Queued)
            .count();
        if queued >= max_queued {
            EnqueueExpect::Full
        } else {
            EnqueueExpect::Created
        }
    }

    /// Applies what is due at `now`, job by job, until nothing more is:
    /// deadlines, then lapsed leases, then retries coming due.
    fn sweep(&mut self) {
        let now = self.now;
        let group = self.seq();
        for j in &mut self.jobs {
            loop {
                if j.status == JobStatus::Queued && j.deadline <= now {
                    j.end(JobStatus::Expired, Some(ErrorCode::QueueTimeout), now);
                } else if j.status == JobStatus::InProgress
                    && j.lease.is_some_and(|(_, until)| until <= now)
                {
                    // A lapse gives the attempt back; the last one abandons the job.
                    j.attempts = j.attempts.saturating_sub(1);
                    j.lapses += 1;
                    if j.lapses >= MAX_LAPSES {
                        j.end(JobStatus::Failed, Some(ErrorCode::Abandoned), now);
                    } else {
                        j.status = JobStatus::Queued;
                        j.error = Some(ErrorCode::LeaseExpired);
                        j.lease = None;
                        j.ready = Some((now, group));
                    }
                } else if j.status == JobStatus::Queued && j.retry_at.is_some_and(|at| at <= now) {
                    j.retry_at = None;
                    j.ready = Some((now, group));
                } else {
                    break;
                }
            }
        }
    }

    /// The jobs a claim may hand out now (after its sweep): the least by
    /// (effective level, ready since, level, place in line).
    fn claimable(&self, aging: Option<Duration>) -> Vec<JobId> {
        let key = |j: &MJob| {
            let (ready_at, seq) = j.ready.expect("ready");
            let aged = aging.map_or(0, |a| {
                let periods = self.now.since(ready_at).as_millis() / a.as_millis().max(1);
                usize::try_from(periods).unwrap_or(usize::MAX)
            });
            (
                usize::from(j.level).saturating_sub(aged),
                ready_at,
                j.level,
                seq,
            )
        };
        let ready: Vec<&MJob> = self.jobs.iter().filter(|j| j.ready.is_some()).collect();
        let Some(best) = ready.iter().map(|j| key(j)).min() else {
            return Vec::new();
        };
        ready
            .into_iter()
            .filter(|j| key(j) == best)
            .map(|j| j.id)
            .collect()
    }

    fn stats(&self) -> QueueStats {
        let mut s = QueueStats::default();
        for j in &self.jobs {
            match j.status {
                JobStatus::Queued if j.retry_at.is_some() => s.retrying += 1,
                JobStatus::Queued => s.queued_by_priority[usize::from(j.level)] += 1,
                JobStatus::InProgress => s.in_progress += 1,
                _ => {}
            }
        }
        s.queued = s.queued_by_priority.iter().sum::<u64>() + s.retrying;
        s
    }

    /// The values `oldest_queued_at` may take: for each level, the creation
    /// times of the jobs first in its line; the answer is the least over the
    /// levels of one of them. Returns (least, greatest, every candidate).
    fn oldest_queued_bounds(&self) -> Option<(Timestamp, Timestamp, Vec<Timestamp>)> {
        let mut lo = None::<Timestamp>;
        let mut hi = None::<Timestamp>;
        let mut all = Vec::new();
        for level in 0..Priority::LEVELS as u8 {
            let line: Vec<&MJob> = self
                .jobs
                .iter()
                .filter(|j| j.level == level && j.ready.is_some() && j.retry_at.is_none())
                .collect();
            let Some(first) = line.iter().map(|j| j.ready.unwrap().1).min() else {
                continue;
            };
            let heads: Vec<Timestamp> = line
                .iter()
                .filter(|j| j.ready.unwrap().1 == first)
                .map(|j| j.created_at)
                .collect();
            let (min, max) = (*heads.iter().min().unwrap(), *heads.iter().max().unwrap());
            lo = Some(lo.map_or(min, |l| l.min(min)));
            hi = Some(hi.map_or(max, |h| h.min(max)));
            all.extend(heads);
        }
        Some((lo?, hi?, all))
    }

    /// When the store next has something to do after a sweep at `now`.
    fn next_due(&self) -> Option<Timestamp> {
        self.jobs
            .iter()
            .filter(|j| !j.forgotten(self.now))
            .filter_map(MJob::next_due)
            .min()
    }

    fn all_ended(&self) -> bool {
        self.jobs.iter().all(|j| j.status.is_terminal())
    }
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// What was seen of a terminal job: it must never change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Terminal {
    status: JobStatus,
    attempts: u32,
    revision: u64,
    completed_at: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    error: Option<ErrorCode>,
    response: Option<StatusCode>,
}

impl Terminal {
    fn of(job: &Job) -> Self {
        Terminal {
            status: job.status,
            attempts: job.attempts,
            revision: job.revision,
            completed_at: job.completed_at,
            expires_at: job.expires_at,
            error: job.error.as_ref().map(|e| e.code),
            response: job.response.as_ref().map(|r| r.status),
        }
    }
}

struct Harness<S> {
    store: S,
    model: Model,
    /// Every claim handed out, current or stale: (job, token).
    claims: Vec<(JobId, LeaseToken)>,
    /// Every terminal job as first seen.
    terminal: HashMap<JobId, Terminal>,
}

fn request(body: u8) -> StoredRequest {
    StoredRequest {
        method: Method::POST,
        path_and_query: PathAndQuery::from_static("/infer"),
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'0' + body]),
    }
}

fn response(status: u16) -> StoredResponse {
    StoredResponse {
        status: StatusCode::from_u16(status).expect("a status code"),
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"{}"),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl<S: Store> Harness<S> {
    fn new(store: S) -> Self {
        Harness {
            store,
            model: Model {
                now: Timestamp::now(),
                jobs: Vec::new(),
                next_seq: 0,
            },
            claims: Vec::new(),
            terminal: HashMap::new(),
        }
    }

    async fn advance(&mut self, d: Duration) -> Result<(), String> {
        tokio::time::advance(d).await;
        self.model.now = self.model.now.after(d);
        ensure!(
            Timestamp::now() == self.model.now,
            "the clock reads {} after advancing to {}",
            Timestamp::now(),
            self.model.now
        );
        Ok(())
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Enqueue {
                priority,
                queue_ms,
                key,
                owner,
                body,
                max_attempts,
                ttl_ms,
                max_queued,
            } => {
                let owner = owner.map(|o| OWNERS[usize::from(o)]);
                let key = key.map(|k| KEYS[usize::from(k)]);
                self.enqueue(
                    priority,
                    queue_ms,
                    key,
                    owner,
                    body,
                    max_attempts,
                    ttl_ms,
                    max_queued,
                )
                .await?;
            }
            Op::Claim { lease_ms, aging_ms } => {
                self.claim(ms(lease_ms), aging_ms.map(ms)).await?;
            }
            Op::Extend { claim, lease_ms } => {
                let Some(&(id, token)) = self.pick_claim(claim) else {
                    return Ok(());
                };
                let got = self.store.extend(id, token, ms(lease_ms)).await;
                let now = self.model.now;
                let j = self.model.job(id).expect("a claimed job is in the model");
                if j.holds(token) {
                    let lease = got.map_err(|e| format!("extend refused: {e}"))?;
                    let until = now.after(ms(lease_ms));
                    ensure!(
                        lease.token == token && lease.until == until,
                        "extend gave {lease:?}, expected token {token:?} until {until}"
                    );
                    j.lease = Some((token, until));
                } else {
                    expect_stale("extend", got.map(|_| ()))?;
                }
            }
            Op::Complete { claim, how } => {
                let Some(&(id, token)) = self.pick_claim(claim) else {
                    return Ok(());
                };
                let (outcome, status, error) = match how {
                    How::Ok2xx => (Outcome::response(response(200)), JobStatus::Succeeded, None),
                    How::Non2xx => (Outcome::response(response(422)), JobStatus::Failed, None),
                    How::Error => (
                        Outcome::error(JobError::new(ErrorCode::UpstreamError, "boom")),
                        JobStatus::Failed,
                        Some(ErrorCode::UpstreamError),
                    ),
                };
                let got = self.store.complete(id, token, outcome).await;
                let now = self.model.now;
                let j = self.model.job(id).expect("a claimed job is in the model");
                if j.holds(token) {
                    let job = got.map_err(|e| format!("complete refused: {e}"))?;
                    ensure!(
                        job.status == status,
                        "completed as {}, expected {status}",
                        job.status
                    );
                    j.end(status, error, now);
                } else {
                    expect_stale("complete", got.map(|_| ()))?;
                }
            }
            Op::RetryLater {
                claim,
                spend,
                delay_ms,
            } => {
                let Some(&(id, token)) = self.pick_claim(claim) else {
                    return Ok(());
                };
                let now = self.model.now;
                let at = now.after(ms(delay_ms));
                // As the worker does: a retry that spends nothing is one for
                // an unavailable upstream, which `wake_unavailable` may end.
                let (code, answer) = if spend {
                    (ErrorCode::UpstreamStatus, Some(response(503)))
                } else {
                    (ErrorCode::UpstreamUnavailable, None)
                };
                let retry = Retry {
                    at,
                    error: JobError::new(code, "503"),
                    response: answer,
                    spend_attempt: spend,
                };
                let got = self.store.retry_later(id, token, retry).await;
                let seq = self.model.seq();
                let j = self.model.job(id).expect("a claimed job is in the model");
                if j.holds(token) {
                    let job = got.map_err(|e| format!("retry_later refused: {e}"))?;
                    ensure!(
                        job.status == JobStatus::Queued,
                        "retried job is {}",
                        job.status
                    );
                    if !spend {
                        j.attempts = j.attempts.saturating_sub(1);
                    }
                    j.status = JobStatus::Queued;
                    j.error = Some(code);
                    j.lease = None;
                    j.retry_at = (at > now).then_some(at);
                    j.ready = j.retry_at.is_none().then_some((now, seq));
                } else {
                    expect_stale("retry_later", got.map(|_| ()))?;
                }
            }
            Op::Cancel { job, by } => self.cancel(job, by).await?,
            Op::Advance { ms: n } => self.advance(ms(n)).await?,
            Op::LapseLeases => {
                let latest = self
                    .model
                    .jobs
                    .iter()
                    .filter(|j| j.status == JobStatus::InProgress)
                    .filter_map(|j| j.lease.map(|(_, until)| until))
                    .max();
                let d = latest.map_or(ms(1), |until| until.since(self.model.now) + ms(1));
                self.advance(d).await?;
            }
            Op::Sweep => self.sweep().await?,
            Op::WakeUnavailable => {
                let woken = self
                    .store
                    .wake_unavailable()
                    .await
                    .map_err(|e| format!("wake_unavailable failed: {e}"))?;
                let (now, group) = (self.model.now, self.model.seq());
                let mut expected = 0;
                for j in &mut self.model.jobs {
                    if j.status == JobStatus::Queued
                        && j.retry_at.is_some()
                        && j.error == Some(ErrorCode::UpstreamUnavailable)
                    {
                        // Woken together: the contract leaves their order
                        // among themselves to the store.
                        j.retry_at = None;
                        j.ready = Some((now, group));
                        expected += 1;
                    }
                }
                ensure!(
                    woken == expected,
                    "wake_unavailable woke {woken} jobs, the model {expected}"
                );
            }
        }
        Ok(())
    }

    fn pick_claim(&self, i: usize) -> Option<&(JobId, LeaseToken)> {
        (!self.claims.is_empty()).then(|| &self.claims[i % self.claims.len()])
    }

    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &mut self,
        priority: u8,
        queue_ms: u64,
        key: Option<&'static str>,
        owner: Option<&'static str>,
        body: u8,
        max_attempts: u32,
        ttl_ms: u64,
        max_queued: usize,
    ) -> Result<(), String> {
        let mut options = JobOptions::default();
        options.priority = Priority::new(priority).expect("0 to 2");
        options.max_time_in_queue = ms(queue_ms);
        options.result_ttl = ms(ttl_ms);
        options.retry = RetryPolicy::default().with_max_attempts(max_attempts);
        options.owner = owner.map(Arc::from);
        options.idempotency_key = key.map(Arc::from);
        let new = NewJob {
            request: request(body),
            options,
        };
        let expected = self.model.enqueue_expect(owner, key, body, max_queued);
        let got = self.store.enqueue(new, max_queued).await;
        match (expected, got) {
            (EnqueueExpect::Created, Ok(e)) if e.created => {
                let now = self.model.now;
                ensure!(
                    e.job.status == JobStatus::Queued && e.job.attempts == 0,
                    "a new job is {} with {} attempts",
                    e.job.status,
                    e.job.attempts
                );
                ensure!(
                    self.model.jobs.iter().all(|j| j.id != e.job.id),
                    "enqueue reused the id {}",
                    e.job.id
                );
                let seq = self.model.seq();
                self.model.jobs.push(MJob {
                    id: e.job.id,
                    level: priority,
                    owner,
                    key,
                    body,
                    created_at: now,
                    deadline: now.after(ms(queue_ms)),
                    ttl: ms(ttl_ms),
                    status: JobStatus::Queued,
                    attempts: 0,
                    lapses: 0,
                    claims: 0,
                    lease: None,
                    retry_at: None,
                    ready: Some((now, seq)),
                    error: None,
                    expires_at: None,
                });
            }
            (EnqueueExpect::Existing(id), Ok(e)) if !e.created => {
                ensure!(
                    e.job.id == id,
                    "the key returned {} instead of {id}",
                    e.job.id
                );
            }
            (EnqueueExpect::Conflict(id), Err(EnqueueError::IdempotencyConflict { existing })) => {
                ensure!(existing == id, "the conflict names {existing}, not {id}");
            }
            (EnqueueExpect::Full, Err(EnqueueError::QueueFull { limit })) => {
                ensure!(
                    limit == max_queued,
                    "queue full at {limit}, not {max_queued}"
                );
            }
            (expected, got) => {
                let got = got.map(|e| (e.job.id, e.created));
                return Err(format!("enqueue: expected {expected:?}, got {got:?}"));
            }
        }
        Ok(())
    }

    async fn claim(&mut self, lease: Duration, aging: Option<Duration>) -> Result<(), String> {
        let got = self
            .store
            .claim(lease, aging)
            .await
            .map_err(|e| format!("claim failed: {e}"))?;
        self.model.sweep();
        let allowed = self.model.claimable(aging);
        let Some(claim) = got else {
            ensure!(
                allowed.is_empty(),
                "claim found nothing; expected one of {allowed:?}"
            );
            return Ok(());
        };
        let id = claim.id();
        ensure!(
            !self.terminal.contains_key(&id),
            "claimed {id}, which had ended as {:?}",
            self.terminal[&id]
        );
        ensure!(
            allowed.contains(&id),
            "claimed {id}; expected one of {allowed:?}"
        );
        let now = self.model.now;
        let j = self.model.job(id).expect("allowed jobs are in the model");
        j.claims += 1;
        j.attempts += 1;
        j.status = JobStatus::InProgress;
        j.ready = None;
        j.retry_at = None;
        // A new attempt clears the last one's error.
        j.error = None;
        let until = now.after(lease);
        j.lease = Some((LeaseToken(j.claims), until));
        ensure!(
            claim.job.status == JobStatus::InProgress
                && claim.token() == LeaseToken(j.claims)
                && claim.lease.until == until
                && claim.job.attempts == j.attempts,
            "claim of {id} gave {:?} with {} attempts; expected token {} until {until}, {} attempts",
            claim.lease,
            claim.job.attempts,
            j.claims,
            j.attempts
        );
        // Every earlier token of this job is stale from now on.
        ensure!(
            self.claims
                .iter()
                .all(|&(c, t)| c != id || t < claim.token()),
            "claim of {id} reused token {:?}",
            claim.token()
        );
        self.claims.push((id, claim.token()));
        Ok(())
    }

    async fn cancel(&mut self, job: usize, by: By) -> Result<(), String> {
        let target = (!self.model.jobs.is_empty())
            .then(|| self.model.jobs[job % self.model.jobs.len()].clone());
        let (id, owner) = match (by, &target) {
            (By::Unknown, _) | (_, None) => ("zzzzzzzzzzzzzzzz".parse().unwrap(), None),
            (By::Owner, Some(j)) => (j.id, j.owner),
            (By::Other, Some(j)) => (
                j.id,
                match j.owner {
                    Some(o) if o == OWNERS[0] => Some(OWNERS[1]),
                    Some(_) => None,
                    None => Some(OWNERS[0]),
                },
            ),
        };
        let got = self
            .store
            .cancel(id, owner)
            .await
            .map_err(|e| format!("cancel failed: {e}"))?;
        let now = self.model.now;
        let j = match self.model.job(id) {
            Some(j) if j.owner == owner && !j.forgotten(now) => j,
            _ => {
                ensure!(
                    matches!(got, CancelOutcome::NotFound),
                    "cancel of {id} by {owner:?}: expected not found, got {got:?}"
                );
                return Ok(());
            }
        };
        match got {
            CancelOutcome::Canceled(job) if !j.status.is_terminal() => {
                ensure!(
                    job.status == JobStatus::Canceled,
                    "canceled job is {}",
                    job.status
                );
                j.end(JobStatus::Canceled, Some(ErrorCode::Canceled), now);
            }
            CancelOutcome::AlreadyTerminal(job) if j.status.is_terminal() => {
                ensure!(
                    job.status == j.status,
                    "already {}, expected {}",
                    job.status,
                    j.status
                );
            }
            got => return Err(format!("cancel of {id} ({}): unexpected {got:?}", j.status)),
        }
        Ok(())
    }

    async fn sweep(&mut self) -> Result<(), String> {
        let next = self
            .store
            .sweep()
            .await
            .map_err(|e| format!("sweep failed: {e}"))?;
        self.model.sweep();
        // Waking early is harmless (a store that applies due items in
        // batches may answer "now" to be called again); late or never is not.
        if let Some(due) = self.model.next_due() {
            ensure!(
                next.is_some_and(|n| n <= due),
                "sweep says next due {:?}; something is due at {due}",
                next.map(|n| n.to_string())
            );
        }
        Ok(())
    }

    /// Reads every job back and compares it (and the statistics) with the model.
    async fn check(&mut self) -> Result<(), String> {
        let now = self.model.now;
        for j in &self.model.jobs {
            let got = self
                .store
                .get(j.id)
                .await
                .map_err(|e| format!("get failed: {e}"))?;
            if j.forgotten(now) {
                ensure!(got.is_none(), "{} is past its TTL but still there", j.id);
                continue;
            }
            let Some(got) = got else {
                return Err(format!("{} ({}) is gone", j.id, j.status));
            };
            ensure!(got.id == j.id, "get({}) returned {}", j.id, got.id);
            let seen = (
                got.status,
                got.attempts,
                got.lapses,
                got.lease.map(|l| (l.token, l.until)),
                got.retry_at,
                got.error.as_ref().map(|e| e.code),
                got.created_at,
                got.queue_deadline,
                got.expires_at,
            );
            let expected = (
                j.status,
                j.attempts,
                j.lapses,
                j.lease,
                j.retry_at,
                j.error,
                j.created_at,
                j.deadline,
                j.expires_at,
            );
            ensure!(
                seen == expected,
                "{}: store has (status, attempts, lapses, lease, retry_at, error, created, deadline, \
                 expires) = {seen:?}, model {expected:?}",
                j.id
            );
            if got.status.is_terminal() {
                let now_seen = Terminal::of(&got);
                let first = self
                    .terminal
                    .entry(j.id)
                    .or_insert_with(|| now_seen.clone());
                ensure!(
                    *first == now_seen,
                    "terminal job {} changed: {first:?} -> {now_seen:?}",
                    j.id
                );
            }
        }
        let stats = self
            .store
            .stats()
            .await
            .map_err(|e| format!("stats failed: {e}"))?;
        let mut expected = self.model.stats();
        let oldest = self.model.oldest_queued_bounds();
        match (&oldest, stats.oldest_queued_at) {
            (None, None) => {}
            (Some((lo, hi, all)), Some(at)) => ensure!(
                *lo <= at && at <= *hi && all.contains(&at),
                "oldest_queued_at {at}, expected one of {all:?} in [{lo}, {hi}]"
            ),
            (o, at) => return Err(format!("oldest_queued_at {at:?}, expected {o:?}")),
        }
        expected.oldest_queued_at = stats.oldest_queued_at;
        ensure!(stats == expected, "stats {stats:?}, model {expected:?}");
        Ok(())
    }

    /// Runs time forward and works off everything: every job must end, and
    /// then be forgotten after its TTL.
    async fn finish(&mut self) -> Result<(), String> {
        for _ in 0..10 {
            self.sweep().await?;
            loop {
                let before = self.claims.len();
                self.claim(ms(30_000), None).await?;
                if self.claims.len() == before {
                    break;
                }
                let &(id, token) = self.claims.last().expect("just claimed");
                self.step(&Op::Complete {
                    claim: self.claims.len() - 1,
                    how: How::Ok2xx,
                })
                .await?;
                ensure!(
                    self.model
                        .jobs
                        .iter()
                        .any(|j| j.id == id && j.status.is_terminal()),
                    "{id} did not end when completed with {token:?}"
                );
            }
            self.check().await?;
            if self.model.all_ended() {
                break;
            }
            // Past every lease (30 s) and every retry delay (10 s).
            self.advance(ms(61_000)).await?;
        }
        ensure!(
            self.model.all_ended(),
            "jobs still running or queued: {:?}",
            self.model
                .jobs
                .iter()
                .filter(|j| !j.status.is_terminal())
                .map(|j| (j.id, j.status))
                .collect::<Vec<_>>()
        );
        // Past every TTL (1 h): everything is forgotten and the store is empty.
        self.advance(ms(3_600_001)).await?;
        self.sweep().await?;
        self.check().await?;
        let stats = self.store.stats().await.map_err(|e| e.to_string())?;
        ensure!(
            stats == QueueStats::default(),
            "an empty store reports {stats:?}"
        );
        Ok(())
    }
}

fn expect_stale(what: &str, got: Result<(), tower_defer::store::StoreError>) -> Result<(), String> {
    match got {
        Err(e) if e.is_stale_lease() => Ok(()),
        Err(e) => Err(format!("{what} with a stale lease failed otherwise: {e:?}")),
        Ok(()) => Err(format!("{what} with a stale lease was accepted")),
    }
}

/// Runs `ops` against a fresh store from `make`, then works everything off.
/// Must run inside a runtime with a paused clock.
async fn run<S, F, Fut>(make: F, ops: &[Op]) -> Result<(), String>
where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = S>,
{
    let mut h = Harness::new(make().await);
    for (i, op) in ops.iter().enumerate() {
        let step = async {
            h.step(op).await?;
            h.check().await
        };
        step.await.map_err(|e| format!("step {i} ({op:?}): {e}"))?;
    }
    h.finish()
        .await
        .map_err(|e| format!("working off after {} steps: {e}", ops.len()))
}

/// One proptest case: a current-thread runtime on a paused clock.
fn case<S, F, Fut>(make: F, ops: &[Op]) -> Result<(), TestCaseError>
where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = S>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(run(make, ops))
        .map_err(TestCaseError::fail)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Overridden by PROPTEST_CASES.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        max_shrink_iters: 4096,
        // Failing cases are replayed first on the next run; keep the file with the test.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/store_model/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn memory_store_agrees_with_the_model(ops in ops()) {
        case(|| async { MemoryStore::new() }, &ops)?;
    }
}

/// Found by this test: a lease lapsing at exactly the job's queue deadline
/// lost the job's place in MemoryStore's timer index, so the job sat `queued`
/// past its deadline (until a claim happened to reach it) and `sweep` named a
/// later next due time.
#[test]
fn a_lease_that_lapses_at_the_deadline_expires_the_job() {
    let ops = [
        Op::Enqueue {
            priority: 1,
            queue_ms: 30_000,
            key: None,
            owner: None,
            body: 0,
            max_attempts: 3,
            ttl_ms: 5_000,
            max_queued: 1_000,
        },
        Op::Claim {
            lease_ms: 30_000,
            aging_ms: None,
        },
        Op::LapseLeases,
        Op::Sweep,
    ];
    case(|| async { MemoryStore::new() }, &ops).unwrap();
}

/// An edge the model must get right: a lease that lapses after the job's queue
/// deadline hands the job back to the queue, where it expires in the same sweep.
#[test]
fn a_lease_that_lapses_after_the_deadline_expires_the_job() {
    let ops = [
        Op::Enqueue {
            priority: 1,
            queue_ms: 2_000,
            key: None,
            owner: None,
            body: 0,
            max_attempts: 3,
            ttl_ms: 5_000,
            max_queued: 1_000,
        },
        Op::Claim {
            lease_ms: 5_000,
            aging_ms: None,
        },
        Op::LapseLeases,
        Op::Sweep,
    ];
    case(|| async { MemoryStore::new() }, &ops).unwrap();
}

/// The same model on RedisStore: one private redis-server, a fresh namespace
/// per case (see `tests/redis/support.rs`).
#[cfg(feature = "redis")]
#[path = "../redis/support.rs"]
mod redis_support;

#[cfg(feature = "redis")]
#[test]
fn redis_store_agrees_with_the_model() {
    use proptest::test_runner::TestRunner;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_defer::RedisStore;

    let Some(server) = redis_support::RedisServer::start(false) else {
        return;
    };
    let url = server.url();
    let n = AtomicUsize::new(0);
    let mut config = config();
    // Every step is a few round trips: fewer cases than in memory.
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops(), |ops| {
        let namespace = format!("model-{}", n.fetch_add(1, Ordering::Relaxed));
        let url = url.clone();
        let make = || async move {
            RedisStore::builder(url)
                .namespace(namespace)
                .hold_paused_clock(true)
                .connect()
                .await
                .expect("connects to the test's redis-server")
        };
        case(make, &ops)
    });
    drop(server);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The regressions found on MemoryStore, on Redis too.
#[cfg(feature = "redis")]
#[test]
fn redis_store_expires_a_job_whose_lease_lapses_at_or_after_its_deadline() {
    use tower_defer::RedisStore;
    let Some(server) = redis_support::RedisServer::start(false) else {
        return;
    };
    for (i, (queue_ms, lease_ms)) in [(30_000, 30_000), (2_000, 5_000)].into_iter().enumerate() {
        let ops = [
            Op::Enqueue {
                priority: 1,
                queue_ms,
                key: None,
                owner: None,
                body: 0,
                max_attempts: 3,
                ttl_ms: 5_000,
                max_queued: 1_000,
            },
            Op::Claim {
                lease_ms,
                aging_ms: None,
            },
            Op::LapseLeases,
            Op::Sweep,
        ];
        let url = server.url();
        let make = || async move {
            RedisStore::builder(url)
                .namespace(format!("edge-{i}"))
                .hold_paused_clock(true)
                .connect()
                .await
                .unwrap()
        };
        case(make, &ops).unwrap();
    }
}
