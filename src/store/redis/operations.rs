//! The [`Store`] operations of [`RedisStore`]: each one function call
//! (`FCALL`), or a call queued on one of the batched lines (`lines.rs`), and
//! the decoding of its answer.
//!
//! An operation on one job goes to the shard its id names. A submission
//! goes to the shard its idempotency key hashes to, or else to the next
//! shard in turn; claims go round the shards, each starting one further on;
//! what concerns the whole queue (stats, the sweep, waking jobs) asks every
//! shard.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use ::redis::RedisError;

use super::activity;
use super::codec;
use super::functions::{Function, Invocation};
use super::io::{exec, failed};
use super::keys::idempotency_shard;
use super::lines::{ClaimCall, ClaimedJob, CompleteCall, Completed, EnqueueCall};
use super::wire::{
    decode, first_id, millis, outcome_args, parse_id, parse_u64, split_tag, undecodable,
};
use super::{RedisStore, Shard, Turn, CLAIM_DUE_BATCH, SWEEP_DUE_BATCH};
use crate::job::{
    CancelOutcome, DeliveryAttempt, Job, JobId, JobStatus, Lease, LeaseToken, NewJob, Outcome,
    Priority, Retry,
};
use crate::store::{
    Activity, ActivityBatch, Claim, CompletedAndClaimed, DeliveryClaim, EnqueueError, Enqueued,
    QueueStats, QueuedCancel, Store, StoreError, Swept, BATCH_SCAN,
};
use crate::time::Timestamp;

