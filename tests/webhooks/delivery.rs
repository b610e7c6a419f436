//! Delivery: what a receiver gets for a job that ends, and what delivering
//! takes.

use std::time::Duration;

use http::Request;
use serde_json::json;
use tower::Layer;
use tower_defer::webhook::Verifier;
use tower_defer::{Body, DeferLayer, MemoryStore, Store};

use crate::support::*;
use crate::{KEY, OLD_KEY};

#[tokio::test]
async fn delivers_a_signed_event_the_receiver_verifies() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local().secret(secret(KEY))));
    let id = submit_with(&app, &receiver.url("/hooks/defer")).await;

    let hit = receiver.next().await;
    assert_eq!(hit.path, "/hooks/defer");
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("webhook-id"), format!("msg_{id}"));
    let ts: u64 = hit.header("webhook-timestamp").parse().unwrap();
    assert!(ts.abs_diff(unix_now()) < 300, "{ts}");
    assert!(verifies(&hit, KEY), "signature over the raw body");
    assert!(!verifies(&hit, OLD_KEY));
    // The reference implementation agrees.
    standardwebhooks::Webhook::new(&secret(KEY))
        .unwrap()
        .verify(&hit.body, &hit.headers)
        .expect("standardwebhooks verifies our delivery");
    // And so does ours, as a receiver would run it.
    let ours = |key| Verifier::new(secret(key).parse().unwrap());
    assert_eq!(ours(KEY).verify(&hit.headers, &hit.body), Ok(()));
    assert!(ours(OLD_KEY).verify(&hit.headers, &hit.body).is_err());

    let event = hit.json();
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["status"], "succeeded");
    assert_eq!(event["status_code"], 200);
    assert_eq!(event["output"], json!({"text": "Hello!"}));
    assert_eq!(event["error"], json!(null));
    assert!(event["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(event["completed_at"].as_str().unwrap().ends_with('Z'));

    let doc = delivered(&app, &id).await;
    assert_eq!(
        doc["webhook"],
        json!({"status": "succeeded", "attempts": 1, "last_status_code": 200, "last_error": null})
    );
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn a_delivery_is_a_span_of_the_jobs_trace() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local()));
    let submitted = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let submission =
        json!({"data": {}, "webhook": receiver.url("/h"), "headers": {"traceparent": submitted}});
    let answer = call(&app, envelope(submission)).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    let hit = receiver.next().await;
    // Stored: the job's trace, with the submission as the parent span.
    let job = app.store().get(id.parse().unwrap()).await.unwrap().unwrap();
    let stored = job.request.headers["traceparent"].to_str().unwrap();
    let stored: Vec<&str> = stored.split('-').collect();
    assert_eq!(stored[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(stored[2], "00f067aa0ba902b7");
    // Delivered: the same trace, a span of its own whose parent is the submission.
    let delivery = hit.header("traceparent");
    let delivery: Vec<&str> = delivery.split('-').collect();
    assert_eq!(delivery[1], stored[1]);
    assert_ne!(delivery[2], stored[2]);
    assert_eq!(delivery[2].len(), 16);
}

#[tokio::test]
async fn the_defer_webhook_header_asks_for_one_on_prefer_submissions() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local().secret(secret(KEY))));
    let req = Request::post("/v1/predict")
        .header("prefer", "respond-async")
        .header("defer-webhook", receiver.url("/h"))
        .body(Body::from("{}"))
        .unwrap();
    let answer = call(&app, req).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    let hit = receiver.next().await;
    assert_eq!(hit.json()["id"], id.as_str());
    assert!(verifies(&hit, KEY));
    assert_eq!(delivered(&app, &id).await["webhook"]["status"], "succeeded");
    // The header is an option for the layer: not kept for the inner service.
    let job = app.store().get(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(job.request.headers.get("defer-webhook").is_none());
}

