//! The store conformance suite: the contract of `src/store/mod.rs`, written
//! against the [`Store`] trait only, so that every store runs the very same
//! cases.
//!
//! Each case is a generic `async fn(St)` below; [`conformance_tests!`] makes
//! one `#[tokio::test(start_paused = true)]` per case for one store:
//!
//! ```ignore
//! conformance_tests!(memory, async { MemoryStore::new() });
//! conformance_tests!(redis, redis_store()); // async fn redis_store() -> RedisStore
//! ```
//!
//! `$make` is an expression whose value is a future of a fresh, empty store;
//! it is expanded anew in every test (and resolved inside the test's paused
//! runtime), so a store that must `await` to start or connect plugs in as it
//! is. Paths in it resolve in the generated module, which glob-imports the
//! invoking module.
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
    CancelOutcome, ErrorCode, Job, JobError, JobId, JobOptions, JobStatus, NewJob, Outcome,
    Priority, Retry, StoredRequest, StoredResponse, JOB_ID_LEN,
};
use tower_defer::store::{Claim, EnqueueError, QueueStats, QueuedCancel, Store};
use tower_defer::time::Timestamp;

/// Makes the conformance tests for one store, in a module named `$module`.
///
/// `$make` is an expression that evaluates to a future of a fresh store (see
/// the module docs).
macro_rules! conformance_tests {
    ($module:ident, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            conformance_tests!(@cases $make;
                enqueue_returns_a_queued_job_and_get_reads_it,
                get_of_an_unknown_id_is_none,
                claim_on_an_empty_store_is_none,
                claim_marks_in_progress_with_a_lease,
                claim_takes_priority_0_then_1_then_2,
                claim_is_fifo_within_a_level,
                priority_aging_lifts_a_job_that_waited,
                complete_with_a_2xx_succeeds,
                complete_with_400_or_500_fails_and_keeps_the_response,
                complete_with_an_error_fails,
                complete_status_records_what_complete_would,
                concurrent_completions_each_get_their_own_answer,
                extend_renews_the_lease,
                a_stale_token_is_refused_after_a_lapse_and_a_new_claim,
                a_terminal_job_never_changes,
                retry_later_without_spending_refunds_the_attempt,
                a_retrying_job_is_not_claimable_before_its_time,
                a_retried_job_queues_behind_fresh_work,
                a_lapsed_lease_requeues_the_job,
                a_lapse_spends_no_attempt_and_the_fifth_abandons_the_job,
                lapses_and_spent_attempts_are_counted_apart,
                wake_unavailable_makes_the_jobs_waiting_for_the_upstream_runnable,
                wake_unavailable_leaves_every_other_job_alone,
                a_queued_job_past_its_deadline_expires_on_sweep,
                claim_expires_a_job_past_its_deadline_without_a_sweep,
                a_result_is_forgotten_after_its_ttl,
                wait_returns_at_once_when_the_job_is_newer,
                wait_resolves_when_the_job_changes,
                wait_resolves_at_until_when_nothing_happens,
                wait_on_an_unknown_job_is_none,
                work_available_resolves_after_an_enqueue,
                cancel_of_a_queued_job,
                cancel_of_a_running_job_fences_its_worker,
                cancel_is_scoped_to_the_owner,
                cancel_queued_cancels_only_queued_jobs,
                stats_track_every_transition,
                enqueue_refuses_past_max_queued,
                idempotent_enqueue_returns_the_first_job,
                idempotency_key_with_a_different_request_conflicts,
                idempotency_keys_are_per_owner,
                concurrent_enqueues_fill_the_queue_to_its_limit,
                concurrent_idempotent_enqueues_make_one_job,
                concurrent_claims_hand_out_every_job_once,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $case() {
                // `None`: the store cannot be had here (a skip, said by the factory).
                let Some(store) = $make.await else { return };
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

// Lapses counted apart from attempts, and waking jobs that wait for the
// upstream: cases in files of their own.
mod lapses;
pub use lapses::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Enqueue and get
// ---------------------------------------------------------------------------

pub async fn enqueue_returns_a_queued_job_and_get_reads_it<St: Store>(store: St) {
    let now = Timestamp::now();
    let new = job_with("hello", |o| {
        o.priority = Priority::LOW;
        o.max_time_in_queue = secs(42);
        o.owner = Some("alice".into());
    });
    let enqueued = store.enqueue(new, NO_LIMIT).await.unwrap();
    assert!(enqueued.created);
    let j = enqueued.job;
    assert_eq!(j.id.as_str().len(), JOB_ID_LEN);
    assert_eq!(j.id.as_str().len(), 16);
    assert_eq!(j.id.as_str().parse::<JobId>().unwrap(), j.id);
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.revision, 1);
    assert_eq!(j.attempts, 0);
    assert_eq!(j.created_at, now);
    assert_eq!(j.status_at, j.created_at);
    assert_eq!(j.queue_deadline, now.after(secs(42)));
    assert_eq!(j.started_at, None);
    assert_eq!(j.completed_at, None);
    assert_eq!(j.expires_at, None);
    assert!(j.lease.is_none());
    assert!(j.response.is_none());
    assert!(j.error.is_none());

    let got = get(&store, j.id).await;
    assert_eq!(got.id, j.id);
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.revision, 1);
    assert_eq!(got.created_at, j.created_at);
    assert_eq!(got.status_at, j.status_at);
    assert_eq!(got.request.method, Method::POST);
    assert_eq!(got.request.path_and_query.as_str(), "/run?x=1");
    assert_eq!(got.request.headers["content-type"], "application/json");
    assert_eq!(body_of(&got), b"hello");
    assert_eq!(got.options.priority, Priority::LOW);
    assert_eq!(got.options.owner.as_deref(), Some("alice"));

    // A second job gets another id.
    let other = enqueue(&store, job("hello")).await;
    assert_ne!(other.id, j.id);
}

pub async fn get_of_an_unknown_id_is_none<St: Store>(store: St) {
    assert!(store.get(JobId::random()).await.unwrap().is_none());
    enqueue(&store, job("a")).await;
    assert!(store.get(JobId::random()).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// Claim
// ---------------------------------------------------------------------------

pub async fn claim_on_an_empty_store_is_none<St: Store>(store: St) {
    assert!(claim(&store).await.is_none());
    assert!(store.claim(LEASE, Some(secs(1))).await.unwrap().is_none());
    let j = enqueue(&store, job("a")).await;
    assert_eq!(claim(&store).await.unwrap().id(), j.id);
    assert!(
        claim(&store).await.is_none(),
        "an in-progress job is not claimed"
    );
}

pub async fn claim_marks_in_progress_with_a_lease<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    advance(secs(3)).await;
    let now = Timestamp::now();
    let c = claim_with(&store, secs(20)).await;
    assert_eq!(c.id(), j.id);
    assert_eq!(c.job.status, JobStatus::InProgress);
    assert_eq!(c.job.attempts, 1);
    assert!(c.job.revision > j.revision);
    assert_eq!(c.job.status_at, now);
    assert_eq!(c.job.started_at, Some(now));
    assert_eq!(c.job.created_at, j.created_at);
    assert_eq!(c.lease.until, now.after(secs(20)));
    assert_eq!(c.job.lease, Some(c.lease));
    assert_eq!(c.token(), c.lease.token);
    assert_eq!(body_of(&c.job), b"a");

    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::InProgress);
    assert_eq!(got.attempts, 1);
    assert_eq!(got.revision, c.job.revision);
    assert_eq!(got.lease, Some(c.lease));
}

pub async fn claim_takes_priority_0_then_1_then_2<St: Store>(store: St) {
    // Enqueued lowest first, so that age alone would give the opposite order.
    enqueue(&store, job_with("low", |o| o.priority = Priority::LOW)).await;
    advance(ms(10)).await;
    enqueue(
        &store,
        job_with("normal", |o| o.priority = Priority::NORMAL),
    )
    .await;
    advance(ms(10)).await;
    enqueue(&store, job_with("high", |o| o.priority = Priority::HIGH)).await;
    assert_eq!(drain(&store).await, ["high", "normal", "low"]);

    // Strict without aging, however long the low one waited.
    enqueue(&store, job_with("low2", |o| o.priority = priority(2))).await;
    advance(secs(300)).await;
    enqueue(&store, job_with("high2", |o| o.priority = priority(0))).await;
    assert_eq!(drain(&store).await, ["high2", "low2"]);
}

pub async fn claim_is_fifo_within_a_level<St: Store>(store: St) {
    let names: Vec<String> = (0..10).map(|i| format!("job{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        enqueue(&store, job(name)).await;
        // Half of them in the same millisecond as the one before.
        if i % 2 == 1 {
            advance(ms(1)).await;
        }
    }
    enqueue(&store, job_with("urgent", |o| o.priority = Priority::HIGH)).await;
    let mut expected = vec!["urgent".to_string()];
    expected.extend(names);
    assert_eq!(drain(&store).await, expected);
}

pub async fn priority_aging_lifts_a_job_that_waited<St: Store>(store: St) {
    let aging = Some(secs(10));
    enqueue(&store, job_with("low", |o| o.priority = Priority::LOW)).await;
    advance(secs(10)).await;
    enqueue(&store, job_with("high", |o| o.priority = Priority::HIGH)).await;
    // One period: the low job competes as level 1, still behind level 0.
    let c = store.claim(LEASE, aging).await.unwrap().unwrap();
    assert_eq!(body_of(&c.job), b"high");

    enqueue(
        &store,
        job_with("high again", |o| o.priority = Priority::HIGH),
    )
    .await;
    advance(secs(10)).await;
    // Two periods: as level 0, and ready longer than the fresh level-0 job.
    let c = store.claim(LEASE, aging).await.unwrap().unwrap();
    assert_eq!(body_of(&c.job), b"low");
    let c = store.claim(LEASE, aging).await.unwrap().unwrap();
    assert_eq!(body_of(&c.job), b"high again");
    assert!(store.claim(LEASE, aging).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// Complete, extend and fencing
// ---------------------------------------------------------------------------

pub async fn complete_with_a_2xx_succeeds<St: Store>(store: St) {
    let j = enqueue(&store, job_with("a", |o| o.result_ttl = secs(100))).await;
    let c = claim(&store).await.unwrap();
    advance(secs(2)).await;
    let now = Timestamp::now();
    let done = complete(&store, &c, 201).await;
    assert_eq!(done.id, j.id);
    assert_eq!(done.status, JobStatus::Succeeded);
    assert!(done.revision > c.job.revision);
    assert_eq!(done.status_at, now);
    assert_eq!(done.completed_at, Some(now));
    assert_eq!(done.expires_at, Some(now.after(secs(100))));
    assert_eq!(done.attempts, 1);
    assert!(done.lease.is_none());
    assert!(done.error.is_none());
    let r = done.response.as_ref().unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body, Bytes::from_static(b"{\"status\":201}"));

    let got = get(&store, j.id).await;
    assert_unchanged(&done, &got);
    // A finished job is not claimed again.
    assert!(claim(&store).await.is_none());
}

pub async fn complete_with_400_or_500_fails_and_keeps_the_response<St: Store>(store: St) {
    for status in [400, 500] {
        let j = enqueue(&store, job(&format!("{status}"))).await;
        let c = claim(&store).await.unwrap();
        assert_eq!(c.id(), j.id);
        let done = complete(&store, &c, status).await;
        assert_eq!(done.status, JobStatus::Failed, "{status}");
        let got = get(&store, j.id).await;
        assert_eq!(got.status, JobStatus::Failed);
        let r = got.response.as_ref().expect("the response is kept");
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.body, Bytes::from(format!("{{\"status\":{status}}}")));
        assert!(got.completed_at.is_some());
    }
    assert!(claim(&store).await.is_none());
}

pub async fn complete_with_an_error_fails<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let c = claim(&store).await.unwrap();
    let error = JobError::new(ErrorCode::ExecutionTimeout, "took too long");
    let done = store
        .complete(c.id(), c.token(), Outcome::error(error.clone()))
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Failed);
    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::Failed);
    assert_eq!(got.error, Some(error));
    assert!(got.response.is_none());
}

