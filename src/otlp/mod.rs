//! OpenTelemetry export of each job's trace over OTLP (feature `otlp`).
//!
//! [`OtlpLayer`] is a [`tracing_subscriber::Layer`]: add it to your
//! subscriber and the layer's `submit`, `job` (one per attempt) and
//! `webhook` (one per delivery) spans are sent to an OTLP collector (Jaeger,
//! Tempo, the OpenTelemetry Collector) with exactly the trace and span ids
//! the job's `traceparent` headers carry. The model server's own spans,
//! children of the `traceparent` it received, then sit under the attempt
//! that called it, and a job's submission, every attempt (on any replica)
//! and every webhook delivery form one trace.
//!
//! ```
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::Layer;
//! use tower_defer::otlp::{OtlpConfig, OtlpLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
//! // Read OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* variables;
//! // `None` when no endpoint is set (or OTEL_SDK_DISABLED=true).
//! let config = OtlpConfig::from_env("my-app").expect("valid OTEL_* variables");
//! if let Some(config) = config {
//!     // Spawns the exporter on the current tokio runtime.
//!     let (otlp, handle) = OtlpLayer::new(config);
//!     // A filter of its own, so that the log filter does not decide what
//!     // is exported.
//!     let otlp = otlp.with_filter(tracing_subscriber::filter::Targets::new()
//!         .with_target("tower_defer", tracing::Level::INFO));
//!     let subscriber = tracing_subscriber::registry().with(otlp);
//!     let _guard = tracing::subscriber::set_default(subscriber);
//!     // ... serve the app ...
//!     // At shutdown: send what is queued.
//!     handle.flush().await;
//! }
//! # }
//! ```
//!
//! # The spans
//!
//! | span | kind | starts | ends | parent |
//! |---|---|---|---|---|
//! | `submit` | server | the store is asked to enqueue | the job is stored | the submitter's `traceparent`, if any |
//! | `job` | client | the job is claimed | its result is recorded | the submission |
//! | `webhook` | client | the delivery is claimed | its result is recorded | the submission |
//!
//! Each has the attributes `job_id`, `attempt` (`job`, `webhook`) and, once
//! known, `status_code` (the upstream's or receiver's answer) and `outcome`
//! (`succeeded`, `failed`, `retry`, `canceled`, `delivered`, …); a span whose
//! outcome is not success has the status `ERROR`. Events logged inside a
//! span (at the levels the layer's filter lets through) are its span events.
//! A trace whose `traceparent` is not sampled (flags `00`) is not exported.
//!
//! A batch ([`batch`](crate::batch)) is one upstream call for several jobs,
//! each of its own trace. Every member has its own `job` span, from its
//! claim to its result; the call's `traceparent` names the span of the
//! batch's first member (the one whose request the call is made of), and
//! that span and each other member's are linked both ways (span links), so
//! the model server's spans are found from every member's trace.
//!
//! Other spans are ignored: only those with the `trace_id` and `span_id`
//! fields are exported.
//!
//! # Configuration
//!
//! The standard variables, read by [`OtlpConfig::from_env`]:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_SDK_DISABLED` | `true`: export nothing | `false` |
//! | `OTEL_TRACES_EXPORTER` | `otlp`, or `none` to export nothing | `otlp` once an endpoint is set |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector; `/v1/traces` is appended for `http/protobuf` | unset: no export |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the traces URL, used as written | |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` | `http/protobuf` or `grpc` | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` | `key=value,…`, percent-encoded | |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` | ms per export | 10000 |
//! | `OTEL_SERVICE_NAME` | `service.name` | the program's name |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `key=value,…` resource attributes | |
//! | `OTEL_BSP_SCHEDULE_DELAY` | ms between exports | 5000 |
//! | `OTEL_BSP_MAX_QUEUE_SIZE` | spans waiting at most; more are dropped | 2048 |
//! | `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | spans per export at most | 512 |
//!
//! With only `OTEL_TRACES_EXPORTER=otlp`, spans go to
//! `http://localhost:4318/v1/traces` (`grpc`: `http://localhost:4317`).
//! `https://` needs the `tls` feature.
//!
//! # Cost and failure
//!
//! A span is encoded and sent by the exporter task, never on the request
//! path: the layer only copies the span's fields at its close and queues
//! it without waiting. A full queue drops the span; a failed export drops
//! its batch; both are counted ([`OtlpHandle::dropped_spans`], and the
//! `tower_defer_otlp_spans_dropped_total` and
//! `tower_defer_otlp_export_failures_total` counters with the `metrics`
//! feature), and failures are logged at most once a minute. Without the
//! feature, none of this is compiled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

