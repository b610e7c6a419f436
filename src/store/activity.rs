//! What the processes of a store saw happen, in ten-second buckets: the
//! data of the live page (`{prefix}/ui`), shared through the store so that
//! every replica shows every replica's work.
//!
//! Plain data: a process counts in memory as jobs end (the crate's
//! `activity` module), and hands its counts to the store every few seconds
//! as one [`ActivityBatch`] ([`Store::record_activity`](super::Store::record_activity));
//! the store adds the batches of every process up, bucket by bucket, and
//! keeps [`KEEP`] of them ([`Store::activity`](super::Store::activity)).
//!
//! Durations are counted in a [`Histogram`] of fixed, log-spaced slots, the
//! same in every process, so two histograms merge by adding their counts,
//! and a quantile of the merged one is read off its slots (within a slot's
//! width: a factor of √2).

use std::time::Duration;

use crate::job::{JobId, JobStatus, Priority};
use crate::time::Timestamp;

/// The width of a bucket.
pub const BUCKET: Duration = Duration::from_secs(10);

/// How far back the live page looks.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// How long a store keeps a bucket: the window and a minute of slack for
/// the clocks of the replicas and a page reading at the window's edge.
pub const KEEP: Duration = Duration::from_secs(16 * 60);

/// How many recent job ids a store keeps.
pub const RECENT: usize = 200;

/// The terminal statuses a bucket counts, in the order of
/// [`ActivityBucket::finished`].
pub const FINISHED: [JobStatus; 4] = [
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
    JobStatus::Expired,
];

/// The start of the bucket that holds `t`.
pub fn bucket_start(t: Timestamp) -> Timestamp {
    let width = BUCKET.as_millis() as u64;
    Timestamp::from_millis(t.as_millis() / width * width)
}

/// How many slots a [`Histogram`] has: slot `i < SLOTS - 1` holds the
/// durations up to `2^(i/2)` ms (and above the slot before's bound), so
/// from 1 ms to about 2 h 20 min in steps of √2; the last slot holds
/// everything longer.
pub const SLOTS: usize = 48;

/// Counts of durations in fixed, log-spaced slots (see [`SLOTS`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram([u64; SLOTS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram([0; SLOTS])
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.slots()).finish()
    }
}

impl Histogram {
    /// The upper bound of slot `slot`, to the nanosecond below (`None` for
    /// the last, which has none).
    pub fn upper_bound(slot: usize) -> Option<Duration> {
        (slot < SLOTS - 1).then(|| Duration::from_nanos((bound_ms(slot) * 1e6).floor() as u64))
    }

    /// The slot that counts `d`.
    pub fn slot_of(d: Duration) -> usize {
        // A search of the bounds themselves: every job's wait and run time
        // comes here, and a logarithm costs more than these comparisons.
        let ms = d.as_secs_f64() * 1000.0;
        BOUNDS_MS.partition_point(|&bound| ms > bound)
    }

    /// Counts one duration.
    pub fn record(&mut self, d: Duration) {
        self.0[Self::slot_of(d)] += 1;
    }

    /// Adds `n` to slot `slot` (a slot past the last is the last).
    pub fn add_to_slot(&mut self, slot: usize, n: u64) {
        let slot = slot.min(SLOTS - 1);
        self.0[slot] = self.0[slot].saturating_add(n);
    }

