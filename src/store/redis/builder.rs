//! [`RedisStoreBuilder`]: the store's options, and connecting.
//!
//! Connecting starts the I/O thread, opens the command connection, loads
//! the function library, subscribes to the store's channels and starts the
//! batched lines; it fails (as unavailable) if any of these fails within
//! the timeout, so a store that connected is ready to use.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Client;
use tokio::sync::oneshot;

use super::functions;
use super::io::{exec, failed, IoThread};
use super::keys::Keys;
use super::lines::{claim_line, complete_line, enqueue_line};
use super::pubsub::{listen, Hub};
use super::{Inner, RedisStore};
use crate::store::StoreError;

/// Configures and connects a [`RedisStore`]. From [`RedisStore::builder`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
    hold_paused_clock: bool,
}

impl RedisStoreBuilder {
    /// The namespace: every key is `{namespace}:...`. Stores with the same
    /// namespace on the same Redis share one queue. Default `tower-defer`.
    /// It must not contain `{` or `}`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest any one operation may take before it fails as
    /// unavailable (connecting included). Default 2 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
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

    /// Connects, subscribes to the store's channels, and returns the store.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        if self.namespace.contains(['{', '}']) {
            return Err(StoreError::unavailable(
                "redis: the namespace must not contain '{' or '}'",
                format!("namespace {:?}", self.namespace),
            ));
        }
        let client = Client::open(self.url.as_str())
            .map_err(|e| StoreError::unavailable("redis: the URL is not valid", e))?;
        let (io, io_thread) = IoThread::start()
            .map_err(|e| StoreError::unavailable("redis: cannot start the I/O thread", e))?;
        let keys = Keys::new(&self.namespace);
        let hub = Arc::new(Hub::default());
        let (timeout, hold) = (self.timeout, self.hold_paused_clock);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let c = client.clone();
        let conn = exec(&io, hold, timeout, "connect", async move {
            ConnectionManager::new_with_config(c, config)
                .await
                .map_err(failed("connect"))
        })
        .await?;
        // The library loaded now, once: otherwise every caller of a busy
        // store that has just started finds it missing and loads it too.
        // (Should Redis lose it later, the call that finds out loads it.)
        let mut c = conn.clone();
        exec(&io, hold, timeout, "load functions", async move {
            functions::load(&mut c).await.map_err(|e| {
                if e.detail().is_some_and(|d| d.contains("unknown command")) {
                    StoreError::unavailable(
                        "redis: RedisStore needs Redis 7.0 or later (FUNCTION LOAD)",
                        e,
                    )
                } else {
                    failed("load functions")(e)
                }
            })
        })
        .await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        io.spawn(listen(
            client,
            [
                keys.changed.clone(),
                keys.work.clone(),
                keys.deliver.clone(),
            ],
            Arc::downgrade(&hub),
            ready_tx,
        ));
        exec(&io, hold, timeout, "subscribe", async move {
            ready_rx.await.map_err(|_| {
                StoreError::unavailable("redis: subscribe failed", "the subscriber stopped")
            })
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

impl RedisStore {
    /// The namespace unless told otherwise.
    pub const DEFAULT_NAMESPACE: &'static str = "tower-defer";

    /// A builder for a store on `url` (`redis://host:port/db`, or
    /// `rediss://` with a TLS feature of redis-rs enabled).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            namespace: Self::DEFAULT_NAMESPACE.into(),
            timeout: Duration::from_secs(2),
            hold_paused_clock: false,
        }
    }

    /// Connects with the defaults (namespace `tower-defer`, 2 s timeout).
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }
}
