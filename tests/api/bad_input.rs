//! Every input a user can get wrong: the exact status, code and message. No
//! input makes the layer panic or answer 5xx.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tokio::sync::Semaphore;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

async fn server(max_queue: usize, gate: Arc<Semaphore>) -> Server {
    let inner = tower::service_fn(move |req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let _p = gate.acquire().await.unwrap();
            let big = req.uri().path() == "/big";
            let body = if big {
                vec![b'x'; 4096]
            } else {
                b"{}".to_vec()
            };
            infallible(http::Response::new(Body::from(body)))
        }
    });
    let app = DeferLayer::new(MemoryStore::new())
        .max_body(1024)
        .max_queue(max_queue)
        .max_output(1000)
        .concurrency(1)
        .layer(inner);
    serve(app).await
}

fn raw(url: &str, content_type: Option<&str>, body: &'static [u8]) -> Request<Full<Bytes>> {
    let mut b = Request::post(url);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

#[tokio::test]
async fn malformed_envelopes_are_400_naming_the_problem() {
    let s = server(100, Arc::new(Semaphore::new(100))).await;
    let c = HttpClient::new();
    let url = s.url("/async");
    let cases: Vec<(&'static [u8], &str, &str)> = vec![
        (
            b"{not json",
            "malformed_json",
            "the body is not valid JSON: key must be a string at line 1 column 2",
        ),
        (
            b"[1, 2]",
            "invalid_envelope",
            "the body must be a JSON object with a `data` field",
        ),
        (
            b"{\"method\": \"POST\"}",
            "missing_field",
            "missing field `data`",
        ),
        (
            b"{\"data\": 1, \"method\": \"NOT A METHOD\"}",
            "invalid_field",
            "`method` must be an HTTP method such as \"POST\", got \"NOT A METHOD\"",
        ),
        (
            b"{\"data\": 1, \"method\": 7}",
            "invalid_field",
            "`method` must be a string, got 7",
        ),
        (
            b"{\"data\": 1, \"path\": \"predict\"}",
            "invalid_field",
            "`path` must start with \"/\", got \"predict\"",
        ),
        (
            b"{\"data\": 1, \"headers\": [\"x\"]}",
            "invalid_field",
            "`headers` must be an object of header names to strings",
        ),
        (
            b"{\"data\": 1, \"headers\": {\"bad name\": \"x\"}}",
            "invalid_field",
            "`headers` has an invalid header name \"bad name\"",
        ),
        (
            b"{\"data\": 1, \"headers\": {\"x\": 1}}",
            "invalid_field",
            "`headers` value of \"x\" must be a string",
        ),
        (
            b"{\"data\": 1, \"priority\": 3}",
            "invalid_field",
            "`priority` must be an integer from 0 to 2, got 3",
        ),
        (
            b"{\"data\": 1, \"priority\": -1}",
            "invalid_field",
            "`priority` must be an integer from 0 to 2, got -1",
        ),
        (
            b"{\"data\": 1, \"max_time_in_queue_seconds\": 1e300}",
            "invalid_field",
            "`max_time_in_queue_seconds` must be an integer from 10 to 259200, got 1e+300",
        ),
        (
            b"{\"data\": 1, \"result_ttl_seconds\": 0}",
            "invalid_field",
            "`result_ttl_seconds` must be an integer from 1 to 4294967295, got 0",
        ),
    ];
    for (body, code, detail) in cases {
        let a = c.send(raw(&url, Some("application/json"), body)).await;
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(
            a.problem(),
            (code.to_owned(), detail.to_owned()),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let a = c
        .send(raw(&url, Some("text/plain"), b"{\"data\": 1}"))
        .await;
    assert_eq!(a.status, 415);
    assert_eq!(
        a.problem(),
        (
            "unsupported_media_type".into(),
            "the envelope must be JSON (Content-Type: application/json)".into()
        )
    );
    let a = c.send(raw(&url, None, b"{\"data\": 1}")).await;
    assert_eq!(a.status, 201, "no content type is read as JSON");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_or_without_content_length() {
    let s = server(100, Arc::new(Semaphore::new(100))).await;
    let c = HttpClient::new();
    let big = format!("{{\"data\": \"{}\"}}", "x".repeat(2000));
    let a = c
        .send(
            Request::post(s.url("/async"))
                .body(Full::new(Bytes::from(big.clone())))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 413);
    assert_eq!(
        a.problem(),
        (
            "body_too_large".into(),
            "the request body is larger than the 1024-byte limit".into()
        )
    );
    // Chunked, no Content-Length: the limit still holds while reading.
    let chunks: Vec<Bytes> = big
        .as_bytes()
        .chunks(100)
        .map(Bytes::copy_from_slice)
        .collect();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::post(s.url("/predict"))
        .header("prefer", "respond-async")
        .body(Chunks(chunks.into_iter()))
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), 413);
}

/// A body sent in chunks, with no length known in advance.
struct Chunks(std::vec::IntoIter<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let gate = Arc::new(Semaphore::new(0));
    let s = server(2, gate.clone()).await;
    let c = HttpClient::new();
    let url = s.url("/async");
    let first = c.post_json(&url, &json!({"data": 0})).await;
    assert_eq!(first.status, 201);
    // Wait until the worker holds the first job, so two more fill the queue.
    let id = first.json()["id"].as_str().unwrap().to_owned();
    while c.get(&s.url(&format!("/async/{id}"))).await.json()["status"] != "in_progress" {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for n in 1..=2 {
        assert_eq!(c.post_json(&url, &json!({"data": n})).await.status, 201);
    }
    let full = c.post_json(&url, &json!({"data": 3})).await;
    assert_eq!(full.status, 429);
    assert_eq!(full.headers["retry-after"], "5");
    assert_eq!(
        full.problem(),
        (
            "queue_full".into(),
            "the queue is full (2 jobs); try again later".into()
        )
    );
    gate.add_permits(100);
}

#[tokio::test]
async fn an_inner_response_over_the_output_limit_fails_the_job() {
    let s = server(100, Arc::new(Semaphore::new(100))).await;
    let c = HttpClient::new();
    let a = c
        .post_json(&s.url("/async"), &json!({"data": 1, "path": "/big"}))
        .await;
    let id = a.json()["id"].as_str().unwrap().to_owned();
    let doc = c.finished(&s.url(&format!("/async/{id}"))).await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"]["code"], "response_too_large");
    assert_eq!(
        doc["error"]["message"],
        "the response was larger than the 1000-byte output limit"
    );
    let output = c.get(&s.url(&format!("/async/{id}/output"))).await.json();
    assert_eq!(
        output["fail_reason"],
        "the response was larger than the 1000-byte output limit"
    );
}

#[tokio::test]
async fn unknown_malformed_and_hostile_ids_are_404() {
    let s = server(100, Arc::new(Semaphore::new(100))).await;
    let c = HttpClient::new();
    for (path, detail) in [
        ("/async/0123456789abcdef", "no job \"0123456789abcdef\""),
        ("/async/0123456789ABCDEF", "no job \"0123456789ABCDEF\""),
        ("/async/short", "no job \"short\""),
        (
            "/async/0123456789abcdef0123456789abcdef0123",
            "no job \"0123456789abcdef0123456789abcdef\"",
        ),
        ("/async/%30123456789abcdef", "no job \"%30123456789abcdef\""),
        (
            "/async/..%2f..%2fetc%2fpasswd",
            "no job \"..%2f..%2fetc%2fpasswd\"",
        ),
        (
            "/async/0123456789abcdef/output",
            "no job \"0123456789abcdef\"",
        ),
        (
            "/async/0123456789abcdef/result",
            "no job \"0123456789abcdef\"",
        ),
        (
            "/async/0123456789abcdef/nope",
            "no route /async/0123456789abcdef/nope",
        ),
    ] {
        let a = c.get(&s.url(path)).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(
            a.problem(),
            ("not_found".to_owned(), detail.to_owned()),
            "{path}"
        );
    }
    let a = c.delete(&s.url("/async/0123456789abcdef")).await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn a_wrong_method_on_an_async_route_is_405_with_allow() {
    let s = server(100, Arc::new(Semaphore::new(100))).await;
    let c = HttpClient::new();
    let id = "0123456789abcdef";
    for (method, path, allow) in [
        ("GET", "/async".to_owned(), "POST"),
        ("PUT", "/async".to_owned(), "POST"),
        ("POST", "/async/queue".to_owned(), "GET"),
        ("POST", format!("/async/{id}"), "GET, DELETE"),
        ("PATCH", format!("/async/{id}"), "GET, DELETE"),
        ("DELETE", format!("/async/{id}/output"), "GET"),
        ("POST", format!("/async/{id}/result"), "GET"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(s.url(&path))
            .body(Full::default())
            .unwrap();
        let a = c.send(req).await;
        assert_eq!(a.status, 405, "{method} {path}");
        assert_eq!(a.headers["allow"], allow);
        assert_eq!(
            a.problem(),
            (
                "method_not_allowed".to_owned(),
                format!("this route answers {allow} only")
            )
        );
    }
}

#[tokio::test]
async fn hostile_headers_are_answered_without_5xx() {
    let s = server(100, Arc::new(Semaphore::new(100))).await;
    let c = HttpClient::new();
    // A large header, duplicated and unparseable Prefer values.
    let req = Request::post(s.url("/predict"))
        .header("prefer", "respond-async")
        .header("prefer", "wait=soon")
        .header("prefer", "respond-async, wait=1")
        .header("x-huge", "y".repeat(16 * 1024))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let a = c.send(req).await;
    assert!(a.status == 200 || a.status == 202, "{}", a.status);
    let applied = a.headers["preference-applied"].to_str().unwrap();
    assert_eq!(applied, "respond-async, wait=1");
    let req = Request::post(s.url("/async"))
        .header("idempotency-key", "k".repeat(256))
        .body(Full::new(Bytes::from_static(b"{\"data\": 1}")))
        .unwrap();
    let a = c.send(req).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.problem(),
        (
            "invalid_idempotency_key".into(),
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into()
        )
    );
}
