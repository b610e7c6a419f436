//! Cancel of a queued job (it never runs) and of a running one (its inner
//! call is dropped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
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
    // The body of every inner call, in order.
    let calls: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let inner = {
        let (started, calls) = (started.clone(), calls.clone());
        tower::service_fn(move |req: Request<Body>| {
            let (started, calls, dropped_tx) = (started.clone(), calls.clone(), dropped_tx.clone());
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                calls.lock().unwrap().push(body.clone());
                if &body[..] == b"\"block\"" {
                    // Runs until dropped, and says so when it is.
                    let _signal = DropSignal(dropped_tx.lock().unwrap().take());
                    started.notify_one();
                    std::future::pending::<()>().await;
                }
                infallible(json_response(200, json!({})))
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
    let url = |path: String| server.url(&path);
    let running = client.submit(&server, &json!({"data": "block"})).await;
    started.notified().await;
    let queued = client.submit(&server, &json!({"data": "queued"})).await;
    assert_eq!(
        client.get(&url(format!("/async/{queued}"))).await.json()["status"],
        "queued"
    );

    // Queued: 200 + canceled; a second cancel is 409.
    let a = client.delete(&url(format!("/async/{queued}"))).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["id"], queued.as_str());
    assert_eq!(a.json()["status"], "canceled");
    let a = client.get(&url(format!("/async/{queued}"))).await;
    assert_eq!(a.status, 200, "terminal: {a:?}");
    assert_eq!(a.json()["status"], "canceled");
    let again = client.delete(&url(format!("/async/{queued}"))).await;
    again.assert_problem(409, "already_terminal", &queued);
    assert!(again.problem().1.contains("canceled"), "{again:?}");

    // Running: 200 + canceled, and the inner call is dropped.
    let a = client.delete(&url(format!("/async/{running}"))).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["status"], "canceled");
    tokio::time::timeout(Duration::from_secs(10), dropped_rx)
        .await
        .expect("the running inner call was dropped")
        .unwrap();
    let a = client.get(&url(format!("/async/{running}"))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "canceled");
    let output = client
        .get(&url(format!("/async/{running}/output")))
        .await
        .json();
    assert_eq!(output["status"], "failed", "{output}");
    assert_eq!(
        output.as_object().unwrap().len(),
        2,
        "status and fail_reason only, no response to show: {output}"
    );
    let reason = output["fail_reason"].as_str().unwrap();
    assert!(reason.contains("cancel"), "{reason}");
    let result = client.get(&url(format!("/async/{running}/result"))).await;
    result.assert_problem(409, "no_result", "canceled");
    client
        .delete(&url(format!("/async/{running}")))
        .await
        .assert_problem(409, "already_terminal", &running);

    // The worker is free again. A job submitted now runs next; had the
    // canceled one still been queued, it would have run first.
    let after = client.submit(&server, &json!({"data": "after"})).await;
    let doc = client.finished(&url(format!("/async/{after}"))).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        *calls.lock().unwrap(),
        [Bytes::from("\"block\""), Bytes::from("\"after\"")],
        "the canceled queued job never ran"
    );
}
