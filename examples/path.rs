//! The path users run: the proxy in front of an upstream in another process,
//! reached over HTTP, read against a minimal hyper forwarder (the floor).
//!
//! ```text
//! cargo run --release --all-features --example path
//! cargo run --release --all-features --example path -- --connections 64 --duration 10
//! cargo run --release --all-features --example path -- --only floor,job --duration 30
//! ```
//!
//! Every server under test is a process of its own, on `127.0.0.1:0`, and
//! passes its address back on stdout:
//!
//! - the upstream: this program re-run as `path upstream`, a minimal hyper
//!   server that reads each request and answers `201` with a small JSON body;
//! - the floor: this program re-run as `path forward URL`, a hyper server
//!   whose every request is forwarded to the upstream by a pooled hyper-util
//!   client, the least a reverse proxy can do;
//! - the proxy: `--proxy-bin PATH` (any program with the proxy's flags that
//!   prints `listening on http://ADDR`), by default the proxy example,
//!   `target/release/examples/proxy`, which this program first builds with
//!   its own features (`cargo build --release --example proxy`, a no-op when
//!   it is fresh, so an edit to the library is never measured stale). It runs
//!   with `--upstream` set, `--max-queue` raised so that submissions are
//!   measured as accepted work rather than refused with 429, and
//!   `--concurrency` as given (default 16, the proxy's own);
//! - Redis: a `redis-server` of this program's own on a free port, in a temp
//!   dir, with neither snapshots nor an append-only file (as the Redis tests
//!   run it), unless `--no-redis` or there is no `redis-server`.
//!
//! This process is the load generator: `--connections` keep-alive HTTP/1.1
//! connections (hyper's client), each sending its next request as soon as
//! the last is answered, for `--duration` seconds a scenario after half a
//! second of warm-up:
//!
//! 1. `upstream`: `POST /predict` to the upstream itself;
//! 2. `floor`: the same through the minimal forwarder;
//! 3. `pass`: the same through the proxy (not an async route: passed through);
//! 4. `job`: a whole job as a client lives it: `POST /async`, then
//!    `GET /async/{id}` with `Prefer: wait=10` (answered when the job has
//!    ended), then `GET /async/{id}/result`; counted in jobs;
//! 5. `lookup`: a whole job with one lookup: `POST /async`, then the
//!    long-poll alone: three exchanges in all with the upstream call, where a
//!    forward is two;
//! 6. `submit`: `POST /async` alone while the proxy's workers run the jobs;
//!    then it waits for the backlog to drain and prints the end-to-end rate;
//!
//! and 4 to 6 again on Redis (`redis-job`, `redis-lookup`, `redis-submit`).
//! It prints each one's rate, p50 and p99, then the ratios: pass-through /
//! floor, whole jobs / floor, Redis whole jobs / memory whole jobs. `--only`
//! runs the scenarios named (comma-separated) and prints each server's pid
//! on stderr, for a profiler to attach to. The load average is printed at
//! the start and the end: on a shared machine, figures taken under load do
//! not compare with figures taken idle.
//!
//! The load generator shares the machine's cores with the servers, so the
//! absolute figures are lower than a dedicated client's; the ratios, each
//! against a floor measured in the same run, are the figures of merit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

// The proxy's allocator (jemalloc), so that the floor and the upstream run on
// the same allocator as the proxy they are read against.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The inference request: what a client posts to the upstream, and the
/// `data` of a submission.
const INPUT: &str = r#"{"prompt": "How are you?", "max_tokens": 16}"#;
/// A submission whose job is `POST /predict` with [`INPUT`].
const ENVELOPE: &str =
    r#"{"data": {"prompt": "How are you?", "max_tokens": 16}, "path": "/predict"}"#;
/// The upstream's answer to every request.
const OUTPUT: &str = r#"{"model": "instant", "output": "fine, thanks", "tokens": 3}"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match args.first().map(String::as_str) {
        Some("upstream") => runtime.block_on(upstream()),
        Some("forward") => match args.get(1).and_then(|u| u.parse().ok()) {
            Some(to) => runtime.block_on(forward(to)),
            None => fail("usage: path forward http://HOST:PORT"),
        },
        _ => match Options::parse(&args) {
            Ok(options) => runtime.block_on(harness(options)),
            Err(e) => fail(&e),
        },
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

/// Binds `127.0.0.1:0` and tells the parent where, on stdout.
async fn listen(what: &str) -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("the bound address");
    println!("{what} listening on http://{addr}");
    listener
}

