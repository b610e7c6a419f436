//! The in-memory store: the embedded default, gone with its process.
//!
//! Jobs live in a [`DashMap`], so lookups by many clients take only a shard
//! lock. What orders the queue (the ready lists and the timer index) lives
//! behind one `std::sync::Mutex`, held only for a transition's bookkeeping
//! and never across an `.await`. Every transition takes the schedule lock
//! first and the job's shard second, never the other way round, so the two
//! never deadlock and a transition is atomic against every other transition.
//!
//! The file is one concept, the `Store` contract kept in memory, and stays
//! whole a little past 600 lines: each operation beside the locking rule it
//! follows; its helpers (`stored`, `schedule`, `id_hash`) are files of their
//! own.

use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::{
    Activity, ActivityBatch, Claim, DeliveryClaim, EnqueueError, Enqueued, QueueStats,
    QueuedCancel, Store, StoreError, Swept, BATCH_SCAN,
};
use crate::job::{
    CancelOutcome, DeliveryAttempt, Job, JobId, JobStatus, Lease, LeaseToken, NewJob, Outcome,
    Retry,
};
use crate::time::Timestamp;

mod activity;
mod id_hash;
mod schedule;
mod stored;
use activity::ActivityLog;
use id_hash::IdHash;
use schedule::{account, is_ready, waits_for_upstream, Schedule};
use stored::Stored;

/// The in-memory store, on [`DashMap`]. Cheap to clone: clones share the jobs.
///
/// ```
/// use tower_defer::{DeferLayer, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new();
/// let layer = DeferLayer::new(store.clone());
/// # let _ = layer; }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The table's capacity too: it shows whether the store gave back
        // what a burst made it grow to (see `sweep`).
        f.debug_struct("MemoryStore")
            .field("jobs", &self.inner.jobs.len())
            .field("capacity", &self.inner.jobs.capacity())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    jobs: DashMap<JobId, Slot, IdHash>,
    /// Protects the queue order and the timer index. Lock it before `jobs`.
    schedule: Mutex<Schedule>,
    /// Wakes one idle worker per job that becomes runnable.
    work: Notify,
    /// Wakes the deliverer when a webhook delivery becomes due.
    deliveries: Notify,
    /// The live page's record; a lock of its own, never held with another.
    activity: Mutex<ActivityLog>,
}

struct Slot {
    /// Boxed either way: the map's table then holds a few words per job, not
    /// the whole `Job`, so a table that grows to the next power of two moves
    /// and leaves empty far less (see `examples/memory.rs`). Compact until
    /// first changed (see `stored.rs`).
    job: Stored,
    /// Made when the first waiter comes, so jobs nobody waits on cost nothing.
    changed: Option<Arc<Notify>>,
    /// The job's place in its ready list while it is runnable.
    ready_seq: u64,
}

