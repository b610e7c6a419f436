//! One job's call: replay the stored request, watch the lease, classify the
//! answer and record it.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::Instrument;

use super::InnerService;
use crate::batch::Batch;
use crate::body::Body;
use crate::context::Pool;
use crate::error::error_chain;
use crate::job::{
    ErrorCode, JobError, JobId, JobStatus, Outcome, Retry, StoredRequest, StoredResponse,
};
use crate::policy::{self, Verdict};
use crate::shutdown::Control;
use crate::store::{Claim, Store, StoreError};
use crate::time::Timestamp;
use crate::trace::{self, TraceContext};
use crate::BoxError;

/// How one inner call ended, before classification.
enum CallEnd {
    Answered(StoredResponse),
    Failed(BoxError),
    BodyFailed(BoxError),
    TooLarge,
    TimedOut,
    LeaseLost,
    HandBack,
    /// The inner service failed to become ready after the jobs were
    /// claimed (a batch's gather): nothing was sent.
    NotReady(String),
}

/// How soon jobs claimed for a service that then was not ready run again:
/// the claimers also pause this long when it is not ready before a claim.
const NOT_READY_RETRY: Duration = Duration::from_secs(1);

/// What a call needs to claim its worker's next job with its result
/// ([`Store::complete_and_claim`]): the inner service, a clone of which
/// must be ready before a job is claimed, and the pool's control, as a job
/// is claimed only while the pool runs.
pub(super) struct Chain<S> {
    pub(super) inner: S,
    pub(super) control: watch::Receiver<Control>,
}

impl<S: InnerService> Chain<S> {
    /// A clone of the inner service that is ready now, while the pool runs
    /// and keeps its jobs; `None` otherwise (the result is then recorded
    /// alone, and the claimers claim as usual).
    fn ready_now(&self, hand_back: &watch::Receiver<bool>) -> Option<S> {
        let running = self.control.has_changed().is_ok() && *self.control.borrow() == Control::Run;
        if !running || *hand_back.borrow() {
            return None;
        }
        let mut svc = self.inner.clone();
        let mut cx = Context::from_waker(Waker::noop());
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Some(svc),
            _ => None,
        }
    }
}

/// A claimed job with its attempt: the span of its own trace that the
/// attempt is (see `trace.rs`), open from the claim until the result is
/// recorded, even while it waits in a batch another job heads.
pub(super) struct Member {
    pub(super) claim: Claim,
    pub(super) trace: TraceContext,
    pub(super) span: tracing::Span,
}

impl Member {
    /// The claim, with a new attempt span (a child of its submission).
    pub(super) fn new(claim: Claim) -> Self {
        let call = trace::Call::of(&claim.job.request.headers, claim.job.id);
        let span = trace::job_span!(
            "job",
            tracing::field::display(claim.id()),
            call.context,
            Some(&call.parent),
            attempt = claim.job.attempts
        );
        Member {
            claim,
            trace: call.context,
            span,
        }
    }
}

/// A member's attempt, apart from its claim.
struct Attempt {
    trace: TraceContext,
    span: tracing::Span,
}

/// The job a call claimed for its worker with its result, to start at
/// once: a ready clone of the inner service, the claim and the worker slot
/// it keeps.
pub(super) type Next<S> = (S, Claim, OwnedSemaphorePermit);

/// Runs one job alone and records how it ended; with `chain`, when the job
/// completes, claims the worker's next job in the same store call and
/// hands it back with the slot.
pub(super) async fn run_job<S, St>(
    svc: S,
    claim: Claim,
    trace: TraceContext,
    pool: Arc<Pool<St>>,
    permit: OwnedSemaphorePermit,
    mut hand_back: watch::Receiver<bool>,
    chain: Option<Chain<S>>,
) -> Option<Next<S>>
where
    S: InnerService,
    St: Store,
{
    started(&pool, Timestamp::now().since(claim.job.created_at));
    let request = to_request(&claim.job.request, &trace);
    let claims = std::slice::from_ref(&claim);
    let end = call(svc, request, &pool, claims, &mut hand_back).await;
    let w = verdict(&pool, &claim, &end, None).await?;
    let outcome = match w {
        Write::Complete(outcome) => outcome,
        w => {
            write(&pool, &claim, w).await;
            return None;
        }
    };
    let Some(svc) = chain.and_then(|c| c.ready_now(&hand_back)) else {
        write(&pool, &claim, Write::Complete(outcome)).await;
        return None;
    };
    let (lease, aging) = (pool.config.lease, pool.config.priority_aging);
    let done = pool
        .store
        .complete_and_claim(claim.id(), claim.token(), outcome, lease, aging)
        .await;
    report(&pool, claim.id(), done.status);
    match done.next {
        Ok(next) => next.map(|next| (svc, next, permit)),
        Err(e) => {
            tracing::warn!(error = %e, "claiming a job failed");
            None
        }
    }
}

