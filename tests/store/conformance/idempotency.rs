//! Idempotency keys: one job per key and owner, and a conflict for a different
//! request.

use super::*;

fn keyed(body: &str, owner: Option<&str>, key: &str) -> NewJob {
    job_with(body, |o| {
        o.owner = owner.map(Into::into);
        o.idempotency_key = Some(key.into());
    })
}

pub async fn idempotent_enqueue_returns_the_first_job<St: Store>(store: St) {
    let first = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(first.created);
    advance(secs(1)).await;
    let second = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.job.created_at, first.job.created_at);
    assert_eq!(stats(&store).await.queued, 1);
    let c = claim(&store).await.unwrap();
    assert_eq!(c.id(), first.job.id);
    assert!(claim(&store).await.is_none(), "only one job");

    // While it runs and after it ended, the key still answers with it.
    let third = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!third.created);
    assert_eq!(third.job.id, first.job.id);
    assert_eq!(third.job.status, JobStatus::InProgress);
    complete(&store, &c, 200).await;
    let fourth = store
        .enqueue(keyed("same", Some("alice"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!fourth.created);
    assert_eq!(fourth.job.id, first.job.id);
    assert_eq!(fourth.job.status, JobStatus::Succeeded);
    assert!(claim(&store).await.is_none());
    // Even when the queue is full: it makes no job.
    let full = store
        .enqueue(keyed("same", Some("alice"), "k"), 0)
        .await
        .unwrap();
    assert!(!full.created);
    assert_eq!(full.job.id, first.job.id);
}

pub async fn idempotency_key_with_a_different_request_conflicts<St: Store>(store: St) {
    let first = enqueue(&store, keyed("one", Some("alice"), "k")).await;
    match store
        .enqueue(keyed("two", Some("alice"), "k"), NO_LIMIT)
        .await
    {
        Err(EnqueueError::IdempotencyConflict { existing }) => assert_eq!(existing, first.id),
        other => panic!("a different body under one key: {other:?}"),
    }
    // A different path is a different request too.
    let mut other_path = keyed("one", Some("alice"), "k");
    other_path.request.path_and_query = PathAndQuery::from_static("/elsewhere");
    assert!(matches!(
        store.enqueue(other_path, NO_LIMIT).await,
        Err(EnqueueError::IdempotencyConflict { .. })
    ));
    // So are a different query of the same length, and a different method.
    let mut other_query = keyed("one", Some("alice"), "k");
    other_query.request.path_and_query = PathAndQuery::from_static("/run?x=2");
    let mut other_method = keyed("one", Some("alice"), "k");
    other_method.request.method = Method::PUT;
    for other in [other_query, other_method] {
        assert!(matches!(
            store.enqueue(other, NO_LIMIT).await,
            Err(EnqueueError::IdempotencyConflict { .. })
        ));
    }
    // Headers are not compared: a retry with a new trace header is the
    // same request.
    let mut other_headers = keyed("one", Some("alice"), "k");
    other_headers
        .request
        .headers
        .insert("traceparent", "00-1-2-01".parse().unwrap());
    let again = store.enqueue(other_headers, NO_LIMIT).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.job.id, first.id);
    assert_eq!(stats(&store).await.queued, 1);
    assert_eq!(drain(&store).await, ["one"]);
}

pub async fn idempotency_keys_are_per_owner<St: Store>(store: St) {
    let alice = enqueue(&store, keyed("a", Some("alice"), "k")).await;
    let bob = store
        .enqueue(keyed("a", Some("bob"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(bob.created, "another owner's key is another key");
    assert_ne!(bob.job.id, alice.id);
    let nobody = store
        .enqueue(keyed("other body", None, "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(nobody.created);
    assert_ne!(nobody.job.id, alice.id);
    assert_ne!(nobody.job.id, bob.job.id);
    // Each owner's key still answers with its own job.
    let again = store
        .enqueue(keyed("a", Some("bob"), "k"), NO_LIMIT)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.job.id, bob.job.id);
    let ids: HashSet<JobId> = drain_ids(&store, 10).await.into_iter().collect();
    assert_eq!(ids, HashSet::from([alice.id, bob.job.id, nobody.job.id]));
}

pub async fn concurrent_idempotent_enqueues_make_one_job<St: Store>(store: St) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                store
                    .enqueue(keyed("same", Some("alice"), "once"), NO_LIMIT)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|e| e.created).count(), 1);
    let ids: HashSet<JobId> = results.iter().map(|e| e.job.id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(stats(&*store).await.queued, 1);
    let c = claim(&*store).await.unwrap();
    assert!(ids.contains(&c.id()));
    assert!(claim(&*store).await.is_none());
}
