//! A Redis Cluster's master killed (SIGKILL) under load: every request in
//! between is answered (201, or 503 with Retry-After, never a hang), the
//! store carries on once a replica has taken over, and with durability
//! `Replicated` no acknowledged job is lost across repeated kills.
//!
//! Each test starts its own cluster (three masters, each with a replica,
//! a one-second node timeout), since it kills nodes of it. Each prints what
//! it saw (`cargo test --test redis failover -- --nocapture`): submissions
//! accepted, refused, and accepted jobs lost, which only `Primary` may lose.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;
use tower_defer::store::redis::Durability;
use tower_defer::store::Store;
use tower_defer::{DeferLayer, JobId, RedisStore};
use tower_defer_testkit::cluster::{slot_of, RedisCluster};
use tower_defer_testkit::inproc::{call, envelope};

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

/// What a run of [`kills_under_load`] saw: the submissions accepted and
/// refused, and the accepted jobs the store no longer has.
struct Outcome {
    seen: Seen,
    lost: Vec<JobId>,
}

/// Eight submitters while the master of each shard in turn is killed, its
/// replica takes over, and the old master comes back as the new one's
/// replica (so that a replicated shard can acknowledge again); then checks
/// that the store carries on and looks up every accepted job.
async fn kills_under_load(durability: Durability) -> Option<Outcome> {
    let cluster = RedisCluster::start(3, 1)?;
    let store = cluster_store(&cluster, durability).await;
    let counter = Counter::default();
    let (app, _worker) = DeferLayer::new(store.clone()).pair(counter.service("a"));
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = load(&app, 8, &stop, &seen);
    for shard in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = kill_the_master_of(&cluster, shard).await;
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
    eprintln!(
        "durability {durability:?}: {} accepted, {} refused (503), {} of the accepted lost",
        seen.accepted.len(),
        seen.refused,
        lost.len()
    );
    Some(Outcome { seen, lost })
}

/// Every request is answered and the store carries on, whatever the
/// durability. How many acknowledged jobs a kill took with it is printed
/// (`--nocapture`), not asserted: it is what `Replicated` is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_masters_fail_over_and_every_request_is_answered() {
    let Some(outcome) = kills_under_load(Durability::Primary).await else {
        return;
    };
    assert!(outcome.seen.refused > 0, "a kill refused some submissions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicated_durability_no_acknowledged_job_is_lost_across_kills() {
    let Some(outcome) = kills_under_load(Durability::Replicated).await else {
        return;
    };
    assert!(
        outcome.lost.is_empty(),
        "{} of {} acknowledged jobs lost: {:?}",
        outcome.lost.len(),
        outcome.seen.accepted.len(),
        outcome.lost
    );
}

/// The loss `Replicated` prevents, made certain rather than left to the
/// timing of a kill: the replica of the namespace's master is paused and
/// its link to the master cut (`CLIENT KILL TYPE replica`), so it receives
/// nothing while jobs are submitted; the master is then killed and the
/// replica, resumed, takes over. With `Primary` the jobs
/// were acknowledged and are gone; with `Replicated` none was
/// acknowledged (each answered 503 when no replica confirmed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_loses_acknowledged_jobs_unless_replicated() {
    for durability in [Durability::Primary, Durability::Replicated] {
        let Some(mut cluster) = RedisCluster::start(3, 1) else {
            return;
        };
        let store = RedisStore::cluster(cluster.urls())
            .namespace("lag")
            .durability(durability)
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .connect()
            .await
            .expect("connects to the test's Redis Cluster");
        let master = cluster.master_for_slot(slot_of("lag"));
        let replica = cluster.replicas_of(master)[0];
        cluster.pause(replica);
        cluster.ask(master, "CLIENT KILL TYPE replica");
        let mut accepted = Vec::new();
        for n in 0..5 {
            let new = super::post(format!("job {n}").into(), Default::default());
            match store.enqueue(new, 100).await {
                Ok(made) => accepted.push(made.job.id),
                Err(e) => assert!(e.to_string().contains("no replica acknowledged"), "{e}"),
            }
        }
        cluster.kill(master);
        cluster.resume(replica);
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.wait_for_failover(master);
            cluster
        })
        .await
        .unwrap();
        let mut lost = 0;
        for id in &accepted {
            let deadline = Instant::now() + Duration::from_secs(10);
            let found = loop {
                match store.get(*id).await {
                    Ok(found) => break found,
                    Err(e) => assert!(Instant::now() < deadline, "{id}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            lost += usize::from(found.is_none());
        }
        match durability {
            Durability::Primary => {
                assert_eq!((accepted.len(), lost), (5, 5), "acknowledged, then lost")
            }
            _ => assert_eq!((accepted.len(), lost), (0, 0), "none acknowledged"),
        }
        drop(cluster);
    }
}
