//! Queue-time batching through the worker: compatible jobs share one call to
//! a small fake embeddings server, each gets its own items back, and failure
//! stays per job. Each case runs on the memory store and, with feature
//! `redis`, on a Redis store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::Layer;
use tower_defer::batch::Batch;
use tower_defer::job::RetryPolicy;
use tower_defer::{Body, DeferLayer, MemoryStore, Store};

use crate::support::*;

/// An OpenAI-style embeddings server: each input's "embedding" is its
/// length, and each item echoes its text. An input "bad" makes it answer
/// 400, "short" makes it drop the last item; `fail_first` calls answer 500.
#[derive(Clone, Default)]
struct Model {
    calls: Arc<Mutex<Vec<Value>>>,
    fail_first: Arc<AtomicUsize>,
    gate: Option<Gate>,
}

impl Model {
    fn calls(&self) -> Vec<Value> {
        self.calls.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        let model = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let model = model.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&body).unwrap();
                model.calls.lock().unwrap().push(body.clone());
                let _held = match &model.gate {
                    Some(gate) => Some(gate.pass().await),
                    None => None,
                };
                let texts: Vec<String> = match &body["input"] {
                    Value::Array(a) => a.iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
                    t => vec![t.as_str().unwrap().to_owned()],
                };
                let fail = model
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    return infallible(json_response(500, json!({"error": "overloaded"})));
                }
                if texts.iter().any(|t| t == "bad") {
                    return infallible(json_response(400, json!({"error": "bad input"})));
                }
                let mut data: Vec<Value> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": [t.len()], "echo": t}))
                    .collect();
                if texts.iter().any(|t| t == "short") {
                    data.pop();
                }
                infallible(json_response(
                    200,
                    json!({"object": "list", "model": body["model"], "data": data}),
                ))
            }
        })
    }
}

/// A route that waits long enough for every submission of a case to arrive.
fn route() -> Batch {
    Batch::post("/v1/embeddings").max_wait(Duration::from_millis(300))
}

fn layer<St: Store>(store: St) -> DeferLayer<St> {
    DeferLayer::new(store)
        .concurrency(1)
        .retry(RetryPolicy::default().with_initial_delay(Duration::from_millis(10)))
        .batch(route())
}

fn envelope(model: &str, input: Value) -> Value {
    json!({"path": "/v1/embeddings", "data": {"model": model, "input": input}})
}

async fn output(c: &HttpClient, server: &Server, id: &str) -> Value {
    c.get(&server.url(&format!("/async/{id}/output")))
        .await
        .json()["output"]
        .clone()
}

async fn finished(c: &HttpClient, server: &Server, id: &str) -> Value {
    c.finished(&server.url(&format!("/async/{id}"))).await
}

fn echoes(output: &Value) -> Vec<(u64, String)> {
    output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["index"].as_u64().unwrap(),
                i["echo"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn jobs_submitted_together_share_one_call<St: Store>(store: St) {
    let model = Model::default();
    let server = serve(layer(store).layer(model.service())).await;
    let c = HttpClient::new();
    let a = c.submit(&server, &envelope("m", json!("a"))).await;
    let bc = c
        .submit(&server, &envelope("m", json!(["bb", "ccc"])))
        .await;
    let d = c.submit(&server, &envelope("m", json!("dddd"))).await;
    for id in [&a, &bc, &d] {
        let doc = finished(&c, &server, id).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["batch_size"], 3, "{doc}");
    }
    let calls = model.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0],
        json!({"model": "m", "input": ["a", "bb", "ccc", "dddd"]})
    );
    // Each its own items, numbered from 0, in the answer's shape.
    assert_eq!(echoes(&output(&c, &server, &a).await), [(0, "a".into())]);
    assert_eq!(
        echoes(&output(&c, &server, &bc).await),
        [(0, "bb".into()), (1, "ccc".into())]
    );
    let d = output(&c, &server, &d).await;
    assert_eq!(echoes(&d), [(0, "dddd".into())]);
    assert_eq!(d["model"], "m");
    assert_eq!(d["data"][0]["embedding"], json!([4]));
}

