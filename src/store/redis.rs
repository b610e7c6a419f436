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
//! # Shards and Redis Cluster
//!
//! A namespace is one queue on one hash tag unless
//! [`shards`](RedisStoreBuilder::shards) says otherwise: then it spreads
//! over that many shards, each a queue of its own in the layout below,
//! under a tag of its own. On a Redis Cluster
//! ([`RedisStore::cluster`]) each shard's keys live on the master of its
//! tag's slot, so the shards share the masters' work. Shard `i` of `S` has
//! the tag `ns/i/n`, `n` the least number that puts it in the `i`-th
//! `S`-th of the slots: on a cluster whose masters hold equal runs of slots,
//! as `redis-cli --cluster create` makes them, `S` shards on `S` masters
//! are one per master. (One shard keeps the tag `ns`.)
//!
//! A job's id names its shard (its first character, modulo `S`), so a
//! lookup, a cancel, a long-poll or a result is one round trip to the one
//! node that holds the job. A submission with an idempotency key goes to
//! the shard the key hashes to, so every replica finds the key's job; one
//! without goes to the next shard in turn. The queue limit is the
//! namespace's: each shard holds its share, and a submission without a key
//! that finds its shard at its share is passed to the next, so the
//! namespace refuses work only when every shard is full (a keyed one
//! whose shard is full is refused then). The stats, the sweep and
//! [`wake_unavailable`](crate::Store::wake_unavailable) ask every shard at
//! once.
//!
//! What holds across shards: every claim starts at the next shard in turn
//! and takes the job that runs next on the first shard that has one, so
//! each shard gets its share of the claims and none waits behind the
//! others. Priority, aging and first-in-first-out order the jobs of one
//! shard; across shards a job of priority 2 may run before one of priority
//! 0, and a later job before an earlier one. A client that needs one job
//! to run before another must not submit both at once to a sharded
//! namespace. Every store of a namespace must give the same shard count:
//! the first records it (`{ns}:shards`) and [`connect`](RedisStoreBuilder::connect)
//! refuses another.
//!
//! Pub/sub messages are published as usual; on a cluster each reaches
//! every node, so the store subscribes on one node (the next of its seeds
//! when that one goes).
//!
//! # Layout
//!
//! Every key of a shard shares one hash tag, written `{ns}` below (the
//! namespace, `tower-defer` unless
//! [`namespace`](RedisStoreBuilder::namespace) says otherwise, when there
//! is one shard), so every key a script touches lives in one hash slot, as
//! Redis Cluster requires.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:job:<id>` | hash | one job: lifecycle fields, request, response (see below) |
//! | `{ns}:ready:0` `:1` `:2` | sorted set | runnable jobs per priority; score = a global sequence, so FIFO within a level |
//! | `{ns}:seq` | string | that sequence (`INCR`) |
//! | `{ns}:due` | sorted set | each job's [`Job::next_due`](crate::Job::next_due) in ms: deadlines, retries, leases, TTLs |
//! | `{ns}:n:retrying`, `{ns}:n:in_progress` | string | counters for [`stats`](crate::Store::stats) and the queue limit |
//! | `{ns}:n:expired` | string | jobs expired (by a sweep or a claim) since a [`sweep`](crate::Store::sweep) last took the count (`GETDEL`) to report it |
//! | `{ns}:n:abandoned` | string | jobs failed as abandoned (a lease lapsed for the last allowed time, in a sweep or a claim) since a [`sweep`](crate::Store::sweep) last took the count (`GETDEL`) to report it |
//! | `{ns}:idem:-:<key>`, `{ns}:idem:<len>:<owner>:<key>` | string | the job holding an idempotency key (owner length-prefixed, so owners and keys may hold `:`) |
//! | channel `{ns}:changed` | pub/sub | job ids (separated by spaces), on every change of those jobs |
//! | `{ns}:deliveries` | sorted set | webhook deliveries nobody holds, by [`Job::delivery_ready_at`](crate::Job::delivery_ready_at) |
//! | `{ns}:unavailable` | sorted set | queued jobs waiting out a backoff because the upstream was unavailable (score = `created_at`), which [`wake_unavailable`](crate::Store::wake_unavailable) makes runnable |
//! | channel `{ns}:work` | pub/sub | job ids, when work becomes ready (or a retry is scheduled) |
//! | channel `{ns}:deliver` | pub/sub | job ids, when webhook deliveries become claimable |
//! | `{ns}:activity:<start ms>`, `{ns}:recent` | hash, list | the live page's buckets and recent ids, on shard 0's tag only (see below) |
//!
//! A job hash keeps its lifecycle scalars (status, attempts, lapses, revision,
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
//! methods of [`Job`](crate::Job) and the bookkeeping of [`MemoryStore`](super::MemoryStore)
//! (ready lists with aging, the due index, counters) and publishes the change;
//! the client never reads, modifies and writes a job. Keys the client can name
//! are passed in `KEYS`; a script that reaches a job it found inside Redis
//! (the head of a ready or due set, in `claim` and `sweep`) builds its key
//! from the `{ns}:` prefix, which stays in the same hash slot thanks to the tag.
//! The functions' source is `src/store/redis/lua/`, one file per function
//! (each headed by its `KEYS`, `ARGV` and answer) after the code they share
//! (`prelude.lua`, `job.lua`, `bookkeeping.lua`, `claiming.lua`), as `FUNCTION LIST
//! WITHCODE` shows them joined into one library.
//!
//! The client passes "now" ([`Timestamp::now`](crate::time::Timestamp::now), which follows tokio's clock)
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
//! | submit ([`enqueue`](crate::Store::enqueue)) | at most 1 (`FCALL`) |
//! | [`claim`](crate::Store::claim) | at most 1 (`FCALL`; also applies what came due) |
//! | [`complete`](crate::Store::complete), [`complete_status`](crate::Store::complete_status) | at most 1 (`FCALL`; the worker's `complete_status` gets no job back) |
//! | [`complete_and_claim`](crate::Store::complete_and_claim) | at most 1 (`FCALL`: the completion's, which then claims on the job's shard; with shards, when it is not that shard's turn, a completion and a claim at once) |
//! | one lookup ([`get`](crate::Store::get)) | 1 (`HGETALL`) |
//! | [`wake_unavailable`](crate::Store::wake_unavailable) | 1 (`FCALL`; the work of one transition per job woken) |
//! | a long-poll ([`wait`](crate::Store::wait)) | 1 per change seen, plus 1 at its deadline |
//!
//! Submissions, claims, and completions that arrive while one of their kind
//! is in flight are sent together in one script call when it returns (see
//! `batch.rs`): under load, sixteen workers share a round trip or two
//! instead of taking one each, and so do the submissions of many clients.
//! Such a script also writes each counter, index and channel once for all
//! its jobs rather than once per job.
//!
//! A worker that has a slot for its next job records a result with
//! [`complete_and_claim`](crate::Store::complete_and_claim): the
//! completion's call claims that job too, so under load a job's run costs
//! one share of a call rather than two.
//!
//! The worker also watches a running job (that is how a cancel on another
//! replica reaches it): one small read when the call starts, then one read
//! and one lease extension per third of the lease. After a Redis restart
//! that lost the functions (one without persistence), the first call that
//! finds them missing costs two more round trips once (`FUNCTION LOAD`).
//!
//! The live page's record is written by each replica every few seconds,
//! never on a job's path: one pipeline a flush ([`record_activity`](crate::Store::record_activity):
//! a `HINCRBY` per non-zero count of the buckets it touched, an `EXPIRE`
//! each, an `LPUSH` and an `LTRIM` for the ids), and one a read of 15
//! minutes ([`activity`](crate::Store::activity): an `HGETALL` per bucket
//! and an `LRANGE`), both on shard 0's node.
//!
//! # Notifications
//!
//! One pub/sub connection per store (clones share it) dispatches `{ns}:changed`
//! to local waiters of that job and `{ns}:work` to idle workers; operations
//! of this process also wake local waiters directly. An idle replica makes
//! about two calls a second per shard (the worker's claim, which goes round
//! the shards, and the sweep, which asks each; each capped at one second). When the subscription is lost it is made again, and every
//! local waiter is woken to read again, so no change is missed for long.
//!
//! # Failures
//!
//! Commands go through one multiplexed connection that reconnects by itself.
//! Every operation is bounded by [`timeout`](RedisStoreBuilder::timeout)
//! (default 2 s), and opening a connection (TCP, the TLS handshake, `AUTH`)
//! by [`connect_timeout`](RedisStoreBuilder::connect_timeout) (default 2 s):
//! while Redis is down, operations fail promptly with
//! [`StoreError::is_unavailable`](crate::store::StoreError::is_unavailable) (the API answers `503` with `Retry-After`)
//! and nothing hangs. An accepted job was written by its enqueue script
//! before the `201`.
//!
//! # TLS, users and permissions
//!
//! A `rediss://` URL (feature `tls`) speaks TLS on both of the store's
//! connections, commands and pub/sub. The server's certificate must chain to
//! Mozilla's roots (compiled in, no system lookup), or, once
//! [`root_certificates`](RedisStoreBuilder::root_certificates) is given (a
//! private CA's certificate), to those only. redis-rs builds its TLS
//! configuration on rustls's process-wide provider: ring, the only one this
//! crate compiles, unless your program also compiles another (aws-lc-rs,
//! through some other dependency); it must then install one
//! (`CryptoProvider::install_default`) before connecting.
//!
//! An ACL user and its password go in the URL, percent-encoded as in any
//! URL (`p@ss` is `p%40ss`): `rediss://app:p%40ss@redis.internal:6380/0`.
//! The store needs the keys and channels of its namespace, the read and
//! write commands its functions run, `FCALL`, and `FUNCTION LOAD` (it loads
//! its functions when it connects), and nothing dangerous; for namespace
//! `my-app`:
//!
//! ```text
//! ACL SETUSER tower-defer on >PASSWORD ~{my-app}:* &{my-app}:* +@read +@write +@pubsub +@connection -@dangerous +fcall +function|load
//! ```
//!
//! A namespace of several shards also needs the keys and channels of its
//! shards' tags, `~{my-app/* &{my-app/*`.
//!
//! [`connect`](RedisStoreBuilder::connect) fails within its timeouts,
//! naming the cause when it is one of these: authentication failed
//! (`WRONGPASS`), authentication required (`NOAUTH`), a permission missing
//! (`NOPERM`, with the keys and channels needed), a certificate not trusted,
//! a TLS handshake that failed or never finished (a plain-text server behind
//! `rediss://`), a connection refused, a server not reached, a Redis older
//! than 7.0.
//!
//! # Durability
//!
//! A submission is acknowledged (`201`) once the master that holds its
//! shard has written it; with [`Durability::Replicated`], once a replica has
//! it too (`WAIT`), so that a failover loses no acknowledged job. Run Redis with `appendonly yes` so queued jobs survive a restart, and
//! `appendfsync always` to lose nothing acknowledged when Redis crashes or
//! is killed: with `everysec`, Redis may hold writes back while a sync runs,
//! and a crash of the process loses the last second or two of them. With
//! RDB snapshots only, a restart loses what came after the last one.
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
//! its answer awaited. (The store's own tests, on tokio's paused clock, use
//! a hidden builder hook, `hold_paused_clock`, so that the paused clock does
//! not run ahead while Redis answers; a deployment never needs it.)

