//! Micro-benchmarks of the layer's own cost.
//!
//! ```text
//! cargo bench --bench submit
//! ```
//!
//! - `submit`: one request answered in process, no network. `inner_direct`
//!   calls the inner service itself (the baseline); `pass_through` calls it
//!   through `Defer` on a route the layer does not own; `defer_submit` submits
//!   a `POST /async` envelope (parse, store, answer 201). The submit runs with
//!   no worker pool (`DeferLayer::pair`, the worker future never polled), so
//!   it measures the submission alone, not workers competing for the CPU.
//! - `complete`: submit N jobs to a layer over an instant inner service with
//!   its worker pool running, and wait until every one has succeeded;
//!   reported as jobs per second.
//!
//! Sample sizes and measurement times are kept small so the whole run takes
//! a minute or two.

use std::convert::Infallible;
use std::str::FromStr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_defer::time::Timestamp;
use tower_defer::{Body, DeferLayer, JobId, MemoryStore, Store};

const ENVELOPE: &str =
    r#"{"data": {"prompt": "How are you?", "max_tokens": 16}, "path": "/predict"}"#;
const INPUT: &str = r#"{"prompt": "How are you?", "max_tokens": 16}"#;

/// The inner service: answers at once.
async fn instant(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from(r#"{"text":"fine"}"#)))
}

fn envelope() -> Request<Body> {
    Request::post("/async")
        .header("content-type", "application/json")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .body(Body::from(ENVELOPE))
        .unwrap()
}

fn predict() -> Request<Body> {
    Request::post("/predict")
        .header("content-type", "application/json")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .body(Body::from(INPUT))
        .unwrap()
}

fn submit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("submit");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    group.bench_function("inner_direct", |b| {
        let mut inner = tower::service_fn(instant);
        b.to_async(&rt).iter(|| {
            let call = inner.call(predict());
            async move { assert_eq!(call.await.unwrap().status(), 200) }
        })
    });

    group.bench_function("pass_through", |b| {
        // The pool is spawned but idle: nothing is ever queued.
        let app = rt.block_on(async {
            DeferLayer::new(MemoryStore::new()).layer(tower::service_fn(instant))
        });
        b.to_async(&rt).iter(|| {
            let app = app.clone();
            async move { assert_eq!(app.oneshot(predict()).await.unwrap().status(), 200) }
        })
    });

    group.bench_function("defer_submit", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            // A fresh store per batch, so jobs do not pile up across samples.
            let layer = DeferLayer::new(MemoryStore::new()).max_queue(usize::MAX);
            let (mut app, _worker) = layer.pair(tower::service_fn(instant));
            let start = Instant::now();
            for _ in 0..iters {
                let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
                let response = ready.call(envelope()).await.unwrap();
                assert_eq!(response.status(), 201);
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Waits until the job has ended.
async fn finished(store: &MemoryStore, id: JobId) {
    let far = Timestamp::now().after(Duration::from_secs(60));
    let mut job = store.get(id).await.unwrap().expect("the job exists");
    while !job.status.is_terminal() {
        job = store.wait(id, job.revision, far).await.unwrap().unwrap();
    }
    assert_eq!(job.status.as_str(), "succeeded");
}

fn complete(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("complete");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));

    for jobs in [1_000u64] {
        group.throughput(Throughput::Elements(jobs));
        for concurrency in [1usize, 16] {
            let id = BenchmarkId::new(format!("memory/concurrency={concurrency}"), jobs);
            group.bench_function(id, |b| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // A fresh layer and pool per round (not timed).
                        let store = MemoryStore::new();
                        let mut app = DeferLayer::new(store.clone())
                            .concurrency(concurrency)
                            .layer(tower::service_fn(instant));
                        let mut ids = Vec::with_capacity(jobs as usize);
                        let start = Instant::now();
                        for _ in 0..jobs {
                            let ready = ServiceExt::<Request<Body>>::ready(&mut app).await;
                            let response = ready.unwrap().call(envelope()).await.unwrap();
                            let location = response.headers()["location"].to_str().unwrap();
                            ids.push(JobId::from_str(&location["/async/".len()..]).unwrap());
                        }
                        for id in ids {
                            finished(&store, id).await;
                        }
                        total += start.elapsed();
                        app.handle().shutdown(Duration::from_secs(1)).await;
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, submit, complete);
criterion_main!(benches);
