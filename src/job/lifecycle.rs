//! A job's life: where it is ([`JobStatus`]) and the transitions that move
//! it, as methods on [`Job`] that take the time as an argument.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::{
    DeliveryStatus, ErrorCode, JobError, JobId, JobOptions, Lease, LeaseToken, NewJob, Outcome,
    Retry, StaleLease, StoredRequest, StoredResponse, WebhookDelivery,
};
use crate::time::Timestamp;

/// How many times a job's lease may lapse (the worker running it died or
/// hung) before the job fails with [`ErrorCode::Abandoned`]. A lapse spends
/// no attempt: workers crashing for reasons of their own (a replica killed
/// in a deploy) must not fail the jobs they held, while a job that crashes
/// every worker that runs it (a poison pill) must stop somewhere.
pub const MAX_LAPSES: u32 = 5;

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
    /// Every status, in the order of the lifecycle.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::InProgress,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::Expired,
    ];

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

/// A job: its request, options, lifecycle and outcome.
///
/// Non-exhaustive, as jobs will carry more: outside this crate a job is made
/// with [`Job::new`] and moved on by its transitions; its fields stay public,
/// to read and to set.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What it sends to the inner service.
    pub request: Arc<StoredRequest>,
    /// Its options.
    pub options: JobOptions,
    /// Where it is.
    pub status: JobStatus,
    /// Attempts spent (a retry for unavailability, a worker's shutdown or a
    /// lapsed lease spends none).
    pub attempts: u32,
    /// How often its lease lapsed (the worker running it died or hung); at
    /// [`MAX_LAPSES`] it fails, `abandoned`.
    pub lapses: u32,
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
    /// How many jobs shared the call that ended it, when that call was a
    /// batch's (see [`crate::batch`]).
    pub batch_size: Option<u32>,
    /// Its webhook delivery, once it has ended (when it has a webhook).
    /// Boxed: most jobs have none, and a queued job should cost little.
    pub webhook: Option<Box<WebhookDelivery>>,
}

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
            lapses: 0,
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
            batch_size: None,
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
            self.webhook = Some(Box::new(WebhookDelivery::due(now)));
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
        self.batch_size = outcome.batch_size;
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
    /// queue without spending the attempt: a replica that crashes is not the
    /// job's fault. At its [`MAX_LAPSES`]th lapse the job fails, `abandoned`:
    /// a job that kills every worker that runs it must not kill workers
    /// forever. Returns whether it changed.
    pub fn lapse_if_due(&mut self, now: Timestamp) -> bool {
        match self.lease {
            Some(l) if self.status == JobStatus::InProgress && l.until <= now => {}
            _ => return false,
        }
        self.attempts = self.attempts.saturating_sub(1);
        self.lapses = self.lapses.saturating_add(1);
        if self.lapses >= MAX_LAPSES {
            self.error = Some(JobError::new(
                ErrorCode::Abandoned,
                format!(
                    "abandoned by its workers: their leases lapsed {MAX_LAPSES} times \
                     (it may be crashing them)"
                ),
            ));
            self.end(JobStatus::Failed, now);
        } else {
            self.error = Some(JobError::new(
                ErrorCode::LeaseExpired,
                "the worker running it stopped renewing its lease",
            ));
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
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::uri::PathAndQuery;
    use http::{Method, StatusCode};

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
        assert_eq!((j.attempts, j.lapses), (1, 1));
    }

    #[test]
    fn a_lapse_spends_no_attempt_and_the_fifth_abandons_the_job() {
        let mut now = Timestamp::from_millis(0);
        let mut j = job(now);
        for lapse in 1..MAX_LAPSES {
            j.claim(now, LEASE).unwrap();
            now = now.after(LEASE);
            assert!(j.lapse_if_due(now));
            assert_eq!(j.status, JobStatus::Queued);
            assert_eq!((j.attempts, j.lapses), (0, lapse));
            assert_eq!(j.error.as_ref().unwrap().code, ErrorCode::LeaseExpired);
        }
        j.claim(now, LEASE).unwrap();
        now = now.after(LEASE);
        assert!(j.lapse_if_due(now));
        assert_eq!(j.status, JobStatus::Failed);
        assert_eq!((j.attempts, j.lapses), (0, MAX_LAPSES));
        let error = j.error.unwrap();
        assert_eq!(error.code, ErrorCode::Abandoned);
        assert_eq!(
            error.message,
            "abandoned by its workers: their leases lapsed 5 times (it may be crashing them)"
        );
        assert_eq!(j.completed_at, Some(now));
    }

    #[test]
    fn lapses_and_attempts_are_counted_apart() {
        let t0 = Timestamp::from_millis(0);
        let mut j = job(t0);
        j.options.retry.max_attempts = 1;
        j.claim(t0, LEASE).unwrap();
        let later = t0.after(LEASE);
        assert!(j.lapse_if_due(later));
        assert_eq!(
            j.status,
            JobStatus::Queued,
            "one attempt allowed, none spent"
        );
        let lease = j.claim(later, LEASE).unwrap();
        assert_eq!((j.attempts, j.lapses), (1, 1));
        j.finish(lease.token, later, Outcome::response(response(200)))
            .unwrap();
        assert_eq!(j.status, JobStatus::Succeeded);
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
