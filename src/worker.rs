//! The worker pool: claims jobs, replays them against the inner service,
//! classifies the answers and records them.
//!
//! One pool per wrapped service. Up to 16 claimer tasks share a semaphore of
//! `concurrency` permits: each takes a permit, waits until a clone of the
//! inner service is ready (`poll_ready`), claims a job and spawns its call.
//! A job waiting out a backoff sits in the store, not in a worker. A second
//! loop sweeps the store (deadlines, lapsed leases, retries coming due, TTLs).
//! With webhooks configured, a third loop delivers them, with permits of its
//! own (see `webhook`).
//!
//! While a call runs, its task renews the lease and watches the job: when the
//! job is canceled (or another worker took it over) the call's future is
//! dropped, which is how a running inner call is aborted.
//!
//! The worker never knows about dialects: it sees stored requests and
//! responses only.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;
use tracing::Instrument;

use crate::body::Body;
use crate::job::{ErrorCode, JobError, JobStatus, Outcome, Retry, StoredRequest, StoredResponse};
use crate::policy::{self, Verdict};
use crate::service::Shared;
use crate::store::{Claim, Store};
use crate::time::Timestamp;
use crate::trace::{self, TraceContext};
use crate::BoxError;

/// A service the layer can wrap: it takes `Request<`[`Body`]`>`, is `Clone`
/// (each worker calls a clone) and `Send`, and answers with a body of
/// [`Bytes`] chunks. Implemented for every such [`Service`]; nothing to
/// implement by hand.
pub trait InnerService: Clone + Send + 'static {
    /// The response body.
    type ResponseBody: http_body::Body<Data = Bytes, Error = Self::BodyError> + Send + 'static;
    /// The response body's error.
    type BodyError: Into<BoxError>;
    /// The service's error.
    type Error: Into<BoxError>;
    /// The service's future.
    type Future: Future<Output = Result<Response<Self::ResponseBody>, Self::Error>> + Send + 'static;

    /// [`Service::poll_ready`].
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;
    /// [`Service::call`].
    fn call(&mut self, req: Request<Body>) -> Self::Future;
}

impl<S, B> InnerService for S
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
    type BodyError = B::Error;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request<Body>) -> S::Future {
        Service::call(self, req)
    }
}

/// The worker pool of one [`Defer`](crate::Defer) service, as a future that
/// runs until shutdown. [`DeferLayer::layer`](tower_layer::Layer::layer)
/// spawns it; [`DeferLayer::pair`](crate::DeferLayer::pair) hands it to you.
#[must_use = "the worker does nothing unless it is polled (spawn it)"]
pub struct Worker {
    fut: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Future for Worker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.fut.as_mut().poll(cx)
    }
}

/// What the pool is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    /// Stop claiming; in-flight calls get `grace` to finish, then go back to the queue.
    Stop {
        grace: Duration,
    },
}

/// Stops a worker pool gracefully. Get one from [`Defer::handle`](crate::Defer::handle).
///
/// ```
/// use std::time::Duration;
/// use tower::Layer;
/// use tower_defer::{Body, DeferLayer, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = tower::service_fn(|_req: http::Request<Body>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
/// });
/// let app = DeferLayer::new(MemoryStore::new()).layer(inner);
/// let handle = app.handle();
/// // ... serve `app` ...
/// handle.shutdown(Duration::from_secs(10)).await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeferHandle {
    control: Arc<watch::Sender<Control>>,
    done: watch::Receiver<bool>,
}

