//! Webhook delivery against real receivers on 127.0.0.1:0.
//!
//! Real sockets and tokio's paused clock do not mix (the clock jumps ahead
//! while a task waits on I/O), so these tests keep the clock running and
//! configure short schedules (tens to hundreds of milliseconds). They wait
//! for what must happen with generous bounds and never assert how fast.

mod support;

use std::time::Duration;

use http::Request;
use serde_json::json;
use support::*;
use tower::Layer;
use tower_defer::job::{JobOptions, NewJob, StoredRequest, WebhookFormat, WebhookTarget};
use tower_defer::webhook::{baseten_signature, Secret, Verifier};
use tower_defer::{Body, DeferLayer, MemoryStore, Store, Webhooks};

const KEY: &[u8] = b"a key of thirty-two bytes, really";
const OLD_KEY: &[u8] = b"the key being rotated out, 32 by";

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
    let answer = call(&app, envelope(json!({"data": {}, "webhook": receiver.url("/h"), "headers": {"traceparent": submitted}})))
    .await;
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
async fn rotation_signs_with_every_secret() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local().secret(secret(KEY)).secret(secret(OLD_KEY))));
    let id = submit_with(&app, &receiver.url("/")).await;
    let hit = receiver.next().await;
    assert_eq!(hit.header("webhook-signature").split(' ').count(), 2);
    // A receiver holding only the second secret verifies, and so does one
    // holding only the first.
    assert!(verifies(&hit, OLD_KEY));
    assert!(verifies(&hit, KEY));
    for key in [KEY, OLD_KEY] {
        standardwebhooks::Webhook::new(&secret(key))
            .unwrap()
            .verify(&hit.body, &hit.headers)
            .unwrap();
        let ours = Verifier::new(secret(key).parse().unwrap());
        assert_eq!(ours.verify(&hit.headers, &hit.body), Ok(()));
    }
    // A receiver in the middle of its own rotation, with a secret the
    // sender no longer uses beside one it does.
    let rotating =
        Verifier::new(secret(b"retired").parse().unwrap()).secret(secret(OLD_KEY).parse().unwrap());
    assert_eq!(rotating.verify(&hit.headers, &hit.body), Ok(()));
    assert_eq!(delivered(&app, &id).await["webhook"]["status"], "succeeded");
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

#[tokio::test]
async fn baseten_events_have_baseten_body_and_signature() {
    const BASETEN_SECRET: &str = "bt-webhook-secret text, as configured";
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local().secret(secret(KEY)).baseten_secret(BASETEN_SECRET)));
    // The Baseten front door sets this target from `webhook_endpoint`; here
    // the job goes to the store directly.
    let options = JobOptions {
        webhook: Some(WebhookTarget {
            url: receiver.url("/baseten"),
            format: WebhookFormat::Baseten,
        }),
        ..JobOptions::default()
    };
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
async fn webhooks_are_refused_where_not_configured_or_not_allowed() {
    // No webhooks on this layer.
    let plain = app(layer());
    let answer = call(
        &plain,
        envelope(json!({"data": {}, "webhook": "https://hooks.example.com/x"})),
    )
    .await;
    assert_eq!(answer.status, 400);
    let (code, detail) = answer.problem();
    assert_eq!(code, "webhooks_unsupported");
    assert!(
        detail.contains("`webhook`") && detail.contains("this server does not deliver webhooks"),
        "{detail}"
    );
    let req = Request::post("/predict")
        .header("prefer", "respond-async")
        .header("defer-webhook", "https://hooks.example.com/x")
        .body(Body::from("{}"))
        .unwrap();
    let (_, detail) = call(&plain, req).await.problem();
    assert!(
        detail.contains("`defer-webhook`") && detail.contains("does not deliver webhooks"),
        "{detail}"
    );

    // The defaults refuse literal private addresses at submission.
    let strict = app(layer().webhooks(Webhooks::new()));
    for (url, why) in [
        (
            "http://127.0.0.1:9/hook",
            "private or loopback address (127.0.0.1)",
        ),
        ("http://[::1]:9/hook", "private or loopback address (::1)"),
        (
            "http://169.254.169.254/latest/meta-data",
            "private or loopback",
        ),
        ("ftp://hooks.example.com/", "must be an http or https URL"),
        ("hooks.example.com", "must be an"),
        ("", "must be an"),
    ] {
        let answer = call(&strict, envelope(json!({"data": {}, "webhook": url}))).await;
        assert_eq!(answer.status, 400, "{url}");
        let (code, detail) = answer.problem();
        assert_eq!(code, "invalid_field");
        assert!(
            detail.starts_with("`webhook` ") && detail.contains(why),
            "{url}: {detail}"
        );
    }
    let answer = call(&strict, envelope(json!({"data": {}, "webhook": 42}))).await;
    assert!(answer.problem().1.contains("`webhook` must be a string"));
    let req = Request::post("/predict")
        .header("prefer", "respond-async")
        .header("defer-webhook", "http://10.0.0.1/")
        .body(Body::from("{}"))
        .unwrap();
    let answer = call(&strict, req).await;
    assert_eq!(answer.status, 400);
    assert!(answer
        .problem()
        .1
        .starts_with("`defer-webhook` names a private"));

    // An allowlist admits its hosts only.
    let mut receiver = Receiver::start(|_| ok()).await;
    let listed = app(layer().webhooks(local().allow_hosts(["localhost"])));
    let answer = call(
        &listed,
        envelope(json!({"data": {}, "webhook": receiver.url("/")})),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.problem().1.contains("not allowed: 127.0.0.1"));
    let port = receiver.addr.port();
    let id = submit_with(&listed, &format!("http://localhost:{port}/")).await;
    assert_eq!(receiver.next().await.json()["id"], id.as_str());
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_at_delivery() {
    let receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(Webhooks::new().schedule([Duration::ZERO, ms(50)])));
    // Names are not resolved at submission...
    let id = submit_with(&app, &format!("http://localhost:{}/", receiver.addr.port())).await;
    // ... but the address connected to is checked at delivery, for good.
    let doc = delivered(&app, &id).await;
    assert_eq!(doc["webhook"]["status"], "failed");
    assert_eq!(doc["webhook"]["attempts"], 1);
    let error = doc["webhook"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("localhost resolves only to private or loopback addresses"),
        "{error}"
    );
    assert_eq!(receiver.count(), 0);
}

