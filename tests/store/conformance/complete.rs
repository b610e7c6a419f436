//! Completion: the outcome a job ends with, and that an ended job stays so.

use super::*;

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

/// `complete_and_claim` with its claim's answer: the job claimed with the
/// result, or, when the store answered none (it may), the one `claim` takes.
async fn complete_and_claim<St: Store>(
    store: &St,
    c: &Claim,
    outcome: Outcome,
) -> (Result<JobStatus, bool>, Option<Claim>) {
    let done = store
        .complete_and_claim(c.id(), c.token(), outcome, LEASE, Some(secs(60)))
        .await;
    let next = match done.next.unwrap() {
        Some(next) => Some(next),
        None => store.claim(LEASE, Some(secs(60))).await.unwrap(),
    };
    (done.status.map_err(|e| e.is_stale_lease()), next)
}

/// A result recorded with the claim of the next job: the result as
/// `complete_status` records it, the next job as `claim` takes it (by
/// priority), claimed whatever the completion answers, and none when the
/// queue is empty.
pub async fn complete_and_claim_records_then_claims_the_next<St: Store>(store: St) {
    let low = enqueue(&store, job_with("low", |o| o.priority = priority(2))).await;
    let normal = enqueue(&store, job_with("normal", |o| o.priority = priority(1))).await;
    let high = enqueue(&store, job_with("high", |o| o.priority = priority(0))).await;
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), high.id);
    advance(secs(2)).await;
    let now = Timestamp::now();
    let (status, next) = complete_and_claim(&store, &c, Outcome::response(response(201))).await;
    assert_eq!(status, Ok(JobStatus::Succeeded));
    let got = get(&store, high.id).await;
    assert_eq!(got.status, JobStatus::Succeeded);
    assert_eq!(got.completed_at, Some(now));
    assert_eq!(
        got.response.as_ref().map(|r| r.status),
        Some(StatusCode::CREATED)
    );
    let next = next.expect("the next job");
    assert_eq!(next.id(), normal.id);
    assert_eq!(next.job.status, JobStatus::InProgress);
    assert_eq!(next.job.attempts, 1);
    assert_eq!(next.lease.until, now.after(LEASE));
    assert_eq!(next.job.lease, Some(next.lease));
    assert_eq!(body_of(&next.job), b"normal");
    assert_eq!(get(&store, normal.id).await.lease, Some(next.lease));
    assert_eq!(stats(&store).await.in_progress, 1);

    // A stale result is refused, and the next job claimed all the same.
    let (status, after) = complete_and_claim(&store, &c, Outcome::response(response(500))).await;
    assert_eq!(status, Err(true), "fenced like complete");
    assert_unchanged(&got, &get(&store, high.id).await);
    let after = after.expect("the last job");
    assert_eq!(after.id(), low.id);

    // Nothing left to claim.
    let error = JobError::new(ErrorCode::ExecutionTimeout, "took too long");
    let (status, none) = complete_and_claim(&store, &next, Outcome::error(error.clone())).await;
    assert_eq!(status, Ok(JobStatus::Failed));
    assert!(none.is_none());
    assert_eq!(get(&store, normal.id).await.error, Some(error));
    let (status, none) = complete_and_claim(&store, &after, Outcome::response(response(200))).await;
    assert_eq!(status, Ok(JobStatus::Succeeded));
    assert!(none.is_none());
    assert_eq!(stats(&store).await, expect_stats([0, 0, 0], 0, 0, None));
}

/// Results recorded at the same time, each with the claim of a next job
/// (which a store may send together): each gets its own answer and a job
/// of its own.
pub async fn concurrent_complete_and_claims_each_get_their_own_job<St: Store>(store: St) {
    const WORKERS: usize = 6;
    let store = Arc::new(store);
    let mut ids = HashSet::new();
    for i in 0..2 * WORKERS {
        ids.insert(enqueue(&*store, job(&format!("{i}"))).await.id);
    }
    let first = futures_join((0..WORKERS).map(|_| {
        let store = store.clone();
        async move { claim(&*store).await.expect("a job for each claim") }
    }))
    .await;
    let answers = futures_join(first.iter().map(|c| {
        let store = store.clone();
        let c = c.clone();
        async move { complete_and_claim(&*store, &c, Outcome::response(response(200))).await }
    }))
    .await;
    let mut claimed: HashSet<JobId> = first.iter().map(Claim::id).collect();
    for (status, next) in answers {
        assert_eq!(status, Ok(JobStatus::Succeeded));
        let next = next.expect("a next job for each worker");
        assert_eq!(next.job.status, JobStatus::InProgress);
        assert!(claimed.insert(next.id()), "every job is handed out once");
    }
    assert_eq!(claimed, ids);
    for c in &first {
        assert_eq!(get(&*store, c.id()).await.status, JobStatus::Succeeded);
    }
    assert_eq!(stats(&*store).await.in_progress, WORKERS as u64);
}
