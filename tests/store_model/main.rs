//! A state-machine model test of the store contract (`src/store/mod.rs`).
//!
//! proptest draws random sequences of operations — enqueue, claim (with and
//! without priority aging), extend, complete, retry later, cancel, time
//! advancing on tokio's paused clock, sweeps, lapsing leases (counted apart
//! from attempts) and waking the jobs that wait for the upstream — and runs each
//! against a real store and against [`Model`](model::Model), a small
//! reference written from the rules of `src/job.rs` and the ordering rules of
//! `Store::claim`. After every step every job the store was ever given is
//! read back (`get`) and compared with the model, and so are the queue
//! statistics; every answer of every operation is compared as it comes
//! (which job a claim hands out, refused stale writes, idempotent enqueues,
//! cancel outcomes). On top of the model: a terminal job never changes, no
//! job is claimed after it ended, and at the end (time run forward, sweeps,
//! everything claimed and completed) every job has ended and is forgotten
//! after its TTL.
//!
//! The test is generic over the store ([`run`] and [`case`] take a factory),
//! so every store runs the same model: `MemoryStore` with proptest's default
//! case count, and, with feature `redis`, `RedisStore` on a redis-server of
//! the test's own (`redis_store_agrees_with_the_model`, 64 cases: every step
//! is a few round trips), each case in a namespace of its own.
//!
//! Transitions that time makes due (queue deadlines, lapsed leases, retries
//! coming due) are applied when the store sweeps — by `sweep`, and by `claim`,
//! which sweeps first — as the contract's table says; a result past its TTL is
//! gone for every reader at once. The model is exact except where the
//! contract leaves a choice: jobs that became ready in the same sweep at the
//! same level may be claimed in any order, and `oldest_queued_at` may come
//! from any of them.
//!
//! On failure proptest shrinks to a short sequence of operations and prints
//! it with the step that failed and why. `PROPTEST_CASES` changes the number
//! of cases (256 by default).
//!
//! The operations and the strategy that draws them are in `ops.rs`, the
//! model in `model.rs`, and the harness that runs each step on both and
//! compares them in `harness.rs`; this file holds the tests.

mod harness;
mod model;
mod ops;

use std::future::Future;

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use tower_defer::job::MAX_LAPSES;
use tower_defer::{MemoryStore, Store};

use harness::Harness;
use ops::*;

/// Runs `ops` against a fresh store from `make`, then works everything off.
/// Must run inside a runtime with a paused clock.
async fn run<S, F, Fut>(make: F, ops: &[Op]) -> Result<(), String>
where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = S>,
{
    let mut h = Harness::new(make().await);
    for (i, op) in ops.iter().enumerate() {
        let step = async {
            h.step(op).await?;
            h.check().await
        };
        step.await.map_err(|e| format!("step {i} ({op:?}): {e}"))?;
    }
    h.finish()
        .await
        .map_err(|e| format!("working off after {} steps: {e}", ops.len()))
}

/// One proptest case: a current-thread runtime on a paused clock.
fn case<S, F, Fut>(make: F, ops: &[Op]) -> Result<(), TestCaseError>
where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = S>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(run(make, ops))
        .map_err(TestCaseError::fail)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Overridden by PROPTEST_CASES.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        max_shrink_iters: 4096,
        // Failing cases are replayed first on the next run; keep the file with the test.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/store_model/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn memory_store_agrees_with_the_model(ops in ops()) {
        case(|| async { MemoryStore::new() }, &ops)?;
    }
}

/// Found by this test: a lease lapsing at exactly the job's queue deadline
/// lost the job's place in MemoryStore's timer index, so the job sat `queued`
/// past its deadline (until a claim happened to reach it) and `sweep` named a
/// later next due time.
#[test]
fn a_lease_that_lapses_at_the_deadline_expires_the_job() {
    let ops = [
        Enqueue::plain(30_000),
        Op::Claim {
            lease_ms: 30_000,
            aging_ms: None,
        },
        Op::LapseLeases,
        Op::Sweep,
    ];
    case(|| async { MemoryStore::new() }, &ops).unwrap();
}

