//! The job operations every front door shares: submit, look up (owner-scoped),
//! and the answers they give when the store says no.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
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

/// What an answer of the async API was about: the job the request created
/// or addressed, and that job's trace. The layer puts one in the extensions
/// of each such response, for an access log to read (the proxy's
/// `--access-log` does); a pass-through, or an answer about no job (a `404`,
/// the queue document), has none.
#[derive(Clone, Copy)]
pub struct JobRef {
    id: JobId,
    trace: TraceContext,
}

impl JobRef {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's W3C trace id, 32 lowercase hex digits: the submission's
    /// `traceparent` trace id, or the one derived from the job's id.
    pub fn trace_id(&self) -> impl fmt::Display {
        self.trace.trace_id()
    }
}

impl fmt::Debug for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRef")
            .field("id", &self.id)
            .field("trace_id", &format_args!("{}", self.trace.trace_id()))
            .finish()
    }
}

tokio::task_local! {
    /// The job the answer being made is about. A task-local rather than a
    /// value threaded through every door: the doors reach jobs through
    /// `lookup`, `enqueue` and a cancel, and only these need to say so.
    static ANSWERED: Cell<Option<JobRef>>;
}

/// Notes that the answer being made is about `job`.
pub(crate) fn answering_about(job: &Job) {
    let about = JobRef {
        id: job.id,
        trace: TraceContext::of_stored(&job.request.headers, job.id),
    };
    // Outside `with_job_ref` (a door's unit test) there is nobody to tell.
    let _ = ANSWERED.try_with(|cell| cell.set(Some(about)));
}

/// Runs a door's answer and puts the [`JobRef`] it noted, if any, in the
/// response's extensions.
pub(crate) async fn with_job_ref<F>(answer: F) -> Response<Bytes>
where
    F: Future<Output = Response<Bytes>>,
{
    ANSWERED
        .scope(Cell::new(None), async move {
            let mut response = answer.await;
            if let Some(about) = ANSWERED.with(Cell::take) {
                response.extensions_mut().insert(about);
            }
            response
        })
        .await
}

/// The job, if it exists and `owner` may see it; 404 otherwise.
pub(crate) async fn lookup<St: Store>(
    doors: &Doors<St>,
    id: JobId,
    owner: Option<&str>,
) -> Result<Job, Problem> {
    match doors.store.get(id).await {
        Ok(Some(job)) if job.is_visible_to(owner) => {
            answering_about(&job);
            Ok(job)
        }
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
        sampled = tracing::field::Empty,
    );
    let enqueued = doors
        .store
        .enqueue(job, doors.config.max_queue)
        .instrument(span.clone())
        .await
        .map_err(|e| enqueue_refused(&e))?;
    let _entered = span.enter();
    let job = &enqueued.job;
    answering_about(job);
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
        if enqueued.created {
            trace::note_sampled(&span, &context);
        } else {
            // The first submission's span was exported with these ids: a
            // second span may not carry them too.
            #[cfg(feature = "otlp")]
            span.record("sampled", false);
        }
    }
    if enqueued.created {
        doors.activity.submitted(job.id);
        crate::metrics::submitted();
        tracing::info!("job submitted");
    }
    Ok(enqueued)
}
