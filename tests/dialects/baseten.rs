//! Baseten (`../shared/reference/001_b634c1868deb8b37.txt`): `POST
//! /async_predict` under every environment prefix, `GET` and `DELETE
//! /async_request/{id}`, `…/async_queue_status`.

use std::io;
use std::time::Duration;

use http::Request;
use serde_json::{json, Value};
use tower::Layer;
use tower_defer::{Baseten, Body, DeferLayer, MemoryStore};
use tower_defer_testkit::inproc::*;

fn model(calls: Calls, work: Duration) -> App<impl tower_defer::InnerService> {
    let inner = tower::service_fn(move |req: Request<Body>| {
        let calls = calls.clone();
        async move {
            let path = req.uri().path().to_owned();
            let input = calls.record(&body_bytes(req).await);
            tokio::time::sleep(work).await;
            if input["fail"] == true {
                return Ok::<_, io::Error>(json_response(500, json!({"error": "boom"})));
            }
            Ok(json_response(200, json!({"path": path, "output": input})))
        }
    });
    DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .baseten(
            Baseten::new()
                .predict_path("/v1/models/m:predict")
                .model_id("abcd1234")
                .deployment_id("dep5678"),
        )
        .layer(inner)
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("authorization", "Api-Key abcd1234.abcd1234")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn with_key(req: Request<Body>) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(
        "authorization",
        "Api-Key abcd1234.abcd1234".parse().unwrap(),
    );
    Request::from_parts(parts, body)
}

