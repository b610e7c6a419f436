//! A Redis Cluster's master killed (SIGKILL) under load: every request in
//! between is answered (201, or 503 with Retry-After, never a hang), the
//! store carries on once a replica has taken over, and with durability
//! `Replicated` no acknowledged job is lost across repeated kills.
//!
//! Each test starts its own cluster (three masters, each with a replica,
//! a one-second node timeout), since it kills nodes of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;
use tower::Layer;
use tower_defer::store::redis::Durability;
use tower_defer::store::Store;
use tower_defer::{DeferLayer, JobId, RedisStore};
use tower_defer_testkit::cluster::{slot_of, RedisCluster};
use tower_defer_testkit::inproc::{call, envelope};
use tower_defer_testkit::redis_cluster_or_skip;

use super::shards::tag_of;
use super::Counter;

/// The store's timeout: a request that meets a dead master answers within
/// about this (and the client's retries), not after the failover.
const TIMEOUT: Duration = Duration::from_millis(1000);

/// The longest a request may take, failover or not: past it, it hung.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);

async fn cluster_store(cluster: &RedisCluster, durability: Durability) -> RedisStore {
    RedisStore::cluster(cluster.urls())
        .namespace("failover")
        .shards(3)
        .durability(durability)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .connect()
        .await
        .expect("connects to the test's Redis Cluster")
}

/// What the submitters saw.
#[derive(Default)]
struct Seen {
    /// The ids of the jobs whose submission answered 201.
    accepted: Vec<String>,
    /// Submissions answered 503 with Retry-After.
    refused: usize,
}

/// Submits from `submitters` tasks until `stop` is set: each answer must
/// be a 201 or a 503 with Retry-After, within [`ANSWER_WITHIN`].
fn load<S, St>(
    app: &tower_defer::Defer<S, St>,
    submitters: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    seen: &Arc<Mutex<Seen>>,
) -> JoinSet<()>
where
    S: tower_defer::InnerService + Clone + Send + Sync + 'static,
    St: Store + Clone + Send + Sync + 'static,
{
    let mut tasks = JoinSet::new();
    for s in 0..submitters {
        let (app, stop, seen) = (app.clone(), stop.clone(), seen.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = envelope(json!({ "data": format!("{s}-{n}") }));
                n += 1;
                let t = Instant::now();
                let answer = tokio::time::timeout(ANSWER_WITHIN, call(&app, req))
                    .await
                    .unwrap_or_else(|_| panic!("a submission hung past {ANSWER_WITHIN:?}"));
                match answer.status.as_u16() {
                    201 => {
                        let id = answer.json()["id"].as_str().unwrap().to_owned();
                        seen.lock().unwrap().accepted.push(id);
                    }
                    503 => {
                        assert!(answer.headers.contains_key("retry-after"), "no Retry-After");
                        seen.lock().unwrap().refused += 1;
                        // As a client told to retry later would.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!(
                        "a submission answered {other} after {:?}: {}",
                        t.elapsed(),
                        String::from_utf8_lossy(&answer.body)
                    ),
                }
            }
        });
    }
    tasks
}

/// Kills the master that holds `shard`, waits for its replica to take over
/// (off the runtime: the kit blocks), and answers the killed node.
async fn kill_the_master_of(cluster: &Arc<Mutex<RedisCluster>>, shard: usize) -> usize {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let mut cluster = cluster.lock().unwrap();
        let victim = cluster.master_for_slot(slot_of(tag_of("failover", shard, 3)));
        cluster.kill(victim);
        cluster.wait_for_failover(victim);
        victim
    })
    .await
    .unwrap()
}

/// Submissions until one is accepted again after a failover: the store
/// carries on by itself.
async fn accepted_again<S, St>(app: &tower_defer::Defer<S, St>)
where
    S: tower_defer::InnerService + Clone + Send + Sync + 'static,
    St: Store + Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut in_a_row = 0;
    // Every shard takes a plain submission in turn: six in a row is each
    // shard twice.
    while in_a_row < 6 {
        let answer = call(app, envelope(json!({ "data": "after" }))).await;
        if answer.status == 201 {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            Instant::now() < deadline,
            "not carrying on after the failover: {}",
            answer.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_every_request_is_answered() {
    let cluster = redis_cluster_or_skip!(3, 1);
    let store = cluster_store(&cluster, Durability::Primary).await;
    let counter = Counter::default();
    let (app, _worker) = DeferLayer::new(store.clone()).pair(counter.service("a"));
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = load(&app, 8, &stop, &seen);
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill_the_master_of(&cluster, 0).await;
    // Load goes on across the failover's end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    accepted_again(&app).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.accepted.len() > 20,
        "load ran: {}",
        seen.accepted.len()
    );
    // Lookups of what was accepted are answered too (a job may be gone:
    // without Replicated, a write the replica had not received is lost).
    let reader = DeferLayer::new(store).layer(counter.service("b"));
    for id in seen.accepted.iter().step_by(7) {
        let answer = call(
            &reader,
            tower_defer_testkit::inproc::get(&format!("/async/{id}")),
        )
        .await;
        assert!(
            matches!(answer.status.as_u16(), 200 | 202 | 404),
            "{id}: {}",
            answer.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicated_durability_no_acknowledged_job_is_lost_across_kills() {
    let cluster = redis_cluster_or_skip!(3, 1);
    let store = cluster_store(&cluster, Durability::Replicated).await;
    let counter = Counter::default();
    let (app, _worker) = DeferLayer::new(store.clone()).pair(counter.service("a"));
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = load(&app, 8, &stop, &seen);
    for shard in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = kill_the_master_of(&cluster, shard).await;
        // The old master comes back as the new one's replica, so the
        // shard can acknowledge submissions again.
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.lock().unwrap().restart(victim))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    accepted_again(&app).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.accepted.len() > 20,
        "load ran: {}",
        seen.accepted.len()
    );
    let mut lost = Vec::new();
    for id in &seen.accepted {
        let id: JobId = id.parse().unwrap();
        // Right after a node comes back the cluster client may for a
        // moment have no connection to use, and a lookup answers
        // unavailable (a 503): read again, as a client told so would.
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            match store.get(id).await {
                Ok(found) => break found,
                Err(e) => {
                    eprintln!("get {id}: {e:?}");
                    assert!(Instant::now() < deadline, "{id}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if found.is_none() {
            lost.push(id);
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged jobs lost: {lost:?}",
        lost.len(),
        seen.accepted.len()
    );
}
