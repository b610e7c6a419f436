//! Enqueue and get, and the queue limit.

use super::*;

pub async fn enqueue_returns_a_queued_job_and_get_reads_it<St: Store>(store: St) {
    let now = Timestamp::now();
    let new = job_with("hello", |o| {
        o.priority = Priority::LOW;
        o.max_time_in_queue = secs(42);
        o.owner = Some("alice".into());
    });
    let enqueued = store.enqueue(new, NO_LIMIT).await.unwrap();
    assert!(enqueued.created);
    let j = enqueued.job;
    assert_eq!(j.id.as_str().len(), JOB_ID_LEN);
    assert_eq!(j.id.as_str().len(), 16);
    assert_eq!(j.id.as_str().parse::<JobId>().unwrap(), j.id);
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.revision, 1);
    assert_eq!(j.attempts, 0);
    assert_eq!(j.created_at, now);
    assert_eq!(j.status_at, j.created_at);
    assert_eq!(j.queue_deadline, now.after(secs(42)));
    assert_eq!(j.started_at, None);
    assert_eq!(j.completed_at, None);
    assert_eq!(j.expires_at, None);
    assert!(j.lease.is_none());
    assert!(j.response.is_none());
    assert!(j.error.is_none());

    let got = get(&store, j.id).await;
    assert_eq!(got.id, j.id);
    assert_eq!(got.status, JobStatus::Queued);
    assert_eq!(got.revision, 1);
    assert_eq!(got.created_at, j.created_at);
    assert_eq!(got.status_at, j.status_at);
    assert_eq!(got.request.method, Method::POST);
    assert_eq!(got.request.path_and_query.as_str(), "/run?x=1");
    assert_eq!(got.request.headers["content-type"], "application/json");
    assert_eq!(body_of(&got), b"hello");
    assert_eq!(got.options.priority, Priority::LOW);
    assert_eq!(got.options.owner.as_deref(), Some("alice"));

    // A second job gets another id.
    let other = enqueue(&store, job("hello")).await;
    assert_ne!(other.id, j.id);
}

pub async fn get_of_an_unknown_id_is_none<St: Store>(store: St) {
    assert!(store.get(JobId::random()).await.unwrap().is_none());
    enqueue(&store, job("a")).await;
    assert!(store.get(JobId::random()).await.unwrap().is_none());
}

pub async fn enqueue_refuses_past_max_queued<St: Store>(store: St) {
    const N: usize = 3;
    let mut ids = Vec::new();
    for i in 0..N {
        let e = store.enqueue(job(&format!("{i}")), N).await.unwrap();
        assert!(e.created);
        ids.push(e.job.id);
    }
    match store.enqueue(job("one too many"), N).await {
        Err(EnqueueError::QueueFull { limit }) => assert_eq!(limit, N),
        other => panic!("enqueue into a full queue: {other:?}"),
    }
    assert_eq!(stats(&store).await.queued, N as u64);
    // The refused job is nowhere.
    assert_eq!(drain_ids(&store, N).await.len(), N);
    assert!(claim(&store).await.is_none());

    // Three more fill it again; claiming one makes room for one.
    for i in 0..N {
        store.enqueue(job(&format!("again {i}")), N).await.unwrap();
    }
    assert!(matches!(
        store.enqueue(job("full"), N).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    let c = claim(&store).await.unwrap();
    let e = store.enqueue(job("room"), N).await.unwrap();
    assert!(e.created);
    assert!(matches!(
        store.enqueue(job("full again"), N).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    // A job waiting out a backoff is still queued, and counts.
    store
        .retry_later(
            c.id(),
            c.token(),
            retry(Timestamp::now().after(secs(5)), true),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.enqueue(job("full with a retry"), N).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    assert_eq!(stats(&store).await.queued, N as u64 + 1);
}

pub async fn concurrent_enqueues_fill_the_queue_to_its_limit<St: Store>(store: St) {
    // Submissions that arrive together (Redis makes them in one call) are
    // counted one by one: exactly the limit is made, the rest are refused,
    // and each made job runs once.
    const LIMIT: usize = 4;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                store.enqueue(job(&format!("{i}")), LIMIT).await
            })
        })
        .collect();
    let mut made = HashSet::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => {
                assert!(e.created);
                made.insert(e.job.id);
            }
            Err(EnqueueError::QueueFull { limit }) => {
                assert_eq!(limit, LIMIT);
                refused += 1;
            }
            Err(e) => panic!("enqueue: {e:?}"),
        }
    }
    assert_eq!((made.len(), refused), (LIMIT, 10 - LIMIT));
    assert_eq!(stats(&*store).await.queued, LIMIT as u64);
    let ran: HashSet<JobId> = drain_ids(&*store, LIMIT).await.into_iter().collect();
    assert_eq!(ran, made);
    assert!(claim(&*store).await.is_none());
}