async fn predict<S: tower_defer::InnerService>(app: &App<S>, path: &str, body: Value) -> String {
    let a = call(app, post(path, body)).await;
    assert_eq!(
        a.status,
        201,
        "{path}: {:?}",
        String::from_utf8_lossy(&a.body)
    );
    let doc = a.json();
    assert_eq!(doc.as_object().unwrap().len(), 1, "only request_id: {doc}");
    doc["request_id"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn the_status_document_has_exactly_the_reference_fields() {
    let calls = Calls::default();
    let app = model(calls.clone(), SECOND);
    let id = predict(
        &app,
        "/async_predict",
        json!({"model_input": {"prompt": "hi"}}),
    )
    .await;
    let status = || with_key(get(&format!("/async_request/{id}")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let running = call(&app, status()).await;
    assert_eq!(running.status, 200);
    assert_eq!(running.json()["status"], "IN_PROGRESS");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let doc = call(&app, status()).await.json();
    let mut keys: Vec<_> = doc.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "deployment_id",
            "errors",
            "model_id",
            "request_id",
            "status",
            "status_at",
            "webhook_status"
        ]
    );
    assert_eq!(doc["request_id"], id.as_str());
    assert_eq!(doc["model_id"], "abcd1234");
    assert_eq!(doc["deployment_id"], "dep5678");
    assert_eq!(doc["status"], "SUCCEEDED");
    assert_eq!(doc["webhook_status"], "NO_WEBHOOK_PROVIDED");
    assert_eq!(doc["errors"], json!([]));
    assert!(ms(&doc["status_at"]) - ms(&doc["created_at"]) >= 1_000);
    // The inner call was POST {predict_path} with model_input as its body.
    assert_eq!(calls.bodies(), [json!({"prompt": "hi"})]);
}

#[tokio::test(start_paused = true)]
async fn every_environment_prefix_submits() {
    let calls = Calls::default();
    let app = model(calls.clone(), Duration::from_millis(1));
    for path in [
        "/async_predict",
        "/production/async_predict",
        "/development/async_predict",
        "/environments/staging/async_predict",
        "/deployment/dep5678/async_predict",
    ] {
        predict(&app, path, json!({"model_input": path})).await;
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(calls.len(), 5);
    for path in ["/environments//async_predict", "/staging/async_predict"] {
        let a = call(&app, post(path, json!({"model_input": 1}))).await;
        assert_ne!(a.status, 201, "{path} is not a Baseten route");
    }
}

#[tokio::test(start_paused = true)]
async fn out_of_range_fields_are_400_naming_the_field_and_its_range() {
    let app = model(Calls::default(), SECOND);
    let cases = [
        (json!({"model_input": 1, "priority": 3}), "`priority` must be an integer from 0 to 2, got 3"),
        (
            json!({"model_input": 1, "max_time_in_queue_seconds": 5}),
            "`max_time_in_queue_seconds` must be an integer from 10 to 259200, got 5",
        ),
        (
            json!({"model_input": 1, "inference_retry_config": {"max_attempts": 11}}),
            "`inference_retry_config.max_attempts` must be an integer from 1 to 10, got 11",
        ),
        (
            json!({"model_input": 1, "inference_retry_config": {"initial_delay_ms": 10001}}),
            "`inference_retry_config.initial_delay_ms` must be an integer from 0 to 10000, got 10001",
        ),
        (
            json!({"model_input": 1, "inference_retry_config": {"max_delay_ms": 60001}}),
            "`inference_retry_config.max_delay_ms` must be an integer from 0 to 60000, got 60001",
        ),
        (json!({"priority": 1}), "missing field `model_input`"),
    ];
    for (body, detail) in cases {
        let a = call(&app, post("/async_predict", body.clone())).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.json()["detail"], detail);
    }
}

#[tokio::test(start_paused = true)]
async fn only_queued_jobs_cancel() {
    let app = model(Calls::default(), Duration::from_secs(10));
    let running = predict(&app, "/async_predict", json!({"model_input": 1})).await;
    let queued = predict(&app, "/async_predict", json!({"model_input": 2})).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let cancel = |id: &str| {
        with_key(
            Request::delete(format!("/async_request/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
    };

    let a = call(&app, cancel(&queued)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json(),
        json!({"request_id": queued, "canceled": true, "message": format!("Request {queued} was canceled.")})
    );
    let a = call(&app, cancel(&running)).await;
    assert_eq!(
        a.json(),
        json!({"request_id": running, "canceled": false,
               "message": format!("Request {running} was not canceled: it is in progress.")})
    );
    let doc = call(&app, with_key(get(&format!("/async_request/{queued}"))))
        .await
        .json();
    assert_eq!(doc["status"], "CANCELED");
    assert_eq!(doc["errors"][0]["code"], "CANCELED");
    let a = call(&app, cancel("0000000000000000")).await;
    assert_eq!(a.status, 404);
}

#[tokio::test(start_paused = true)]
async fn queue_status_and_failures() {
    let app = model(Calls::default(), Duration::from_secs(10));
    predict(&app, "/async_predict", json!({"model_input": 1})).await;
    let failing = predict(
        &app,
        "/async_predict",
        json!({"model_input": {"fail": true}, "inference_retry_config": {"max_attempts": 1}}),
    )
    .await;
    predict(&app, "/async_predict", json!({"model_input": 3})).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    for path in [
        "/async_queue_status",
        "/production/async_queue_status",
        "/environments/x/async_queue_status",
    ] {
        let a = call(&app, with_key(get(path))).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(
            a.json(),
            json!({"model_id": "abcd1234", "deployment_id": "dep5678",
                   "num_queued_requests": 2, "num_in_progress_requests": 1})
        );
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let doc = call(&app, with_key(get(&format!("/async_request/{failing}"))))
        .await
        .json();
    assert_eq!(doc["status"], "FAILED");
    assert_eq!(
        doc["errors"],
        json!([{"code": "MODEL_PREDICT_ERROR", "message": "Server responded with status code 500"}])
    );
}

#[tokio::test(start_paused = true)]
async fn status_polling_is_rate_limited_per_owner() {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new())
        .owner(|p| {
            p.headers
                .get("authorization")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .baseten(Baseten::new())
        .layer(inner);
    let id = predict(&app, "/async_predict", json!({"model_input": 1})).await;
    let poll = |key: &'static str| {
        Request::get(format!("/async_request/{id}"))
            .header("authorization", key)
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..20 {
        assert_eq!(
            call(&app, poll("Api-Key abcd1234.abcd1234")).await.status,
            200
        );
    }
    let limited = call(&app, poll("Api-Key abcd1234.abcd1234")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(limited.json()["code"], "rate_limited");
    // Another owner has its own budget (and cannot see the job).
    assert_eq!(call(&app, poll("Api-Key other")).await.status, 404);
    tokio::time::sleep(SECOND).await;
    assert_eq!(
        call(&app, poll("Api-Key abcd1234.abcd1234")).await.status,
        200
    );
}
