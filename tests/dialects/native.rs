//! Native routes beyond the VESSL ones: the live page and its data.

use std::io;

use http::Request;
use serde_json::json;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};
use tower_defer_testkit::inproc::*;

#[tokio::test(start_paused = true)]
async fn the_live_page_and_the_recent_jobs_it_lists_per_owner() {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new())
        .owner(|p| p.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
        .layer(inner);
    let as_tenant = |tenant: &str, req: Request<Body>| {
        let (mut parts, body) = req.into_parts();
        parts.headers.insert("x-tenant", tenant.parse().unwrap());
        Request::from_parts(parts, body)
    };
    let mut a_ids = Vec::new();
    for n in 0..3 {
        let a = call(&app, as_tenant("a", envelope(json!({"data": n})))).await;
        a_ids.push(a.json()["id"].as_str().unwrap().to_owned());
    }
    call(&app, as_tenant("b", envelope(json!({"data": "b"})))).await;
    tokio::time::sleep(SECOND).await;

    let recent = call(&app, as_tenant("a", get("/async/recent"))).await;
    assert_eq!(recent.status, 200);
    let listed: Vec<_> = recent.json()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    a_ids.reverse();
    assert_eq!(listed, a_ids, "tenant a's jobs, newest first");
    assert_eq!(recent.json()["jobs"][0]["status"], "succeeded");

    let page = call(&app, get("/async/ui")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(
        ["get(\"queue\")", "get(\"activity\")", "get(\"recent\""]
            .iter()
            .all(|route| html.contains(route)),
        "the page reads the queue, activity and recent routes"
    );
    let post = call(
        &app,
        Request::post("/async/ui").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(post.status, 405);
}

/// A request body that never sends anything.
struct Trickle;

impl http_body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new())
        .body_timeout(std::time::Duration::from_secs(5))
        .layer(inner);
    for (path, prefer) in [("/async", None), ("/predict", Some("respond-async"))] {
        let mut req = Request::post(path).body(Body::new(Trickle)).unwrap();
        if let Some(p) = prefer {
            req.headers_mut().insert("prefer", p.parse().unwrap());
        }
        let start = tokio::time::Instant::now();
        let a = call(&app, req).await;
        assert_eq!(a.status, 408, "{path}");
        assert_eq!(a.json()["code"], "body_timeout");
        assert_eq!(
            a.json()["detail"],
            "the request body did not arrive within 5 s"
        );
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(5));
    }
    let queue = call(&app, get("/async/queue")).await.json();
    assert_eq!(queue["queued"], 0, "nothing was enqueued");
}

