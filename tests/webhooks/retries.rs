//! Retries: which failed deliveries are tried again, when, and when they stop.

use std::time::Duration;

use serde_json::json;

use crate::support::*;
use crate::KEY;

#[tokio::test]
async fn retries_after_a_500() {
    let mut receiver = Receiver::start(|n| {
        if n == 0 {
            Reply::Status(500, vec![])
        } else {
            ok()
        }
    })
    .await;
    let app = app(layer().webhooks(local().secret(secret(KEY))));
    let id = submit_with(&app, &receiver.url("/")).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(first.header("webhook-id"), second.header("webhook-id"));
    assert_eq!(first.body, second.body, "the same event");
    assert!(verifies(&second, KEY));
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "succeeded");
    assert_eq!(doc["webhook"]["attempts"], 2);
    assert_eq!(doc["webhook"]["last_status_code"], 200);
}

#[tokio::test]
async fn retries_after_connection_refused_until_the_receiver_starts() {
    // A port nobody listens on, for now.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let app =
        app(layer()
            .webhooks(local().schedule([Duration::ZERO; 1].into_iter().chain([ms(200); 20]))));
    let id = submit_with(&app, &format!("http://{addr}/late")).await;

    let doc = wait_until(&app, &id, |d| d["webhook"]["attempts"].as_u64() >= Some(1)).await;
    assert_eq!(doc["webhook"]["status"], "pending");
    assert_eq!(doc["webhook"]["last_status_code"], json!(null));
    let error = doc["webhook"]["last_error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("refused"), "{error}");

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut receiver = Receiver::on(listener, |_| ok());
    let hit = receiver.next().await;
    assert_eq!(hit.json()["id"], id.as_str());
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "succeeded");
    assert!(doc["webhook"]["attempts"].as_u64().unwrap() >= 2);
    assert_eq!(doc["webhook"]["last_error"], json!(null));
}

#[tokio::test]
async fn gives_up_at_the_end_of_the_schedule_and_the_output_stays() {
    let receiver = Receiver::start(|_| Reply::Status(503, vec![])).await;
    let app = app(layer().webhooks(local().schedule([Duration::ZERO, ms(50), ms(50)])));
    let id = submit_with(&app, &receiver.url("/")).await;
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["status"], "succeeded", "the job itself is not affected");
    assert_eq!(doc["webhook"]["status"], "failed");
    assert_eq!(doc["webhook"]["attempts"], 3, "as many as the schedule has");
    assert_eq!(doc["webhook"]["last_status_code"], 503);
    assert!(doc["webhook"]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    assert_eq!(receiver.count(), 3);
    let result = call(&app, get(&format!("/async/{id}/result"))).await;
    assert_eq!(result.status, 200);
    assert_eq!(result.json(), json!({"text": "Hello!"}));
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_each_attempt() {
    let receiver = Receiver::start(|_| Reply::Hang).await;
    let app = app(layer().webhooks(
        local()
            .attempt_timeout(ms(200))
            .schedule([Duration::ZERO, ms(50)]),
    ));
    let id = submit_with(&app, &receiver.url("/")).await;
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "failed");
    assert_eq!(doc["webhook"]["attempts"], 2, "retried after the timeout");
    assert_eq!(doc["webhook"]["last_status_code"], json!(null));
    let error = doc["webhook"]["last_error"].as_str().unwrap();
    assert!(error.contains("did not answer within 0.2 s"), "{error}");
    assert_eq!(receiver.count(), 2);
    let result = call(&app, get(&format!("/async/{id}/result"))).await;
    assert_eq!(result.status, 200);
    assert_eq!(result.json(), json!({"text": "Hello!"}));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mut receiver = Receiver::start(|n| {
        if n == 0 {
            Reply::Status(429, vec![("retry-after", "1".into())])
        } else {
            ok()
        }
    })
    .await;
    let app = app(layer().webhooks(local().schedule([Duration::ZERO, ms(50)])));
    let id = submit_with(&app, &receiver.url("/")).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    let gap = second.at - first.at;
    // The schedule says 50 ms; the receiver asked for 1 s. (A lower bound:
    // the layer waited at least that long.)
    assert!(gap >= ms(950), "{gap:?}");
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "succeeded");
    assert_eq!(doc["webhook"]["attempts"], 2);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let elsewhere = Receiver::start(|_| ok()).await;
    let target = elsewhere.url("/moved");
    let receiver =
        Receiver::start(move |_| Reply::Status(307, vec![("location", target.clone())])).await;
    let app = app(layer().webhooks(local()));
    let id = submit_with(&app, &receiver.url("/")).await;
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "failed");
    assert_eq!(doc["webhook"]["attempts"], 1, "a redirect fails for good");
    assert_eq!(doc["webhook"]["last_status_code"], 307);
    assert!(doc["webhook"]["last_error"]
        .as_str()
        .unwrap()
        .contains("redirects are not followed"));
    assert_eq!(elsewhere.count(), 0);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let receiver = Receiver::start(|_| Reply::Status(404, vec![])).await;
    let app = app(layer().webhooks(local()));
    let id = submit_with(&app, &receiver.url("/")).await;
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "failed");
    assert_eq!(doc["webhook"]["attempts"], 1);
    assert_eq!(doc["webhook"]["last_status_code"], 404);
    assert_eq!(receiver.count(), 1);
}