    /// Adds another histogram's counts to this one's.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The slots that counted anything, with their counts.
    pub fn slots(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.iter().copied().enumerate().filter(|&(_, n)| n > 0)
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q`-quantile (`0 < q <= 1`), or `None` when nothing was counted.
    ///
    /// Found in the slot that holds it, and placed within the slot by its
    /// rank among the slot's counts, on a log scale (linearly in the first
    /// slot, from 0). The last slot, which has no upper bound, answers its
    /// lower bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut below = 0;
        for (slot, n) in self.slots() {
            if below + n < rank {
                below += n;
                continue;
            }
            let within = (rank - below) as f64 / n as f64;
            let ms = match slot {
                0 => within * bound_ms(0),
                s if s == SLOTS - 1 => bound_ms(s - 1),
                s => {
                    let (low, high) = (bound_ms(s - 1), bound_ms(s));
                    low * (high / low).powf(within)
                }
            };
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
        None
    }
}

/// Slot `slot`'s upper bound, in milliseconds: `2^(slot/2)`.
fn bound_ms(slot: usize) -> f64 {
    BOUNDS_MS[slot]
}

/// The upper bounds of every slot but the last, in milliseconds:
/// `2^(i/2)`, a power of two times `√2` for odd `i`.
const BOUNDS_MS: [f64; SLOTS - 1] = {
    let mut bounds = [0.0; SLOTS - 1];
    let mut power = 1.0;
    let mut i = 0;
    while i < SLOTS - 1 {
        bounds[i] = if i % 2 == 0 {
            power
        } else {
            power * std::f64::consts::SQRT_2
        };
        if i % 2 == 1 {
            power *= 2.0;
        }
        i += 1;
    }
    bounds
};

/// What happened in one bucket, as one process saw it or as a store added
/// up every process's.
///
/// Non-exhaustive, so that counts can be added: start from
/// [`ActivityBucket::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActivityBucket {
    /// When the bucket starts (a multiple of [`BUCKET`] since the epoch).
    pub start: Timestamp,
    /// Jobs that ended, by terminal status, in the order of [`FINISHED`].
    pub finished: [u64; FINISHED.len()],
    /// How long jobs waited in the queue before an attempt started.
    pub queue_wait: Histogram,
    /// How long the inner calls ran.
    pub run_time: Histogram,
    /// Queued jobs by priority, sampled once in the bucket (the first
    /// sample a store is given for a bucket is the one it keeps: every
    /// replica reads the same queue).
    pub queued_by_priority: Option<[u64; Priority::LEVELS]>,
}

impl ActivityBucket {
    /// An empty bucket starting at `start`.
    pub fn new(start: Timestamp) -> Self {
        ActivityBucket {
            start,
            finished: [0; FINISHED.len()],
            queue_wait: Histogram::default(),
            run_time: Histogram::default(),
            queued_by_priority: None,
        }
    }

    /// The place of `status` in [`finished`](Self::finished), if it is terminal.
    pub fn finished_index(status: JobStatus) -> Option<usize> {
        FINISHED.iter().position(|&s| s == status)
    }

    /// How many jobs ended with `status`.
    pub fn finished(&self, status: JobStatus) -> u64 {
        Self::finished_index(status).map_or(0, |i| self.finished[i])
    }

    /// Adds another bucket's counts; keeps this one's depth sample if it
    /// has one.
    pub fn merge(&mut self, other: &ActivityBucket) {
        for (mine, theirs) in self.finished.iter_mut().zip(other.finished) {
            *mine = mine.saturating_add(theirs);
        }
        self.queue_wait.merge(&other.queue_wait);
        self.run_time.merge(&other.run_time);
        if self.queued_by_priority.is_none() {
            self.queued_by_priority = other.queued_by_priority;
        }
    }

    /// Whether the bucket holds nothing.
    pub fn is_empty(&self) -> bool {
        self.finished.iter().all(|&n| n == 0)
            && self.queue_wait.count() == 0
            && self.run_time.count() == 0
            && self.queued_by_priority.is_none()
    }
}

/// What one process hands the store at a time
/// ([`Store::record_activity`](super::Store::record_activity)).
///
/// Non-exhaustive: start from [`ActivityBatch::default`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActivityBatch {
    /// Counts to add, one entry per bucket.
    pub buckets: Vec<ActivityBucket>,
    /// Jobs that were submitted or ended, oldest first (an id may repeat).
    pub recent: Vec<JobId>,
}

impl ActivityBatch {
    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty() && self.buckets.iter().all(ActivityBucket::is_empty)
    }
}