/// Runs the jobs of one batch (`claims`, the first the one whose request
/// the call is made of) as one call, and records each member's part of the
/// answer under its own lease. A 4xx answer (other than one asking to wait)
/// runs each member again alone, at once and within the same attempt, so
/// that one bad input fails only its own job.
///
/// Each member's attempt is its own span ([`Member`]); the call's
/// `traceparent` names the head's, and the head's span and each other
/// member's are linked both ways (`follows_from`, OTLP span links).
pub(super) async fn run_batch<S, St>(
    inner: S,
    members: Vec<Member>,
    route: &Batch,
    pool: Arc<Pool<St>>,
    mut hand_back: watch::Receiver<bool>,
) where
    S: InnerService,
    St: Store,
{
    let (claims, attempts): (Vec<Claim>, Vec<Attempt>) = members
        .into_iter()
        .map(|m| {
            (
                m.claim,
                Attempt {
                    trace: m.trace,
                    span: m.span,
                },
            )
        })
        .unzip();
    let Some(head) = claims.first() else { return };
    let trace = attempts[0].trace;
    let size = claims.len();
    let bodies: Vec<&[u8]> = claims.iter().map(|c| &c.job.request.body[..]).collect();
    let (body, shapes) = match route.merge(&bodies) {
        Ok(merged) if size > 1 => merged,
        // One member, or bodies that no longer merge (a route changed
        // since they were tagged): each runs alone.
        _ => {
            if size == 1 {
                crate::metrics::batched(1, std::iter::empty());
            }
            return run_alone(inner, claims, attempts, &pool, hand_back).await;
        }
    };
    let head_span = &attempts[0].span;
    for other in &attempts[1..] {
        other.span.follows_from(head_span);
        head_span.follows_from(&other.span);
    }
    let now = Timestamp::now();
    started(&pool, now.since(head.job.created_at));
    crate::metrics::batched(
        size,
        claims[1..].iter().map(|c| now.since(c.job.created_at)),
    );
    for claim in &claims[1..] {
        pool.activity.waited(now.since(claim.job.created_at));
    }
    let mut request = to_request(&head.job.request, &trace);
    *request.body_mut() = Body::full(body);
    let svc = match ready(inner.clone()).await {
        Ok(svc) => svc,
        Err(end) => {
            for (claim, attempt) in claims.iter().zip(&attempts) {
                let record = record(&pool, claim, &end, None);
                record.instrument(attempt.span.clone()).await;
            }
            return;
        }
    };
    let end = call(svc, request, &pool, &claims, &mut hand_back).await;
    let took = Timestamp::now().since(now);
    ended(&pool, took);
    let size_u32 = u32::try_from(size).unwrap_or(u32::MAX);
    match end {
        CallEnd::Answered(response) if response.status.is_success() => {
            match route.split(&response.body, &shapes) {
                Ok(parts) => {
                    let mut headers = response.headers.clone();
                    headers.remove(http::header::CONTENT_LENGTH);
                    for ((claim, attempt), body) in claims.iter().zip(&attempts).zip(parts) {
                        let mine = StoredResponse {
                            status: response.status,
                            headers: headers.clone(),
                            body,
                        };
                        let end = CallEnd::Answered(mine);
                        let record = record(&pool, claim, &end, Some(size_u32));
                        record.instrument(attempt.span.clone()).await;
                    }
                }
                Err(e) => {
                    crate::metrics::inner_response(response.status);
                    let msg =
                        format!("the batch's answer does not split into its {size} jobs: {e}");
                    for (claim, attempt) in claims.iter().zip(&attempts) {
                        let outcome =
                            Outcome::error(JobError::new(ErrorCode::BatchMismatch, msg.clone()))
                                .with_batch_size(size_u32);
                        let write = write(&pool, claim, Write::Complete(outcome));
                        write.instrument(attempt.span.clone()).await;
                    }
                }
            }
        }
        CallEnd::Answered(response)
            if response.status.is_client_error()
                && matches!(
                    policy::classify_response(
                        response.status,
                        &response.headers,
                        &head.job.options.retry,
                        head.job.attempts,
                        Timestamp::now(),
                    ),
                    Verdict::Final
                ) =>
        {
            crate::metrics::inner_response(response.status);
            tracing::debug!(status = %response.status, size, "batch refused: its jobs run alone");
            run_alone(inner, claims, attempts, &pool, hand_back).await;
        }
        end => {
            for (claim, attempt) in claims.iter().zip(&attempts) {
                let record = record(&pool, claim, &end, Some(size_u32));
                record.instrument(attempt.span.clone()).await;
            }
        }
    }
}

