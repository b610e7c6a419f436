//! The job lifecycle, rule by rule, on tokio's paused clock: priorities,
//! deadlines, timeouts, retries, scale to zero, idempotency, TTLs, shutdown.

mod failures;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::Layer;
use tower_defer::store::Store;
use tower_defer::{Body, DeferLayer, JobId, MemoryStore};
use tower_defer_testkit::inproc::*;

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
}

/// An inner service that records each call and answers after `work`.
fn recording(
    calls: Calls,
    work: Duration,
) -> impl tower_defer::InnerService<
    ResponseBody = Body,
    BodyError = tower_defer::BoxError,
    Error = io::Error,
> {
    tower::service_fn(move |req: Request<Body>| {
        let calls = calls.clone();
        async move {
            let body = calls.record(&body_bytes(req).await);
            tokio::time::sleep(work).await;
            Ok::<_, io::Error>(json_response(200, json!({ "echo": body })))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn priority_is_strict_between_levels_and_fifo_within() {
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(recording(calls.clone(), SECOND));
    let blocker = submit(&app, json!({"data": "blocker", "priority": 0})).await;
    tokio::time::sleep(Duration::from_millis(10)).await; // the blocker starts
    let mut ids = vec![blocker];
    for (name, priority) in [
        ("2a", 2),
        ("1a", 1),
        ("0a", 0),
        ("2b", 2),
        ("1b", 1),
        ("0b", 0),
        ("1c", 1),
    ] {
        ids.push(submit(&app, json!({"data": name, "priority": priority})).await);
    }
    for id in &ids {
        assert_eq!(finished(&app, id).await["status"], "succeeded");
    }
    assert_eq!(
        calls.bodies(),
        ["blocker", "0a", "0b", "1a", "1b", "1c", "2a", "2b"].map(Value::from)
    );
}

#[tokio::test(start_paused = true)]
async fn a_low_priority_job_waits_at_most_twice_the_aging_period_under_a_stream_of_high_priority_work(
) {
    let calls = Calls::default();
    let aging = Duration::from_secs(10);
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .priority_aging(Some(aging))
        .layer(recording(calls.clone(), SECOND));
    submit(&app, json!({"data": "first", "priority": 0})).await;
    let low = submit(&app, json!({"data": "low", "priority": 2})).await;
    // Two level-0 jobs a second against one worker taking a second each: the
    // level-0 backlog only grows.
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 0..120 {
                submit(&app, json!({"data": i, "priority": 0})).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let doc = finished(&app, &low).await;
    feeder.abort();
    let waited = ms(&doc["started_at"]) - ms(&doc["created_at"]);
    // The bound: 2 x aging, plus the one call in flight when it came due.
    assert!(waited <= 2 * 10_000 + 1_000, "waited {waited} ms");
    assert!(
        waited >= 2 * 10_000 - 1_000,
        "level 2 ran early: after {waited} ms"
    );
    let before_low = calls.bodies().iter().take_while(|b| **b != "low").count();
    assert!(
        before_low > 10,
        "level-0 work ran first ({before_low} calls)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_not_started_by_its_queue_deadline_expires_and_never_runs() {
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(recording(calls.clone(), Duration::from_secs(100)));
    let blocker = submit(&app, json!({"data": "blocker"})).await;
    let late = submit(
        &app,
        json!({"data": "late", "max_time_in_queue_seconds": 10}),
    )
    .await;
    let doc = finished(&app, &late).await;
    assert_eq!(doc["status"], "expired");
    assert_eq!(doc["error"]["code"], "queue_timeout");
    assert_eq!(doc["attempts"], 0);
    assert_eq!(ms(&doc["completed_at"]) - ms(&doc["created_at"]), 10_000);
    finished(&app, &blocker).await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(calls.bodies(), [Value::from("blocker")]);
    let output = call(&app, get(&format!("/async/{late}/output")))
        .await
        .json();
    assert_eq!(output["status"], "failed");
    assert_eq!(
        output["fail_reason"],
        "not started within its 10 s queue deadline"
    );
    assert!(output.get("status_code").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_job_expires_at_its_deadline_when_the_upstream_is_down_the_whole_time() {
    let tries = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let tries = tries.clone();
        tower::service_fn(move |_req: Request<Body>| {
            tries.lock().unwrap().push(Instant::now());
            async { Err::<Response<Body>, _>(refused()) }
        })
    };
    let start = Instant::now();
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let id = submit(&app, json!({"data": 1, "max_time_in_queue_seconds": 10})).await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "expired");
    assert_eq!(doc["error"]["code"], "queue_timeout");
    assert_eq!(doc["attempts"], 0, "unavailability spends no attempt");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let tries = tries.lock().unwrap();
    assert!(tries.len() >= 3, "it kept trying: {} tries", tries.len());
    assert!(tries
        .iter()
        .all(|t| t.duration_since(start) < Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn an_inner_call_past_the_execution_timeout_is_dropped_and_fails_the_job() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let inner = {
        let dropped = dropped.clone();
        tower::service_fn(move |_req: Request<Body>| {
            let guard = Guard(dropped.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(guard);
                Ok::<_, io::Error>(json_response(200, json!({})))
            }
        })
    };
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let id = submit(&app, json!({"data": 1, "execution_timeout_seconds": 5})).await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"]["code"], "execution_timeout");
    assert_eq!(ms(&doc["completed_at"]) - ms(&doc["started_at"]), 5_000);
    assert!(dropped.load(Ordering::SeqCst));
    // The default is 600 s.
    let app =
        DeferLayer::new(MemoryStore::new()).layer(tower::service_fn(|_r: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, io::Error>(json_response(200, json!({})))
        }));
    let doc = finished(&app, &submit(&app, json!({"data": 1})).await).await;
    assert_eq!(ms(&doc["completed_at"]) - ms(&doc["started_at"]), 600_000);
}

/// An inner service that answers from a script, then 200.
fn scripted(
    script: Vec<Response<Body>>,
    calls: Calls,
) -> impl tower_defer::InnerService<
    ResponseBody = Body,
    BodyError = tower_defer::BoxError,
    Error = io::Error,
> {
    let script = Arc::new(Mutex::new(script.into_iter()));
    tower::service_fn(move |req: Request<Body>| {
        let (script, calls) = (script.clone(), calls.clone());
        async move {
            let body = calls.record(&body_bytes(req).await);
            let next = script.lock().unwrap().next();
            Ok::<_, io::Error>(next.unwrap_or_else(|| json_response(200, json!({"ok": body}))))
        }
    })
}

fn with_retry_after(status: u16, secs: u64) -> Response<Body> {
    let mut r = json_response(status, json!({"busy": true}));
    r.headers_mut().insert("retry-after", secs.into());
    r
}

fn gaps(times: &[Instant]) -> Vec<u128> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn busy_answers_with_retry_after_are_waited_out_without_spending_an_attempt() {
    let calls = Calls::default();
    let script = vec![with_retry_after(503, 7), with_retry_after(429, 3)];
    let app = DeferLayer::new(MemoryStore::new()).layer(scripted(script, calls.clone()));
    let id = submit(&app, json!({"data": 1})).await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["attempts"], 1);
    assert_eq!(gaps(&calls.times()), [7_000, 3_000]);
}

#[tokio::test(start_paused = true)]
async fn server_errors_spend_attempts_with_doubling_delays_and_keep_the_last_response() {
    let calls = Calls::default();
    let script = (0..10)
        .map(|n| json_response(500, json!({"n": n})))
        .collect();
    let app = DeferLayer::new(MemoryStore::new()).layer(scripted(script, calls.clone()));
    let id = submit(&app, json!({"data": 1})).await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["attempts"], 3);
    assert_eq!(doc["status_code"], 500);
    assert_eq!(
        gaps(&calls.times()),
        [1_000, 2_000],
        "defaults: 3 attempts, 1 s doubling"
    );
    let result = call(&app, get(&format!("/async/{id}/result"))).await;
    assert_eq!(result.status, 500);
    assert_eq!(result.json(), json!({"n": 2}), "the last response is kept");
    let output = call(&app, get(&format!("/async/{id}/output"))).await.json();
    assert_eq!(
        output["fail_reason"],
        "Server responded with status code 500"
    );

    // Per job: 4 attempts, 100 ms doubling, capped at 150 ms.
    let calls = Calls::default();
    let script = (0..10)
        .map(|n| json_response(502 + n % 3, json!({})))
        .collect();
    let app = DeferLayer::new(MemoryStore::new()).layer(scripted(script, calls.clone()));
    let retry = json!({"max_attempts": 4, "initial_delay_ms": 100, "max_delay_ms": 150});
    let id = submit(&app, json!({"data": 1, "inference_retry_config": retry})).await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["attempts"], 4);
    assert_eq!(gaps(&calls.times()), [100, 150, 150]);
}

#[tokio::test(start_paused = true)]
async fn the_status_document_shows_a_retry_while_it_waits() {
    let calls = Calls::default();
    let script = vec![json_response(503, json!({}))];
    let app = DeferLayer::new(MemoryStore::new()).layer(scripted(script, calls.clone()));
    let id = submit(&app, json!({"data": 1, "priority": 2})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let doc = status(&app, &id).await;
    assert_eq!(doc["status"], "queued");
    assert_eq!(doc["attempts"], 1);
    assert_eq!(doc["priority"], 2);
    assert_eq!(doc["error"]["code"], "upstream_status");
    assert_eq!(doc["error"]["message"], "the upstream answered 503");
    assert_eq!(ms(&doc["retry_at"]) - ms(&doc["started_at"]), 1_000);
    assert_eq!(ms(&doc["queue_deadline"]) - ms(&doc["created_at"]), 600_000);
    let stats = call(&app, get("/async/queue")).await.json();
    assert_eq!(
        (stats["queued"].clone(), stats["retrying"].clone()),
        (json!(1), json!(1))
    );
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "succeeded");
    assert!(doc.get("retry_at").is_none());
    assert!(doc.get("error").is_none());
    assert_eq!(ms(&doc["expires_at"]) - ms(&doc["completed_at"]), 3_600_000);
}

#[tokio::test(start_paused = true)]
async fn a_job_waiting_out_its_backoff_occupies_no_worker() {
    let calls = Calls::default();
    let script = vec![json_response(500, json!({}))];
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(scripted(script, calls.clone()));
    let retry = json!({"initial_delay_ms": 5000, "max_delay_ms": 5000});
    let a = submit(&app, json!({"data": "a", "inference_retry_config": retry})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = submit(&app, json!({"data": "b"})).await;
    let doc_b = finished(&app, &b).await;
    let doc_a = finished(&app, &a).await;
    assert_eq!(
        (doc_a["status"].clone(), doc_b["status"].clone()),
        (json!("succeeded"), json!("succeeded"))
    );
    assert_eq!(calls.bodies(), ["a", "b", "a"].map(Value::from));
    assert!(ms(&doc_b["completed_at"]) < ms(&doc_a["started_at"]));
}

#[tokio::test(start_paused = true)]
async fn a_retry_queues_behind_fresh_work_of_its_priority() {
    let calls = Calls::default();
    let script = vec![json_response(500, json!({}))];
    let inner = scripted(script, calls.clone());
    let slow = tower::service_fn(move |req: Request<Body>| {
        let mut inner = inner.clone();
        async move {
            tokio::time::sleep(SECOND).await;
            tower_defer::InnerService::call(&mut inner, req).await
        }
    });
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(slow);
    let retry = json!({"initial_delay_ms": 0, "max_delay_ms": 0});
    let a = submit(&app, json!({"data": "a", "inference_retry_config": retry})).await;
    let b = submit(&app, json!({"data": "b"})).await;
    let c = submit(&app, json!({"data": "c"})).await;
    for id in [&a, &b, &c] {
        assert_eq!(finished(&app, id).await["status"], "succeeded");
    }
    assert_eq!(calls.bodies(), ["a", "b", "c", "a"].map(Value::from));
}

#[tokio::test(start_paused = true)]
async fn scale_to_zero_fifty_jobs_wait_for_the_upstream_and_all_complete() {
    let up_at = Instant::now() + Duration::from_secs(2);
    let served = Arc::new(AtomicUsize::new(0));
    let inner = {
        let served = served.clone();
        tower::service_fn(move |req: Request<Body>| {
            let served = served.clone();
            async move {
                if Instant::now() < up_at {
                    return Err(refused());
                }
                let body = body_bytes(req).await;
                served.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(json_response(200, serde_json::from_slice(&body).unwrap()))
            }
        })
    };
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(submit(&app, json!({"data": {"n": n}})).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let doc = finished(&app, id).await;
        assert_eq!(doc["status"], "succeeded", "job {n}: {doc}");
        assert_eq!(
            doc["attempts"], 1,
            "job {n} spent no attempt while the upstream was down"
        );
        let result = call(&app, get(&format!("/async/{id}/result"))).await.json();
        assert_eq!(result, json!({"n": n}));
    }
    assert_eq!(served.load(Ordering::SeqCst), 50);
}

#[tokio::test(start_paused = true)]
async fn an_idempotency_key_returns_the_first_job_and_runs_it_once() {
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new())
        .owner(|p| p.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
        .layer(recording(calls.clone(), SECOND));
    let keyed = |tenant: &str, key: &str, data: Value| {
        Request::post("/async")
            .header("x-tenant", tenant)
            .header("idempotency-key", key)
            .body(Body::from(json!({ "data": data }).to_string()))
            .unwrap()
    };
    let first = call(&app, keyed("a", "k1", json!(1))).await;
    assert_eq!(first.status, 201);
    let again = call(&app, keyed("a", "k1", json!(1))).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.headers["location"], first.headers["location"]);

    let conflict = call(&app, keyed("a", "k1", json!(2))).await;
    assert_eq!(conflict.status, 422);
    assert_eq!(conflict.json()["code"], "idempotency_conflict");
    let other_owner = call(&app, keyed("b", "k1", json!(1))).await;
    assert_eq!(other_owner.status, 201);
    assert_ne!(other_owner.json()["id"], first.json()["id"]);

    // Twenty racing submissions with one key make one job.
    let racers: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, keyed("a", "race", json!("r"))).await })
        })
        .collect();
    let mut ids = HashMap::new();
    for r in racers {
        let a = r.await.unwrap();
        *ids.entry(a.json()["id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        assert!(a.status == 201 || a.status == 200);
    }
    assert_eq!(ids.len(), 1);
    let id = ids.keys().next().unwrap().clone();
    finished_with(&app, &id, &[("x-tenant", "a")]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let runs = calls.bodies().iter().filter(|b| **b == json!("r")).count();
    assert_eq!(runs, 1);
}

#[tokio::test(start_paused = true)]
async fn the_result_ttl_is_per_job_capped_and_ends_in_404() {
    let app = DeferLayer::new(MemoryStore::new())
        .max_result_ttl(Duration::from_secs(100))
        .layer(recording(Calls::default(), SECOND));
    let short = submit(&app, json!({"data": 1, "result_ttl_seconds": 5})).await;
    let capped = submit(&app, json!({"data": 2, "result_ttl_seconds": 1_000_000})).await;
    let doc = finished(&app, &short).await;
    assert_eq!(ms(&doc["expires_at"]) - ms(&doc["completed_at"]), 5_000);
    let doc = finished(&app, &capped).await;
    assert_eq!(ms(&doc["expires_at"]) - ms(&doc["completed_at"]), 100_000);

    // By header on a Prefer submission.
    let req = Request::post("/predict")
        .header("prefer", "respond-async")
        .header("defer-result-ttl", "7")
        .body(Body::from("{}"))
        .unwrap();
    let a = call(&app, req).await;
    assert_eq!(a.status, 202);
    let by_header = a.json()["id"].as_str().unwrap().to_owned();
    let doc = finished(&app, &by_header).await;
    assert_eq!(ms(&doc["expires_at"]) - ms(&doc["completed_at"]), 7_000);

    tokio::time::sleep(Duration::from_secs(8)).await;
    for id in [&short, &by_header] {
        for suffix in ["", "/output", "/result"] {
            let a = call(&app, get(&format!("/async/{id}{suffix}"))).await;
            assert_eq!(a.status, 404, "{id}{suffix}");
        }
    }
    assert_eq!(status(&app, &capped).await["status"], "succeeded");
}

#[tokio::test(start_paused = true)]
async fn options_by_header_on_prefer_submissions() {
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(recording(Calls::default(), Duration::from_secs(100)));
    let req = |headers: &[(&'static str, &'static str)]| {
        let mut b = Request::post("/predict").header("prefer", "respond-async");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::from("{}")).unwrap()
    };
    let a = call(
        &app,
        req(&[("defer-priority", "0"), ("defer-max-time-in-queue", "10")]),
    )
    .await;
    assert_eq!(a.status, 202);
    let doc = a.json();
    assert_eq!(doc["priority"], 0);
    assert_eq!(ms(&doc["queue_deadline"]) - ms(&doc["created_at"]), 10_000);
    let bad = call(&app, req(&[("defer-priority", "7")])).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["detail"],
        "`defer-priority` must be an integer from 0 to 2, got \"7\""
    );
    let bad = call(&app, req(&[("defer-max-attempts", "0")])).await;
    assert_eq!(
        bad.json()["detail"],
        "`defer-max-attempts` must be an integer from 1 to 10, got \"0\""
    );
}