pub async fn complete_status_records_what_complete_would<St: Store>(store: St) {
    let a = enqueue(&store, job_with("a", |o| o.result_ttl = secs(100))).await;
    let b = enqueue(&store, job_with("b", |o| o.result_ttl = secs(100))).await;
    let ca = claim(&store).await.unwrap();
    let cb = claim(&store).await.unwrap();
    assert_eq!((ca.id(), cb.id()), (a.id, b.id));
    advance(secs(2)).await;
    let done = complete(&store, &ca, 201).await;
    let status = store
        .complete_status(cb.id(), cb.token(), Outcome::response(response(201)))
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);
    let got = get(&store, b.id).await;
    assert_eq!(got.status, JobStatus::Succeeded);
    assert_eq!(got.revision, done.revision);
    assert_eq!(got.status_at, done.status_at);
    assert_eq!(got.completed_at, done.completed_at);
    assert_eq!(got.expires_at, done.expires_at);
    assert!(got.lease.is_none());
    assert_eq!(
        got.response.as_ref().map(|r| r.status),
        Some(StatusCode::CREATED)
    );
    assert_eq!(
        store
            .complete_status(
                cb.id(),
                cb.token(),
                Outcome::error(JobError::new(ErrorCode::UpstreamError, "x"))
            )
            .await
            .map_err(|e| e.is_stale_lease()),
        Err(true),
        "fenced like complete"
    );
    let c = enqueue(&store, job("c")).await;
    let cc = claim(&store).await.unwrap();
    assert_eq!(cc.id(), c.id);
    let error = JobError::new(ErrorCode::ExecutionTimeout, "took too long");
    let status = store
        .complete_status(cc.id(), cc.token(), Outcome::error(error.clone()))
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(get(&store, c.id).await.error, Some(error));
    assert_eq!(stats(&store).await.in_progress, 0);
}

