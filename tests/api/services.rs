//! The three kinds of inner service: an axum `Router` wrapped whole, a plain
//! `service_fn`, and `Upstream` forwarding to another server (feature
//! `proxy`), including one that is down at first, and one over https
//! (feature `tls`).

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// How to serve a wrapped axum app with `axum::serve`: wrap the *whole*
/// `Router` (`Router::layer` would build one worker pool per route), turn the
/// response body back into axum's (`axum::serve` takes services answering
/// `axum::response::Response`), and make it a make-service with
/// `axum::ServiceExt::into_make_service` (the `Router` method is no longer
/// reachable once the router is wrapped). `Defer<Router>`'s error is the
/// router's, `Infallible`, as `axum::serve` requires.
#[tokio::test]
async fn an_axum_router_wrapped_whole_and_served_by_axum() {
    use axum::routing::{get, post};
    let router = axum::Router::new()
        .route(
            "/predict",
            post(
                |axum::Json(v): axum::Json<Value>| async move { axum::Json(json!({ "echo": v })) },
            ),
        )
        .route("/health", get(|| async { "ok" }));
    let app = DeferLayer::new(MemoryStore::new()).layer(router);
    let app =
        ServiceExt::<axum::extract::Request>::map_response(app, |r| r.map(axum::body::Body::new));
    let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(
        axum::serve(listener, make)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    let url = |path: &str| format!("http://{addr}{path}");
    let c = HttpClient::new();

    // Pass-through to the router.
    let a = c.get(&url("/health")).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"ok");
    let a = c.get(&url("/nowhere")).await;
    assert_eq!(a.status, 404, "the router's own 404");

    // Envelope and Prefer submissions, run by the router in process.
    let a = c
        .post_json(
            &url("/async"),
            &json!({"path": "/predict", "data": {"q": 1}}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.id();
    let b = c
        .request(
            Method::POST,
            &url("/predict"),
            &[
                ("prefer", "respond-async"),
                ("content-type", "application/json"),
            ],
            "{\"q\": 2}",
        )
        .await;
    assert_eq!(b.status, 202, "{b:?}");
    let id_b = b.id();
    for (id, q) in [(id, 1), (id_b, 2)] {
        let doc = c.finished(&url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        let out = c.get(&url(&format!("/async/{id}/output"))).await.json();
        assert_eq!(out["output"], json!({"echo": {"q": q}}));
    }
    stop_tx.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_plain_service_fn_gets_the_envelope_as_a_request() {
    type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;
    let seen: Seen = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let path = parts.uri.path_and_query().unwrap().to_string();
                seen.lock()
                    .unwrap()
                    .push((parts.method, path, parts.headers, body));
                infallible(json_response(200, json!({"ok": 1})))
            }
        })
    };
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    let c = HttpClient::new();
    let id = c
        .submit(
            &server,
            &json!({
                "method": "put",
                "path": "/v2/models/m/infer?verbose=1",
                "headers": {"x-trace": "abc", "content-type": "application/vnd.model+json"},
                "data": [1, 2, 3]
            }),
        )
        .await;
    let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["status_code"], 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (method, path, headers, body) = &seen[0];
    assert_eq!(method, Method::PUT);
    assert_eq!(path, "/v2/models/m/infer?verbose=1");
    assert_eq!(headers["x-trace"], "abc");
    assert_eq!(headers["content-type"], "application/vnd.model+json");
    assert_eq!(&body[..], b"[1,2,3]");
}

#[cfg(feature = "proxy")]
mod upstream {
    use super::*;
    use hyper::body::Incoming;
    use tower_defer::upstream::Upstream;

