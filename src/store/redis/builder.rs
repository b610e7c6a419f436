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

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::Client;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::conn::Conn;
use super::diagnose::Target;
use super::functions;
use super::io::{exec, IoThread};
use super::keys::{shard_tags, Keys, MAX_SHARDS};
use super::lines::{claim_line, complete_line, enqueue_line};
use super::pubsub::{listen, Channels, Hub};
use super::{Inner, RedisStore, Shard};
use crate::store::StoreError;

/// When a submission counts as made: when its `201` is sent.
///
/// ```no_run
/// use tower_defer::store::redis::Durability;
/// use tower_defer::RedisStore;
///
/// # async fn f() -> Result<(), tower_defer::store::StoreError> {
/// let store = RedisStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
///     .durability(Durability::Replicated)
///     .connect()
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Once the master that holds the job has written it. A master that
    /// dies before its replica has the job takes the job with it, though
    /// the client was told `201`: Redis replicates after it answers.
    #[default]
    Primary,
    /// Once a replica has it too (`WAIT 1`, for at most half the store's
    /// timeout): a failover then keeps every job whose `201` was sent.
    /// When no replica confirms in time, the submission answers 503 (it may
    /// or may not have been kept; a client that resubmits with the same
    /// idempotency key gets the one job). Costs a round trip per batch of
    /// submissions, on a connection of their own, since `WAIT` holds the
    /// connection it is sent on.
    Replicated,
}

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
    /// The server's URL; a cluster's seed nodes.
    nodes: Vec<String>,
    cluster: bool,
    namespace: String,
    shards: usize,
    durability: Durability,
    timeout: Duration,
    connect_timeout: Duration,
    root_certificates: Option<Vec<u8>>,
    hold_paused_clock: bool,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field(
                "nodes",
                &self.nodes.iter().map(|u| redacted(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("namespace", &self.namespace)
            .field("shards", &self.shards)
            .field("durability", &self.durability)
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

    /// How many shards the namespace spreads over (1 to 36, default 1):
    /// each is a queue of its own, under a hash tag of its own, so on a
    /// Redis Cluster each may live on another master and take its load.
    /// Every store of one namespace must give the same number:
    /// [`connect`](Self::connect) refuses another (the first to connect
    /// records it in `{namespace}:shards`). See the [module docs](super)
    /// for what ordering holds across shards.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// When a submission counts as made (default [`Durability::Primary`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
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

    /// A redis-rs client of one node: its URL, with the root certificates
    /// for TLS.
    fn client(&self, url: &str) -> Result<Client, StoreError> {
        let tls = url.starts_with("rediss://");
        #[cfg(feature = "tls")]
        if let Some(pem) = &self.root_certificates {
            if !tls {
                return Err(StoreError::unavailable(
                    "redis: root certificates are for a rediss:// URL, and this one is not",
                    "not rediss://",
                ));
            }
            return with_roots(url, pem);
        }
        if tls && !cfg!(feature = "tls") {
            return Err(StoreError::unavailable(
                "redis: rediss:// needs the feature `tls` of tower-defer",
                "built without it",
            ));
        }
        Client::open(url).map_err(|e| StoreError::unavailable("redis: the URL is not valid", e))
    }

    /// Checks what connecting cannot: the namespace, the shards, the nodes.
    fn check(&self) -> Result<(), StoreError> {
        let refuse = |message: String, source: &str| {
            Err(StoreError::unavailable(message, source.to_owned()))
        };
        if self.namespace.contains(['{', '}']) {
            return refuse(
                "redis: the namespace must not contain '{' or '}'".into(),
                &format!("namespace {:?}", self.namespace),
            );
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return refuse(
                format!(
                    "redis: shards must be 1 to {MAX_SHARDS}, not {}",
                    self.shards
                ),
                "shards",
            );
        }
        if self.nodes.is_empty() {
            return refuse(
                "redis: a cluster needs at least one node's URL".into(),
                "no nodes",
            );
        }
        Ok(())
    }

    /// Connects, subscribes to the store's channels, and returns the store.
    /// It fails within the connect timeout plus the timeout, with a message
    /// that names the cause when it is a known one: authentication failed
    /// (`WRONGPASS`), a certificate not trusted, a TLS handshake failed or
    /// never finished (a server that does not speak TLS), a server refused
    /// or not reached, `NOAUTH`, `NOPERM`, a Redis older than 7.0.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        self.check()?;
        let nodes = self
            .nodes
            .iter()
            .map(|url| self.client(url))
            .collect::<Result<Vec<_>, _>>()?;
        let tags = shard_tags(&self.namespace, self.shards);
        let keys: Vec<Arc<Keys>> = tags.iter().map(|tag| Arc::new(Keys::new(tag))).collect();
        let target = Arc::new(Target::of(
            &nodes[0],
            &keys[0].prefix,
            self.root_certificates.is_some(),
        ));
        let (io, io_thread) = IoThread::start()
            .map_err(|e| StoreError::unavailable("redis: cannot start the I/O thread", e))?;
        let hub = Arc::new(Hub::new(self.shards));
        let (timeout, hold) = (self.timeout, self.hold_paused_clock);
        let conn = self.open(&io, &nodes, &target).await?;
        // The library loaded now, once: otherwise every caller of a busy
        // store that has just started finds it missing and loads it too.
        // (Should Redis lose it later, the call that finds out loads it; on
        // a cluster, FUNCTION LOAD goes to every master.)
        let (mut c, t) = (conn.clone(), target.clone());
        exec(&io, hold, timeout, "load functions", async move {
            functions::load(&mut c)
                .await
                .map_err(|e| t.command_failed("load functions", timeout, e))
        })
        .await?;
        self.record_shards(&io, &conn, &target).await?;
        self.subscribe(&io, nodes.clone(), &keys, &hub, &target)
            .await?;
        // WAIT holds the connection it is sent on: the submissions of a
        // replicated store get a connection of their own.
        let (submit, replicated) = match self.durability {
            Durability::Primary => (conn.clone(), None),
            Durability::Replicated => (self.open(&io, &nodes, &target).await?, Some(timeout / 2)),
        };
        let shards = keys
            .iter()
            .enumerate()
            .map(|(i, keys)| Shard {
                submissions: enqueue_line(&io, &submit, keys, timeout, replicated),
                claims: claim_line(&io, &conn, keys, &hub, i, timeout),
                completions: complete_line(&io, &conn, keys, &hub, i, timeout),
                keys: keys.clone(),
            })
            .collect();
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                shards,
                hub,
                turns: Default::default(),
                io,
                timeout,
                hold_clock: hold,
                _io_thread: io_thread,
            }),
        })
    }

    /// Opens a command connection: to the server, or to the cluster
    /// (through the first of its nodes that answers).
    async fn open(
        &self,
        io: &Handle,
        nodes: &[Client],
        target: &Arc<Target>,
    ) -> Result<Conn, StoreError> {
        let (timeout, connect_timeout) = (self.timeout, self.connect_timeout);
        let t = target.clone();
        // The future bounds itself, to name the cause; exec's bound, later,
        // is only a backstop.
        if !self.cluster {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let client = nodes[0].clone();
            let connecting = ConnectionManager::new_with_config(client, config);
            return exec(
                io,
                self.hold_paused_clock,
                connect_timeout.saturating_mul(2),
                "connect",
                async move {
                    t.connect(connecting, connect_timeout)
                        .await
                        .map(Conn::Single)
                },
            )
            .await;
        }
        let infos = nodes.iter().map(|c| c.get_connection_info().clone());
        let cluster = ClusterClientBuilder::new(infos)
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            // Slots move at a failover: MOVED, ASK and a refused
            // connection are retried (with a refresh of the slots) within
            // the timeout, not beyond it.
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500);
        #[cfg(feature = "tls")]
        let cluster = match &self.root_certificates {
            Some(pem) => cluster.certs(::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            }),
            None => cluster,
        };
        let client = cluster
            .build()
            .map_err(|e| StoreError::unavailable("redis: the cluster's URLs are not valid", e))?;
        exec(
            io,
            self.hold_paused_clock,
            connect_timeout.saturating_mul(2),
            "connect",
            async move {
                let connecting = async move { client.get_async_connection().await };
                t.connect(connecting, connect_timeout)
                    .await
                    .map(Conn::Cluster)
            },
        )
        .await
    }

    /// Records the namespace's shard count where every store of it looks,
    /// the first time, and refuses a store that asks for another: a job's
    /// id names its shard by that count, so it cannot change under jobs.
    async fn record_shards(
        &self,
        io: &Handle,
        conn: &Conn,
        target: &Arc<Target>,
    ) -> Result<(), StoreError> {
        let key = format!("{{{}}}:shards", self.namespace);
        let (mut c, t) = (conn.clone(), target.clone());
        let (wanted, timeout) = (self.shards, self.timeout);
        let recorded: usize = exec(
            io,
            self.hold_paused_clock,
            timeout,
            "record shards",
            async move {
                let mut cmd = ::redis::cmd("SET");
                cmd.arg(&key).arg(wanted).arg("NX").arg("GET");
                let before: Option<usize> = cmd
                    .query_async(&mut c)
                    .await
                    .map_err(|e| t.command_failed("record shards", timeout, e))?;
                Ok(before.unwrap_or(wanted))
            },
        )
        .await?;
        if recorded != wanted {
            return Err(StoreError::unavailable(
                format!(
                    "redis: namespace {ns:?} has {recorded} shards, and this store asks for \
                     {wanted}: every store of a namespace must give the same number (to change \
                     it, drain the queue and delete {{{ns}}}:shards, or take a new namespace)",
                    ns = self.namespace
                ),
                "shards",
            ));
        }
        Ok(())
    }

    /// Subscribes to every shard's channels, on a connection of its own.
    async fn subscribe(
        &self,
        io: &Handle,
        nodes: Vec<Client>,
        keys: &[Arc<Keys>],
        hub: &Arc<Hub>,
        target: &Arc<Target>,
    ) -> Result<(), StoreError> {
        let channels = Channels {
            changed: keys.iter().map(|k| k.changed.clone()).collect(),
            work: keys.iter().map(|k| k.work.clone()).collect(),
            deliver: keys.iter().map(|k| k.deliver.clone()).collect(),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let within = self.connect_timeout.saturating_add(self.timeout);
        io.spawn(listen(
            nodes,
            channels,
            within,
            Arc::downgrade(hub),
            ready_tx,
        ));
        let t = target.clone();
        exec(
            io,
            self.hold_paused_clock,
            within,
            "subscribe",
            async move {
                match ready_rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(t.command_failed("subscribe", within, e)),
                    Err(_) => Err(StoreError::unavailable(
                        "redis: subscribe failed",
                        "the subscriber stopped",
                    )),
                }
            },
        )
        .await
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
            nodes: vec![url.into()],
            cluster: false,
            namespace: Self::DEFAULT_NAMESPACE.into(),
            shards: 1,
            durability: Durability::Primary,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            root_certificates: None,
            hold_paused_clock: false,
        }
    }

    /// A builder for a store on a Redis Cluster, found through `nodes` (the
    /// URLs of some of its nodes, as [`builder`](Self::builder) takes one;
    /// give several, so that the store starts while one is down). Commands
    /// go to the master of their shard's slot, following the cluster's
    /// redirections as slots move; see the [module docs](super) and
    /// [`shards`](RedisStoreBuilder::shards).
    ///
    /// ```no_run
    /// use tower_defer::RedisStore;
    ///
    /// # async fn f() -> Result<(), tower_defer::store::StoreError> {
    /// let store = RedisStore::cluster([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    ///     "redis://10.0.0.3:6379",
    /// ])
    /// .shards(3)
    /// .connect()
    /// .await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn cluster<I>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisStoreBuilder {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..Self::builder(String::new())
        }
    }

    /// Connects with the defaults (namespace `tower-defer`, 2 s timeouts).
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }
}
