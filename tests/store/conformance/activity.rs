//! Activity: the live page's record, added up over every process
//! (`record_activity`), read back by bucket with the recent ids (`activity`).

use tower_defer::store::activity::{bucket_start, BUCKET, RECENT};
use tower_defer::store::{Activity, ActivityBatch, ActivityBucket};

use super::*;

fn bucket(start: Timestamp, f: impl FnOnce(&mut ActivityBucket)) -> ActivityBucket {
    let mut b = ActivityBucket::new(start);
    f(&mut b);
    b
}

fn batch(buckets: Vec<ActivityBucket>, recent: Vec<JobId>) -> ActivityBatch {
    let mut batch = ActivityBatch::default();
    batch.buckets = buckets;
    batch.recent = recent;
    batch
}

pub async fn activity_adds_up_every_process_by_bucket<St: Store>(store: St) {
    let now = bucket_start(Timestamp::now());
    let (earlier, earliest) = (now.before(BUCKET), now.before(BUCKET * 2));
    assert_eq!(store.activity(earliest).await.unwrap(), Activity::default());

    // Two processes count in the same buckets; one also in an earlier one.
    let one = batch(
        vec![
            bucket(earliest, |b| b.finished[0] = 7),
            bucket(earlier, |b| {
                b.finished[0] = 2;
                b.finished[1] = 1;
                b.queue_wait.record(ms(3));
                b.run_time.record(ms(40));
                b.queued_by_priority = Some([4, 0, 1]);
            }),
        ],
        vec![],
    );
    let two = batch(
        vec![
            bucket(earlier, |b| {
                b.finished[0] = 3;
                b.finished[2] = 1;
                b.queue_wait.record(ms(3));
                b.queue_wait.record(ms(900));
                b.run_time.record(secs(2));
                // A later sample of the same bucket: the first one stays.
                b.queued_by_priority = Some([9, 9, 9]);
            }),
            bucket(now, |b| b.run_time.record(ms(1))),
        ],
        vec![],
    );
    store.record_activity(one).await.unwrap();
    store.record_activity(two).await.unwrap();
    // An empty batch changes nothing.
    store
        .record_activity(ActivityBatch::default())
        .await
        .unwrap();

    let read = store.activity(earlier).await.unwrap();
    assert_eq!(read.buckets.len(), 2, "from `since`'s bucket on: {read:?}");
    let (mid, last) = (&read.buckets[0], &read.buckets[1]);
    assert_eq!((mid.start, last.start), (earlier, now));
    assert_eq!(mid.finished(JobStatus::Succeeded), 5);
    assert_eq!(mid.finished(JobStatus::Failed), 1);
    assert_eq!(mid.finished(JobStatus::Canceled), 1);
    assert_eq!(mid.queued_by_priority, Some([4, 0, 1]));
    let mut waits = tower_defer::store::Histogram::default();
    for d in [ms(3), ms(3), ms(900)] {
        waits.record(d);
    }
    assert_eq!(mid.queue_wait, waits);
    assert_eq!(mid.run_time.count(), 2);
    assert_eq!(mid.run_time.quantile(1.0), {
        let mut h = tower_defer::store::Histogram::default();
        h.record(secs(2));
        h.quantile(1.0)
    });
    assert_eq!(last.run_time.count(), 1);
    assert_eq!(last.queued_by_priority, None);

    // From an earlier `since`, the first bucket too; a `since` inside a
    // bucket reads that bucket whole.
    let all = store.activity(earliest.after(ms(1))).await.unwrap();
    assert_eq!(all.buckets.len(), 3);
    assert_eq!(all.buckets[0].finished(JobStatus::Succeeded), 7);
    assert_eq!(&all.buckets[1..], &read.buckets[..]);
}

pub async fn recent_ids_are_newest_first_and_capped<St: Store>(store: St) {
    let ids: Vec<JobId> = (0..RECENT + 50).map(|_| JobId::random()).collect();
    let (old, new) = ids.split_at(150);
    store
        .record_activity(batch(vec![], old.to_vec()))
        .await
        .unwrap();
    let read = store.activity(Timestamp::now()).await.unwrap();
    let expected: Vec<JobId> = old.iter().rev().copied().collect();
    assert_eq!(read.recent, expected);
    assert!(read.buckets.is_empty());

    // A repeat is kept as a repeat: the reader makes one row of it.
    let mut newer = new.to_vec();
    newer.push(new[0]);
    store.record_activity(batch(vec![], newer)).await.unwrap();
    let read = store.activity(Timestamp::now()).await.unwrap();
    assert_eq!(read.recent.len(), RECENT);
    let mut expected: Vec<JobId> = vec![new[0]];
    expected.extend(ids.iter().rev());
    expected.truncate(RECENT);
    assert_eq!(read.recent, expected);
}
