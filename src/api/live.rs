//! The live page (`{prefix}/ui`) and the two documents it draws from:
//! `{prefix}/activity` (the last 15 minutes, every replica's) and
//! `{prefix}/recent` (the jobs most recently submitted or ended, every
//! replica's, as the caller may see them). Both read the store's activity
//! record ([`Store::activity`]) with this process's counts not yet flushed
//! added (see `activity.rs`).

use std::collections::HashSet;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::Serialize;

use super::document::StatusDocument;
use super::{json, store_unavailable, Doors};
use crate::error::Problem;
use crate::job::{Job, JobId, JobStatus};
use crate::store::activity::{bucket_start, ActivityBucket, BUCKET, RECENT, WINDOW};
use crate::store::{Histogram, Store};
use crate::time::Timestamp;

/// The page: plain HTML, CSS and JS in one file, charts drawn in SVG by
/// hand; no build step, nothing vendored.
const UI_PAGE: &str = include_str!("ui/index.html");

pub(super) fn page() -> Response<Bytes> {
    let mut page = Response::new(Bytes::from_static(UI_PAGE.as_bytes()));
    page.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    page
}

/// How many buckets the activity document holds: the window, in whole
/// buckets, ending with the last complete one.
const BUCKETS: u32 = (WINDOW.as_secs() / BUCKET.as_secs()) as u32;

/// How many jobs `recent` lists unless `?limit=` says otherwise.
const DEFAULT_LIMIT: usize = 50;

/// How many jobs `recent` reads from the store at once.
const READ_AT_ONCE: usize = 32;

/// `GET {prefix}/activity`: 15 minutes in ten-second buckets, oldest first,
/// ending with the last complete bucket (a bucket still filling would show
/// a rate that only looks like a fall); the queue's depth now beside them.
pub(super) async fn activity<St: Store>(doors: &Doors<St>) -> Result<Response<Bytes>, Problem> {
    let now = Timestamp::now();
    let end = bucket_start(now);
    let first = end.before(BUCKET * BUCKETS);
    let (activity, stats) = tokio::join!(
        doors.activity.read(&*doors.store, first),
        doors.store.stats()
    );
    let activity = activity.map_err(|e| store_unavailable(&e))?;
    let stats = stats.map_err(|e| store_unavailable(&e))?;
    let mut stored = activity.buckets.into_iter().peekable();
    let buckets: Vec<BucketDocument> = (0..BUCKETS)
        .map(|i| {
            let start = first.after(BUCKET * i);
            while stored.next_if(|b| b.start < start).is_some() {}
            match stored.next_if(|b| b.start == start) {
                Some(bucket) => BucketDocument::new(&bucket),
                None => BucketDocument::new(&ActivityBucket::new(start)),
            }
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "now": now,
            "bucket_seconds": BUCKET.as_secs(),
            "window_seconds": BUCKET.as_secs() * u64::from(BUCKETS),
            "queued_by_priority": stats.queued_by_priority,
            "in_progress": stats.in_progress,
            "buckets": buckets,
        }),
    ))
}

/// One bucket of the activity document.
#[derive(Serialize)]
struct BucketDocument {
    start: Timestamp,
    /// `null` when no replica sampled the queue in this bucket.
    queued_by_priority: Option<[u64; crate::job::Priority::LEVELS]>,
    finished: ByEnd<u64>,
    finished_per_second: ByEnd<f64>,
    queue_wait_seconds: Quantiles,
    run_seconds: Quantiles,
}

/// A figure for each way a job ends: the count, or the rate. An expiry,
/// and a failure of a job its workers abandoned, happen in the store, not
/// in a process: each is counted by the replica whose sweep reported it
/// (see [`Store::sweep`]), so in the bucket of that sweep, up to a second
/// after.
#[derive(Serialize)]
struct ByEnd<T> {
    succeeded: T,
    failed: T,
    canceled: T,
    expired: T,
}

impl<T> ByEnd<T> {
    fn of(figure: impl Fn(JobStatus) -> T) -> Self {
        ByEnd {
            succeeded: figure(JobStatus::Succeeded),
            failed: figure(JobStatus::Failed),
            canceled: figure(JobStatus::Canceled),
            expired: figure(JobStatus::Expired),
        }
    }
}

