//! Memory per queued job: RSS growth with 100 000 queued jobs of 1 KiB bodies.
//!
//! ```text
//! cargo run --release --example memory
//! ```
//!
//! Each job is submitted through the layer, as a client would: `POST /predict`
//! with `Content-Type: application/json`, `Prefer: respond-async` and a 1 KiB
//! body, so what is measured is what the layer keeps (the stored request with
//! its headers, the job, the store's indexes), not a hand-built job. The
//! worker pool is never started (`DeferLayer::pair`), so every job stays
//! queued. Prints the bytes each queued job costs beyond its 1 KiB payload.
//! Linux only (reads `/proc/self/statm`).

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tower::{Service, ServiceExt};
use tower_defer::{Body, DeferLayer, MemoryStore, Store};

const JOBS: usize = 100_000;
const PAYLOAD: usize = 1024;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn request(n: usize) -> Request<Body> {
    // A fresh allocation per job, as a real request body would be.
    let mut body = vec![b'x'; PAYLOAD];
    body[..8].copy_from_slice(&(n as u64).to_le_bytes());
    Request::post("/predict")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Body::from(body))
        .unwrap()
}

async fn never_called(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    unreachable!("the worker pool is not running")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = MemoryStore::new();
    let layer = DeferLayer::new(store.clone())
        .max_queue(usize::MAX)
        .max_time_in_queue(Duration::from_secs(3600));
    let (mut app, _worker) = layer.pair(tower::service_fn(never_called));
    let mut submit = async |n| {
        let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
        assert_eq!(ready.call(request(n)).await.unwrap().status(), 202);
    };
    // Warm up the allocator and the maps, then measure from there.
    for n in 0..1000 {
        submit(n).await;
    }
    let before = rss_bytes();
    for n in 1000..1000 + JOBS {
        submit(n).await;
    }
    let after = rss_bytes();
    let per_job = (after - before) as f64 / JOBS as f64;
    let stats = store.stats().await.unwrap();
    println!("queued jobs: {}", stats.queued);
    println!(
        "RSS growth: {:.1} MiB for {JOBS} jobs",
        (after - before) as f64 / (1 << 20) as f64
    );
    println!(
        "per job: {per_job:.0} bytes = {PAYLOAD} payload + {:.0} overhead",
        per_job - PAYLOAD as f64
    );
}
