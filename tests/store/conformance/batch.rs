//! Batch claims: more queued jobs of one batch key, each with its own lease,
//! in claim order, within an item and a byte budget.

use super::*;

/// A `POST /run` job whose batch key is `key`, carrying `items` inputs.
fn batched(body: &str, key: &str, items: u32) -> NewJob {
    batched_with(body, key, items, |_| {})
}

fn batched_with(body: &str, key: &str, items: u32, f: impl FnOnce(&mut JobOptions)) -> NewJob {
    job_with(body, |o| {
        o.batch = Some(BatchTag {
            key: key.into(),
            items,
        });
        f(o)
    })
}

async fn claim_batch<St: Store>(store: &St, key: &str, items: u32, bytes: u64) -> Vec<Claim> {
    store
        .claim_batch(key, items, bytes, LEASE, None)
        .await
        .unwrap()
}

fn bodies(claims: &[Claim]) -> Vec<String> {
    claims
        .iter()
        .map(|c| String::from_utf8(body_of(&c.job).to_vec()).unwrap())
        .collect()
}

pub async fn the_batch_tag_is_kept_with_the_job<St: Store>(store: St) {
    let j = enqueue(&store, batched("a", "k1", 3)).await;
    let got = get(&store, j.id).await;
    assert_eq!(
        got.options.batch,
        Some(BatchTag {
            key: "k1".into(),
            items: 3
        })
    );
    assert_eq!(got.batch_size, None);
    let plain = enqueue(&store, job("b")).await;
    assert_eq!(get(&store, plain.id).await.options.batch, None);
}

pub async fn claim_batch_takes_only_queued_jobs_of_its_key<St: Store>(store: St) {
    enqueue(&store, batched("head", "k", 1)).await;
    enqueue(&store, batched("other key", "l", 1)).await;
    enqueue(&store, job("no key")).await;
    enqueue(&store, batched("same key", "k", 1)).await;
    let head = claim(&store).await.unwrap();
    assert_eq!(body_of(&head.job), b"head");
    assert!(
        claim_batch(&store, "nobody", 32, 1 << 20).await.is_empty(),
        "no job of that key"
    );
    let more = claim_batch(&store, "k", 32, 1 << 20).await;
    assert_eq!(bodies(&more), ["same key"]);
    let c = &more[0];
    assert_eq!(c.job.status, JobStatus::InProgress);
    assert_eq!(c.job.attempts, 1);
    assert_eq!(c.job.lease, Some(c.lease));
    assert_eq!(get(&store, c.id()).await.status, JobStatus::InProgress);
    assert!(claim_batch(&store, "k", 32, 1 << 20).await.is_empty());
    assert_eq!(drain(&store).await, ["other key", "no key"]);
    assert_eq!(stats(&store).await.in_progress, 2);
}

pub async fn claim_batch_stays_within_its_item_and_byte_budgets<St: Store>(store: St) {
    for (body, items) in [("a", 1), ("bbb", 3), ("c", 1), ("d", 1), ("e", 1)] {
        enqueue(&store, batched(body, "k", items)).await;
    }
    // Three inputs: "bbb" does not fit after "a" and is passed over.
    assert_eq!(
        bodies(&claim_batch(&store, "k", 3, 1 << 20).await),
        ["a", "c", "d"]
    );
    assert_eq!(bodies(&claim_batch(&store, "k", 2, 1 << 20).await), ["e"]);
    enqueue(&store, batched("ffff", "k", 1)).await;
    enqueue(&store, batched("g", "k", 1)).await;
    // Four bytes: "bbb" then "g"; "ffff" is too large for what is left.
    assert_eq!(bodies(&claim_batch(&store, "k", 32, 4).await), ["bbb", "g"]);
    assert_eq!(bodies(&claim_batch(&store, "k", 32, 4).await), ["ffff"]);
}

