//! The three kinds of inner service — an axum Router wrapped whole, a
//! `service_fn`, and `Upstream` forwarding to another server — plus
//! pass-through, `Prefer`, and the concurrency bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

#[tokio::test]
async fn an_axum_router_wrapped_whole() {
    use axum::routing::{get, post};
    let router = axum::Router::new()
        .route(
            "/predict",
            post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
                axum::Json(json!({ "echo": v }))
            }),
        )
        .route("/health", get(|| async { "ok" }));
    // One pool for the whole app (not `Router::layer`, which is per route).
    let app = DeferLayer::new(MemoryStore::new()).layer(router);
    let app = ServiceExt::<Request<hyper::body::Incoming>>::map_response(app, |r| {
        r.map(axum::body::Body::new)
    });
    let server = serve(app).await;
    let c = HttpClient::new();
    assert_eq!(&c.get(&server.url("/health")).await.body[..], b"ok");
    let a = c
        .post_json(
            &server.url("/async"),
            &json!({"path": "/predict", "data": {"q": 1}}),
        )
        .await;
    assert_eq!(a.status, 201);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(doc["status"], "succeeded");
    let out = c
        .get(&server.url(&format!("/async/{id}/output")))
        .await
        .json();
    assert_eq!(out["output"], json!({"echo": {"q": 1}}));
}

#[tokio::test]
async fn pass_through_is_untouched_and_streams() {
    // The inner body arrives in chunks the test feeds one at a time.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let inner = tower::service_fn(move |req: Request<Body>| {
        let rx = rx.clone();
        async move {
            if req.uri().path() == "/echo" {
                // Echo a streamed request body back.
                let body = req.into_body().collect().await.unwrap().to_bytes();
                return infallible(http::Response::new(Body::from(body)));
            }
            let rx = rx.lock().await.take().unwrap();
            let mut r = http::Response::new(Body::new(ChannelBody(rx)));
            *r.status_mut() = http::StatusCode::IM_A_TEAPOT;
            r.headers_mut().insert("x-custom", "kept".parse().unwrap());
            infallible(r)
        }
    });
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::get(server.url("/stream"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["x-custom"], "kept");
    let mut body = response.into_body();
    for chunk in ["first ", "second"] {
        tx.send(Bytes::from(chunk)).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            chunk,
            "each chunk arrives as it is sent"
        );
    }
    drop(tx);
    assert!(body.frame().await.is_none());

    let c = HttpClient::new();
    let req = Request::post(server.url("/echo"))
        .body(Full::new(Bytes::from("streamed up")))
        .unwrap();
    assert_eq!(&c.send(req).await.body[..], b"streamed up");
}

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
async fn prefer_respond_async_and_wait() {
    let inner = tower::service_fn(|req: Request<Body>| async move {
        let slow = req.uri().path() == "/slow";
        tokio::time::sleep(Duration::from_millis(if slow { 3000 } else { 10 })).await;
        let mut r = json_response(200, &json!({"path": req.uri().path()}));
        r.headers_mut().insert("x-inner", "1".parse().unwrap());
        infallible(r)
    });
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    let c = HttpClient::new();
    let send = |path: &str, prefer: &'static str| {
        Request::post(server.url(path))
            .header("prefer", prefer)
            .body(Full::new(Bytes::from("{}")))
            .unwrap()
    };
    let a = c.send(send("/slow", "respond-async")).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.headers["preference-applied"], "respond-async");
    assert_eq!(a.headers["retry-after"], "1");
    let id = a.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(a.headers["location"], format!("/async/{id}").as_str());

    let a = c.send(send("/fast", "respond-async, wait=10")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-inner"], "1", "the inner response itself");
    assert_eq!(a.headers["preference-applied"], "respond-async, wait=10");
    assert!(a.headers.contains_key("defer-job-id"));
    assert_eq!(a.json(), json!({"path": "/fast"}));

    let a = c.send(send("/slow", "respond-async, wait=1")).await;
    assert_eq!(a.status, 202, "not finished within 1 s");
    let a = c.send(send("/fast", "respond-async, wait=soon")).await;
    assert_eq!(a.status, 202);
    assert_eq!(
        a.headers["preference-applied"], "respond-async",
        "the unparseable wait is ignored"
    );
}

#[tokio::test]
async fn upstream_forwarding_and_an_upstream_that_comes_up_late() {
    // Reserve a port, then free it: connections are refused until the
    // upstream starts on it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let upstream =
        tower_defer::upstream::Upstream::new(format!("http://127.0.0.1:{port}").parse().unwrap())
            .unwrap();
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(upstream)).await;
    let c = HttpClient::new();
    let a = c
        .post_json(
            &server.url("/async"),
            &json!({"path": "/v1/predict?x=1", "data": {"n": 7}}),
        )
        .await;
    let id = a.json()["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let doc = c.get(&server.url(&format!("/async/{id}"))).await.json();
    assert_eq!(doc["status"], "queued", "waiting for the upstream: {doc}");
    assert_eq!(doc["error"]["code"], "upstream_unavailable");
    assert_eq!(doc["attempts"], 0);

    let model = tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let seen = json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "host": parts.headers.get("host").map(|h| h.to_str().unwrap().to_owned()),
            "body": serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
        });
        infallible(http::Response::new(Full::new(Bytes::from(
            seen.to_string(),
        ))))
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let up = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(model);
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .into_owned(),
            );
        }
    });
    let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        doc["attempts"], 1,
        "waiting for the upstream spent no attempt"
    );
    let out = c
        .get(&server.url(&format!("/async/{id}/output")))
        .await
        .json();
    assert_eq!(out["output"]["method"], "POST");
    assert_eq!(out["output"]["uri"], "/v1/predict?x=1");
    assert_eq!(out["output"]["host"], format!("127.0.0.1:{port}"));
    assert_eq!(out["output"]["body"], json!({"n": 7}));
    // And a pass-through request goes straight to the upstream.
    let a = c.get(&server.url("/models?list=1")).await;
    assert_eq!(a.json()["uri"], "/models?list=1");
    up.abort();
}

#[tokio::test]
async fn never_more_than_concurrency_inner_calls_at_once() {
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let inner = {
        let (now, max) = (now.clone(), max.clone());
        tower::service_fn(move |_req: Request<Body>| {
            let (now, max) = (now.clone(), max.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                infallible(json_response(200, &json!({})))
            }
        })
    };
    let server = serve(
        DeferLayer::new(MemoryStore::new())
            .concurrency(2)
            .layer(inner),
    )
    .await;
    let c = HttpClient::new();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            c.post_json(&server.url("/async"), &json!({"data": n}))
                .await
                .json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in ids {
        assert_eq!(
            c.finished(&server.url(&format!("/async/{id}"))).await["status"],
            "succeeded"
        );
    }
    assert_eq!(max.load(Ordering::SeqCst), 2);
}