mod activity;
mod batch;
mod builder;
mod codec;
mod conn;
mod diagnose;
mod functions;
mod io;
mod keys;
mod life;
mod lines;
mod operations;
mod pubsub;
mod wire;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use self::batch::Batcher;
pub use self::builder::{Durability, RedisStoreBuilder};
use self::conn::Conn;
use self::io::IoThread;
use self::keys::Keys;
use self::lines::{ClaimCall, Claimed, CompleteCall, Completed, EnqueueCall, Submitted};
use self::pubsub::Hub;
use crate::job::JobId;

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

// Fields drop in order: the connections and the lines' tasks before the
// I/O thread they run on.
struct Inner {
    conn: Conn,
    shards: Box<[Shard]>,
    hub: Arc<Hub>,
    /// Where the next submission without an idempotency key, the next claim
    /// and the next delivery claim start among the shards: each goes round.
    turns: [AtomicUsize; 3],
    io: Handle,
    timeout: Duration,
    hold_clock: bool,
    _io_thread: IoThread,
}

/// One shard of the namespace: its keys (one hash tag) and its lines.
struct Shard {
    keys: Arc<Keys>,
    /// Submissions, coalesced (see `batch.rs`).
    submissions: Batcher<EnqueueCall, Submitted>,
    /// Claims, coalesced.
    claims: Batcher<ClaimCall, Claimed>,
    /// Completions, coalesced.
    completions: Batcher<CompleteCall, Completed>,
}

