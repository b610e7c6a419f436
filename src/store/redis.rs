//! The Redis store (feature `redis`): one queue shared by many processes.
//!
//! Any replica accepts a submission, any replica's workers may run it, any
//! replica answers a lookup. A replica that dies mid-job loses nothing: its
//! lease lapses and another replica runs the job again.
//!
//! ```no_run
//! use tower_defer::{DeferLayer, RedisStore};
//!
//! # async fn f() -> Result<(), tower_defer::store::StoreError> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/0")
//!     .namespace("my-app")
//!     .connect()
//!     .await?;
//! let layer = DeferLayer::new(store);
//! # let _ = layer; Ok(()) }
//! ```
//!
//! # Redis version
//!
//! Redis 7.0 or later (or a fork with its functions, such as Valkey): the
//! transitions are a library of Lua functions, loaded when the store
//! connects (`FUNCTION LOAD`). Its name, `tower_defer_<hash of its source>`,
//! changes with each version of the library, so during a rolling upgrade
//! the replicas of each version call their own functions on the same keys.
//! That holds while the versions agree on the layout below; a release that
//! changes it says so in the changelog, and needs the queue drained (or a
//! new namespace) first. `FUNCTION LIST` shows the libraries, and an old
//! one may be dropped (`FUNCTION DELETE`) once no replica runs it.
//! [`connect`](RedisStoreBuilder::connect) fails with a message that says so
//! on an older server.
//!
//! # Layout
//!
//! Every key shares one hash tag, `{ns}` (namespace `tower-defer` unless
//! [`namespace`](RedisStoreBuilder::namespace) says otherwise), so every key
//! a script touches lives in one hash slot, as Redis Cluster requires.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:job:<id>` | hash | one job: lifecycle fields, request, response (see below) |
//! | `{ns}:ready:0` `:1` `:2` | sorted set | runnable jobs per priority; score = a global sequence, so FIFO within a level |
//! | `{ns}:seq` | string | that sequence (`INCR`) |
//! | `{ns}:due` | sorted set | each job's [`Job::next_due`] in ms: deadlines, retries, leases, TTLs |
//! | `{ns}:n:retrying`, `{ns}:n:in_progress` | string | counters for [`stats`](Store::stats) and the queue limit |
//! | `{ns}:idem:-:<key>`, `{ns}:idem:<len>:<owner>:<key>` | string | the job holding an idempotency key (owner length-prefixed, so owners and keys may hold `:`) |
//! | channel `{ns}:changed` | pub/sub | job ids (separated by spaces), on every change of those jobs |
//! | `{ns}:deliveries` | sorted set | webhook deliveries nobody holds, by [`Job::delivery_ready_at`] |
//! | channel `{ns}:work` | pub/sub | job ids, when work becomes ready (or a retry is scheduled) |
//! | channel `{ns}:deliver` | pub/sub | job ids, when webhook deliveries become claimable |
//!
//! A job hash keeps its lifecycle scalars (status, attempts, revision,
//! lease, deadlines and times, the webhook delivery's state, the options'
//! durations) packed in one field, `life`: a little-endian `f64` per
//! scalar, `-1` for none, which a script reads with one `struct.unpack`.
//! The rest are fields of their own: `id`, `error_code` and
//! `error_message`, the options that are text (`owner`,
//! `idempotency_key`, `webhook_url`, `webhook_format`), the request as
//! `request` (method, path and query, and headers, in a small binary
//! encoding) and `req_body` (raw bytes), the response as `resp_status`,
//! `resp_headers` and `resp_body`. The encoding lives in one place,
//! `codec.rs`.
//!
//! # Transitions
//!
//! Every transition is one Lua function (`FCALL`), which mirrors the pure
//! methods of [`Job`] and the bookkeeping of [`MemoryStore`](super::MemoryStore)
//! (ready lists with aging, the due index, counters) and publishes the change;
//! the client never reads, modifies and writes a job. Keys the client can name
//! are passed in `KEYS`; a script that reaches a job it found inside Redis
//! (the head of a ready or due set, in `claim` and `sweep`) builds its key
//! from the `{ns}:` prefix, which stays in the same hash slot thanks to the tag.
//!
//! The client passes "now" ([`Timestamp::now`], which follows tokio's clock)
//! to every script, so tests on a paused clock behave, and replicas must keep
//! their clocks in sync (NTP): leases, deadlines and TTLs compare times from
//! different hosts.
//!
//! # Round trips
//!
//! One job's life costs at most one round trip per operation:
//!
//! | operation | round trips |
//! |---|---|
//! | submit ([`enqueue`](Store::enqueue)) | at most 1 (`FCALL`) |
//! | [`claim`](Store::claim) | at most 1 (`FCALL`; also applies what came due) |
//! | [`complete`](Store::complete), [`complete_status`](Store::complete_status) | at most 1 (`FCALL`; the worker's `complete_status` gets no job back) |
//! | one lookup ([`get`](Store::get)) | 1 (`HGETALL`) |
//! | a long-poll ([`wait`](Store::wait)) | 1 per change seen, plus 1 at its deadline |
//!
//! Submissions, claims, and completions that arrive while one of their kind
//! is in flight are sent together in one script call when it returns (see
//! `batch.rs`): under load, sixteen workers share a round trip or two
//! instead of taking one each, and so do the submissions of many clients.
//! Such a script also writes each counter, index and channel once for all
//! its jobs rather than once per job.
//!
//! The worker also watches a running job (that is how a cancel on another
//! replica reaches it): one small read when the call starts, then one read
//! and one lease extension per third of the lease. After a Redis restart
//! that lost the functions (one without persistence), the first call that
//! finds them missing costs two more round trips once (`FUNCTION LOAD`).
//!
//! # Notifications
//!
//! One pub/sub connection per store (clones share it) dispatches `{ns}:changed`
//! to local waiters of that job and `{ns}:work` to idle workers; operations
//! of this process also wake local waiters directly. An idle replica makes
//! about two calls a second (the worker's claim and sweep, each capped at
//! one second). When the subscription is lost it is made again, and every
//! local waiter is woken to read again, so no change is missed for long.
//!
//! # Failures
//!
//! Commands go through one multiplexed connection that reconnects by itself.
//! Every operation is bounded by [`timeout`](RedisStoreBuilder::timeout)
//! (default 2 s): while Redis is down, operations fail promptly with
//! [`StoreError::is_unavailable`] (the API answers `503` with `Retry-After`)
//! and nothing hangs. An accepted job was written by its enqueue script
//! before the `201`.
//!
//! # Durability
//!
//! Run Redis with `appendonly yes` (and `appendfsync everysec`, or `always`
//! to lose nothing even to a host crash) so queued jobs survive a restart;
//! with RDB snapshots only, a restart loses what came after the last one.
//! Do not run it with an eviction policy that may drop keys
//! (`maxmemory-policy noeviction`).
//!
//! # Result TTL
//!
//! A finished job is gone for every read once its `expires_at` is past
//! (checked on every read), is deleted by the sweep, and Redis expires its
//! key itself a minute later in any case (`PEXPIREAT`; the slack absorbs
//! clock skew between the replicas and the Redis host).
//!
//! # Runtime
//!
//! The store does its Redis I/O on a thread of its own (a small tokio
//! runtime), so its connection, reconnects and timeouts do not depend on the
//! caller's runtime or its clock: an operation is handed to that thread and
//! its answer awaited. For tests on tokio's paused clock, see
//! [`hold_paused_clock`](RedisStoreBuilder::hold_paused_clock).

