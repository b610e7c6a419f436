//! The harness: runs each operation on the store and on the model, and
//! compares every answer and every job after every step.
//!
//! One concept, the comparison, one arm an operation: a little over 600
//! lines, kept whole so that every operation's check reads alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};
use tower_defer::job::{
    CancelOutcome, ErrorCode, JobError, JobOptions, LeaseToken, NewJob, Outcome, Priority, Retry,
    RetryPolicy, StoredRequest, StoredResponse,
};
use tower_defer::store::{Claim, EnqueueError, QueueStats};
use tower_defer::time::Timestamp;
use tower_defer::{Job, JobId, JobStatus, Store};

use crate::model::*;
use crate::ops::*;

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

pub struct Harness<S> {
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
    pub fn new(store: S) -> Self {
        Harness {
            store,
            model: Model {
                now: Timestamp::now(),
                jobs: Vec::new(),
                next_seq: 0,
                expired: 0,
                abandoned: 0,
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

    pub async fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Enqueue(ref enqueue) => self.enqueue(enqueue).await?,
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
            Op::Complete { claim, how } => self.complete(claim, how, None).await?,
            Op::CompleteAndClaim {
                claim,
                how,
                lease_ms,
                aging_ms,
            } => {
                let next = (ms(lease_ms), aging_ms.map(ms));
                self.complete(claim, how, Some(next)).await?
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

    async fn enqueue(&mut self, e: &Enqueue) -> Result<(), String> {
        let owner = e.owner.map(|o| OWNERS[usize::from(o)]);
        let key = e.key.map(|k| KEYS[usize::from(k)]);
        let Enqueue {
            priority,
            queue_ms,
            body,
            max_attempts,
            ttl_ms,
            max_queued,
            ..
        } = *e;
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

    /// Completes claim `claim` as `how` says; with `next` (a lease and an
    /// aging period), with the claim of the next job in the same call
    /// (`complete_and_claim`).
    async fn complete(
        &mut self,
        claim: usize,
        how: How,
        next: Option<(Duration, Option<Duration>)>,
    ) -> Result<(), String> {
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
        let (got, claimed) = match next {
            None => {
                let got = self.store.complete(id, token, outcome).await;
                (got.map(|job| job.status), None)
            }
            Some((lease, aging)) => {
                let done = self
                    .store
                    .complete_and_claim(id, token, outcome, lease, aging)
                    .await;
                (done.status, Some((done.next, lease, aging)))
            }
        };
        let now = self.model.now;
        let j = self.model.job(id).expect("a claimed job is in the model");
        if j.holds(token) {
            let got = got.map_err(|e| format!("complete refused: {e}"))?;
            ensure!(got == status, "completed as {got}, expected {status}");
            j.end(status, error, now);
        } else {
            expect_stale("complete", got.map(|_| ()))?;
        }
        match claimed {
            // Claimed whatever the completion answered.
            Some((next, lease, aging)) => {
                let next = next.map_err(|e| format!("the claim after it failed: {e}"))?;
                self.claimed(next, lease, aging)
            }
            None => Ok(()),
        }
    }

    async fn claim(&mut self, lease: Duration, aging: Option<Duration>) -> Result<(), String> {
        let got = self
            .store
            .claim(lease, aging)
            .await
            .map_err(|e| format!("claim failed: {e}"))?;
        self.claimed(got, lease, aging)
    }

    /// Checks a claim's answer against the model, and records it.
    fn claimed(
        &mut self,
        got: Option<Claim>,
        lease: Duration,
        aging: Option<Duration>,
    ) -> Result<(), String> {
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
        let swept = self
            .store
            .sweep()
            .await
            .map_err(|e| format!("sweep failed: {e}"))?;
        let next = swept.next_due;
        self.model.sweep();
        // Every expiry since the last sweep, whether this sweep or a claim
        // applied the deadline, and each once.
        let expired = std::mem::take(&mut self.model.expired);
        ensure!(
            swept.expired == expired,
            "sweep reports {} expired; the model {expired}",
            swept.expired
        );
        // Likewise every abandonment (the last allowed lapse fails the job).
        let abandoned = std::mem::take(&mut self.model.abandoned);
        ensure!(
            swept.abandoned == abandoned,
            "sweep reports {} abandoned; the model {abandoned}",
            swept.abandoned
        );
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
    pub async fn check(&mut self) -> Result<(), String> {
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
    pub async fn finish(&mut self) -> Result<(), String> {
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
