//! What the layer counts, through the `metrics` facade (feature `metrics`).
//!
//! The library only emits; an application installs an exporter (the proxy
//! serves Prometheus text at `/metrics`). Without the feature every function
//! here compiles to nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_defer_jobs_submitted_total` | counter | |
//! | `tower_defer_jobs_finished_total` | counter | `status` (an `expired` job, and a `failed` one its workers abandoned, is counted by the process whose sweep reported it) |
//! | `tower_defer_retries_total` | counter | `reason` (`unavailable`, `attempt`, `shutdown`) |
//! | `tower_defer_inner_responses_total` | counter | `status_code` |
//! | `tower_defer_webhook_deliveries_total` | counter | `result` (`succeeded`, `retrying`, `failed`), per attempt |
//! | `tower_defer_queue_wait_seconds` | histogram | |
//! | `tower_defer_execution_seconds` | histogram | |
//! | `tower_defer_batch_size` | histogram | jobs per call of a batching route |
//! | `tower_defer_in_flight` | gauge | |
//! | `tower_defer_queue_depth` | gauge | `priority` (set by [`record_queue_stats`]) |
//! | `tower_defer_in_progress` | gauge | (set by [`record_queue_stats`]) |
//! | `tower_defer_retrying` | gauge | (set by [`record_queue_stats`]) |
//! | `tower_defer_backlog_per_slot` | gauge | queued jobs per call slot (set by [`record_scaling`]) |
//! | `tower_defer_backlog_without_capacity` | gauge | 0 or 1 (set by [`record_scaling`]; see [`scaling`](crate::scaling)) |
//! | `tower_defer_otlp_spans_dropped_total` | counter | spans not exported: the queue was full, or their export failed (feature `otlp`) |
//! | `tower_defer_otlp_export_failures_total` | counter | (feature `otlp`) |
//! | `tower_defer_connections_open` | gauge | (feature `server`) |
//! | `tower_defer_connections_rejected_total` | counter | over the connection cap (feature `server`) |
//! | `tower_defer_connections_timed_out_total` | counter | `timeout` (`header_read`, `idle`) (feature `server`) |
//!
//! The counters, gauges and histogram a job passes through are registered
//! with the recorder once, at the first use, and their handles kept: a
//! `counter!` looks its key up in the recorder's registry on every call,
//! which on the job's path cost as much as the status document. So install
//! the recorder (`metrics::set_global_recorder`, or an exporter's
//! `install_recorder`) before the layer serves its first request; the
//! proxy program does.

use crate::job::JobStatus;
use crate::scaling::Signals;
use crate::store::QueueStats;

/// The handles of the metrics a job passes through, registered once.
#[cfg(feature = "metrics")]
mod handles {
    use std::sync::OnceLock;

    use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    use crate::job::JobStatus;

    /// The status codes a handle is kept for: every code an HTTP response
    /// may carry (100 to 599); any other is looked up on each call.
    pub(super) const CODES: std::ops::RangeInclusive<u16> = 100..=599;

    pub(super) struct Handles {
        pub(super) submitted: Counter,
        finished: [Counter; 6],
        pub(super) queue_wait: Histogram,
        pub(super) execution: Histogram,
        pub(super) in_flight: Gauge,
        pub(super) batch_size: Histogram,
        /// By status code less 100; each registered at its code's first use,
        /// so `/metrics` lists only the codes seen.
        inner_responses: Vec<OnceLock<Counter>>,
    }

    impl Handles {
        pub(super) fn finished(&self, status: JobStatus) -> &Counter {
            let i = JobStatus::ALL.iter().position(|s| *s == status);
            &self.finished[i.expect("every status is in JobStatus::ALL")]
        }

        pub(super) fn inner_response(&self, code: http::StatusCode) -> Option<&Counter> {
            let code = code.as_u16();
            let slot = self
                .inner_responses
                .get(usize::from(code.checked_sub(*CODES.start())?))?;
            Some(slot.get_or_init(
                || counter!("tower_defer_inner_responses_total", "status_code" => code.to_string()),
            ))
        }
    }

    pub(super) fn get() -> &'static Handles {
        static HANDLES: OnceLock<Handles> = OnceLock::new();
        HANDLES.get_or_init(|| {
            let finished = |status: JobStatus| {
                counter!("tower_defer_jobs_finished_total", "status" => status.as_str())
            };
            Handles {
                submitted: counter!("tower_defer_jobs_submitted_total"),
                finished: JobStatus::ALL.map(finished),
                queue_wait: histogram!("tower_defer_queue_wait_seconds"),
                execution: histogram!("tower_defer_execution_seconds"),
                in_flight: gauge!("tower_defer_in_flight"),
                batch_size: histogram!("tower_defer_batch_size"),
                inner_responses: CODES.map(|_| OnceLock::new()).collect(),
            }
        })
    }
}

/// Spans the OTLP exporter dropped.
#[cfg(feature = "otlp")]
pub(crate) fn otlp_spans_dropped(n: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tower_defer_otlp_spans_dropped_total").increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

/// An OTLP export failed.
#[cfg(feature = "otlp")]
pub(crate) fn otlp_export_failed() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tower_defer_otlp_export_failures_total").increment(1);
}

