//! The memory store's schedule: the ready lists, the timer index, the
//! counters and the idempotency keys, all behind the store's one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::job::{ErrorCode, Job, JobId, JobStatus, Priority};
use crate::time::Timestamp;

/// Owner and key of an idempotent submission.
pub(super) type IdempotencyKey = (Option<Arc<str>>, Arc<str>);

/// What orders the queue and what is due, kept in step with the jobs by
/// every transition.
#[derive(Default)]
pub(super) struct Schedule {
    /// Runnable jobs, one FIFO per priority level, keyed by arrival in it:
    /// a job that comes back from a retry queues behind fresh work.
    /// Values: the job, and when it became ready (for aging).
    pub(super) ready: [BTreeMap<u64, (JobId, Timestamp)>; Priority::LEVELS],
    next_seq: u64,
    /// Each job's next due time ([`Job::next_due`]) that needs a sweep.
    pub(super) due: BTreeSet<(Timestamp, JobId)>,
    /// Webhook deliveries nobody holds, by when they are due
    /// ([`Job::delivery_ready_at`]).
    pub(super) deliveries: BTreeSet<(Timestamp, JobId)>,
    /// Queued jobs waiting out a backoff because the upstream was
    /// unavailable ([`waits_for_upstream`]), oldest first: what
    /// `wake_unavailable` makes due, without a scan of every job.
    pub(super) unavailable: BTreeSet<(Timestamp, JobId)>,
    /// Queued jobs waiting out a backoff.
    pub(super) retrying: usize,
    /// Jobs a worker holds.
    pub(super) in_progress: usize,
    /// Jobs that expired since the last `sweep` took the count (a claim
    /// expires jobs too, and the sweep reports them).
    pub(super) expired: u64,
    /// Jobs failed as abandoned (a lease lapsed for the last allowed time)
    /// since the last `sweep` took the count; only the due-time pass, of a
    /// sweep or a claim, ends one.
    pub(super) abandoned: u64,
    /// The job each idempotency key made, while that job is remembered.
    pub(super) idempotency: HashMap<IdempotencyKey, JobId>,
}

impl Schedule {
    pub(super) fn push_ready(&mut self, level: usize, id: JobId) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready[level].insert(seq, (id, Timestamp::now()));
        seq
    }

    pub(super) fn queued(&self) -> usize {
        self.ready.iter().map(BTreeMap::len).sum::<usize>() + self.retrying
    }

    pub(super) fn set_due(&mut self, id: JobId, old: Option<Timestamp>, new: Option<Timestamp>) {
        if old == new {
            return;
        }
        if let Some(t) = old {
            self.due.remove(&(t, id));
        }
        if let Some(t) = new {
            self.due.insert((t, id));
        }
    }
}

/// Whether a job belongs in a ready list: queued, and not waiting out a
/// backoff.
pub(super) fn is_ready(job: &Job) -> bool {
    job.status == JobStatus::Queued && job.retry_at.is_none()
}

/// Whether a job waits out a backoff because the upstream was unavailable
/// (refused, or asked to wait with `Retry-After`), so that an upstream seen
/// answering again may end the wait early.
pub(super) fn waits_for_upstream(job: &Job) -> bool {
    job.status == JobStatus::Queued
        && job.retry_at.is_some()
        && job
            .error
            .as_ref()
            .is_some_and(|e| e.code == ErrorCode::UpstreamUnavailable)
}

/// Moves a job's contribution to the counters in or out.
pub(super) fn account(sched: &mut Schedule, status: JobStatus, waiting_retry: bool, sign: isize) {
    let apply = |n: &mut usize| *n = n.saturating_add_signed(sign);
    match status {
        JobStatus::Queued if waiting_retry => apply(&mut sched.retrying),
        JobStatus::InProgress => apply(&mut sched.in_progress),
        _ => {}
    }
}
