//! [`RedisStoreBuilder`]: the store's options, and connecting.
//!
//! Connecting starts the I/O thread, opens the command connection (within
//! the connect timeout), loads the function library (within the timeout),
//! subscribes to the store's channels on a connection of its own (within
//! both) and starts the batched lines; it fails (as unavailable) if any of
//! these fails, naming the cause (`diagnose.rs`), so a store that connected
//! is ready to use.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManagerConfig;
use ::redis::Client;
use tokio::sync::oneshot;

use super::diagnose::Target;
use super::functions;
use super::io::{exec, IoThread};
use super::keys::Keys;
use super::lines::{claim_line, complete_line, enqueue_line};
use super::pubsub::{listen, Hub};
use super::{Inner, RedisStore};
use crate::store::StoreError;

/// Configures and connects a [`RedisStore`]. From [`RedisStore::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_defer::RedisStore;
///
/// # async fn f() -> Result<(), tower_defer::store::StoreError> {
/// // An ACL user, its password percent-encoded (`p@ss` is `p%40ss`).
/// let store = RedisStore::builder("redis://app:p%40ss@redis.internal:6379/0")
///     .namespace("my-app")
///     .connect_timeout(Duration::from_secs(5))
///     .timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    root_certificates: Option<Vec<u8>>,
    hold_paused_clock: bool,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("root_certificates", &self.root_certificates.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The namespace: every key is `{namespace}:...`. Stores with the same
    /// namespace on the same Redis share one queue. Default `tower-defer`.
    /// It must not contain `{` or `}`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest one command may take (a submission, a lookup, a claim,
    /// loading the functions at connect) before it fails as unavailable.
    /// Default 2 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest opening a connection may take: TCP, the TLS handshake
    /// and `AUTH`, at [`connect`](Self::connect) and on each reconnect.
    /// A server that never answers (a plain-text Redis behind `rediss://`
    /// waits for a line that never comes) fails `connect` after it. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// For a `rediss://` URL: the root certificates to trust, in PEM (a
    /// private CA's certificate, or the server's self-signed one), in place
    /// of Mozilla's roots, which are trusted otherwise. Both connections of
    /// the store (commands and pub/sub) use them. [`connect`](Self::connect)
    /// refuses them for a `redis://` URL, and text that holds no certificate.
    ///
    /// ```no_run
    /// use tower_defer::RedisStore;
    ///
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/ca.pem")?;
    /// let store = RedisStore::builder("rediss://app:secret@redis.internal:6380/0")
    ///     .root_certificates(ca)
    ///     .connect()
    ///     .await?;
    /// # let _ = store; Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// For tests on tokio's paused clock: runs each operation so that the
    /// paused clock does not auto-advance while Redis answers (through the
    /// blocking pool, which holds the clock). Off by default: it costs a
    /// thread hand-off per operation and means nothing on a running clock.
    /// A test-only hook, hidden from the docs: not part of the API a
    /// deployment configures.
    #[doc(hidden)]
    pub fn hold_paused_clock(mut self, hold: bool) -> Self {
        self.hold_paused_clock = hold;
        self
    }

    /// The redis-rs client: the URL, with the root certificates for TLS.
    fn client(&self) -> Result<Client, StoreError> {
        let tls = self.url.starts_with("rediss://");
        #[cfg(feature = "tls")]
        if let Some(pem) = &self.root_certificates {
            if !tls {
                return Err(StoreError::unavailable(
                    "redis: root certificates are for a rediss:// URL, and this one is not",
                    "not rediss://",
                ));
            }
            return with_roots(&self.url, pem);
        }
        if tls && !cfg!(feature = "tls") {
            return Err(StoreError::unavailable(
                "redis: rediss:// needs the feature `tls` of tower-defer",
                "built without it",
            ));
        }
        Client::open(self.url.as_str())
            .map_err(|e| StoreError::unavailable("redis: the URL is not valid", e))
    }

    /// Connects, subscribes to the store's channels, and returns the store.
    /// It fails within the connect timeout plus the timeout, with a message
    /// that names the cause when it is a known one: authentication failed
    /// (`WRONGPASS`), a certificate not trusted, a TLS handshake failed or
    /// never finished (a server that does not speak TLS), a server refused
    /// or not reached, `NOAUTH`, `NOPERM`, a Redis older than 7.0.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        if self.namespace.contains(['{', '}']) {
            return Err(StoreError::unavailable(
                "redis: the namespace must not contain '{' or '}'",
                format!("namespace {:?}", self.namespace),
            ));
        }
        let client = self.client()?;
        let keys = Keys::new(&self.namespace);
        let target = Arc::new(Target::of(
            &client,
            &keys.prefix,
            self.root_certificates.is_some(),
        ));
        let (io, io_thread) = IoThread::start()
            .map_err(|e| StoreError::unavailable("redis: cannot start the I/O thread", e))?;
        let hub = Arc::new(Hub::default());
        let (timeout, connect_timeout) = (self.timeout, self.connect_timeout);
        let hold = self.hold_paused_clock;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let (c, t) = (client.clone(), target.clone());
        // The future bounds itself, to name the cause; exec's bound, later,
        // is only a backstop.
        let conn = exec(
            &io,
            hold,
            connect_timeout.saturating_mul(2),
            "connect",
            async move { t.connect(c, config, connect_timeout).await },
        )
        .await?;
        // The library loaded now, once: otherwise every caller of a busy
        // store that has just started finds it missing and loads it too.
        // (Should Redis lose it later, the call that finds out loads it.)
        let (mut c, t) = (conn.clone(), target.clone());
        exec(&io, hold, timeout, "load functions", async move {
            functions::load(&mut c)
                .await
                .map_err(|e| t.command_failed("load functions", timeout, e))
        })
        .await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        // Its own connection: connecting, then subscribing.
        let subscribe_within = connect_timeout.saturating_add(timeout);
        io.spawn(listen(
            client,
            [
                keys.changed.clone(),
                keys.work.clone(),
                keys.deliver.clone(),
            ],
            subscribe_within,
            Arc::downgrade(&hub),
            ready_tx,
        ));
        let t = target.clone();
        exec(&io, hold, subscribe_within, "subscribe", async move {
            match ready_rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(t.command_failed("subscribe", subscribe_within, e)),
                Err(_) => Err(StoreError::unavailable(
                    "redis: subscribe failed",
                    "the subscriber stopped",
                )),
            }
        })
        .await?;
        let keys = Arc::new(keys);
        let submissions = enqueue_line(&io, &conn, &keys, timeout);
        let claims = claim_line(&io, &conn, &keys, &hub, timeout);
        let completions = complete_line(&io, &conn, &keys, timeout);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                keys,
                hub,
                submissions,
                claims,
                completions,
                io,
                timeout,
                hold_clock: hold,
                _io_thread: io_thread,
            }),
        })
    }
}

