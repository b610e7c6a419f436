//! RedisStore across processes and failures, on real time: each test starts
//! its own `redis-server` (the testkit's `RedisServer`).
//!
//! The store contract itself runs on Redis in `tests/store_model/` (the
//! model test, on a paused clock). `production.rs`: TLS, ACL users,
//! timeouts, and the errors of connecting.

mod failover;
mod production;
mod shards;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tower::Layer;
use tower_defer::job::{JobOptions, NewJob, StoredRequest};
use tower_defer::store::Store;
use tower_defer::{Body, DeferLayer, JobId, JobStatus, RedisStore};
use tower_defer_testkit::inproc::{call, envelope, finished_within, get, submit};
use tower_defer_testkit::redis::RedisServer;
use tower_defer_testkit::redis_or_skip;

/// A store on `server` in namespace `ns`, on a running clock.
async fn store(server: &RedisServer, ns: &str) -> RedisStore {
    RedisStore::builder(server.url())
        .namespace(ns)
        .connect()
        .await
        .expect("connects to the test's redis-server")
}

/// Answers `{"echo": <body>}` at once and counts calls per body.
#[derive(Clone, Default)]
struct Counter(Arc<Mutex<HashMap<Bytes, usize>>>);

impl Counter {
    fn service(
        &self,
        who: &'static str,
    ) -> impl tower_defer::InnerService<
        ResponseBody = Body,
        BodyError = tower_defer::BoxError,
        Error = io::Error,
    > {
        let counts = self.0.clone();
        tower::service_fn(move |req: Request<Body>| {
            let counts = counts.clone();
            async move {
                let body = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .map_err(io::Error::other)?
                    .to_bytes();
                *counts.lock().unwrap().entry(body.clone()).or_default() += 1;
                let out = json!({ "by": who, "echo": String::from_utf8_lossy(&body) });
                Ok::<_, io::Error>(Response::new(Body::from(out.to_string())))
            }
        })
    }

    fn snapshot(&self) -> HashMap<Bytes, usize> {
        self.0.lock().unwrap().clone()
    }
}