mod batch;
mod codec;
mod functions;

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError};
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

use self::batch::Batcher;
use self::functions::{Function, Invocation};
use super::{
    Claim, DeliveryClaim, EnqueueError, Enqueued, QueueStats, QueuedCancel, Store, StoreError,
};
use crate::job::{
    CancelOutcome, DeliveryAttempt, Job, JobError, JobId, JobStatus, Lease, LeaseToken, NewJob,
    Outcome, Priority, Retry, StoredResponse,
};
use crate::time::Timestamp;

/// How many due items one `claim` applies before choosing (the rest wait for
/// the next claim or sweep), and how many one `sweep` applies: a script
/// blocks Redis while it runs, so neither is unbounded.
const CLAIM_DUE_BATCH: usize = 100;
const SWEEP_DUE_BATCH: usize = 1000;

/// The Redis store. Cheap to clone: clones share the connection, the
/// subscription and the I/O thread. See the [module docs](self).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

// Fields drop in order: the connection and the lines' tasks before the I/O
// thread they run on.
struct Inner {
    conn: ConnectionManager,
    keys: Arc<Keys>,
    hub: Arc<Hub>,
    /// Submissions, coalesced (see `batch.rs`).
    submissions: Batcher<EnqueueCall, Submitted>,
    /// Claims, coalesced.
    claims: Batcher<ClaimCall, Claimed>,
    /// Completions, coalesced.
    completions: Batcher<CompleteCall, Completed>,
    io: Handle,
    timeout: Duration,
    hold_clock: bool,
    _io_thread: IoThread,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.keys.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

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