async fn jobs_of_different_models_never_share_a_call<St: Store>(store: St) {
    let model = Model::default();
    let server = serve(layer(store).layer(model.service())).await;
    let c = HttpClient::new();
    let ids = [
        c.submit(&server, &envelope("m1", json!("a"))).await,
        c.submit(&server, &envelope("m2", json!("b"))).await,
        c.submit(&server, &envelope("m1", json!("c"))).await,
    ];
    for id in &ids {
        assert_eq!(finished(&c, &server, id).await["status"], "succeeded");
    }
    let mut calls = model.calls();
    calls.sort_by_key(|c| c["model"].as_str().unwrap().to_owned());
    assert_eq!(
        calls,
        [
            json!({"model": "m1", "input": ["a", "c"]}),
            json!({"model": "m2", "input": "b"}),
        ]
    );
    assert_eq!(finished(&c, &server, &ids[1]).await["batch_size"], 1);
}

async fn a_refused_batch_runs_its_members_alone_and_fails_only_the_bad_one<St: Store>(store: St) {
    let model = Model::default();
    let server = serve(layer(store).layer(model.service())).await;
    let c = HttpClient::new();
    let ok1 = c.submit(&server, &envelope("m", json!("ok1"))).await;
    let bad = c.submit(&server, &envelope("m", json!("bad"))).await;
    let ok2 = c.submit(&server, &envelope("m", json!(["ok2"]))).await;
    for id in [&ok1, &ok2] {
        let doc = finished(&c, &server, id).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["batch_size"], 1, "{doc}");
        assert_eq!(doc["attempts"], 1, "{doc}");
    }
    let doc = finished(&c, &server, &bad).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["status_code"], 400, "{doc}");
    assert_eq!(
        echoes(&output(&c, &server, &ok2).await),
        [(0, "ok2".into())]
    );
    let inputs: Vec<Value> = model.calls().iter().map(|c| c["input"].clone()).collect();
    assert_eq!(
        inputs,
        [
            json!(["ok1", "bad", "ok2"]),
            json!("ok1"),
            json!("bad"),
            json!(["ok2"])
        ]
    );
}

async fn an_answer_that_does_not_match_its_inputs_fails_every_member<St: Store>(store: St) {
    let model = Model::default();
    let server = serve(layer(store).layer(model.service())).await;
    let c = HttpClient::new();
    let ids = [
        c.submit(&server, &envelope("m", json!("a"))).await,
        c.submit(&server, &envelope("m", json!("short"))).await,
    ];
    for id in &ids {
        let doc = finished(&c, &server, id).await;
        assert_eq!(doc["status"], "failed", "{doc}");
        assert_eq!(doc["error"]["code"], "batch_mismatch", "{doc}");
        assert_eq!(doc["batch_size"], 2, "{doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("/data holds 1 items for 2 inputs"),
            "{message}"
        );
    }
}

async fn a_retryable_failure_retries_every_member<St: Store>(store: St) {
    let model = Model::default();
    model.fail_first.store(1, Ordering::SeqCst);
    let server = serve(layer(store).layer(model.service())).await;
    let c = HttpClient::new();
    let ids = [
        c.submit(&server, &envelope("m", json!("a"))).await,
        c.submit(&server, &envelope("m", json!("b"))).await,
    ];
    for id in &ids {
        let doc = finished(&c, &server, id).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["attempts"], 2, "{doc}");
    }
    assert_eq!(
        echoes(&output(&c, &server, &ids[1]).await),
        [(0, "b".into())]
    );
    // The failed batch, then each member once more: together again, or
    // apart when their own backoffs ended at different times.
    let calls = model.calls();
    assert_eq!(calls[0]["input"], json!(["a", "b"]));
    let mut again: Vec<Value> = calls[1..]
        .iter()
        .flat_map(|c| match &c["input"] {
            Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        })
        .collect();
    again.sort_by_key(|t| t.as_str().unwrap().to_owned());
    assert_eq!(again, [json!("a"), json!("b")], "{calls:?}");
}

async fn a_member_canceled_mid_call_ends_canceled_and_the_others_complete<St: Store>(store: St) {
    let gate = Gate::new();
    let model = Model {
        gate: Some(gate.clone()),
        ..Model::default()
    };
    let server = serve(layer(store).layer(model.service())).await;
    let c = HttpClient::new();
    let kept = c.submit(&server, &envelope("m", json!("a"))).await;
    let canceled = c.submit(&server, &envelope("m", json!("b"))).await;
    gate.started(1).await;
    let a = c.delete(&server.url(&format!("/async/{canceled}"))).await;
    assert_eq!(a.status, 200, "{a:?}");
    gate.release(1);
    let doc = finished(&c, &server, &kept).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(echoes(&output(&c, &server, &kept).await), [(0, "a".into())]);
    let doc = finished(&c, &server, &canceled).await;
    assert_eq!(doc["status"], "canceled", "{doc}");
    assert_eq!(model.calls().len(), 1);
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::MemoryStore::new()).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            use tower_defer_testkit::redis::RedisServer;

            $(
                #[tokio::test]
                async fn $case() {
                    let Some(server) = RedisServer::start(false) else { return };
                    let store = tower_defer::RedisStore::builder(server.url())
                        .connect()
                        .await
                        .unwrap();
                    super::$case(store).await;
                }
            )*
        }
    };
}

