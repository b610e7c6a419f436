//! Cancel, owners, credentials, and verbatim results.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::sync::{oneshot, Notify};
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// Signals when dropped: the inner call's future is gone.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn cancel_of_a_queued_and_of_a_running_job() {
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let started = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (started, calls) = (started.clone(), calls.clone());
        tower::service_fn(move |_req: Request<Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let signal = DropSignal(dropped_tx.lock().unwrap().take());
            let started = started.clone();
            async move {
                started.notify_one();
                let _signal = signal;
                std::future::pending::<()>().await;
                infallible(json_response(200, &json!({})))
            }
        })
    };
    let server = serve(
        DeferLayer::new(MemoryStore::new())
            .concurrency(1)
            .layer(inner),
    )
    .await;
    let client = HttpClient::new();
    let running = client
        .post_json(&server.url("/async"), &json!({"data": 1}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let queued = client
        .post_json(&server.url("/async"), &json!({"data": 2}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    started.notified().await;

    // Queued: canceled, and it never runs.
    let a = client
        .delete(&server.url(&format!("/async/{queued}")))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "canceled");
    let again = client
        .delete(&server.url(&format!("/async/{queued}")))
        .await;
    assert_eq!(again.status, 409);
    let (code, detail) = again.problem();
    assert_eq!(code, "already_terminal");
    assert_eq!(detail, format!("job {queued} has already ended: canceled"));

    // Running: canceled, and the inner call is dropped.
    let a = client
        .delete(&server.url(&format!("/async/{running}")))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "canceled");
    tokio::time::timeout(std::time::Duration::from_secs(10), dropped_rx)
        .await
        .expect("the running inner call was dropped")
        .unwrap();
    let output = client
        .get(&server.url(&format!("/async/{running}/output")))
        .await
        .json();
    assert_eq!(
        output,
        json!({"status": "failed", "fail_reason": "canceled by the client"})
    );
    let result = client
        .get(&server.url(&format!("/async/{running}/result")))
        .await;
    assert_eq!(result.status, 409);
    assert_eq!(result.problem().0, "no_result");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the queued job never ran");
}

#[tokio::test]
async fn another_owner_sees_404_and_credentials_stay_out_unless_asked() {
    let seen_auth = Arc::new(Mutex::new(Vec::new()));
    let make = |forward: bool| {
        let seen_auth = seen_auth.clone();
        let inner = tower::service_fn(move |req: Request<Body>| {
            let auth = (
                req.headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned()),
                req.headers()
                    .get("cookie")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            seen_auth.lock().unwrap().push(auth);
            async { infallible(json_response(200, &json!({}))) }
        });
        DeferLayer::new(MemoryStore::new())
            .owner(|p| p.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
            .forward_credentials(forward)
            .layer(inner)
    };
    let client = HttpClient::new();
    for forward in [false, true] {
        let server = serve(make(forward)).await;
        let submit = Request::post(server.url("/predict"))
            .header("prefer", "respond-async")
            .header("x-tenant", "a")
            .header("authorization", "Bearer secret")
            .header("cookie", "session=1")
            .body(Full::new(Bytes::from("{}")))
            .unwrap();
        let a = client.send(submit).await;
        assert_eq!(a.status, 202);
        let id = a.json()["id"].as_str().unwrap().to_owned();
        let as_tenant = |tenant: &str, method: http::Method, path: String| {
            Request::builder()
                .method(method)
                .uri(server.url(&path))
                .header("x-tenant", tenant)
                .body(Full::default())
                .unwrap()
        };
        loop {
            let a = client
                .send(as_tenant("a", http::Method::GET, format!("/async/{id}")))
                .await;
            if a.status == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for (method, path) in [
            (http::Method::GET, format!("/async/{id}")),
            (http::Method::GET, format!("/async/{id}/output")),
            (http::Method::GET, format!("/async/{id}/result")),
            (http::Method::DELETE, format!("/async/{id}")),
        ] {
            let other = client
                .send(as_tenant("b", method.clone(), path.clone()))
                .await;
            assert_eq!(other.status, 404, "{method} {path}");
            assert_eq!(other.problem().1, format!("no job {id:?}"));
        }
        let nobody = client.get(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(nobody.status, 404, "no owner is not owner a");
    }
    let seen = seen_auth.lock().unwrap().clone();
    assert_eq!(seen[0], (None, None), "credentials not stored by default");
    assert_eq!(
        seen[1],
        (
            Some("Bearer secret".to_owned()),
            Some("session=1".to_owned())
        ),
        "forward_credentials(true) keeps them"
    );
}

#[tokio::test]
async fn the_result_is_the_inner_response_verbatim_and_binary_safe() {
    let bytes: &'static [u8] = b"\x00\xff\xfe binary \x80\x00 end";
    let received = Arc::new(Mutex::new(Bytes::new()));
    let inner = {
        let received = received.clone();
        tower::service_fn(move |req: Request<Body>| {
            let received = received.clone();
            async move {
                *received.lock().unwrap() = req.into_body().collect().await.unwrap().to_bytes();
                let mut r = http::Response::new(Body::full(Bytes::from_static(bytes)));
                *r.status_mut() = http::StatusCode::CREATED;
                r.headers_mut()
                    .insert("content-type", "application/octet-stream".parse().unwrap());
                r.headers_mut()
                    .insert("x-model-version", "7".parse().unwrap());
                infallible(r)
            }
        })
    };
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    let client = HttpClient::new();
    let submit = Request::post(server.url("/upload"))
        .header("prefer", "respond-async")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from_static(bytes)))
        .unwrap();
    let id = client.send(submit).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    client.finished(&server.url(&format!("/async/{id}"))).await;
    let a = client
        .get(&server.url(&format!("/async/{id}/result")))
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.headers["content-type"], "application/octet-stream");
    assert_eq!(a.headers["x-model-version"], "7");
    assert_eq!(a.headers["defer-job-id"], id.as_str());
    assert_eq!(&a.body[..], bytes);
    assert_eq!(
        &received.lock().unwrap()[..],
        bytes,
        "the inner service got the exact bytes"
    );
    let output = client
        .get(&server.url(&format!("/async/{id}/output")))
        .await
        .json();
    assert!(output.get("output").is_none());
}
