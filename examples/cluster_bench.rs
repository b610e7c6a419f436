//! Jobs/s and each master's Redis work per job, with a namespace spread
//! over 1, 2 and 3 shards of a local Redis Cluster, in one run.
//!
//! ```text
//! cargo run --release --features redis --example cluster_bench -- [JOBS [CONCURRENCY [REPLICAS]]]
//! ```
//!
//! First, as the floor, one round on a single Redis (no cluster, one
//! shard). Then it starts a cluster of three masters (the testkit's: free
//! ports, temp dirs, `REPLICAS` replicas each, 0 unless given) and, for
//! S = 1, 2 and 3, runs a store whose namespace has S shards (on as many
//! masters: the shard tags fall one per master). Each round runs JOBS jobs' whole life at once, as
//! production does: 32 submitters through the layer in process while the
//! worker pool (CONCURRENCY calls at once, 16 unless given; an instant inner
//! service) runs them, until every job has run.
//!
//! It prints jobs/s, this process's CPU per job (the layer, the workers,
//! the store's client), and each master's main-thread CPU per job (from
//! `INFO cpu`), with how far the busiest and the idlest of the S masters in
//! use are from their mean: the store should share the work evenly. On a
//! small host the client shares the cores with the masters, so jobs/s says
//! little of what the cluster carries; the masters' CPU per job does.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower_defer::{Body, DeferLayer, RedisStore, Store};
use tower_defer_testkit::cluster::{Config, RedisCluster};
use tower_defer_testkit::workload::{process_cpu, submit_all};

const SUBMITTERS: usize = 32;

/// One round on the cluster: `jobs` jobs through a store of `shards` shards.
async fn round(cluster: &RedisCluster, shards: usize, jobs: usize, concurrency: usize) {
    let store = RedisStore::cluster(cluster.urls())
        .namespace(format!("bench-{shards}"))
        .shards(shards)
        .connect()
        .await
        .expect("connects to the bench's cluster");
    let masters = cluster.masters();
    for &m in &masters {
        cluster.ask(m, "CONFIG RESETSTAT");
    }
    let cpu = || -> Vec<Duration> {
        masters
            .iter()
            .map(|&m| cluster.main_thread_cpu(m))
            .collect()
    };
    let (wall, client, spent) = run(store, jobs, concurrency, cpu).await;
    report(&format!("S={shards}"), jobs, wall, client, &spent, shards);
    for &m in &masters {
        println!("    master {m}: {}", busiest_commands(cluster, m, jobs));
    }
}

/// The floor: the same round on one Redis, no cluster.
async fn single(jobs: usize, concurrency: usize) {
    let Some(server) = tower_defer_testkit::redis::RedisServer::start(false) else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .connect()
        .await
        .expect("connects to the bench's redis-server");
    let cpu = || vec![server.main_thread_cpu()];
    let (wall, client, spent) = run(store, jobs, concurrency, cpu).await;
    report("single", jobs, wall, client, &spent, 1);
}

/// Runs `jobs` jobs' whole life through `store`: the wall time, this
/// process's CPU seconds, and what `cpu` (the masters' main threads) spent.
async fn run(
    store: RedisStore,
    jobs: usize,
    concurrency: usize,
    cpu: impl Fn() -> Vec<Duration>,
) -> (Duration, f64, Vec<Duration>) {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("{}")))
    });
    let (app, worker) = DeferLayer::new(store.clone())
        .concurrency(concurrency)
        .max_queue(usize::MAX)
        .pair(inner);
    let before = cpu();
    let (started, client_before) = (Instant::now(), process_cpu());
    let running = tokio::spawn(worker);
    submit_all(&app, jobs, SUBMITTERS).await;
    loop {
        let stats = store.stats().await.unwrap();
        if stats.queued == 0 && stats.in_progress == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let client = process_cpu() - client_before;
    running.abort();
    let spent = cpu()
        .into_iter()
        .zip(before)
        .map(|(after, b)| after.saturating_sub(b))
        .collect();
    (wall, client, spent)
}

/// Prints a round: jobs/s, CPU per job, and how evenly the `shards`
/// busiest masters shared the work.
fn report(name: &str, jobs: usize, wall: Duration, client: f64, spent: &[Duration], shards: usize) {
    let per_job = |d: &Duration| d.as_secs_f64() * 1e6 / jobs as f64;
    let spent: Vec<f64> = spent.iter().map(per_job).collect();
    let total: f64 = spent.iter().sum();
    let mut busy = spent.clone();
    busy.sort_by(|a, b| b.total_cmp(a));
    let busy = &busy[..shards];
    let mean = busy.iter().sum::<f64>() / shards as f64;
    let spread = |x: f64| (x / mean - 1.0) * 100.0;
    println!(
        "{name}: {:>7.0} jobs/s; cpu per job: this process {:>5.1} us, masters {:>5.1} us in all ({}); busiest {:+.1}%, idlest {:+.1}% of their mean",
        jobs as f64 / wall.as_secs_f64(),
        client * 1e6 / jobs as f64,
        total,
        spent
            .iter()
            .map(|us| format!("{us:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        spread(busy[0]),
        spread(busy[shards - 1]),
    );
}

/// A master's three costliest commands from `INFO commandstats` (reset at
/// the round's start): calls and µs per job. A function's time includes
/// the commands it ran, which are listed too.
fn busiest_commands(cluster: &RedisCluster, node: usize, jobs: usize) -> String {
    let info = cluster.info(node, "commandstats").unwrap_or_default();
    let mut stats: Vec<(String, f64, f64)> = info
        .lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let per_job = |x: f64| x / jobs as f64;
            Some((
                name.to_owned(),
                per_job(field("calls")),
                per_job(field("usec")),
            ))
        })
        .filter(|(name, _, _)| !name.starts_with("info") && !name.starts_with("config"))
        .collect();
    stats.sort_by(|a, b| b.2.total_cmp(&a.2));
    stats
        .iter()
        .take(4)
        .map(|(name, calls, usec)| format!("{name} {calls:.2} calls {usec:.1} us"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let (jobs, concurrency, replicas) = (arg(1, 20_000), arg(2, 16), arg(3, 0));
    let Some(cluster) = RedisCluster::start_with(Config {
        masters: 3,
        replicas_per_master: replicas,
        ..Config::default()
    }) else {
        return;
    };
    println!(
        "{jobs} jobs a round, {SUBMITTERS} submitters, worker concurrency {concurrency}, \
         3 masters with {replicas} replicas each, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    single(jobs, concurrency).await;
    for shards in [1, 2, 3] {
        round(&cluster, shards, jobs, concurrency).await;
    }
}
