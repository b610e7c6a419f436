//! The load harness: HTTP submit throughput against a trivial route, in one run.
//!
//! ```text
//! cargo run --release --all-features --example load
//! cargo run --release --all-features --example load -- --connections 64 --duration 10 --requests 200000
//! ```
//!
//! It starts, in this process, the server the proxy example runs without
//! `--upstream`: `DeferLayer` over a demo model, served by hyper on
//! `127.0.0.1:0`, on the proxy's allocator (jemalloc), except that the model
//! answers at once. Then it drives it with
//! `--connections` keep-alive HTTP/1.1 connections (hyper's client), each
//! sending its next request as soon as the last is answered, for at most
//! `--duration` seconds or `--requests` requests per scenario:
//!
//! 1. `health`: `GET /health`, passed through the layer and answered by the
//!    model: what the same server does for a trivial route.
//! 2. `predict`: `POST /predict` with the same JSON body as the submission,
//!    passed through and echoed by the model: a trivial route with a request
//!    of the submission's shape (the same bytes to read, a body to answer).
//! 3. `submit`: `POST /async` with a JSON envelope: parsed, stored, `201`.
//! 4. `cycle`: a job's whole life as a client lives it: `POST /async`, then
//!    `GET /async/{id}` with `Prefer: wait=10` (a long-poll that answers when
//!    the job has ended), then `GET /async/{id}/result`. Counted in jobs.
//!
//! and prints requests per second, p50 and p99 latency, and the ratio of the
//! submit throughput to each trivial route's: the layer's cost, as the figure of merit.
//! After the submit run it waits for the workers to run every submitted job
//! and prints how long that took. Client, server and workers share this machine's cores, so the
//! absolute figures are lower than a dedicated server's; the ratio is fair.
//!
//! With `--no-workers` the worker pool is never started (`DeferLayer::pair`):
//! jobs stay queued, and the submit run measures the submission path alone.
//!
//! The queue limit is raised (`max_queue`) far above the default 10 000 so
//! that a burst of submissions faster than the workers drain them is measured
//! as accepted work, not refused with 429; results are kept 60 s only.

// The proxy's allocator (jemalloc): the harness measures the server the
// proxy runs. On glibc malloc the submit run, whose jobs pile up, spends
// much of its time growing the allocator's arenas (an mprotect every few
// jobs) and waking threads that met on its locks.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_defer::{Body, DeferLayer, MemoryStore, Store};

const ENVELOPE: &str =
    r#"{"data": {"prompt": "How are you?", "max_tokens": 16}, "path": "/predict"}"#;

struct Options {
    connections: usize,
    duration: Duration,
    requests: usize,
    workers: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        connections: 32,
        duration: Duration::from_secs(5),
        requests: 200_000,
        workers: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-workers" {
            options.workers = false;
            continue;
        }
        let mut value = || {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag} needs a positive whole number"))
        };
        match flag.as_str() {
            "--connections" => options.connections = value()? as usize,
            "--duration" => options.duration = Duration::from_secs(value()?),
            "--requests" => options.requests = value()? as usize,
            _ => {
                return Err(format!(
                    "unknown argument {flag:?}\nusage: load [--connections N] [--duration SECS] [--requests N] [--no-workers]"
                ))
            }
        }
    }
    Ok(options)
}

/// The demo model of the proxy example, without the inference delay.
async fn instant_model(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/health") => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
        ("POST", "/predict") => {
            let input = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut out = Vec::with_capacity(input.len() + 32);
            out.extend_from_slice(br#"{"model":"demo","echo":"#);
            out.extend_from_slice(&input);
            out.push(b'}');
            Ok(Response::new(Full::new(out.into())))
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            Ok(r)
        }
    }
}

/// What one scenario measured.
struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us.get(i).copied().unwrap_or(0)) / 1000.0
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<8} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  ({} requests in {:.2} s, {} not 2xx)",
            self.per_second(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.requests,
            self.elapsed.as_secs_f64(),
            self.errors,
        );
    }
}

