//! The store conformance suite: the contract of `src/store/mod.rs`, written
//! against the [`Store`] trait only, so that every store runs the very same
//! cases.
//!
//! Each case is a generic `async fn(St)` in the file of its area (enqueue,
//! claim, complete, retry, expiry, wait, cancel, stats, idempotency,
//! activity);
//! [`conformance_tests!`] makes one `#[tokio::test(start_paused = true)]` per
//! case of every area for one store:
//!
//! ```ignore
//! conformance_tests!(memory, async { Some(MemoryStore::new()) });
//! conformance_tests!(redis, redis_store()); // async fn redis_store() -> Option<RedisStore>
//! ```
//!
//! A new case is a `pub async fn` in its area's file and a line in the
//! macro's list for that area; a new area is a file, a `mod` here and a list.
//!
//! `$make` is an expression whose value is a future of a fresh, empty store
//! (`None` when it cannot be had here, which skips the case); it is expanded
//! anew in every test (and resolved inside the test's paused runtime), so a
//! store that must `await` to start or connect plugs in as it is. Paths in it
//! resolve in the generated module, which glob-imports the invoking module.
//!
//! Time is tokio's paused clock: [`Timestamp::now`] only moves on
//! `tokio::time::advance` or when the runtime is idle and auto-advances to its
//! next timer. So "resolved before its `until`" is checked exactly, by reading
//! the clock when a wait returns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};
use tower_defer::job::{
    BatchTag, CancelOutcome, ErrorCode, Job, JobError, JobId, JobOptions, JobStatus, NewJob,
    Outcome, Priority, Retry, StoredRequest, StoredResponse, JOB_ID_LEN,
};
use tower_defer::store::{Claim, EnqueueError, QueueStats, QueuedCancel, Store};
use tower_defer::time::Timestamp;

pub(crate) mod activity;
pub(crate) mod batch;
pub(crate) mod cancel;
pub(crate) mod claim;
pub(crate) mod complete;
pub(crate) mod enqueue;
pub(crate) mod expiry;
pub(crate) mod idempotency;
pub(crate) mod lapses;
pub(crate) mod retry;
pub(crate) mod stats;
pub(crate) mod wait;

