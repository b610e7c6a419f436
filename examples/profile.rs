//! A fixed workload to count instructions per job under callgrind: the
//! figure that stays put on a shared machine, where wall-clock time does not.
//!
//! ```text
//! cargo build --release --example profile
//! for n in 2000 12000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/profile envelope $n 2>&1 | grep Collected
//! done
//! # (second total - first total) / 10000 = instructions per job
//! ```
//!
//! Modes, each on a current-thread runtime and the memory store, over an
//! inner service that answers at once:
//!
//! - `envelope`: `POST /async` with a JSON envelope, answered `201` (no worker
//!   pool: the submission alone).
//! - `prefer`: `POST /predict` with `Prefer: respond-async`, answered `202`
//!   with a status document (no worker pool).
//! - `e2e`: `POST /async`, with the worker pool running, until every job has
//!   succeeded: a job's whole life.
//! - `status`: `GET /async/{id}` of one queued job, JOBS times (no worker
//!   pool): a client polling.
//!
//! Taking the difference of two runs cancels start-up and shutdown.

use std::str::FromStr;
use std::time::Duration;

use http::Request;
use tower::{Layer, Service, ServiceExt};
use tower_defer::time::Timestamp;
use tower_defer::{Body, DeferLayer, JobId, MemoryStore, Store};
use tower_defer_testkit::workload::{envelope, instant, predict};

/// `predict()` with `Prefer: respond-async`.
fn prefer() -> Request<Body> {
    let mut req = predict();
    req.headers_mut()
        .insert("prefer", http::HeaderValue::from_static("respond-async"));
    req
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mode, jobs) = match (args.next(), args.next().map(|n| n.parse::<usize>())) {
        (Some(mode), Some(Ok(jobs)))
            if ["envelope", "prefer", "e2e", "status"].contains(&mode.as_str()) =>
        {
            (mode, jobs)
        }
        _ => {
            eprintln!("usage: profile envelope|prefer|e2e|status JOBS");
            std::process::exit(2);
        }
    };
    let store = MemoryStore::new();
    let layer = DeferLayer::new(store.clone())
        .concurrency(16)
        .max_queue(usize::MAX);
    if mode == "e2e" {
        let mut app = layer.layer(tower::service_fn(instant));
        let mut ids = Vec::with_capacity(jobs);
        for n in 0..jobs {
            let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
            let created = ready.call(envelope()).await.unwrap();
            let location = created.headers()["location"].to_str().unwrap();
            ids.push(JobId::from_str(&location["/async/".len()..]).unwrap());
            if n % 64 == 63 {
                // Let the workers run beside the submissions, as they would.
                tokio::task::yield_now().await;
            }
        }
        let far = Timestamp::now().after(Duration::from_secs(60));
        for id in ids {
            let mut job = store.get(id).await.unwrap().unwrap();
            while !job.status.is_terminal() {
                job = store.wait(id, job.revision, far).await.unwrap().unwrap();
            }
            assert_eq!(job.status.as_str(), "succeeded");
        }
        return;
    }
    let (mut app, _worker) = layer.pair(tower::service_fn(instant));
    if mode == "status" {
        // One queued job, looked up JOBS times: a client polling.
        let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
        let created = ready.call(envelope()).await.unwrap();
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        for _ in 0..jobs {
            let req = Request::get(location.as_str()).body(Body::empty()).unwrap();
            let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
            assert_eq!(ready.call(req).await.unwrap().status(), 202);
        }
        return;
    }
    for _ in 0..jobs {
        let req = if mode == "prefer" {
            prefer()
        } else {
            envelope()
        };
        let ready = ServiceExt::<Request<Body>>::ready(&mut app).await.unwrap();
        assert!(ready.call(req).await.unwrap().status().is_success());
    }
}