impl Slot {
    fn notify(&self) {
        if let Some(n) = &self.changed {
            n.notify_waiters();
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        // A panic while holding the lock leaves the schedule as consistent as
        // any single step of it; carry on rather than poison every caller.
        self.inner
            .schedule
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn activity(&self) -> MutexGuard<'_, ActivityLog> {
        self.inner
            .activity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one transition to a job under the schedule lock, keeping the
    /// ready lists, the counters and the timer index in step with it, and wakes
    /// whoever waits on the job. `f` returns `None` to leave the job unchanged.
    fn transition<T>(
        &self,
        sched: &mut Schedule,
        id: JobId,
        f: impl FnOnce(&mut Job) -> Option<T>,
    ) -> Option<(T, Job)> {
        let mut slot = self.inner.jobs.get_mut(&id)?;
        let slot = &mut *slot;
        // A fresh job becomes the `Job` it stands for on its first change.
        let job = slot.job.full(id);
        let before = (is_ready(job), job.status, job.retry_at.is_some());
        let waited = waits_for_upstream(job);
        let (due, revision) = (job.next_due(), job.revision);
        let delivery = job.delivery_ready_at();
        let out = f(job)?;
        let level = usize::from(job.options.priority.level());
        account(sched, before.1, before.2, -1);
        account(sched, job.status, job.retry_at.is_some(), 1);
        if job.status == JobStatus::Expired && before.1 != JobStatus::Expired {
            sched.expired += 1;
        }
        sched.set_due(id, due, job.next_due());
        match (waited, waits_for_upstream(job)) {
            (false, true) => {
                sched.unavailable.insert((job.created_at, id));
            }
            (true, false) => {
                sched.unavailable.remove(&(job.created_at, id));
            }
            _ => {}
        }
        let delivery_now = job.delivery_ready_at();
        if delivery != delivery_now {
            if let Some(t) = delivery {
                sched.deliveries.remove(&(t, id));
            }
            if let Some(t) = delivery_now {
                sched.deliveries.insert((t, id));
                self.inner.deliveries.notify_one();
            }
        }
        match (before.0, is_ready(job)) {
            (true, false) => {
                sched.ready[level].remove(&slot.ready_seq);
            }
            (false, true) => {
                slot.ready_seq = sched.push_ready(level, id);
                self.inner.work.notify_one();
            }
            // Waiting for a retry: an idle worker must wake when it comes due.
            _ if job.retry_at.is_some() && !before.2 => self.inner.work.notify_one(),
            _ => {}
        }
        let changed = job.revision != revision;
        let job = Job::clone(job);
        if changed {
            slot.notify();
        }
        Some((out, job))
    }

    fn forget(&self, sched: &mut Schedule, id: JobId) {
        if let Some((_, slot)) = self.inner.jobs.remove(&id) {
            if let Some(key) = slot.job.idempotency_key() {
                if sched.idempotency.get(&key) == Some(&id) {
                    sched.idempotency.remove(&key);
                }
            }
            sched.set_due(id, slot.job.next_due(), None);
            if let Some(t) = slot.job.delivery_ready_at() {
                sched.deliveries.remove(&(t, id));
            }
            // Waiters see the job gone.
            slot.notify();
        }
    }

    /// Applies every due time up to `now`; returns the next one.
    fn sweep_now(&self, sched: &mut Schedule, now: Timestamp) -> Option<Timestamp> {
        while let Some(&(at, id)) = sched.due.first() {
            if at > now {
                return Some(at);
            }
            sched.due.pop_first();
            let Some(slot) = self.inner.jobs.get(&id) else {
                continue;
            };
            let forgotten = slot.job.is_forgotten(now);
            drop(slot);
            if forgotten {
                self.forget(sched, id);
                continue;
            }
            // `Some(abandoned)` when the job changed: whether a lapse ended it.
            let changed = self.transition(sched, id, |job| {
                if job.expire_if_due(now) {
                    return Some(false);
                }
                if job.lapse_if_due(now) {
                    return Some(job.status == JobStatus::Failed);
                }
                if job.lapse_delivery_if_due(now) {
                    return Some(false);
                }
                if job.retry_at.is_some_and(|at| at <= now) {
                    // The backoff is over: runnable again. Not a change a
                    // client waits for, so the revision stays.
                    job.retry_at = None;
                    return Some(false);
                }
                None
            });
            if let Some((true, _)) = changed {
                // No process ends an abandoned job: the next sweep reports it.
                sched.abandoned += 1;
            }
            let changed = changed.is_some();
            // `transition` moves the index entry when the due time changed,
            // but the entry was popped above: put the job's due time back.
            // A due time that is still now is put back only after a change
            // (a lease lapsing exactly at the queue deadline must then
            // expire); without one it would loop.
            if let Some(slot) = self.inner.jobs.get(&id) {
                if let Some(t) = slot.job.next_due().filter(|&t| changed || t > now) {
                    sched.due.insert((t, id));
                }
            }
        }
        None
    }
}

/// A table worth shrinking: mostly empty, and not small. The slack keeps a
/// steady load from shrinking and regrowing the table on every sweep.
fn oversized(len: usize, capacity: usize) -> bool {
    capacity > 4 * len + 4096
}

fn stale() -> StoreError {
    StoreError::stale_lease()
}

impl Store for MemoryStore {
    async fn enqueue(&self, new: NewJob, max_queued: usize) -> Result<Enqueued, EnqueueError> {
        let now = Timestamp::now();
        let key = new
            .options
            .idempotency_key
            .clone()
            .map(|k| (new.options.owner.clone(), k));
        // The job is built before the schedule's lock is taken: every
        // submission takes that lock, and two server threads that meet there
        // wait for each other in the kernel. (A submission answered with an
        // earlier job of its idempotency key builds one for nothing.)
        let id = JobId::random();
        let job = Job::new(id, new, now);
        let stored = Stored::new(&job);
        let priority = usize::from(job.options.priority.level());
        let due = job.next_due();
        let mut sched = self.schedule();
        if let Some(key) = &key {
            if let Some(existing) = sched.idempotency.get(key).copied() {
                if let Some(slot) = self.inner.jobs.get(&existing) {
                    if !slot.job.is_forgotten(now) {
                        if !slot.job.same_request(&job.request) {
                            return Err(EnqueueError::IdempotencyConflict { existing });
                        }
                        return Ok(Enqueued {
                            job: slot.job.to_job(existing),
                            created: false,
                        });
                    }
                }
            }
        }
        if sched.queued() >= max_queued {
            return Err(EnqueueError::QueueFull { limit: max_queued });
        }
        sched.set_due(id, None, due);
        let ready_seq = sched.push_ready(priority, id);
        if let Some(key) = key {
            sched.idempotency.insert(key, id);
        }
        // In the map before the lock is let go: a claimer that finds the id
        // in the ready list must find the job.
        self.inner.jobs.insert(
            id,
            Slot {
                job: stored,
                changed: None,
                ready_seq,
            },
        );
        drop(sched);
        self.inner.work.notify_one();
        Ok(Enqueued { job, created: true })
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let now = Timestamp::now();
        Ok(self
            .inner
            .jobs
            .get(&id)
            .filter(|slot| !slot.job.is_forgotten(now))
            .map(|slot| slot.job.to_job(id)))
    }

    async fn wait(
        &self,
        id: JobId,
        seen: u64,
        until: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        loop {
            let now = Timestamp::now();
            let notify = {
                let Some(mut slot) = self.inner.jobs.get_mut(&id) else {
                    return Ok(None);
                };
                if slot.job.is_forgotten(now) {
                    return Ok(None);
                }
                if slot.job.revision() > seen || now >= until {
                    return Ok(Some(slot.job.to_job(id)));
                }
                slot.changed.get_or_insert_with(Default::default).clone()
            };
            let mut notified = pin!(notify.notified());
            notified.as_mut().enable();
            // A change between releasing the slot and `enable` would be missed:
            // look once more now that the waiter is registered.
            match self.inner.jobs.get(&id) {
                None => return Ok(None),
                Some(slot) if slot.job.revision() > seen => return Ok(Some(slot.job.to_job(id))),
                Some(_) => {}
            }
            let _ = tokio::time::timeout_at(until.to_instant(), notified).await;
        }
    }

    async fn claim(
        &self,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> Result<Option<Claim>, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        // Retries that came due (and deadlines that passed) count before choosing.
        self.sweep_now(&mut sched, now);
        loop {
            // The head of each level is its oldest job, so comparing heads
            // (effective level, then time ready) finds the winner.
            let mut best: Option<(usize, Timestamp, usize)> = None;
            for (level, ready) in sched.ready.iter().enumerate() {
                if let Some((_, &(_, ready_at))) = ready.first_key_value() {
                    let aged = priority_aging.map_or(0, |a| {
                        let periods = now.since(ready_at).as_millis() / a.as_millis().max(1);
                        usize::try_from(periods).unwrap_or(usize::MAX)
                    });
                    let candidate = (level.saturating_sub(aged), ready_at, level);
                    if best.is_none_or(|b| candidate < b) {
                        best = Some(candidate);
                    }
                }
            }
            let Some((_, _, level)) = best else {
                return Ok(None);
            };
            let Some((_, &(id, _))) = sched.ready[level].first_key_value() else {
                return Ok(None);
            };
            // A job past its deadline is expired here, never run.
            let claimed = self.transition(&mut sched, id, |job| {
                if job.expire_if_due(now) {
                    return Some(None);
                }
                job.claim(now, lease).map(Some)
            });
            match claimed {
                Some((Some(lease), job)) => return Ok(Some(Claim { job, lease })),
                Some((None, _)) => {}
                // A stale entry (the job is gone) would be met again: drop it.
                None => {
                    sched.ready[level].pop_first();
                }
            }
        }
    }

    async fn claim_batch(
        &self,
        key: &str,
        max_items: u32,
        max_bytes: u64,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> Result<Vec<Claim>, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        // Candidates in the order `claim` takes jobs: (effective level,
        // time ready, level, place in its list), with what they weigh.
        let mut candidates = Vec::new();
        for (level, ready) in sched.ready.iter().enumerate() {
            for (&seq, &(id, ready_at)) in ready.iter().take(BATCH_SCAN) {
                let Some(slot) = self.inner.jobs.get(&id) else {
                    continue;
                };
                let Some((tag, bytes)) = slot.job.batch() else {
                    continue;
                };
                if &*tag.key != key {
                    continue;
                }
                let aged = priority_aging.map_or(0, |a| {
                    let periods = now.since(ready_at).as_millis() / a.as_millis().max(1);
                    usize::try_from(periods).unwrap_or(usize::MAX)
                });
                let order = (level.saturating_sub(aged), ready_at, level, seq);
                candidates.push((order, id, tag.items, bytes as u64));
            }
        }
        candidates.sort_unstable_by_key(|c| c.0);
        let (mut items, mut bytes) = (max_items, max_bytes);
        let mut claims = Vec::new();
        for (_, id, n, size) in candidates {
            if items == 0 {
                break;
            }
            if n > items || size > bytes {
                continue;
            }
            let claimed = self.transition(&mut sched, id, |job| {
                if job.expire_if_due(now) {
                    return Some(None);
                }
                job.claim(now, lease).map(Some)
            });
            if let Some((Some(lease), job)) = claimed {
                items -= n;
                bytes -= size;
                claims.push(Claim { job, lease });
            }
        }
        Ok(claims)
    }

    async fn work_available(&self, until: Timestamp) {
        // Something coming due (a retry's backoff ending) may make work too:
        // wake then, and let `claim` apply it.
        let next_due = self.schedule().due.first().map(|&(at, _)| at);
        let until = next_due.map_or(until, |at| at.min(until));
        let _ = tokio::time::timeout_at(until.to_instant(), self.inner.work.notified()).await;
    }

    async fn extend(
        &self,
        id: JobId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        let mut result = Err(stale());
        self.transition(&mut sched, id, |job| {
            result = job.extend(token, now, lease).map_err(|_| stale());
            result.as_ref().ok().map(|_| ())
        });
        result
    }

    async fn complete(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
    ) -> Result<Job, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        self.transition(&mut sched, id, |job| job.finish(token, now, outcome).ok())
            .map(|((), job)| job)
            .ok_or_else(stale)
    }

    async fn retry_later(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> Result<Job, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        self.transition(&mut sched, id, |job| job.requeue(token, now, retry).ok())
            .map(|((), job)| job)
            .ok_or_else(stale)
    }

    async fn wake_unavailable(&self) -> Result<u64, StoreError> {
        let mut sched = self.schedule();
        let mut woken = 0;
        // Each wake takes the job out of the index (see `transition`).
        while let Some(&(_, id)) = sched.unavailable.first() {
            let changed = self.transition(&mut sched, id, |job| {
                // Runnable now; like a backoff ending, not a change a client
                // waits for, so the revision stays.
                job.retry_at = None;
                Some(())
            });
            match changed {
                Some(_) => woken += 1,
                // Gone meanwhile: nothing to wake, and nothing to meet again.
                None => {
                    sched.unavailable.pop_first();
                }
            }
        }
        Ok(woken)
    }

    async fn cancel(&self, id: JobId, owner: Option<&str>) -> Result<CancelOutcome, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        match self.inner.jobs.get(&id) {
            Some(slot) if slot.job.is_visible_to(owner) && !slot.job.is_forgotten(now) => {
                if slot.job.status().is_terminal() {
                    return Ok(CancelOutcome::AlreadyTerminal(slot.job.to_job(id)));
                }
            }
            _ => return Ok(CancelOutcome::NotFound),
        }
        Ok(
            match self.transition(&mut sched, id, |job| job.cancel(now).then_some(())) {
                Some(((), job)) => CancelOutcome::Canceled(job),
                None => CancelOutcome::NotFound,
            },
        )
    }