/// A client for `url` that trusts the certificates in `pem` only.
#[cfg(feature = "tls")]
fn with_roots(url: &str, pem: &[u8]) -> Result<Client, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    if CertificateDer::pem_slice_iter(pem).next().is_none() {
        return Err(StoreError::unavailable(
            "redis: the root certificates hold no certificate (PEM: -----BEGIN CERTIFICATE-----)",
            "no certificate",
        ));
    }
    let certificates = ::redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    };
    Client::build_with_tls(url, certificates).map_err(|e| {
        let message = match e.kind() {
            ::redis::ErrorKind::Io => format!("redis: the root certificates cannot be used: {e}"),
            _ => "redis: the URL is not valid".to_owned(),
        };
        StoreError::unavailable(message, e)
    })
}

/// `url` with whatever comes between `://` and the last `@` of the
/// authority (the user name and password) replaced by `****`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "****".to_owned();
    };
    let authority_end = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://****@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl RedisStore {
    /// The namespace unless told otherwise.
    pub const DEFAULT_NAMESPACE: &'static str = "tower-defer";

    /// A builder for a store on `url`: `redis://[user:password@]host:port/db`,
    /// or `rediss://` for TLS (feature `tls`). The user name and password are
    /// percent-encoded, as in any URL (`p@ss` is `p%40ss`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            namespace: Self::DEFAULT_NAMESPACE.into(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            root_certificates: None,
            hold_paused_clock: false,
        }
    }

    /// Connects with the defaults (namespace `tower-defer`, 2 s timeouts).
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }
}
