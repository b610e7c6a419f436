//! The job operations every front door shares: submit, look up (owner-scoped),
//! and the answers they give when the store says no.

use std::sync::Arc;

use tracing::Instrument;

use super::Doors;
use crate::error::Problem;
use crate::job::{Job, JobId, JobOptions, NewJob};
use crate::store::{Enqueued, Store};
use crate::trace::{self, Submission, TraceContext};

use super::{enqueue_refused, store_unavailable};

/// "no job …", echoing a bounded, printable part of what was asked for.
pub(crate) fn no_job(id: &str) -> String {
    let shown: String = id.chars().take(32).filter(|c| !c.is_control()).collect();
    format!("no job {shown:?}")
}

/// The job, if it exists and `owner` may see it; 404 otherwise.
pub(crate) async fn lookup<St: Store>(
    doors: &Doors<St>,
    id: JobId,
    owner: Option<&str>,
) -> Result<Job, Problem> {
    match doors.store.get(id).await {
        Ok(Some(job)) if job.is_visible_to(owner) => Ok(job),
        Ok(_) => Err(Problem::not_found(no_job(id.as_str()))),
        Err(e) => Err(store_unavailable(&e)),
    }
}

/// Prebuilt: a name given as text is parsed on every lookup.
const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The options every submission starts from: the layer's defaults, the
/// owner, and the `Idempotency-Key`.
pub(crate) fn base_options<St>(
    doors: &Doors<St>,
    parts: &http::request::Parts,
) -> Result<JobOptions, Problem> {
    let mut options = doors.config.defaults.clone();
    options.owner = doors.config.owner_of(parts);
    if let Some(key) = parts.headers.get(IDEMPOTENCY_KEY) {
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        options.idempotency_key = Some(Arc::from(key));
    }
    Ok(options)
}

/// Enqueues, answering 429 / 422 / 503 when the store refuses. The job is
/// stored with the trace context of its submission (see `trace.rs`), read
/// from its own headers or else from those of the `submitted` request,
/// inside a `submit` span that names the job and its trace.
pub(crate) async fn enqueue<St: Store>(
    doors: &Doors<St>,
    mut job: NewJob,
    submitted: &http::HeaderMap,
) -> Result<Enqueued, Problem> {
    let trace = Submission::stamp(&mut job.request.headers, submitted);
    if let Some(route) = crate::batch::route_for(&doors.config.batches, &job.request) {
        job.options.batch = route.tag(&job.request);
    }
    // The ids are recorded once the store has named the job: a trace may be
    // derived from its id (see `trace.rs`).
    let span = tracing::info_span!(
        "submit",
        job_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = trace::parent_span_id(trace.parent.as_ref()),
    );
    let enqueued = doors
        .store
        .enqueue(job, doors.config.max_queue)
        .instrument(span.clone())
        .await
        .map_err(|e| enqueue_refused(&e))?;
    let _entered = span.enter();
    let job = &enqueued.job;
    if !span.is_disabled() {
        let context = if enqueued.created {
            trace.context(job.id)
        } else {
            // The idempotency key named a job submitted before, with its own trace.
            TraceContext::of_stored(&job.request.headers, job.id)
        };
        span.record("job_id", tracing::field::display(job.id));
        span.record("trace_id", tracing::field::display(context.trace_id()));
        span.record("span_id", tracing::field::display(context.span_id()));
    }
    if enqueued.created {
        doors.recent.push(job.id, job.options.owner.clone());
        crate::metrics::submitted();
        tracing::info!("job submitted");
    }
    Ok(enqueued)
}
