//! Each job's spans exported over OTLP to a collector inside the test: a
//! hyper server on 127.0.0.1:0 that decodes every `ExportTraceServiceRequest`
//! with the reference types (`opentelemetry-proto`), over HTTP/protobuf and
//! over gRPC. The checks are the ones Jaeger or Tempo rely on: one trace id
//! per job, each attempt and delivery a child of the submission, and each
//! attempt's span id the parent id the upstream received in `traceparent`.
//!
//! The tests run on a current-thread runtime so that the subscriber set
//! for the test (thread-local) sees the spans of the worker tasks too.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;
use serde_json::json;
use tower::Layer;
use tower_defer::batch::Batch;
use tower_defer::job::RetryPolicy;
use tower_defer::otlp::{OtlpConfig, OtlpHandle, OtlpLayer};
use tower_defer::{Body, DeferLayer, MemoryStore, Store, Webhooks};
use tower_defer_testkit::inproc::{call, envelope, finished_within, json_response};
use tracing_subscriber::layer::SubscriberExt;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- the collector

/// What the collector received: the spans, and the head of each export.
#[derive(Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
    requests: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Collected {
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }
}

/// An OTLP receiver: HTTP/1.1 and `POST /v1/traces`, or (with `grpc`)
/// HTTP/2 only and the `TraceService/Export` call, answered with a
/// `grpc-status` trailer.
async fn collector(grpc: bool) -> (String, Collected) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collected = Collected::default();
    let shared = collected.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let collected = shared.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let collected = collected.clone();
                async move { Ok::<_, Infallible>(receive(req, &collected, grpc).await) }
            });
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                if grpc {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (format!("http://{addr}"), collected)
}

async fn receive(
    req: Request<Incoming>,
    collected: &Collected,
    grpc: bool,
) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    collected
        .requests
        .lock()
        .unwrap()
        .push((parts.uri.path().to_owned(), parts.headers.clone()));
    let mut body = body.collect().await.unwrap().to_bytes();
    if grpc {
        assert_eq!(body.get_u8(), 0, "not compressed");
        let len = body.get_u32() as usize;
        assert_eq!(len, body.len(), "one framed message");
    }
    let request =
        ExportTraceServiceRequest::decode(body).expect("a valid ExportTraceServiceRequest");
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            });
        collected.services.lock().unwrap().extend(service);
        for scope in resource_spans.scope_spans {
            collected.spans.lock().unwrap().extend(scope.spans);
        }
    }
    if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        // An empty ExportTraceServiceResponse, framed; grpc-status in trailers.
        let body = GrpcAnswer {
            data: Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
            trailers: Some(trailers),
        };
        let mut response = Response::new(body.boxed());
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        return response;
    }
    Response::new(Full::new(Bytes::new()).boxed())
}

/// A body of one data frame, then trailers: what a gRPC answer is.
struct GrpcAnswer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for GrpcAnswer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Some(http_body::Frame::data(data)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

/// The layer's config for `endpoint` (the general variable: `/v1/traces`
/// is appended for HTTP).
fn config(endpoint: &str, grpc: bool) -> OtlpConfig {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            if grpc { "grpc" } else { "http/protobuf" }.to_owned(),
        ),
        ("OTEL_SERVICE_NAME", "otlp-test".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    OtlpConfig::from_lookup("unused", |name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
    .unwrap()
}

/// Installs the OTLP layer for this thread; the guard removes it.
fn install(config: OtlpConfig) -> (tracing::subscriber::DefaultGuard, OtlpHandle) {
    let (layer, handle) = OtlpLayer::new(config);
    let subscriber = tracing_subscriber::registry().with(layer);
    (tracing::subscriber::set_default(subscriber), handle)
}

// ---------------------------------------------------------------- the upstream

/// An upstream that answers 503 to its first `fail` calls and 200 after,
/// keeping each call's `traceparent`.
#[derive(Clone, Default)]
struct Upstream {
    traceparents: Arc<Mutex<Vec<String>>>,
    fail: usize,
}

impl Upstream {
    fn seen(&self) -> Vec<String> {
        self.traceparents.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        let me = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                let traceparent = req.headers()["traceparent"].to_str().unwrap().to_owned();
                let mut seen = me.traceparents.lock().unwrap();
                seen.push(traceparent);
                let status = if seen.len() <= me.fail { 503 } else { 200 };
                Ok(json_response(status, json!({"ok": status == 200})))
            }
        })
    }
}

