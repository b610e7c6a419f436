//! Refusals and secrecy: webhooks refused where not configured or not
//! allowed, and secrets never shown.

use std::time::Duration;

use http::Request;
use serde_json::json;
use tower_defer::webhook::Secret;
use tower_defer::{Body, Webhooks};

use crate::support::*;
use crate::KEY;

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
