//! Cancel: of one job, scoped to its owner, and of everything queued.

use super::*;

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