/// Completions made at the same time (which a store may send together) each
/// get their own answer: every job recorded, a stale one refused alone.
pub async fn concurrent_completions_each_get_their_own_answer<St: Store>(store: St) {
    const JOBS: usize = 12;
    let store = Arc::new(store);
    for i in 0..JOBS {
        enqueue(&*store, job(&format!("{i}"))).await;
    }
    let claims = futures_join((0..JOBS).map(|_| {
        let store = store.clone();
        async move { claim(&*store).await.expect("a job for each claim") }
    }))
    .await;
    let ids: HashSet<JobId> = claims.iter().map(Claim::id).collect();
    assert_eq!(ids.len(), JOBS, "concurrent claims hand out distinct jobs");
    // The first claim's job was canceled meanwhile: its completion is stale.
    store.cancel(claims[0].id(), None).await.unwrap();
    let answers = futures_join(claims.iter().enumerate().map(|(i, c)| {
        let store = store.clone();
        let (id, token) = (c.id(), c.token());
        async move {
            let outcome = Outcome::response(response(200 + i as u16));
            if i % 2 == 0 {
                store.complete_status(id, token, outcome).await
            } else {
                store.complete(id, token, outcome).await.map(|job| {
                    assert_eq!(job.id, id);
                    assert_eq!(
                        job.response.map(|r| r.status.as_u16()),
                        Some(200 + i as u16)
                    );
                    job.status
                })
            }
        }
    }))
    .await;
    for (i, (answer, c)) in answers.into_iter().zip(&claims).enumerate() {
        let got = get(&*store, c.id()).await;
        if i == 0 {
            assert!(answer.unwrap_err().is_stale_lease());
            assert_eq!(got.status, JobStatus::Canceled);
        } else {
            assert_eq!(answer.unwrap(), JobStatus::Succeeded);
            assert_eq!(got.status, JobStatus::Succeeded);
            assert_eq!(
                got.response.map(|r| r.status.as_u16()),
                Some(200 + i as u16)
            );
        }
    }
    let s = stats(&*store).await;
    assert_eq!((s.queued, s.in_progress), (0, 0));
}

/// Runs the futures at the same time (each a task) and gives their outputs
/// in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub async fn extend_renews_the_lease<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let c = claim_with(&store, secs(10)).await;
    advance(secs(8)).await;
    let now = Timestamp::now();
    let renewed = store.extend(j.id, c.token(), secs(10)).await.unwrap();
    assert_eq!(renewed.token, c.token());
    assert_eq!(renewed.until, now.after(secs(10)));
    let got = get(&store, j.id).await;
    assert_eq!(got.lease, Some(renewed));
    assert_eq!(got.revision, c.job.revision, "a heartbeat is not a change");
    // Past the first lease, within the renewed one: still this worker's.
    advance(secs(8)).await;
    store.sweep().await.unwrap();
    assert!(claim(&store).await.is_none());
    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::InProgress);
    assert_eq!(got.lease, Some(renewed));
    let done = complete(&store, &c, 200).await;
    assert_eq!(done.status, JobStatus::Succeeded);
}

pub async fn a_stale_token_is_refused_after_a_lapse_and_a_new_claim<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let first = claim_with(&store, secs(5)).await;
    advance(secs(6)).await;
    // `claim` applies the lapse itself.
    let second = claim(&store)
        .await
        .expect("the lapsed job is claimed again");
    assert_eq!(second.id(), j.id);
    assert!(
        second.token() > first.token(),
        "tokens of one job only grow"
    );
    assert_eq!((second.job.attempts, second.job.lapses), (1, 1));
    assert_fenced(&store, &first).await;
    // The current holder is unaffected.
    store.extend(j.id, second.token(), LEASE).await.unwrap();
    let done = complete(&store, &second, 200).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    // And the stale one still cannot overwrite the result.
    assert_fenced(&store, &first).await;
    assert_eq!(get(&store, j.id).await.status, JobStatus::Succeeded);
}

pub async fn a_terminal_job_never_changes<St: Store>(store: St) {
    let j = enqueue(
        &store,
        job_with("a", |o| {
            o.max_time_in_queue = secs(10);
            o.result_ttl = secs(3600);
        }),
    )
    .await;
    let c = claim_with(&store, secs(5)).await;
    let done = complete(&store, &c, 200).await;
    assert_eq!(done.status, JobStatus::Succeeded);

    assert_fenced(&store, &c).await;
    match store.cancel(j.id, None).await.unwrap() {
        CancelOutcome::AlreadyTerminal(job) => assert_unchanged(&done, &job),
        other => panic!("cancel of a terminal job: {other:?}"),
    }
    match store.cancel_queued(j.id, None).await.unwrap() {
        QueuedCancel::NotQueued(job) => assert_unchanged(&done, &job),
        other => panic!("cancel_queued of a terminal job: {other:?}"),
    }
    // Past its queue deadline and its old lease: nothing applies to it.
    advance(secs(60)).await;
    store.sweep().await.unwrap();
    assert!(claim(&store).await.is_none());
    assert_unchanged(&done, &get(&store, j.id).await);

    // The same for the other terminal states.
    let canceled = enqueue(&store, job("b")).await;
    let CancelOutcome::Canceled(canceled) = store.cancel(canceled.id, None).await.unwrap() else {
        panic!("a queued job cancels");
    };
    let expired = enqueue(&store, job_with("c", |o| o.max_time_in_queue = secs(1))).await;
    advance(secs(2)).await;
    store.sweep().await.unwrap();
    let expired = get(&store, expired.id).await;
    assert_eq!(expired.status, JobStatus::Expired);
    for ended in [canceled, expired] {
        match store.cancel(ended.id, None).await.unwrap() {
            CancelOutcome::AlreadyTerminal(job) => assert_unchanged(&ended, &job),
            other => panic!("cancel of a terminal job: {other:?}"),
        }
        advance(secs(700)).await;
        store.sweep().await.unwrap();
        assert!(claim(&store).await.is_none());
        assert_unchanged(&ended, &get(&store, ended.id).await);
    }
}

