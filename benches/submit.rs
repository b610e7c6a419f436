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
//!   `prefer_submit` is the same through `Prefer: respond-async`, and
//!   `status_lookup` a `GET /async/{id}`.
//! - `store`: `memory/claim_complete`, one claim and one complete on
//!   MemoryStore, beside the inner service's direct call.
//! - `complete`: submit N jobs to a layer over an instant inner service with
//!   its worker pool running, and wait until every one has succeeded;
//!   reported as jobs per second, at concurrency 1, 16 and 256 on the memory
//!   store and, with `--features redis` and a `redis-server` installed, 16 and
//!   256 on a Redis of the bench's own. One client submits to the memory
//!   store, where a submission waits on no network; 32 submit to Redis at once,
//!   since each waits a network round trip, and one client would measure that
//!   latency rather than the store's throughput. `inner_direct` calls the
//!   inner service N times in a row: the baseline.
//!
//! Sample sizes and measurement times are kept small so that a whole run
//! stays short enough to repeat.

use std::str::FromStr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Request;
use tower::{Layer, Service, ServiceExt};
use tower_defer::time::Timestamp;
use tower_defer::{Body, DeferLayer, JobId, MemoryStore, Store};
use tower_defer_testkit::workload::{envelope, instant, predict};

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
    group.bench_function("prefer_submit", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let layer = DeferLayer::new(MemoryStore::new()).max_queue(usize::MAX);
            let (mut app, _worker) = layer.pair(tower::service_fn(instant));
            let start = Instant::now();
            for _ in 0..iters {
                let mut req = predict();
                req.headers_mut()
                    .insert("prefer", "respond-async".parse().unwrap());
                let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
                assert_eq!(ready.call(req).await.unwrap().status(), 202);
            }
            start.elapsed()
        })
    });

    group.bench_function("status_lookup", |b| {
        let (app, path) = rt.block_on(async {
            let layer = DeferLayer::new(MemoryStore::new());
            let (mut app, _worker) = layer.pair(tower::service_fn(instant));
            let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
            let created = ready.call(envelope()).await.unwrap();
            let path = created.headers()["location"].to_str().unwrap().to_owned();
            (app, path)
        });
        b.to_async(&rt).iter(|| {
            let (app, req) = (
                app.clone(),
                Request::get(&path).body(Body::empty()).unwrap(),
            );
            async move { assert_eq!(app.oneshot(req).await.unwrap().status(), 202) }
        })
    });
    group.finish();
}