#[tokio::test(start_paused = true)]
async fn the_api_answers_while_a_busy_inner_service_holds_back_pass_through() {
    let slow = tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(std::time::Duration::from_secs(100)).await;
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    // One slot, shared by every clone: the worker takes it.
    let inner = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(slow);
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let id = call(&app, envelope(json!({"data": 1}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let start = tokio::time::Instant::now();
    assert_eq!(call(&app, get(&format!("/async/{id}"))).await.status, 202);
    assert_eq!(call(&app, envelope(json!({"data": 2}))).await.status, 201);
    assert_eq!(
        call(&app, get("/async/queue")).await.json()["in_progress"],
        1
    );
    assert_eq!(
        start.elapsed(),
        std::time::Duration::ZERO,
        "the API did not wait"
    );
    // A pass-through waits for the inner service's readiness: until the job's call ends.
    let passed = call(&app, get("/health")).await;
    assert_eq!(passed.status, 200);
    assert!(start.elapsed() >= std::time::Duration::from_secs(99));
}

#[tokio::test(start_paused = true)]
async fn activity_counts_every_finished_job_in_ten_second_buckets() {
    let inner = tower::service_fn(|req: Request<Body>| async move {
        let body = body_bytes(req).await;
        let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(
            input["ms"].as_u64().unwrap(),
        ))
        .await;
        let status = input["status"].as_u64().unwrap() as u16;
        Ok::<_, io::Error>(json_response(status, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(inner);
    // Three jobs, one after another: 200 after 40 ms, 404 after 3 s, 200 after 40 ms.
    let mut ids = Vec::new();
    for (ms, status) in [(40, 200), (3000, 404), (40, 200)] {
        ids.push(submit(&app, json!({"data": {"ms": ms, "status": status}})).await);
    }
    for id in &ids {
        finished(&app, id).await;
    }
    // The buckets end with the last complete one: step into the next.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;

    let a = call(&app, get("/async/activity")).await;
    assert_eq!(a.status, 200);
    let doc = a.json();
    assert_eq!(doc["bucket_seconds"], 10);
    assert_eq!(doc["window_seconds"], 900);
    assert_eq!(doc["queued_by_priority"], json!([0, 0, 0]));
    let buckets = doc["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 90);
    let sum = |f: &dyn Fn(&serde_json::Value) -> u64| buckets.iter().map(f).sum::<u64>();
    assert_eq!(sum(&|b| b["finished"]["succeeded"].as_u64().unwrap()), 2);
    assert_eq!(sum(&|b| b["finished"]["failed"].as_u64().unwrap()), 1);
    assert_eq!(sum(&|b| b["finished"]["canceled"].as_u64().unwrap()), 0);
    assert_eq!(sum(&|b| b["run_seconds"]["count"].as_u64().unwrap()), 3);
    assert_eq!(
        sum(&|b| b["queue_wait_seconds"]["count"].as_u64().unwrap()),
        3
    );
    // The bucket with the 404 knows its call ran about 3 s (within a slot's √2).
    let slow = buckets
        .iter()
        .find(|b| b["finished"]["failed"] == 1)
        .unwrap();
    let p99 = slow["run_seconds"]["p99"].as_f64().unwrap();
    assert!((3.0 / 1.42..=3.0 * 1.42).contains(&p99), "{p99}");
    let rate = slow["finished_per_second"]["failed"].as_f64().unwrap();
    assert_eq!(rate, 0.1);
    // The pool sampled the queue once in each bucket it flushed in.
    assert!(buckets.iter().any(|b| b["queued_by_priority"].is_array()));
    // Every start is ten seconds after the one before.
    let starts: Vec<i64> = buckets.iter().map(|b| ms(&b["start"])).collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] == 10_000));
}

/// An expiry happens in the store's sweep, not in a process: the sweep
/// reports it, and the live page counts it under `expired`.
#[tokio::test(start_paused = true)]
async fn activity_counts_a_job_that_expired_in_the_queue() {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(inner);
    // The first job holds the one slot for a minute; the second waits
    // behind it and expires at its 10 s deadline.
    let running = submit(&app, json!({"data": 1})).await;
    let waiting = submit(&app, json!({"data": 2, "max_time_in_queue_seconds": 10})).await;
    let ended = finished(&app, &waiting).await;
    assert_eq!(ended["status"], "expired");
    assert_eq!(status(&app, &running).await["status"], "in_progress");
    // The buckets end with the last complete one: step past the expiry's.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;

    assert_counted_once(&app, "expired", &ended, &waiting).await;
}

/// A job whose leases lapse too often fails in the store's sweep, not in a
/// process: the sweep reports it, and the live page counts it under `failed`.
#[tokio::test(start_paused = true)]
async fn activity_counts_a_job_its_workers_abandoned() {
    use std::time::Duration;
    use tower_defer::job::MAX_LAPSES;
    use tower_defer::Store;

    let inner = tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    let store = MemoryStore::new();
    let app = DeferLayer::new(store.clone()).concurrency(1).layer(inner);
    // The first job holds the one slot; the second is left to this test,
    // the worker that keeps dying: its leases lapse, and the worker's sweep
    // applies each lapse, the last of which fails the job.
    let running = submit(&app, json!({"data": 1})).await;
    while status(&app, &running).await["status"] != "in_progress" {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let abandoned = submit(&app, json!({"data": 2})).await;
    for _ in 0..MAX_LAPSES {
        let c = store.claim(Duration::from_secs(1), None).await.unwrap();
        assert_eq!(c.unwrap().id().to_string(), abandoned);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ended = finished(&app, &abandoned).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["error"]["code"], "abandoned");
    // The buckets end with the last complete one: step past the failure's.
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_counted_once(&app, "failed", &ended, &abandoned).await;
}

/// `/async/activity` counts one job, `id`, ended (`ended` is its status
/// document) with `status`: in the bucket of its `completed_at`, at 0.1 a
/// second, and no job under another end; and `/async/recent?status=` lists
/// it alone, with its status from the store.
async fn assert_counted_once<S, St>(
    app: &tower_defer::Defer<S, St>,
    status: &str,
    ended: &serde_json::Value,
    id: &str,
) where
    S: tower_defer::InnerService,
    St: tower_defer::Store,
{
    let doc = call(app, get("/async/activity")).await.json();
    let buckets = doc["buckets"].as_array().unwrap();
    let sum = |status: &str| {
        buckets
            .iter()
            .map(|b| b["finished"][status].as_u64().unwrap())
            .sum::<u64>()
    };
    for other in ["succeeded", "failed", "canceled", "expired"] {
        assert_eq!(sum(other), u64::from(other == status), "{other} in {doc}");
    }
    let bucket = buckets.iter().find(|b| b["finished"][status] == 1).unwrap();
    assert_eq!(bucket["finished_per_second"][status].as_f64(), Some(0.1));
    // Counted when it ended: the sweep that ended it reported it.
    let start = ms(&bucket["start"]);
    let ended_at = ms(&ended["completed_at"]);
    assert!(
        (start..start + 10_000).contains(&ended_at),
        "bucket {start}, ended at {ended_at}"
    );
    let recent = call(app, get(&format!("/async/recent?status={status}")))
        .await
        .json();
    assert_eq!(recent["jobs"][0]["id"], id);
    assert_eq!(recent["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn recent_filters_by_status_and_refuses_what_it_does_not_know() {
    let inner = tower::service_fn(|req: Request<Body>| async move {
        let body = body_bytes(req).await;
        let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let status = input["status"].as_u64().unwrap() as u16;
        Ok::<_, io::Error>(json_response(status, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let ok = submit(&app, json!({"data": {"status": 200}})).await;
    let bad = submit(&app, json!({"data": {"status": 400}})).await;
    finished(&app, &ok).await;
    finished(&app, &bad).await;
    let listed = |path: &str| {
        let app = &app;
        let path = path.to_owned();
        async move {
            let a = call(app, get(&path)).await;
            assert_eq!(a.status, 200, "{path}: {}", a.text());
            a.json()["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("/async/recent").await, [bad.as_str(), ok.as_str()]);
    assert_eq!(listed("/async/recent?status=failed").await, [bad.as_str()]);
    assert_eq!(
        listed("/async/recent?status=succeeded").await,
        [ok.as_str()]
    );
    assert_eq!(
        listed("/async/recent?status=succeeded,failed&limit=1").await,
        [bad.as_str()]
    );
    assert!(listed("/async/recent?status=queued").await.is_empty());

    let a = call(&app, get("/async/recent?status=done")).await;
    a.assert_problem(400, "invalid_query", "done");
    assert_eq!(
        a.json()["detail"],
        "unknown status \"done\" in `status`: expected queued, in_progress, succeeded, \
         failed, canceled or expired (several separated by commas)"
    );
    let a = call(&app, get("/async/recent?limit=500")).await;
    a.assert_problem(400, "invalid_query", "limit");
    assert_eq!(
        a.json()["detail"],
        "`limit` must be a whole number from 1 to 200, got \"500\""
    );
    let a = call(
        &app,
        Request::post("/async/activity")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 405);
}