impl DeferHandle {
    /// Stops claiming jobs, lets in-flight calls finish within `grace`, hands
    /// the ones still running after it back to the queue, and resolves when
    /// the pool has stopped. Queued jobs stay queued in the store.
    pub async fn shutdown(&self, grace: Duration) {
        self.control.send_if_modified(|c| {
            if *c == Control::Run {
                *c = Control::Stop { grace };
                true
            } else {
                false
            }
        });
        let mut done = self.done.clone();
        // An error means the worker was dropped, so it has stopped too.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Builds the pool for `inner`: the worker future, the handle that stops it,
/// and the control sender whose last clone stopping also stops it.
pub(crate) fn pool<S, St>(
    inner: S,
    shared: Arc<Shared<St>>,
) -> (Worker, DeferHandle, Arc<watch::Sender<Control>>)
where
    S: InnerService,
    St: Store,
{
    let (control_tx, control_rx) = watch::channel(Control::Run);
    let (done_tx, done_rx) = watch::channel(false);
    let control = Arc::new(control_tx);
    let handle = DeferHandle {
        control: control.clone(),
        done: done_rx,
    };
    let fut = async move {
        run(inner, shared, control_rx).await;
        let _ = done_tx.send(true);
    };
    (Worker { fut: Box::pin(fut) }, handle, control)
}

/// Resolves with the grace period once the pool is told to stop (or every
/// handle to it is gone, which takes the default grace).
pub(crate) async fn stopped(
    control: &mut watch::Receiver<Control>,
    default_grace: Duration,
) -> Duration {
    match control.wait_for(|c| *c != Control::Run).await {
        Ok(c) => match *c {
            Control::Stop { grace } => grace,
            Control::Run => default_grace,
        },
        Err(_) => default_grace,
    }
}

async fn run<S, St>(inner: S, shared: Arc<Shared<St>>, mut control: watch::Receiver<Control>)
where
    S: InnerService,
    St: Store,
{
    let default_grace = shared.config.shutdown_grace;
    let permits = Arc::new(Semaphore::new(shared.config.concurrency));
    let (hand_back_tx, hand_back) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(sweep_loop(shared.clone(), control.clone()));
    // Webhook deliveries run beside the workers, with permits of their own.
    #[cfg(feature = "webhooks")]
    if let Some(webhooks) = shared.config.webhooks.clone() {
        tasks.spawn(crate::webhook::deliver_loop(
            shared.clone(),
            webhooks,
            control.clone(),
        ));
    }

    // Several claimers, so that a store with a network round trip per claim
    // (Redis) is not one round trip per job behind a single loop. Each starts
    // the calls it claims itself: no hop through a dispatcher per job.
    for _ in 0..shared.config.concurrency.min(MAX_CLAIMERS) {
        tasks.spawn(claimer(
            inner.clone(),
            shared.clone(),
            permits.clone(),
            control.clone(),
            hand_back.clone(),
        ));
    }
    let grace = stopped(&mut control, default_grace).await;

    // Shutdown: the claimers stop claiming and wait for their calls. These get
    // the grace period; after it they are told to hand their jobs back, which
    // they do at once. Queued jobs stay in the store.
    let drain = async { while tasks.join_next().await.is_some() {} };
    tokio::pin!(drain);
    if tokio::time::timeout(grace, &mut drain).await.is_err() {
        let _ = hand_back_tx.send(true);
        drain.await;
    }
}

/// Claims jobs one after another and starts each call, until the pool stops;
/// then waits for its calls to end.
async fn claimer<S, St>(
    inner: S,
    shared: Arc<Shared<St>>,
    permits: Arc<Semaphore>,
    control: watch::Receiver<Control>,
    hand_back: watch::Receiver<bool>,
) where
    S: InnerService,
    St: Store,
{
    let mut calls = JoinSet::new();
    loop {
        while calls.try_join_next().is_some() {}
        let next = next_job(
            inner.clone(),
            shared.clone(),
            permits.clone(),
            control.clone(),
        )
        .await;
        match next {
            Some((svc, claim, permit)) => {
                // Each attempt is a span of the job's trace, stored with the
                // job at submission, with an id of its own that is sent
                // upstream (trace.rs).
                let trace = trace::Call::of(&claim.job.request.headers, claim.job.id);
                let span = trace::job_span!(
                    "job",
                    tracing::field::display(claim.id()),
                    trace.context,
                    Some(&trace.parent),
                    attempt = claim.job.attempts
                );
                let call = run_job(
                    svc,
                    claim,
                    trace.context,
                    shared.clone(),
                    permit,
                    hand_back.clone(),
                );
                // Boxed: the call's future is a few kilobytes, and the task
                // would otherwise copy it whole as it is spawned and run.
                calls.spawn(Box::pin(call).instrument(span));
            }
            // Stopping (or the inner service was not ready: try again).
            None if control.has_changed().is_err() || *control.borrow() != Control::Run => break,
            None => {}
        }
    }
    while calls.join_next().await.is_some() {}
}

/// How many claims one pool makes at once, at most.
const MAX_CLAIMERS: usize = 16;

/// Waits for a worker slot, a ready inner service and a job, in that order:
/// a job is claimed only when it can be started at once. `None` when the
/// pool is stopping, or the service failed to become ready (after a pause, so
/// the caller may try again). A claim in flight is never abandoned: a job the
/// store handed out is always returned.
///
/// Readiness is held only across a claim: when there is no work, the ready
/// clone is dropped while waiting, so an inner service with a concurrency
/// limit keeps its slots for the requests that pass through.
async fn next_job<S, St>(
    inner: S,
    shared: Arc<Shared<St>>,
    permits: Arc<Semaphore>,
    mut control: watch::Receiver<Control>,
) -> Option<(S, Claim, OwnedSemaphorePermit)>
where
    S: InnerService,
    St: Store,
{
    // Biased, the slot and the service first: when both are there at once,
    // as under load, the stop signal is not polled (nor its waiter queued)
    // for every job. A stop is still seen: the control is checked below
    // before each claim.
    let permit = tokio::select! {
        biased;
        permit = permits.acquire_owned() => permit.expect("the pool's semaphore is never closed"),
        _ = stopped(&mut control, Duration::ZERO) => return None,
    };
    loop {
        let mut svc = inner.clone();
        let ready = tokio::select! {
            biased;
            ready = poll_fn(|cx| svc.poll_ready(cx)) => ready.map_err(Into::<BoxError>::into),
            _ = stopped(&mut control, Duration::ZERO) => return None,
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "the inner service is not ready; trying again in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return None;
        }
        if *control.borrow() != Control::Run {
            return None;
        }
        let claimed = shared
            .store
            .claim(shared.config.lease, shared.config.priority_aging)
            .await;
        let wait = match claimed {
            Ok(Some(claim)) => return Some((svc, claim, permit)),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        drop(svc);
        match wait {
            None => {
                let until = Timestamp::now().after(Duration::from_secs(1));
                tokio::select! {
                    _ = stopped(&mut control, Duration::ZERO) => return None,
                    () = shared.store.work_available(until) => {}
                }
            }
            Some(e) => {
                tracing::warn!(error = %e, "claiming a job failed; trying again in 1 s");
                tokio::select! {
                    _ = stopped(&mut control, Duration::ZERO) => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Applies what is due in the store, as it comes due (at least once a second,
/// so that due times added meanwhile are not late by more than that).
async fn sweep_loop<St: Store>(shared: Arc<Shared<St>>, mut control: watch::Receiver<Control>) {
    loop {
        let cap = Timestamp::now().after(Duration::from_secs(1));
        let next = match shared.store.sweep().await {
            Ok(next) => next.map_or(cap, |t| t.min(cap)),
            Err(e) => {
                tracing::warn!(error = %e, "sweeping the store failed");
                cap
            }
        };
        tokio::select! {
            _ = stopped(&mut control, Duration::ZERO) => return,
            _ = tokio::time::sleep_until(next.to_instant()) => {}
        }
    }
}

/// How one inner call ended, before classification.
enum CallEnd {
    Answered(StoredResponse),
    Failed(BoxError),
    BodyFailed(BoxError),
    TooLarge,
    TimedOut,
    LeaseLost,
    HandBack,
}

async fn run_job<S, St>(
    mut svc: S,
    claim: Claim,
    trace: TraceContext,
    shared: Arc<Shared<St>>,
    _permit: OwnedSemaphorePermit,
    mut hand_back: watch::Receiver<bool>,
) where
    S: InnerService,
    St: Store,
{
    let job = &claim.job;
    let max_output = shared.config.max_output;
    let started = tokio::time::Instant::now();
    crate::metrics::started(Timestamp::now().since(job.created_at));
    let call = async {
        let request = to_request(&job.request, &trace);
        let response = svc.call(request).await.map_err(Into::into);
        let response = match response {
            Ok(r) => r,
            Err(e) => return CallEnd::Failed(e),
        };
        collect(response, max_output).await
    };
    // Biased, the call first: an inner service that answers on its first poll
    // finishes before the lease keeper ever starts (no waiter, no timer).
    let end = tokio::select! {
        biased;
        end = tokio::time::timeout(job.options.execution_timeout, call) => end.unwrap_or(CallEnd::TimedOut),
        () = keep_lease(&*shared, &claim) => CallEnd::LeaseLost,
        _ = hand_back.wait_for(|b| *b) => CallEnd::HandBack,
    };
    crate::metrics::ended(started.elapsed());
    record(&shared, &claim, end).await;
}

/// Classifies how the call ended and writes it to the store (fenced by the lease).
async fn record<St: Store>(shared: &Shared<St>, claim: &Claim, end: CallEnd) {
    let job = &claim.job;
    let retry = &job.options.retry;
    let unavailable = job.claims.saturating_sub(u64::from(job.attempts)) as u32;
    let now = Timestamp::now();
    let requeue = |delay: Duration, error: JobError, response, spend_attempt| Retry {
        at: now.after(delay),
        error,
        response,
        spend_attempt,
    };
    let write = match end {
        CallEnd::LeaseLost => {
            tracing::debug!("lease lost (canceled or taken over): inner call dropped");
            return;
        }
        CallEnd::Answered(response) => {
            crate::metrics::inner_response(response.status);
            match policy::classify_response(response.status, &response.headers, retry, job.attempts)
            {
                Verdict::Final => Write::Complete(Outcome::response(response)),
                Verdict::Unavailable { delay } => {
                    let msg = format!(
                        "the upstream answered {} with Retry-After",
                        response.status.as_u16()
                    );
                    Write::Retry(requeue(
                        delay,
                        JobError::new(ErrorCode::UpstreamUnavailable, msg),
                        None,
                        false,
                    ))
                }
                Verdict::RetryAttempt { delay } => {
                    let msg = format!("the upstream answered {}", response.status.as_u16());
                    Write::Retry(requeue(
                        delay,
                        JobError::new(ErrorCode::UpstreamStatus, msg),
                        Some(response),
                        true,
                    ))
                }
            }
        }
        CallEnd::Failed(e) | CallEnd::BodyFailed(e) if policy::is_unavailable(&*e) => {
            let delay = policy::unavailable_backoff(unavailable, jitter());
            let msg = format!("the upstream is unavailable: {}", error_chain(&*e));
            Write::Retry(requeue(
                delay,
                JobError::new(ErrorCode::UpstreamUnavailable, msg),
                None,
                false,
            ))
        }
        CallEnd::Failed(e) => {
            let error = JobError::new(ErrorCode::UpstreamError, error_chain(&*e));
            match policy::classify_error(&*e, retry, job.attempts, unavailable, jitter()) {
                Verdict::RetryAttempt { delay } => Write::Retry(requeue(delay, error, None, true)),
                _ => Write::Complete(Outcome::error(error)),
            }
        }
        CallEnd::BodyFailed(e) => {
            let msg = format!("reading the response body failed: {}", error_chain(&*e));
            Write::Complete(Outcome::error(JobError::new(
                ErrorCode::ResponseBodyError,
                msg,
            )))
        }
        CallEnd::TooLarge => {
            let msg = format!(
                "the response was larger than the {}-byte output limit",
                shared.config.max_output
            );
            Write::Complete(Outcome::error(JobError::new(
                ErrorCode::ResponseTooLarge,
                msg,
            )))
        }
        CallEnd::TimedOut => {
            let msg = format!(
                "the inner call ran longer than its {} s execution timeout",
                job.options.execution_timeout.as_secs_f64()
            );
            Write::Complete(Outcome::error(JobError::new(
                ErrorCode::ExecutionTimeout,
                msg,
            )))
        }
        CallEnd::HandBack => {
            let error = JobError::new(
                ErrorCode::WorkerShutdown,
                "the worker shut down before the call finished; the job will run again",
            );
            Write::Retry(requeue(Duration::ZERO, error, None, false))
        }
    };
    let result = match write {
        // Only the status is needed here: a store may then send less back.
        Write::Complete(outcome) => {
            let store = &shared.store;
            store.complete_status(job.id, claim.token(), outcome).await
        }
        Write::Retry(retry) => {
            let reason = match (retry.spend_attempt, retry.error.code) {
                (true, _) => "attempt",
                (false, ErrorCode::WorkerShutdown) => "shutdown",
                (false, _) => "unavailable",
            };
            crate::metrics::retried(reason);
            let requeued = shared.store.retry_later(job.id, claim.token(), retry).await;
            requeued.map(|job| {
                if job.status == JobStatus::Queued {
                    tracing::debug!(retry_at = ?job.retry_at, "job handed back to the queue");
                }
                job.status
            })
        }
    };
    match result {
        Ok(JobStatus::Queued) => {}
        Ok(status) => {
            crate::metrics::finished(status);
            tracing::info!(%status, "job finished");
        }
        Err(e) if e.is_stale_lease() => {
            tracing::debug!("the job changed meanwhile (canceled or taken over); result dropped")
        }
        Err(e) => tracing::warn!(
            error = %e,
            "recording the job's result failed; its lease will lapse and it will run again"
        ),
    }
}

enum Write {
    Complete(Outcome),
    Retry(Retry),
}

/// Renews the lease every third of its length and watches the job; resolves
/// when the lease is no longer this worker's (canceled, expired, taken over).
async fn keep_lease<St: Store>(shared: &Shared<St>, claim: &Claim) {
    let (store, lease) = (&shared.store, shared.config.lease);
    let (id, token) = (claim.id(), claim.token());
    let mut seen = claim.job.revision;
    let mut renew_at = Timestamp::now().after(lease / 3);
    loop {
        match store.wait(id, seen, renew_at).await {
            Ok(Some(job)) => {
                if job.status != JobStatus::InProgress || job.lease.map(|l| l.token) != Some(token)
                {
                    return;
                }
                seen = job.revision;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "watching the job failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if Timestamp::now() >= renew_at {
            match store.extend(id, token, lease).await {
                Ok(_) => renew_at = Timestamp::now().after(lease / 3),
                Err(e) if e.is_stale_lease() => return,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease failed; trying again");
                    renew_at = Timestamp::now().after(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Rebuilds the stored request for the inner service, with the attempt's
/// `traceparent`.
fn to_request(stored: &StoredRequest, trace: &TraceContext) -> Request<Body> {
    let mut request = Request::new(Body::full(stored.body.clone()));
    *request.method_mut() = stored.method.clone();
    *request.uri_mut() = stored.path_and_query.clone().into();
    // Room for the traceparent up front: a clone of the stored map is full,
    // and adding one header to it would grow and rehash it.
    let headers = request.headers_mut();
    headers.reserve(stored.headers.len() + 1);
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    trace.set_on(headers);
    request
}

/// Reads an inner response, up to `max_output` bytes of body.
async fn collect<B>(response: Response<B>, max_output: usize) -> CallEnd
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    if http_body::Body::size_hint(&body).lower() > max_output as u64 {
        return CallEnd::TooLarge;
    }
    match Limited::new(body, max_output).collect().await {
        Ok(collected) => CallEnd::Answered(StoredResponse {
            status: parts.status,
            headers: policy::response_headers_to_store(&parts.headers),
            body: collected.to_bytes(),
        }),
        Err(e) if e.is::<LengthLimitError>() => CallEnd::TooLarge,
        Err(e) => CallEnd::BodyFailed(e),
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

/// A number in `[0, 1)` for backoff jitter.
fn jitter() -> f64 {
    f64::from(u32::from_le_bytes(crate::random::bytes())) / (f64::from(u32::MAX) + 1.0)
}
