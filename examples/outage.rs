//! How long a backlog takes to clear once an upstream that was down comes
//! back: the figure behind waking the jobs that wait for the upstream.
//!
//! ```text
//! cargo run --release --features proxy --example outage            # 1000 jobs, 10 s outage
//! cargo run --release --features proxy --example outage -- 1000 10 # the same, said
//! ```
//!
//! A model server (HTTP/1.1 on 127.0.0.1, 10 ms a call) is started, runs
//! one job, and is stopped (its listener and connections dropped). The
//! jobs are submitted through the layer (memory store, `Upstream`, the
//! default concurrency of 16) while nothing listens, so every job finds the
//! upstream refusing and backs off, for up to 10 s a wait. After the outage
//! the model server starts again on the same port, and the program prints
//! how long the store took to hold no queued or running job, beside the
//! floor: the jobs' calls alone, 16 at a time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};
use tower_defer::upstream::Upstream;
use tower_defer::{Body, DeferLayer, MemoryStore, Store};

/// How long the model takes per call.
const WORK: Duration = Duration::from_millis(10);
const CONCURRENCY: usize = 16;

/// Serves the model on `addr` until the returned task is aborted, which
/// drops its listener and every connection (they live in its `JoinSet`).
async fn model(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr)
        .await
        .expect("the model's port is free");
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                tokio::time::sleep(WORK).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            });
            connections.spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn job(n: usize) -> Request<Body> {
    Request::post("/async")
        .header("content-type", "application/json")
        .body(Body::from(format!("{{\"data\": {{\"n\": {n}}}}}")))
        .unwrap()
}

async fn submit<S, B>(app: &mut S, n: usize)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let ready = ServiceExt::<Request<Body>>::ready(app).await.unwrap();
    assert_eq!(ready.call(job(n)).await.unwrap().status(), 201);
}

/// Waits until the store holds no queued or running job.
async fn drained(store: &MemoryStore) {
    loop {
        let stats = store.stats().await.unwrap();
        if stats.queued == 0 && stats.in_progress == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(1000, |a| a.parse().expect("jobs"));
    let outage: u64 = args
        .next()
        .map_or(10, |a| a.parse().expect("outage seconds"));

    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server = model(addr).await;
    let store = MemoryStore::new();
    let upstream = Upstream::new(format!("http://{addr}").parse().unwrap()).unwrap();
    let mut app = DeferLayer::new(store.clone())
        .concurrency(CONCURRENCY)
        .layer(upstream);

    // One job while the model is up, then the model stops.
    submit(&mut app, 0).await;
    drained(&store).await;
    server.abort();
    let _ = server.await;

    for n in 1..=jobs {
        submit(&mut app, n).await;
    }
    println!("{jobs} jobs submitted; the upstream is down for {outage} s");
    tokio::time::sleep(Duration::from_secs(outage)).await;

    let back = Instant::now();
    let _server = model(addr).await;
    drained(&store).await;
    let cleared = back.elapsed();
    let floor = WORK * u32::try_from(jobs.div_ceil(CONCURRENCY)).unwrap();
    println!(
        "backlog of {jobs} cleared {:.2} s after the upstream came back \
         (the calls alone, {CONCURRENCY} at a time: {:.2} s)",
        cleared.as_secs_f64(),
        floor.as_secs_f64()
    );
}
