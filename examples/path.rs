//! The path users run: the proxy in front of an upstream in another process,
//! reached over HTTP, read against a minimal hyper forwarder (the floor).
//!
//! ```text
//! cargo run --release --all-features --example path
//! cargo run --release --all-features --example path -- --connections 64 --duration 10
//! cargo run --release --all-features --example path -- --only floor,job --duration 30
//! cargo run --release --all-features --example path -- --callgrind --only floor,lookup --connections 8 --duration 10
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
//!   prints `listening on http://ADDR`), by default the `tower-defer`
//!   program, `target/release/tower-defer`, which this program first builds
//!   (`cargo build --release --features cli --bin tower-defer`, a no-op when
//!   it is fresh, so an edit to the library is never measured stale). It runs
//!   with `--upstream` set, `--max-queue` raised so that submissions are
//!   measured as accepted work rather than refused with 429, and
//!   `--concurrency` as given (default 16, the proxy's own);
//! - Redis: the tests' `RedisServer` (from the testkit): a `redis-server` of
//!   this program's own on a free port, in a temp dir, unless `--no-redis` or there is no `redis-server`.
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
//! It prints each one's rate, p50 and p99, and the CPU time a round took in
//! each process (this one, the upstream, the server under test, Redis),
//! read from `/proc/PID/stat` before and after the run, and how much the
//! server's resident memory grew a round (the proxy keeps each finished
//! job's result for `--result-ttl 60s`). Then the ratios
//! (pass-through / floor, whole jobs / floor, Redis whole jobs / memory whole
//! jobs) twice: as measured, and "CPU-bound", the inverse ratio of the CPU
//! time a round took in all those processes together, which is what the
//! rates would show on a machine that ran nothing else; on a shared machine
//! it holds where the rates swing.
//!
//! `--only` runs the scenarios named (comma-separated) and prints each
//! server's pid on stderr, for a profiler to attach to. `--callgrind` runs
//! the forwarder and the proxy under `valgrind --tool=callgrind`, zeroes its
//! counters after the warm-up and dumps them after the run (the dump's path
//! is printed on stderr, for `callgrind_annotate`), and prints the server's
//! instructions a round: user space only, but the same from one run to the
//! next, where times are not (use few `--connections`: the server runs
//! some fifty times slower). The load average is printed at the start and
//! the end: on a shared machine, figures taken under load do not compare
//! with figures taken idle.
//!
//! The load generator shares the machine's cores with the servers, so the
//! absolute figures are lower than a dedicated client's; the ratios, each
//! against a floor measured in the same run, are the figures of merit.
//!
//! One program, one concept: its servers, its load and its report are read
//! together when a figure looks wrong, so the file stays whole past 600
//! lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use tower_defer_testkit::redis::RedisServer;

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
    callgrind: bool,
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
     [--proxy-bin PATH] [--no-redis] [--only SCENARIO,...] [--callgrind]";

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            connections: 32,
            duration: Duration::from_secs(5),
            concurrency: 16,
            proxy_bin: None,
            redis: true,
            only: None,
            callgrind: false,
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
                "--callgrind" => options.callgrind = true,
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
    /// Where callgrind writes its dumps, when the server runs under it (they
    /// are left there, for `callgrind_annotate`).
    callgrind: Option<PathBuf>,
}

impl Server {
    /// Runs `command` and reads the address from its `listening on
    /// http://ADDR` line; the rest of its stdout is drained and dropped.
    fn start(name: &'static str, mut command: Command) -> Server {
        Server::start_under(name, &mut command, None)
    }

    /// Runs `program` with `args`, under callgrind if `callgrind` (its dumps
    /// then go to a file of the server's name in the temp dir).
    fn start_program(name: &'static str, program: &Path, args: &[&str], callgrind: bool) -> Server {
        // The proxy logs each job at info; a log line a job is not what is measured.
        if !callgrind {
            let mut command = Command::new(program);
            command.args(args).env("RUST_LOG", "error");
            return Server::start_under(name, &mut command, None);
        }
        let out =
            std::env::temp_dir().join(format!("tower-defer-path-{name}-{}.cg", std::process::id()));
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(program)
            .args(args)
            .env("RUST_LOG", "error");
        Server::start_under(name, &mut command, Some(out))
    }

    fn start_under(
        name: &'static str,
        command: &mut Command,
        callgrind: Option<PathBuf>,
    ) -> Server {
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
        Server {
            name,
            child,
            addr,
            callgrind,
        }
    }

    /// Under callgrind: zeroes its counters.
    fn callgrind_zero(&self) {
        if self.callgrind.is_some() {
            callgrind_control("-z", self.child.id());
        }
    }

    /// Under callgrind: dumps its counters; the instructions counted since
    /// they were last zeroed.
    fn callgrind_dump(&self) -> Option<u64> {
        let base = self.callgrind.as_ref()?;
        callgrind_control("-d", self.child.id());
        // Each dump is a file of its own: the base name plus a number.
        let dir = base.parent()?;
        let stem = base.file_name()?.to_str()?;
        let newest = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(stem)))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?;
        eprintln!("callgrind: {}", newest.path().display());
        let text = std::fs::read_to_string(newest.path()).ok()?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|n| n.trim().parse().ok())
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