pub async fn claim_batch_takes_jobs_by_priority_then_age<St: Store>(store: St) {
    enqueue(
        &store,
        batched_with("low", "k", 1, |o| o.priority = Priority::LOW),
    )
    .await;
    advance(ms(5)).await;
    enqueue(&store, batched("normal 1", "k", 1)).await;
    advance(ms(5)).await;
    enqueue(
        &store,
        batched_with("high", "k", 1, |o| o.priority = Priority::HIGH),
    )
    .await;
    advance(ms(5)).await;
    enqueue(&store, batched("normal 2", "k", 1)).await;
    assert_eq!(
        bodies(&claim_batch(&store, "k", 3, 1 << 20).await),
        ["high", "normal 1", "normal 2"]
    );
    assert_eq!(bodies(&claim_batch(&store, "k", 3, 1 << 20).await), ["low"]);

    // With aging, a low job that waited competes as a higher one.
    enqueue(
        &store,
        batched_with("old low", "k", 1, |o| o.priority = Priority::LOW),
    )
    .await;
    advance(secs(20)).await;
    enqueue(
        &store,
        batched_with("new high", "k", 1, |o| o.priority = Priority::HIGH),
    )
    .await;
    let aged = store
        .claim_batch("k", 1, 1 << 20, LEASE, Some(secs(10)))
        .await
        .unwrap();
    assert_eq!(bodies(&aged), ["old low"]);
}

pub async fn claim_batch_passes_over_retrying_and_expires_jobs_past_their_deadline<St: Store>(
    store: St,
) {
    let waiting = enqueue(&store, batched("waiting", "k", 1)).await;
    let c = claim(&store).await.unwrap();
    let at = Timestamp::now().after(secs(60));
    store
        .retry_later(c.id(), c.token(), retry(at, true))
        .await
        .unwrap();
    let late = enqueue(
        &store,
        batched_with("late", "k", 1, |o| o.max_time_in_queue = secs(5)),
    )
    .await;
    advance(secs(6)).await;
    assert!(claim_batch(&store, "k", 32, 1 << 20).await.is_empty());
    assert_eq!(get(&store, waiting.id).await.status, JobStatus::Queued);
    let late = get(&store, late.id).await;
    assert_eq!(late.status, JobStatus::Expired);
    assert_eq!(error_code(&late), Some(ErrorCode::QueueTimeout));
    // No process ends it: the next sweep reports it.
    assert_eq!(store.sweep().await.unwrap().expired, 1);
}

pub async fn batch_members_are_fenced_and_finish_each_on_its_own<St: Store>(store: St) {
    enqueue(&store, batched("head", "k", 1)).await;
    enqueue(&store, batched("kept", "k", 1)).await;
    enqueue(&store, batched("canceled", "k", 1)).await;
    let head = claim(&store).await.unwrap();
    let more = claim_batch(&store, "k", 32, 1 << 20).await;
    assert_eq!(bodies(&more), ["kept", "canceled"]);
    let (kept, canceled) = (&more[0], &more[1]);
    assert_ne!(kept.id(), canceled.id());
    assert!(matches!(
        store.cancel(canceled.id(), None).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert_fenced(&store, canceled).await;
    for c in [&head, kept] {
        let outcome = Outcome::response(response(200)).with_batch_size(3);
        let done = store.complete(c.id(), c.token(), outcome).await.unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(done.batch_size, Some(3));
        assert_eq!(get(&store, c.id()).await.batch_size, Some(3));
    }
    let canceled = get(&store, canceled.id()).await;
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!(canceled.batch_size, None);
    // A member's lease lapses on its own, like any claim's.
    enqueue(&store, batched("lapsing", "k", 1)).await;
    let lapsing = claim_batch(&store, "k", 32, 1 << 20).await;
    advance(LEASE).await;
    store.sweep().await.unwrap();
    assert_eq!(get(&store, lapsing[0].id()).await.status, JobStatus::Queued);
    assert_fenced(&store, &lapsing[0]).await;
}