    async fn cancel_queued(
        &self,
        id: JobId,
        owner: Option<&str>,
    ) -> Result<QueuedCancel, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        match self.inner.jobs.get(&id) {
            Some(slot) if slot.job.is_visible_to(owner) && !slot.job.is_forgotten(now) => {
                if slot.job.status() != JobStatus::Queued {
                    return Ok(QueuedCancel::NotQueued(slot.job.to_job(id)));
                }
            }
            _ => return Ok(QueuedCancel::NotFound),
        }
        Ok(
            match self.transition(&mut sched, id, |job| job.cancel(now).then_some(())) {
                Some(((), job)) => QueuedCancel::Canceled(job),
                None => QueuedCancel::NotFound,
            },
        )
    }

    async fn claim_delivery(&self, lease: Duration) -> Result<Option<DeliveryClaim>, StoreError> {
        let now = Timestamp::now();
        let mut sched = self.schedule();
        self.sweep_now(&mut sched, now);
        while let Some(&(at, id)) = sched.deliveries.first() {
            if at > now {
                break;
            }
            match self.transition(&mut sched, id, |job| job.claim_delivery(now, lease)) {
                Some((lease, job)) => return Ok(Some(DeliveryClaim { job, lease })),
                // Not claimable after all (a stale entry): drop it.
                None => {
                    sched.deliveries.remove(&(at, id));
                }
            }
        }
        Ok(None)
    }

    async fn record_delivery(
        &self,
        id: JobId,
        token: LeaseToken,
        attempt: DeliveryAttempt,
    ) -> Result<Job, StoreError> {
        let mut sched = self.schedule();
        self.transition(&mut sched, id, |job| {
            job.record_delivery(token, attempt).ok()
        })
        .map(|((), job)| job)
        .ok_or_else(stale)
    }

    async fn delivery_available(&self, until: Timestamp) {
        let next = self.schedule().deliveries.first().map(|&(at, _)| at);
        let until = next.map_or(until, |at| at.min(until));
        let _ = tokio::time::timeout_at(until.to_instant(), self.inner.deliveries.notified()).await;
    }

    async fn record_activity(&self, batch: ActivityBatch) -> Result<(), StoreError> {
        self.activity().record(batch, Timestamp::now());
        Ok(())
    }

    async fn activity(&self, since: Timestamp) -> Result<Activity, StoreError> {
        Ok(self.activity().read(since, Timestamp::now()))
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let sched = self.schedule();
        let mut stats = QueueStats {
            retrying: sched.retrying as u64,
            in_progress: sched.in_progress as u64,
            ..QueueStats::default()
        };
        for (level, ready) in sched.ready.iter().enumerate() {
            stats.queued_by_priority[level] = ready.len() as u64;
            let oldest = ready
                .first_key_value()
                .and_then(|(_, (id, _))| self.inner.jobs.get(id).map(|s| s.job.created_at()));
            if let Some(at) = oldest {
                if stats.oldest_queued_at.is_none_or(|o| at < o) {
                    stats.oldest_queued_at = Some(at);
                }
            }
        }
        stats.queued = stats.queued_by_priority.iter().sum::<u64>() + stats.retrying;
        Ok(stats)
    }

    async fn sweep(&self) -> Result<Swept, StoreError> {
        let mut sched = self.schedule();
        let next_due = self.sweep_now(&mut sched, Timestamp::now());
        let expired = std::mem::take(&mut sched.expired);
        let abandoned = std::mem::take(&mut sched.abandoned);
        // After a burst, give back what the hash tables grew to: a table
        // sized for the peak would otherwise stay that size for the
        // process's life. (The B-tree indexes free their nodes as they
        // empty.)
        let idempotency = &mut sched.idempotency;
        if oversized(idempotency.len(), idempotency.capacity()) {
            idempotency.shrink_to_fit();
        }
        drop(sched);
        if oversized(self.inner.jobs.len(), self.inner.jobs.capacity()) {
            self.inner.jobs.shrink_to_fit();
        }
        Ok(Swept {
            next_due,
            expired,
            abandoned,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::uri::PathAndQuery;
    use http::{HeaderMap, Method};

    use super::*;
    use crate::job::{JobOptions, StoredRequest};

    fn keyed(n: usize) -> NewJob {
        NewJob {
            request: StoredRequest {
                method: Method::POST,
                path_and_query: PathAndQuery::from_static("/run"),
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"{}"),
            },
            options: JobOptions {
                idempotency_key: Some(n.to_string().into()),
                result_ttl: Duration::from_secs(1),
                ..JobOptions::default()
            },
        }
    }

    fn capacities(store: &MemoryStore) -> (usize, usize) {
        let idempotency = store.schedule().idempotency.capacity();
        (store.inner.jobs.capacity(), idempotency)
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_gives_back_the_tables_a_burst_grew() {
        let store = MemoryStore::new();
        let mut ids = Vec::new();
        for n in 0..20_000 {
            ids.push(store.enqueue(keyed(n), usize::MAX).await.unwrap().job.id);
        }
        let (jobs, idempotency) = capacities(&store);
        assert!(
            jobs >= 20_000 && idempotency >= 20_000,
            "{jobs} {idempotency}"
        );
        // Every job ends, and its result expires a second later.
        for id in ids {
            store.cancel(id, None).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        store.sweep().await.unwrap();
        assert_eq!(store.inner.jobs.len(), 0);
        let (jobs, idempotency) = capacities(&store);
        assert!(jobs < 4096 && idempotency < 4096, "{jobs} {idempotency}");
        assert!(format!("{store:?}").contains("jobs: 0"), "{store:?}");
    }
}
