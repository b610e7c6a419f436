//! The reference model: the store contract as plain data, step by step.

use std::time::Duration;

use tower_defer::job::{ErrorCode, LeaseToken, Priority, MAX_LAPSES};
use tower_defer::store::QueueStats;
use tower_defer::time::Timestamp;
use tower_defer::{JobId, JobStatus};

/// One job as the model sees it.
#[derive(Clone, Debug)]
pub struct MJob {
    pub id: JobId,
    pub level: u8,
    pub owner: Option<&'static str>,
    pub key: Option<&'static str>,
    pub body: u8,
    pub created_at: Timestamp,
    pub deadline: Timestamp,
    pub ttl: Duration,
    pub status: JobStatus,
    pub attempts: u32,
    /// Leases that lapsed (counted apart from attempts).
    pub lapses: u32,
    /// Tokens handed out so far (the next token is `claims + 1`).
    pub claims: u64,
    /// The current lease: token and when it lapses.
    pub lease: Option<(LeaseToken, Timestamp)>,
    pub retry_at: Option<Timestamp>,
    /// While runnable: when it became ready, and its place in line. Jobs that
    /// became ready in the same sweep share a place (the contract leaves their
    /// order open).
    pub ready: Option<(Timestamp, u64)>,
    pub error: Option<ErrorCode>,
    pub expires_at: Option<Timestamp>,
}

impl MJob {
    pub fn forgotten(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// `Job::next_due`.
    pub fn next_due(&self) -> Option<Timestamp> {
        match self.status {
            JobStatus::Queued => Some(
                self.retry_at
                    .map_or(self.deadline, |r| r.min(self.deadline)),
            ),
            JobStatus::InProgress => self.lease.map(|(_, until)| until),
            _ => self.expires_at,
        }
    }

    pub fn end(&mut self, status: JobStatus, error: Option<ErrorCode>, now: Timestamp) {
        self.status = status;
        self.error = error;
        self.lease = None;
        self.retry_at = None;
        self.ready = None;
        self.expires_at = Some(now.after(self.ttl));
    }

    pub fn holds(&self, token: LeaseToken) -> bool {
        self.status == JobStatus::InProgress && self.lease.is_some_and(|(t, _)| t == token)
    }
}

#[derive(Debug)]
pub struct Model {
    pub now: Timestamp,
    pub jobs: Vec<MJob>,
    pub next_seq: u64,
    /// Jobs expired since the store's last sweep (which reports them).
    pub expired: u64,
    /// Jobs failed as abandoned since the store's last sweep (which reports
    /// them).
    pub abandoned: u64,
}

/// What the model expects of an enqueue.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueExpect {
    Created,
    Existing(JobId),
    Conflict(JobId),
    Full,
}

impl Model {
    pub fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn job(&mut self, id: JobId) -> Option<&mut MJob> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    pub fn enqueue_expect(
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
    pub fn sweep(&mut self) {
        let now = self.now;
        let group = self.seq();
        for j in &mut self.jobs {
            loop {
                if j.status == JobStatus::Queued && j.deadline <= now {
                    j.end(JobStatus::Expired, Some(ErrorCode::QueueTimeout), now);
                    self.expired += 1;
                } else if j.status == JobStatus::InProgress
                    && j.lease.is_some_and(|(_, until)| until <= now)
                {
                    // A lapse gives the attempt back; the last one abandons the job.
                    j.attempts = j.attempts.saturating_sub(1);
                    j.lapses += 1;
                    if j.lapses >= MAX_LAPSES {
                        j.end(JobStatus::Failed, Some(ErrorCode::Abandoned), now);
                        self.abandoned += 1;
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
    pub fn claimable(&self, aging: Option<Duration>) -> Vec<JobId> {
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

    pub fn stats(&self) -> QueueStats {
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
    pub fn oldest_queued_bounds(&self) -> Option<(Timestamp, Timestamp, Vec<Timestamp>)> {
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
    pub fn next_due(&self) -> Option<Timestamp> {
        self.jobs
            .iter()
            .filter(|j| !j.forgotten(self.now))
            .filter_map(MJob::next_due)
            .min()
    }

    pub fn all_ended(&self) -> bool {
        self.jobs.iter().all(|j| j.status.is_terminal())
    }
}