// ---------------------------------------------------------------------------
// Retry later
// ---------------------------------------------------------------------------

pub async fn retry_later_without_spending_refunds_the_attempt<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let c = claim(&store).await.unwrap();
    assert_eq!(c.job.attempts, 1);
    let now = Timestamp::now();
    let queued = store
        .retry_later(j.id, c.token(), retry(now, false))
        .await
        .unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    assert_eq!(
        queued.attempts, 0,
        "an unavailable upstream spends no attempt"
    );
    assert!(queued.lease.is_none());
    assert_eq!(error_code(&queued), Some(ErrorCode::UpstreamUnavailable));
    assert!(queued.revision > c.job.revision);
    assert_fenced(&store, &c).await;

    // Due now: claimable at once, and counted as a first attempt again.
    let c = claim(&store).await.expect("a retry due now is claimable");
    assert_eq!(c.id(), j.id);
    assert_eq!(c.job.attempts, 1);
    assert!(c.job.error.is_none(), "a new attempt clears the last error");

    // Spending the attempt keeps it.
    let at = Timestamp::now().after(secs(1));
    let queued = store
        .retry_later(j.id, c.token(), retry(at, true))
        .await
        .unwrap();
    assert_eq!(queued.attempts, 1);
    assert_eq!(queued.retry_at, Some(at));
    advance(secs(1)).await;
    let c = claim(&store).await.expect("the retry came due");
    assert_eq!(c.job.attempts, 2);
}

pub async fn a_retrying_job_is_not_claimable_before_its_time<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let c = claim(&store).await.unwrap();
    let at = Timestamp::now().after(secs(5));
    let queued = store
        .retry_later(j.id, c.token(), retry(at, true))
        .await
        .unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    assert_eq!(queued.retry_at, Some(at));
    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.retry_at, Some(at));
    assert_eq!(got.attempts, 1);

    assert!(claim(&store).await.is_none());
    advance(ms(4_999)).await;
    store.sweep().await.unwrap();
    assert!(claim(&store).await.is_none(), "1 ms before its time");
    advance(ms(2)).await;
    store.sweep().await.unwrap();
    let c = claim(&store).await.expect("claimable once its time came");
    assert_eq!(c.id(), j.id);
    assert_eq!(c.job.attempts, 2);
    assert_eq!(c.job.retry_at, None);
}

pub async fn a_retried_job_queues_behind_fresh_work<St: Store>(store: St) {
    // Handed back due at once, after fresh work arrived: behind it.
    enqueue(&store, job("first")).await;
    let c = claim(&store).await.unwrap();
    advance(secs(1)).await;
    enqueue(&store, job("fresh")).await;
    store
        .retry_later(c.id(), c.token(), retry(Timestamp::now(), false))
        .await
        .unwrap();
    assert_eq!(drain(&store).await, ["fresh", "first"]);

    // Coming due after fresh work arrived during its backoff: behind it too,
    // though it was submitted first.
    let old = enqueue(&store, job("old")).await;
    advance(secs(1)).await;
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), old.id);
    let at = Timestamp::now().after(secs(2));
    store
        .retry_later(c.id(), c.token(), retry(at, true))
        .await
        .unwrap();
    advance(secs(1)).await;
    enqueue(&store, job("new")).await;
    advance(secs(2)).await;
    store.sweep().await.unwrap();
    assert_eq!(drain(&store).await, ["new", "old"]);
}

// ---------------------------------------------------------------------------
// Lease lapse
// ---------------------------------------------------------------------------

pub async fn a_lapsed_lease_requeues_the_job<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let c = claim_with(&store, secs(5)).await;
    advance(ms(4_999)).await;
    store.sweep().await.unwrap();
    assert_eq!(get(&store, j.id).await.status, JobStatus::InProgress);

    advance(secs(2)).await;
    store.sweep().await.unwrap();
    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::Queued);
    assert!(got.lease.is_none());
    assert_eq!(error_code(&got), Some(ErrorCode::LeaseExpired));
    assert!(got.revision > c.job.revision);
    assert_eq!(
        (got.attempts, got.lapses),
        (0, 1),
        "a lapse spends no attempt"
    );
    let s = stats(&store).await;
    assert_eq!((s.queued, s.in_progress), (1, 0));

    assert_fenced(&store, &c).await;
    let again = claim(&store).await.expect("claimable again");
    assert_eq!(again.id(), j.id);
    assert_eq!(again.job.attempts, 1);
    assert_fenced(&store, &c).await;
    complete(&store, &again, 200).await;
}

// ---------------------------------------------------------------------------
// Queue deadline
// ---------------------------------------------------------------------------

pub async fn a_queued_job_past_its_deadline_expires_on_sweep<St: Store>(store: St) {
    let j = enqueue(&store, job_with("a", |o| o.max_time_in_queue = secs(10))).await;
    advance(ms(9_999)).await;
    store.sweep().await.unwrap();
    assert_eq!(get(&store, j.id).await.status, JobStatus::Queued);
    advance(ms(2)).await;
    store.sweep().await.unwrap();
    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::Expired);
    assert_eq!(error_code(&got), Some(ErrorCode::QueueTimeout));
    assert_eq!(got.attempts, 0);
    assert!(got.completed_at.is_some());
    assert!(got.revision > j.revision);
    assert!(claim(&store).await.is_none());
    assert_eq!(stats(&store).await, QueueStats::default());

    // A retrying job is still bound by its deadline.
    let r = enqueue(&store, job_with("b", |o| o.max_time_in_queue = secs(10))).await;
    let c = claim(&store).await.unwrap();
    let at = Timestamp::now().after(secs(60));
    store
        .retry_later(r.id, c.token(), retry(at, true))
        .await
        .unwrap();
    advance(secs(11)).await;
    store.sweep().await.unwrap();
    let got = get(&store, r.id).await;
    assert_eq!(got.status, JobStatus::Expired);
    assert_eq!(error_code(&got), Some(ErrorCode::QueueTimeout));
    advance(secs(60)).await;
    assert!(claim(&store).await.is_none());
    assert_eq!(stats(&store).await, QueueStats::default());
}