on_every_store!(
    jobs_submitted_together_share_one_call,
    jobs_of_different_models_never_share_a_call,
    a_refused_batch_runs_its_members_alone_and_fails_only_the_bad_one,
    an_answer_that_does_not_match_its_inputs_fails_every_member,
    a_retryable_failure_retries_every_member,
    a_member_canceled_mid_call_ends_canceled_and_the_others_complete,
);

/// Two replicas on one Redis: a job submitted through each joins one batch,
/// run by the replica whose workers run (the other's never start).
#[cfg(feature = "redis")]
#[tokio::test]
async fn jobs_submitted_through_two_replicas_share_one_call() {
    use tower_defer_testkit::redis::RedisServer;
    let Some(redis) = RedisServer::start(false) else {
        return;
    };
    let connect = || tower_defer::RedisStore::builder(redis.url()).connect();
    let model = Model::default();
    let (a, _never_run) = layer(connect().await.unwrap()).pair(model.service());
    let (b, b_workers) = layer(connect().await.unwrap()).pair(model.service());
    let (a, b) = (serve(a).await, serve(b).await);
    let c = HttpClient::new();
    let first = c.submit(&a, &envelope("m", json!("one"))).await;
    let second = c.submit(&b, &envelope("m", json!("two"))).await;
    tokio::spawn(b_workers);
    for (server, id) in [(&a, &first), (&b, &second)] {
        let doc = finished(&c, server, id).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["batch_size"], 2, "{doc}");
    }
    let calls = model.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0], json!({"model": "m", "input": ["one", "two"]}));
    // Each replica answers for either job, with that job's own item.
    assert_eq!(echoes(&output(&c, &b, &first).await), [(0, "one".into())]);
    assert_eq!(echoes(&output(&c, &a, &second).await), [(0, "two".into())]);
}

/// A job alone on a batching route waits for company, and leaves by its
/// `max_wait` from its submission, not from its claim: the light-load
/// promise, latency at most the unbatched one plus `max_wait`. The one slot
/// is busy for 4 ms with an unbatched job first, so the lone job is claimed
/// late. On a paused clock, so the times are the runtime's own and exact.
#[tokio::test(start_paused = true)]
async fn a_lone_job_waits_for_company_and_leaves_within_max_wait() {
    use tower_defer_testkit::inproc;

    let max_wait = Duration::from_millis(10);
    let called = Arc::new(Mutex::new(None));
    let model = Model::default();
    let inner = {
        let (called, service) = (called.clone(), model.service());
        tower::service_fn(move |req: Request<Body>| {
            let (called, service) = (called.clone(), service.clone());
            async move {
                if req.uri().path() == "/v1/other" {
                    tokio::time::sleep(Duration::from_millis(4)).await;
                    return infallible(json_response(200, json!({})));
                }
                called
                    .lock()
                    .unwrap()
                    .get_or_insert_with(tokio::time::Instant::now);
                tower::ServiceExt::oneshot(service, req).await
            }
        })
    };
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .batch(Batch::post("/v1/embeddings").max_wait(max_wait))
        .layer(inner);
    let submitted = tokio::time::Instant::now();
    let first = inproc::submit(&app, json!({"path": "/v1/other", "data": {}})).await;
    let id = inproc::submit(&app, envelope("m", json!("alone"))).await;
    let done = inproc::finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(inproc::finished(&app, &first).await["status"], "succeeded");
    let waited = called.lock().unwrap().expect("the model was called") - submitted;
    assert!(waited <= max_wait, "left {waited:?} after its submission");
    // It did wait for company, until a couple of ticks before its deadline.
    assert!(
        waited >= max_wait - Duration::from_millis(3),
        "left after {waited:?}"
    );
    assert_eq!(model.calls().len(), 1);
}