    async fn exec<T, F>(&self, what: &'static str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
        T: Send + 'static,
    {
        let i = &self.inner;
        let fut = async move { fut.await.map_err(failed(what)) };
        exec(&i.io, i.hold_clock, i.timeout, what, fut).await
    }

    /// Records an outcome through the completion line; the job's fields when
    /// `send_job` asks for them (else none).
    async fn run_complete(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
        send_job: bool,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let call = CompleteCall {
            now: Timestamp::now(),
            id,
            token,
            outcome,
            send_job,
        };
        let done = self.batched("complete", self.inner.completions.call(call));
        let fields = done.await?.ok_or_else(StoreError::stale_lease)?;
        self.inner.hub.changed(id);
        Ok(fields)
    }

    /// Waits for the answer of a call queued on a line (see `batch.rs`).
    /// The line's task bounds each batch by the timeout on the I/O thread's
    /// clock, so the answer is awaited here directly, without another hop to
    /// that thread; except on a held paused clock, which needs the hop.
    async fn batched<T, F>(&self, what: &'static str, answer: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let i = &self.inner;
        if i.hold_clock {
            exec(&i.io, true, i.timeout, what, answer).await
        } else {
            answer.await
        }
    }

    fn invocation(&self, function: Function, now: Timestamp) -> Invocation {
        self.inner.keys.invocation(function, now)
    }

    /// The cancel function, for both cancels: its answer tag, and the job
    /// when it was found (and, when canceled, its waiters told).
    async fn run_cancel(
        &self,
        id: JobId,
        owner: Option<&str>,
        queued_only: bool,
    ) -> Result<(String, Option<Job>), StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::Cancel, now);
        inv.key(self.job_key(id))
            .arg(id.as_str())
            .arg(if owner.is_some() { "1" } else { "0" })
            .arg(owner.unwrap_or(""))
            .arg(if queued_only { "1" } else { "0" });
        let (tag, rest) = self.run("cancel", inv).await?;
        let job = match tag.as_str() {
            "canceled" | "terminal" | "not_queued" => Some(decode("cancel", id, rest)?),
            _ => None,
        };
        if tag == "canceled" {
            self.inner.hub.changed(id);
        }
        Ok((tag, job))
    }

    /// Calls a function; its answer is a tag and what follows it.
    async fn run(
        &self,
        what: &'static str,
        inv: Invocation,
    ) -> Result<(String, Vec<Vec<u8>>), StoreError> {
        let mut conn = self.inner.conn.clone();
        let out = self
            .exec(what, async move {
                inv.invoke_async::<Vec<Vec<u8>>>(&mut conn).await
            })
            .await?;
        split_tag(what, out)
    }

    fn job_key(&self, id: JobId) -> String {
        self.inner.keys.job(id)
    }

    fn set_next_due(&self, at: Option<Timestamp>) {
        self.inner.hub.set_next_due(at);
    }
}

/// How many calls one batch carries at most: a script blocks Redis while it
/// runs, and one claim or completion takes it some tens of microseconds.
const MAX_BATCH: usize = 64;