impl RedisStore {
    /// Runs a Redis call on the I/O thread within the timeout (`io.rs`).
    async fn exec<T, F>(&self, what: &'static str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
        T: Send + 'static,
    {
        let i = &self.inner;
        let fut = async move { fut.await.map_err(failed(what)) };
        exec(&i.io, i.hold_clock, i.timeout, what, fut).await
    }

    /// Records an outcome through the completion line: the job's fields
    /// when `send_job` asks for them (else none), or `None` when the lease
    /// was stale; and the job claimed after it when `then_claim` asks for
    /// one (claimed whatever the completion's answer).
    async fn run_complete(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
        send_job: bool,
        then_claim: Option<ClaimCall>,
    ) -> Result<Completed, StoreError> {
        let call = CompleteCall {
            now: Timestamp::now(),
            id,
            token,
            outcome,
            send_job,
            then_claim,
        };
        let shard = self.inner.shard_of(id);
        let done = self
            .batched("complete", shard.completions.call(call))
            .await?;
        if done.job.is_some() {
            self.inner.hub.changed(id);
        }
        Ok(done)
    }

    /// A claimed job as the claim function sent it, decoded (and its local
    /// waiters told).
    fn claimed(&self, claimed: ClaimedJob) -> Result<Claim, StoreError> {
        let fields = codec::changed_pairs(claimed.0).map_err(|e| undecodable("claim", e))?;
        let id = fields
            .get(codec::field::ID)
            .and_then(|id| parse_id(id))
            .ok_or_else(|| undecodable("claim", "no id"))?;
        let job = codec::decode_job(id, fields).map_err(|e| undecodable("claim", e))?;
        let lease = job
            .lease
            .ok_or_else(|| undecodable("claim", "a claimed job without lease"))?;
        self.inner.hub.changed(id);
        Ok(Claim { job, lease })
    }

    /// Claims from the shards in turn, starting at shard `start`.
    async fn claim_from(&self, start: usize, call: ClaimCall) -> Result<Option<Claim>, StoreError> {
        for (_, shard) in self.inner.starting_at(start) {
            if let Some(claimed) = self.batched("claim", shard.claims.call(call)).await? {
                return self.claimed(claimed).map(Some);
            }
        }
        Ok(None)
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

    /// A call of `function` on the shard that holds job `id`.
    fn invocation(&self, function: Function, id: JobId, now: Timestamp) -> Invocation {
        self.inner.shard_of(id).keys.invocation(function, now)
    }

    /// Calls `function` on every shard (its arguments after the common ones
    /// from `args`), at once, and answers in the order of the shards.
    async fn on_every_shard<T: ::redis::FromRedisValue + Send + 'static>(
        &self,
        what: &'static str,
        function: Function,
        args: impl Fn(&mut Invocation),
    ) -> Result<Vec<T>, StoreError> {
        let now = Timestamp::now();
        let calls = self.inner.shards.iter().map(|shard| {
            let mut inv = shard.keys.invocation(function, now);
            args(&mut inv);
            let mut conn = self.inner.conn.clone();
            self.exec(what, async move { inv.invoke_async::<T>(&mut conn).await })
        });
        futures_util::future::try_join_all(calls).await
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
        let mut inv = self.invocation(Function::Cancel, id, now);
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
        self.inner.shard_of(id).keys.job(id)
    }

    /// Makes a submission on `shard` (its index `i`), with an id of that
    /// shard.
    async fn enqueue_on(
        &self,
        (i, shard): (usize, &Shard),
        job: &mut Job,
        idempotency: Option<(Option<&str>, &str)>,
        max_queued: usize,
        now: Timestamp,
    ) -> Result<(String, Vec<Vec<u8>>), StoreError> {
        let shards = self.inner.shards.len();
        job.id = JobId::random_in(i, shards);
        // The queue limit is the namespace's: each shard holds its share.
        let share = max_queued / shards + usize::from(i < max_queued % shards);
        let call = EnqueueCall {
            now,
            id: job.id,
            priority: job.options.priority.level(),
            next_due: job.next_due().map_or(0, Timestamp::as_millis),
            fields: codec::new_job_fields(job),
            slot: idempotency.map(|(owner, key)| shard.keys.idempotency(owner, key)),
            max_queued: share,
        };
        let answer = self
            .batched("enqueue", shard.submissions.call(call))
            .await?;
        split_tag("enqueue", answer)
    }
}

impl Store for RedisStore {
    async fn enqueue(&self, new: NewJob, max_queued: usize) -> Result<Enqueued, EnqueueError> {
        let now = Timestamp::now();
        let i = &self.inner;
        let mut job = Job::new(JobId::random(), new, now);
        let owner = job.options.owner.clone();
        let key = job.options.idempotency_key.clone();
        let idempotency = key.as_deref().map(|k| (owner.as_deref(), k));
        let (tag, rest) = match idempotency {
            // A key's job lives on the key's shard, so a resubmission finds it.
            Some((owner, key)) => {
                let at = idempotency_shard(owner, key, i.shards.len());
                let shard = (at, &i.shards[at]);
                self.enqueue_on(shard, &mut job, idempotency, max_queued, now)
                    .await?
            }
            // Else the next shard in turn; one at its share of the limit
            // passes the job on, so the namespace is full only when all are.
            None => {
                let mut answer = None;
                for shard in i.in_turn(Turn::Submit) {
                    let (tag, rest) = self
                        .enqueue_on(shard, &mut job, None, max_queued, now)
                        .await?;
                    let full = tag == "full";
                    answer = Some((tag, rest));
                    if !full {
                        break;
                    }
                }
                answer.expect("a store has a shard")
            }
        };
        match tag.as_str() {
            "created" => {
                i.hub.work.notify_one();
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
            let mut inv = self.invocation(Function::Peek, id, now);
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
        self.claim_from(self.inner.turn(Turn::Claim), call).await
    }

    async fn claim_batch(
        &self,
        key: &str,
        max_items: u32,
        max_bytes: u64,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> Result<Vec<Claim>, StoreError> {
        // Jobs of one batch key spread over the shards: take from each in
        // turn what is left of the budget.
        let (mut items, mut bytes) = (max_items, max_bytes);
        let mut claims = Vec::new();
        for (_, shard) in self.inner.in_turn(Turn::Claim) {
            if items == 0 {
                break;
            }
            let mut inv = shard
                .keys
                .invocation(Function::ClaimBatch, Timestamp::now());
            inv.arg(millis(lease))
                .arg(priority_aging.map_or(String::new(), |a| millis(a).to_string()))
                .arg(key)
                .arg(items)
                .arg(bytes)
                .arg(BATCH_SCAN);
            let mut conn = self.inner.conn.clone();
            let jobs = self
                .exec("claim_batch", async move {
                    inv.invoke_async::<Vec<Vec<Vec<u8>>>>(&mut conn).await
                })
                .await?;
            for flat in jobs {
                let id = first_id(&flat).ok_or_else(|| undecodable("claim_batch", "no id"))?;
                let job = decode("claim_batch", id, flat)?;
                let lease = job
                    .lease
                    .ok_or_else(|| undecodable("claim_batch", "a claimed job without lease"))?;
                let weight = job.options.batch.as_ref().map_or(1, |tag| tag.items);
                items = items.saturating_sub(weight);
                bytes = bytes.saturating_sub(job.request.body.len() as u64);
                self.inner.hub.changed(id);
                claims.push(Claim { job, lease });
            }
        }
        Ok(claims)
    }

    async fn work_available(&self, until: Timestamp) {
        // Something coming due (a retry's backoff ending) may make work too:
        // wake then, and let `claim` apply it.
        let until = match self.inner.hub.next_due() {
            None => until,
            Some(at) => until.min(at),
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
        let mut inv = self.invocation(Function::Extend, id, now);
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
        let done = self.run_complete(id, token, outcome, true, None).await?;
        let fields = done.job.ok_or_else(StoreError::stale_lease)?;
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
        let done = self.run_complete(id, token, outcome, false, None).await?;
        done.job.map(|_| status).ok_or_else(StoreError::stale_lease)
    }

    async fn complete_and_claim(
        &self,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> CompletedAndClaimed {
        let call = ClaimCall {
            now: Timestamp::now(),
            lease_ms: millis(lease),
            aging_ms: priority_aging.map(millis),
        };
        let start = self.inner.turn(Turn::Claim);
        if start != id.shard(self.inner.shards.len()) {
            // Not the turn of this job's shard to be claimed from: the
            // claim goes where it would have gone, beside the completion.
            let complete = self.complete_status(id, token, outcome);
            let (status, next) = tokio::join!(complete, self.claim_from(start, call));
            return CompletedAndClaimed { status, next };
        }
        let status = outcome.status();
        match self
            .run_complete(id, token, outcome, false, Some(call))
            .await
        {
            Ok(done) => CompletedAndClaimed {
                status: done.job.map(|_| status).ok_or_else(StoreError::stale_lease),
                next: done.next.map_or(Ok(None), |c| self.claimed(c).map(Some)),
            },
            // Whether the claim was made is not known: a job it took
            // lapses, and the caller claims as usual.
            Err(e) => CompletedAndClaimed {
                status: Err(e),
                next: Ok(None),
            },
        }
    }

    async fn retry_later(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> Result<Job, StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::RetryLater, id, now);
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

    async fn wake_unavailable(&self) -> Result<u64, StoreError> {
        let answers: Vec<Vec<Vec<u8>>> = self
            .on_every_shard("wake_unavailable", Function::WakeUnavailable, |_| {})
            .await?;
        let mut woken = 0;
        for out in answers {
            let (tag, _) = split_tag("wake_unavailable", out)?;
            woken += parse_u64("wake_unavailable", tag.as_bytes())?.unwrap_or(0);
        }
        if woken > 0 {
            // This replica's idle workers, at once (others hear the
            // function's message on the work channel).
            self.inner.hub.work.notify_waiters();
        }
        Ok(woken)
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
        for (i, shard) in self.inner.in_turn(Turn::Deliver) {
            let mut inv = shard
                .keys
                .invocation(Function::ClaimDelivery, Timestamp::now());
            inv.arg(millis(lease)).arg(CLAIM_DUE_BATCH);
            let (tag, rest) = self.run("claim_delivery", inv).await?;
            if tag == "claimed" {
                let id = first_id(&rest).ok_or_else(|| undecodable("claim_delivery", "no id"))?;
                let job = decode("claim_delivery", id, rest)?;
                let lease = job.webhook.as_ref().and_then(|w| w.lease).ok_or_else(|| {
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
                .set_next_delivery(i, next.map(Timestamp::from_millis));
        }
        Ok(None)
    }

    async fn record_delivery(
        &self,
        id: JobId,
        token: LeaseToken,
        attempt: DeliveryAttempt,
    ) -> Result<Job, StoreError> {
        let now = Timestamp::now();
        let mut inv = self.invocation(Function::RecordDelivery, id, now);
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
        let until = match self.inner.hub.next_delivery() {
            None => until,
            Some(at) => until.min(at),
        };
        let _ =
            tokio::time::timeout_at(until.to_instant(), self.inner.hub.deliveries.notified()).await;
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let answers: Vec<Vec<Vec<u8>>> = self
            .on_every_shard("stats", Function::Stats, |_| {})
            .await?;
        let mut stats = QueueStats::default();
        for out in answers {
            if out.len() != 6 {
                return Err(undecodable("stats", "not six numbers"));
            }
            let n = |i: usize| parse_u64("stats", &out[i]).map(Option::unwrap_or_default);
            stats.retrying += n(3)?;
            stats.in_progress += n(4)?;
            for level in 0..Priority::LEVELS {
                stats.queued_by_priority[level] += n(level)?;
            }
            let oldest = parse_u64("stats", &out[5])?.map(Timestamp::from_millis);
            stats.oldest_queued_at = match (stats.oldest_queued_at, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        stats.queued = stats.queued_by_priority.iter().sum::<u64>() + stats.retrying;
        Ok(stats)
    }

    async fn record_activity(&self, batch: ActivityBatch) -> Result<(), StoreError> {
        let Some(pipe) = activity::record(&self.inner.shards[0].keys, &batch) else {
            return Ok(());
        };
        let mut conn = self.inner.conn.clone();
        self.exec("record_activity", async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    async fn activity(&self, since: Timestamp) -> Result<Activity, StoreError> {
        let now = Timestamp::now();
        let pipe = activity::read(&self.inner.shards[0].keys, since, now);
        let mut conn = self.inner.conn.clone();
        let answers = self
            .exec("activity", async move {
                pipe.query_async::<Vec<::redis::Value>>(&mut conn).await
            })
            .await?;
        activity::decode(since, now, answers)
    }

    async fn sweep(&self) -> Result<Swept, StoreError> {
        let answers: Vec<Vec<Vec<u8>>> = self
            .on_every_shard("sweep", Function::Sweep, |inv| {
                inv.arg(SWEEP_DUE_BATCH);
            })
            .await?;
        let mut swept = Swept::default();
        for (i, out) in answers.into_iter().enumerate() {
            let (tag, rest) = split_tag("sweep", out)?;
            let next = parse_u64("sweep", tag.as_bytes())?.map(Timestamp::from_millis);
            self.inner.hub.set_next_due(i, next);
            swept.next_due = match (swept.next_due, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let [expired, abandoned] = rest.as_slice() else {
                return Err(undecodable(
                    "sweep",
                    "no counts of expired and abandoned jobs",
                ));
            };
            // Each shard counts the jobs that ended on it: the namespace's
            // counts are the sums.
            swept.expired += parse_u64("sweep", expired)?.unwrap_or(0);
            swept.abandoned += parse_u64("sweep", abandoned)?.unwrap_or(0);
        }
        Ok(swept)
    }
}
