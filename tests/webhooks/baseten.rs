//! Baseten's webhook format: its body, its signature and its front door.

use http::Request;
use serde_json::json;
use tower_defer::job::{JobOptions, NewJob, StoredRequest, WebhookFormat, WebhookTarget};
use tower_defer::webhook::baseten_signature;
use tower_defer::{Body, Store};

use crate::support::*;
use crate::KEY;

#[tokio::test]
async fn baseten_events_have_baseten_body_and_signature() {
    const BASETEN_SECRET: &str = "bt-webhook-secret text, as configured";
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local().secret(secret(KEY)).baseten_secret(BASETEN_SECRET)));
    // The Baseten front door sets this target from `webhook_endpoint`; here
    // the job goes to the store directly.
    let mut options = JobOptions::default();
    options.webhook = Some(WebhookTarget {
        url: receiver.url("/baseten"),
        format: WebhookFormat::Baseten,
    });
    let request = StoredRequest {
        method: http::Method::POST,
        path_and_query: http::uri::PathAndQuery::from_static("/predict"),
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(b"{}"),
    };
    let job = app
        .store()
        .enqueue(NewJob { request, options }, 100)
        .await
        .unwrap()
        .job;
    let id = job.id.to_string();

    let hit = receiver.next().await;
    assert_eq!(hit.header("x-baseten-request-id"), id);
    let expected = format!(
        "v1={}",
        hex(&hmac_sha256(BASETEN_SECRET.as_bytes(), &hit.body))
    );
    assert_eq!(hit.header("x-baseten-signature"), expected);
    assert_eq!(baseten_signature(BASETEN_SECRET, &hit.body), expected);
    assert!(hit.headers.get("webhook-signature").is_none());
    let event = hit.json();
    assert_eq!(event["request_id"], id.as_str());
    assert_eq!(event["model_id"], "");
    assert_eq!(event["deployment_id"], "");
    assert_eq!(event["type"], "async_request_completed");
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(event["data"], json!({"text": "Hello!"}));
    assert_eq!(event["errors"], json!([]));
    assert_eq!(delivered(&app, &id).await["webhook"]["status"], "succeeded");
}

#[tokio::test]
async fn a_baseten_submission_with_webhook_endpoint_gets_the_baseten_webhook() {
    const BASETEN_SECRET: &str = "bt-secret";
    let mut receiver = Receiver::start(|_| ok()).await;
    let layer = layer()
        .baseten(
            tower_defer::Baseten::new()
                .model_id("abcd1234")
                .deployment_id("dep5678"),
        )
        .webhooks(local().secret(secret(KEY)).baseten_secret(BASETEN_SECRET));
    let app = app(layer);
    let req = Request::post("/production/async_predict")
        .body(Body::from(
            json!({"model_input": {"q": 1}, "webhook_endpoint": receiver.url("/bt")}).to_string(),
        ))
        .unwrap();
    let answer = call(&app, req).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let id = answer.json()["request_id"].as_str().unwrap().to_owned();
    let hit = receiver.next().await;
    assert_eq!(hit.header("x-baseten-request-id"), id);
    assert_eq!(
        hit.header("x-baseten-signature"),
        baseten_signature(BASETEN_SECRET, &hit.body)
    );
    let event = hit.json();
    assert_eq!(event["model_id"], "abcd1234");
    assert_eq!(event["deployment_id"], "dep5678");
    assert_eq!(event["type"], "async_request_completed");
    // Baseten's status document reports the delivery.
    let doc = loop {
        let doc = call(&app, get(&format!("/async_request/{id}")))
            .await
            .json();
        if doc["webhook_status"] != "PENDING" {
            break doc;
        }
        tokio::time::sleep(ms(20)).await;
    };
    assert_eq!(doc["status"], "SUCCEEDED");
    assert_eq!(doc["webhook_status"], "SUCCEEDED");
    // A bad endpoint is a 400 naming the field.
    let req = Request::post("/async_predict")
        .body(Body::from(
            json!({"model_input": 1, "webhook_endpoint": "ftp://x"}).to_string(),
        ))
        .unwrap();
    let answer = call(&app, req).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.problem().1.contains("webhook_endpoint"),
        "{:?}",
        answer.problem()
    );
}
