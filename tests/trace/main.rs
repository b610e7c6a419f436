//! One trace per job, on tokio's paused clock: what the upstream receives in
//! `traceparent` on each attempt, and the `submit` and `job` spans the layer
//! opens, captured by a subscriber layer of the test's own.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use serde_json::json;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};
use tower_defer_testkit::inproc::*;
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};

const SUBMITTED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the upstream saw of one attempt.
#[derive(Clone, Debug)]
struct Seen {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// An upstream that answers 503 to the first call and 200 after, keeping
/// the trace headers of each.
fn flaky_upstream(
    seen: Arc<Mutex<Vec<Seen>>>,
) -> impl tower_defer::InnerService<
    ResponseBody = Body,
    BodyError = tower_defer::BoxError,
    Error = io::Error,
> {
    tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let header = |name| {
                req.headers()
                    .get(name)
                    .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
            };
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                traceparent: header("traceparent"),
                tracestate: header("tracestate"),
            });
            let status = if seen.len() == 1 { 503 } else { 200 };
            Ok::<Response<Body>, io::Error>(json_response(status, json!({})))
        }
    })
}

/// `(trace id, parent id, flags)` of a version-00 traceparent, checked to be
/// well formed.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    let hex = |s: &str, len| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        hex(fields[1], 32) && fields[1] != "0".repeat(32),
        "{traceparent}"
    );
    assert!(
        hex(fields[2], 16) && fields[2] != "0".repeat(16),
        "{traceparent}"
    );
    (fields[1].into(), fields[2].into(), fields[3].into())
}

/// Runs one job, submitted with these headers on the envelope request,
/// through a first attempt answered 503 and a second answered 200; what the
/// upstream saw of each.
async fn two_attempts(headers: &[(&'static str, &str)]) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = DeferLayer::new(MemoryStore::new()).layer(flaky_upstream(seen.clone()));
    let mut req = envelope(json!({"data": {"q": 1}}));
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, http::HeaderValue::from_str(value).unwrap());
    }
    let answer = call(&app, req).await;
    assert_eq!(answer.status, 201, "a trace header never makes a 4xx");
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["attempts"], 2, "{doc}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    seen
}

/// The trace id both attempts carried, after checking each attempt had a
/// parent id of its own.
fn one_trace(seen: &[Seen]) -> String {
    let first = parts(seen[0].traceparent.as_deref().expect("a traceparent"));
    let second = parts(seen[1].traceparent.as_deref().expect("a traceparent"));
    assert_eq!(first.0, second.0, "one trace id for the job");
    assert_ne!(first.1, second.1, "each attempt is a span of its own");
    first.0
}

#[tokio::test(start_paused = true)]
async fn a_submitted_traceparent_keeps_its_trace_id_on_every_attempt() {
    let seen = two_attempts(&[("traceparent", SUBMITTED), ("tracestate", "vendor=x")]).await;
    assert_eq!(one_trace(&seen), "4bf92f3577b34da6a3ce929d0e0e4736");
    for attempt in &seen {
        let (_, parent, flags) = parts(attempt.traceparent.as_deref().unwrap());
        assert_ne!(
            parent, "00f067aa0ba902b7",
            "the parent is the attempt, not the client"
        );
        assert_eq!(flags, "01", "the client's sampling decision is kept");
        assert_eq!(attempt.tracestate.as_deref(), Some("vendor=x"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_traceparent_starts_one_trace_for_the_job() {
    let seen = two_attempts(&[]).await;
    one_trace(&seen);
    assert!(seen[0].traceparent.as_deref().unwrap().ends_with("-01"));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_traceparent_is_replaced_by_a_new_trace() {
    for malformed in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "not a trace",
    ] {
        let seen = two_attempts(&[("traceparent", malformed), ("tracestate", "vendor=x")]).await;
        let trace = one_trace(&seen);
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{malformed}");
        assert_eq!(seen[0].tracestate, None, "it went with the malformed one");
    }
}

/// A span's fields by name, values as text (its tracing id under `id`).
type FieldMap = HashMap<String, String>;

/// Every span opened, by name, with its fields as last recorded.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(&'static str, FieldMap)>>>);

struct Fields<'a>(&'a mut FieldMap);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _cx: Context<'_, S>) {
        let mut fields = HashMap::from([("id".to_owned(), id.into_u64().to_string())]);
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((attrs.metadata().name(), fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _cx: Context<'_, S>) {
        let id = id.into_u64().to_string();
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans.iter_mut().rev().find(|(_, f)| f["id"] == id) {
            values.record(&mut Fields(fields));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<FieldMap> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// The spans of every test in this binary. Installed as the global
/// subscriber once: a thread-local one (`set_default`) races with the other
/// tests' threads over tracing's per-callsite interest cache, and may see
/// nothing.
fn spans() -> &'static Spans {
    static SPANS: std::sync::OnceLock<Spans> = std::sync::OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Spans::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
            .expect("no other global subscriber in this test binary");
        spans
    })
}

#[tokio::test(start_paused = true)]
async fn the_submit_span_and_each_attempts_span_share_the_job_id_and_trace_id() {
    let spans = spans();
    // A trace of this test's own: the other tests' spans are captured too.
    let submitted = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let seen = two_attempts(&[("traceparent", submitted)]).await;

    let submits: Vec<_> = spans
        .named("submit")
        .into_iter()
        .filter(|s| s["trace_id"] == "0af7651916cd43dd8448eb211c80319c")
        .collect();
    assert_eq!(submits.len(), 1);
    let submit = &submits[0];
    assert_eq!(
        submit["parent_span_id"], "b7ad6b7169203331",
        "the client's span"
    );
    let job_id = &submit["job_id"];
    assert_eq!(job_id.len(), 16, "{submit:?}");

    let attempts: Vec<_> = spans
        .named("job")
        .into_iter()
        .filter(|s| &s["job_id"] == job_id)
        .collect();
    assert_eq!(attempts.len(), 2);
    for (n, (attempt, upstream)) in attempts.iter().zip(&seen).enumerate() {
        assert_eq!(&attempt["job_id"], job_id);
        assert_eq!(attempt["trace_id"], submit["trace_id"]);
        assert_eq!(
            attempt["parent_span_id"], submit["span_id"],
            "children of the submission"
        );
        assert_eq!(attempt["attempt"], (n + 1).to_string());
        let (_, parent, _) = parts(upstream.traceparent.as_deref().unwrap());
        assert_eq!(
            attempt["span_id"], parent,
            "the upstream's parent is the attempt's span"
        );
    }
}