#[tokio::test]
async fn secrets_appear_in_no_response_no_debug_and_no_log() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    const BASETEN_SECRET: &str = "baseten-plain-text-secret";
    let text = secret(KEY);
    let base64_key = text.trim_start_matches("whsec_").to_owned();
    let webhooks = local()
        .secret(&text)
        .baseten_secret(BASETEN_SECRET)
        .schedule([Duration::ZERO, ms(50)]);
    let mut shown = vec![
        format!("{webhooks:?}"),
        format!("{:?}", Secret::new(&text).unwrap()),
        format!("{:?}", Secret::new("not base64!").unwrap_err()),
    ];
    let fails = Receiver::start(|_| Reply::Status(500, vec![])).await;
    let mut works = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(webhooks));
    let id = submit_with(&app, &works.url("/")).await;
    works.next().await;
    let failing = submit_with(&app, &fails.url("/")).await;
    for id in [&id, &failing] {
        shown.push(delivered(&app, id).await.to_string());
        shown.push(call(&app, get(&format!("/async/{id}/output"))).await.text());
        shown.push(call(&app, get(&format!("/async/{id}/result"))).await.text());
    }
    shown.push(
        call(&app, envelope(json!({"data": {}, "webhook": "gopher://x"})))
            .await
            .text(),
    );
    shown.push(call(&app, get("/async/recent")).await.text());
    shown.push(call(&app, get("/async/openapi.json")).await.text());
    drop(_guard);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("webhook delivered"),
        "the logs were captured: {logs}"
    );
    shown.push(logs);
    for text in shown {
        for secret in [&base64_key, BASETEN_SECRET, "thirty-two bytes"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
    }
}

#[test]
fn our_signatures_match_the_reference_implementation() {
    // The published test vector (the standardwebhooks crate's own test).
    let vector = Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let payload = br#"{"email":"test@example.com","username":"test_user"}"#;
    assert_eq!(
        vector.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, payload),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
    // Signed by us, verified by them, and the other way round.
    for key in [KEY, OLD_KEY, b"k".as_slice()] {
        let text = secret(key);
        let ours = Secret::new(&text).unwrap();
        let theirs = standardwebhooks::Webhook::new(&text).unwrap();
        let now = unix_now();
        let signature = ours.sign("msg_abc", now, payload);
        assert_eq!(
            signature,
            theirs.sign("msg_abc", now as i64, payload).unwrap()
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_abc".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        theirs.verify(payload, &headers).expect("verified");
        headers.insert("webhook-id", "msg_other".parse().unwrap());
        assert!(theirs.verify(payload, &headers).is_err());
    }
}

#[test]
fn our_verifier_agrees_with_the_reference_implementation() {
    let payload = br#"{"type":"job.succeeded","id":"0123456789abcdef"}"#;
    let now = unix_now() as i64;
    for key in [KEY, OLD_KEY, b"k".as_slice()] {
        let text = secret(key);
        let theirs = standardwebhooks::Webhook::new(&text).unwrap();
        let ours = Verifier::new(text.parse().unwrap());
        // Signed by the reference at times inside and outside its 5-minute
        // window (10 s clear of the edges, so a second ticking over in
        // between cannot tip either), then received as sent or changed.
        for at in [now, now - 290, now + 290, now - 310, now + 310] {
            let signature = theirs.sign("msg_abc", at, payload).unwrap();
            let sent = |id: &str, signature: &str| {
                let mut h = http::HeaderMap::new();
                h.insert("webhook-id", id.parse().unwrap());
                h.insert("webhook-timestamp", at.to_string().parse().unwrap());
                h.insert("webhook-signature", signature.parse().unwrap());
                h
            };
            let other = secret(b"another key").parse::<Secret>().unwrap();
            let cases = [
                (sent("msg_abc", &signature), &payload[..]),
                (sent("msg_abd", &signature), &payload[..]),
                (sent("msg_abc", &signature), &payload[1..]),
                (
                    sent(
                        "msg_abc",
                        &format!("{} {signature}", other.sign("msg_abc", at as u64, payload)),
                    ),
                    &payload[..],
                ),
                (
                    sent("msg_abc", &other.sign("msg_abc", at as u64, payload)),
                    &payload[..],
                ),
            ];
            for (n, (headers, body)) in cases.iter().enumerate() {
                let expected = theirs.verify(body, headers).is_ok();
                assert_eq!(
                    ours.verify(headers, body).is_ok(),
                    expected,
                    "case {n} at {at} (now {now})"
                );
            }
            // Both accept the delivery as sent exactly when it is in time.
            assert_eq!(
                theirs.verify(payload, &cases[0].0).is_ok(),
                (at - now).abs() < 300
            );
        }
    }
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