/// Which of the rounds in [`Inner::turns`].
#[derive(Clone, Copy)]
enum Turn {
    Submit = 0,
    Claim = 1,
    Deliver = 2,
}

impl Inner {
    /// The shard that holds job `id`.
    fn shard_of(&self, id: JobId) -> &Shard {
        &self.shards[id.shard(self.shards.len())]
    }

    /// The shard this turn of `round` starts at: each turn starts one
    /// further on, so no shard waits behind the others.
    fn turn(&self, round: Turn) -> usize {
        let n = self.shards.len();
        if n == 1 {
            0
        } else {
            self.turns[round as usize].fetch_add(1, Ordering::Relaxed) % n
        }
    }

    /// The shards in the order this turn of `round` visits them.
    fn in_turn(&self, round: Turn) -> impl Iterator<Item = (usize, &Shard)> {
        self.starting_at(self.turn(round))
    }

    /// Every shard with its index, from shard `start` round to the one
    /// before it.
    fn starting_at(&self, start: usize) -> impl Iterator<Item = (usize, &Shard)> {
        let n = self.shards.len();
        (0..n).map(move |k| {
            let i = (start + k) % n;
            (i, &self.shards[i])
        })
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.shards[0].keys.prefix)
            .field("shards", &self.inner.shards.len())
            .field("cluster", &matches!(self.inner.conn, Conn::Cluster(_)))
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}