pub async fn claim_expires_a_job_past_its_deadline_without_a_sweep<St: Store>(store: St) {
    let a = enqueue(&store, job_with("a", |o| o.max_time_in_queue = secs(10))).await;
    let b = enqueue(&store, job_with("b", |o| o.max_time_in_queue = secs(10))).await;
    let later = enqueue(&store, job_with("later", |o| o.priority = Priority::LOW)).await;
    advance(ms(9_999)).await;
    let c = claim(&store).await.expect("just before its deadline");
    assert_eq!(c.id(), a.id);
    // At its deadline, b is never handed out: the claim passes it by.
    advance(ms(1)).await;
    let c = claim(&store).await.expect("the job behind the expired one");
    assert_eq!(c.id(), later.id);
    let got = get(&store, b.id).await;
    assert_eq!(got.status, JobStatus::Expired);
    assert_eq!(error_code(&got), Some(ErrorCode::QueueTimeout));
    assert!(claim(&store).await.is_none());

    // Alone in the store: the claim answers none.
    let d = enqueue(&store, job_with("d", |o| o.max_time_in_queue = secs(1))).await;
    advance(secs(2)).await;
    assert!(claim(&store).await.is_none());
    assert_eq!(get(&store, d.id).await.status, JobStatus::Expired);
}

// ---------------------------------------------------------------------------
// Result TTL
// ---------------------------------------------------------------------------

pub async fn a_result_is_forgotten_after_its_ttl<St: Store>(store: St) {
    let key = "key-1";
    let j = enqueue(
        &store,
        job_with("a", |o| {
            o.result_ttl = secs(60);
            o.idempotency_key = Some(key.into());
        }),
    )
    .await;
    let c = claim(&store).await.unwrap();
    let done = complete(&store, &c, 200).await;
    let expires_at = done.expires_at.unwrap();
    assert_eq!(expires_at, Timestamp::now().after(secs(60)));
    assert_eq!(store.sweep().await.unwrap(), Some(expires_at));

    advance(ms(59_999)).await;
    store.sweep().await.unwrap();
    assert_unchanged(&done, &get(&store, j.id).await);

    // Gone for every reader at once, before any sweep.
    advance(ms(1)).await;
    assert!(store.get(j.id).await.unwrap().is_none());
    let until = Timestamp::now().after(secs(30));
    assert!(store.wait(j.id, 0, until).await.unwrap().is_none());
    assert!(store
        .wait(j.id, done.revision, until)
        .await
        .unwrap()
        .is_none());
    assert!(
        Timestamp::now() < until,
        "wait on a forgotten job returns at once"
    );
    assert!(matches!(
        store.cancel(j.id, None).await.unwrap(),
        CancelOutcome::NotFound
    ));

    // The sweep removes it: nothing is due any more.
    assert_eq!(store.sweep().await.unwrap(), None);
    assert!(store.get(j.id).await.unwrap().is_none());
    assert!(store.wait(j.id, 0, until).await.unwrap().is_none());
    assert_eq!(stats(&store).await, QueueStats::default());
    // Its idempotency key is free again.
    let again = store
        .enqueue(
            job_with("a", |o| o.idempotency_key = Some(key.into())),
            NO_LIMIT,
        )
        .await
        .unwrap();
    assert!(again.created);
    assert_ne!(again.job.id, j.id);
}

// ---------------------------------------------------------------------------
// Wait and work_available
// ---------------------------------------------------------------------------

pub async fn wait_returns_at_once_when_the_job_is_newer<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let start = Timestamp::now();
    let until = start.after(secs(60));
    let got = store.wait(j.id, 0, until).await.unwrap().unwrap();
    assert_eq!(got.revision, j.revision);
    assert_eq!(Timestamp::now(), start, "no time passed");

    let c = claim(&store).await.unwrap();
    let got = store.wait(j.id, j.revision, until).await.unwrap().unwrap();
    assert_eq!(got.status, JobStatus::InProgress);
    assert_eq!(got.revision, c.job.revision);
    assert_eq!(Timestamp::now(), start, "no time passed");
}