/// Serves HTTP/1.1 connections on `listener`, each with `service`.
async fn serve<S>(listener: tokio::net::TcpListener, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The instant upstream: reads the request, answers `201` with [`OUTPUT`].
async fn upstream() {
    let listener = listen("upstream").await;
    let answer = hyper::service::service_fn(|req: Request<Incoming>| async move {
        // Read whole, as a model server would, so the connection stays reusable.
        let _ = req.into_body().collect().await;
        Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(OUTPUT.as_bytes())))
    });
    serve(listener, answer).await;
}

/// The floor: every request forwarded to `to` by a pooled hyper-util client,
/// its body streamed both ways, as a minimal reverse proxy does.
async fn forward(to: http::Uri) {
    let listener = listen("forwarder").await;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let authority = to.authority().cloned().expect("http://HOST:PORT");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, authority) = (client.clone(), authority.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority.clone());
            parts.path_and_query = req.uri().path_and_query().cloned();
            *req.uri_mut() = http::Uri::from_parts(parts).expect("a URI");
            req.headers_mut().remove(http::header::HOST);
            client.request(req)
        });
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

struct Options {
    connections: usize,
    duration: Duration,
    concurrency: u32,
    proxy_bin: Option<PathBuf>,
    redis: bool,
    only: Option<Vec<String>>,
}

const SCENARIOS: &[&str] = &[
    "upstream",
    "floor",
    "pass",
    "job",
    "lookup",
    "submit",
    "redis-job",
    "redis-lookup",
    "redis-submit",
];

const USAGE: &str = "usage: path [--connections N] [--duration SECS] [--concurrency N] \
     [--proxy-bin PATH] [--no-redis] [--only SCENARIO,...]";

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            connections: 32,
            duration: Duration::from_secs(5),
            concurrency: 16,
            proxy_bin: None,
            redis: true,
            only: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            let number = |v: &String| {
                v.parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{flag} needs a positive whole number"))
            };
            match flag.as_str() {
                "--connections" => options.connections = number(value()?)? as usize,
                "--duration" => options.duration = Duration::from_secs(number(value()?)?),
                "--concurrency" => options.concurrency = number(value()?)? as u32,
                "--proxy-bin" => options.proxy_bin = Some(value()?.into()),
                "--no-redis" => options.redis = false,
                "--only" => {
                    let names: Vec<String> = value()?.split(',').map(str::to_owned).collect();
                    if let Some(bad) = names.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
                        return Err(format!(
                            "--only: no scenario {bad:?}; there are {}",
                            SCENARIOS.join(", ")
                        ));
                    }
                    options.only = Some(names);
                }
                _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
            }
        }
        Ok(options)
    }

    fn runs(&self, scenario: &str) -> bool {
        let redis = scenario.starts_with("redis-");
        (self.redis || !redis)
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|n| n == scenario))
    }
}

