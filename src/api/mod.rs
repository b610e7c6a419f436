//! Front doors: HTTP in, job operations on the store, HTTP out.
//!
//! Each dialect is a module that only translates; none of them touches a
//! store's internals, and the worker knows none of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::context::DoorConfig;
use crate::error::Problem;
use crate::store::{EnqueueError, Store, StoreError};
use crate::BoxError;

mod baseten;
mod bifrost;
mod context;
mod document;
mod envelope;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod jobs;
mod live;
mod native;
mod openapi;
mod options;
mod prefer;
mod vessl;

pub use baseten::Baseten;
pub(crate) use context::Doors;
pub use jobs::JobRef;
pub(crate) use prefer::{Prefer, PREFER};

/// The layer's own answer to a request routed to the API.
pub(crate) type ApiFuture = Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>;

/// A request body the front doors can read: chunks of [`Bytes`], any error
/// that boxes, sendable. Implemented for every such body.
pub(crate) trait RequestBody:
    http_body::Body<Data = Bytes, Error = Self::BodyError> + Send + 'static
{
    type BodyError: Into<BoxError>;
}

impl<B> RequestBody for B
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type BodyError = B::Error;
}

/// Where a request goes.
pub(crate) enum Route {
    /// Not ours: to the inner service, untouched.
    PassThrough,
    /// A native route under the prefix.
    Native(native::Endpoint),
    /// Any other route with `Prefer: respond-async`: becomes a job.
    PreferAsync(Prefer),
    /// The Bifrost dialect under `/v1/async`.
    Bifrost(bifrost::Endpoint),
    /// The Baseten dialect.
    Baseten(baseten::Endpoint),
}

/// Decides from the request head alone, so a pass-through costs a prefix
/// comparison and, only when a `Prefer` header is present, reading it.
pub(crate) fn route<St, B>(doors: &Doors<St>, req: &Request<B>) -> Route {
    let config = &doors.config;
    if let Some(endpoint) = native::endpoint(&config.prefix, req.method(), req.uri().path()) {
        return Route::Native(endpoint);
    }
    if config.bifrost {
        if let Some(endpoint) = bifrost::endpoint(req.method(), req.uri().path()) {
            return Route::Bifrost(endpoint);
        }
    }
    if doors.baseten.is_some() {
        if let Some(endpoint) = baseten::endpoint(req.method(), req.uri().path()) {
            return Route::Baseten(endpoint);
        }
    }
    if req.headers().contains_key(PREFER) {
        let prefer = Prefer::from_headers(req.headers());
        if prefer.respond_async {
            return Route::PreferAsync(prefer);
        }
    }
    Route::PassThrough
}

/// Answers a request routed to the API, as a boxed future of that route's
/// own: one future type for every route would be as large as the largest
/// (a long-poll's, some kilobytes), and would be moved whole into its box and
/// at each await on the way down, for every submission.
pub(crate) fn handle<St, B>(doors: Arc<Doors<St>>, route: Route, req: Request<B>) -> ApiFuture
where
    St: Store,
    B: RequestBody,
{
    match route {
        Route::Native(native::Endpoint::Submit) => answer(async move {
            let (parts, body) = req.into_parts();
            native::submit_envelope(&doors, &parts, body)
                .await
                .unwrap_or_else(Problem::into_response)
        }),
        Route::Native(endpoint) => answer(async move {
            native::handle(&doors, endpoint, req)
                .await
                .unwrap_or_else(Problem::into_response)
        }),
        Route::PreferAsync(prefer) => answer(async move {
            native::submit_prefer(&doors, prefer, req)
                .await
                .unwrap_or_else(Problem::into_response)
        }),
        // Bifrost answers in its own error shape.
        Route::Bifrost(endpoint) => {
            answer(async move { bifrost::handle(&doors, endpoint, req).await })
        }
        Route::Baseten(endpoint) => answer(async move {
            let Some(state) = &doors.baseten else {
                unreachable!("Baseten routes are matched only when the dialect is on")
            };
            baseten::handle(&doors, state, endpoint, req)
                .await
                .unwrap_or_else(Problem::into_response)
        }),
        Route::PassThrough => unreachable!("pass-through requests never reach the API"),
    }
}

