//! Lapsed leases, counted apart from attempts, and `wake_unavailable`.

use tower_defer::job::MAX_LAPSES;

use super::*;

/// Claims the next job with a 5 s lease, lets the lease lapse and sweeps.
async fn lapse<St: Store>(store: &St, id: JobId) {
    let c = claim_with(store, secs(5)).await;
    assert_eq!(c.id(), id);
    assert_eq!(
        c.job.attempts, 1,
        "each claim after a lapse is attempt 1 again"
    );
    advance(secs(6)).await;
    store.sweep().await.unwrap();
}

/// Hands the running job `c` back, waiting out `delay`, for `code`.
async fn retry_for<St: Store>(store: &St, c: &Claim, code: ErrorCode, delay: Duration) -> Job {
    let retry = Retry {
        at: Timestamp::now().after(delay),
        error: JobError::new(code, "why"),
        response: None,
        spend_attempt: code != ErrorCode::UpstreamUnavailable,
    };
    store.retry_later(c.id(), c.token(), retry).await.unwrap()
}

pub async fn a_lapse_spends_no_attempt_and_the_fifth_abandons_the_job<St: Store>(store: St) {
    // One attempt allowed: were a lapse to spend it, the first would fail it.
    let j = enqueue(&store, job_with("a", |o| o.retry.max_attempts = 1)).await;
    for lapses in 1..MAX_LAPSES {
        lapse(&store, j.id).await;
        let got = get(&store, j.id).await;
        assert_eq!(got.status, JobStatus::Queued, "after lapse {lapses}");
        assert_eq!((got.attempts, got.lapses), (0, lapses));
        assert_eq!(error_code(&got), Some(ErrorCode::LeaseExpired));
    }
    lapse(&store, j.id).await;
    let got = get(&store, j.id).await;
    assert_eq!(got.status, JobStatus::Failed);
    assert_eq!((got.attempts, got.lapses), (0, MAX_LAPSES));
    let error = got.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::Abandoned);
    assert_eq!(
        error.message,
        "abandoned by its workers: their leases lapsed 5 times (it may be crashing them)"
    );
    assert_eq!(got.completed_at, Some(Timestamp::now()));
    assert!(claim(&store).await.is_none());
    let s = stats(&store).await;
    assert_eq!((s.queued, s.retrying, s.in_progress), (0, 0, 0));
}

pub async fn sweep_reports_every_abandonment_once<St: Store>(store: St) {
    assert_eq!(store.sweep().await.unwrap().abandoned, 0, "an empty store");
    // Two jobs lapse together; only the last allowed lapse ends them.
    let a = enqueue(&store, job("a")).await;
    let b = enqueue(&store, job("b")).await;
    for lapses in 1..=MAX_LAPSES {
        for _ in 0..2 {
            claim_with(&store, secs(5)).await;
        }
        advance(secs(6)).await;
        let swept = store.sweep().await.unwrap();
        let abandoned = if lapses < MAX_LAPSES { 0 } else { 2 };
        assert_eq!(swept.abandoned, abandoned, "after lapse {lapses}");
        assert_eq!(swept.expired, 0, "an abandoned job is not expired");
    }
    assert_eq!(get(&store, a.id).await.status, JobStatus::Failed);
    assert_eq!(get(&store, b.id).await.status, JobStatus::Failed);
    // Reported once: the next sweep has none to report.
    assert_eq!(store.sweep().await.unwrap().abandoned, 0);

    // A claim applies lapses before choosing: what it abandoned is reported
    // by the next sweep, apart from what it expired.
    let c = enqueue(&store, job("c")).await;
    for _ in 1..MAX_LAPSES {
        lapse(&store, c.id).await;
    }
    assert_eq!(claim_with(&store, secs(5)).await.id(), c.id);
    let d = enqueue(&store, job_with("d", |o| o.max_time_in_queue = secs(5))).await;
    advance(secs(6)).await;
    assert!(claim(&store).await.is_none());
    assert_eq!(get(&store, c.id).await.status, JobStatus::Failed);
    assert_eq!(get(&store, d.id).await.status, JobStatus::Expired);
    let swept = store.sweep().await.unwrap();
    assert_eq!((swept.expired, swept.abandoned), (1, 1));
    let swept = store.sweep().await.unwrap();
    assert_eq!((swept.expired, swept.abandoned), (0, 0));
}