pub async fn wait_resolves_when_the_job_changes<St: Store>(store: St) {
    let store = Arc::new(store);
    enqueue(&*store, job("a")).await;
    let c = claim(&*store).await.unwrap();
    let seen = c.job.revision;
    let start = Timestamp::now();
    let until = start.after(secs(60));
    let worker = tokio::spawn({
        let (store, c) = (store.clone(), c.clone());
        async move {
            tokio::time::sleep(secs(5)).await;
            complete(&*store, &c, 200).await
        }
    });
    let got = store.wait(c.id(), seen, until).await.unwrap().unwrap();
    let woke = Timestamp::now();
    assert!(woke < until, "woken by the change, not by its until");
    assert_eq!(woke, start.after(secs(5)));
    assert_eq!(got.status, JobStatus::Succeeded);
    assert!(got.revision > seen);
    let done = worker.await.unwrap();
    assert_eq!(got.revision, done.revision);

    // A cancel wakes a waiter too.
    let j = enqueue(&*store, job("b")).await;
    let canceler = tokio::spawn({
        let store = store.clone();
        async move {
            tokio::time::sleep(secs(3)).await;
            store.cancel(j.id, None).await.unwrap()
        }
    });
    let start = Timestamp::now();
    let got = store
        .wait(j.id, j.revision, start.after(secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Timestamp::now(), start.after(secs(3)));
    assert_eq!(got.status, JobStatus::Canceled);
    assert!(matches!(
        canceler.await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
}

pub async fn wait_resolves_at_until_when_nothing_happens<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let until = Timestamp::now().after(secs(5));
    let got = store.wait(j.id, j.revision, until).await.unwrap().unwrap();
    assert!(Timestamp::now() >= until);
    assert!(Timestamp::now() < until.after(secs(1)));
    assert_eq!(got.id, j.id);
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.revision, j.revision);

    // A heartbeat is not a change: a waiter on a running job sleeps through it.
    let c = claim(&store).await.unwrap();
    let store = Arc::new(store);
    let heart = tokio::spawn({
        let store = store.clone();
        let c = c.clone();
        async move {
            tokio::time::sleep(secs(2)).await;
            store.extend(c.id(), c.token(), LEASE).await.unwrap()
        }
    });
    let until = Timestamp::now().after(secs(5));
    let got = store
        .wait(j.id, c.job.revision, until)
        .await
        .unwrap()
        .unwrap();
    assert!(Timestamp::now() >= until);
    assert_eq!(got.status, JobStatus::InProgress);
    assert_eq!(got.revision, c.job.revision);
    heart.await.unwrap();
}

pub async fn wait_on_an_unknown_job_is_none<St: Store>(store: St) {
    let start = Timestamp::now();
    let got = store
        .wait(JobId::random(), 0, start.after(secs(60)))
        .await
        .unwrap();
    assert!(got.is_none());
    assert_eq!(Timestamp::now(), start);
}

/// Waits with `work_available` until a claim finds a job, or until `until`.
///
/// A store may wake a worker when there turns out to be nothing to claim
/// (after it reconnects, say), so an early wake-up is allowed, but only a
/// few of them: a `work_available` that returns at once every time (a worker
/// spinning) fails.
async fn claim_when_available<St: Store>(store: &St, until: Timestamp) -> Option<Claim> {
    for _ in 0..4 {
        store.work_available(until).await;
        if let Some(c) = claim(store).await {
            return Some(c);
        }
        if Timestamp::now() >= until {
            return None;
        }
    }
    panic!(
        "work_available keeps waking with no work (at {})",
        Timestamp::now()
    );
}

pub async fn work_available_resolves_after_an_enqueue<St: Store>(store: St) {
    let store = Arc::new(store);
    let start = Timestamp::now();
    let until = start.after(secs(60));
    let producer = tokio::spawn({
        let store = store.clone();
        async move {
            tokio::time::sleep(secs(2)).await;
            enqueue(&*store, job("a")).await
        }
    });
    let c = claim_when_available(&*store, until)
        .await
        .expect("woken by the enqueue, not by its until");
    assert_eq!(
        Timestamp::now(),
        start.after(secs(2)),
        "woken at the enqueue"
    );
    let j = producer.await.unwrap();
    assert_eq!(c.id(), j.id);
    complete(&*store, &c, 200).await;

    // A retry coming due is work too.
    let r = enqueue(&*store, job("r")).await;
    let c = claim(&*store).await.unwrap();
    let start = Timestamp::now();
    store
        .retry_later(r.id, c.token(), retry(start.after(secs(5)), true))
        .await
        .unwrap();
    let c = claim_when_available(&*store, start.after(secs(60)))
        .await
        .expect("woken when the retry came due");
    assert_eq!(c.id(), r.id);
    assert_eq!(Timestamp::now(), start.after(secs(5)));
    complete(&*store, &c, 200).await;

    // With nothing coming, it waits until `until`.
    let until = Timestamp::now().after(secs(5));
    assert!(claim_when_available(&*store, until).await.is_none());
    assert!(Timestamp::now() >= until);
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

pub async fn cancel_of_a_queued_job<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    advance(secs(1)).await;
    let now = Timestamp::now();
    let CancelOutcome::Canceled(canceled) = store.cancel(j.id, None).await.unwrap() else {
        panic!("a queued job cancels");
    };
    assert_eq!(canceled.id, j.id);
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!(canceled.status_at, now);
    assert_eq!(canceled.completed_at, Some(now));
    assert_eq!(error_code(&canceled), Some(ErrorCode::Canceled));
    assert!(canceled.revision > j.revision);
    assert_unchanged(&canceled, &get(&store, j.id).await);
    assert!(claim(&store).await.is_none(), "a canceled job never runs");
    advance(secs(700)).await;
    store.sweep().await.unwrap();
    assert!(claim(&store).await.is_none(), "a canceled job never runs");
    assert_eq!(get(&store, j.id).await.status, JobStatus::Canceled);
}

pub async fn cancel_of_a_running_job_fences_its_worker<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    let c = claim(&store).await.unwrap();
    let CancelOutcome::Canceled(canceled) = store.cancel(j.id, None).await.unwrap() else {
        panic!("a running job cancels");
    };
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert!(canceled.lease.is_none());
    assert_fenced(&store, &c).await;
    assert_eq!(get(&store, j.id).await.status, JobStatus::Canceled);
    let s = stats(&store).await;
    assert_eq!((s.queued, s.in_progress), (0, 0));
    // Its lease lapsing later changes nothing.
    advance(LEASE + secs(1)).await;
    store.sweep().await.unwrap();
    assert!(claim(&store).await.is_none());
    assert_unchanged(&canceled, &get(&store, j.id).await);
}

