//! A namespace spread over shards: each job on the shard its id names,
//! claims going round the shards, priority within a shard, the queue limit
//! and idempotency keys of the whole namespace, on one Redis and on a
//! Redis Cluster.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tower_defer::job::{JobOptions, Priority};
use tower_defer::store::{EnqueueError, Store};
use tower_defer::{JobId, RedisStore};
use tower_defer_testkit::cluster::{slot_of, RedisCluster};
use tower_defer_testkit::redis_or_skip;

use super::post;

const LEASE: Duration = Duration::from_secs(30);

/// The shard of `shards` an id names: its first character's value, modulo.
fn shard(id: JobId, shards: usize) -> usize {
    let c = id.as_str().as_bytes()[0];
    let value = if c.is_ascii_digit() {
        c - b'0'
    } else {
        c - b'a' + 10
    };
    usize::from(value) % shards
}

fn options(level: u8) -> JobOptions {
    let mut options = JobOptions::default();
    options.priority = Priority::new(level).unwrap();
    options
}

async fn submit(store: &RedisStore, body: &str, level: u8) -> JobId {
    let new = post(Bytes::from(body.to_owned()), options(level));
    store.enqueue(new, 1_000).await.unwrap().job.id
}

/// Claims until none is left: the bodies, in the order claimed.
async fn drain(store: &RedisStore) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(claim) = store.claim(LEASE, None).await.unwrap() {
        bodies.push(String::from_utf8(claim.job.request.body.to_vec()).unwrap());
    }
    bodies
}

async fn sharded(url: String, ns: &str, shards: usize) -> RedisStore {
    RedisStore::builder(url)
        .namespace(ns)
        .shards(shards)
        .connect()
        .await
        .unwrap()
}

