//! Every input a user can get wrong: the exact status, code and message. No
//! input makes the layer panic or answer 5xx.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// A layer with small limits: 1024-byte bodies, `max_queue` queued jobs,
/// 1000-byte outputs, one worker. `/big` answers 4096 bytes.
async fn server(max_queue: usize, gate: Gate) -> Server {
    let inner = tower::service_fn(move |req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let _call = gate.pass().await;
            infallible(match req.uri().path() {
                "/big" => http::Response::new(Body::from(vec![b'x'; 4096])),
                // 4096 bytes in chunks, with no length known in advance.
                "/big-stream" => {
                    let chunks = vec![Bytes::from(vec![b'y'; 512]); 8];
                    http::Response::new(Body::new(Chunks(chunks.into_iter())))
                }
                _ => http::Response::new(Body::from("{}")),
            })
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
    let s = server(100, Gate::open()).await;
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
    let s = server(100, Gate::open()).await;
    let c = HttpClient::new();
    let big = format!("{{\"data\": \"{}\"}}", "x".repeat(2000));
    let detail = "the request body is larger than the 1024-byte limit";
    // With Content-Length, to the envelope route and to a Prefer submission.
    let a = c
        .request(
            Method::POST,
            &s.url("/async"),
            &[("content-type", "application/json")],
            big.clone(),
        )
        .await;
    a.assert_problem(413, "body_too_large", "1024-byte limit");
    assert_eq!(a.problem().1, detail);
    let a = c
        .request(
            Method::POST,
            &s.url("/predict"),
            &[("prefer", "respond-async")],
            big.clone(),
        )
        .await;
    a.assert_problem(413, "body_too_large", "1024-byte limit");

    // Chunked, no Content-Length: the limit still holds while reading.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Chunks>();
    for (path, prefer) in [("/async", None), ("/predict", Some("respond-async"))] {
        let chunks: Vec<Bytes> = big
            .as_bytes()
            .chunks(100)
            .map(Bytes::copy_from_slice)
            .collect();
        let mut req = Request::post(s.url(path));
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        let req = req.body(Chunks(chunks.into_iter())).unwrap();
        assert!(req.headers().get("content-length").is_none());
        let response = client.request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        let a = Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        a.assert_problem(413, "body_too_large", "1024-byte limit");
        assert_eq!(a.problem().1, detail, "{path}");
    }
    // Nothing was queued.
    let q = c.get(&s.url("/async/queue")).await.json();
    assert_eq!(q["queued"], 0, "{q}");
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let gate = Gate::new();
    let s = server(2, gate.clone()).await;
    let c = HttpClient::new();
    c.submit(&s, &json!({"data": 0})).await;
    // The worker holds the first job, so two more fill the queue.
    gate.started(1).await;
    for n in 1..=2 {
        c.submit(&s, &json!({"data": n})).await;
    }
    for url in [s.url("/async"), s.url("/predict")] {
        let full = c
            .request(
                Method::POST,
                &url,
                &[
                    ("content-type", "application/json"),
                    ("prefer", "respond-async"),
                ],
                json!({"data": 3}).to_string(),
            )
            .await;
        full.assert_problem(429, "queue_full", "queue is full");
        assert_eq!(full.header("retry-after"), "5");
        assert_eq!(
            full.problem().1,
            "the queue is full (2 jobs); try again later"
        );
    }
    // Room again once the queue drains.
    gate.release(100);
    let q = loop {
        let q = c
            .request(Method::GET, &s.url("/async/queue"), &[], Bytes::new())
            .await
            .json();
        if q["queued"] == 0 && q["in_progress"] == 0 {
            break q;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(q["max_queued"], 2);
    c.submit(&s, &json!({"data": 4})).await;
}

#[tokio::test]
async fn an_inner_response_over_the_output_limit_fails_the_job() {
    let s = server(100, Gate::open()).await;
    let c = HttpClient::new();
    let message = "the response was larger than the 1000-byte output limit";
    // Known length (refused up front) and streamed (refused while reading).
    for path in ["/big", "/big-stream"] {
        let id = c.submit(&s, &json!({"data": 1, "path": path})).await;
        let doc = c.finished(&s.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "failed", "{path}: {doc}");
        assert_eq!(doc["error"]["code"], "response_too_large", "{path}");
        assert_eq!(doc["error"]["message"], message);
        let output = c.get(&s.url(&format!("/async/{id}/output"))).await.json();
        assert_eq!(output, json!({"status": "failed", "fail_reason": message}));
        c.get(&s.url(&format!("/async/{id}/result")))
            .await
            .assert_problem(409, "no_result", "output limit");
    }
}

#[tokio::test]
async fn unknown_malformed_and_hostile_ids_are_404() {
    let s = server(100, Gate::open()).await;
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
        ("/async/../x", "no route /async/../x"),
        ("/async/..", "no job \"..\""),
        ("/async/%2e%2e/x", "no route /async/%2e%2e/x"),
        ("/async/", "no job \"\""),
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
        assert_eq!(a.status, 404, "{path}: {a:?}");
        assert_eq!(
            a.problem(),
            ("not_found".to_owned(), detail.to_owned()),
            "{path}"
        );
    }
    for path in [
        "/async/0123456789abcdef",
        "/async/0123456789ABCDEF",
        "/async/../x",
    ] {
        c.delete(&s.url(path))
            .await
            .assert_problem(404, "not_found", "");
    }
}

#[tokio::test]
async fn a_wrong_method_on_an_async_route_is_405_with_allow() {
    let s = server(100, Gate::open()).await;
    let c = HttpClient::new();
    let id = "0123456789abcdef";
    for (method, path, allow) in [
        ("GET", "/async".to_owned(), "POST"),
        ("PUT", "/async".to_owned(), "POST"),
        ("DELETE", "/async".to_owned(), "POST"),
        ("POST", "/async/queue".to_owned(), "GET"),
        ("DELETE", "/async/queue".to_owned(), "GET"),
        ("POST", format!("/async/{id}"), "GET, DELETE"),
        ("PUT", format!("/async/{id}"), "GET, DELETE"),
        ("PATCH", format!("/async/{id}"), "GET, DELETE"),
        ("POST", format!("/async/{id}/output"), "GET"),
        ("DELETE", format!("/async/{id}/output"), "GET"),
        ("POST", format!("/async/{id}/result"), "GET"),
        ("DELETE", format!("/async/{id}/result"), "GET"),
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
    let s = server(100, Gate::open()).await;
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
