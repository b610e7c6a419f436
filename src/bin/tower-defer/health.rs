//! What the proxy answers itself, without a token: `/healthz`, `/readyz` and
//! `/metrics`. [`Front`] serves them and hands everything else on.
//!
//! - `/healthz`: 200 while the process serves.
//! - `/readyz`: 200 when the store answers within 2 s, else 503. The
//!   upstream's state is reported (can a TCP connection be opened?) but not
//!   required: an upstream scaled to zero is normal, jobs wait for it.
//! - `/metrics`: Prometheus text. The library counts through the `metrics`
//!   facade; the queue gauges are read from the store at each scrape
//!   (`tower_defer::metrics::record_queue_stats`), because a shared store's
//!   queue is no single process's to count; so are the scaling gauges
//!   (`record_scaling`), from those statistics and this pool's view of the
//!   upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::PrometheusHandle;
use pin_project::pin_project;
use tower::Service;
use tower_defer::scaling::Scaling;
use tower_defer::store::QueueStats;
use tower_defer::Store;

use crate::auth::ProxyBody;

/// How long a readiness probe waits for the store, and for the upstream.
const STORE_PROBE: Duration = Duration::from_secs(2);
const UPSTREAM_PROBE: Duration = Duration::from_secs(1);

/// What `/readyz` and `/metrics` need. A clone of the store: both stores
/// are handles onto shared state.
pub(crate) struct Ops<St> {
    pub(crate) store: St,
    pub(crate) prometheus: PrometheusHandle,
    /// `host:port` of the upstream, `None` for the built-in demo model.
    pub(crate) upstream: Option<String>,
    /// The pool's scaling signals, set as gauges at each scrape.
    pub(crate) scaling: Scaling,
}

impl<St: Store> Ops<St> {
    /// The queue statistics, or why the store could not give them.
    async fn stats(&self) -> Result<QueueStats, String> {
        match tokio::time::timeout(STORE_PROBE, self.store.stats()).await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", STORE_PROBE.as_secs())),
        }
    }

    async fn ready(&self) -> Response<ProxyBody> {
        let (store, upstream) = tokio::join!(self.stats(), self.probe_upstream());
        let ok = store.is_ok();
        let body = serde_json::json!({
            "status": if ok { "ready" } else { "not ready" },
            "store": match &store {
                Ok(_) => "reachable".to_owned(),
                Err(e) => format!("unreachable: {e}"),
            },
            "upstream": upstream,
        });
        if let Err(e) = &store {
            tracing::warn!(error = %e, "readiness: the store is unreachable");
        }
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        respond(status, "application/json", body.to_string())
    }

    async fn probe_upstream(&self) -> String {
        let Some(addr) = &self.upstream else {
            return "built-in demo model".into();
        };
        match tokio::time::timeout(UPSTREAM_PROBE, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => "reachable".into(),
            Ok(Err(e)) => format!("unreachable (not required): {e}"),
            Err(_) => "unreachable (not required): connect timed out".into(),
        }
    }

    async fn metrics(&self) -> Response<ProxyBody> {
        match self.stats().await {
            Ok(stats) => {
                tower_defer::metrics::record_queue_stats(&stats);
                tower_defer::metrics::record_scaling(&self.scaling.signals(&stats));
                metrics::gauge!("tower_defer_store_up").set(1.0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the queue from the store");
                metrics::gauge!("tower_defer_store_up").set(0.0);
            }
        }
        respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            self.prometheus.render(),
        )
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The outermost service: the operational routes, then `app` (auth, the
/// async API, the upstream).
pub(crate) struct Front<A, St> {
    pub(crate) ops: Arc<Ops<St>>,
    pub(crate) app: A,
}

impl<A: Clone, St> Clone for Front<A, St> {
    fn clone(&self) -> Self {
        Front {
            ops: self.ops.clone(),
            app: self.app.clone(),
        }
    }
}

impl<A, St, B> Service<Request<B>> for Front<A, St>
where
    A: Service<Request<B>, Response = Response<ProxyBody>>,
    A::Future: Send + 'static,
    St: Store,
{
    type Response = Response<ProxyBody>;
    type Error = A::Error;
    type Future = FrontFuture<A::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), A::Error>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let ops = || self.ops.clone();
        match req.uri().path() {
            "/healthz" if get => {
                FrontFuture::Ready(Some(respond(StatusCode::OK, "text/plain", "ok\n".into())))
            }
            "/readyz" if get => {
                let ops = ops();
                FrontFuture::Ops(Box::pin(async move { ops.ready().await }))
            }
            "/metrics" if get => {
                let ops = ops();
                FrontFuture::Ops(Box::pin(async move { ops.metrics().await }))
            }
            _ => FrontFuture::App(self.app.call(req)),
        }
    }
}

/// The future of [`Front`]: an operational answer, or the app's own future
/// as it is (every proxied request takes that way, with no allocation).
#[pin_project(project = FrontProj)]
pub(crate) enum FrontFuture<F> {
    Ready(Option<Response<ProxyBody>>),
    Ops(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
    App(#[pin] F),
}

impl<F, E> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FrontProj::Ready(response) => {
                Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
            FrontProj::Ops(fut) => fut.as_mut().poll(cx).map(Ok),
            FrontProj::App(fut) => fut.poll(cx),
        }
    }
}
