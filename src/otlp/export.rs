//! The batch exporter: a task that takes finished spans from a bounded
//! queue and sends them in batches, over OTLP/HTTP or gRPC.
//!
//! The layer never waits for it: a span that finds the queue full is dropped
//! and counted. A batch is sent when it reaches `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
//! spans or every `OTEL_BSP_SCHEDULE_DELAY`, whichever comes first, one
//! export at a time, each within `OTEL_EXPORTER_OTLP_TIMEOUT`. A failed
//! export is not retried (the next batch is already filling): its spans
//! are counted as dropped, and the failure is logged at most once a minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{mpsc, oneshot};

use super::config::{OtlpConfig, Protocol};
use super::proto::{self, SpanData, Value};
use crate::BoxError;

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;

/// What the layer and the handle send the exporter task.
pub(crate) enum Message {
    Span(Box<SpanData>),
    /// Send what is queued now; answer when it is sent (or failed).
    Flush(oneshot::Sender<()>),
}

/// Counts shared by the layer, the task and the handle.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) dropped: AtomicU64,
    pub(crate) exported: AtomicU64,
    pub(crate) failed_exports: AtomicU64,
}

impl Counts {
    pub(crate) fn drop_spans(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        crate::metrics::otlp_spans_dropped(n);
    }
}

/// The exporter's side of the queue, and how it sends.
pub(crate) struct Exporter {
    pub(crate) queue: mpsc::Receiver<Message>,
    pub(crate) client: Client,
    pub(crate) config: OtlpConfig,
    pub(crate) counts: Arc<Counts>,
}

impl Exporter {
    /// Runs until every sender (the layer and its handles) is gone, sending
    /// the last batch then.
    pub(crate) async fn run(mut self) {
        let resource: Vec<(String, Value)> = self
            .config
            .resource
            .iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect();
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.config.max_batch);
        let mut last_complaint: Option<tokio::time::Instant> = None;
        let mut silenced = 0u64;
        let mut tick = tokio::time::interval(self.config.schedule_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let mut flushed = None;
            let closed = tokio::select! {
                message = self.queue.recv() => match message {
                    Some(Message::Span(span)) => {
                        batch.push(*span);
                        if batch.len() < self.config.max_batch {
                            continue;
                        }
                        false
                    }
                    Some(Message::Flush(done)) => {
                        flushed = Some(done);
                        false
                    }
                    None => true,
                },
                _ = tick.tick() => false,
            };
            // A flush takes whatever is queued behind it too.
            if flushed.is_some() || closed {
                while let Ok(Message::Span(span)) = self.queue.try_recv() {
                    batch.push(*span);
                }
            }
            for chunk in batch.chunks(self.config.max_batch) {
                let body = proto::export_request(&resource, SCOPE, chunk);
                match self.client.export(&self.config, body).await {
                    Ok(()) => {
                        self.counts
                            .exported
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.counts.failed_exports.fetch_add(1, Ordering::Relaxed);
                        self.counts.drop_spans(chunk.len() as u64);
                        crate::metrics::otlp_export_failed();
                        let now = tokio::time::Instant::now();
                        if last_complaint.is_none_or(|t| now - t >= COMPLAINT_EVERY) {
                            tracing::warn!(
                                error = %crate::error::error_chain(&*e),
                                endpoint = %self.config.endpoint,
                                spans = chunk.len(),
                                failures_not_logged = silenced,
                                "exporting spans failed; they are dropped"
                            );
                            last_complaint = Some(now);
                            silenced = 0;
                        } else {
                            silenced += 1;
                        }
                    }
                }
            }
            batch.clear();
            if let Some(done) = flushed {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }
}

/// The instrumentation scope of every span.
const SCOPE: (&str, &str) = ("tower-defer", env!("CARGO_PKG_VERSION"));

/// A failed export is logged at most this often.
const COMPLAINT_EVERY: Duration = Duration::from_secs(60);

/// A pooled client to the collector.
pub(crate) struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

impl Client {
    pub(crate) fn new(config: &OtlpConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let grpc = config.protocol == Protocol::Grpc;
        #[cfg(feature = "tls")]
        let connector = {
            let alpn = if grpc {
                crate::tls::Alpn::Http2
            } else {
                crate::tls::Alpn::Http1
            };
            crate::tls::connector(http, &[], alpn)
        };
        #[cfg(not(feature = "tls"))]
        let connector = http;
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            // gRPC is HTTP/2 only: prior knowledge on http://, ALPN on https://.
            .http2_only(grpc)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Client { inner }
    }

    async fn export(&self, config: &OtlpConfig, message: Vec<u8>) -> Result<(), BoxError> {
        let grpc = config.protocol == Protocol::Grpc;
        let body = if grpc {
            // gRPC's framing: not compressed (0), then the length, big-endian.
            let mut framed = BytesMut::with_capacity(message.len() + 5);
            framed.put_u8(0);
            framed.put_u32(u32::try_from(message.len())?);
            framed.put_slice(&message);
            framed.freeze()
        } else {
            Bytes::from(message)
        };
        let mut request = Request::post(config.endpoint.clone()).body(Full::new(body))?;
        let headers = request.headers_mut();
        for (name, value) in &config.headers {
            headers.append(name.clone(), value.clone());
        }
        if grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
        }
        let sent = async {
            let response = self.inner.request(request).await?;
            let status = response.status();
            let head = response.headers().clone();
            let collected = response.into_body().collect().await?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(format!("the collector answered {status}: {text}").into());
            }
            if grpc {
                // Trailers, or headers alone for a call that failed at once.
                let grpc_status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .or_else(|| head.get("grpc-status"));
                match grpc_status.map(HeaderValue::as_bytes) {
                    Some(b"0") => {}
                    Some(code) => {
                        let message = trailers
                            .as_ref()
                            .and_then(|t| t.get("grpc-message"))
                            .or_else(|| head.get("grpc-message"))
                            .and_then(|m| m.to_str().ok())
                            .unwrap_or("");
                        return Err(format!(
                            "the collector answered grpc-status {}: {message}",
                            String::from_utf8_lossy(code)
                        )
                        .into());
                    }
                    None => return Err("the collector's answer has no grpc-status".into()),
                }
                // The answer is framed too; its content (partial success) is not read.
                let mut body = body;
                if body.remaining() >= 5 && body.get_u8() != 0 {
                    return Err("the collector's answer is compressed".into());
                }
            }
            Ok::<(), BoxError>(())
        };
        match tokio::time::timeout(config.timeout, sent).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", config.timeout).into()),
        }
    }
}