    /// An upstream model that echoes what it got as JSON.
    fn echo_model() -> impl tower::Service<
        Request<Incoming>,
        Response = http::Response<http_body_util::Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|req: Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let seen = json!({
                "version": format!("{:?}", parts.version),
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "host": parts.headers.get("host").map(|h| h.to_str().unwrap().to_owned()),
                "x-custom": parts.headers.get("x-custom").map(|h| h.to_str().unwrap().to_owned()),
                "body": serde_json::from_slice::<Value>(&body).unwrap_or_default(),
            });
            let mut r =
                http::Response::new(http_body_util::Full::new(Bytes::from(seen.to_string())));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            infallible(r)
        })
    }

    #[tokio::test]
    async fn upstream_forwards_jobs_and_pass_through_to_another_server() {
        let model = serve(echo_model()).await;
        let upstream = Upstream::new(model.url("").parse().unwrap()).unwrap();
        let server = serve(DeferLayer::new(MemoryStore::new()).layer(upstream)).await;
        let c = HttpClient::new();

        let out = c
            .output_of(
                &server,
                &json!({"path": "/v1/predict?x=1", "data": {"n": 7}, "headers": {"x-custom": "env"}}),
            )
            .await;
        assert_eq!(
            out["output"],
            json!({
                "version": "HTTP/1.1",
                "method": "POST",
                "uri": "/v1/predict?x=1",
                "host": model.addr.to_string(),
                "x-custom": "env",
                "body": {"n": 7},
            })
        );

        let a = c
            .request(
                Method::POST,
                &server.url("/v1/chat"),
                &[("prefer", "respond-async, wait=10"), ("x-custom", "prefer")],
                "{\"m\": 1}",
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json()["uri"], "/v1/chat");
        assert_eq!(a.json()["x-custom"], "prefer");
        assert_eq!(a.json()["body"], json!({"m": 1}));

        let a = c.get(&server.url("/models?list=1")).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.json()["uri"],
            "/models?list=1",
            "pass-through goes upstream"
        );
        assert_eq!(a.json()["method"], "GET");
    }

    #[tokio::test]
    async fn an_upstream_down_at_first_runs_the_job_once_it_is_up_without_spending_an_attempt() {
        // Reserve a port, then free it: connections are refused until the
        // upstream starts on it.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let upstream = Upstream::new(format!("http://127.0.0.1:{port}").parse().unwrap()).unwrap();
        let server = serve(DeferLayer::new(MemoryStore::new()).layer(upstream)).await;
        let c = HttpClient::new();
        let id = c
            .submit(&server, &json!({"path": "/v1/predict", "data": {"n": 7}}))
            .await;

        // Refused: back in the queue, waiting for the upstream, no attempt
        // spent. (Polled, not long-polled: a long-poll answers with the state
        // after the next change, and the refused call is over in an instant.)
        let doc = loop {
            let a = c.get(&server.url(&format!("/async/{id}"))).await;
            assert_eq!(a.status, 202, "{a:?}");
            let doc = a.json();
            if doc["status"] == "queued" && doc["error"]["code"] == "upstream_unavailable" {
                break doc;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(doc["attempts"], 0, "{doc}");
        assert!(doc["retry_at"].is_string(), "{doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains("unavailable"), "{message}");

        // The upstream comes up on that port.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let _model = serve_on(listener, echo_model());
        let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(
            doc["attempts"], 1,
            "waiting for the upstream spent no attempt"
        );
        assert!(doc.get("error").is_none(), "{doc}");
        let out = c
            .get(&server.url(&format!("/async/{id}/output")))
            .await
            .json();
        assert_eq!(out["status"], "completed");
        assert_eq!(out["output"]["body"], json!({"n": 7}));
    }

    #[cfg(feature = "tls")]
    mod https {
        use super::*;
        use tower_defer::job::RetryPolicy;

        /// An https server with a self-signed certificate for `localhost`
        /// that offers h2 and HTTP/1.1 by ALPN, and the certificate.
        async fn https_model() -> (Server, rcgen::CertifiedKey) {
            let (cert, config) = tower_defer_testkit::tls::self_signed_localhost();
            (serve_tls(config, echo_model()).await, cert)
        }

        #[tokio::test]
        async fn jobs_and_pass_through_reach_an_https_upstream_trusted_by_its_root() {
            let (model, cert) = https_model().await;
            let url = format!("https://localhost:{}", model.addr.port());
            let upstream = Upstream::builder(url.parse().unwrap())
                .add_root_certificate(cert.cert.pem())
                .build()
                .unwrap();
            let server = serve(DeferLayer::new(MemoryStore::new()).layer(upstream)).await;
            let c = HttpClient::new();

            let out = c
                .output_of(&server, &json!({"path": "/v1/predict", "data": {"n": 7}}))
                .await;
            // The server preferred h2, and ALPN offered it: the request's
            // URI is absolute there (h2's :scheme and :authority).
            assert_eq!(out["output"]["version"], "HTTP/2.0");
            assert_eq!(out["output"]["uri"], format!("{url}/v1/predict"));
            assert_eq!(out["output"]["body"], json!({"n": 7}));

            let a = c.get(&server.url("/models?list=1")).await;
            assert_eq!(a.status, 200, "{a:?}");
            assert_eq!(a.json()["uri"], format!("{url}/models?list=1"));
            assert_eq!(a.json()["version"], "HTTP/2.0");
        }

        #[tokio::test]
        async fn an_https_upstream_whose_certificate_is_not_trusted_fails_the_job_saying_so() {
            let (model, _cert) = https_model().await;
            let url = format!("https://localhost:{}", model.addr.port());
            let upstream = Upstream::new(url.parse().unwrap()).unwrap();
            let layer = DeferLayer::new(MemoryStore::new())
                .retry(RetryPolicy::default().with_max_attempts(1));
            let server = serve(layer.layer(upstream)).await;
            let c = HttpClient::new();

            let id = c.submit(&server, &json!({"data": {"n": 7}})).await;
            let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
            assert_eq!(doc["status"], "failed", "{doc}");
            assert_eq!(doc["error"]["code"], "upstream_error", "{doc}");
            assert_eq!(
                doc["error"]["message"],
                "client error (Connect): invalid peer certificate: UnknownIssuer",
                "{doc}"
            );
        }

        #[test]
        fn a_root_certificate_that_is_not_pem_is_refused_by_build() {
            let e = Upstream::builder("https://localhost:8443".parse().unwrap())
                .add_root_certificate("not a certificate")
                .build()
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "a root certificate for the upstream holds no PEM certificate"
            );
        }
    }
}