/// Runs each of `claims` alone, one after another, under its own lease and
/// in its own attempt's span and trace, recording a batch size of 1.
async fn run_alone<S, St>(
    inner: S,
    claims: Vec<Claim>,
    attempts: Vec<Attempt>,
    pool: &Pool<St>,
    mut hand_back: watch::Receiver<bool>,
) where
    S: InnerService,
    St: Store,
{
    for (i, (claim, attempt)) in claims.iter().zip(&attempts).enumerate() {
        let svc = match ready(inner.clone()).await {
            Ok(svc) => svc,
            Err(end) => {
                for (claim, attempt) in claims[i..].iter().zip(&attempts[i..]) {
                    let record = record(pool, claim, &end, None);
                    record.instrument(attempt.span.clone()).await;
                }
                return;
            }
        };
        let alone = async {
            started(pool, Timestamp::now().since(claim.job.created_at));
            let request = to_request(&claim.job.request, &attempt.trace);
            let claims = std::slice::from_ref(claim);
            let end = call(svc, request, pool, claims, &mut hand_back).await;
            record(pool, claim, &end, Some(1)).await;
        };
        alone.instrument(attempt.span.clone()).await;
    }
}

/// A clone of the inner service once it is ready; if it failed to become
/// ready, the end to record for the jobs that were to be sent.
async fn ready<S: InnerService>(mut svc: S) -> Result<S, CallEnd> {
    match std::future::poll_fn(|cx| svc.poll_ready(cx)).await {
        Ok(()) => Ok(svc),
        Err(e) => {
            let e: BoxError = e.into();
            tracing::warn!(error = %e, "the inner service is not ready; its jobs will run again");
            Err(CallEnd::NotReady(crate::error::error_chain(&*e)))
        }
    }
}

/// Makes one inner call for `claims` (one job, or a batch), keeping their
/// leases; the call is dropped when every lease is lost, or the pool hands
/// its jobs back.
async fn call<S, St>(
    mut svc: S,
    request: Request<Body>,
    pool: &Pool<St>,
    claims: &[Claim],
    hand_back: &mut watch::Receiver<bool>,
) -> CallEnd
where
    S: InnerService,
    St: Store,
{
    let max_output = pool.config.max_output;
    let timeout = claims
        .iter()
        .map(|c| c.job.options.execution_timeout)
        .min()
        .unwrap_or_default();
    let started = tokio::time::Instant::now();
    let call = async {
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
        end = tokio::time::timeout(timeout, call) => end.unwrap_or(CallEnd::TimedOut),
        () = keep_leases(pool, claims) => CallEnd::LeaseLost,
        _ = hand_back.wait_for(|b| *b) => CallEnd::HandBack,
    };
    if claims.len() == 1 {
        ended(pool, started.elapsed());
    }
    end
}

