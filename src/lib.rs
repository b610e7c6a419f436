//! Give any synchronous HTTP service the asynchronous request API that hosted
//! inference platforms sell: submit a request and get an id at once, then poll
//! its status and fetch its output, or cancel it.
//!
//! `tower-defer` is a tower [`Layer`](tower_layer::Layer): wrap an axum
//! `Router`, a hyper service or a reverse-proxy client in one line. Requests to
//! the async routes (under `/async` by default) are answered by the layer;
//! every other request passes through untouched. Background workers replay
//! queued requests against the same inner service, in process.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use tower::{Layer, ServiceExt};
//! use tower_defer::{Body, DeferLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // The "model": any service taking `Request<tower_defer::Body>`.
//! let model = tower::service_fn(|_req: Request<Body>| async {
//!     Ok::<_, Infallible>(Response::new(Body::from(r#"{"text":"Hello!"}"#)))
//! });
//! let app = DeferLayer::new(MemoryStore::new()).layer(model);
//!
//! // Submit: 201 and an id at once.
//! let submit = Request::post("/async")
//!     .body(Body::from(r#"{"data": {"question": "How are you?"}}"#))
//!     .unwrap();
//! let created = app.clone().oneshot(submit).await.unwrap();
//! assert_eq!(created.status(), 201);
//! let location = created.headers()["location"].to_str().unwrap().to_owned();
//!
//! // Long-poll the status until the job has run.
//! let poll = Request::get(&location).header("prefer", "wait=5").body(Body::empty()).unwrap();
//! let status = app.clone().oneshot(poll).await.unwrap();
//! assert_eq!(status.status(), 200);
//!
//! // Fetch the output, VESSL-style.
//! let output = Request::get(format!("{location}/output")).body(Body::empty()).unwrap();
//! let output = app.clone().oneshot(output).await.unwrap();
//! let doc = output.into_body().collect().await.unwrap().to_bytes();
//! let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
//! assert_eq!(doc["status"], "completed");
//! assert_eq!(doc["output"]["text"], "Hello!");
//! # }
//! ```
//!
//! # Tracing
//!
//! Each job is one W3C trace, whichever process runs it. The submission's
//! `traceparent` is kept and stored with the job's request headers; without
//! one (or with a malformed one, never answered with a `4xx`) the job's trace
//! is derived from its id, the same on every replica, and nothing is stored.
//! Every attempt and every webhook delivery sends a `traceparent`
//! with the job's trace id and a span id of its own, so the upstream can tell
//! attempts apart. The `tracing` spans `submit`, `job` (one per attempt) and
//! `webhook` carry the same ids in the fields `job_id`, `trace_id`, `span_id`
//! and `parent_span_id`: the logs of one job join up on them, across
//! replicas too. An attempt's span is not the child of the submission's
//! in-process, as that would keep state per queued job alive. With the
//! `otlp` feature, `otlp::OtlpLayer` exports these spans over OTLP with
//! exactly those ids, so Jaeger or Tempo show each job as one trace.
//!
//! # Layout
//!
//! The arrows run one way, from the face down to the ground (`.ci/layers`
//! checks it):
//!
//! - `layer.rs` / `service.rs` / `future.rs` / `body.rs`: the face.
//!   [`DeferLayer`] builds [`Defer`], whose [`ResponseFuture`] and
//!   [`ResponseBody`] are either the inner service's or the layer's own answer.
//! - `api/`: the front doors, which only translate HTTP to store operations,
//!   from their own context (`api::Doors`: the store, their settings, this
//!   process's activity record, Baseten's polling limiter).
//! - `worker/`: the pool that claims jobs and calls the inner service, from
//!   its own context (`context::Pool`). It knows no dialect.
//! - `webhook` (feature `webhooks`): signed delivery of each job's end, on a
//!   loop beside the worker pool; each format's body and signature live here.
//! - `activity.rs`: what this process saw happen (jobs ended, queue waits,
//!   run times, recent ids), counted in memory and handed to the store every
//!   few seconds for the live page; below the doors and the pool, above
//!   the store.
//! - `context.rs`: the settings the doors and the pool each read, below both;
//!   `shutdown.rs`: how the pool and the webhook loop are told to stop.
//! - [`store`]: the [`Store`] contract every store implements atomically, and
//!   [`MemoryStore`], the default. It knows jobs and time, nothing else.
//! - [`job`]: what a job is, and its state machine (pure methods on [`Job`]).
//! - `policy.rs`: classification, backoff and header rules as pure functions.
//! - `upstream` (feature `proxy`): `Upstream`, the forwarding client of the
//!   reverse proxy.
//! - `server` (feature `server`): `Server`, which serves any tower
//!   service with a header-read timeout, an idle timeout and a connection
//!   cap; it knows connections, nothing of jobs.
//! - [`scaling`]: the autoscaling signals (backlog per slot, backlog
//!   without capacity), from the store's statistics and the pool's view of
//!   the upstream.
//! - `trace.rs`: W3C trace context, one trace per job from submission
//!   through each attempt (see [Tracing](#tracing)).
//! - `otlp` (feature `otlp`): a `tracing` layer that exports the spans of
//!   each job's trace over OTLP, with the ids its `traceparent` headers carry.
//! - `tls.rs` (feature `tls`): the rustls connector of https upstreams and
//!   https webhook receivers, built in one place.
//! - [`time`]: wall-clock timestamps that follow tokio's (pausable) clock.

// Here rather than in Cargo.toml's [lints], which also reach tests, examples
// and benches, where every item is unreachable and undocumented by design.
#![deny(unreachable_pub)]
#![warn(missing_docs)]

mod activity;
mod api;
pub mod batch;
mod body;
mod context;
mod error;
mod future;
pub mod job;
mod layer;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
mod policy;
mod random;
pub mod scaling;
#[cfg(feature = "server")]
pub mod server;
mod service;
mod shutdown;
pub mod store;
pub mod time;
#[cfg(all(
    feature = "tls",
    any(feature = "proxy", feature = "webhooks", feature = "otlp")
))]
mod tls;
mod trace;
#[cfg(feature = "proxy")]
pub mod upstream;
#[cfg(feature = "webhooks")]
pub mod webhook;
#[cfg(not(feature = "webhooks"))]
mod webhook;
mod worker;

pub use api::{Baseten, JobRef};
pub use body::{Body, ResponseBody};
pub use future::ResponseFuture;
pub use job::{Job, JobId, JobStatus};
pub use layer::DeferLayer;
pub use service::Defer;
pub use store::{MemoryStore, Store};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "webhooks")]
pub use webhook::Webhooks;
pub use worker::{DeferHandle, InnerService, Worker};

/// Internal parsers exposed for the fuzz targets in `fuzz/` (feature
/// `fuzzing`). Unstable and not part of the API: no semver promise at all.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::api::fuzz::*;
}

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
