//! Memory per queued job: RSS growth with 100 000 queued jobs of 1 KiB bodies.
//!
//! ```text
//! cargo run --release --example memory
//! ```
//!
//! Prints the bytes each queued job costs beyond its 1 KiB payload. Linux only
//! (reads `/proc/self/statm`).

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method};
use tower_defer::job::{JobOptions, NewJob, StoredRequest};
use tower_defer::{MemoryStore, Store};

const JOBS: usize = 100_000;
const PAYLOAD: usize = 1024;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn job(n: usize) -> NewJob {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    // A fresh allocation per job, as a real request body would be.
    let mut body = vec![b'x'; PAYLOAD];
    body[..8].copy_from_slice(&(n as u64).to_le_bytes());
    NewJob {
        request: StoredRequest {
            method: Method::POST,
            path_and_query: PathAndQuery::from_static("/predict"),
            headers,
            body: Bytes::from(body),
        },
        options: JobOptions {
            max_time_in_queue: Duration::from_secs(3600),
            ..JobOptions::default()
        },
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = MemoryStore::new();
    // Warm up the allocator and the maps, then measure from there.
    for n in 0..1000 {
        store.enqueue(job(n), usize::MAX).await.unwrap();
    }
    let before = rss_bytes();
    for n in 1000..1000 + JOBS {
        store.enqueue(job(n), usize::MAX).await.unwrap();
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