/// One submission, waiting for its batch.
struct EnqueueCall {
    now: Timestamp,
    id: JobId,
    priority: u8,
    next_due: u64,
    /// The new job's fields, as `HSET` takes them.
    fields: Vec<(&'static str, Vec<u8>)>,
    /// The key of its idempotency slot, if it has a key.
    slot: Option<String>,
    max_queued: usize,
}

/// The enqueue function's answer for one submission: its tag, then what
/// follows it.
type Submitted = Vec<Vec<u8>>;

/// The submission line: submissions that arrive together are made by one
/// `enqueue` call, in the order they arrived, at the latest "now" of them.
/// A submission costs Redis little beyond the call itself (the keys and
/// the function's start, counting the queue, writing the ready lists, the
/// due index and the work channel), which a batch pays once.
fn enqueue_line(
    io: &Handle,
    conn: &ConnectionManager,
    keys: &Arc<Keys>,
    timeout: Duration,
) -> Batcher<EnqueueCall, Submitted> {
    let add = |keys: &Keys, inv: &mut Invocation, c: &EnqueueCall| {
        inv.key(keys.job(c.id));
        if let Some(slot) = &c.slot {
            inv.key(slot.as_str());
        }
        let pairs = c.fields.len() + usize::from(c.slot.is_some());
        inv.arg(c.max_queued)
            .arg(c.id.as_str())
            .arg(c.priority)
            .arg(c.next_due)
            .arg(if c.slot.is_some() { "1" } else { "0" })
            .arg(pairs);
        for (name, value) in &c.fields {
            inv.arg(*name).arg(value.as_slice());
        }
        if let Some(slot) = &c.slot {
            inv.arg(codec::field::IDEMPOTENCY_SLOT).arg(slot.as_str());
        }
    };
    let line = FunctionLine {
        function: Function::Enqueue,
        what: "enqueue",
        now: |c: &EnqueueCall| c.now,
        add,
        answer: |v| ::redis::from_redis_value(v).map_err(|e| undecodable("enqueue", e)),
    };
    line.start(io, conn, keys, timeout)
}

/// A line whose batch is one call of a function that takes its calls in
/// order, each with its own keys and arguments ([`add`](Self::add)), and
/// answers each in turn ([`answer`](Self::answer)); the call runs at the
/// latest "now" of its batch.
struct FunctionLine<Req, Resp> {
    function: Function,
    what: &'static str,
    now: fn(&Req) -> Timestamp,
    add: fn(&Keys, &mut Invocation, &Req),
    answer: fn(::redis::Value) -> Result<Resp, StoreError>,
}

impl<Req: Send + 'static, Resp: Send + 'static> FunctionLine<Req, Resp> {
    fn start(
        self,
        io: &Handle,
        conn: &ConnectionManager,
        keys: &Arc<Keys>,
        timeout: Duration,
    ) -> Batcher<Req, Resp> {
        let (conn, keys) = (conn.clone(), keys.clone());
        let line = Arc::new(self);
        Batcher::start(io, MAX_BATCH, move |calls: Vec<Req>| {
            let (mut conn, keys, line) = (conn.clone(), keys.clone(), line.clone());
            async move {
                let now = calls
                    .iter()
                    .map(line.now)
                    .max()
                    .unwrap_or_else(Timestamp::now);
                let mut inv = keys.invocation(line.function, now);
                for c in &calls {
                    (line.add)(&keys, &mut inv, c);
                }
                let run = async { inv.invoke_async(&mut conn).await.map_err(failed(line.what)) };
                let out: Vec<::redis::Value> = bounded(timeout, line.what, run).await?;
                if out.len() != calls.len() {
                    return Err(undecodable(line.what, "not one answer per job"));
                }
                Ok(out.into_iter().map(line.answer).collect())
            }
        })
    }
}

/// One worker's claim, waiting for its batch.
struct ClaimCall {
    now: Timestamp,
    lease_ms: u64,
    aging_ms: Option<u64>,
}

/// A claimed job, or `None` when there was no job for this claim.
type Claimed = Option<ClaimedJob>;

/// A claimed job as the claim script sends it: field, value pairs, its
/// fields as they were read and then the changes the claim made, a deleted
/// field without a value (one read serves the transition and the answer).
struct ClaimedJob(Vec<Option<Vec<u8>>>);

/// The claim line: claims that arrive together are made by one `claim`
/// script call per lease and aging period (one in practice: a pool asks
/// with the same ones every time). The batch claims at the latest "now" of
/// its calls, the one closest to when the script runs.
fn claim_line(
    io: &Handle,
    conn: &ConnectionManager,
    keys: &Arc<Keys>,
    hub: &Arc<Hub>,
    timeout: Duration,
) -> Batcher<ClaimCall, Claimed> {
    let (conn, keys, hub) = (conn.clone(), keys.clone(), hub.clone());
    Batcher::start(io, MAX_BATCH, move |calls: Vec<ClaimCall>| {
        let (mut conn, keys, hub) = (conn.clone(), keys.clone(), hub.clone());
        async move {
            let mut answers: Vec<Result<Claimed, StoreError>> =
                calls.iter().map(|_| Ok(None)).collect();
            let mut left: Vec<usize> = (0..calls.len()).collect();
            while let Some(&first) = left.first() {
                let like = |c: &ClaimCall| {
                    c.lease_ms == calls[first].lease_ms && c.aging_ms == calls[first].aging_ms
                };
                let (group, rest): (Vec<usize>, Vec<usize>) =
                    left.iter().partition(|&&i| like(&calls[i]));
                left = rest;
                let now = group
                    .iter()
                    .map(|&i| calls[i].now)
                    .max()
                    .unwrap_or(calls[first].now);
                let mut inv = keys.invocation(Function::Claim, now);
                inv.arg(calls[first].lease_ms)
                    .arg(
                        calls[first]
                            .aging_ms
                            .map_or(String::new(), |a| a.to_string()),
                    )
                    .arg(CLAIM_DUE_BATCH)
                    .arg(group.len());
                let run = async { inv.invoke_async(&mut conn).await.map_err(failed("claim")) };
                let out: Vec<::redis::Value> = bounded(timeout, "claim", run).await?;
                let mut out = out.into_iter();
                let next_due: Vec<u8> = out
                    .next()
                    .map(::redis::from_redis_value)
                    .transpose()
                    .map_err(|e| undecodable("claim", e))?
                    .ok_or_else(|| undecodable("claim", "an empty answer"))?;
                if out.len() < group.len() {
                    // Some claim found no job: idle workers wait at most
                    // until the next due time, which may make work.
                    hub.set_next_due(parse_u64("claim", &next_due)?.map(Timestamp::from_millis));
                }
                for i in group {
                    answers[i] = match out.next() {
                        Some(job) => ::redis::from_redis_value(job)
                            .map(|fields| Some(ClaimedJob(fields)))
                            .map_err(|e| undecodable("claim", e)),
                        None => Ok(None),
                    };
                }
            }
            Ok(answers)
        }
    })
}

/// One worker's result, waiting for its batch.
struct CompleteCall {
    now: Timestamp,
    id: JobId,
    token: LeaseToken,
    outcome: Outcome,
    /// Whether the caller wants the job back (`complete`) or only to know
    /// that it was recorded (`complete_status`).
    send_job: bool,
}

/// The completed job's fields (none unless asked for), or `None` when the
/// lease was stale.
type Completed = Option<Vec<Vec<u8>>>;

/// The completion line: results that arrive together are recorded by one
/// `complete` script call, each at its own "now".
fn complete_line(
    io: &Handle,
    conn: &ConnectionManager,
    keys: &Arc<Keys>,
    timeout: Duration,
) -> Batcher<CompleteCall, Completed> {
    let add = |keys: &Keys, inv: &mut Invocation, c: &CompleteCall| {
        inv.key(keys.job(c.id));
        inv.arg(c.now.as_millis())
            .arg(c.id.as_str())
            .arg(c.token.0)
            .arg(c.outcome.status().as_str())
            .arg(if c.send_job { "1" } else { "0" });
        outcome_args(inv, c.outcome.response.as_ref(), c.outcome.error.as_ref());
    };
    // 'ok' or 'stale', or the job sent back after its tag.
    let answer = |answer: ::redis::Value| {
        let tag = |t: &[u8]| matches!(&answer, ::redis::Value::BulkString(b) if b == t);
        if tag(b"ok") {
            return Ok(Some(Vec::new()));
        }
        if tag(b"stale") {
            return Ok(None);
        }
        let mut job: Vec<Vec<u8>> =
            ::redis::from_redis_value(answer).map_err(|e| undecodable("complete", e))?;
        match job.first().map(Vec::as_slice) {
            Some(b"ok") => {
                job.remove(0);
                Ok(Some(job))
            }
            _ => Err(undecodable("complete", "an unknown tag")),
        }
    };
    let line = FunctionLine {
        function: Function::Complete,
        what: "complete",
        now: |c: &CompleteCall| c.now,
        add,
        answer,
    };
    line.start(io, conn, keys, timeout)
}

/// Runs `fut` on the store's I/O thread, bounded by `timeout`.
async fn exec<T, F>(
    io: &Handle,
    hold_clock: bool,
    timeout: Duration,
    what: &'static str,
    fut: F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
{
    let task = bounded(timeout, what, fut);
    // The task runs to its end even if the caller goes away, so a script
    // that was sent is never half-observed.
    let joined = if hold_clock {
        let io = io.clone();
        tokio::task::spawn_blocking(move || {
            let task = io.spawn(task);
            io.block_on(task)
        })
        .await
        .unwrap_or_else(|e| {
            Ok(Err(StoreError::unavailable(
                "redis: the I/O task failed",
                e,
            )))
        })
    } else {
        io.spawn(task).await
    };
    joined.map_err(io_gone)?
}

/// The store's I/O thread (or a task of it) has stopped: every call that
/// needs it fails so.
fn io_gone(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::unavailable("redis: the store's I/O thread is gone", source)
}

/// `fut`, failing as unavailable after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::unavailable(
                format!("redis: {what} timed out after {} ms", timeout.as_millis()),
                e,
            ))
        })
}

