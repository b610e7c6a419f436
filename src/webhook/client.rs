//! The HTTP client that delivers events: hyper-util's pooled client over a
//! resolver that refuses private addresses, with rustls for https (feature
//! `tls`). It never follows redirects (hyper does not).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::target::is_private;
use super::Webhooks;
use crate::BoxError;

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector<Resolver>;

/// A pooled client; clones share connections.
#[derive(Clone)]
pub(crate) struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

impl Client {
    pub(crate) fn new(webhooks: &Webhooks) -> Self {
        let mut http = HttpConnector::new_with_resolver(Resolver {
            deny_private: webhooks.deny_private,
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(webhooks.attempt_timeout));
        #[cfg(feature = "tls")]
        let connector = crate::tls::connector(http, &webhooks.roots, crate::tls::Alpn::Http1);
        #[cfg(not(feature = "tls"))]
        let connector = http;
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            // Receivers are many and mostly idle: keep few connections, briefly.
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Client { inner }
    }

    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, BoxError> {
        self.inner.request(request).await.map_err(Into::into)
    }
}

/// Resolves host names with the system resolver, dropping private and
/// loopback addresses when they are refused: the check is made on the
/// address actually connected to, at each delivery.
#[derive(Clone, Debug)]
pub(crate) struct Resolver {
    deny_private: bool,
}

/// A host name that resolved to refused addresses only.
#[derive(Debug)]
pub(crate) struct PrivateAddress {
    host: String,
}

impl fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves only to private or loopback addresses, which this server refuses",
            self.host
        )
    }
}

impl std::error::Error for PrivateAddress {}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let deny_private = self.deny_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| !(deny_private && is_private(a.ip())))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(std::io::Error::other(PrivateAddress { host }));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Whether an error (or one of its sources) is a refused private address.
pub(crate) fn is_refused_address(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<PrivateAddress>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<PrivateAddress>())
            {
                return true;
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tower_service::Service;

    #[tokio::test]
    async fn the_resolver_refuses_names_of_loopback_addresses() {
        let name = Name::from_str("localhost").unwrap();
        let e = Resolver { deny_private: true }
            .call(name.clone())
            .await
            .unwrap_err();
        assert!(is_refused_address(&e), "{e}");
        assert!(e.to_string().contains("localhost resolves only to private"));
        let addrs: Vec<_> = Resolver {
            deny_private: false,
        }
        .call(name)
        .await
        .unwrap()
        .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
