//! Bifrost (`../shared/reference/003_f126d7a00cbb8d7f.txt`): `POST
//! /v1/async/{route}`, then `GET /v1/async/{route}/{id}`: 202 while pending or
//! processing, 200 when completed or failed.

use std::io;
use std::time::Duration;

use http::Request;
use serde_json::{json, Value};
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};
use tower_defer_testkit::inproc::*;

/// A stand-in for an OpenAI-compatible server: `/v1/completions` answers after
/// a second; a prompt of "bad" gets an OpenAI-style 400.
fn openai(calls: Calls) -> App<impl tower_defer::InnerService> {
    let inner = tower::service_fn(move |req: Request<Body>| {
        let calls = calls.clone();
        async move {
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let ttl_header = req.headers().contains_key("x-bf-async-job-result-ttl");
            let body = calls.record(&body_bytes(req).await);
            tokio::time::sleep(SECOND).await;
            if body["prompt"] == "bad" {
                return Ok::<_, io::Error>(json_response(
                    400,
                    json!({"error": {"type": "invalid_request_error", "code": "bad_prompt",
                                     "message": "the prompt is bad", "param": "prompt"}}),
                ));
            }
            Ok(json_response(
                200,
                json!({"object": "text_completion", "path": path, "method": method.as_str(),
                       "ttl_header_forwarded": ttl_header,
                       "choices": [{"text": "Hello!"}]}),
            ))
        }
    });
    DeferLayer::new(MemoryStore::new()).bifrost().layer(inner)
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<_> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[tokio::test(start_paused = true)]
async fn a_completion_goes_pending_processing_completed() {
    let calls = Calls::default();
    let app = openai(calls.clone());
    let submitted = call(
        &app,
        post(
            "/v1/async/completions",
            json!({"model": "m", "prompt": "hi"}),
        ),
    )
    .await;
    assert_eq!(submitted.status, 202);
    let doc = submitted.json();
    assert_eq!(keys(&doc), ["created_at", "id", "status"]);
    assert_eq!(doc["status"], "pending");
    let id = doc["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/async/completions/{id}");
    assert_eq!(submitted.headers["location"], path.as_str());

    tokio::time::sleep(Duration::from_millis(100)).await;
    let processing = call(&app, get(&path)).await;
    assert_eq!(processing.status, 202);
    assert_eq!(processing.json()["status"], "processing");
    assert_eq!(keys(&processing.json()), ["created_at", "id", "status"]);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = call(&app, get(&path)).await;
    assert_eq!(done.status, 200);
    let doc = done.json();
    assert_eq!(
        keys(&doc),
        [
            "completed_at",
            "created_at",
            "expires_at",
            "id",
            "result",
            "status",
            "status_code"
        ]
    );
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["status_code"], 200);
    assert_eq!(doc["result"]["choices"][0]["text"], "Hello!");
    // The inner call was POST /v1/completions with the same body.
    assert_eq!(doc["result"]["path"], "/v1/completions");
    assert_eq!(doc["result"]["method"], "POST");
    assert_eq!(calls.bodies(), [json!({"model": "m", "prompt": "hi"})]);
}

#[tokio::test(start_paused = true)]
async fn an_openai_style_error_is_carried_over() {
    let app = openai(Calls::default());
    let submitted = call(
        &app,
        post("/v1/async/completions", json!({"prompt": "bad"})),
    )
    .await;
    let id = submitted.json()["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = call(&app, get(&format!("/v1/async/completions/{id}"))).await;
    assert_eq!(done.status, 200);
    let doc = done.json();
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["status_code"], 400);
    assert!(doc.get("result").is_none());
    assert_eq!(doc["error"]["is_bifrost_error"], false);
    assert_eq!(doc["error"]["status_code"], 400);
    assert_eq!(doc["error"]["type"], "invalid_request_error");
    assert_eq!(
        doc["error"]["error"],
        json!({"type": "invalid_request_error", "code": "bad_prompt",
               "message": "the prompt is bad", "param": "prompt"})
    );
}

#[tokio::test(start_paused = true)]
async fn the_result_ttl_header_sets_expires_at_and_then_404() {
    let app = openai(Calls::default());
    let req = Request::post("/v1/async/completions")
        .header("x-bf-async-job-result-ttl", "30")
        .body(Body::from(r#"{"prompt": "hi"}"#))
        .unwrap();
    let id = call(&app, req).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/async/completions/{id}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let doc = call(&app, get(&path)).await.json();
    assert_eq!(doc["result"]["ttl_header_forwarded"], false);
    assert_eq!(ms(&doc["expires_at"]) - ms(&doc["completed_at"]), 30_000);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let gone = call(&app, get(&path)).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["is_bifrost_error"], true);
    assert_eq!(gone.json()["status_code"], 404);

    let bad = Request::post("/v1/async/completions")
        .header("x-bf-async-job-result-ttl", "soon")
        .body(Body::from("{}"))
        .unwrap();
    let bad = call(&app, bad).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["error"]["message"],
        "`x-bf-async-job-result-ttl` must be a whole number of seconds, at least 1"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_ids_and_other_routes_are_404() {
    let app = openai(Calls::default());
    let id = call(&app, post("/v1/async/completions", json!({"prompt": "hi"})))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("/v1/async/chat/completions/{id}"),
        "/v1/async/completions/0000000000000000".to_owned(),
        "/v1/async/completions/NOT-AN-ID".to_owned(),
        "/v1/async/completions".to_owned(),
    ] {
        let a = call(&app, get(&path)).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.json()["is_bifrost_error"], true, "{path}");
    }
    let put = Request::put("/v1/async/completions")
        .body(Body::empty())
        .unwrap();
    let a = call(&app, put).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.headers["allow"], "GET, POST");
}

#[tokio::test(start_paused = true)]
async fn without_the_dialect_v1_async_passes_through() {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, io::Error>(json_response(299, json!({"inner": true})))
    });
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let a = call(&app, post("/v1/async/completions", json!({}))).await;
    assert_eq!(a.status, 299);
}