/// Makes the conformance tests for one store, in a module named `$module`:
/// one test per case, named as the case is.
///
/// `$make` is an expression that evaluates to a future of a fresh store (see
/// the module docs).
macro_rules! conformance_tests {
    ($module:ident, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            conformance_tests!(@cases $make;
                enqueue: [
                    enqueue_returns_a_queued_job_and_get_reads_it,
                    get_of_an_unknown_id_is_none,
                    enqueue_refuses_past_max_queued,
                    concurrent_enqueues_fill_the_queue_to_its_limit,
                ],
                claim: [
                    claim_on_an_empty_store_is_none,
                    claim_marks_in_progress_with_a_lease,
                    claim_takes_priority_0_then_1_then_2,
                    claim_is_fifo_within_a_level,
                    priority_aging_lifts_a_job_that_waited,
                    extend_renews_the_lease,
                    a_stale_token_is_refused_after_a_lapse_and_a_new_claim,
                    a_lapsed_lease_requeues_the_job,
                    concurrent_claims_hand_out_every_job_once,
                ],
                complete: [
                    complete_with_a_2xx_succeeds,
                    complete_with_400_or_500_fails_and_keeps_the_response,
                    complete_with_an_error_fails,
                    complete_status_records_what_complete_would,
                    concurrent_completions_each_get_their_own_answer,
                    complete_and_claim_records_then_claims_the_next,
                    concurrent_complete_and_claims_each_get_their_own_job,
                    a_terminal_job_never_changes,
                ],
                retry: [
                    retry_later_without_spending_refunds_the_attempt,
                    a_retrying_job_is_not_claimable_before_its_time,
                    a_retried_job_queues_behind_fresh_work,
                ],
                expiry: [
                    a_queued_job_past_its_deadline_expires_on_sweep,
                    claim_expires_a_job_past_its_deadline_without_a_sweep,
                    sweep_reports_every_expiry_once,
                    a_result_is_forgotten_after_its_ttl,
                ],
                wait: [
                    wait_returns_at_once_when_the_job_is_newer,
                    wait_resolves_when_the_job_changes,
                    wait_resolves_at_until_when_nothing_happens,
                    wait_on_an_unknown_job_is_none,
                    work_available_resolves_after_an_enqueue,
                ],
                cancel: [
                    cancel_of_a_queued_job,
                    cancel_of_a_running_job_fences_its_worker,
                    cancel_is_scoped_to_the_owner,
                    cancel_queued_cancels_only_queued_jobs,
                ],
                lapses: [
                    a_lapse_spends_no_attempt_and_the_fifth_abandons_the_job,
                    sweep_reports_every_abandonment_once,
                    lapses_and_spent_attempts_are_counted_apart,
                    wake_unavailable_makes_the_jobs_waiting_for_the_upstream_runnable,
                    wake_unavailable_leaves_every_other_job_alone,
                ],
                stats: [
                    stats_track_every_transition,
                ],
                batch: [
                    the_batch_tag_is_kept_with_the_job,
                    claim_batch_takes_only_queued_jobs_of_its_key,
                    claim_batch_stays_within_its_item_and_byte_budgets,
                    claim_batch_takes_jobs_by_priority_then_age,
                    claim_batch_passes_over_retrying_and_expires_jobs_past_their_deadline,
                    batch_members_are_fenced_and_finish_each_on_its_own,
                ],
                activity: [
                    activity_adds_up_every_process_by_bucket,
                    recent_ids_are_newest_first_and_capped,
                ],
                idempotency: [
                    idempotent_enqueue_returns_the_first_job,
                    idempotency_key_with_a_different_request_conflicts,
                    idempotency_keys_are_per_owner,
                    concurrent_idempotent_enqueues_make_one_job,
                ],
            );
        }
    };
    (@cases $make:expr; $($area:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[tokio::test(start_paused = true)]
            async fn $case() {
                // `None`: the store cannot be had here (a skip, said by the factory).
                let Some(store) = $make.await else { return };
                $crate::conformance::$area::$case(store).await;
            }
        )*)*
    };
}

// Helpers the areas share.

/// The lease of most claims.
const LEASE: Duration = Duration::from_secs(30);

/// A queue limit no case reaches.
const NO_LIMIT: usize = 1_000_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

/// A `POST /run` job with `body` and default options.
fn job(body: &str) -> NewJob {
    job_with(body, |_| {})
}

/// A `POST /run` job with `body`, its default options changed by `f`.
fn job_with(body: &str, f: impl FnOnce(&mut JobOptions)) -> NewJob {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let mut options = JobOptions::default();
    f(&mut options);
    NewJob {
        request: StoredRequest {
            method: Method::POST,
            path_and_query: PathAndQuery::from_static("/run?x=1"),
            headers,
            body: Bytes::copy_from_slice(body.as_bytes()),
        },
        options,
    }
}

fn priority(level: u8) -> Priority {
    Priority::new(level).unwrap()
}

fn response(status: u16) -> StoredResponse {
    StoredResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: Bytes::from(format!("{{\"status\":{status}}}")),
    }
}

fn retry(at: Timestamp, spend_attempt: bool) -> Retry {
    Retry {
        at,
        error: JobError::new(ErrorCode::UpstreamUnavailable, "connection refused"),
        response: None,
        spend_attempt,
    }
}

fn body_of(job: &Job) -> &[u8] {
    &job.request.body
}

async fn enqueue<St: Store>(store: &St, new: NewJob) -> Job {
    let enqueued = store.enqueue(new, NO_LIMIT).await.unwrap();
    assert!(enqueued.created);
    enqueued.job
}

