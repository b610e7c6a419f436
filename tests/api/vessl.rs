//! The VESSL client flow of ../shared/reference/002 and 000: create, poll
//! `/output` until finished, every field and value as the reference shows it.

use std::sync::{Arc, Mutex};

use http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// What the inner service saw: method, path, content type, body.
type Seen = Arc<Mutex<Vec<(String, String, String, Value)>>>;

/// A model answering per path: JSON, plain text, or VESSL's 400. It waits for
/// a permit on `gate` first, so a test can hold jobs pending.
async fn vessl_server(gate: Arc<Semaphore>) -> (Server, Seen) {
    let seen: Seen = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (seen, gate) = (seen.clone(), gate.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let ct = parts
                    .headers
                    .get("content-type")
                    .map_or("", |v| v.to_str().unwrap())
                    .to_owned();
                seen.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.path().to_owned(),
                    ct,
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                ));
                let _permit = gate.acquire().await.unwrap();
                let response = match parts.uri.path() {
                    "/predictions/text" => {
                        let mut r = http::Response::new(Body::from("Hello, plain!"));
                        r.headers_mut()
                            .insert("content-type", "text/plain".parse().unwrap());
                        r
                    }
                    "/predictions/bad" => json_response(
                        400,
                        &json!({"message": "Request body must contain field 'data'."}),
                    ),
                    _ => {
                        // Byte for byte as in the reference's raw_output.
                        let mut r = http::Response::new(Body::from("{\"text\": \"Hello!\"}"));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        r
                    }
                };
                infallible(response)
            }
        })
    };
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    (serve(app).await, seen)
}

async fn create(client: &HttpClient, server: &Server, path: &str) -> String {
    let a = client
        .post_json(
            &server.url("/async"),
            &json!({"method": "POST", "path": path, "data": {"question": "How are you?"}}),
        )
        .await;
    assert_eq!(a.status, 201);
    let doc = a.json();
    assert_eq!(doc.as_object().unwrap().len(), 1, "{doc}");
    let id = doc["id"].as_str().unwrap().to_owned();
    assert!((1..=16).contains(&id.len()));
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    assert_eq!(a.headers["location"], format!("/async/{id}").as_str());
    id
}

async fn output_when_done(client: &HttpClient, server: &Server, id: &str) -> Value {
    client.finished(&server.url(&format!("/async/{id}"))).await;
    let a = client
        .get(&server.url(&format!("/async/{id}/output")))
        .await;
    assert_eq!(a.status, 200);
    a.json()
}

#[tokio::test]
async fn a_json_output_reads_exactly_as_the_reference() {
    let gate = Arc::new(Semaphore::new(0));
    let (server, seen) = vessl_server(gate.clone()).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/predictions/my-model").await;

    let pending = client
        .get(&server.url(&format!("/async/{id}/output")))
        .await;
    let status = pending.json()["status"].clone();
    assert!(status == "pending" || status == "in_progress", "{status}");
    assert_eq!(
        pending.json().as_object().unwrap().len(),
        1,
        "only the status while unfinished"
    );

    gate.add_permits(1);
    let doc = output_when_done(&client, &server, &id).await;
    assert_eq!(
        doc,
        json!({
            "status": "completed",
            "status_code": 200,
            "raw_output": "{\"text\": \"Hello!\"}",
            "output": {"text": "Hello!"}
        })
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            "POST".to_owned(),
            "/predictions/my-model".to_owned(),
            "application/json".to_owned(),
            json!({"question": "How are you?"})
        )]
    );
}

#[tokio::test]
async fn a_job_waiting_for_a_worker_shows_exactly_pending() {
    let gate = Arc::new(Semaphore::new(0));
    let inner = tower::service_fn(move |_req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let _p = gate.acquire().await.unwrap();
            infallible(json_response(200, &json!({})))
        }
    });
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .layer(inner);
    let server = serve(app).await;
    let client = HttpClient::new();
    create(&client, &server, "/").await; // holds the only worker
    let second = create(&client, &server, "/").await;
    let a = client
        .get(&server.url(&format!("/async/{second}/output")))
        .await;
    assert_eq!(a.json(), json!({"status": "pending"}));
}

#[tokio::test]
async fn a_non_json_output_has_no_output_field() {
    let (server, _) = vessl_server(Arc::new(Semaphore::new(100))).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/predictions/text").await;
    let doc = output_when_done(&client, &server, &id).await;
    assert_eq!(
        doc,
        json!({"status": "completed", "status_code": 200, "raw_output": "Hello, plain!"})
    );
}

#[tokio::test]
async fn an_inner_400_fails_with_the_reference_fields() {
    let (server, _) = vessl_server(Arc::new(Semaphore::new(100))).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/predictions/bad").await;
    let doc = output_when_done(&client, &server, &id).await;
    assert_eq!(
        doc,
        json!({
            "status": "failed",
            "status_code": 400,
            "raw_output": "{\"message\":\"Request body must contain field 'data'.\"}",
            "output": {"message": "Request body must contain field 'data'."},
            "fail_reason": "Server responded with status code 400"
        })
    );
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_the_job_finishes() {
    let gate = Arc::new(Semaphore::new(0));
    let (server, _) = vessl_server(gate.clone()).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/").await;
    let url = server.url(&format!("/async/{id}"));
    let running = client.get(&url).await;
    assert_eq!(running.status, 202);
    assert_eq!(running.headers["retry-after"], "1");
    assert_eq!(running.headers["location"], format!("/async/{id}").as_str());

    // Started before the job can finish; it must come back with the end, not
    // at its 30 s deadline: it is released only by the gate.
    let poll = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let req = Request::get(&url)
                .header("prefer", "wait=30")
                .body(Default::default())
                .unwrap();
            client.send(req).await
        })
    };
    tokio::task::yield_now().await;
    assert!(!poll.is_finished());
    gate.add_permits(1);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), poll)
        .await
        .expect("the long-poll returned when the job finished, well before its 30 s")
        .unwrap();
    // It may wake on in_progress first (any change ends a long-poll); the
    // final status is then one more poll away.
    let doc = if answer.status == 200 {
        answer.json()
    } else {
        client.finished(&url).await
    };
    assert_eq!(doc["status"], "succeeded");
}

#[tokio::test]
async fn two_hundred_concurrent_submissions_each_run_exactly_once() {
    let counts: Arc<Mutex<std::collections::HashMap<Value, usize>>> = Arc::default();
    let inner = {
        let counts = counts.clone();
        tower::service_fn(move |req: Request<Body>| {
            let counts = counts.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&body).unwrap();
                *counts.lock().unwrap().entry(v).or_insert(0) += 1;
                infallible(json_response(200, &json!({})))
            }
        })
    };
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    let client = HttpClient::new();
    let submits: Vec<_> = (0..200)
        .map(|n| {
            let (client, url) = (client.clone(), server.url("/async"));
            tokio::spawn(async move { client.post_json(&url, &json!({"data": {"n": n}})).await })
        })
        .collect();
    let mut ids = Vec::new();
    for s in submits {
        let a = s.await.unwrap();
        assert_eq!(a.status, 201);
        ids.push(a.json()["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let doc = client.finished(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded");
    }
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 200, "every request ran");
    assert!(counts.values().all(|&n| n == 1), "none ran twice");
}
