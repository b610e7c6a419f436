//! Retry later: a job handed back to the queue for another attempt.

use super::*;

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