pub async fn cancel_is_scoped_to_the_owner<St: Store>(store: St) {
    let j = enqueue(&store, job_with("a", |o| o.owner = Some("alice".into()))).await;
    for other in [Some("bob"), None, Some("alic"), Some("alice ")] {
        assert!(
            matches!(
                store.cancel(j.id, other).await.unwrap(),
                CancelOutcome::NotFound
            ),
            "cancel by {other:?}"
        );
        assert!(matches!(
            store.cancel_queued(j.id, other).await.unwrap(),
            QueuedCancel::NotFound
        ));
    }
    assert_unchanged(&j, &get(&store, j.id).await);

    // A job without owner is not anyone's to cancel but an ownerless caller's.
    let open = enqueue(&store, job("b")).await;
    assert!(matches!(
        store.cancel(open.id, Some("alice")).await.unwrap(),
        CancelOutcome::NotFound
    ));
    assert!(matches!(
        store.cancel(JobId::random(), None).await.unwrap(),
        CancelOutcome::NotFound
    ));
    assert!(matches!(
        store.cancel(JobId::random(), Some("alice")).await.unwrap(),
        CancelOutcome::NotFound
    ));
    assert_unchanged(&open, &get(&store, open.id).await);

    assert!(matches!(
        store.cancel(j.id, Some("alice")).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert!(matches!(
        store.cancel(open.id, None).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert!(claim(&store).await.is_none());
}

pub async fn cancel_queued_cancels_only_queued_jobs<St: Store>(store: St) {
    let running = enqueue(&store, job("running")).await;
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), running.id);
    let queued = enqueue(&store, job("queued")).await;
    match store.cancel_queued(running.id, None).await.unwrap() {
        QueuedCancel::NotQueued(job) => assert_eq!(job.status, JobStatus::InProgress),
        other => panic!("cancel_queued of a running job: {other:?}"),
    }
    let got = get(&store, running.id).await;
    assert_eq!(got.status, JobStatus::InProgress);
    assert_eq!(got.revision, c.job.revision);
    match store.cancel_queued(queued.id, None).await.unwrap() {
        QueuedCancel::Canceled(job) => assert_eq!(job.status, JobStatus::Canceled),
        other => panic!("cancel_queued of a queued job: {other:?}"),
    }
    assert!(matches!(
        store.cancel_queued(JobId::random(), None).await.unwrap(),
        QueuedCancel::NotFound
    ));
    assert!(claim(&store).await.is_none());
    complete(&store, &c, 200).await;
}

// ---------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------

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

pub async fn stats_track_every_transition<St: Store>(store: St) {
    assert_eq!(stats(&store).await, QueueStats::default());
    let p1a = enqueue(&store, job_with("p1a", |o| o.priority = priority(1))).await;
    advance(secs(1)).await;
    let p0 = enqueue(&store, job_with("p0", |o| o.priority = priority(0))).await;
    advance(secs(1)).await;
    let p1b = enqueue(&store, job_with("p1b", |o| o.priority = priority(1))).await;
    advance(secs(1)).await;
    let p2 = enqueue(&store, job_with("p2", |o| o.priority = priority(2))).await;
    assert_eq!(
        stats(&store).await,
        expect_stats([1, 2, 1], 0, 0, Some(p1a.created_at))
    );

    // Claim: p0 runs.
    let c0 = claim(&store).await.unwrap();
    assert_eq!(c0.id(), p0.id);
    assert_eq!(
        stats(&store).await,
        expect_stats([0, 2, 1], 0, 1, Some(p1a.created_at))
    );

    // Claim: p1a runs; the oldest ready job is now p1b.
    let c1 = claim(&store).await.unwrap();
    assert_eq!(c1.id(), p1a.id);
    assert_eq!(
        stats(&store).await,
        expect_stats([0, 1, 1], 0, 2, Some(p1b.created_at))
    );

    // p0 waits out a backoff: queued and retrying, not ready.
    let at = Timestamp::now().after(secs(10));
    store
        .retry_later(p0.id, c0.token(), retry(at, false))
        .await
        .unwrap();
    assert_eq!(
        stats(&store).await,
        expect_stats([0, 1, 1], 1, 1, Some(p1b.created_at))
    );

    // Cancel of queued jobs: p1b, then p2. Only the retrying job is queued.
    assert!(matches!(
        store.cancel(p1b.id, None).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert_eq!(
        stats(&store).await,
        expect_stats([0, 0, 1], 1, 1, Some(p2.created_at))
    );
    assert!(matches!(
        store.cancel_queued(p2.id, None).await.unwrap(),
        QueuedCancel::Canceled(_)
    ));
    assert_eq!(stats(&store).await, expect_stats([0, 0, 0], 1, 1, None));

    // Complete p1a.
    complete(&store, &c1, 200).await;
    assert_eq!(stats(&store).await, expect_stats([0, 0, 0], 1, 0, None));

    // p0's backoff ends: ready again.
    advance(secs(10)).await;
    store.sweep().await.unwrap();
    assert_eq!(
        stats(&store).await,
        expect_stats([1, 0, 0], 0, 0, Some(p0.created_at))
    );

    // Claimed, lapsed, back in the queue; then claimed and canceled running.
    let c0 = claim_with(&store, secs(5)).await;
    assert_eq!(stats(&store).await, expect_stats([0, 0, 0], 0, 1, None));
    advance(secs(6)).await;
    store.sweep().await.unwrap();
    assert_eq!(
        stats(&store).await,
        expect_stats([1, 0, 0], 0, 0, Some(p0.created_at))
    );
    let c0b = claim(&store).await.unwrap();
    assert!(c0b.token() > c0.token());
    assert_eq!(stats(&store).await, expect_stats([0, 0, 0], 0, 1, None));
    assert!(matches!(
        store.cancel(p0.id, None).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert_eq!(stats(&store).await, QueueStats::default());

    // Cancel of a job waiting out a backoff.
    let r = enqueue(&store, job("r")).await;
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), r.id);
    let at = Timestamp::now().after(secs(10));
    store
        .retry_later(r.id, c.token(), retry(at, true))
        .await
        .unwrap();
    assert_eq!(stats(&store).await, expect_stats([0, 0, 0], 1, 0, None));
    assert!(matches!(
        store.cancel(r.id, None).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert_eq!(stats(&store).await, QueueStats::default());
    advance(secs(11)).await;
    store.sweep().await.unwrap();
    assert!(claim(&store).await.is_none());
    assert_eq!(stats(&store).await, QueueStats::default());

    // Expiry of a queued job.
    let e = enqueue(&store, job_with("e", |o| o.max_time_in_queue = secs(5))).await;
    assert_eq!(
        stats(&store).await,
        expect_stats([0, 1, 0], 0, 0, Some(e.created_at))
    );
    advance(secs(6)).await;
    store.sweep().await.unwrap();
    assert_eq!(stats(&store).await, QueueStats::default());
}

// ---------------------------------------------------------------------------
// Queue limit
// ---------------------------------------------------------------------------

pub async fn enqueue_refuses_past_max_queued<St: Store>(store: St) {
    const N: usize = 3;
    let mut ids = Vec::new();
    for i in 0..N {
        let e = store.enqueue(job(&format!("{i}")), N).await.unwrap();
        assert!(e.created);
        ids.push(e.job.id);
    }
    match store.enqueue(job("one too many"), N).await {
        Err(EnqueueError::QueueFull { limit }) => assert_eq!(limit, N),
        other => panic!("enqueue into a full queue: {other:?}"),
    }
    assert_eq!(stats(&store).await.queued, N as u64);
    // The refused job is nowhere.
    assert_eq!(drain_ids(&store, N).await.len(), N);
    assert!(claim(&store).await.is_none());

    // Three more fill it again; claiming one makes room for one.
    for i in 0..N {
        store.enqueue(job(&format!("again {i}")), N).await.unwrap();
    }
    assert!(matches!(
        store.enqueue(job("full"), N).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    let c = claim(&store).await.unwrap();
    let e = store.enqueue(job("room"), N).await.unwrap();
    assert!(e.created);
    assert!(matches!(
        store.enqueue(job("full again"), N).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    // A job waiting out a backoff is still queued, and counts.
    store
        .retry_later(
            c.id(),
            c.token(),
            retry(Timestamp::now().after(secs(5)), true),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.enqueue(job("full with a retry"), N).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    assert_eq!(stats(&store).await.queued, N as u64 + 1);
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

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

fn keyed(body: &str, owner: Option<&str>, key: &str) -> NewJob {
    job_with(body, |o| {
        o.owner = owner.map(Into::into);
        o.idempotency_key = Some(key.into());
    })
}

pub async fn idempotent_enqueue_returns_the_first_job<St: Store>(store: St) {
    let first = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(first.created);
    advance(secs(1)).await;
    let second = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.job.created_at, first.job.created_at);
    assert_eq!(stats(&store).await.queued, 1);
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), first.job.id);
    assert!(claim(&store).await.is_none(), "only one job");

    // While it runs and after it ended, the key still answers with it.
    let third = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!third.created);
    assert_eq!(third.job.id, first.job.id);
    assert_eq!(third.job.status, JobStatus::InProgress);
    complete(&store, &c, 200).await;
    let fourth = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!fourth.created);
    assert_eq!(fourth.job.id, first.job.id);
    assert_eq!(fourth.job.status, JobStatus::Succeeded);
    assert!(claim(&store).await.is_none());
    // Even when the queue is full: it makes no job.
    let full = store
        .enqueue(keyed("same", Some("alice"), "k"), 0)
        .await
        .unwrap();
    assert!(!full.created);
    assert_eq!(full.job.id, first.job.id);
}

pub async fn idempotency_key_with_a_different_request_conflicts<St: Store>(store: St) {
    let first = enqueue(&store, keyed("one", Some("alice"), "k")).await;
    match store
        .enqueue(keyed("two", Some("alice"), "k"), NO_LIMIT)
        .await
    {
        Err(EnqueueError::IdempotencyConflict { existing }) => assert_eq!(existing, first.id),
        other => panic!("a different body under one key: {other:?}"),
    }
    // A different path is a different request too.
    let mut other_path = keyed("one", Some("alice"), "k");
    other_path.request.path_and_query = PathAndQuery::from_static("/elsewhere");
    assert!(matches!(
        store.enqueue(other_path, NO_LIMIT).await,
        Err(EnqueueError::IdempotencyConflict { .. })
    ));
    // So are a different query of the same length, and a different method.
    let mut other_query = keyed("one", Some("alice"), "k");
    other_query.request.path_and_query = PathAndQuery::from_static("/run?x=2");
    let mut other_method = keyed("one", Some("alice"), "k");
    other_method.request.method = Method::PUT;
    for other in [other_query, other_method] {
        assert!(matches!(
            store.enqueue(other, NO_LIMIT).await,
            Err(EnqueueError::IdempotencyConflict { .. })
        ));
    }
    // Headers are not compared: a retry with a new trace header is the
    // same request.
    let mut other_headers = keyed("one", Some("alice"), "k");
    other_headers
        .request
        .headers
        .insert("traceparent", "00-1-2-01".parse().unwrap());
    let again = store.enqueue(other_headers, NO_LIMIT).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.job.id, first.id);
    assert_eq!(stats(&store).await.queued, 1);
    assert_eq!(drain(&store).await, ["one"]);
}

pub async fn idempotency_keys_are_per_owner<St: Store>(store: St) {
    let alice = enqueue(&store, keyed("a", Some("alice"), "k")).await;
    let bob = store
        .enqueue(keyed("a", Some("bob"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(bob.created, "another owner's key is another key");
    assert_ne!(bob.job.id, alice.id);
    let nobody = store
        .enqueue(keyed("other body", None, "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(nobody.created);
    assert_ne!(nobody.job.id, alice.id);
    assert_ne!(nobody.job.id, bob.job.id);
    // Each owner's key still answers with its own job.
    let again = store
        .enqueue(keyed("a", Some("bob"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.job.id, bob.job.id);
    let ids: HashSet<JobId> = drain_ids(&store, 10).await.into_iter().collect();
    assert_eq!(ids, HashSet::from([alice.id, bob.job.id, nobody.job.id]));
}

pub async fn concurrent_enqueues_fill_the_queue_to_its_limit<St: Store>(store: St) {
    // Submissions that arrive together (Redis makes them in one call) are
    // counted one by one: exactly the limit is made, the rest are refused,
    // and each made job runs once.
    const LIMIT: usize = 4;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                store.enqueue(job(&format!("{i}")), LIMIT).await
            })
        })
        .collect();
    let mut made = HashSet::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => {
                assert!(e.created);
                made.insert(e.job.id);
            }
            Err(EnqueueError::QueueFull { limit }) => {
                assert_eq!(limit, LIMIT);
                refused += 1;
            }
            Err(e) => panic!("enqueue: {e:?}"),
        }
    }
    assert_eq!((made.len(), refused), (LIMIT, 10 - LIMIT));
    assert_eq!(stats(&*store).await.queued, LIMIT as u64);
    let ran: HashSet<JobId> = drain_ids(&*store, LIMIT).await.into_iter().collect();
    assert_eq!(ran, made);
    assert!(claim(&*store).await.is_none());
}

pub async fn concurrent_idempotent_enqueues_make_one_job<St: Store>(store: St) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                store
                    .enqueue(keyed("same", Some("alice"), "once"), NO_LIMIT)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|e| e.created).count(), 1);
    let ids: HashSet<JobId> = results.iter().map(|e| e.job.id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(stats(&*store).await.queued, 1);
    let c = claim(&*store).await.unwrap();
    assert!(ids.contains(&c.id()));
    assert!(claim(&*store).await.is_none());
}

// ---------------------------------------------------------------------------
// Concurrent claims
// ---------------------------------------------------------------------------

pub async fn concurrent_claims_hand_out_every_job_once<St: Store>(store: St) {
    const JOBS: usize = 500;
    const WORKERS: usize = 8;
    let store = Arc::new(store);
    let mut enqueued = HashSet::new();
    for i in 0..JOBS {
        let j = enqueue(
            &*store,
            job_with(&format!("{i}"), |o| o.priority = priority((i % 3) as u8)),
        )
        .await;
        enqueued.insert(j.id);
    }
    assert_eq!(enqueued.len(), JOBS);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(c) = claim(&*store).await {
                    assert_eq!(c.job.status, JobStatus::InProgress);
                    assert_eq!(c.job.attempts, 1);
                    mine.push(c);
                    tokio::task::yield_now().await;
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    let mut busy = 0;
    for w in workers {
        let mine = w.await.unwrap();
        busy += usize::from(!mine.is_empty());
        claimed.extend(mine);
    }
    assert!(busy > 1, "the claims interleaved");
    assert_eq!(claimed.len(), JOBS, "every job is handed out once");
    let ids: HashSet<JobId> = claimed.iter().map(Claim::id).collect();
    assert_eq!(ids, enqueued);
    assert_eq!(
        stats(&*store).await,
        expect_stats([0; 3], 0, JOBS as u64, None)
    );
    for c in &claimed {
        complete(&*store, c, 200).await;
    }
    assert_eq!(stats(&*store).await, QueueStats::default());
}
