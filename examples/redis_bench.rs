//! Submit throughput and end-to-end jobs/s, Redis store beside the memory
//! store, in one run. Bounded (a fixed number of jobs) and on 127.0.0.1 only:
//! it starts its own `redis-server` on a free port in a temp dir.
//!
//! ```text
//! cargo run --release --features redis --example redis_bench -- [JOBS [CONCURRENCY]]
//! ```
//!
//! For each store: submits JOBS jobs through the layer in process (the native
//! `POST /async`, 32 submitters, workers not running), then starts the worker
//! pool (CONCURRENCY calls at once, 16 unless given; an instant inner
//! service) and times until every job has run.
//!
//! Wall-clock rates swing with whatever else the host runs, so each phase
//! also prints the CPU time it cost per job: this process's (the layer, the
//! workers, the store's client) and, for Redis, the server's main thread,
//! which runs every command one at a time and so bounds the rate. For Redis
//! it then prints where that thread's time went, from `INFO commandstats`
//! (reset before each phase): the functions (`fcall`, whose time includes
//! the commands they run) beside the commands the functions ran, and the
//! client's round trips per job (the calls no function made; the run phase
//! includes the bench's own `stats` polls, one per millisecond once every
//! job has been called).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use redis::aio::MultiplexedConnection;
use tower_defer::{Body, DeferLayer, MemoryStore, RedisStore, Store};
use tower_defer_testkit::workload::{process_cpu, submit_all};

const SUBMITTERS: usize = 32;

async fn bench<St: Store + Clone>(
    name: &str,
    store: St,
    jobs: usize,
    concurrency: usize,
    mut probe: Option<MultiplexedConnection>,
) {
    // Counts the calls, so that the run phase asks the store whether it is
    // done only once every job has been called, rather than polling it
    // (and so adding to Redis's work) all along.
    let called = Arc::new(AtomicUsize::new(0));
    let calls = called.clone();
    let inner = tower::service_fn(move |_req: Request<Body>| {
        calls.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(Response::new(Body::from("{}"))) }
    });
    let (app, worker) = DeferLayer::new(store.clone())
        .concurrency(concurrency)
        .max_queue(usize::MAX)
        .pair(inner);
    let phase = Phase::start(&mut probe).await;
    submit_all(&app, jobs, SUBMITTERS).await;
    let submit = phase.end(&mut probe).await;
    let phase = Phase::start(&mut probe).await;
    let running = tokio::spawn(worker);
    while called.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        let stats = store.stats().await.unwrap();
        if stats.queued == 0 && stats.in_progress == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let run = phase.end(&mut probe).await;
    running.abort();
    println!(
        "{name:>7}: submit {:>8.0} jobs/s ({jobs} in {:.2} s); run {:>8.0} jobs/s ({:.2} s)",
        jobs as f64 / submit.wall.as_secs_f64(),
        submit.wall.as_secs_f64(),
        jobs as f64 / run.wall.as_secs_f64(),
        run.wall.as_secs_f64()
    );
    submit.print("submit", jobs);
    run.print("run", jobs);
}

/// One phase's costs, from its start to its end.
struct Phase {
    started: Instant,
    client_cpu: f64,
    redis_cpu: f64,
}

/// What a phase cost.
struct Spent {
    wall: Duration,
    client_cpu: f64,
    /// Redis: the main thread's CPU seconds and the command statistics.
    redis: Option<(f64, Vec<CommandStat>)>,
}

/// One line of `INFO commandstats`.
struct CommandStat {
    name: String,
    calls: u64,
    usec: u64,
}

impl Phase {
    async fn start(probe: &mut Option<MultiplexedConnection>) -> Phase {
        let mut redis_cpu = 0.0;
        if let Some(conn) = probe {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(conn)
                .await
                .unwrap();
            redis_cpu = redis_main_thread_cpu(conn).await;
        }
        Phase {
            started: Instant::now(),
            client_cpu: process_cpu(),
            redis_cpu,
        }
    }

    async fn end(self, probe: &mut Option<MultiplexedConnection>) -> Spent {
        let wall = self.started.elapsed();
        let client_cpu = process_cpu() - self.client_cpu;
        let redis = match probe {
            Some(conn) => {
                let cpu = redis_main_thread_cpu(conn).await - self.redis_cpu;
                Some((cpu, command_stats(conn).await))
            }
            None => None,
        };
        Spent {
            wall,
            client_cpu,
            redis,
        }
    }
}

impl Spent {
    fn print(&self, phase: &str, jobs: usize) {
        let per_job = |seconds: f64| seconds * 1e6 / jobs as f64;
        print!(
            "  {phase:>6}: cpu per job: this process {:.1} us",
            per_job(self.client_cpu)
        );
        let Some((redis_cpu, stats)) = &self.redis else {
            println!();
            return;
        };
        let trips: u64 = stats
            .iter()
            .filter(|s| CLIENT_COMMANDS.contains(&s.name.as_str()))
            .map(|s| s.calls)
            .sum();
        println!(
            ", redis main thread {:.1} us; {:.2} round trips per job",
            per_job(*redis_cpu),
            trips as f64 / jobs as f64
        );
        for s in stats {
            if s.name.starts_with("info") || s.name.starts_with("config") {
                continue;
            }
            println!(
                "    {:<18} {:>8} calls {:>8.2} usec/call {:>6.1} usec/job",
                s.name,
                s.calls,
                s.usec as f64 / s.calls.max(1) as f64,
                s.usec as f64 / jobs as f64
            );
        }
    }
}

/// The commands the store sends itself in these phases (a function's own
/// commands are the others; `get`, which sends `HGETALL`, is not used here).
const CLIENT_COMMANDS: &[&str] = &["fcall", "function|load"];

/// The Redis main thread's CPU time so far, user and system, in seconds.
async fn redis_main_thread_cpu(conn: &mut MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user_main_thread" || *k == "used_cpu_sys_main_thread")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// `INFO commandstats`, most time first.
async fn command_stats(conn: &mut MultiplexedConnection) -> Vec<CommandStat> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    // cmdstat_fcall:calls=3,usec=400,usec_per_call=133.33,...
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push(CommandStat {
            name: name.to_owned(),
            calls: field("calls"),
            usec: field("usec"),
        });
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.usec));
    out
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
        .min(1_000_000);
    let concurrency: usize = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
        .clamp(1, 10_000);
    // The testkit's server, as the tests use: a free port, a temp dir,
    // stopped (and the dir removed) however the bench ends.
    let Some(server) = tower_defer_testkit::redis::RedisServer::start(true) else {
        return;
    };
    let url = server.url();
    let store = RedisStore::connect(url.as_str())
        .await
        .expect("connects to the bench's redis-server");
    let probe = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    println!("{jobs} jobs, {SUBMITTERS} submitters, worker concurrency {concurrency}, redis-server with appendonly yes");
    bench("memory", MemoryStore::new(), jobs, concurrency, None).await;
    bench("redis", store, jobs, concurrency, Some(probe)).await;
}
