//! Why connecting failed, in words an operator can act on: a wrong
//! password, an untrusted certificate, a server that does not speak TLS, a
//! server never reached, a user without a permission the store needs. What
//! is not recognised keeps redis-rs's own words.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use ::redis::{Client, ConnectionAddr, ErrorKind, RedisError};

use crate::store::StoreError;

/// Where the store connects, as the messages name it.
pub(super) struct Target {
    /// `host:port` (`[v6]:port`), or a socket's path.
    addr: String,
    /// Host and port for a TCP probe; `None` for a Unix socket.
    tcp: Option<(String, u16)>,
    /// `rediss://`.
    tls: bool,
    /// What the store's keys and channels start with, `{ns}:`.
    prefix: String,
    /// The builder was given its own root certificates.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    own_roots: bool,
}

impl Target {
    pub(super) fn of(client: &Client, prefix: &str, own_roots: bool) -> Target {
        let (tcp, tls) = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => (Some((host.clone(), *port)), false),
            ConnectionAddr::TcpTls { host, port, .. } => (Some((host.clone(), *port)), true),
            _ => (None, false),
        };
        let addr = match &tcp {
            Some((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
            Some((host, port)) => format!("{host}:{port}"),
            None => client.get_connection_info().addr().to_string(),
        };
        Target {
            addr,
            prefix: prefix.to_owned(),
            tcp,
            tls,
            own_roots,
        }
    }

    /// Opens the command connection (`connecting`) within `limit`, naming the cause of a
    /// failure. Past half the limit, a plain TCP connection to the server is
    /// opened (and at once closed) beside it: should connecting then time
    /// out, whether that one got through tells a server that never answered
    /// from one never reached. A connection that opens in time is not
    /// probed, so a TLS server does not log an aborted handshake per start.
    pub(super) async fn connect<C>(
        &self,
        connecting: impl Future<Output = Result<C, RedisError>>,
        limit: Duration,
    ) -> Result<C, StoreError> {
        let reached = Arc::new(AtomicBool::new(false));
        tokio::pin!(connecting);
        let outcome = tokio::time::timeout(limit, async {
            tokio::select! {
                done = &mut connecting => return done,
                () = tokio::time::sleep(limit / 2) => self.probe(reached.clone()),
            }
            connecting.await
        })
        .await;
        let reached = reached.load(Ordering::Relaxed);
        match outcome {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out(limit, reached)),
            Ok(Err(e)) => {
                let message = self
                    .cause(&e)
                    .unwrap_or_else(|| format!("redis: cannot connect to {}: {e}", self.addr));
                Err(StoreError::unavailable(message, e))
            }
            Err(_) => Err(self.timed_out(limit, reached)),
        }
    }

    /// Sets `reached` once a TCP connection to the server opens.
    fn probe(&self, reached: Arc<AtomicBool>) {
        if let Some((host, port)) = self.tcp.clone() {
            tokio::spawn(async move {
                if tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .is_ok()
                {
                    reached.store(true, Ordering::Relaxed);
                }
            });
        }
    }

    /// Connecting took longer than `limit`.
    fn timed_out(&self, limit: Duration, reached: bool) -> StoreError {
        let ms = limit.as_millis();
        let addr = &self.addr;
        let message = match (reached, self.tls) {
            (true, true) => format!(
                "redis: the TLS handshake with {addr} did not finish within {ms} ms: \
                 the server may not speak TLS ({NOT_TLS})"
            ),
            (true, false) => {
                format!("redis: {addr} took the connection but did not answer within {ms} ms")
            }
            (false, _) => format!("redis: cannot reach {addr} within {ms} ms"),
        };
        StoreError::unavailable(message, "the connect timeout")
    }

    /// A command that failed while connecting (`what`: `load functions`,
    /// `subscribe`; bounded by `limit`): its cause if it is one of those named.
    pub(super) fn command_failed(&self, what: &str, limit: Duration, e: RedisError) -> StoreError {
        let message = if e.detail().is_some_and(|d| d.contains("unknown command")) {
            "redis: RedisStore needs Redis 7.0 or later (FUNCTION LOAD)".to_owned()
        } else if e.is_timeout() {
            format!("redis: {what} timed out after {} ms", limit.as_millis())
        } else {
            self.cause(&e)
                .unwrap_or_else(|| format!("redis: {what} failed: {e}"))
        };
        StoreError::unavailable(message, e)
    }

    fn cause(&self, e: &RedisError) -> Option<String> {
        let addr = &self.addr;
        if e.kind() == ErrorKind::AuthenticationFailed {
            return Some(format!(
                "redis: authentication failed: {addr} refused the user name and password \
                 (WRONGPASS: a wrong user name or password, or a disabled user)"
            ));
        }
        // Redis cuts an unauthenticated client that sends a long command
        // (`FUNCTION LOAD`'s) with a protocol error instead of NOAUTH.
        let unauthenticated = e.detail().is_some_and(|d| d.contains("unauthenticated"));
        if unauthenticated || e.code() == Some("NOAUTH") {
            return Some(self.noauth());
        }
        if e.code() == Some("NOPERM") {
            return Some(format!(
                "redis: the user lacks a permission the store needs ({}): it needs the keys \
                 and channels {}* (see the ACL rule under \"Redis in production\" in \
                 tower-defer's README)",
                e.detail().unwrap_or("NOPERM"),
                self.prefix
            ));
        }
        if e.is_connection_refusal() {
            return Some(format!(
                "redis: {addr} refused the connection (is Redis listening there?)"
            ));
        }
        self.tls_cause(e)
    }

    fn noauth(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!(
            "redis: {} requires authentication (NOAUTH): give a user name and password \
             in the URL, {scheme}://USER:PASSWORD@HOST:PORT/DB",
            self.addr
        )
    }

    #[cfg(feature = "tls")]
    fn tls_cause(&self, e: &RedisError) -> Option<String> {
        let addr = &self.addr;
        Some(match tls_error(e)? {
            rustls::Error::InvalidCertificate(why) if self.own_roots => format!(
                "redis: the TLS certificate of {addr} is not trusted by the root \
                 certificates given (invalid peer certificate: {why}): they do not hold \
                 the CA that signed it"
            ),
            rustls::Error::InvalidCertificate(why) => format!(
                "redis: the TLS certificate of {addr} is not trusted (invalid peer \
                 certificate: {why}): a server with a private CA needs that CA's \
                 certificate as a root"
            ),
            other => format!(
                "redis: the TLS handshake with {addr} failed ({other}): the server may \
                 not speak TLS ({NOT_TLS})"
            ),
        })
    }

    #[cfg(not(feature = "tls"))]
    fn tls_cause(&self, _: &RedisError) -> Option<String> {
        None
    }
}

/// The advice that ends a message about a server that may not speak TLS.
const NOT_TLS: &str = "rediss:// needs its TLS port; a plain-text Redis is redis://";

/// The rustls error under a failed TLS connection. redis-rs keeps the I/O
/// error in an `Arc` behind `source()`, and tokio-rustls the rustls error
/// inside that I/O error.
#[cfg(feature = "tls")]
fn tls_error(e: &RedisError) -> Option<&rustls::Error> {
    let source = std::error::Error::source(e)?;
    let io = match source.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>()?,
        None => source.downcast_ref::<std::io::Error>()?,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>()
}
