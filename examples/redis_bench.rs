//! Submit throughput and end-to-end jobs/s, Redis store beside the memory
//! store, in one run. Bounded (a fixed number of jobs) and on 127.0.0.1 only:
//! it starts its own `redis-server` on a free port in a temp dir.
//!
//! ```text
//! cargo run --release --features redis --example redis_bench -- [JOBS]
//! ```
//!
//! For each store: submits JOBS jobs through the layer in process (the native
//! `POST /async`, 32 submitters, workers not running), then starts the worker
//! pool (concurrency 16, an instant inner service) and times until every job
//! has run.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::ServiceExt;
use tower_defer::{Body, DeferLayer, MemoryStore, RedisStore, Store};

const SUBMITTERS: usize = 32;

async fn bench<St: Store + Clone>(name: &str, store: St, jobs: usize) {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("{}")))
    });
    let (app, worker) = DeferLayer::new(store.clone())
        .concurrency(16)
        .max_queue(usize::MAX)
        .pair(inner);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..SUBMITTERS {
        let app = app.clone();
        tasks.spawn(async move {
            for n in (s..jobs).step_by(SUBMITTERS) {
                let req = Request::post("/async")
                    .body(Body::from(format!(r#"{{"data": {n}}}"#)))
                    .unwrap();
                let answer = app.clone().oneshot(req).await.unwrap();
                assert_eq!(answer.status(), 201);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let submit = started.elapsed();
    let started = Instant::now();
    let running = tokio::spawn(worker);
    loop {
        let stats = store.stats().await.unwrap();
        if stats.queued == 0 && stats.in_progress == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = started.elapsed();
    running.abort();
    println!(
        "{name:>7}: submit {:>8.0} jobs/s ({jobs} in {:.2} s); run {:>8.0} jobs/s ({:.2} s)",
        jobs as f64 / submit.as_secs_f64(),
        submit.as_secs_f64(),
        jobs as f64 / drain.as_secs_f64(),
        drain.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
        .min(1_000_000);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("tower-defer-bench-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (install it: apt-get install redis-server)");
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = loop {
        match RedisStore::connect(url.as_str()).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    println!("{jobs} jobs, {SUBMITTERS} submitters, worker concurrency 16, redis-server with appendonly yes");
    bench("memory", MemoryStore::new(), jobs).await;
    bench("redis", store, jobs).await;
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