/// What each connection does, again and again.
#[derive(Clone, Copy)]
enum Scenario {
    Health,
    /// `POST /predict` passed through: the same shape as a submission.
    Predict,
    Submit,
    /// Submit, long-poll to the end, fetch the result: one count per job.
    Cycle,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends `req` and reads the whole answer: its status and body.
async fn exchange(send: &mut Sender, req: Request<Full<Bytes>>) -> (http::StatusCode, Bytes) {
    send.ready().await.unwrap();
    let response = send.send_request(req).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// One round of `scenario`; whether every answer was a success.
async fn round(send: &mut Sender, scenario: Scenario) -> bool {
    match scenario {
        Scenario::Health => exchange(send, get("/health", None)).await.0.is_success(),
        Scenario::Predict => exchange(send, post_envelope("/predict"))
            .await
            .0
            .is_success(),
        Scenario::Submit => exchange(send, post_envelope("/async")).await.0.is_success(),
        Scenario::Cycle => {
            let (status, body) = exchange(send, post_envelope("/async")).await;
            if status != 201 {
                return false;
            }
            let created: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = created["id"].as_str().unwrap().to_owned();
            let (status, _) = exchange(send, get(&format!("/async/{id}"), Some("wait=10"))).await;
            if status != 200 {
                return false;
            }
            let (status, _) = exchange(send, get(&format!("/async/{id}/result"), None)).await;
            status == 200
        }
    }
}

/// Drives `addr` with `connections` keep-alive connections until `budget`
/// rounds in all have been run or `duration` has passed.
async fn drive(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    budget: usize,
    scenario: Scenario,
) -> Run {
    let budget = Arc::new(std::sync::atomic::AtomicUsize::new(budget));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let budget = budget.clone();
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline
                && budget
                    .fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
            {
                let sent = Instant::now();
                let ok = round(&mut send, scenario).await;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                errors += usize::from(!ok);
            }
            (latencies, errors)
        });
    }
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (latencies, errors) = done.unwrap();
        run.latencies_us.extend(latencies);
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    run.requests = run.latencies_us.len();
    run.latencies_us.sort_unstable();
    run
}

/// `POST path` with the JSON envelope: a submission at `/async`, the same
/// bytes passed through at `/predict`.
fn post_envelope(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(ENVELOPE.as_bytes())))
        .unwrap()
}

fn get(path: &str, prefer: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", "127.0.0.1");
    if let Some(prefer) = prefer {
        req = req.header("prefer", prefer);
    }
    req.body(Full::default()).unwrap()
}

#[tokio::main]
async fn main() {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let store = MemoryStore::new();
    let layer = DeferLayer::new(store.clone())
        .max_queue(10_000_000)
        .result_ttl(Duration::from_secs(60));
    // `pair` hands the worker pool to us; with --no-workers it is never run,
    // so the submit run measures submission alone (jobs stay queued).
    let (app, worker) = layer.pair(tower::service_fn(instant_model));
    if options.workers {
        tokio::spawn(worker);
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = auto::Builder::new(TokioExecutor::new());
                let _ = conn.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });

    println!(
        "server on {addr}: DeferLayer (memory store, {}) over an instant model, on jemalloc; \
         {} connections, at most {} requests or {} s per scenario, {} cores",
        if options.workers {
            "16 workers"
        } else {
            "no workers"
        },
        options.connections,
        options.requests,
        options.duration.as_secs(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    // Warm up: connections, allocator, caches; results discarded.
    let warm = Duration::from_millis(500);
    drive(addr, options.connections, warm, 20_000, Scenario::Health).await;

    let (c, d, n) = (options.connections, options.duration, options.requests);
    let pass = drive(addr, c, d, n, Scenario::Health).await;
    pass.print("health");
    let predict = drive(addr, c, d, n, Scenario::Predict).await;
    predict.print("predict");
    let sub = drive(addr, c, d, n, Scenario::Submit).await;
    sub.print("submit");
    println!(
        "ratio    submit / health = {:.2}, submit / predict = {:.2}",
        sub.per_second() / pass.per_second(),
        sub.per_second() / predict.per_second()
    );

    if !options.workers {
        let stats = store.stats().await.unwrap();
        println!("(--no-workers: {} jobs left queued)", stats.queued);
        return;
    }
    // The submitted jobs run meanwhile; wait for the rest.
    let drain = Instant::now();
    let backlog = store.stats().await.unwrap();
    loop {
        let s = store.stats().await.unwrap();
        if s.queued == 0 && s.in_progress == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = drain.elapsed();
    println!(
        "drain    {} jobs still queued when the submit run ended ran in {:.2} s",
        backlog.queued + backlog.in_progress,
        drained.as_secs_f64()
    );
    println!(
        "jobs     {:.0} jobs/s end to end ({} jobs submitted and run in {:.2} s)",
        sub.requests as f64 / (sub.elapsed + drained).as_secs_f64(),
        sub.requests,
        (sub.elapsed + drained).as_secs_f64()
    );
    // A job's whole life per round: submit, long-poll until it has ended,
    // fetch the result. Latency is the client's wait for its answer.
    let cycle = drive(addr, c, d, n, Scenario::Cycle).await;
    cycle.print("cycle");
}