/// Submissions go round the shards, each job's id names the shard whose
/// keys hold it, and every operation on a job finds it there.
#[tokio::test]
async fn each_job_lives_on_the_shard_its_id_names() {
    let server = redis_or_skip!(false);
    let store = sharded(server.url(), "spread", 3).await;
    let mut per_shard = [0; 3];
    for i in 0..9 {
        let id = submit(&store, &format!("job {i}"), 1).await;
        per_shard[shard(id, 3)] += 1;
        assert_eq!(store.get(id).await.unwrap().unwrap().id, id);
    }
    assert_eq!(per_shard, [3, 3, 3], "submissions go round the shards");
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{spread/*}:job:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 9, "{keys:?}");
    for key in keys {
        let (tag, id) = key.split_once("}:job:").unwrap();
        let id: JobId = id.parse().unwrap();
        assert!(
            tag.starts_with(&format!("{{spread/{}/", shard(id, 3))),
            "{key}"
        );
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.queued, 9, "stats add up every shard");
}

/// What a client can rely on across shards: claims visit the shards in
/// turn, so each shard gets its share of them and none starves; priority
/// and age order the jobs of one shard, not those of different shards.
#[tokio::test]
async fn claims_go_round_the_shards_and_priority_holds_within_each() {
    let server = redis_or_skip!(false);
    let store = sharded(server.url(), "turns", 3).await;
    // Round robin: low-0, low-1, low-2 then high-0, high-1, high-2, one of
    // each on every shard (the store's first turn is shard 0).
    for i in 0..3 {
        submit(&store, &format!("low {i}"), 2).await;
    }
    let mut high_shards = Vec::new();
    for i in 0..3 {
        high_shards.push(shard(submit(&store, &format!("high {i}"), 0).await, 3));
    }
    high_shards.sort();
    assert_eq!(high_shards, [0, 1, 2]);
    let order = drain(&store).await;
    // Each shard runs its high job first, so the three claims that visit
    // the three shards first take the three high jobs.
    let (first, last) = order.split_at(3);
    assert!(first.iter().all(|b| b.starts_with("high")), "{order:?}");
    assert!(last.iter().all(|b| b.starts_with("low")), "{order:?}");

    // Twelve jobs on one shard and one on another: the lone job is claimed
    // within a turn of the shards, not after the twelve.
    let other = sharded(server.url(), "starve", 3).await;
    let mut on_shard: HashMap<usize, Vec<String>> = HashMap::new();
    for i in 0..36 {
        let id = submit(&other, &format!("job {i}"), 1).await;
        on_shard
            .entry(shard(id, 3))
            .or_default()
            .push(format!("job {i}"));
    }
    // Take shard 1 and 2 down to one job each.
    let mut claimed = Vec::new();
    while claimed.len() < 22 {
        let claim = other.claim(LEASE, None).await.unwrap().unwrap();
        let body = String::from_utf8(claim.job.request.body.to_vec()).unwrap();
        claimed.push((shard(claim.job.id, 3), body));
    }
    let per_shard = |s: usize| claimed.iter().filter(|(at, _)| *at == s).count();
    let counts = [per_shard(0), per_shard(1), per_shard(2)];
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "every shard gets its turn: {counts:?}"
    );
    // Within a shard, jobs of one level run in the order they came.
    for s in 0..3 {
        let ran: Vec<&String> = claimed
            .iter()
            .filter(|(at, _)| *at == s)
            .map(|(_, b)| b)
            .collect();
        let queued: Vec<&String> = on_shard[&s].iter().take(ran.len()).collect();
        assert_eq!(ran, queued, "FIFO within shard {s}");
    }
}

/// Each shard counts the jobs that expired on it; a sweep reports the sum
/// of every shard's, once.
#[tokio::test]
async fn a_sweep_reports_the_expiries_of_every_shard() {
    let server = redis_or_skip!(false);
    let store = sharded(server.url(), "expiries", 3).await;
    let mut per_shard = [0; 3];
    for i in 0..6 {
        let mut options = options(1);
        options.max_time_in_queue = Duration::from_millis(50);
        let new = post(Bytes::from(format!("job {i}")), options);
        let id = store.enqueue(new, 1_000).await.unwrap().job.id;
        per_shard[shard(id, 3)] += 1;
    }
    assert_eq!(per_shard, [2, 2, 2]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let swept = store.sweep().await.unwrap();
    assert_eq!(swept.expired, 6);
    assert_eq!(store.sweep().await.unwrap().expired, 0);
}

/// The queue limit is the namespace's, whatever the shards: a shard at its
/// share passes a submission on, and the namespace refuses only when full.
#[tokio::test]
async fn the_queue_limit_holds_for_the_whole_namespace() {
    let server = redis_or_skip!(false);
    let store = sharded(server.url(), "limit", 3).await;
    for i in 0..4 {
        let new = post(Bytes::from(format!("job {i}")), JobOptions::default());
        store.enqueue(new, 4).await.unwrap();
    }
    let new = post(Bytes::from_static(b"one more"), JobOptions::default());
    assert!(matches!(
        store.enqueue(new, 4).await,
        Err(EnqueueError::QueueFull { limit: 4 })
    ));
    assert_eq!(store.stats().await.unwrap().queued, 4);
}

/// An idempotency key hashes to one shard, so two replicas that take the
/// same key make one job.
#[tokio::test]
async fn an_idempotency_key_makes_one_job_across_replicas() {
    let server = redis_or_skip!(false);
    let a = sharded(server.url(), "idem", 5).await;
    let b = sharded(server.url(), "idem", 5).await;
    for key in ["alpha", "beta", "gamma", "delta"] {
        let options = || {
            let mut options = JobOptions::default();
            options.idempotency_key = Some(key.into());
            options
        };
        let first = a
            .enqueue(post(Bytes::from(key), options()), 100)
            .await
            .unwrap();
        let again = b
            .enqueue(post(Bytes::from(key), options()), 100)
            .await
            .unwrap();
        assert!(first.created && !again.created, "{key}");
        assert_eq!(first.job.id, again.job.id, "{key}");
    }
    assert_eq!(a.stats().await.unwrap().queued, 4);
}

/// A job's id names its shard by the shard count, so a store that asks for
/// another count than the namespace has is refused, saying so.
#[tokio::test]
async fn a_store_with_another_shard_count_is_refused() {
    let server = redis_or_skip!(false);
    let _first = sharded(server.url(), "fixed", 3).await;
    let refused = RedisStore::builder(server.url())
        .namespace("fixed")
        .shards(2)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "redis: namespace \"fixed\" has 3 shards, and this store asks for 2: every store \
         of a namespace must give the same number (to change it, drain the queue and \
         delete {fixed}:shards, or take a new namespace)"
    );
    for shards in [0, 37] {
        let refused = RedisStore::builder(server.url())
            .namespace("other")
            .shards(shards)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("redis: shards must be 1 to 36, not {shards}")
        );
    }
}

/// A worker idle on one replica wakes for a submission another replica
/// makes on any shard (each shard has its own work channel).
#[tokio::test]
async fn an_idle_worker_wakes_for_work_on_any_shard() {
    let server = redis_or_skip!(false);
    let worker = sharded(server.url(), "wake", 3).await;
    let client = sharded(server.url(), "wake", 3).await;
    for i in 0..3 {
        let until = tower_defer::time::Timestamp::now().after(Duration::from_secs(10));
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.work_available(until).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let id = submit(&client, &format!("job {i}"), 1).await;
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap_or_else(|_| panic!("no wake-up for shard {}", shard(id, 3)))
            .unwrap();
        assert!(worker.claim(LEASE, None).await.unwrap().is_some());
    }
}

/// The hash tag of shard `i` of `count` as the module docs give it:
/// `ns/i/n`, `n` the least that puts its slot in the `i`-th `count`-th of
/// the slots.
pub(super) fn tag_of(ns: &str, i: usize, count: usize) -> String {
    let slots = usize::from(tower_defer_testkit::cluster::SLOTS);
    let span = (i * slots / count)..((i + 1) * slots / count);
    (0..)
        .map(|n| format!("{ns}/{i}/{n}"))
        .find(|tag| span.contains(&usize::from(slot_of(tag))))
        .unwrap()
}

/// On a Redis Cluster of three masters, three shards land on three
/// masters, each job is on its shard's master, and jobs run through all.
#[tokio::test]
async fn on_a_cluster_three_shards_take_three_masters() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls())
        .namespace("masters")
        .shards(3)
        .connect()
        .await
        .unwrap();
    let tags: Vec<String> = (0..3).map(|i| tag_of("masters", i, 3)).collect();
    let mut holders: Vec<usize> = tags
        .iter()
        .map(|tag| cluster.master_for_slot(slot_of(tag)))
        .collect();
    for i in 0..30 {
        let id = submit(&store, &format!("job {i}"), 1).await;
        let tag = &tags[shard(id, 3)];
        let master = cluster.master_for_slot(slot_of(tag));
        let exists = cluster.ask(master, &format!("EXISTS {{{tag}}}:job:{id}"));
        assert_eq!(exists.and_then(|r| r.int()), Some(1), "{id} on {tag}");
    }
    holders.sort();
    holders.dedup();
    assert_eq!(holders.len(), 3, "three shards, three masters");
    assert_eq!(drain(&store).await.len(), 30);
}
