//! [`Upstream`]: an inner service that forwards to an HTTP server, for the
//! reverse proxy (feature `proxy`).
//!
//! Put [`DeferLayer`](crate::DeferLayer) in front of it and a Python, Triton
//! or vLLM server gets the async API without a line of Rust:
//!
//! ```no_run
//! use tower::Layer;
//! use tower_defer::{upstream::Upstream, DeferLayer, MemoryStore};
//!
//! # #[tokio::main] async fn main() {
//! let upstream = Upstream::new("http://127.0.0.1:8000".parse().unwrap()).unwrap();
//! let proxy = DeferLayer::new(MemoryStore::new()).layer(upstream);
//! # let _ = proxy; }
//! ```
//!
//! [`Upstream::builder`] sets the connection: HTTP/2 with prior knowledge
//! (h2c) instead of HTTP/1.1, and a connect timeout. A timeout on the whole
//! request is tower's `Timeout` around it (the proxy example does that).

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use crate::Body;

/// Idle pooled connections are closed after this long: less than common
/// servers' keep-alive (uvicorn closes idle ones after 5 s), so the client
/// never sends on a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// Forwards every request to one upstream HTTP server over pooled
/// connections, keeping method, path, query, headers and a streaming body.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upstream({}://{}{})",
            self.scheme, self.authority, self.base_path
        )
    }
}

/// An upstream URL that cannot be used.
#[derive(Debug)]
pub struct InvalidUpstream(String);

impl fmt::Display for InvalidUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidUpstream {}

/// Builds an [`Upstream`]: get one from [`Upstream::builder`].
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    base: Uri,
    http2: bool,
    connect_timeout: Option<Duration>,
}

impl UpstreamBuilder {
    /// Speaks HTTP/2 with prior knowledge (h2c: no upgrade, no TLS) instead of
    /// HTTP/1.1 (default `false`). Many calls then share one connection.
    pub fn http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.http2 = yes;
        self
    }

    /// Gives up on a connection attempt after `d` (default: the OS's own).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// The upstream, or why its URL cannot be used.
    pub fn build(self) -> Result<Upstream, InvalidUpstream> {
        Upstream::with(self)
    }
}

impl Upstream {
    /// Forwards to `base` (`http://host:port`, optionally with a base path that
    /// every request path is appended to), over HTTP/1.1.
    pub fn new(base: Uri) -> Result<Self, InvalidUpstream> {
        Upstream::builder(base).build()
    }

    /// A builder for an upstream at `base`, to set how it connects.
    pub fn builder(base: Uri) -> UpstreamBuilder {
        UpstreamBuilder {
            base,
            http2: false,
            connect_timeout: None,
        }
    }

    fn with(settings: UpstreamBuilder) -> Result<Self, InvalidUpstream> {
        let base = settings.base;
        let scheme = base.scheme().cloned().ok_or_else(|| {
            InvalidUpstream(format!(
                "the upstream {base} has no scheme: write http://host:port"
            ))
        })?;
        if scheme != Scheme::HTTP {
            return Err(InvalidUpstream(format!(
                "the upstream scheme {scheme} is not supported: only http"
            )));
        }
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| InvalidUpstream(format!("the upstream {base} has no host")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(settings.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .http2_only(settings.http2)
            .build(connector);
        Ok(Upstream {
            client,
            scheme,
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
        })
    }

    fn target(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let pq = path_and_query.map_or("/", PathAndQuery::as_str);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = format!("{}{}", self.base_path, pq).parse().ok();
        Uri::from_parts(parts).unwrap_or_default()
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        *req.uri_mut() = self.target(req.uri().path_and_query());
        // The client sets Host from the upstream's address, and this hop is
        // a connection of our own.
        req.headers_mut().remove(http::header::HOST);
        crate::policy::strip_connection_headers(req.headers_mut());
        self.client.request(req)
    }
}