async fn claim<St: Store>(store: &St) -> Option<Claim> {
    store.claim(LEASE, None).await.unwrap()
}

async fn claim_with<St: Store>(store: &St, lease: Duration) -> Claim {
    store
        .claim(lease, None)
        .await
        .unwrap()
        .expect("a job to claim")
}

async fn get<St: Store>(store: &St, id: JobId) -> Job {
    store.get(id).await.unwrap().expect("the job is there")
}

async fn complete<St: Store>(store: &St, c: &Claim, status: u16) -> Job {
    store
        .complete(c.id(), c.token(), Outcome::response(response(status)))
        .await
        .unwrap()
}

async fn stats<St: Store>(store: &St) -> QueueStats {
    store.stats().await.unwrap()
}

/// Claims and completes everything claimable now, returning the bodies in
/// claim order.
async fn drain<St: Store>(store: &St) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(c) = claim(store).await {
        out.push(String::from_utf8(body_of(&c.job).to_vec()).unwrap());
        complete(store, &c, 200).await;
    }
    out
}

/// Asserts that every fenced write with `c`'s token is refused, and that the
/// job is unchanged by the attempts.
async fn assert_fenced<St: Store>(store: &St, c: &Claim) {
    let before = store.get(c.id()).await.unwrap();
    let err = store
        .complete(c.id(), c.token(), Outcome::response(response(200)))
        .await
        .unwrap_err();
    assert!(err.is_stale_lease(), "complete with a stale token: {err:?}");
    let err = store
        .retry_later(c.id(), c.token(), retry(Timestamp::now(), false))
        .await
        .unwrap_err();
    assert!(
        err.is_stale_lease(),
        "retry_later with a stale token: {err:?}"
    );
    let err = store.extend(c.id(), c.token(), LEASE).await.unwrap_err();
    assert!(err.is_stale_lease(), "extend with a stale token: {err:?}");
    let after = store.get(c.id()).await.unwrap();
    match (before, after) {
        (Some(b), Some(a)) => assert_unchanged(&b, &a),
        (None, None) => {}
        (b, a) => panic!("a refused write changed the job: {b:?} -> {a:?}"),
    }
}

/// Asserts that `after` is `before`, as far as anything a client sees goes.
fn assert_unchanged(before: &Job, after: &Job) {
    assert_eq!(after.id, before.id);
    assert_eq!(after.status, before.status);
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.attempts, before.attempts);
    assert_eq!(after.status_at, before.status_at);
    assert_eq!(after.started_at, before.started_at);
    assert_eq!(after.completed_at, before.completed_at);
    assert_eq!(after.expires_at, before.expires_at);
    assert_eq!(after.retry_at, before.retry_at);
    assert_eq!(after.error, before.error);
    assert_eq!(after.lease, before.lease);
    assert_eq!(
        after.response.as_ref().map(|r| (r.status, r.body.clone())),
        before.response.as_ref().map(|r| (r.status, r.body.clone()))
    );
}

fn error_code(job: &Job) -> Option<ErrorCode> {
    job.error.as_ref().map(|e| e.code)
}

/// Claims up to `n` jobs, returning their ids.
async fn drain_ids<St: Store>(store: &St, n: usize) -> Vec<JobId> {
    let mut out = Vec::new();
    while out.len() < n {
        match claim(store).await {
            Some(c) => out.push(c.id()),
            None => break,
        }
    }
    out
}

fn expect_stats(
    queued_by_priority: [u64; 3],
    retrying: u64,
    in_progress: u64,
    oldest_queued_at: Option<Timestamp>,
) -> QueueStats {
    let mut stats = QueueStats::default();
    stats.queued = queued_by_priority.iter().sum::<u64>() + retrying;
    stats.queued_by_priority = queued_by_priority;
    stats.retrying = retrying;
    stats.in_progress = in_progress;
    stats.oldest_queued_at = oldest_queued_at;
    stats
}
