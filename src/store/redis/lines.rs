//! The batched lines: submissions, claims and completions, each coalesced
//! into one function call per batch (the mechanism is `batch.rs`). Each
//! line says what one call carries, how a batch becomes one `FCALL`, and
//! how the answer splits back into one answer per call.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use super::batch::Batcher;
use super::codec;
use super::conn::Conn;
use super::functions::{Function, Invocation};
use super::io::{bounded, failed};
use super::keys::Keys;
use super::pubsub::Hub;
use super::wire::{outcome_args, parse_u64, undecodable};
use super::CLAIM_DUE_BATCH;
use crate::job::{JobId, LeaseToken, Outcome};
use crate::store::StoreError;
use crate::time::Timestamp;

/// How many calls one batch carries at most: a script blocks Redis while it
/// runs, so a batch must not grow without bound.
const MAX_BATCH: usize = 64;

/// One submission, waiting for its batch.
pub(super) struct EnqueueCall {
    pub(super) now: Timestamp,
    pub(super) id: JobId,
    pub(super) priority: u8,
    pub(super) next_due: u64,
    /// The new job's fields, as `HSET` takes them.
    pub(super) fields: Vec<(&'static str, Vec<u8>)>,
    /// The key of its idempotency slot, if it has a key.
    pub(super) slot: Option<String>,
    pub(super) max_queued: usize,
}

/// The enqueue function's answer for one submission: its tag, then what
/// follows it.
pub(super) type Submitted = Vec<Vec<u8>>;

/// The submission line: submissions that arrive together are made by one
/// `enqueue` call, in the order they arrived, at the latest "now" of them.
/// A submission costs Redis little beyond the call itself (the keys and
/// the function's start, counting the queue, writing the ready lists, the
/// due index and the work channel), which a batch pays once.
///
/// With `replicated` (durability [`Replicated`](super::Durability::Replicated)),
/// `conn` is the submissions' own connection, and a batch is answered only
/// once a replica has it (`WAIT`, for at most that long); when none has it
/// in time, every submission of the batch fails as unavailable (the client
/// is told 503, and may submit again: its job may or may not be kept).
pub(super) fn enqueue_line(
    io: &Handle,
    conn: &Conn,
    keys: &Arc<Keys>,
    timeout: Duration,
    replicated: Option<Duration>,
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
    line.start(io, conn, keys, timeout, replicated)
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
    /// Starts the line; with `replicated`, each batch waits for a replica
    /// to have it (see [`enqueue_line`]).
    fn start(
        self,
        io: &Handle,
        conn: &Conn,
        keys: &Arc<Keys>,
        timeout: Duration,
        replicated: Option<Duration>,
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
                if let Some(within) = replicated {
                    let wait = async {
                        conn.wait_for_replica(keys.anchor(), within)
                            .await
                            .map_err(failed("WAIT"))
                    };
                    let replicas = bounded(timeout, "WAIT", wait).await?;
                    if replicas == 0 {
                        return Err(StoreError::unavailable(
                            format!(
                                "redis: no replica acknowledged the write within {} ms \
                                 (durability replicated)",
                                within.as_millis()
                            ),
                            "WAIT answered 0",
                        ));
                    }
                }
                if out.len() != calls.len() {
                    return Err(undecodable(line.what, "not one answer per job"));
                }
                Ok(out.into_iter().map(line.answer).collect())
            }
        })
    }
}

/// One worker's claim, waiting for its batch.
#[derive(Clone, Copy)]
pub(super) struct ClaimCall {
    pub(super) now: Timestamp,
    pub(super) lease_ms: u64,
    pub(super) aging_ms: Option<u64>,
}

/// A claimed job, or `None` when there was no job for this claim.
pub(super) type Claimed = Option<ClaimedJob>;

/// A claimed job as the claim script sends it: field, value pairs, its
/// fields as they were read and then the changes the claim made, a deleted
/// field without a value (one read serves the transition and the answer).
pub(super) struct ClaimedJob(pub(super) Vec<Option<Vec<u8>>>);