/// A job was accepted (not a repeated idempotent submission).
pub(crate) fn submitted() {
    #[cfg(feature = "metrics")]
    handles::get().submitted.increment(1);
}

/// A job reached a terminal state through this process.
pub(crate) fn finished(status: JobStatus) {
    #[cfg(feature = "metrics")]
    handles::get().finished(status).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// `n` jobs ended with `status` in the store (expired, or failed as
/// abandoned), as a sweep of this process reported.
pub(crate) fn ended_in_store(status: JobStatus, n: u64) {
    #[cfg(feature = "metrics")]
    handles::get().finished(status).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = (status, n);
}

/// A job went back to the queue.
pub(crate) fn retried(reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tower_defer_retries_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// The inner service answered with this status code.
pub(crate) fn inner_response(status: http::StatusCode) {
    #[cfg(feature = "metrics")]
    match handles::get().inner_response(status) {
        Some(counter) => counter.increment(1),
        None => ::metrics::counter!("tower_defer_inner_responses_total", "status_code" => status.as_str().to_owned())
            .increment(1),
    }
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// A webhook delivery attempt ended: `succeeded`, `retrying` or `failed`
/// (for good).
#[cfg_attr(not(feature = "webhooks"), allow(dead_code))]
pub(crate) fn webhook_delivery(result: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tower_defer_webhook_deliveries_total", "result" => result).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = result;
}

/// An attempt started after the job waited `wait` since it was submitted.
pub(crate) fn started(wait: std::time::Duration) {
    #[cfg(feature = "metrics")]
    {
        let handles = handles::get();
        handles.queue_wait.record(wait.as_secs_f64());
        handles.in_flight.increment(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = wait;
}

/// One call of a batching route carried `jobs` jobs; the others than the
/// first waited `waits` in the queue (the first's wait is recorded by
/// [`started`]).
pub(crate) fn batched(jobs: usize, waits: impl Iterator<Item = std::time::Duration>) {
    #[cfg(feature = "metrics")]
    {
        let handles = handles::get();
        handles.batch_size.record(jobs as f64);
        for wait in waits {
            handles.queue_wait.record(wait.as_secs_f64());
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (jobs, waits);
}

/// An attempt ended after running `took`.
pub(crate) fn ended(took: std::time::Duration) {
    #[cfg(feature = "metrics")]
    {
        let handles = handles::get();
        handles.execution.record(took.as_secs_f64());
        handles.in_flight.decrement(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = took;
}

/// The server accepted a connection.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!("tower_defer_connections_open").increment(1.0);
}

/// A connection the server accepted has ended.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn connection_closed() {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!("tower_defer_connections_open").decrement(1.0);
}

/// The server turned a connection away: it was at its connection cap.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn connection_rejected() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tower_defer_connections_rejected_total").increment(1);
}

/// The server closed a connection that passed a timeout: `header_read` or `idle`.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn connection_timed_out(timeout: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tower_defer_connections_timed_out_total", "timeout" => timeout)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = timeout;
}

/// Sets the queue gauges from the store's statistics; call it before each
/// scrape (the store is shared by every replica, so no one process can keep
/// these up to date by counting).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower_defer::{MemoryStore, Store};
///
/// let store = MemoryStore::new();
/// let stats = store.stats().await.unwrap();
/// tower_defer::metrics::record_queue_stats(&stats);
/// # }
/// ```
pub fn record_queue_stats(stats: &QueueStats) {
    #[cfg(feature = "metrics")]
    {
        for (level, n) in stats.queued_by_priority.iter().enumerate() {
            ::metrics::gauge!("tower_defer_queue_depth", "priority" => level.to_string())
                .set(*n as f64);
        }
        ::metrics::gauge!("tower_defer_in_progress").set(stats.in_progress as f64);
        ::metrics::gauge!("tower_defer_retrying").set(stats.retrying as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = stats;
}

/// Sets the autoscaling gauges, `tower_defer_backlog_per_slot` and
/// `tower_defer_backlog_without_capacity` (0 or 1); call it before each
/// scrape, beside [`record_queue_stats`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::Layer;
/// use tower_defer::{Body, DeferLayer, MemoryStore, Store};
///
/// let inner = tower::service_fn(|_req: http::Request<Body>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
/// });
/// let app = DeferLayer::new(MemoryStore::new()).layer(inner);
/// let stats = app.store().stats().await.unwrap();
/// tower_defer::metrics::record_scaling(&app.scaling().signals(&stats));
/// # }
/// ```
pub fn record_scaling(signals: &Signals) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::gauge!("tower_defer_backlog_per_slot").set(signals.backlog_per_slot);
        ::metrics::gauge!("tower_defer_backlog_without_capacity")
            .set(f64::from(u8::from(signals.backlog_without_capacity)));
    }
    #[cfg(not(feature = "metrics"))]
    let _ = signals;
}