/// The store alone: claim a queued job and complete it, beside the inner
/// service's direct call.
fn store(c: &mut Criterion) {
    use tower_defer::job::{NewJob, Outcome, StoredResponse};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("store");
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
    group.bench_function("memory/claim_complete", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let store = MemoryStore::new();
            let request = tower_defer::job::StoredRequest {
                method: http::Method::POST,
                path_and_query: http::uri::PathAndQuery::from_static("/predict"),
                headers: http::HeaderMap::new(),
                body: bytes::Bytes::from_static(b"{}"),
            };
            for _ in 0..iters {
                let job = NewJob {
                    request: request.clone(),
                    options: Default::default(),
                };
                store.enqueue(job, usize::MAX).await.unwrap();
            }
            let response = StoredResponse {
                status: http::StatusCode::OK,
                headers: http::HeaderMap::new(),
                body: bytes::Bytes::from_static(b"{}"),
            };
            let start = Instant::now();
            for _ in 0..iters {
                let claim = store
                    .claim(Duration::from_secs(30), None)
                    .await
                    .unwrap()
                    .unwrap();
                let outcome = Outcome::response(response.clone());
                store
                    .complete(claim.id(), claim.token(), outcome)
                    .await
                    .unwrap();
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Waits until the job has ended.
async fn finished<St: Store>(store: &St, id: JobId) {
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
    let jobs = 1_000u64;
    group.throughput(Throughput::Elements(jobs));
    group.bench_function("inner_direct", |b| {
        let inner = tower::service_fn(instant);
        b.to_async(&rt).iter(|| {
            let mut inner = inner;
            async move {
                for _ in 0..jobs {
                    assert_eq!(inner.call(predict()).await.unwrap().status(), 200);
                }
            }
        })
    });
    for concurrency in [1usize, 16, 256] {
        let id = BenchmarkId::new(format!("memory/concurrency={concurrency}"), jobs);
        group.bench_function(id, |b| {
            b.to_async(&rt)
                .iter_custom(|iters| run_jobs(iters, jobs, concurrency, 1, MemoryStore::new))
        });
    }
    #[cfg(feature = "redis")]
    redis_complete(&rt, &mut group, jobs);
    group.finish();
}

/// Submits `jobs` jobs per round to a fresh layer over a store from `make`,
/// from `submitters` clients at once, and times until every one has
/// succeeded (each client then waits for its own jobs).
async fn run_jobs<St: Store + Clone>(
    iters: u64,
    jobs: u64,
    concurrency: usize,
    submitters: u64,
    make: impl Fn() -> St,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        // A fresh layer and pool per round (not timed).
        let store = make();
        let app = DeferLayer::new(store.clone())
            .concurrency(concurrency)
            .max_queue(usize::MAX)
            .layer(tower::service_fn(instant));
        let client = |client: u64| {
            let (mut app, store) = (app.clone(), store.clone());
            async move {
                let mut ids = Vec::new();
                for _ in (client..jobs).step_by(submitters as usize) {
                    let ready = ServiceExt::<Request<Body>>::ready(&mut app).await;
                    let response = ready.unwrap().call(envelope()).await.unwrap();
                    let location = response.headers()["location"].to_str().unwrap();
                    ids.push(JobId::from_str(&location["/async/".len()..]).unwrap());
                }
                for id in ids {
                    finished(&store, id).await;
                }
            }
        };
        let start = Instant::now();
        if submitters == 1 {
            // On the bench's own thread, as a lone client is: not on the
            // runtime's two workers, beside the pool it is measuring.
            client(0).await;
        } else {
            let mut clients = tokio::task::JoinSet::new();
            for n in 0..submitters {
                clients.spawn(client(n));
            }
            while let Some(done) = clients.join_next().await {
                done.unwrap();
            }
        }
        total += start.elapsed();
        app.handle().shutdown(Duration::from_secs(1)).await;
    }
    total
}

/// Clients submitting to the Redis store at once.
#[cfg(feature = "redis")]
const REDIS_SUBMITTERS: u64 = 32;

/// The same on a redis-server of the bench's own, when one is installed.
#[cfg(feature = "redis")]
fn redis_complete(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    jobs: u64,
) {
    let Some(server) = tower_defer_testkit::redis::RedisServer::start(false) else {
        eprintln!("no redis-server: skipping the Redis group");
        return;
    };
    let namespace = std::sync::atomic::AtomicU64::new(0);
    for concurrency in [16usize, 256] {
        let id = BenchmarkId::new(format!("redis/concurrency={concurrency}"), jobs);
        group.bench_function(id, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (server, namespace) = (&server, &namespace);
                async move {
                    let mut stores = Vec::new();
                    for _ in 0..iters {
                        let ns = format!(
                            "bench{}",
                            namespace.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        );
                        let store = tower_defer::RedisStore::builder(server.url())
                            .namespace(ns)
                            .connect()
                            .await
                            .expect("connects to the bench's redis-server");
                        stores.push(store);
                    }
                    let stores = std::sync::Mutex::new(stores);
                    // A submission waits a round trip to Redis: one client
                    // would measure that latency, not what the store takes.
                    run_jobs(iters, jobs, concurrency, REDIS_SUBMITTERS, || {
                        stores.lock().unwrap().pop().unwrap()
                    })
                    .await
                }
            })
        });
    }
}

criterion_group!(benches, submit, store, complete);
criterion_main!(benches);