/// A webhook receiver answering 200, keeping each `traceparent`.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = shared.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let header = req
                        .headers()
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(header.unwrap_or_default());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (format!("http://{addr}/hook"), seen)
}

// ---------------------------------------------------------------- reading spans

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(trace id, parent id, flags)` of a traceparent.
fn parts(traceparent: &str) -> (String, String, String) {
    let f: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(f.len(), 4, "{traceparent}");
    (f[1].into(), f[2].into(), f[3].into())
}

fn attribute(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(any_value::Value::IntValue(i)) => i,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

/// Flushes until `done` holds of what the collector has, or fails after
/// `WITHIN` (a bound against hanging, not a measure of speed).
async fn collected_until(
    handle: &OtlpHandle,
    collected: &Collected,
    done: impl Fn(&Collected) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        handle.flush().await;
        if done(collected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans: {:#?}",
            collected.spans()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(10))
}

// ---------------------------------------------------------------- the tests

/// Submission, a retried attempt and a webhook delivery: one trace under the
/// client's span, with the ids every hop received.
async fn one_trace_from_submission_to_webhook(grpc: bool) {
    let (endpoint, collected) = collector(grpc).await;
    let (_guard, handle) = install(config(&endpoint, grpc));
    let (hook, hook_seen) = webhook_receiver().await;
    let upstream = Upstream {
        fail: 1,
        ..Upstream::default()
    };
    let app = DeferLayer::new(MemoryStore::new())
        .retry(fast_retries())
        .webhooks(
            Webhooks::new()
                .deny_private_addresses(false)
                .schedule([Duration::ZERO]),
        )
        .layer(upstream.service());
    let mut req = envelope(json!({"data": {"q": 1}, "webhook": hook}));
    req.headers_mut()
        .insert("traceparent", CLIENT.parse().unwrap());
    let created = call(&app, req).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let doc = finished_within(&app, &id, WITHIN).await;
    assert_eq!(doc["attempts"], 2, "{doc}");
    collected_until(&handle, &collected, |c| {
        c.named("webhook").len() == 1 && c.named("job").len() == 2
    })
    .await;

    let (client_trace, client_span, _) = parts(CLIENT);
    let submits = collected.named("submit");
    assert_eq!(submits.len(), 1, "{submits:#?}");
    let submit = &submits[0];
    assert_eq!(hex(&submit.trace_id), client_trace);
    assert_eq!(
        hex(&submit.parent_span_id),
        client_span,
        "the client's span is the parent"
    );
    assert_eq!(submit.kind, SpanKind::Server as i32);
    assert_eq!(text(submit, "job_id"), id);
    assert!(submit.end_time_unix_nano >= submit.start_time_unix_nano);

    // Two attempts: distinct spans, both children of the submission, each
    // the parent the upstream was told of, in order.
    let jobs = collected.named("job");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for (n, traceparent) in seen.iter().enumerate() {
        let (trace, parent, flags) = parts(traceparent);
        assert_eq!(trace, client_trace);
        assert_eq!(flags, "01");
        let attempt = jobs
            .iter()
            .find(|s| hex(&s.span_id) == parent)
            .unwrap_or_else(|| panic!("no attempt span {parent} in {jobs:#?}"));
        assert_eq!(hex(&attempt.trace_id), client_trace);
        assert_eq!(
            attempt.parent_span_id, submit.span_id,
            "a child of the submission"
        );
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        assert_eq!(text(attempt, "job_id"), id);
        assert_eq!(int(attempt, "attempt"), n as i64 + 1, "counted from 1");
        let status = attempt.status.clone().unwrap_or_default();
        if n == 0 {
            assert_eq!(int(attempt, "status_code"), 503);
            assert_eq!(text(attempt, "outcome"), "retry");
            assert_eq!(status.code, StatusCode::Error as i32);
        } else {
            assert_eq!(int(attempt, "status_code"), 200);
            assert_eq!(text(attempt, "outcome"), "succeeded");
            assert_eq!(status.code, StatusCode::Unset as i32);
            assert!(
                attempt.events.iter().any(|e| e.name == "job finished"),
                "its log lines are its events: {:?}",
                attempt.events
            );
        }
    }
    assert_ne!(jobs[0].span_id, jobs[1].span_id);

    // The delivery: a child of the submission, its id sent to the receiver.
    let hooks = collected.named("webhook");
    let delivery = &hooks[0];
    assert_eq!(hex(&delivery.trace_id), client_trace);
    assert_eq!(delivery.parent_span_id, submit.span_id);
    assert_eq!(text(delivery, "outcome"), "succeeded");
    let received = hook_seen.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(parts(&received[0]).1, hex(&delivery.span_id));

    assert_eq!(collected.services.lock().unwrap()[0], "otlp-test");
    assert_eq!(handle.dropped_spans(), 0);
    let requests = collected.requests.lock().unwrap().clone();
    let (path, headers) = &requests[0];
    if grpc {
        assert_eq!(
            path,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
    } else {
        assert_eq!(path, "/v1/traces");
        assert_eq!(headers["content-type"], "application/x-protobuf");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn over_http_a_job_is_one_trace_from_submission_to_webhook() {
    one_trace_from_submission_to_webhook(false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn over_grpc_a_job_is_one_trace_from_submission_to_webhook() {
    one_trace_from_submission_to_webhook(true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_unsampled_trace_is_not_exported() {
    let (endpoint, collected) = collector(false).await;
    let (_guard, handle) = install(config(&endpoint, false));
    let upstream = Upstream::default();
    let app = DeferLayer::new(MemoryStore::new()).layer(upstream.service());
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let mut req = envelope(json!({"data": {}}));
    req.headers_mut()
        .insert("traceparent", unsampled.parse().unwrap());
    let quiet = call(&app, req).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    finished_within(&app, &quiet, WITHIN).await;
    // A sampled job after it: once its spans are in, the other's would be.
    let loud = call(&app, envelope(json!({"data": {}}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    finished_within(&app, &loud, WITHIN).await;
    collected_until(&handle, &collected, |c| c.named("job").len() == 1).await;
    for span in collected.spans() {
        assert_eq!(text(&span, "job_id"), loud, "{span:?}");
        assert_ne!(hex(&span.trace_id), parts(unsampled).0);
    }
    assert_eq!(collected.named("submit").len(), 1);
    // Without a client's trace, the submission is the trace's root.
    assert!(collected.named("submit")[0].parent_span_id.is_empty());
}

/// A batch: each member's attempt is its own span in its own trace; the
/// call's traceparent names the head's, and the spans link both ways.
#[tokio::test(flavor = "current_thread")]
async fn each_member_of_a_batch_has_its_attempt_linked_to_the_shared_call() {
    let (endpoint, collected) = collector(false).await;
    let (_guard, handle) = install(config(&endpoint, false));
    let calls = Arc::new(Mutex::new(Vec::<(String, serde_json::Value)>::new()));
    let seen = calls.clone();
    let model = tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let traceparent = req.headers()["traceparent"].to_str().unwrap().to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let n = body["input"].as_array().map_or(1, Vec::len);
            seen.lock().unwrap().push((traceparent, body));
            let data: Vec<_> = (0..n)
                .map(|i| json!({"index": i, "embedding": [i]}))
                .collect();
            Ok::<_, Infallible>(json_response(200, json!({"data": data})))
        }
    });
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .batch(Batch::post("/v1/embeddings").max_wait(Duration::from_millis(300)))
        .layer(model);
    let mut ids = Vec::new();
    for input in ["one", "two"] {
        let env = json!({"path": "/v1/embeddings", "data": {"model": "m", "input": input}});
        ids.push(
            call(&app, envelope(env)).await.json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        let doc = finished_within(&app, id, WITHIN).await;
        assert_eq!(doc["batch_size"], 2, "{doc}");
    }
    collected_until(&handle, &collected, |c| c.named("job").len() == 2).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "one call: {calls:?}");
    let (_, head_id, _) = parts(&calls[0].0);
    let jobs = collected.named("job");
    let head = jobs
        .iter()
        .find(|s| hex(&s.span_id) == head_id)
        .expect("the head's span");
    let other = jobs
        .iter()
        .find(|s| hex(&s.span_id) != head_id)
        .expect("the other's span");
    assert_ne!(
        head.trace_id, other.trace_id,
        "each job is a trace of its own"
    );
    let submits = collected.named("submit");
    for attempt in [head, other] {
        let submit = submits
            .iter()
            .find(|s| s.trace_id == attempt.trace_id)
            .expect("the member's submission");
        assert_eq!(attempt.parent_span_id, submit.span_id);
        assert_eq!(int(attempt, "status_code"), 200);
    }
    assert_eq!(other.links.len(), 1, "{other:?}");
    assert_eq!(other.links[0].span_id, head.span_id);
    assert_eq!(other.links[0].trace_id, head.trace_id);
    assert_eq!(head.links.len(), 1, "{head:?}");
    assert_eq!(head.links[0].span_id, other.span_id);
}

#[tokio::test(flavor = "current_thread")]
async fn a_collector_that_is_down_costs_dropped_spans_and_never_a_job() {
    // A port with nobody on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_guard, handle) = install(config(&format!("http://127.0.0.1:{port}"), false));
    let app = DeferLayer::new(MemoryStore::new()).layer(Upstream::default().service());
    let id = call(&app, envelope(json!({"data": {}}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = finished_within(&app, &id, WITHIN).await;
    assert_eq!(doc["status"], "succeeded");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while handle.dropped_spans() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        handle.flush().await;
    }
    assert!(handle.failed_exports() >= 1);
    assert_eq!(handle.exported_spans(), 0);
}

/// Two replicas on one Redis: the job is submitted through one and run by
/// the other, and its spans still form one trace.
async fn across_two_replicas<St: Store>(a: St, b: St) {
    let (endpoint, collected) = collector(false).await;
    let (_guard, handle) = install(config(&endpoint, false));
    let upstream = Upstream {
        fail: 1,
        ..Upstream::default()
    };
    let layer = |store| DeferLayer::new(store).retry(fast_retries());
    let (a, _never_run) = layer(a).pair(upstream.service());
    let (b, b_workers) = layer(b).pair(upstream.service());
    let mut ids = Vec::new();
    // With a client's traceparent, and without (the trace derived from the id).
    for traceparent in [Some(CLIENT), None] {
        let mut req = envelope(json!({"data": {}}));
        if let Some(t) = traceparent {
            req.headers_mut().insert("traceparent", t.parse().unwrap());
        }
        ids.push(
            call(&a, req).await.json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    tokio::spawn(b_workers);
    for id in &ids {
        let doc = finished_within(&b, id, WITHIN).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
    }
    // The first job's first attempt failed: three attempts in all.
    collected_until(&handle, &collected, |c| c.named("job").len() == 3).await;
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for id in &ids {
        let submits: Vec<Span> = collected
            .named("submit")
            .into_iter()
            .filter(|s| text(s, "job_id") == *id)
            .collect();
        assert_eq!(submits.len(), 1);
        let attempts: Vec<Span> = collected
            .named("job")
            .into_iter()
            .filter(|s| text(s, "job_id") == *id)
            .collect();
        assert!(!attempts.is_empty());
        for attempt in &attempts {
            assert_eq!(attempt.trace_id, submits[0].trace_id);
            assert_eq!(attempt.parent_span_id, submits[0].span_id);
            let sent = seen
                .iter()
                .find(|t| parts(t).1 == hex(&attempt.span_id))
                .expect("the upstream was sent this attempt's span id");
            assert_eq!(parts(sent).0, hex(&attempt.trace_id));
        }
    }
    let first: Vec<Span> = collected
        .named("job")
        .into_iter()
        .filter(|s| text(s, "job_id") == ids[0])
        .collect();
    assert_eq!(first.len(), 2, "a retry: two attempts");
    assert_ne!(first[0].span_id, first[1].span_id);
    assert_eq!(hex(&collected.named("submit")[0].trace_id), parts(CLIENT).0);
}

#[tokio::test(flavor = "current_thread")]
async fn across_two_replicas_on_redis_a_job_is_one_trace() {
    use tower_defer_testkit::redis::RedisServer;
    let Some(redis) = RedisServer::start(false) else {
        return;
    };
    let connect = || tower_defer::RedisStore::builder(redis.url()).connect();
    across_two_replicas(connect().await.unwrap(), connect().await.unwrap()).await;
}
