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