/// A failed Redis call as the store reports it.
fn failed(what: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |e| StoreError::unavailable(format!("redis: {what} failed"), e)
}

fn undecodable(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::unavailable(format!("redis: the answer to {what} does not decode"), e)
}

fn decode(what: &str, id: JobId, flat: Vec<Vec<u8>>) -> Result<Job, StoreError> {
    codec::pairs(flat)
        .and_then(|f| codec::decode_job(id, f))
        .map_err(|e| undecodable(what, e))
}

fn parse_u64(what: &str, bytes: &[u8]) -> Result<Option<u64>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| undecodable(what, "not a number"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends a response and an error as the complete and retry scripts take them.
fn outcome_args(inv: &mut Invocation, response: Option<&StoredResponse>, error: Option<&JobError>) {
    match response {
        Some(r) => {
            let [status, headers, body] = codec::response_args(r);
            inv.arg("1").arg(status).arg(headers).arg(body);
        }
        None => {
            inv.arg("0").arg("").arg("").arg("");
        }
    }
    match error {
        Some(e) => inv.arg(e.code.as_str()).arg(e.message.as_str()),
        None => inv.arg("").arg(""),
    };
}

struct Keys {
    /// `{ns}:`
    prefix: String,
    /// The keys every script takes first, in the order `prelude.lua` reads them.
    common: [String; 8],
    changed: String,
    work: String,
    deliver: String,
}

impl Keys {
    /// A function call with the keys and arguments every function takes.
    fn invocation(&self, function: Function, now: Timestamp) -> Invocation {
        let mut inv = Invocation::new(function);
        for key in &self.common {
            inv.key(key.as_str());
        }
        inv.arg(self.prefix.as_str()).arg(now.as_millis());
        inv
    }

    fn new(namespace: &str) -> Self {
        let prefix = format!("{{{namespace}}}:");
        let k = |name: &str| format!("{prefix}{name}");
        Keys {
            common: [
                k("ready:0"),
                k("ready:1"),
                k("ready:2"),
                k("due"),
                k("seq"),
                k("n:retrying"),
                k("n:in_progress"),
                k("deliveries"),
            ],
            changed: k("changed"),
            work: k("work"),
            deliver: k("deliver"),
            prefix,
        }
    }

    fn job(&self, id: JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    fn idempotency(&self, owner: Option<&str>, key: &str) -> String {
        match owner {
            None => format!("{}idem:-:{key}", self.prefix),
            Some(o) => format!("{}idem:{}:{o}:{key}", self.prefix, o.len()),
        }
    }
}

/// Where pub/sub messages meet this process's waiters.
#[derive(Default)]
struct Hub {
    /// Jobs somebody here waits on, with how many wait.
    waiters: Mutex<HashMap<JobId, (Arc<Notify>, usize)>>,
    /// Wakes one idle worker per message.
    work: Notify,
    /// Wakes one idle deliverer per message.
    deliveries: Notify,
    /// The earliest due time the last claim or sweep saw (ms; 0: none).
    next_due: AtomicU64,
    /// The earliest delivery time the last delivery claim saw (ms; 0: none).
    next_delivery: AtomicU64,
}

impl Hub {
    fn set_next_due(&self, at: Option<Timestamp>) {
        self.next_due
            .store(at.map_or(0, Timestamp::as_millis), Ordering::Relaxed);
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<JobId, (Arc<Notify>, usize)>> {
        // Never held across an await; a panic under it leaves a usable map.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn watch(self: &Arc<Self>, id: JobId) -> Watch {
        let mut waiters = self.waiters();
        let entry = waiters.entry(id).or_insert_with(|| (Arc::default(), 0));
        entry.1 += 1;
        Watch {
            hub: self.clone(),
            id,
            notify: entry.0.clone(),
        }
    }

    fn changed(&self, id: JobId) {
        if let Some((n, _)) = self.waiters().get(&id) {
            n.notify_waiters();
        }
    }

    /// After the subscription was (re)made: whatever happened meanwhile was
    /// not heard, so everyone looks again.
    fn wake_all(&self) {
        for (n, _) in self.waiters().values() {
            n.notify_waiters();
        }
        self.work.notify_waiters();
        self.work.notify_one();
        self.deliveries.notify_waiters();
        self.deliveries.notify_one();
    }
}

/// One waiter's registration; unregisters on drop.
struct Watch {
    hub: Arc<Hub>,
    id: JobId,
    notify: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiters = self.hub.waiters();
        if let Some(entry) = waiters.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}

/// Keeps one subscription to the store's channels, making it again when it
/// is lost, until the store is dropped. Signals `ready` once first subscribed.
async fn listen(
    client: Client,
    [changed, work, deliver]: [String; 3],
    hub: Weak<Hub>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(changed.as_str()).await?;
            pubsub.subscribe(work.as_str()).await?;
            pubsub.subscribe(deliver.as_str()).await?;
            Ok::<_, RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(5), subscribe).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                match hub.upgrade() {
                    Some(hub) => hub.wake_all(),
                    None => return,
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(hub) = hub.upgrade() else { return };
                    let channel = msg.get_channel_name();
                    // A message names the jobs it is about, separated by
                    // spaces (a script that changes several sends one).
                    let ids = msg
                        .get_payload_bytes()
                        .split(|&b| b == b' ')
                        .filter(|id| !id.is_empty());
                    if channel == work {
                        ids.for_each(|_| hub.work.notify_one());
                    } else if channel == deliver {
                        ids.for_each(|_| hub.deliveries.notify_one());
                    } else if channel == changed {
                        let ids = ids.filter_map(parse_id);
                        for id in ids {
                            hub.changed(id);
                        }
                    }
                }
                tracing::warn!("the Redis subscription was lost; making it again");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "subscribing to Redis failed"),
            Err(_) => tracing::debug!("subscribing to Redis timed out"),
        }
        if hub.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The store's I/O thread: a current-thread runtime that runs the Redis
/// connection, the subscription and every operation's timeout. It stops when
/// the last clone of the store is dropped.
struct IoThread(Option<oneshot::Sender<()>>);

impl IoThread {
    fn start() -> std::io::Result<(Handle, IoThread)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tower-defer-redis".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok((handle, IoThread(Some(stop))))
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl Store for RedisStore {
    async fn enqueue(&self, new: NewJob, max_queued: usize) -> Result<Enqueued, EnqueueError> {
        let now = Timestamp::now();
        let id = JobId::random();
        let keys = &self.inner.keys;
        let slot = new
            .options
            .idempotency_key
            .as_deref()
            .map(|k| keys.idempotency(new.options.owner.as_deref(), k));
        let job = Job::new(id, new, now);
        let call = EnqueueCall {
            now,
            id,
            priority: job.options.priority.level(),
            next_due: job.next_due().map_or(0, Timestamp::as_millis),
            fields: codec::new_job_fields(&job),
            slot,
            max_queued,
        };
        let answer = self
            .batched("enqueue", self.inner.submissions.call(call))
            .await?;
        let (tag, rest) = split_tag("enqueue", answer)?;
        match tag.as_str() {
            "created" => {
                self.inner.hub.work.notify_one();
                Ok(Enqueued { job, created: true })
            }
            "existing" => {
                let first = first_id(&rest).ok_or_else(|| undecodable("enqueue", "no id"))?;
                Ok(Enqueued {
                    job: decode("enqueue", first, rest)?,
                    created: false,
                })
            }
            "conflict" => {
                let existing = rest
                    .first()
                    .and_then(|id| parse_id(id))
                    .ok_or_else(|| undecodable("enqueue", "no id"))?;
                Err(EnqueueError::IdempotencyConflict { existing })
            }
            "full" => Err(EnqueueError::QueueFull { limit: max_queued }),
            other => Err(undecodable("enqueue", format!("tag {other:?}")).into()),
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let now = Timestamp::now();
        let key = self.job_key(id);
        let mut conn = self.inner.conn.clone();
        let flat: Vec<Vec<u8>> = self
            .exec("get", async move {
                ::redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if flat.is_empty() {
            return Ok(None);
        }
        let job = decode("get", id, flat)?;
        Ok((!job.is_forgotten(now)).then_some(job))
    }

    async fn wait(
        &self,
        id: JobId,
        seen: u64,
        until: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        loop {
            // Register first, read second: a change published after the read
            // finds the waiter in place (no lost wake-up).
            let watch = self.inner.hub.watch(id);
            let mut notified = pin!(watch.notify.notified());
            notified.as_mut().enable();
            let now = Timestamp::now();
            if now >= until {
                return self.get(id).await;
            }
            let mut inv = self.invocation(Function::Peek, now);
            inv.key(self.job_key(id)).arg(seen);
            let (tag, rest) = self.run("wait", inv).await?;
            match tag.as_str() {
                "gone" => return Ok(None),
                "changed" => return decode("wait", id, rest).map(Some),
                _ => {}
            }
            let _ = tokio::time::timeout_at(until.to_instant(), notified).await;
        }
    }

    async fn claim(
        &self,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> Result<Option<Claim>, StoreError> {
        let call = ClaimCall {
            now: Timestamp::now(),
            lease_ms: millis(lease),
            aging_ms: priority_aging.map(millis),
        };
        let i = &self.inner;
        let Some(claimed) = self.batched("claim", i.claims.call(call)).await? else {
            return Ok(None);
        };
        let fields = codec::changed_pairs(claimed.0).map_err(|e| undecodable("claim", e))?;
        let id = fields
            .get(codec::field::ID)
            .and_then(|id| parse_id(id))
            .ok_or_else(|| undecodable("claim", "no id"))?;
        let job = codec::decode_job(id, fields).map_err(|e| undecodable("claim", e))?;
        let lease = job
            .lease
            .ok_or_else(|| undecodable("claim", "a claimed job without lease"))?;
        i.hub.changed(id);
        Ok(Some(Claim { job, lease }))
    }

    async fn work_available(&self, until: Timestamp) {
        // Something coming due (a retry's backoff ending) may make work too:
        // wake then, and let `claim` apply it.
        let next_due = self.inner.hub.next_due.load(Ordering::Relaxed);
        let until = match next_due {
            0 => until,
            at => until.min(Timestamp::from_millis(at)),
        };
        let _ = tokio::time::timeout_at(until.to_instant(), self.inner.hub.work.notified()).await;
    }

    async fn extend(
        &self,
        id: JobId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::Extend, now);
        inv.key(self.job_key(id))
            .arg(id.as_str())
            .arg(token.0)
            .arg(millis(lease));
        let (tag, rest) = self.run("extend", inv).await?;
        if tag != "ok" {
            return Err(StoreError::stale_lease());
        }
        let until = parse_u64("extend", rest.first().map_or(&[][..], Vec::as_slice))?
            .ok_or_else(|| undecodable("extend", "no lease end"))?;
        Ok(Lease {
            token,
            until: Timestamp::from_millis(until),
        })
    }

    async fn complete(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
    ) -> Result<Job, StoreError> {
        let fields = self.run_complete(id, token, outcome, true).await?;
        decode("complete", id, fields)
    }

    async fn complete_status(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
    ) -> Result<JobStatus, StoreError> {
        // The script ends the job with the status it is given.
        let status = outcome.status();
        self.run_complete(id, token, outcome, false).await?;
        Ok(status)
    }

    async fn retry_later(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> Result<Job, StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::RetryLater, now);
        inv.key(self.job_key(id))
            .arg(id.as_str())
            .arg(token.0)
            .arg(retry.at.as_millis())
            .arg(if retry.spend_attempt { "1" } else { "0" });
        outcome_args(&mut inv, retry.response.as_ref(), Some(&retry.error));
        let (tag, rest) = self.run("retry_later", inv).await?;
        if tag != "ok" {
            return Err(StoreError::stale_lease());
        }
        self.inner.hub.changed(id);
        self.inner.hub.work.notify_one();
        decode("retry_later", id, rest)
    }

    async fn cancel(&self, id: JobId, owner: Option<&str>) -> Result<CancelOutcome, StoreError> {
        let (tag, job) = self.run_cancel(id, owner, false).await?;
        Ok(match (tag.as_str(), job) {
            ("canceled", Some(job)) => CancelOutcome::Canceled(job),
            ("terminal", Some(job)) => CancelOutcome::AlreadyTerminal(job),
            _ => CancelOutcome::NotFound,
        })
    }

    async fn cancel_queued(
        &self,
        id: JobId,
        owner: Option<&str>,
    ) -> Result<QueuedCancel, StoreError> {
        let (tag, job) = self.run_cancel(id, owner, true).await?;
        Ok(match (tag.as_str(), job) {
            ("canceled", Some(job)) => QueuedCancel::Canceled(job),
            ("terminal" | "not_queued", Some(job)) => QueuedCancel::NotQueued(job),
            _ => QueuedCancel::NotFound,
        })
    }

    async fn claim_delivery(&self, lease: Duration) -> Result<Option<DeliveryClaim>, StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::ClaimDelivery, now);
        inv.arg(millis(lease)).arg(CLAIM_DUE_BATCH);
        let (tag, rest) = self.run("claim_delivery", inv).await?;
        if tag == "claimed" {
            let id = first_id(&rest).ok_or_else(|| undecodable("claim_delivery", "no id"))?;
            let job = decode("claim_delivery", id, rest)?;
            let lease =
                job.webhook.as_ref().and_then(|w| w.lease).ok_or_else(|| {
                    undecodable("claim_delivery", "a claimed delivery without lease")
                })?;
            return Ok(Some(DeliveryClaim { job, lease }));
        }
        let next = parse_u64(
            "claim_delivery",
            rest.first().map_or(&[][..], Vec::as_slice),
        )?;
        self.inner
            .hub
            .next_delivery
            .store(next.unwrap_or(0), Ordering::Relaxed);
        Ok(None)
    }

    async fn record_delivery(
        &self,
        id: JobId,
        token: LeaseToken,
        attempt: DeliveryAttempt,
    ) -> Result<Job, StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::RecordDelivery, now);
        inv.key(self.job_key(id))
            .arg(id.as_str())
            .arg(token.0)
            .arg(attempt.status_code.map_or(String::new(), |c| c.to_string()))
            .arg(if attempt.error.is_some() { "1" } else { "0" })
            .arg(attempt.error.as_deref().unwrap_or(""))
            .arg(if attempt.delivered { "1" } else { "0" })
            .arg(
                attempt
                    .retry_at
                    .map_or(String::new(), |at| at.as_millis().to_string()),
            );
        let (tag, rest) = self.run("record_delivery", inv).await?;
        if tag != "ok" {
            return Err(StoreError::stale_lease());
        }
        self.inner.hub.changed(id);
        self.inner.hub.deliveries.notify_one();
        decode("record_delivery", id, rest)
    }

    async fn delivery_available(&self, until: Timestamp) {
        let next = self.inner.hub.next_delivery.load(Ordering::Relaxed);
        let until = match next {
            0 => until,
            at => until.min(Timestamp::from_millis(at)),
        };
        let _ =
            tokio::time::timeout_at(until.to_instant(), self.inner.hub.deliveries.notified()).await;
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let inv = self.invocation(Function::Stats, Timestamp::now());
        let mut conn = self.inner.conn.clone();
        let out = self
            .exec("stats", async move {
                inv.invoke_async::<Vec<Vec<u8>>>(&mut conn).await
            })
            .await?;
        if out.len() != 6 {
            return Err(undecodable("stats", "not six numbers"));
        }
        let n = |i: usize| parse_u64("stats", &out[i]).map(Option::unwrap_or_default);
        let mut stats = QueueStats {
            retrying: n(3)?,
            in_progress: n(4)?,
            oldest_queued_at: parse_u64("stats", &out[5])?.map(Timestamp::from_millis),
            ..QueueStats::default()
        };
        for level in 0..Priority::LEVELS {
            stats.queued_by_priority[level] = n(level)?;
        }
        stats.queued = stats.queued_by_priority.iter().sum::<u64>() + stats.retrying;
        Ok(stats)
    }

    async fn sweep(&self) -> Result<Option<Timestamp>, StoreError> {
        let mut inv = self.invocation(Function::Sweep, Timestamp::now());
        inv.arg(SWEEP_DUE_BATCH);
        let (tag, _) = self.run("sweep", inv).await?;
        let next = parse_u64("sweep", tag.as_bytes())?.map(Timestamp::from_millis);
        self.set_next_due(next);
        Ok(next)
    }
}

/// The job id in a job hash returned by a script (its `id` field), for the
/// answers about a job the script found in Redis (claim_delivery,
/// idempotent enqueue).
fn first_id(flat: &[Vec<u8>]) -> Option<JobId> {
    flat.chunks(2)
        .find(|kv| kv[0] == codec::field::ID.as_bytes())
        .and_then(|kv| kv.get(1))
        .and_then(|id| parse_id(id))
}

/// A job id as a script answers it.
fn parse_id(bytes: &[u8]) -> Option<JobId> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A function's answer split into its tag and what follows it.
fn split_tag(
    what: &'static str,
    mut out: Vec<Vec<u8>>,
) -> Result<(String, Vec<Vec<u8>>), StoreError> {
    if out.is_empty() {
        return Err(undecodable(what, "an empty answer"));
    }
    let tag = String::from_utf8(out.remove(0)).unwrap_or_default();
    Ok((tag, out))
}