/// A child process, killed when dropped.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Runs `command` and reads the address from its `listening on
    /// http://ADDR` line; the rest of its stdout is drained and dropped.
    fn start(name: &'static str, mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start the {name}: {e}")));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some((_, addr)) = line.split_once("listening on http://") {
                        break addr.trim().parse().expect("a socket address");
                    }
                }
                _ => {
                    let _ = child.kill();
                    fail(&format!("the {name} exited before it listened"));
                }
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Server { name, child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of our own on a free port and a temp dir, killed and
/// removed when dropped. (The Redis tests have one like it in
/// tests/redis/support.rs, which an example cannot share yet.)
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Option<Redis> {
        let dir = std::env::temp_dir().join(format!("tower-defer-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.answers_ping() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The proxy binary: the one given, or the proxy example built now with this
/// program's features.
fn proxy_binary(options: &Options) -> PathBuf {
    if let Some(bin) = &options.proxy_bin {
        return bin.clone();
    }
    let features = [
        ("proxy", cfg!(feature = "proxy")),
        ("metrics", cfg!(feature = "metrics")),
        ("redis", cfg!(feature = "redis")),
        ("webhooks", cfg!(feature = "webhooks")),
        ("tls", cfg!(feature = "tls")),
        ("fuzzing", cfg!(feature = "fuzzing")),
    ];
    let on: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    if !on.contains(&"proxy") || !on.contains(&"metrics") {
        fail("the proxy example needs the features proxy and metrics: run with --all-features, or give --proxy-bin");
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--example", "proxy"])
        .args(["--features", &on.join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail("cargo build --release --example proxy failed");
    }
    let exe = std::env::current_exe().expect("this program's path");
    // target/release/examples/path -> target/release/examples/proxy
    exe.with_file_name("proxy")
}

fn proxy(bin: &PathBuf, upstream: &Server, options: &Options, store: &str) -> Server {
    let mut command = Command::new(bin);
    command
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.url()])
        .args([
            "--store",
            store,
            "--max-queue",
            "100000000",
            "--result-ttl",
            "60s",
        ])
        .args(["--concurrency", &options.concurrency.to_string()])
        .env("RUST_LOG", "error");
    Server::start("proxy", command)
}

fn this_program(mode: &[&str]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this program's path"));
    command.args(mode);
    command
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// What each connection does, again and again.
#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// `POST /predict` with [`INPUT`]: to the upstream, the floor, or passed through.
    Predict,
    /// Submit, long-poll to the end, fetch the result: one count per job.
    Job,
    /// Submit, then the long-poll alone: one count per job.
    Lookup,
    /// `POST /async` alone: one count per accepted submission.
    Submit,
}

/// What one scenario measured.
struct Run {
    rounds: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.rounds as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us.get(i).copied().unwrap_or(0)) / 1000.0
    }

    fn print(&self, name: &str, unit: &str) {
        println!(
            "{name:<44} {:>8.0} {unit:<6} p50 {:>6.3} ms  p99 {:>6.3} ms  ({} in {:.1} s, {} errors)",
            self.per_second(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.rounds,
            self.elapsed.as_secs_f64(),
            self.errors,
        );
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends `req` and reads the whole answer: its status and body.
async fn exchange(send: &mut Sender, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    send.ready().await.expect("the connection stays open");
    let response = send.send_request(req).await.expect("an answer");
    let status = response.status();
    let body = response.into_body().collect().await.expect("a body");
    (status, body.to_bytes())
}

fn post(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a request")
}

fn get(path: &str, prefer: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", "127.0.0.1");
    if let Some(prefer) = prefer {
        req = req.header("prefer", prefer);
    }
    req.body(Full::default()).expect("a request")
}

/// Submits a job; its id, or `None` if the submission was not accepted.
async fn submit(send: &mut Sender) -> Option<String> {
    let (status, body) = exchange(send, post("/async", ENVELOPE)).await;
    if status != StatusCode::CREATED {
        return None;
    }
    let created: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(created["id"].as_str()?.to_owned())
}

/// Long-polls the job until it has ended; whether it succeeded.
async fn until_done(send: &mut Sender, id: &str) -> bool {
    let path = format!("/async/{id}");
    loop {
        let (status, body) = exchange(send, get(&path, Some("wait=10"))).await;
        match status {
            StatusCode::OK => return body.windows(11).any(|w| w == b"\"succeeded\""),
            StatusCode::ACCEPTED => continue,
            _ => return false,
        }
    }
}

/// One round of `scenario`; whether it went as it should.
async fn round(send: &mut Sender, scenario: Scenario) -> bool {
    match scenario {
        Scenario::Predict => exchange(send, post("/predict", INPUT)).await.0.is_success(),
        Scenario::Submit => submit(send).await.is_some(),
        Scenario::Lookup => match submit(send).await {
            Some(id) => until_done(send, &id).await,
            None => false,
        },
        Scenario::Job => match submit(send).await {
            Some(id) => {
                until_done(send, &id).await
                    && exchange(send, get(&format!("/async/{id}/result"), None))
                        .await
                        .0
                        == StatusCode::CREATED
            }
            None => false,
        },
    }
}

/// Drives `addr` with `connections` keep-alive connections for `duration`.
async fn drive(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    scenario: Scenario,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let mut opened = Vec::new();
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the server accepts");
        stream.set_nodelay(true).expect("nodelay");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("a handshake");
        tokio::spawn(conn);
        opened.push(send);
    }
    let start = Instant::now();
    for mut send in opened {
        let stop = stop.clone();
        tasks.spawn(async move {
            let (mut latencies, mut errors) = (Vec::with_capacity(1 << 16), 0usize);
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ok = round(&mut send, scenario).await;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                errors += usize::from(!ok);
            }
            (latencies, errors)
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        rounds: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (latencies, errors) = done.expect("a connection's task");
        run.latencies_us.extend(latencies);
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    run.rounds = run.latencies_us.len() - run.errors;
    run.latencies_us.sort_unstable();
    run
}

/// Half a second of warm-up (connections, allocators, caches), then the run.
async fn measure(addr: SocketAddr, options: &Options, scenario: Scenario) -> Run {
    let warm = Duration::from_millis(500);
    drive(addr, options.connections, warm, scenario).await;
    if scenario == Scenario::Submit {
        drained(addr).await;
    }
    drive(addr, options.connections, options.duration, scenario).await
}

/// Waits until the proxy has no job queued or running; how long that took.
async fn drained(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the server accepts");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("a handshake");
    tokio::spawn(conn);
    loop {
        let (_, body) = exchange(&mut send, get("/async/queue", None)).await;
        let stats: serde_json::Value = serde_json::from_slice(&body).expect("queue stats");
        if stats["queued"] == 0 && stats["in_progress"] == 0 {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The rates of one store's job scenarios, for the ratios.
#[derive(Default)]
struct Jobs {
    job: Option<f64>,
    lookup: Option<f64>,
}

/// Runs the job scenarios named `{prefix}job` and so on against `proxy`.
async fn job_scenarios(proxy: &Server, options: &Options, store: &str, prefix: &str) -> Jobs {
    let mut jobs = Jobs::default();
    let label = |what: &str| format!("{store}: {what}");
    if options.runs(&format!("{prefix}job")) {
        let run = measure(proxy.addr, options, Scenario::Job).await;
        run.print(&label("job (submit, long-poll, result)"), "jobs/s");
        jobs.job = Some(run.per_second());
    }
    if options.runs(&format!("{prefix}lookup")) {
        let run = measure(proxy.addr, options, Scenario::Lookup).await;
        run.print(&label("job (submit, one long-poll lookup)"), "jobs/s");
        jobs.lookup = Some(run.per_second());
    }
    if options.runs(&format!("{prefix}submit")) {
        let run = measure(proxy.addr, options, Scenario::Submit).await;
        run.print(&label("submissions while the workers run"), "sub/s");
        let drain = drained(proxy.addr).await;
        let whole = run.elapsed + drain;
        println!(
            "{:<44} {:>8.0} jobs/s ({} jobs submitted and run in {:.1} s; the backlog took {:.1} s)",
            label("  the same, end to end"),
            run.rounds as f64 / whole.as_secs_f64(),
            run.rounds,
            whole.as_secs_f64(),
            drain.as_secs_f64(),
        );
    }
    jobs
}

fn ratio(name: &str, over: Option<f64>, under: Option<f64>, target: &str) {
    if let (Some(a), Some(b)) = (over, under) {
        println!("  {name:<40} {:>5.2}   (target {target})", a / b);
    }
}

async fn harness(options: Options) {
    let load_before = load_average();
    let bin = proxy_binary(&options);
    let upstream = Server::start("upstream", this_program(&["upstream"]));
    let forwarder = Server::start("forwarder", this_program(&["forward", &upstream.url()]));
    let memory = proxy(&bin, &upstream, &options, "memory");
    let profiling = options.only.is_some();
    if profiling {
        for server in [&upstream, &forwarder, &memory] {
            eprintln!("{} pid {}", server.name, server.child.id());
        }
    }
    println!(
        "path: {} connections, {} s a scenario, proxy {} --concurrency {}, {} cores, load average {load_before}",
        options.connections,
        options.duration.as_secs(),
        bin.display(),
        options.concurrency,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );

    let (mut upstream_rate, mut floor, mut pass) = (None, None, None);
    if options.runs("upstream") {
        let run = measure(upstream.addr, &options, Scenario::Predict).await;
        run.print("upstream alone (POST /predict)", "req/s");
        upstream_rate = Some(run.per_second());
    }
    if options.runs("floor") {
        let run = measure(forwarder.addr, &options, Scenario::Predict).await;
        run.print("floor: minimal hyper forwarder", "req/s");
        floor = Some(run.per_second());
    }
    if options.runs("pass") {
        let run = measure(memory.addr, &options, Scenario::Predict).await;
        run.print("proxy pass-through", "req/s");
        pass = Some(run.per_second());
    }
    let mem = job_scenarios(&memory, &options, "memory", "").await;
    drop(memory);

    let mut red = Jobs::default();
    if SCENARIOS[6..].iter().any(|s| options.runs(s)) {
        match Redis::start() {
            Some(redis) => {
                let proxy = proxy(&bin, &upstream, &options, &redis.url());
                if profiling {
                    eprintln!("redis proxy pid {}", proxy.child.id());
                    eprintln!("redis-server pid {}", redis.child.id());
                }
                red = job_scenarios(&proxy, &options, "redis", "redis-").await;
            }
            None => println!("redis: skipped (no redis-server could be started)"),
        }
    }

    println!("ratios");
    ratio("floor / upstream alone", floor, upstream_rate, "none");
    ratio("pass-through / floor", pass, floor, ">= 0.95");
    ratio(
        "memory job (long-poll, result) / floor",
        mem.job,
        floor,
        ">= 0.55",
    );
    ratio(
        "memory job (one lookup) / floor",
        mem.lookup,
        floor,
        ">= 0.55",
    );
    ratio("redis job / memory job", red.job, mem.job, ">= 0.5");
    ratio(
        "redis job (one lookup) / memory",
        red.lookup,
        mem.lookup,
        ">= 0.5",
    );
    println!(
        "load average {load_before} at the start, {} at the end",
        load_average()
    );
}
