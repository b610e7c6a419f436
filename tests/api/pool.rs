//! The worker pool: its concurrency bound, and graceful shutdown through
//! `Defer::handle().shutdown(grace)`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use serde_json::json;
use tower::Layer;
use tower_defer::job::ErrorCode;
use tower_defer::{Body, DeferLayer, JobId, JobStatus, MemoryStore, Store};

use crate::support::*;

fn gated(
    gate: &Gate,
) -> impl tower::Service<
    Request<Body>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    let gate = gate.clone();
    tower::service_fn(move |_req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let _call = gate.pass().await;
            infallible(json_response(200, json!({"done": true})))
        }
    })
}

#[tokio::test]
async fn never_more_than_concurrency_inner_calls_at_once() {
    let gate = Gate::new();
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(2)
        .layer(gated(&gate));
    let server = serve(app).await;
    let c = HttpClient::new();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(c.submit(&server, &json!({ "data": n })).await);
    }
    // Two at a time: two start, the rest wait; release those two, two more start.
    for round in 1..=5 {
        gate.started(2 * round).await;
        let q = c.get(&server.url("/async/queue")).await.json();
        assert_eq!(q["in_progress"], 2, "round {round}: {q}");
        assert_eq!(q["queued"], 10 - 2 * round as u64, "round {round}: {q}");
        assert_eq!(gate.in_flight.load(Ordering::SeqCst), 2);
        gate.release(2);
    }
    for id in &ids {
        let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded");
    }
    assert_eq!(gate.calls.load(Ordering::SeqCst), 10);
    assert_eq!(
        gate.max_in_flight.load(Ordering::SeqCst),
        2,
        "never more than 2 inner calls in flight"
    );
}

/// On tokio's paused clock, so the grace periods cost no real time.
#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_running_call_finish_and_leaves_the_queue_in_the_store() {
    let store = MemoryStore::new();
    let gate = Gate::new();
    let app = DeferLayer::new(store.clone())
        .concurrency(1)
        .layer(gated(&gate));
    let handle = app.handle();
    let server = serve(app).await;
    let c = HttpClient::new();
    let running = c.submit(&server, &json!({"data": 0})).await;
    gate.started(1).await;
    let queued = [
        c.submit(&server, &json!({"data": 1})).await,
        c.submit(&server, &json!({"data": 2})).await,
    ];

    let grace = Duration::from_secs(30);
    let start = tokio::time::Instant::now();
    let shutdown = handle.shutdown(grace);
    tokio::pin!(shutdown);
    // Told to stop, the pool waits for the call in flight.
    tokio::time::timeout(Duration::from_secs(1), &mut shutdown)
        .await
        .expect_err("shutdown waits for the running call");
    gate.release(10);
    shutdown.await;
    assert!(start.elapsed() < grace, "it finished within the grace");

    let job = |id: &str| {
        let (store, id) = (store.clone(), id.parse::<JobId>().unwrap());
        async move {
            store
                .get(id)
                .await
                .unwrap()
                .expect("the job is in the store")
        }
    };
    let done = job(&running).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.response.unwrap().status, 200);
    for id in &queued {
        let j = job(id).await;
        assert_eq!(j.status, JobStatus::Queued, "{j:?}");
        assert_eq!(j.attempts, 0);
    }
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.queued, stats.in_progress), (2, 0), "{stats:?}");
    assert_eq!(
        gate.calls.load(Ordering::SeqCst),
        1,
        "no job started after the stop"
    );

    // The API still answers from the store; nothing runs the queue.
    let a = c.get(&server.url(&format!("/async/{}", queued[0]))).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json()["status"], "queued");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_still_running_after_the_grace_is_dropped_and_handed_back() {
    let store = MemoryStore::new();
    let gate = Gate::new();
    let app = DeferLayer::new(store.clone())
        .concurrency(1)
        .layer(gated(&gate));
    let handle = app.handle();
    let server = serve(app).await;
    let c = HttpClient::new();
    let id = c.submit(&server, &json!({"data": 0})).await;
    gate.started(1).await;

    let start = tokio::time::Instant::now();
    handle.shutdown(Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(
        gate.in_flight.load(Ordering::SeqCst),
        0,
        "the call was dropped"
    );
    let job = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued, "handed back: {job:?}");
    assert_eq!(job.attempts, 0, "no attempt spent");
    assert_eq!(job.error.unwrap().code, ErrorCode::WorkerShutdown);
    let doc = c.get(&server.url(&format!("/async/{id}"))).await.json();
    assert_eq!(doc["status"], "queued");
    assert_eq!(doc["error"]["code"], "worker_shutdown");
}