/// Keeps every claim's lease; resolves when all of them are lost (a batch
/// runs on while any member still holds its job).
async fn keep_leases<St: Store>(pool: &Pool<St>, claims: &[Claim]) {
    if let [claim] = claims {
        return keep_lease(pool, claim).await;
    }
    let mut keepers: Vec<_> = claims
        .iter()
        .map(|c| Some(Box::pin(keep_lease(pool, c))))
        .collect();
    std::future::poll_fn(|cx| {
        for keeper in keepers.iter_mut() {
            if let Some(fut) = keeper {
                if fut.as_mut().poll(cx).is_ready() {
                    *keeper = None;
                }
            }
        }
        if keepers.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Classifies how the call ended and writes it to the store (fenced by the
/// lease), with the size of the batch it ran in, if any.
async fn record<St: Store>(pool: &Pool<St>, claim: &Claim, end: &CallEnd, batch: Option<u32>) {
    if let Some(w) = verdict(pool, claim, end, batch).await {
        write(pool, claim, w).await;
    }
}

/// Classifies how the call ended: what to write to the store, with the
/// size of the batch it ran in, if any; `None` when the lease was lost.
async fn verdict<St: Store>(
    pool: &Pool<St>,
    claim: &Claim,
    end: &CallEnd,
    batch: Option<u32>,
) -> Option<Write> {
    let job = &claim.job;
    let retry = &job.options.retry;
    // Claims that spent no attempt and were no lapse: the upstream's refusals
    // (and shutdowns), which set how long it backs off.
    let unavailable =
        job.claims
            .saturating_sub(u64::from(job.attempts) + u64::from(job.lapses)) as u32;
    let now = Timestamp::now();
    let requeue = |delay: Duration, error: JobError, response, spend_attempt| Retry {
        at: now.after(delay),
        error,
        response,
        spend_attempt,
    };
    let w = match end {
        CallEnd::LeaseLost => {
            tracing::debug!("lease lost (canceled or taken over): inner call dropped");
            trace::note_outcome("lease lost", false);
            return None;
        }
        CallEnd::Answered(response) => {
            let response = response.clone();
            trace::note_status_code(response.status.as_u16());
            crate::metrics::inner_response(response.status);
            // It answered: if it was seen unavailable, the backlog need not
            // sleep out its backoffs.
            pool.answered().await;
            match policy::classify_response(
                response.status,
                &response.headers,
                retry,
                job.attempts,
                now,
            ) {
                Verdict::Final => Write::Complete(sized(Outcome::response(response), batch)),
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
        CallEnd::Failed(e) if policy::is_unavailable(&**e) => {
            pool.saw_unavailable();
            let delay = policy::unavailable_backoff(unavailable, jitter());
            let msg = format!("the upstream is unavailable: {}", error_chain(&**e));
            Write::Retry(requeue(
                delay,
                JobError::new(ErrorCode::UpstreamUnavailable, msg),
                None,
                false,
            ))
        }
        // Connected, then cut (reset, closed) before an answer: the model may
        // have run it, so an attempt is spent.
        CallEnd::Failed(e) => {
            let error = JobError::new(ErrorCode::UpstreamError, error_chain(&**e));
            match policy::classify_error(&**e, retry, job.attempts, unavailable, jitter()) {
                Verdict::RetryAttempt { delay } => Write::Retry(requeue(delay, error, None, true)),
                _ => Write::Complete(sized(Outcome::error(error), batch)),
            }
        }
        // Cut mid-body: it answered, so the model ran; the attempt is spent
        // and retried like any call cut after it was sent.
        CallEnd::BodyFailed(e) => {
            let msg = format!("reading the response body failed: {}", error_chain(&**e));
            let error = JobError::new(ErrorCode::ResponseBodyError, msg);
            match policy::classify_error(&**e, retry, job.attempts, unavailable, jitter()) {
                Verdict::RetryAttempt { delay } => Write::Retry(requeue(delay, error, None, true)),
                _ => Write::Complete(sized(Outcome::error(error), batch)),
            }
        }
        CallEnd::TooLarge => {
            let msg = format!(
                "the response was larger than the {}-byte output limit",
                pool.config.max_output
            );
            Write::Complete(sized(
                Outcome::error(JobError::new(ErrorCode::ResponseTooLarge, msg)),
                batch,
            ))
        }
        CallEnd::TimedOut => {
            let msg = format!(
                "the inner call ran longer than its {} s execution timeout",
                job.options.execution_timeout.as_secs_f64()
            );
            Write::Complete(sized(
                Outcome::error(JobError::new(ErrorCode::ExecutionTimeout, msg)),
                batch,
            ))
        }
        CallEnd::NotReady(detail) => {
            // Nothing was sent: no attempt is spent, and it is no lapse
            // either (that would count towards `abandoned`); try again soon.
            let error = JobError::new(
                ErrorCode::UpstreamUnavailable,
                format!("the inner service was not ready ({detail}); the job will run again"),
            );
            Write::Retry(requeue(NOT_READY_RETRY, error, None, false))
        }
        CallEnd::HandBack => {
            let error = JobError::new(
                ErrorCode::WorkerShutdown,
                "the worker shut down before the call finished; the job will run again",
            );
            Write::Retry(requeue(Duration::ZERO, error, None, false))
        }
    };
    Some(w)
}

/// An outcome with the size of the batch it came from, if any.
fn sized(outcome: Outcome, batch: Option<u32>) -> Outcome {
    match batch {
        Some(n) => outcome.with_batch_size(n),
        None => outcome,
    }
}

/// Writes how an attempt ended to the store, fenced by the claim's lease.
async fn write<St: Store>(pool: &Pool<St>, claim: &Claim, write: Write) {
    let job = &claim.job;
    let result = match write {
        // Only the status is needed here: a store may then send less back.
        Write::Complete(outcome) => {
            let store = &pool.store;
            store.complete_status(job.id, claim.token(), outcome).await
        }
        Write::Retry(retry) => {
            let reason = match (retry.spend_attempt, retry.error.code) {
                (true, _) => "attempt",
                (false, ErrorCode::WorkerShutdown) => "shutdown",
                (false, _) => "unavailable",
            };
            crate::metrics::retried(reason);
            let requeued = pool.store.retry_later(job.id, claim.token(), retry).await;
            requeued.map(|job| {
                if job.status == JobStatus::Queued {
                    tracing::debug!(retry_at = ?job.retry_at, "job handed back to the queue");
                }
                job.status
            })
        }
    };
    report(pool, job.id, result);
}

/// An attempt of a job that waited `wait` since it was submitted starts.
fn started<St>(pool: &Pool<St>, wait: Duration) {
    crate::metrics::started(wait);
    pool.activity.waited(wait);
}

/// An inner call ran for `took`: counted in the metrics and for the live page.
fn ended<St>(pool: &Pool<St>, took: Duration) {
    crate::metrics::ended(took);
    pool.activity.ran(took);
}

/// Reports how writing an attempt's end went.
fn report<St>(pool: &Pool<St>, id: JobId, result: Result<JobStatus, StoreError>) {
    match result {
        Ok(JobStatus::Queued) => trace::note_outcome("retry", false),
        Ok(status) => {
            crate::metrics::finished(status);
            trace::note_outcome(status.as_str(), status == JobStatus::Succeeded);
            pool.activity.finished(id, status);
            tracing::info!(%status, "job finished");
        }
        Err(e) if e.is_stale_lease() => {
            trace::note_outcome("superseded", false);
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
async fn keep_lease<St: Store>(pool: &Pool<St>, claim: &Claim) {
    let (store, lease) = (&pool.store, pool.config.lease);
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
///
/// The body and the kept header values are copied into one buffer of their
/// own: as received they are slices of the connection's read buffer (a
/// client's is 8 KiB and more), which the stored result would otherwise
/// keep alive for as long as the job is kept, and which the connection
/// must then allocate anew for its next response.
async fn collect<B>(response: Response<B>, max_output: usize) -> CallEnd
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let declared = http_body::Body::size_hint(&body).lower();
    if declared > max_output as u64 {
        return CallEnd::TooLarge;
    }
    let headers = policy::response_headers_to_store(&parts.headers);
    let values: usize = headers.values().map(|v| v.len()).sum();
    let mut buf = BytesMut::with_capacity(declared as usize + values);
    let mut body = std::pin::pin!(Limited::new(body, max_output));
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Err(e) if e.is::<LengthLimitError>() => return CallEnd::TooLarge,
            Err(e) => return CallEnd::BodyFailed(e),
        }
    }
    let (headers, body) = own(headers, buf);
    CallEnd::Answered(StoredResponse {
        status: parts.status,
        headers,
        body,
    })
}

/// The body in `buf`, and `headers` with their values moved beside it into
/// the same allocation.
fn own(headers: HeaderMap, mut buf: BytesMut) -> (HeaderMap, Bytes) {
    let body_len = buf.len();
    for value in headers.values() {
        buf.extend_from_slice(value.as_bytes());
    }
    let all = buf.freeze();
    let mut owned = HeaderMap::with_capacity(headers.len());
    let mut at = body_len;
    for (name, value) in &headers {
        let end = at + value.len();
        // The bytes were a valid value a moment ago, so this never fails;
        // should it, the received value is kept as it was.
        let mut copy =
            HeaderValue::from_maybe_shared(all.slice(at..end)).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
        at = end;
    }
    (owned, all.slice(..body_len))
}

/// A number in `[0, 1)` for backoff jitter.
fn jitter() -> f64 {
    f64::from(u32::from_le_bytes(crate::random::bytes())) / (f64::from(u32::MAX) + 1.0)
}