/// A door's answer, boxed, with the [`JobRef`] of the job it is about in
/// its extensions.
fn answer<F>(answer: F) -> ApiFuture
where
    F: Future<Output = Response<Bytes>> + Send + 'static,
{
    Box::pin(jobs::with_job_ref(answer))
}

/// How much of an oversized body is read and dropped before the `413` is
/// sent. A server that answers and closes with the body unread makes the
/// kernel reset the connection, and a reset can discard the answer before
/// the client reads it; a client that sends a body without
/// `Expect: 100-continue` would see a reset instead of the `413`. Past this
/// bound the answer is sent at once (and may be lost to that reset).
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Reads a request body of at most `max_body` bytes, within `body_timeout`:
/// a client that trickles its body cannot hold a request open for ever.
/// An oversized body is read to its end (up to [`DRAIN_LIMIT`], within the
/// same timeout) and dropped, so that the client sees the `413`.
pub(crate) async fn read_body<B>(
    config: &DoorConfig,
    headers: &HeaderMap,
    body: B,
) -> Result<Bytes, Problem>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limit = config.max_body;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut read = std::pin::pin!(read_limited(body, limit, declared));
    // A small body has usually arrived with its headers: the timer (an entry
    // in tokio's timer wheel, set and cleared) is only armed for one that
    // has not.
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let read = match first {
        Poll::Ready(read) => Ok(read),
        Poll::Pending => tokio::time::timeout(config.body_timeout, read).await,
    };
    match read {
        Ok(Read::Body(bytes)) => Ok(bytes),
        Ok(Read::TooLarge) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the {limit}-byte limit"),
        )),
        Ok(Read::Failed(e)) => Err(Problem::bad_request(
            "body_unreadable",
            format!("the request body could not be read: {e}"),
        )),
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                config.body_timeout.as_secs_f64()
            ),
        )),
    }
}

/// How reading a body ended.
enum Read {
    Body(Bytes),
    TooLarge,
    Failed(BoxError),
}

/// Collects `body` if it holds at most `limit` bytes; otherwise reads on to
/// its end, dropping what arrives, unless it is (or is declared) larger than
/// [`DRAIN_LIMIT`].
async fn read_limited<B>(body: B, limit: usize, declared: Option<u64>) -> Read
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = declared.is_some_and(|len| len > limit as u64);
    if too_large && declared.is_some_and(|len| len > DRAIN_LIMIT) {
        return Read::TooLarge;
    }
    let mut body = std::pin::pin!(body);
    if !too_large {
        match Limited::new(body.as_mut(), limit).collect().await {
            Ok(collected) => return Read::Body(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => {}
            Err(e) => return Read::Failed(e),
        }
    }
    // Over the limit: drain what follows, so the answer is not lost to a reset.
    let mut drained = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                if drained > DRAIN_LIMIT {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Read::TooLarge
}

/// A JSON answer.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Bytes> {
    // Room for a status document at once: `to_vec` starts at 128 bytes and
    // grows (a copy each time) for every answer longer than that.
    let mut body = Vec::with_capacity(512);
    // Serializing our own documents cannot fail: they hold strings and numbers only.
    if serde_json::to_writer(&mut body, value).is_err() {
        body.clear();
    }
    json_body(status, Bytes::from(body))
}

/// A JSON answer whose body is already written.
pub(crate) fn json_body(status: StatusCode, body: Bytes) -> Response<Bytes> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn store_unavailable(e: &StoreError) -> Problem {
    tracing::warn!(error = %e, "the job store is unavailable");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the job store is unavailable; try again shortly",
    )
    .retry_after(1)
}

pub(crate) fn enqueue_refused(e: &EnqueueError) -> Problem {
    match e {
        EnqueueError::QueueFull { limit } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("the queue is full ({limit} jobs); try again later"),
        )
        .retry_after(5),
        EnqueueError::IdempotencyConflict { existing } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_conflict",
            format!(
                "the Idempotency-Key was already used for a different request (job {existing})"
            ),
        ),
        EnqueueError::Store(e) => store_unavailable(e),
    }
}