/// `callgrind_control FLAG PID`, waiting for it: callgrind acts on it when
/// the process next runs.
fn callgrind_control(flag: &str, pid: u32) {
    let _ = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The proxy binary: the one given, or the `tower-defer` program built now
/// (feature `cli`), so that an edited library is never measured stale.
fn proxy_binary(options: &Options) -> PathBuf {
    if let Some(bin) = &options.proxy_bin {
        return bin.clone();
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--features",
            "cli",
            "--bin",
            "tower-defer",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail("cargo build --release --features cli --bin tower-defer failed");
    }
    let exe = std::env::current_exe().expect("this program's path");
    // target/release/examples/path -> target/release/tower-defer
    exe.parent()
        .and_then(Path::parent)
        .expect("the examples directory's parent")
        .join("tower-defer")
}

fn proxy(bin: &Path, upstream: &Server, options: &Options, store: &str) -> Server {
    let concurrency = options.concurrency.to_string();
    let url = upstream.url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &url,
        "--store",
        store,
        "--max-queue",
        "100000000",
        "--result-ttl",
        "60s",
        "--concurrency",
        &concurrency,
    ];
    Server::start_program("proxy", bin, &args, options.callgrind)
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
    /// After a submit run: how long the workers then took to finish the backlog.
    drain: Option<Duration>,
    /// The CPU time each process spent in the run (and the drain), by name.
    cpu: Vec<(&'static str, Duration)>,
    /// Under `--callgrind`: the server's instructions in the run (and the drain).
    instructions: Option<u64>,
    /// How much the server's resident memory grew in the run, in KiB.
    rss_growth_kib: i64,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.rounds as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us.get(i).copied().unwrap_or(0)) / 1000.0
    }

    /// CPU microseconds per round, over every process watched.
    fn cpu_per_round(&self) -> f64 {
        let total: Duration = self.cpu.iter().map(|c| c.1).sum();
        total.as_secs_f64() * 1e6 / self.rounds.max(1) as f64
    }

    fn print(&self, name: &str, unit: &str) {
        println!(
            "{name:<44} {:>8.0} {unit:<6} p50 {:>6.3} ms  p99 {:>7.3} ms  ({} in {:.1} s, {} errors)",
            self.per_second(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.rounds,
            self.elapsed.as_secs_f64(),
            self.errors,
        );
        let per_round = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.rounds.max(1) as f64;
        let each: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, cpu)| format!("{name} {:.0}", per_round(*cpu)))
            .collect();
        println!(
            "{:<44} {:>8.0} us CPU a round: {}",
            "",
            self.cpu_per_round(),
            each.join(", ")
        );
        println!(
            "{:<44} {:>8.1} KiB a round more resident memory in the server",
            "",
            self.rss_growth_kib as f64 / self.rounds.max(1) as f64
        );
        if let Some(n) = self.instructions {
            println!(
                "{:<44} {:>8.0} instructions a round in the server (callgrind)",
                "",
                n as f64 / self.rounds.max(1) as f64
            );
        }
        if let Some(drain) = self.drain {
            let whole = self.elapsed + drain;
            println!(
                "{:<44} {:>8.0} jobs/s end to end ({} jobs submitted and run in {:.1} s; the backlog took {:.1} s)",
                "",
                self.rounds as f64 / whole.as_secs_f64(),
                self.rounds,
                whole.as_secs_f64(),
                drain.as_secs_f64(),
            );
        }
    }
}

