//! What this process saw happen, counted in memory and handed to the store
//! every few seconds: the live page's data (`{prefix}/ui`, `{prefix}/activity`,
//! `{prefix}/recent`).
//!
//! Nothing here touches the store on a job's path. As a job is submitted,
//! starts, runs and ends, the [`Recorder`] counts it in the bucket of now
//! ([`store::activity`](crate::store::activity): ten seconds wide) under a
//! `std::sync::Mutex` held for an addition (never across an `.await`), and
//! keeps its id among the recent ones. Every [`FLUSH`], [`flush_loop`]
//! (a task of the worker pool) takes what was counted and hands it to the
//! store in one call ([`Store::record_activity`]: one round trip on Redis);
//! once a bucket, it samples the queue's depth ([`Store::stats`]) into it.
//! A flush that fails puts its counts back, to go with the next one.
//!
//! So a job costs the store nothing more; a replica costs it one small
//! write every [`FLUSH`] while it has something to say, and one
//! [`Store::stats`] a bucket.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::job::{JobId, JobStatus};
use crate::shutdown::{stopped, Control};
use crate::store::activity::{bucket_start, ActivityBatch, ActivityBucket, RECENT, WINDOW};
use crate::store::{Activity, Store, StoreError};
use crate::time::Timestamp;

/// How often a process hands its counts to the store.
pub(crate) const FLUSH: Duration = Duration::from_secs(2);

/// This process's counts since the last flush. Shared by the doors and the
/// pool of one service.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    /// Oldest first; the last is nearly always the bucket of now.
    buckets: Vec<ActivityBucket>,
    /// Oldest first, at most [`RECENT`].
    recent: VecDeque<JobId>,
    /// The start of the last bucket whose depth was sampled.
    sampled: Option<Timestamp>,
}

impl Pending {
    /// The bucket of now, made when it is the first count in it.
    fn now(&mut self) -> &mut ActivityBucket {
        let start = bucket_start(Timestamp::now());
        if self.buckets.last().map(|b| b.start) != Some(start) {
            self.buckets.push(ActivityBucket::new(start));
        }
        self.buckets.last_mut().expect("just pushed")
    }

    fn remember(&mut self, id: JobId) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while it was held leaves counts, at worst one short.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job was accepted.
    pub(crate) fn submitted(&self, id: JobId) {
        self.lock().remember(id);
    }

    /// An attempt started after the job waited `wait` since it was submitted.
    pub(crate) fn waited(&self, wait: Duration) {
        self.lock().now().queue_wait.record(wait);
    }

    /// An inner call ran for `took`.
    pub(crate) fn ran(&self, took: Duration) {
        self.lock().now().run_time.record(took);
    }

    /// A job ended with `status` through this process.
    pub(crate) fn finished(&self, id: JobId, status: JobStatus) {
        let mut pending = self.lock();
        if let Some(i) = ActivityBucket::finished_index(status) {
            let bucket = pending.now();
            bucket.finished[i] = bucket.finished[i].saturating_add(1);
        }
        pending.remember(id);
    }

    /// `n` jobs ended with `status` in the store (expired, or failed as
    /// abandoned), as a sweep of this process reported: no process ends
    /// them, and the sweep knows no ids, so their ids are on the recent list
    /// only if they were submitted through a replica.
    pub(crate) fn ended_in_store(&self, status: JobStatus, n: u64) {
        let Some(i) = ActivityBucket::finished_index(status) else {
            return;
        };
        if n == 0 {
            return;
        }
        let mut pending = self.lock();
        let count = &mut pending.now().finished[i];
        *count = count.saturating_add(n);
    }

    /// The start of the bucket of now, when its depth is still to be sampled.
    fn to_sample(&self) -> Option<Timestamp> {
        let start = bucket_start(Timestamp::now());
        (self.lock().sampled != Some(start)).then_some(start)
    }

