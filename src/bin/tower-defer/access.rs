//! The access log (`--access-log`): one line per request the proxy answers
//! through the async API or passes through, as a `tracing` event with the
//! target `tower_defer::access` (so `--log-format json` makes it a JSON
//! object, and `RUST_LOG=tower_defer::access=off` silences it).
//!
//! Fields: `method`, `path` (without the query, which may carry secrets),
//! `status`, `duration_ms` (until the response head: a streamed body is not
//! waited for), `job_id` when the answer created or addressed a job (the
//! layer's [`JobRef`] says which), and `trace_id`: that job's trace, else the
//! trace of the request's own `traceparent`, if it sent a valid one. A
//! request that got no response (the upstream could not be reached on a
//! pass-through) is logged with `error` in place of `status`.
//!
//! It sits inside the operational routes (`/healthz`, `/readyz`,
//! `/metrics`), so probes and scrapes do not flood it, and outside auth, so
//! refused tokens are logged.
//!
//! Written by hand rather than with tower-http's `TraceLayer`: that one
//! builds a span per request and hands its response callback neither the
//! method nor the path, so the line wanted here would still be ours to
//! write, after a new dependency.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use pin_project::pin_project;
use tower::{Layer, Service};
use tower_defer::JobRef;

/// Wraps a service in [`AccessLog`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// Logs one line per request it passes to `inner`.
#[derive(Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: fmt::Display,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AccessFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request = Seen {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            trace_id: req
                .headers()
                .get("traceparent")
                .and_then(|v| trace_id(v.as_bytes())),
            start: Instant::now(),
        };
        AccessFuture {
            inner: self.inner.call(req),
            request: Some(request),
        }
    }
}

/// What the line needs from the request.
struct Seen {
    method: Method,
    path: String,
    trace_id: Option<String>,
    start: Instant,
}

#[pin_project]
pub(crate) struct AccessFuture<F> {
    #[pin]
    inner: F,
    request: Option<Seen>,
}

impl<F, RB, E> Future for AccessFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: fmt::Display,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(seen) = this.request.take() else {
            return Poll::Ready(result);
        };
        let duration_ms = (seen.start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let method = seen.method.as_str();
        let path = seen.path.as_str();
        match &result {
            Ok(response) => {
                let job = response.extensions().get::<JobRef>();
                let trace_id = match job {
                    Some(job) => Some(job.trace_id().to_string()),
                    None => seen.trace_id,
                };
                tracing::info!(
                    target: "tower_defer::access",
                    method,
                    path,
                    status = response.status().as_u16(),
                    duration_ms,
                    job_id = job.map(|j| tracing::field::display(j.id())),
                    trace_id,
                    "request"
                );
            }
            Err(e) => tracing::info!(
                target: "tower_defer::access",
                method,
                path,
                error = %e,
                duration_ms,
                trace_id = seen.trace_id,
                "request"
            ),
        }
        Poll::Ready(result)
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if
/// it is well formed and not all zeros. A request with a malformed one is
/// logged without a trace id, as the layer treats it as absent.
fn trace_id(traceparent: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(traceparent).ok()?;
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    ok.then(|| trace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn a_trace_id_is_read_only_from_a_well_formed_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let good = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(good.as_bytes()).as_deref(), Some(id));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id(bad.as_bytes()), None, "{bad}");
        }
    }
}