/// A process's resident memory (`VmRSS`), in KiB; zero where there is no `/proc`.
fn rss_kib(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A process's CPU time so far, user and system, all its threads (from
/// `/proc/PID/stat`, in clock ticks of 10 ms); zero where there is no `/proc`.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The fields after the command's closing parenthesis, from the third on:
    // utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
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
        drain: None,
        cpu: Vec::new(),
        instructions: None,
        rss_growth_kib: 0,
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

/// The processes whose CPU time is counted: this one (the load generator)
/// and the servers of the scenario, by name and pid.
type Watched = [(&'static str, u32)];

/// Half a second of warm-up (connections, allocators, caches), then the run
/// (and, after a submit run, the drain of its backlog) against `server`,
/// counting the CPU time of the `watched` processes, and the server's
/// instructions if it runs under callgrind.
async fn measure(server: &Server, options: &Options, scenario: Scenario, watched: &Watched) -> Run {
    let addr = server.addr;
    let warm = Duration::from_millis(500);
    drive(addr, options.connections, warm, scenario).await;
    if scenario == Scenario::Submit {
        drained(addr).await;
    }
    server.callgrind_zero();
    let rss_before = rss_kib(server.child.id());
    let before: Vec<Duration> = watched.iter().map(|w| cpu_time(w.1)).collect();
    let mut run = drive(addr, options.connections, options.duration, scenario).await;
    if scenario == Scenario::Submit {
        run.drain = Some(drained(addr).await);
    }
    run.cpu = watched
        .iter()
        .zip(before)
        .map(|(w, before)| (w.0, cpu_time(w.1).saturating_sub(before)))
        .collect();
    run.rss_growth_kib = rss_kib(server.child.id()) - rss_before;
    run.instructions = server.callgrind_dump();
    run
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

/// One store's job scenarios, for the ratios.
#[derive(Default)]
struct Jobs {
    job: Option<Run>,
    lookup: Option<Run>,
}

/// Runs the job scenarios named `{prefix}job` and so on against `proxy`.
async fn job_scenarios(
    proxy: &Server,
    options: &Options,
    watched: &Watched,
    store: &str,
    prefix: &str,
) -> Jobs {
    let mut jobs = Jobs::default();
    let label = |what: &str| format!("{store}: {what}");
    if options.runs(&format!("{prefix}job")) {
        let run = measure(proxy, options, Scenario::Job, watched).await;
        run.print(&label("job (submit, long-poll, result)"), "jobs/s");
        jobs.job = Some(run);
    }
    if options.runs(&format!("{prefix}lookup")) {
        let run = measure(proxy, options, Scenario::Lookup, watched).await;
        run.print(&label("job (submit, one long-poll lookup)"), "jobs/s");
        jobs.lookup = Some(run);
    }
    if options.runs(&format!("{prefix}submit")) {
        let run = measure(proxy, options, Scenario::Submit, watched).await;
        run.print(&label("submissions while the workers run"), "sub/s");
    }
    jobs
}

/// Prints `over / under` twice: as measured (rates), and as it would be on
/// a machine with nothing else to run, where every process's CPU is the
/// limit (the inverse ratio of the CPU time a round takes in all the
/// processes watched). On a shared machine the second holds better.
fn ratio(name: &str, over: Option<&Run>, under: Option<&Run>, target: &str) {
    if let (Some(a), Some(b)) = (over, under) {
        println!(
            "  {name:<40} {:>5.2}  CPU-bound {:>5.2}   (target {target})",
            a.per_second() / b.per_second(),
            b.cpu_per_round() / a.cpu_per_round(),
        );
    }
}

async fn harness(options: Options) {
    let load_before = load_average();
    let bin = proxy_binary(&options);
    let upstream = Server::start("upstream", this_program(&["upstream"]));
    let this = std::env::current_exe().expect("this program's path");
    let forward = ["forward", &upstream.url()];
    let forwarder = Server::start_program("forwarder", &this, &forward, options.callgrind);
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

    let me = ("harness", std::process::id());
    let up = ("upstream", upstream.child.id());
    let (mut upstream_alone, mut floor, mut pass) = (None, None, None);
    if options.runs("upstream") {
        let run = measure(&upstream, &options, Scenario::Predict, &[me, up]).await;
        run.print("upstream alone (POST /predict)", "req/s");
        upstream_alone = Some(run);
    }
    if options.runs("floor") {
        let watched = [me, up, ("forwarder", forwarder.child.id())];
        let run = measure(&forwarder, &options, Scenario::Predict, &watched).await;
        run.print("floor: minimal hyper forwarder", "req/s");
        floor = Some(run);
    }
    let watched = [me, up, ("proxy", memory.child.id())];
    if options.runs("pass") {
        let run = measure(&memory, &options, Scenario::Predict, &watched).await;
        run.print("proxy pass-through", "req/s");
        pass = Some(run);
    }
    let mem = job_scenarios(&memory, &options, &watched, "memory", "").await;
    drop(memory);

    let mut red = Jobs::default();
    if SCENARIOS[6..].iter().any(|s| options.runs(s)) {
        match RedisServer::start(false) {
            Some(redis) => {
                let proxy = proxy(&bin, &upstream, &options, &redis.url());
                if profiling {
                    eprintln!("redis proxy pid {}", proxy.child.id());
                    eprintln!(
                        "redis-server pid {}",
                        redis.pid().expect("the redis-server runs")
                    );
                }
                let watched = [
                    me,
                    up,
                    ("proxy", proxy.child.id()),
                    ("redis", redis.pid().expect("the redis-server runs")),
                ];
                red = job_scenarios(&proxy, &options, &watched, "redis", "redis-").await;
            }
            None => println!("redis: skipped (no redis-server could be started)"),
        }
    }

    println!("ratios                                      measured");
    let (floor, upstream_alone, pass) = (floor.as_ref(), upstream_alone.as_ref(), pass.as_ref());
    ratio("floor / upstream alone", floor, upstream_alone, "none");
    ratio("pass-through / floor", pass, floor, ">= 0.95");
    ratio(
        "memory job (long-poll, result) / floor",
        mem.job.as_ref(),
        floor,
        ">= 0.55",
    );
    ratio(
        "memory job (one lookup) / floor",
        mem.lookup.as_ref(),
        floor,
        ">= 0.55",
    );
    ratio(
        "redis job / memory job",
        red.job.as_ref(),
        mem.job.as_ref(),
        ">= 0.5",
    );
    ratio(
        "redis job (one lookup) / memory",
        red.lookup.as_ref(),
        mem.lookup.as_ref(),
        ">= 0.5",
    );
    println!(
        "load average {load_before} at the start, {} at the end",
        load_average()
    );
}
