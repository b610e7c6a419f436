//! Waiting: `wait` on one job, and `work_available` for the workers.

use super::*;

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