/// A `POST /` job with `body` and `options`, as the store takes it.
fn post(body: Bytes, options: JobOptions) -> NewJob {
    NewJob {
        request: StoredRequest {
            method: Method::POST,
            path_and_query: "/".parse().unwrap(),
            headers: HeaderMap::new(),
            body,
        },
        options,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_on_one_replica_read_on_another() {
    let server = redis_or_skip!(false);
    let counter = Counter::default();
    // A has no worker at all; B runs every job.
    let (a, _a_worker) = DeferLayer::new(store(&server, "t").await).pair(counter.service("a"));
    let b = DeferLayer::new(store(&server, "t").await).layer(counter.service("b"));
    let id = submit(&a, json!({"data": {"n": 1}})).await;
    let done = finished_within(&b, &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "succeeded");
    let output = call(&a, get(&format!("/async/{id}/output"))).await.json();
    assert_eq!(output["output"]["by"], "b");
    // A long-poll on A is woken by B's completion (pub/sub), not by its timeout.
    let id = submit(&a, json!({"data": {"n": 2}})).await;
    let started = Instant::now();
    let req = Request::get(format!("/async/{id}"))
        .header("prefer", "wait=20")
        .body(Body::empty())
        .unwrap();
    let mut answer = call(&a, req).await;
    while answer.status == 202 && started.elapsed() < Duration::from_secs(15) {
        let req = Request::get(format!("/async/{id}"))
            .header("prefer", "wait=20")
            .body(Body::empty())
            .unwrap();
        answer = call(&a, req).await;
    }
    assert_eq!(answer.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_replica_drops_the_call_running_on_another() {
    let server = redis_or_skip!(false);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    struct OnDrop(Arc<Mutex<Option<oneshot::Sender<()>>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }
    let slow = tower::service_fn(move |_req: Request<Body>| {
        let (started, guard) = (started_tx.clone(), OnDrop(dropped_tx.clone()));
        async move {
            let _guard = guard;
            let _ = started.send(());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, io::Error>(Response::new(Body::empty()))
        }
    });
    let counter = Counter::default();
    let (a, _a_worker) = DeferLayer::new(store(&server, "t").await).pair(counter.service("a"));
    let b = DeferLayer::new(store(&server, "t").await).layer(slow);
    let id = submit(&a, json!({"data": "slow"})).await;
    tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
        .await
        .expect("B starts the job");
    let canceled = call(
        &a,
        Request::delete(format!("/async/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(canceled.status, 200, "{:?}", canceled.json());
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), dropped_rx)
        .await
        .expect("B drops its inner call")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        call(&b, get(&format!("/async/{id}"))).await.json()["status"],
        "canceled"
    );
    assert!(counter.snapshot().is_empty());
}

/// The child side of `a_worker_killed_mid_job_loses_nothing`: runs a worker
/// whose inner call marks a file and then hangs, until it is killed. Does
/// nothing unless the parent test set the environment.
#[test]
fn child_worker() {
    let (Ok(url), Ok(marker)) = (
        std::env::var("TOWER_DEFER_TEST_CHILD_REDIS"),
        std::env::var("TOWER_DEFER_TEST_CHILD_MARKER"),
    ) else {
        return;
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let store = tower_defer::RedisStore::builder(url)
                .namespace("t")
                .connect()
                .await
                .unwrap();
            let hang = tower::service_fn(move |_req: Request<Body>| {
                let marker = marker.clone();
                async move {
                    std::fs::write(&marker, b"started").unwrap();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, io::Error>(Response::new(Body::from("from the child")))
                }
            });
            let _app = DeferLayer::new(store)
                .lease(Duration::from_secs(2))
                .layer(hang);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing() {
    let server = redis_or_skip!(true);
    let marker = std::env::temp_dir().join(format!("tower-defer-child-{}", server.port));
    let _ = std::fs::remove_file(&marker);
    let counter = Counter::default();
    let (a, _a_worker) = DeferLayer::new(store(&server, "t").await).pair(counter.service("a"));
    let id = submit(&a, json!({"data": "once"})).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_worker", "--exact", "--nocapture", "--test-threads=1"])
        .env("TOWER_DEFER_TEST_CHILD_REDIS", server.url())
        .env("TOWER_DEFER_TEST_CHILD_MARKER", &marker)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the child never started the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&a, get(&format!("/async/{id}"))).await.json()["status"],
        "in_progress"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _ = std::fs::remove_file(&marker);
    // Another process (here: this one) takes over once the 2 s lease lapses.
    let b = DeferLayer::new(store(&server, "t").await).layer(counter.service("b"));
    let done = finished_within(&b, &id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let output = call(&b, get(&format!("/async/{id}/output"))).await.json();
    assert_eq!(output["output"]["by"], "b");
    let counts = counter.snapshot();
    assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
    let store = store(&server, "t").await;
    let job = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        (job.attempts, job.lapses),
        (1, 1),
        "the child's lapsed lease spent no attempt; ours did"
    );
    assert_eq!(job.status, JobStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_a_redis_restart_and_an_outage_answers_503() {
    let mut server = redis_or_skip!(true);
    let counter = Counter::default();
    // Short timeouts, so that "promptly" below is a few of them plus the
    // scheduling of a loaded machine, not the 2 s default with little left.
    let quick = RedisStore::builder(server.url())
        .namespace("t")
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connects to the test's redis-server");
    let (a, _a_worker) = DeferLayer::new(quick).pair(counter.service("a"));
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(submit(&a, json!({"data": n})).await);
    }
    server.kill();
    // Down: answers come promptly, and say 503 with Retry-After.
    for req in [
        envelope(json!({"data": "during"})),
        get(&format!("/async/{}", ids[0])),
    ] {
        let t = Instant::now();
        let answer = call(&a, req).await;
        assert_eq!(
            answer.status,
            503,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(answer.headers.contains_key("retry-after"));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    server.restart();
    // Back: the same store reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    let late = loop {
        let answer = call(&a, envelope(json!({"data": "after"}))).await;
        if answer.status == 201 {
            break answer.json()["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no reconnect: {}", answer.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ids.push(late);
    let b = DeferLayer::new(store(&server, "t").await).layer(counter.service("b"));
    for id in &ids {
        assert_eq!(
            finished_within(&b, id, Duration::from_secs(20)).await["status"],
            "succeeded"
        );
    }
    let counts = counter.snapshot();
    assert_eq!(counts.len(), 21, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_on_three_workers_run_once_each() {
    const JOBS: usize = 10_000;
    let server = redis_or_skip!(false);
    let counter = Counter::default();
    let mut apps = Vec::new();
    for who in ["w1", "w2", "w3"] {
        let layer = DeferLayer::new(store(&server, "t").await).concurrency(16);
        apps.push(layer.layer(counter.service(who)));
    }
    let submitter = store(&server, "t").await;
    let mut ids: Vec<JobId> = Vec::with_capacity(JOBS);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let s = submitter.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for n in (chunk..JOBS).step_by(8) {
                let new = post(Bytes::from(n.to_string()), JobOptions::default());
                out.push(s.enqueue(new, usize::MAX).await.unwrap().job.id);
            }
            out
        });
    }
    while let Some(part) = tasks.join_next().await {
        ids.extend(part.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let stats = submitter.stats().await.unwrap();
        if stats.queued == 0 && stats.in_progress == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not done: {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let checked = AtomicUsize::new(0);
    for id in &ids {
        let job = submitter.get(*id).await.unwrap().expect("remembered");
        assert_eq!(job.status, JobStatus::Succeeded, "{id}");
        assert_eq!(job.attempts, 1, "{id}");
        checked.fetch_add(1, Ordering::Relaxed);
    }
    let counts = counter.snapshot();
    assert_eq!(counts.len(), JOBS, "every job ran");
    assert!(counts.values().all(|&n| n == 1), "each exactly once");
    drop(apps);
}

/// Webhook delivery state through Redis, step by step against the pure
/// methods of `Job` (which the model test does not exercise), on a paused
/// clock; and a pending delivery keeps a job past its TTL.
#[tokio::test(start_paused = true)]
async fn webhook_delivery_follows_the_job_state_machine() {
    use tower_defer::job::{
        DeliveryAttempt, Outcome, StoredResponse, WebhookFormat, WebhookTarget,
    };
    use tower_defer::time::Timestamp;
    let server = redis_or_skip!(false);
    let store = tower_defer::RedisStore::builder(server.url())
        .namespace("hooks")
        .hold_paused_clock(true)
        .connect()
        .await
        .unwrap();
    let same = |a: &tower_defer::Job, b: &tower_defer::Job| {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    };
    let mut options = JobOptions::default();
    options.webhook = Some(WebhookTarget {
        url: "http://127.0.0.1:9/hook".into(),
        format: WebhookFormat::Standard,
    });
    options.result_ttl = Duration::from_secs(10);
    let new = post(Bytes::from_static(b"{}"), options);
    let lease = Duration::from_secs(30);
    let job = store.enqueue(new, 100).await.unwrap().job;
    assert!(
        store.claim_delivery(lease).await.unwrap().is_none(),
        "not ended yet"
    );
    let claim = store.claim(lease, None).await.unwrap().unwrap();
    let mut model = claim.job.clone();
    let response = StoredResponse {
        status: http::StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"ok"),
    };
    let done = store
        .complete(job.id, claim.token(), Outcome::response(response.clone()))
        .await
        .unwrap();
    model
        .finish(claim.token(), Timestamp::now(), Outcome::response(response))
        .unwrap();
    same(&done, &model);
    let held = store
        .claim_delivery(lease)
        .await
        .unwrap()
        .expect("due at once");
    let token = model.claim_delivery(Timestamp::now(), lease).unwrap().token;
    assert_eq!(held.lease.token, token);
    same(&held.job, &model);
    assert!(store.claim_delivery(lease).await.unwrap().is_none(), "held");
    let retry_at = Timestamp::now().after(Duration::from_secs(60));
    let attempt = DeliveryAttempt {
        status_code: Some(500),
        error: Some("the receiver answered 500".into()),
        delivered: false,
        retry_at: Some(retry_at),
    };
    let after = store
        .record_delivery(job.id, token, attempt.clone())
        .await
        .unwrap();
    model.record_delivery(token, attempt.clone()).unwrap();
    same(&after, &model);
    assert!(store
        .record_delivery(job.id, token, attempt)
        .await
        .unwrap_err()
        .is_stale_lease());
    // Past the TTL, but the delivery is pending: kept.
    tokio::time::advance(Duration::from_secs(30)).await;
    store.sweep().await.unwrap();
    assert!(store.get(job.id).await.unwrap().is_some());
    assert!(
        store.claim_delivery(lease).await.unwrap().is_none(),
        "not due yet"
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    let held = store
        .claim_delivery(lease)
        .await
        .unwrap()
        .expect("due again");
    let delivered = DeliveryAttempt {
        status_code: Some(204),
        error: None,
        delivered: true,
        retry_at: None,
    };
    let done = store
        .record_delivery(job.id, held.lease.token, delivered)
        .await
        .unwrap();
    assert_eq!(
        done.webhook.as_ref().unwrap().status,
        tower_defer::job::DeliveryStatus::Succeeded
    );
    // Delivered and past the TTL: forgotten.
    assert!(store.get(job.id).await.unwrap().is_none());
    store.sweep().await.unwrap();
    assert!(store.get(job.id).await.unwrap().is_none());
}

/// A finished job's key, and its idempotency slot's, are Redis's to expire
/// (a minute after the result TTL), so nothing is left behind when no
/// replica sweeps; until then neither has a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_and_its_idempotency_slot_expire_in_redis() {
    use tower_defer::job::{Outcome, StoredResponse};
    let server = redis_or_skip!(false);
    let store = tower_defer::RedisStore::builder(server.url())
        .namespace("ttl")
        .connect()
        .await
        .unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut options = JobOptions::default();
    options.idempotency_key = Some("once".into());
    options.result_ttl = Duration::from_secs(10);
    let new = post(Bytes::from_static(b"{}"), options);
    let job = store.enqueue(new, 100).await.unwrap().job;
    let job_key = format!("{{ttl}}:job:{}", job.id);
    let slot_key = "{ttl}:idem:-:once";
    let mut pttl = async |key: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(pttl(&job_key).await, -1, "a queued job has no TTL");
    assert_eq!(pttl(slot_key).await, -1, "nor has its slot");
    let claim = store
        .claim(Duration::from_secs(30), None)
        .await
        .unwrap()
        .unwrap();
    let response = StoredResponse {
        status: http::StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"ok"),
    };
    let status = store
        .complete_status(job.id, claim.token(), Outcome::response(response))
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);
    for key in [job_key.as_str(), slot_key] {
        let left = pttl(key).await;
        assert!(
            (60_000..=70_000).contains(&left),
            "{key} expires with the result TTL and a minute of slack: {left} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_functions_is_given_them_again() {
    let server = redis_or_skip!(false);
    let counter = Counter::default();
    let a = DeferLayer::new(store(&server, "t").await).layer(counter.service("a"));
    let first = submit(&a, json!({"data": "before"})).await;
    // What a restart without persistence, or an operator, does.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let flushed: String = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(flushed, "OK");
    let second = submit(&a, json!({"data": "after"})).await;
    for id in [&first, &second] {
        assert_eq!(
            finished_within(&a, id, Duration::from_secs(20)).await["status"],
            "succeeded"
        );
    }
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(libraries.len(), 1, "loaded again, once: {libraries:?}");
}

/// A server that speaks RESP and answers `+OK` to everything but
/// `FUNCTION`, which it does not know: Redis 6 as `connect` meets it.
fn redis_6() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut input = BufReader::new(stream);
                let mut line = String::new();
                // Each command: "*N\r\n" then N times "$len\r\n<bytes>\r\n".
                while input.read_line(&mut line).unwrap_or(0) > 0 {
                    let n: usize = line.trim()[1..].parse().unwrap();
                    let mut words = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        input.read_line(&mut line).unwrap();
                        let len: usize = line.trim()[1..].parse().unwrap();
                        let mut word = vec![0; len + 2];
                        input.read_exact(&mut word).unwrap();
                        word.truncate(len);
                        words.push(String::from_utf8_lossy(&word).to_uppercase());
                    }
                    let answer = if words[0] == "FUNCTION" {
                        "-ERR unknown command 'FUNCTION', with args beginning with: 'LOAD'\r\n"
                    } else {
                        "+OK\r\n"
                    };
                    if out.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}/0")
}

#[tokio::test]
async fn connect_says_what_is_wrong() {
    use tower_defer::RedisStore;
    let error = |result: Result<RedisStore, tower_defer::store::StoreError>| {
        let e = result.expect_err("must not connect");
        assert!(e.is_unavailable());
        e.to_string()
    };
    assert_eq!(
        error(RedisStore::connect(redis_6()).await),
        "redis: RedisStore needs Redis 7.0 or later (FUNCTION LOAD)"
    );
    assert_eq!(
        error(RedisStore::connect("http://127.0.0.1:1/").await),
        "redis: the URL is not valid"
    );
    assert_eq!(
        error(
            RedisStore::builder("redis://127.0.0.1:1/0")
                .namespace("a{b}")
                .connect()
                .await
        ),
        "redis: the namespace must not contain '{' or '}'"
    );
}