mod config;
mod export;
mod proto;

pub use config::{ConfigError, OtlpConfig, Protocol};

use export::{Counts, Exporter, Message};
use proto::{EventData, Kind, Link, SpanData, Status, Value};

/// The most events kept per span; more are counted out.
const MAX_EVENTS: usize = 32;

/// The [`tracing_subscriber::Layer`] that exports each job's spans over OTLP.
/// See the [module docs](self) for what it sends and how it is configured.
#[derive(Clone)]
pub struct OtlpLayer {
    queue: mpsc::Sender<Message>,
    counts: Arc<Counts>,
}

/// Flushes an [`OtlpLayer`]'s exporter and reads its counts.
#[derive(Clone)]
pub struct OtlpHandle {
    queue: mpsc::Sender<Message>,
    counts: Arc<Counts>,
}

/// The exporter task of an [`OtlpLayer`], as a future to spawn (see
/// [`OtlpLayer::pair`]). It ends when the layer and every handle are dropped.
#[must_use = "the exporter sends nothing unless it is polled (spawn it)"]
pub struct OtlpExporter {
    fut: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Future for OtlpExporter {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        self.fut.as_mut().poll(cx)
    }
}

impl fmt::Debug for OtlpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpLayer").finish_non_exhaustive()
    }
}

impl fmt::Debug for OtlpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHandle").finish_non_exhaustive()
    }
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter").finish_non_exhaustive()
    }
}

impl OtlpLayer {
    /// The layer and its handle, with the exporter spawned on the current
    /// tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; use [`pair`](Self::pair) to run the
    /// exporter yourself.
    pub fn new(config: OtlpConfig) -> (OtlpLayer, OtlpHandle) {
        let (layer, handle, exporter) = Self::pair(config);
        tokio::spawn(exporter);
        (layer, handle)
    }

    /// The layer, its handle and the exporter future, for the caller to run
    /// on the executor of its choice (a tokio runtime: it uses tokio's
    /// timers and sockets).
    pub fn pair(config: OtlpConfig) -> (OtlpLayer, OtlpHandle, OtlpExporter) {
        let (tx, rx) = mpsc::channel(config.max_queue);
        let counts = Arc::new(Counts::default());
        let exporter = Exporter {
            queue: rx,
            client: export::Client::new(&config),
            config,
            counts: counts.clone(),
        };
        (
            OtlpLayer {
                queue: tx.clone(),
                counts: counts.clone(),
            },
            OtlpHandle { queue: tx, counts },
            OtlpExporter {
                fut: Box::pin(exporter.run()),
            },
        )
    }
}

impl OtlpHandle {
    /// Sends every span queued so far, and resolves once that export is
    /// done (sent, or failed and counted). Call it at shutdown.
    pub async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = sent.await;
        }
    }

    /// Spans dropped so far: the queue was full, or their export failed.
    pub fn dropped_spans(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted so far.
    pub fn exported_spans(&self) -> u64 {
        self.counts.exported.load(Ordering::Relaxed)
    }

    /// Exports that failed so far.
    pub fn failed_exports(&self) -> u64 {
        self.counts.failed_exports.load(Ordering::Relaxed)
    }
}

/// A span of a job's trace while it is open, in the registry's extensions.
struct Pending {
    name: &'static str,
    start: u64,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    parent: Option<[u8; 8]>,
    sampled: bool,
    /// `otel.status_code`: `OK` or `ERROR` (the message is the `outcome`).
    status: Option<bool>,
    attributes: Vec<(String, Value)>,
    events: Vec<EventData>,
    links: Vec<Link>,
}

