//! Expiry: the queue deadline of a job not yet run, and the time a result is
//! kept.

use super::*;

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

pub async fn sweep_reports_every_expiry_once<St: Store>(store: St) {
    let deadline = |o: &mut JobOptions| o.max_time_in_queue = secs(10);
    assert_eq!(store.sweep().await.unwrap().expired, 0, "an empty store");
    // Past the deadline: two queued jobs and a retrying one expire; one
    // that started, one canceled and one with a later deadline do not.
    let running = enqueue(&store, job_with("running", deadline)).await;
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), running.id);
    let retrying = enqueue(&store, job_with("retrying", deadline)).await;
    let r = claim(&store).await.unwrap();
    assert_eq!(r.id(), retrying.id);
    let at = Timestamp::now().after(secs(60));
    store
        .retry_later(r.id(), r.token(), retry(at, true))
        .await
        .unwrap();
    enqueue(&store, job_with("a", deadline)).await;
    enqueue(&store, job_with("b", deadline)).await;
    let canceled = enqueue(&store, job_with("canceled", deadline)).await;
    store.cancel(canceled.id, None).await.unwrap();
    let later = enqueue(
        &store,
        job_with("later", |o| o.max_time_in_queue = secs(20)),
    )
    .await;
    advance(ms(9_999)).await;
    assert_eq!(store.sweep().await.unwrap().expired, 0, "not yet");
    advance(ms(1)).await;
    let swept = store.sweep().await.unwrap();
    assert_eq!(swept.expired, 3);
    assert_eq!(get(&store, retrying.id).await.status, JobStatus::Expired);
    assert_eq!(get(&store, running.id).await.status, JobStatus::InProgress);
    // Reported once: the next sweep has none to report.
    assert_eq!(store.sweep().await.unwrap().expired, 0);

    // A claim applies deadlines before choosing: what it expired is
    // reported by the next sweep, with what that sweep expires itself.
    let d = enqueue(&store, job_with("d", deadline)).await;
    advance(secs(10)).await;
    assert!(claim(&store).await.is_none());
    assert_eq!(get(&store, later.id).await.status, JobStatus::Expired);
    assert_eq!(get(&store, d.id).await.status, JobStatus::Expired);
    enqueue(&store, job_with("e", |o| o.max_time_in_queue = secs(1))).await;
    advance(secs(1)).await;
    assert_eq!(store.sweep().await.unwrap().expired, 3);
    assert_eq!(store.sweep().await.unwrap().expired, 0);
}

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
    assert_eq!(store.sweep().await.unwrap().next_due, Some(expires_at));

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
    assert_eq!(store.sweep().await.unwrap().next_due, None);
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
