//! `Prefer: respond-async` on any other route, with and without `wait`, and
//! requests without it passing through untouched, streaming both ways.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// What the inner service saw: method, path and query, headers, body.
type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;

/// `/slow` passes `gate` first; every route answers 200 with `x-inner` and
/// a JSON body naming its path.
async fn prefer_server(gate: Gate) -> (Server, Seen) {
    let seen: Seen = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (seen, gate) = (seen.clone(), gate.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let path = parts.uri.path_and_query().unwrap().to_string();
                seen.lock()
                    .unwrap()
                    .push((parts.method, path.clone(), parts.headers, body));
                if parts.uri.path() == "/slow" {
                    let _call = gate.pass().await;
                }
                let mut r = json_response(200, json!({ "path": path }));
                r.headers_mut().insert("x-inner", "1".parse().unwrap());
                infallible(r)
            }
        })
    };
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    (server, seen)
}

#[tokio::test]
async fn respond_async_answers_202_and_stores_the_request_as_sent() {
    let gate = Gate::new();
    let (server, seen) = prefer_server(gate.clone()).await;
    let client = HttpClient::new();
    let a = client
        .request(
            Method::PUT,
            &server.url("/slow?x=1"),
            &[
                ("prefer", "respond-async"),
                ("content-type", "application/json"),
                ("x-custom", "kept"),
            ],
            "{\"q\": 1}",
        )
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.id();
    assert_eq!(a.header("location"), format!("/async/{id}"));
    assert_eq!(a.header("retry-after"), "1");
    assert_eq!(a.header("preference-applied"), "respond-async");
    assert_eq!(a.header("content-type"), "application/json");
    let doc = a.json();
    assert_eq!(doc["id"], id.as_str());
    assert!(
        doc["status"] == "queued" || doc["status"] == "in_progress",
        "{doc}"
    );
    assert!(!a.headers.contains_key("x-inner"), "not the inner response");

    gate.started(1).await;
    gate.release(1);
    let doc = client.finished(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(doc["status"], "succeeded");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (method, path, headers, body) = &seen[0];
    assert_eq!(method, Method::PUT);
    assert_eq!(path, "/slow?x=1");
    assert_eq!(&body[..], b"{\"q\": 1}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-custom"], "kept");
    assert!(!headers.contains_key("prefer"), "Prefer is for the layer");
}

/// On tokio's paused clock, so the waits cost no real time.
#[tokio::test(start_paused = true)]
async fn respond_async_with_wait_returns_the_inner_response_or_a_202() {
    let gate = Gate::new();
    let (server, _) = prefer_server(gate.clone()).await;
    let client = HttpClient::new();
    let send = |path: &str, prefer: &'static str| {
        let (client, url) = (client.clone(), server.url(path));
        async move {
            let start = tokio::time::Instant::now();
            let a = client
                .request(Method::POST, &url, &[("prefer", prefer)], "{}")
                .await;
            (a, start.elapsed())
        }
    };

    // Finished within the wait: the inner response itself, plus the job id.
    let (a, _) = send("/fast", "respond-async, wait=10").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-inner"), "1", "the inner response itself");
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(a.json(), json!({"path": "/fast"}));
    assert_eq!(a.header("preference-applied"), "respond-async, wait=10");
    let id = a.header("defer-job-id").to_owned();
    assert_valid_id(&id);
    let status = client.get(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "succeeded");

    // Not finished within the wait: the 202, after the wait.
    let (a, took) = send("/slow", "respond-async, wait=1").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(a.header("preference-applied"), "respond-async, wait=1");
    assert!(a.header("location").starts_with("/async/"));
    assert_eq!(a.header("retry-after"), "1");
    assert!(!a.headers.contains_key("defer-job-id"));

    // A wait past the layer's longest (60 s by default) is capped to it.
    let (a, took) = send("/slow", "respond-async, wait=3600").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert!(
        took >= Duration::from_secs(60) && took < Duration::from_secs(65),
        "{took:?}"
    );
    assert_eq!(a.header("preference-applied"), "respond-async, wait=60");

    // An unparseable preference is ignored, and absent from Preference-Applied.
    let (a, took) = send("/slow", "respond-async, wait=soon").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert!(took < Duration::from_secs(1), "no wait: {took:?}");
    assert_eq!(a.header("preference-applied"), "respond-async");
    gate.release(100);
}

/// A request body that is sent as the test feeds it.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn without_respond_async_requests_pass_through_untouched_and_streaming() {
    // The inner service reports each request-body chunk as it arrives, and
    // answers with a body the test feeds chunk by chunk.
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<Bytes>();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(1);
    let out_rx = Arc::new(Mutex::new(Some(out_rx)));
    let seen: Arc<Mutex<Option<(Method, String, HeaderMap)>>> = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (arrived_tx, out_rx, seen) = (arrived_tx.clone(), out_rx.clone(), seen.clone());
            async move {
                let (parts, mut body) = req.into_parts();
                *seen.lock().unwrap() = Some((
                    parts.method,
                    parts.uri.path_and_query().unwrap().to_string(),
                    parts.headers,
                ));
                while let Some(frame) = body.frame().await {
                    arrived_tx
                        .send(frame.unwrap().into_data().unwrap())
                        .unwrap();
                }
                let rx = out_rx.lock().unwrap().take().unwrap();
                let mut r = http::Response::new(Body::new(ChannelBody(rx)));
                *r.status_mut() = http::StatusCode::IM_A_TEAPOT;
                r.headers_mut().insert("x-custom", "kept".parse().unwrap());
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                infallible(r)
            }
        })
    };
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<ChannelBody>();
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(1);
    let request = Request::post(server.url("/generate?stream=1"))
        .header("authorization", "Bearer kept")
        .header("prefer", "return=minimal")
        .header("x-request", "kept")
        .body(ChannelBody(in_rx))
        .unwrap();
    let response = tokio::spawn(client.request(request));

    // Each request chunk reaches the inner service before the next is sent.
    for chunk in ["up one ", "up two"] {
        in_tx.send(Bytes::from(chunk)).await.unwrap();
        let mut got = arrived.recv().await.unwrap();
        while got.len() < chunk.len() {
            got = [got, arrived.recv().await.unwrap()].concat().into();
        }
        assert_eq!(got, chunk, "the request body streams");
    }
    drop(in_tx);

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["x-custom"], "kept");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(!response.headers().contains_key("preference-applied"));
    let (method, path, headers) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(method, Method::POST);
    assert_eq!(path, "/generate?stream=1");
    assert_eq!(headers["authorization"], "Bearer kept");
    assert_eq!(headers["prefer"], "return=minimal");
    assert_eq!(headers["x-request"], "kept");

    // Each response chunk arrives as the inner service sends it.
    let mut body = response.into_body();
    for chunk in ["first ", "second"] {
        out_tx.send(Bytes::from(chunk)).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            chunk,
            "the response body streams"
        );
    }
    drop(out_tx);
    assert!(body.frame().await.is_none());
}
