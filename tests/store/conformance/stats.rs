//! Stats: the queue counts after every transition.

use super::*;

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
