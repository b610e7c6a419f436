//! The live page's record in Redis: [`Store::record_activity`] and
//! [`Store::activity`], each one pipeline (one round trip), on shard 0's
//! hash tag, so that no command spans two slots.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:activity:<start ms>` | hash | one bucket, added up over every replica: `f:<status>` jobs ended, `w:<slot>` and `r:<slot>` the queue-wait and run-time histograms' counts, `d:<level>` the queued jobs by priority (`HSETNX`: the first replica's sample) |
//! | `{ns}:recent` | list | job ids, newest first, capped at [`RECENT`] |
//!
//! A bucket's key expires [`KEEP`] after its last write. A flush costs
//! Redis one `HINCRBY` per non-zero count, at most three `HSETNX`, an
//! `EXPIRE` per bucket, and an `LPUSH` and an `LTRIM` for the ids: a few
//! dozen plain commands every few seconds per replica, whatever the number
//! of jobs. Reading 15 minutes is 91 `HGETALL` and an `LRANGE`.
//!
//! [`Store::record_activity`]: crate::Store::record_activity
//! [`Store::activity`]: crate::Store::activity

use std::collections::HashMap;

use ::redis::Value;

use super::keys::Keys;
use super::wire::{parse_id, undecodable};
use crate::job::{JobId, Priority};
use crate::store::activity::{
    bucket_start, Activity, ActivityBatch, ActivityBucket, BUCKET, FINISHED, KEEP, RECENT,
};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The pipeline that adds `batch`; `None` when it holds nothing.
pub(super) fn record(keys: &Keys, batch: &ActivityBatch) -> Option<::redis::Pipeline> {
    if batch.is_empty() {
        return None;
    }
    let mut pipe = ::redis::pipe();
    for bucket in batch.buckets.iter().filter(|b| !b.is_empty()) {
        let key = keys.activity(bucket.start.as_millis());
        let mut add = |field: String, n: u64| {
            pipe.cmd("HINCRBY").arg(&key).arg(field).arg(n).ignore();
        };
        for (status, &n) in FINISHED.iter().zip(&bucket.finished) {
            if n > 0 {
                add(format!("f:{status}"), n);
            }
        }
        for (slot, n) in bucket.queue_wait.slots() {
            add(format!("w:{slot}"), n);
        }
        for (slot, n) in bucket.run_time.slots() {
            add(format!("r:{slot}"), n);
        }
        if let Some(depth) = bucket.queued_by_priority {
            for (level, n) in depth.iter().enumerate() {
                pipe.cmd("HSETNX")
                    .arg(&key)
                    .arg(format!("d:{level}"))
                    .arg(n)
                    .ignore();
            }
        }
        pipe.cmd("EXPIRE").arg(&key).arg(KEEP.as_secs()).ignore();
    }
    if !batch.recent.is_empty() {
        let ids: Vec<&str> = batch.recent.iter().map(JobId::as_str).collect();
        pipe.cmd("LPUSH").arg(&keys.recent).arg(ids).ignore();
        pipe.cmd("LTRIM")
            .arg(&keys.recent)
            .arg(0)
            .arg(RECENT - 1)
            .ignore();
    }
    Some(pipe)
}

/// The pipeline that reads the buckets from `since`'s to `now`'s, then the
/// recent ids.
pub(super) fn read(keys: &Keys, since: Timestamp, now: Timestamp) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    for start in starts(since, now) {
        pipe.cmd("HGETALL").arg(keys.activity(start));
    }
    pipe.cmd("LRANGE").arg(&keys.recent).arg(0).arg(RECENT - 1);
    pipe
}

/// The starts, in milliseconds, of the buckets from `since`'s to `now`'s.
fn starts(since: Timestamp, now: Timestamp) -> impl Iterator<Item = u64> {
    let width = BUCKET.as_millis() as u64;
    let (from, to) = (
        bucket_start(since).as_millis(),
        bucket_start(now).as_millis(),
    );
    (from..=to).step_by(width as usize)
}

/// Decodes what [`read`]'s pipeline answered.
pub(super) fn decode(
    since: Timestamp,
    now: Timestamp,
    mut answers: Vec<Value>,
) -> Result<Activity, StoreError> {
    let bad = |e: &dyn std::fmt::Display| undecodable("activity", e.to_string());
    let recent = answers.pop().ok_or_else(|| bad(&"no answer"))?;
    let recent: Vec<Vec<u8>> = ::redis::from_redis_value(recent).map_err(|e| bad(&e))?;
    let mut activity = Activity {
        recent: recent.iter().filter_map(|id| parse_id(id)).collect(),
        ..Activity::default()
    };
    for (start, answer) in starts(since, now).zip(answers) {
        let fields: HashMap<String, u64> =
            ::redis::from_redis_value(answer).map_err(|e| bad(&e))?;
        if fields.is_empty() {
            continue;
        }
        let mut bucket = ActivityBucket::new(Timestamp::from_millis(start));
        let mut depth = [0; Priority::LEVELS];
        let mut sampled = false;
        for (field, n) in fields {
            let Some((kind, name)) = field.split_once(':') else {
                continue;
            };
            let slot = || name.parse::<usize>().ok();
            match kind {
                "f" => {
                    if let Some(i) = FINISHED.iter().position(|s| s.as_str() == name) {
                        bucket.finished[i] = n;
                    }
                }
                "w" => slot()
                    .into_iter()
                    .for_each(|s| bucket.queue_wait.add_to_slot(s, n)),
                "r" => slot()
                    .into_iter()
                    .for_each(|s| bucket.run_time.add_to_slot(s, n)),
                "d" => {
                    if let Some(level) = slot().filter(|&l| l < Priority::LEVELS) {
                        depth[level] = n;
                        sampled = true;
                    }
                }
                // A field a later version writes: not ours to read.
                _ => {}
            }
        }
        if sampled {
            bucket.queued_by_priority = Some(depth);
        }
        activity.buckets.push(bucket);
    }
    Ok(activity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_covers_every_bucket_from_sinces_to_nows() {
        let since = Timestamp::from_millis(1_000_005);
        let now = Timestamp::from_millis(1_030_000);
        let starts: Vec<u64> = starts(since, now).collect();
        assert_eq!(starts, [1_000_000, 1_010_000, 1_020_000, 1_030_000]);
    }
}