    /// Records the queue's depth by priority, sampled in the bucket of `start`.
    fn sampled(&self, start: Timestamp, depth: [u64; crate::job::Priority::LEVELS]) {
        let mut pending = self.lock();
        pending.sampled = Some(start);
        let bucket = pending.now();
        if bucket.start == start {
            bucket.queued_by_priority = Some(depth);
        }
    }

    /// Takes what was counted since the last flush.
    fn take(&self) -> ActivityBatch {
        let mut pending = self.lock();
        ActivityBatch {
            buckets: std::mem::take(&mut pending.buckets),
            recent: pending.recent.drain(..).collect(),
        }
    }

    /// Puts back a batch the store refused, before what was counted since;
    /// what has left the window meanwhile is dropped.
    fn put_back(&self, batch: ActivityBatch) {
        let horizon = Timestamp::now().before(WINDOW);
        let mut pending = self.lock();
        let mut buckets: Vec<ActivityBucket> = batch
            .buckets
            .into_iter()
            .filter(|b| b.start >= horizon)
            .collect();
        for later in pending.buckets.drain(..) {
            match buckets.iter_mut().find(|b| b.start == later.start) {
                Some(same) => same.merge(&later),
                None => buckets.push(later),
            }
        }
        pending.buckets = buckets;
        let newer: Vec<JobId> = pending.recent.drain(..).collect();
        for id in batch.recent.into_iter().chain(newer) {
            pending.remember(id);
        }
    }

    /// What the store holds from `since`, with this process's counts not
    /// yet flushed added, so that a process shows its own work at once.
    pub(crate) async fn read<St: Store>(
        &self,
        store: &St,
        since: Timestamp,
    ) -> Result<Activity, StoreError> {
        let mut activity = store.activity(since).await?;
        let pending = self.lock();
        let from = bucket_start(since);
        for mine in pending.buckets.iter().filter(|b| b.start >= from) {
            match activity.buckets.iter_mut().find(|b| b.start == mine.start) {
                Some(theirs) => theirs.merge(mine),
                None => activity.buckets.push(mine.clone()),
            }
        }
        activity.buckets.sort_by_key(|b| b.start);
        let mut recent: Vec<JobId> = pending.recent.iter().rev().copied().collect();
        recent.append(&mut activity.recent);
        activity.recent = recent;
        Ok(activity)
    }
}

/// Samples the depth when the bucket is new, then hands the counts to the
/// store; a refused batch is put back for the next flush.
pub(crate) async fn flush<St: Store>(store: &St, recorder: &Recorder) {
    if let Some(start) = recorder.to_sample() {
        match store.stats().await {
            Ok(stats) => recorder.sampled(start, stats.queued_by_priority),
            Err(e) => tracing::debug!(error = %e, "sampling the queue for the live page failed"),
        }
    }
    let batch = recorder.take();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.record_activity(batch.clone()).await {
        tracing::debug!(error = %e, "recording the live page's counts failed; kept for the next try");
        recorder.put_back(batch);
    }
}

