//! The VESSL client flow of the references (create an async request, then
//! fetch its output): every field and value as the reference shows it; the
//! status route and its long-poll; 200 concurrent submissions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// What the inner service saw: method, path, content type, body bytes.
type Seen = Arc<Mutex<Vec<(Method, String, Option<String>, Bytes)>>>;

/// A model answering per path: JSON (byte for byte the reference's
/// `raw_output`), plain text, or the reference's 400. Every call passes
/// `gate` first, so a test can hold jobs in progress.
async fn vessl_server(gate: Gate, concurrency: usize) -> (Server, Seen) {
    let seen: Seen = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (seen, gate) = (seen.clone(), gate.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let content_type = parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.lock().unwrap().push((
                    parts.method.clone(),
                    parts.uri.path().to_owned(),
                    content_type,
                    body,
                ));
                let _call = gate.pass().await;
                let response = match parts.uri.path() {
                    "/predictions/text" => {
                        let mut r = http::Response::new(Body::from("Hello, plain!"));
                        r.headers_mut()
                            .insert("content-type", "text/plain".parse().unwrap());
                        r
                    }
                    "/predictions/bad" => {
                        let mut r = http::Response::new(Body::from(
                            "{\"message\":\"Request body must contain field 'data'.\"}",
                        ));
                        *r.status_mut() = http::StatusCode::BAD_REQUEST;
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        r
                    }
                    _ => {
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
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(concurrency)
        .layer(inner);
    (serve(app).await, seen)
}

/// The reference's create call, with `path`; checks the 201 answer exactly.
async fn create(client: &HttpClient, server: &Server, path: &str) -> String {
    let a = client
        .post_json(
            &server.url("/async"),
            &json!({"method": "POST", "path": path, "data": {"question": "How are you?"}}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.id();
    assert_eq!(a.json(), json!({ "id": id }), "only the id");
    assert_eq!(a.header("location"), format!("/async/{id}"));
    id
}

/// Polls `/output` until it reads completed or failed. While unfinished the
/// document is exactly `{"status": "pending" | "in_progress"}`.
async fn poll_output(client: &HttpClient, server: &Server, id: &str) -> Value {
    loop {
        let a = client
            .get(&server.url(&format!("/async/{id}/output")))
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        let doc = a.json();
        match doc["status"].as_str() {
            Some("completed" | "failed") => return doc,
            Some("pending" | "in_progress") => {
                assert_eq!(doc.as_object().unwrap().len(), 1, "only the status: {doc}")
            }
            _ => panic!("unexpected output document {doc}"),
        }
        // Wait for a change rather than spin.
        client
            .request(
                Method::GET,
                &server.url(&format!("/async/{id}")),
                &[("prefer", "wait=5")],
                Bytes::new(),
            )
            .await;
    }
}

#[tokio::test]
async fn a_json_output_reads_exactly_as_the_reference() {
    let gate = Gate::new();
    let (server, seen) = vessl_server(gate.clone(), 4).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/predictions/my-model").await;

    gate.started(1).await;
    let running = client
        .get(&server.url(&format!("/async/{id}/output")))
        .await;
    assert_eq!(running.status, 200);
    assert_eq!(running.json(), json!({"status": "in_progress"}));

    gate.release(1);
    let doc = poll_output(&client, &server, &id).await;
    assert_eq!(
        doc,
        json!({
            "status": "completed",
            "status_code": 200,
            "raw_output": "{\"text\": \"Hello!\"}",
            "output": {"text": "Hello!"}
        })
    );

    // The inner service got the envelope's method, path, and `data` as a JSON body.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one inner call");
    let (method, path, content_type, body) = &seen[0];
    assert_eq!(method, Method::POST);
    assert_eq!(path, "/predictions/my-model");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap(),
        json!({"question": "How are you?"})
    );
}

/// `data` is forwarded as the client wrote it, never re-encoded: spacing,
/// key order, `1.0` and integers beyond 64 bits reach the model unchanged.
#[tokio::test]
async fn data_reaches_the_model_byte_for_byte() {
    let gate = Gate::new();
    gate.release(1);
    let (server, seen) = vessl_server(gate, 4).await;
    let client = HttpClient::new();
    let data = r#"{ "z": 1.0,  "a": 123456789012345678901234567890, "s": "caf\u00e9" }"#;
    let envelope = format!(r#"{{"path": "/predictions/m", "data" :  {data} }}"#);
    let a = client
        .request(
            Method::POST,
            &server.url("/async"),
            &[("content-type", "application/json")],
            envelope,
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    poll_output(&client, &server, &a.id()).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].3, Bytes::from(data));
}

#[tokio::test]
async fn a_queued_job_is_exactly_pending_and_its_status_is_202() {
    let gate = Gate::new();
    let (server, _) = vessl_server(gate.clone(), 1).await;
    let client = HttpClient::new();
    let first = create(&client, &server, "/").await;
    gate.started(1).await; // the only worker is busy with `first`
    let second = create(&client, &server, "/").await;

    let a = client
        .get(&server.url(&format!("/async/{second}/output")))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"status": "pending"}));

    for (id, status) in [(&second, "queued"), (&first, "in_progress")] {
        let a = client.get(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(a.status, 202, "{a:?}");
        assert_eq!(a.header("retry-after"), "1");
        assert_eq!(a.header("location"), format!("/async/{id}"));
        let doc = a.json();
        assert_eq!(doc["id"], id.as_str());
        assert_eq!(doc["status"], status);
    }

    gate.release(2);
    for id in [&first, &second] {
        let doc = poll_output(&client, &server, id).await;
        assert_eq!(doc["status"], "completed");
        let a = client.get(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(a.status, 200, "terminal: {a:?}");
        assert_eq!(a.json()["status"], "succeeded");
        assert!(!a.headers.contains_key("retry-after"));
    }
}

#[tokio::test]
async fn a_non_json_output_has_no_output_field() {
    let (server, _) = vessl_server(Gate::open(), 4).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/predictions/text").await;
    let doc = poll_output(&client, &server, &id).await;
    assert_eq!(
        doc,
        json!({"status": "completed", "status_code": 200, "raw_output": "Hello, plain!"})
    );
}

#[tokio::test]
async fn an_inner_400_fails_with_the_reference_fields() {
    let (server, _) = vessl_server(Gate::open(), 4).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/predictions/bad").await;
    let doc = poll_output(&client, &server, &id).await;
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
    let status = client.get(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "failed");
    assert_eq!(status.json()["status_code"], 400);
}

/// On tokio's paused clock: a long-poll that missed the job's end would sit
/// until its 30 s deadline (or the lease renewal at 10 s), which the clock
/// would jump to; coming back in under a (virtual) second proves it woke on
/// the end itself.
#[tokio::test(start_paused = true)]
async fn a_long_poll_returns_as_soon_as_the_job_finishes() {
    let gate = Gate::new();
    let (server, _) = vessl_server(gate.clone(), 4).await;
    let client = HttpClient::new();
    let id = create(&client, &server, "/").await;
    gate.started(1).await;
    let url = server.url(&format!("/async/{id}"));

    let released = Arc::new(AtomicBool::new(false));
    let start = tokio::time::Instant::now();
    let poll = {
        let (client, url, released) = (client.clone(), url.clone(), released.clone());
        tokio::spawn(async move {
            let a = client
                .request(Method::GET, &url, &[("prefer", "wait=30")], Bytes::new())
                .await;
            (a, released.load(Ordering::SeqCst))
        })
    };
    // Virtual time: everything runs until idle, so the poll is now waiting
    // in the layer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll waits while the job runs"
    );

    released.store(true, Ordering::SeqCst);
    gate.release(1);
    let (answer, after_release) = poll.await.unwrap();
    assert!(after_release, "it returned after the release");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "it returned on the job's end, not at a deadline: {:?}",
        start.elapsed()
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["status"], "succeeded");
    assert!(!answer.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn two_hundred_concurrent_submissions_each_run_exactly_once() {
    let counts: Arc<Mutex<HashMap<Bytes, usize>>> = Arc::default();
    let inner = {
        let counts = counts.clone();
        tower::service_fn(move |req: Request<Body>| {
            let counts = counts.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                *counts.lock().unwrap().entry(body).or_insert(0) += 1;
                infallible(json_response(200, json!({})))
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
    let mut ids = std::collections::HashSet::new();
    for s in submits {
        let a = s.await.unwrap();
        assert_eq!(a.status, 201, "{a:?}");
        assert!(ids.insert(a.id()), "ids are distinct");
    }
    for id in &ids {
        let doc = client.finished(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["attempts"], 1);
    }
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 200, "every request ran");
    for n in 0..200 {
        let body = Bytes::from(json!({ "n": n }).to_string());
        assert_eq!(counts.get(&body), Some(&1), "body {n} ran exactly once");
    }
}
