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
//!
//! # https
//!
//! With the feature `tls`, the upstream may be `https://`: rustls on the ring
//! provider, trusting Mozilla's roots (compiled in) plus any given to
//! [`UpstreamBuilder::add_root_certificate`], for a private CA or a
//! self-signed model server. HTTP/2 and HTTP/1.1 are both offered by ALPN and
//! the server picks. A certificate the client does not trust fails the
//! attempt with an error that says so (code `upstream_error` on the job),
//! like any other error once connected: the job is tried again per its
//! retry policy, then fails. Without the feature, an `https` upstream is
//! refused by [`UpstreamBuilder::build`].
//!
//! # Which failures spend an attempt
//!
//! A connection never made (refused, the connect timeout, a name that does
//! not resolve: hyper-util's connect errors, less a TLS handshake the
//! upstream failed) spends none: the request was never sent. A connection
//! reset or closed after the request went out, or mid-body, spends one, as
//! the model may have run it. A pooled connection the upstream closed while
//! idle spends none: idle connections are let go before common servers'
//! keep-alive ends, and hyper-util's client sends a request again on a new
//! connection when a pooled one turns out closed before the request was
//! written.

use std::fmt;
use std::sync::Arc;
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

/// Plain TCP for `http://`; with the feature `tls`, wrapped in TLS for `https://`.
#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;

/// Idle pooled connections are closed after this long: less than common
/// servers' keep-alive (uvicorn closes idle ones after 5 s), so the client
/// never sends on a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// Forwards every request to one upstream HTTP server over pooled
/// connections, keeping method, path, query, headers and a streaming body.
#[derive(Clone)]
pub struct Upstream {
    // Shared: the service is cloned for every call (the worker, tower's
    // Timeout, each pass-through), and a client's own clone copies its
    // whole configuration.
    shared: Arc<Shared>,
}

struct Shared {
    client: Client<Connector, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upstream({}://{}{})",
            self.shared.scheme, self.shared.authority, self.shared.base_path
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
    /// PEM texts, parsed and checked by `build`, which can say what is wrong.
    #[cfg(feature = "tls")]
    root_pems: Vec<Vec<u8>>,
}

impl UpstreamBuilder {
    /// Speaks HTTP/2 with prior knowledge (h2c: no upgrade, no TLS) instead of
    /// HTTP/1.1 (default `false`). Many calls then share one connection.
    ///
    /// To an `https` upstream, which picks its version by ALPN anyway, it
    /// offers `h2` alone, so a server that cannot speak HTTP/2 is refused at
    /// the handshake rather than spoken to in HTTP/1.1.
    pub fn http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.http2 = yes;
        self
    }

    /// Trusts the certificates in `pem` as roots for an `https` upstream,
    /// beside Mozilla's: the upstream's private CA, or its self-signed
    /// certificate. Repeatable. [`build`](Self::build) refuses text that
    /// holds no certificate, or one that cannot be a root.
    #[cfg(feature = "tls")]
    pub fn add_root_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_pems.push(pem.as_ref().to_vec());
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
    /// Forwards to `base` (`http://host:port`, or `https://` with the feature
    /// `tls`, optionally with a base path that every request path is appended
    /// to), over HTTP/1.1 (or, over TLS, what ALPN settles).
    pub fn new(base: Uri) -> Result<Self, InvalidUpstream> {
        Upstream::builder(base).build()
    }

    /// A builder for an upstream at `base`, to set how it connects.
    pub fn builder(base: Uri) -> UpstreamBuilder {
        UpstreamBuilder {
            base,
            http2: false,
            connect_timeout: None,
            #[cfg(feature = "tls")]
            root_pems: Vec::new(),
        }
    }

    fn with(settings: UpstreamBuilder) -> Result<Self, InvalidUpstream> {
        let base = settings.base;
        let scheme = base.scheme().cloned().ok_or_else(|| {
            InvalidUpstream(format!(
                "the upstream {base} has no scheme: write http://host:port"
            ))
        })?;
        if scheme == Scheme::HTTPS && !cfg!(feature = "tls") {
            return Err(InvalidUpstream(format!(
                "the upstream {base} is https, but this build has no TLS support: \
                 enable tower-defer's feature tls"
            )));
        }
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(InvalidUpstream(format!(
                "the upstream scheme {scheme} is not supported: use http or https"
            )));
        }
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| InvalidUpstream(format!("the upstream {base} has no host")))?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(settings.connect_timeout);
        #[cfg(feature = "tls")]
        let connector = {
            use crate::tls::{self, Alpn};
            let mut roots = Vec::new();
            for pem in &settings.root_pems {
                let certs = tls::certificates_in_pem(pem);
                if certs.is_empty() {
                    return Err(InvalidUpstream(
                        "a root certificate for the upstream holds no PEM certificate".into(),
                    ));
                }
                roots.extend(certs);
            }
            tls::check_roots(&roots).map_err(|e| {
                InvalidUpstream(format!(
                    "a root certificate for the upstream cannot be used: {e}"
                ))
            })?;
            // Lets the TLS layer take `https://` URIs, which plain HTTP refuses.
            http.enforce_http(false);
            let alpn = if settings.http2 {
                Alpn::Http2
            } else {
                Alpn::Both
            };
            tls::connector(http, &roots, alpn)
        };
        #[cfg(not(feature = "tls"))]
        let connector = http;
        // Over TLS the version is the one ALPN settled, unless h2 is required.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .http2_only(settings.http2)
            .build(connector);
        Ok(Upstream {
            shared: Arc::new(Shared {
                client,
                scheme,
                authority,
                base_path: base.path().trim_end_matches('/').to_owned(),
            }),
        })
    }

    fn target(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let Shared {
            scheme,
            authority,
            base_path,
            ..
        } = &*self.shared;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = match path_and_query {
            // Without a base path the request's own is the target's: a shared
            // copy of its bytes, not a string formatted and parsed again.
            Some(pq) if base_path.is_empty() => Some(pq.clone()),
            pq => {
                let pq = pq.map_or("/", PathAndQuery::as_str);
                format!("{base_path}{pq}").parse().ok()
            }
        };
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
        self.shared.client.request(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(url: &str) -> String {
        Upstream::new(url.parse().unwrap()).unwrap_err().to_string()
    }

    #[test]
    fn the_target_is_the_base_path_then_the_requests_path_and_query() {
        let target = |base: &str, pq: Option<&str>| {
            let upstream = Upstream::new(base.parse().unwrap()).unwrap();
            let pq = pq.map(|pq| pq.parse::<PathAndQuery>().unwrap());
            upstream.target(pq.as_ref()).to_string()
        };
        assert_eq!(
            target("http://model:8000", Some("/predict?x=1")),
            "http://model:8000/predict?x=1"
        );
        assert_eq!(target("http://model:8000", None), "http://model:8000/");
        assert_eq!(
            target("http://model:8000/v1/", Some("/predict?x=1")),
            "http://model:8000/v1/predict?x=1"
        );
        assert_eq!(
            target("http://model:8000/v1", None),
            "http://model:8000/v1/"
        );
    }

    #[test]
    fn an_upstream_url_that_cannot_be_used_is_refused_saying_why() {
        assert_eq!(
            refusal("ftp://files.example.com"),
            "the upstream scheme ftp is not supported: use http or https"
        );
        assert_eq!(
            refusal("/predict"),
            "the upstream /predict has no scheme: write http://host:port"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn an_https_upstream_needs_the_tls_feature() {
        assert_eq!(
            refusal("https://model.example.com"),
            "the upstream https://model.example.com/ is https, but this build has no \
             TLS support: enable tower-defer's feature tls"
        );
    }
}