/// Flushes every [`FLUSH`] until the pool is told to stop (the pool
/// flushes once more when its calls have ended).
pub(crate) async fn flush_loop<St: Store>(
    store: std::sync::Arc<St>,
    recorder: std::sync::Arc<Recorder>,
    mut control: watch::Receiver<Control>,
) {
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut control, Duration::ZERO) => return,
            _ = tick.tick() => flush(&*store, &recorder).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use crate::store::activity::BUCKET;
    use crate::store::MemoryStore;

    fn id() -> JobId {
        JobId::random()
    }

    #[tokio::test(start_paused = true)]
    async fn counts_reach_the_store_by_bucket_and_the_process_sees_its_own_at_once() {
        let store = MemoryStore::new();
        let recorder = Recorder::default();
        let (a, b) = (id(), id());
        recorder.submitted(a);
        recorder.waited(Duration::from_millis(5));
        recorder.ran(Duration::from_millis(40));
        recorder.finished(a, JobStatus::Succeeded);
        let since = Timestamp::now().before(WINDOW);
        // Before any flush: the store has nothing, a read through the
        // recorder has it all.
        assert_eq!(store.activity(since).await.unwrap(), Activity::default());
        let seen = recorder.read(&store, since).await.unwrap();
        assert_eq!(seen.recent, [a, a]);
        assert_eq!(seen.buckets[0].finished(JobStatus::Succeeded), 1);

        flush(&store, &recorder).await;
        tokio::time::advance(BUCKET).await;
        recorder.submitted(b);
        recorder.finished(b, JobStatus::Canceled);
        recorder.finished(b, JobStatus::Queued); // not terminal: not counted
        flush(&store, &recorder).await;

        let stored = store.activity(since).await.unwrap();
        assert_eq!(stored.recent, [b, b, b, a, a], "newest first");
        assert_eq!(stored.buckets.len(), 2);
        let (first, second) = (&stored.buckets[0], &stored.buckets[1]);
        assert_eq!(second.start, first.start.after(BUCKET));
        assert_eq!(first.finished(JobStatus::Succeeded), 1);
        assert_eq!((first.queue_wait.count(), first.run_time.count()), (1, 1));
        assert_eq!(second.finished(JobStatus::Canceled), 1);
        // Each bucket got one depth sample: an empty queue.
        assert_eq!(first.queued_by_priority, Some([0, 0, 0]));
        assert_eq!(second.queued_by_priority, Some([0, 0, 0]));
        // Nothing pending now: the read through the recorder is the store's.
        assert_eq!(recorder.read(&store, since).await.unwrap(), stored);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_a_sweep_reported_are_counted_without_ids() {
        let store = MemoryStore::new();
        let recorder = Recorder::default();
        recorder.ended_in_store(JobStatus::Expired, 0);
        recorder.ended_in_store(JobStatus::Queued, 2); // not terminal
        assert!(recorder.take().is_empty(), "nothing to say");
        recorder.ended_in_store(JobStatus::Expired, 3);
        recorder.ended_in_store(JobStatus::Failed, 2);
        flush(&store, &recorder).await;
        let stored = store
            .activity(Timestamp::now().before(WINDOW))
            .await
            .unwrap();
        assert_eq!(stored.buckets.len(), 1);
        assert_eq!(stored.buckets[0].finished(JobStatus::Expired), 3);
        assert_eq!(stored.buckets[0].finished(JobStatus::Failed), 2);
        assert!(stored.recent.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_depth_is_sampled_once_a_bucket() {
        let store = MemoryStore::new();
        let recorder = Recorder::default();
        flush(&store, &recorder).await;
        assert!(recorder.to_sample().is_none());
        tokio::time::advance(BUCKET).await;
        assert!(recorder.to_sample().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_put_back_goes_before_later_counts_and_drops_what_left_the_window() {
        let recorder = Recorder::default();
        let (a, b) = (id(), id());
        recorder.finished(a, JobStatus::Failed);
        let old = recorder.take();
        recorder.finished(b, JobStatus::Failed);
        recorder.put_back(old.clone());
        let both = recorder.take();
        assert_eq!(both.recent, [a, b]);
        assert_eq!(both.buckets.len(), 1);
        assert_eq!(both.buckets[0].finished(JobStatus::Failed), 2);

        tokio::time::advance(WINDOW + BUCKET).await;
        recorder.put_back(old);
        let late = recorder.take();
        assert!(late.buckets.is_empty(), "{late:?}");
        assert_eq!(late.recent, [a]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_forgets_a_bucket_keep_after_its_last_write() {
        use crate::store::activity::KEEP;
        let store = MemoryStore::new();
        let recorder = Recorder::default();
        recorder.ran(Duration::from_millis(1));
        flush(&store, &recorder).await;
        let since = Timestamp::now().before(WINDOW);
        tokio::time::advance(KEEP).await;
        assert_eq!(store.activity(since).await.unwrap().buckets.len(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let since = Timestamp::now().before(KEEP + BUCKET);
        assert!(store.activity(since).await.unwrap().buckets.is_empty());
    }
}