#[tokio::test]
async fn outputs_too_large_or_not_json_are_sent_as_result_urls() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(
        local()
            .output_cap(500)
            .public_url("https://api.example.com/"),
    ));
    for path in ["/text", "/big"] {
        let answer = call(
            &app,
            envelope(json!({"data": {}, "path": path, "webhook": receiver.url("/")})),
        )
        .await;
        let id = answer.json()["id"].as_str().unwrap().to_owned();
        let event = receiver.next().await.json();
        assert_eq!(event["id"], id.as_str());
        assert_eq!(
            event["output"],
            format!("https://api.example.com/async/{id}/result"),
            "{path}"
        );
    }
    // Without a public URL, the result URL is a path.
    let app = self::app(layer().prefix("/jobs").webhooks(local().output_cap(500)));
    let envelope = json!({"data": {}, "path": "/big", "webhook": receiver.url("/")});
    let req = Request::post("/jobs")
        .body(Body::from(envelope.to_string()))
        .unwrap();
    let answer = call(&app, req).await;
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    let event = receiver.next().await.json();
    assert_eq!(event["output"], format!("/jobs/{id}/result"));
}

#[tokio::test]
async fn a_canceled_job_gets_its_event_too() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let gate = Gate::default();
    let app = layer()
        .concurrency(1)
        .webhooks(local())
        .layer(model(gate.clone()));
    // The one worker is busy with a blocked job, so the next one stays queued.
    let blocker = call(&app, envelope(json!({"data": {}, "path": "/block"})))
        .await
        .json();
    let blocker = blocker["id"].as_str().unwrap().to_owned();
    wait_until(&app, &blocker, |d| d["status"] == "in_progress").await;
    let id = submit_with(&app, &receiver.url("/")).await;
    let canceled = call(
        &app,
        Request::delete(format!("/async/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(canceled.status, 200);
    let event = receiver.next().await.json();
    assert_eq!(event["type"], "job.canceled");
    assert_eq!(event["status"], "canceled");
    assert_eq!(event["output"], json!(null));
    assert_eq!(event["status_code"], json!(null));
    assert_eq!(event["error"]["code"], "canceled");
    gate.0.notify_waiters();
}

#[tokio::test]
async fn delivery_takes_no_worker_slot() {
    let mut hanging = Receiver::start(|_| Reply::Hang).await;
    let layer = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .shutdown_grace(ms(100))
        .webhooks(
            local()
                .concurrency(1)
                .attempt_timeout(Duration::from_secs(60)),
        );
    let app = app(layer);
    let first = submit_with(&app, &hanging.url("/")).await;
    hanging.next().await; // its delivery is in flight, and hangs

    // The one worker still runs jobs, with or without webhooks of their own.
    let second = call(&app, envelope(json!({"data": {}}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let third = submit_with(&app, &hanging.url("/")).await;
    for id in [&second, &third] {
        let doc = wait_until(&app, id, |d| d["status"] == "succeeded").await;
        assert_eq!(doc["status"], "succeeded");
    }
    let doc = status(&app, &first).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["webhook"]["status"], "pending");
    assert_eq!(doc["webhook"]["attempts"], 0, "still in flight");
    // Shutdown does not wait on the receiver beyond the grace period.
    tokio::time::timeout(Duration::from_secs(20), app.handle().shutdown(ms(100)))
        .await
        .expect("the pool stops");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn delivers_to_an_https_receiver_with_a_trusted_self_signed_certificate() {
    // The receiver speaks HTTP/1.1 only, and the client offers no ALPN.
    let (cert, config) = tower_defer_testkit::tls::self_signed_localhost();
    let mut receiver = Receiver::start_tls(config, |_| ok()).await;
    let url = format!("https://localhost:{}/secure", receiver.addr.port());

    // Trusted: delivered, signed.
    let trusting = app(layer().webhooks(
        local()
            .secret(secret(KEY))
            .add_root_certificate(cert.cert.pem()),
    ));
    let id = submit_with(&trusting, &url).await;
    let hit = receiver.next().await;
    assert_eq!(hit.path, "/secure");
    assert!(verifies(&hit, KEY));
    assert_eq!(
        delivered(&trusting, &id).await["webhook"]["status"],
        "succeeded"
    );

    // Not trusted: refused by the TLS handshake, never delivered.
    let distrusting = app(layer().webhooks(local().schedule([Duration::ZERO])));
    let id = submit_with(&distrusting, &url).await;
    let doc = delivered(&distrusting, &id).await;
    assert_eq!(doc["webhook"]["status"], "failed");
    let error = doc["webhook"]["last_error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(receiver.count(), 1);
}
