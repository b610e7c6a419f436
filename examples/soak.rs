//! A soak run: a bounded loop of submit -> long-poll -> result over loopback,
//! with memory sampled every 10 s; then it waits for the results to expire and
//! shows whether memory returns to its baseline.
//!
//! ```text
//! cargo run --release --example soak -- --minutes 10
//! ```
//!
//! It runs on the program's allocator (jemalloc, as `src/bin/tower-defer/alloc.rs` sets it),
//! and prints two figures per sample: `rss`, what the process holds from the
//! OS, and `heap`, what is allocated and not yet freed (jemalloc's
//! `stats.allocated`). `heap` back at its baseline says the store let go of
//! everything; `rss` back too says the allocator gave the pages back.
//!
//! Linux only (reads `/proc/self/statm`). Everything stays on 127.0.0.1.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore, Store};

const TTL: Duration = Duration::from_secs(30);
const CLIENTS: usize = 16;
/// How long to keep sampling once the load stops: the results expire after
/// `TTL`, then jemalloc purges freed pages within its 10 s decay.
const DRAIN: Duration = Duration::from_secs(90);

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1 << 20) as f64
}

/// Bytes allocated and not freed, in MiB, per jemalloc (its statistics are
/// cached: advancing the epoch refreshes them).
#[cfg(not(target_env = "msvc"))]
fn heap_mib() -> f64 {
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc epoch");
    let bytes = tikv_jemalloc_ctl::stats::allocated::read().expect("jemalloc stats");
    bytes as f64 / (1 << 20) as f64
}

/// jemalloc does not build with MSVC: no heap figure there.
#[cfg(target_env = "msvc")]
fn heap_mib() -> f64 {
    f64::NAN
}

/// One sample line: memory, and what the store holds.
async fn sample(start: Instant, store: &MemoryStore) -> f64 {
    let rss = rss_mib();
    let stats = store.stats().await.unwrap();
    println!(
        "t={}s rss={rss:.1} MiB heap={:.1} MiB queued={} in_progress={} {store:?}",
        start.elapsed().as_secs(),
        heap_mib(),
        stats.queued,
        stats.in_progress
    );
    rss
}

async fn model(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(Response::new(Body::from(body)))
}

#[tokio::main]
async fn main() {
    let minutes: u64 = std::env::args()
        .skip_while(|a| a != "--minutes")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let store = MemoryStore::new();
    let app = DeferLayer::new(store.clone())
        .result_ttl(TTL)
        .concurrency(32)
        .layer(tower::service_fn(model));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(app.clone());
            tokio::spawn(
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned(),
            );
        }
    });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (baseline, baseline_heap) = (rss_mib(), heap_mib());
    println!(
        "soak: {minutes} min on http://{addr}, {CLIENTS} clients, result TTL {} s",
        TTL.as_secs()
    );
    println!("t=0s rss={baseline:.1} MiB heap={baseline_heap:.1} MiB (baseline)");
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let body = format!(
                    "{{\"data\": {{\"client\": {c}, \"n\": {n}, \"pad\": \"{}\"}}}}",
                    "x".repeat(512)
                );
                let req = Request::post(format!("http://{addr}/async"))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let Ok(r) = client.request(req).await else {
                    continue;
                };
                let b = r.into_body().collect().await.unwrap().to_bytes();
                let id = serde_json::from_slice::<serde_json::Value>(&b).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let poll = Request::get(format!("http://{addr}/async/{id}"))
                    .header("prefer", "wait=10")
                    .body(Full::default())
                    .unwrap();
                let _ = client.request(poll).await.map(|r| r.into_body().collect());
                let result = Request::get(format!("http://{addr}/async/{id}/result"))
                    .body(Full::default())
                    .unwrap();
                if let Ok(r) = client.request(result).await {
                    if r.status() == 200 {
                        done += 1;
                    }
                    let _ = r.into_body().collect().await;
                }
            }
            done
        }));
    }
    let start = Instant::now();
    let mut peak: f64 = baseline;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(10)).await;
        peak = peak.max(sample(start, &store).await);
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    println!(
        "load done: {total} jobs submitted, run and fetched in {} s ({:.0}/s); peak rss {peak:.1} MiB",
        start.elapsed().as_secs(),
        total as f64 / start.elapsed().as_secs_f64()
    );
    // Let every result expire and be swept, and the allocator purge.
    let drained = Instant::now() + DRAIN;
    while Instant::now() < drained {
        tokio::time::sleep(Duration::from_secs(10)).await;
        sample(start, &store).await;
    }
    let (after, after_heap) = (rss_mib(), heap_mib());
    println!(
        "after expiry: rss={after:.1} MiB heap={after_heap:.1} MiB \
         (baseline rss={baseline:.1} heap={baseline_heap:.1}, peak rss={peak:.1}); {store:?}"
    );
}