/// The claim line: claims that arrive together are made by one `claim`
/// script call per lease and aging period (one in practice: a pool asks
/// with the same ones every time). The batch claims at the latest "now" of
/// its calls, the one closest to when the script runs.
pub(super) fn claim_line(
    io: &Handle,
    conn: &Conn,
    keys: &Arc<Keys>,
    hub: &Arc<Hub>,
    shard: usize,
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
                note_next_due("claim", &mut out, group.len(), &hub, shard)?;
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
pub(super) struct CompleteCall {
    pub(super) now: Timestamp,
    pub(super) id: JobId,
    pub(super) token: LeaseToken,
    pub(super) outcome: Outcome,
    /// Whether the caller wants the job back (`complete`) or only to know
    /// that it was recorded (`complete_status`).
    pub(super) send_job: bool,
    /// The claim of the caller's next job, made in the same call
    /// (`complete_and_claim`), if it asks for one.
    pub(super) then_claim: Option<ClaimCall>,
}

/// A completion's answer.
pub(super) struct Completed {
    /// The completed job's fields (none unless asked for), or `None` when
    /// the lease was stale.
    pub(super) job: Option<Vec<Vec<u8>>>,
    /// The job claimed after it, when the caller asked for one and there
    /// was one.
    pub(super) next: Claimed,
}

/// The completion line: results that arrive together are recorded by one
/// `complete` script call, each at its own "now"; then the same call claims
/// a job for each caller that asked for its next one (those asking with the
/// lease and aging period of the first of them: in practice all, as a pool
/// asks with the same ones every time; the others get none, and claim as
/// usual). When such a claim finds no job, the next due time goes to
/// idle workers, as the claim line sends it.
pub(super) fn complete_line(
    io: &Handle,
    conn: &Conn,
    keys: &Arc<Keys>,
    hub: &Arc<Hub>,
    shard: usize,
    timeout: Duration,
) -> Batcher<CompleteCall, Completed> {
    let (conn, keys, hub) = (conn.clone(), keys.clone(), hub.clone());
    Batcher::start(io, MAX_BATCH, move |calls: Vec<CompleteCall>| {
        let (mut conn, keys, hub) = (conn.clone(), keys.clone(), hub.clone());
        async move {
            let now = calls
                .iter()
                .map(|c| c.now)
                .max()
                .unwrap_or_else(Timestamp::now);
            let first = calls.iter().find_map(|c| c.then_claim);
            let claims = |c: &CompleteCall| {
                matches!((c.then_claim, first), (Some(a), Some(b))
                    if a.lease_ms == b.lease_ms && a.aging_ms == b.aging_ms)
            };
            let want = calls.iter().filter(|c| claims(c)).count();
            let mut inv = keys.invocation(Function::Complete, now);
            match first {
                Some(c) => inv
                    .arg(c.lease_ms)
                    .arg(c.aging_ms.map_or(String::new(), |a| a.to_string())),
                None => inv.arg("").arg(""),
            };
            inv.arg(CLAIM_DUE_BATCH).arg(want);
            for c in &calls {
                add_completion(&keys, &mut inv, c);
            }
            let run = async {
                inv.invoke_async(&mut conn)
                    .await
                    .map_err(failed("complete"))
            };
            let out: Vec<::redis::Value> = bounded(timeout, "complete", run).await?;
            let expected = calls.len() + usize::from(want > 0);
            if out.len() < expected {
                return Err(undecodable("complete", "not one answer per job"));
            }
            let mut out = out.into_iter();
            let mut answers: Vec<Result<Completed, StoreError>> = Vec::with_capacity(calls.len());
            for _ in &calls {
                let job = out.next().map_or(Ok(None), completion);
                answers.push(job.map(|job| Completed { job, next: None }));
            }
            if want == 0 {
                return Ok(answers);
            }
            note_next_due("complete", &mut out, want, &hub, shard)?;
            for (c, answer) in calls.iter().zip(answers.iter_mut()) {
                if !claims(c) {
                    continue;
                }
                let Some(job) = out.next() else { break };
                // A job that does not decode, or whose caller's completion
                // did not, is not handed out: its lease lapses.
                if let (Ok(answer), Ok(job)) = (answer, ::redis::from_redis_value(job)) {
                    answer.next = Some(ClaimedJob(job));
                }
            }
            Ok(answers)
        }
    })
}

/// Reads the next due time a claim sends before its jobs (`what` names the
/// function), and when fewer than the `wanted` jobs follow it (some claim
/// found none) gives it to the hub: idle workers wait at most until then,
/// as it may make work.
fn note_next_due(
    what: &'static str,
    out: &mut std::vec::IntoIter<::redis::Value>,
    wanted: usize,
    hub: &Hub,
    shard: usize,
) -> Result<(), StoreError> {
    let next_due: Vec<u8> = out
        .next()
        .map(::redis::from_redis_value)
        .transpose()
        .map_err(|e| undecodable(what, e))?
        .ok_or_else(|| undecodable(what, "an empty answer"))?;
    if out.len() < wanted {
        let next_due = parse_u64(what, &next_due)?.map(Timestamp::from_millis);
        hub.set_next_due(shard, next_due);
    }
    Ok(())
}

/// One completion's keys and arguments.
fn add_completion(keys: &Keys, inv: &mut Invocation, c: &CompleteCall) {
    inv.key(keys.job(c.id));
    inv.arg(c.now.as_millis())
        .arg(c.id.as_str())
        .arg(c.token.0)
        .arg(c.outcome.status().as_str())
        .arg(if c.send_job { "1" } else { "0" });
    outcome_args(inv, c.outcome.response.as_ref(), c.outcome.error.as_ref());
    inv.arg(
        c.outcome
            .batch_size
            .map_or(String::new(), |n| n.to_string()),
    );
}

/// One completion's answer: 'ok' or 'stale', or the job sent back after
/// its tag.
fn completion(answer: ::redis::Value) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
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
}