impl Visit for Pending {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = hex(value),
            "span_id" => self.span_id = hex(value),
            "parent_span_id" => self.parent = hex(value),
            "otel.status_code" => self.status = Some(value != "ERROR"),
            name => set(&mut self.attributes, name, Value::Str(value.to_owned())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        match field.name() {
            "sampled" => self.sampled = value,
            name => set(&mut self.attributes, name, Value::Bool(value)),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        set(&mut self.attributes, field.name(), Value::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        set(&mut self.attributes, field.name(), Value::Int(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        set(&mut self.attributes, field.name(), Value::Double(value));
    }
}

/// Sets `name` to `value`, replacing an earlier value (a field recorded twice).
fn set(attributes: &mut Vec<(String, Value)>, name: &str, value: Value) {
    match attributes.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v = value,
        None => attributes.push((name.to_owned(), value)),
    }
}

/// An event's fields: its message as the name, the rest as attributes.
#[derive(Default)]
struct EventFields {
    name: String,
    attributes: Vec<(String, Value)>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.name = value.to_owned(),
            name => set(&mut self.attributes, name, Value::Str(value.to_owned())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        set(&mut self.attributes, field.name(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        set(&mut self.attributes, field.name(), Value::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        set(&mut self.attributes, field.name(), Value::Int(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        set(&mut self.attributes, field.name(), Value::Double(value));
    }
}

/// Lowercase hex to an id; `None` for anything else (an empty parent).
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out).filter(|id| *id != [0; N])
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kind_of(name: &str) -> Kind {
    match name {
        // The submission answers a client; an attempt and a delivery call out.
        "submit" => Kind::Server,
        "job" | "webhook" => Kind::Client,
        _ => Kind::Internal,
    }
}

impl<S> tracing_subscriber::Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let fields = attrs.metadata().fields();
        if fields.field("trace_id").is_none() || fields.field("span_id").is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut pending = Pending {
            name: attrs.metadata().name(),
            start: now_nanos(),
            trace_id: None,
            span_id: None,
            parent: None,
            sampled: true,
            status: None,
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
        };
        attrs.record(&mut pending);
        span.extensions_mut().insert(pending);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(pending) = extensions.get_mut::<Pending>() {
            values.record(pending);
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let (Some(span), Some(follows)) = (ctx.span(id), ctx.span(follows)) else {
            return;
        };
        let followed = follows.extensions();
        let link = match followed.get::<Pending>() {
            Some(Pending {
                trace_id: Some(trace_id),
                span_id: Some(span_id),
                ..
            }) => Link {
                trace_id: *trace_id,
                span_id: *span_id,
                trace_flags: 0x01,
            },
            _ => return,
        };
        drop(followed);
        let mut extensions = span.extensions_mut();
        if let Some(pending) = extensions.get_mut::<Pending>() {
            pending.links.push(link);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(pending) = extensions.get_mut::<Pending>() else {
            return;
        };
        if pending.events.len() >= MAX_EVENTS {
            return;
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let level = event.metadata().level().as_str();
        fields
            .attributes
            .push(("level".into(), Value::Str(level.to_owned())));
        pending.events.push(EventData {
            time_unix_nano: now_nanos(),
            name: fields.name,
            attributes: fields.attributes,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(pending) = span.extensions_mut().remove::<Pending>() else {
            return;
        };
        drop(span);
        let (Some(trace_id), Some(span_id)) = (pending.trace_id, pending.span_id) else {
            // A span whose ids were never recorded (the store refused the job).
            return;
        };
        if !pending.sampled {
            return;
        }
        let status = match pending.status {
            None => Status::Unset,
            Some(true) => Status::Ok,
            Some(false) => {
                let outcome = pending.attributes.iter().find(|(k, _)| k == "outcome");
                Status::Error(match outcome {
                    Some((_, Value::Str(s))) => s.clone(),
                    _ => String::new(),
                })
            }
        };
        let data = SpanData {
            trace_id,
            span_id,
            parent_span_id: pending.parent,
            trace_flags: 0x01,
            name: pending.name,
            kind: kind_of(pending.name),
            start_unix_nano: pending.start,
            end_unix_nano: now_nanos().max(pending.start),
            attributes: pending.attributes,
            events: pending.events,
            links: pending.links,
            status,
        };
        if self.queue.try_send(Message::Span(Box::new(data))).is_err() {
            self.counts.drop_spans(1);
        }
    }
}