#[derive(Serialize)]
struct Quantiles {
    count: u64,
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Quantiles {
    fn new(h: &Histogram) -> Self {
        // Microseconds are as fine as the slots are.
        let secs = |q| h.quantile(q).map(|d| (d.as_secs_f64() * 1e6).round() / 1e6);
        Quantiles {
            count: h.count(),
            p50: secs(0.5),
            p99: secs(0.99),
        }
    }
}

impl BucketDocument {
    fn new(b: &ActivityBucket) -> Self {
        let n = |status| b.finished(status);
        let rate = |status| n(status) as f64 / BUCKET.as_secs_f64();
        BucketDocument {
            start: b.start,
            queued_by_priority: b.queued_by_priority,
            finished: ByEnd::of(n),
            finished_per_second: ByEnd::of(rate),
            queue_wait_seconds: Quantiles::new(&b.queue_wait),
            run_seconds: Quantiles::new(&b.run_time),
        }
    }
}

/// What `?status=` and `?limit=` asked of `recent`.
struct RecentQuery {
    /// `None`: every status.
    statuses: Option<Vec<JobStatus>>,
    limit: usize,
}

fn bad_query(detail: String) -> Problem {
    Problem::bad_request("invalid_query", detail)
}

impl RecentQuery {
    /// Reads `status` (one status, or several separated by commas) and
    /// `limit` (1 to [`RECENT`]); other parameters are ignored.
    fn parse(query: Option<&str>) -> Result<Self, Problem> {
        let mut out = RecentQuery {
            statuses: None,
            limit: DEFAULT_LIMIT,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // The only escape these values need: a comma, as a form sends it.
            let value = value.replace("%2C", ",").replace("%2c", ",");
            let shown = |v: &str| v.chars().take(32).collect::<String>();
            match name {
                "status" => {
                    let mut statuses = out.statuses.take().unwrap_or_default();
                    for name in value.split(',') {
                        let status = JobStatus::ALL
                            .into_iter()
                            .find(|s| s.as_str() == name)
                            .ok_or_else(|| {
                                bad_query(format!(
                                    "unknown status {:?} in `status`: expected queued, \
                                     in_progress, succeeded, failed, canceled or expired \
                                     (several separated by commas)",
                                    shown(name)
                                ))
                            })?;
                        statuses.push(status);
                    }
                    out.statuses = Some(statuses);
                }
                "limit" => {
                    out.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=RECENT).contains(n))
                        .ok_or_else(|| {
                            bad_query(format!(
                                "`limit` must be a whole number from 1 to {RECENT}, got {:?}",
                                shown(&value)
                            ))
                        })?;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn wants(&self, job: &Job) -> bool {
        self.statuses
            .as_ref()
            .is_none_or(|s| s.contains(&job.status))
    }
}

/// `GET {prefix}/recent`: the jobs most recently submitted or ended through
/// any replica that `owner` may see, newest change first, as status documents;
/// `?status=` keeps those of the statuses named, `?limit=` (default 50)
/// caps the list. Drawn from the last [`RECENT`] ids the store keeps.
pub(super) async fn recent<St: Store>(
    doors: &Doors<St>,
    owner: Option<&str>,
    query: Option<&str>,
) -> Result<Response<Bytes>, Problem> {
    let query = RecentQuery::parse(query)?;
    let activity = doors
        .activity
        .read(&*doors.store, Timestamp::now())
        .await
        .map_err(|e| store_unavailable(&e))?;
    let mut seen = HashSet::new();
    let ids: Vec<JobId> = activity
        .recent
        .into_iter()
        .filter(|id| seen.insert(*id))
        .collect();
    let mut jobs = Vec::new();
    for chunk in ids.chunks(READ_AT_ONCE) {
        for job in read_jobs(doors, chunk).await? {
            if job.is_visible_to(owner) && query.wants(&job) {
                jobs.push(job);
            }
        }
        if jobs.len() >= query.limit {
            break;
        }
    }
    jobs.truncate(query.limit);
    // Each replica's ids arrive a flush at a time: order them by when each
    // job last changed (stable, so ties keep the order they came in).
    jobs.sort_by_key(|job| std::cmp::Reverse(job.status_at));
    let docs: Vec<_> = jobs.iter().map(StatusDocument::new).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "jobs": docs })))
}

/// The jobs of `ids` the store still has, in the order of `ids`, read at once.
async fn read_jobs<St: Store>(doors: &Doors<St>, ids: &[JobId]) -> Result<Vec<Job>, Problem> {
    let mut reads = tokio::task::JoinSet::new();
    for (i, &id) in ids.iter().enumerate() {
        let store = doors.store.clone();
        reads.spawn(async move { (i, store.get(id).await) });
    }
    let mut found = Vec::with_capacity(ids.len());
    while let Some(read) = reads.join_next().await {
        // A read that panicked is a job not shown, not a failed page.
        let Ok((i, read)) = read else { continue };
        match read {
            Ok(Some(job)) => found.push((i, job)),
            Ok(None) => {}
            Err(e) => return Err(store_unavailable(&e)),
        }
    }
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().map(|(_, job)| job).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_detail(query: &str) -> String {
        let e = RecentQuery::parse(Some(query)).err().expect("refused");
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let doc: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        doc["detail"].as_str().unwrap().to_owned()
    }

    #[test]
    fn the_recent_query_reads_statuses_and_a_limit() {
        let q = RecentQuery::parse(None).unwrap();
        assert_eq!((q.statuses, q.limit), (None, DEFAULT_LIMIT));
        let q = RecentQuery::parse(Some("status=failed%2Ccanceled&limit=7&x=y")).unwrap();
        assert_eq!(
            q.statuses,
            Some(vec![JobStatus::Failed, JobStatus::Canceled])
        );
        assert_eq!(q.limit, 7);
        let q = RecentQuery::parse(Some("status=queued&status=in_progress")).unwrap();
        assert_eq!(
            q.statuses,
            Some(vec![JobStatus::Queued, JobStatus::InProgress])
        );
    }

    #[test]
    fn a_bad_recent_query_is_a_400_that_says_what_is_wrong() {
        assert_eq!(
            problem_detail("status=done"),
            "unknown status \"done\" in `status`: expected queued, in_progress, succeeded, \
             failed, canceled or expired (several separated by commas)"
        );
        assert!(problem_detail("status=").contains("unknown status \"\""));
        assert_eq!(
            problem_detail("limit=0"),
            "`limit` must be a whole number from 1 to 200, got \"0\""
        );
        assert!(problem_detail("limit=201").ends_with("got \"201\""));
        assert!(problem_detail("limit=ten").ends_with("got \"ten\""));
    }
}
