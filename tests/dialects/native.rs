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
        html.contains("fetch(\"queue\""),
        "the page reads the queue route"
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
