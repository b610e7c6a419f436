//! Claims and leases: which job a claim takes, extending and losing a lease,
//! and claims racing.

use super::*;

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