/// What a store holds of every process's activity
/// ([`Store::activity`](super::Store::activity)).
///
/// Non-exhaustive: start from [`Activity::default`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Activity {
    /// The buckets that hold anything, oldest first, one per start.
    pub buckets: Vec<ActivityBucket>,
    /// The last [`RECENT`] ids recorded, newest first (an id may repeat).
    pub recent: Vec<JobId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_bounds_are_powers_of_the_square_root_of_two() {
        for (i, bound) in BOUNDS_MS.iter().enumerate() {
            let exact = (i as f64 / 2.0).exp2();
            assert!(
                (bound - exact).abs() <= exact * 1e-12,
                "slot {i}: {bound} vs {exact}"
            );
        }
    }

    #[test]
    fn each_duration_lands_in_the_slot_whose_bounds_hold_it() {
        assert_eq!(Histogram::slot_of(Duration::ZERO), 0);
        assert_eq!(Histogram::slot_of(ms(1)), 0);
        assert_eq!(Histogram::slot_of(Duration::from_micros(1001)), 1);
        assert_eq!(Histogram::slot_of(ms(2)), 2);
        assert_eq!(Histogram::slot_of(ms(3)), 4);
        assert_eq!(Histogram::slot_of(ms(1024)), 20);
        assert_eq!(Histogram::slot_of(ms(1025)), 21);
        assert_eq!(Histogram::slot_of(Duration::from_secs(86_400)), SLOTS - 1);
        for slot in 1..SLOTS - 1 {
            let bound = Histogram::upper_bound(slot).unwrap();
            let below = Histogram::upper_bound(slot - 1).unwrap();
            assert!(bound > below);
            assert_eq!(Histogram::slot_of(bound), slot, "{bound:?}");
        }
        assert_eq!(Histogram::upper_bound(SLOTS - 1), None);
    }

    #[test]
    fn quantiles_come_from_the_slot_that_holds_the_rank() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.record(ms(10));
        }
        h.record(ms(5000));
        h.record(ms(5000));
        let slot = |d| Histogram::slot_of(d);
        let p50 = h.quantile(0.5).unwrap();
        assert_eq!(slot(p50), slot(ms(10)), "{p50:?}");
        // The 99th of 100 is the first of the two slow ones.
        let p99 = h.quantile(0.99).unwrap();
        assert_eq!(slot(p99), slot(ms(5000)), "{p99:?}");
        // 99 fast and 1 slow: the 99th is fast.
        let mut h = Histogram::default();
        for _ in 0..99 {
            h.record(ms(10));
        }
        h.record(ms(5000));
        assert_eq!(slot(h.quantile(0.99).unwrap()), slot(ms(10)));
        assert_eq!(slot(h.quantile(1.0).unwrap()), slot(ms(5000)));
    }

    #[test]
    fn a_quantile_is_within_a_slot_width_of_the_true_value() {
        let mut h = Histogram::default();
        for n in 1..=1000 {
            h.record(ms(n));
        }
        for (q, truth) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = h.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!(
                got / truth < 2f64.sqrt() && truth / got < 2f64.sqrt(),
                "q{q}: {got} ms for {truth}"
            );
        }
        // The first slot is read linearly from zero; the last answers its
        // lower bound.
        let mut h = Histogram::default();
        h.record(Duration::from_micros(500));
        let first = h.quantile(0.5).unwrap().as_secs_f64();
        assert!((first - 0.001).abs() < 1e-9, "{first}");
        let mut h = Histogram::default();
        h.record(Duration::from_secs(1_000_000));
        assert_eq!(h.quantile(0.5), Histogram::upper_bound(SLOTS - 2));
    }

    #[test]
    fn histograms_merge_by_adding_their_counts() {
        let (mut a, mut b, mut both) = Default::default();
        for n in [1, 7, 7, 300] {
            Histogram::record(&mut a, ms(n));
            Histogram::record(&mut both, ms(n));
        }
        for n in [7, 2000, 90_000] {
            Histogram::record(&mut b, ms(n));
            Histogram::record(&mut both, ms(n));
        }
        let mut merged: Histogram = a.clone();
        merged.merge(&b);
        assert_eq!(merged, both);
        assert_eq!(merged.count(), 7);
        assert_eq!(merged.quantile(0.5), both.quantile(0.5));
        assert_eq!(
            merged.slots().map(|(_, n)| n).sum::<u64>(),
            a.count() + b.count()
        );
    }

    #[test]
    fn buckets_merge_counts_and_keep_the_first_depth_sample() {
        let start = bucket_start(Timestamp::from_millis(123_456));
        assert_eq!(start, Timestamp::from_millis(120_000));
        let mut a = ActivityBucket::new(start);
        assert!(a.is_empty());
        a.finished[0] = 2;
        a.queued_by_priority = Some([1, 2, 3]);
        a.run_time.record(ms(40));
        let mut b = ActivityBucket::new(start);
        b.finished[0] = 1;
        b.finished[1] = 4;
        b.queued_by_priority = Some([9, 9, 9]);
        b.queue_wait.record(ms(3));
        a.merge(&b);
        assert_eq!(a.finished(JobStatus::Succeeded), 3);
        assert_eq!(a.finished(JobStatus::Failed), 4);
        assert_eq!(a.finished(JobStatus::Queued), 0);
        assert_eq!(a.queued_by_priority, Some([1, 2, 3]));
        assert_eq!((a.queue_wait.count(), a.run_time.count()), (1, 1));
        let mut c = ActivityBucket::new(start);
        c.merge(&b);
        assert_eq!(c.queued_by_priority, Some([9, 9, 9]));
    }
}