#[tokio::test(start_paused = true)]
async fn the_vessl_view_shows_canceled_and_expired_jobs_as_failed() {
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(recording(Calls::default(), Duration::from_secs(100)));
    submit(&app, json!({"data": 0})).await;
    let canceled = submit(&app, json!({"data": 1})).await;
    let cancel = Request::delete(format!("/async/{canceled}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, cancel).await.status, 200);
    let output = call(&app, get(&format!("/async/{canceled}/output")))
        .await
        .json();
    assert_eq!(
        output,
        json!({"status": "failed", "fail_reason": "canceled by the client"})
    );
    let doc = status(&app, &canceled).await;
    assert_eq!(doc["status"], "canceled");
    assert_eq!(doc["error"]["code"], "canceled");
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_calls_finish_and_leaves_queued_jobs_queued() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let app = DeferLayer::new(store.clone())
        .concurrency(1)
        .layer(recording(calls.clone(), Duration::from_secs(5)));
    let running = submit(&app, json!({"data": "running"})).await;
    let queued = submit(&app, json!({"data": "queued"})).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    app.handle().shutdown(Duration::from_secs(30)).await;
    let running: JobId = running.parse().unwrap();
    let queued: JobId = queued.parse().unwrap();
    let job = store.get(running).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "succeeded");
    let job = store.get(queued).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "queued");
    assert_eq!(calls.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_still_running_after_the_grace_period_is_handed_back_to_the_queue() {
    let store = MemoryStore::new();
    let app = DeferLayer::new(store.clone())
        .layer(recording(Calls::default(), Duration::from_secs(3600)));
    let id: JobId = submit(&app, json!({"data": 1})).await.parse().unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let start = Instant::now();
    app.handle().shutdown(Duration::from_secs(5)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let job = store.get(id).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "queued");
    assert_eq!(job.attempts, 0, "the interrupted attempt is not spent");
    assert_eq!(job.error.unwrap().code.as_str(), "worker_shutdown");
    // Another pool on the same store picks it up.
    let calls = Calls::default();
    let app2 = DeferLayer::new(store.clone()).layer(recording(calls.clone(), SECOND));
    let doc = finished(&app2, id.as_str()).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(calls.len(), 1);
}
