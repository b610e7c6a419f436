//! The memory store's record of activity: the buckets by start, and the
//! recent ids, behind a lock of their own (held for a batch's additions or
//! a copy, never across an `.await`, and never with the schedule lock).

use std::collections::{BTreeMap, VecDeque};

use crate::job::JobId;
use crate::store::activity::{bucket_start, Activity, ActivityBatch, ActivityBucket, KEEP, RECENT};
use crate::time::Timestamp;

#[derive(Default)]
pub(super) struct ActivityLog {
    /// By start, in milliseconds; with when each was last written, which
    /// is when its [`KEEP`] starts, as a Redis key's `EXPIRE` would.
    buckets: BTreeMap<u64, (ActivityBucket, Timestamp)>,
    /// Newest first.
    recent: VecDeque<JobId>,
}

impl ActivityLog {
    pub(super) fn record(&mut self, batch: ActivityBatch, now: Timestamp) {
        for bucket in batch.buckets {
            let (kept, written) = self
                .buckets
                .entry(bucket.start.as_millis())
                .or_insert_with(|| (ActivityBucket::new(bucket.start), now));
            kept.merge(&bucket);
            *written = now;
        }
        self.forget(now);
        for id in batch.recent {
            self.recent.push_front(id);
        }
        self.recent.truncate(RECENT);
    }

    pub(super) fn read(&mut self, since: Timestamp, now: Timestamp) -> Activity {
        self.forget(now);
        let from = bucket_start(since).as_millis();
        Activity {
            buckets: self
                .buckets
                .range(from..)
                .map(|(_, (bucket, _))| bucket.clone())
                .collect(),
            recent: self.recent.iter().copied().collect(),
        }
    }

    /// Drops the buckets last written more than [`KEEP`] ago.
    fn forget(&mut self, now: Timestamp) {
        self.buckets
            .retain(|_, (_, written)| now.since(*written) <= KEEP);
    }
}