/// An edge the model must get right: a lease that lapses after the job's queue
/// deadline hands the job back to the queue, where it expires in the same sweep.
#[test]
fn a_lease_that_lapses_after_the_deadline_expires_the_job() {
    let ops = [
        Enqueue::plain(2_000),
        Op::Claim {
            lease_ms: 5_000,
            aging_ms: None,
        },
        Op::LapseLeases,
        Op::Sweep,
    ];
    case(|| async { MemoryStore::new() }, &ops).unwrap();
}

/// Five lapses of one job, the last applied by a claim: random cases rarely
/// reach an abandonment, so this one checks a sweep reports it (once).
fn abandonment() -> Vec<Op> {
    let claim = || Op::Claim {
        lease_ms: 5_000,
        aging_ms: None,
    };
    let mut ops = vec![Enqueue::plain(600_000)];
    for _ in 1..MAX_LAPSES {
        ops.extend([claim(), Op::LapseLeases, Op::Sweep]);
    }
    ops.extend([claim(), Op::LapseLeases, claim(), Op::Sweep, Op::Sweep]);
    ops
}

#[test]
fn a_sweep_reports_a_job_its_workers_abandoned() {
    case(|| async { MemoryStore::new() }, &abandonment()).unwrap();
}

/// The same model on RedisStore: one private redis-server (the testkit's
/// `RedisServer`), a fresh namespace per case.
#[cfg(feature = "redis")]
#[test]
fn redis_store_agrees_with_the_model() {
    use tower_defer::RedisStore;
    use tower_defer_testkit::redis::RedisServer;

    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let url = server.url();
    agrees_on_redis(|| RedisStore::builder(url.clone()));
}

/// The same model on a Redis Cluster (the testkit's shared one): the
/// cluster client's routing changes nothing a store does.
#[cfg(feature = "redis")]
#[test]
fn redis_cluster_store_agrees_with_the_model() {
    use tower_defer::RedisStore;
    use tower_defer_testkit::cluster::RedisCluster;

    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    agrees_on_redis(|| RedisStore::cluster(cluster.urls()));
}

/// Runs the model's cases on stores `builder` makes, a fresh namespace each.
#[cfg(feature = "redis")]
fn agrees_on_redis(builder: impl Fn() -> tower_defer::RedisStoreBuilder) {
    use proptest::test_runner::TestRunner;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let n = AtomicUsize::new(0);
    let mut config = config();
    // Every step is a few round trips: fewer cases than in memory.
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops(), |ops| {
        let namespace = format!("model-{}", n.fetch_add(1, Ordering::Relaxed));
        let builder = builder();
        let make = || async move {
            builder
                .namespace(namespace)
                .hold_paused_clock(true)
                .connect()
                .await
                .expect("connects to the test's Redis")
        };
        case(make, &ops)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The regressions found on MemoryStore, on Redis too.
#[cfg(feature = "redis")]
#[test]
fn redis_store_expires_a_job_whose_lease_lapses_at_or_after_its_deadline() {
    use tower_defer::RedisStore;
    use tower_defer_testkit::redis::RedisServer;
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    for (i, (queue_ms, lease_ms)) in [(30_000, 30_000), (2_000, 5_000)].into_iter().enumerate() {
        let ops = [
            Enqueue::plain(queue_ms),
            Op::Claim {
                lease_ms,
                aging_ms: None,
            },
            Op::LapseLeases,
            Op::Sweep,
        ];
        let url = server.url();
        let make = || async move {
            RedisStore::builder(url)
                .namespace(format!("edge-{i}"))
                .hold_paused_clock(true)
                .connect()
                .await
                .unwrap()
        };
        case(make, &ops).unwrap();
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_store_reports_a_job_its_workers_abandoned() {
    use tower_defer::RedisStore;
    use tower_defer_testkit::redis::RedisServer;
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let url = server.url();
    let make = || async move {
        RedisStore::builder(url)
            .namespace("abandoned")
            .hold_paused_clock(true)
            .connect()
            .await
            .unwrap()
    };
    case(make, &abandonment()).unwrap();
}