pub async fn lapses_and_spent_attempts_are_counted_apart<St: Store>(store: St) {
    let j = enqueue(&store, job("a")).await;
    // A 503 spends attempt 1.
    let c = claim(&store).await.unwrap();
    retry_for(&store, &c, ErrorCode::UpstreamStatus, Duration::ZERO).await;
    // Attempt 2 lapses: given back.
    let c = claim_with(&store, secs(5)).await;
    assert_eq!(c.job.attempts, 2);
    advance(secs(6)).await;
    store.sweep().await.unwrap();
    let got = get(&store, j.id).await;
    assert_eq!(
        (got.status, got.attempts, got.lapses),
        (JobStatus::Queued, 1, 1)
    );
    // Attempt 2 again, answered: the job kept both counts.
    let c = claim(&store).await.unwrap();
    assert_eq!(c.job.attempts, 2);
    complete(&store, &c, 200).await;
    let got = get(&store, j.id).await;
    assert_eq!(
        (got.status, got.attempts, got.lapses),
        (JobStatus::Succeeded, 2, 1)
    );
}

pub async fn wake_unavailable_makes_the_jobs_waiting_for_the_upstream_runnable<St: Store>(
    store: St,
) {
    let old = enqueue(&store, job("old")).await;
    advance(ms(1)).await;
    let young = enqueue(&store, job("young")).await;
    advance(ms(1)).await;
    // Both found the upstream unavailable and wait out 10 s.
    for id in [old.id, young.id] {
        let c = claim(&store).await.unwrap();
        assert_eq!(c.id(), id);
        retry_for(&store, &c, ErrorCode::UpstreamUnavailable, secs(10)).await;
    }
    let fresh = enqueue(&store, job("fresh")).await;
    let before = get(&store, old.id).await;
    assert_eq!(stats(&store).await.retrying, 2);

    assert_eq!(store.wake_unavailable().await.unwrap(), 2);
    let got = get(&store, old.id).await;
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.retry_at, None, "runnable now, not in 10 s");
    assert_eq!(
        got.revision, before.revision,
        "not a change a client waits for"
    );
    assert_eq!(error_code(&got), Some(ErrorCode::UpstreamUnavailable));
    let s = stats(&store).await;
    assert_eq!((s.queued, s.retrying), (3, 0));
    // Behind the work already ready, the oldest first; no time has passed.
    assert_eq!(drain(&store).await, ["fresh", "old", "young"]);
    assert_eq!(get(&store, fresh.id).await.status, JobStatus::Succeeded);
    assert_eq!(store.wake_unavailable().await.unwrap(), 0, "none left");
}

pub async fn wake_unavailable_leaves_every_other_job_alone<St: Store>(store: St) {
    // A job backing off after a 503 (an attempt spent): its backoff stands.
    enqueue(&store, job("status")).await;
    let c = claim(&store).await.unwrap();
    let status = retry_for(&store, &c, ErrorCode::UpstreamStatus, secs(10)).await;
    // A job that waited for the upstream and was canceled meanwhile.
    let canceled = enqueue(&store, job("canceled")).await;
    let c = claim(&store).await.unwrap();
    retry_for(&store, &c, ErrorCode::UpstreamUnavailable, secs(10)).await;
    store.cancel(canceled.id, None).await.unwrap();
    // A job whose wait for the upstream ended by itself, and which runs.
    let ran = enqueue(&store, job("ran")).await;
    let c = claim(&store).await.unwrap();
    retry_for(&store, &c, ErrorCode::UpstreamUnavailable, secs(1)).await;
    advance(secs(1)).await;
    store.sweep().await.unwrap();
    let running = claim(&store).await.unwrap();
    assert_eq!(running.id(), ran.id);
    // A job that lapsed (runnable at once anyway) and one never tried.
    enqueue(&store, job("queued")).await;

    assert_eq!(store.wake_unavailable().await.unwrap(), 0);
    let got = get(&store, status.id).await;
    assert_eq!(got.retry_at, status.retry_at);
    assert_eq!(get(&store, canceled.id).await.status, JobStatus::Canceled);
    assert_eq!(get(&store, ran.id).await.status, JobStatus::InProgress);
    assert_eq!(drain(&store).await, ["queued"]);
    let s = stats(&store).await;
    assert_eq!((s.retrying, s.in_progress), (1, 1));
}
