//! The [`Store`] operations of [`RedisStore`]: each one function call
//! (`FCALL`), or a call queued on one of the batched lines (`lines.rs`), and
//! the decoding of its answer.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::RedisError;

use super::codec;
use super::functions::{Function, Invocation};
use super::io::{exec, failed};
use super::lines::{ClaimCall, CompleteCall, EnqueueCall};
use super::wire::{
    decode, first_id, millis, outcome_args, parse_id, parse_u64, split_tag, undecodable,
};
use super::{RedisStore, CLAIM_DUE_BATCH, SWEEP_DUE_BATCH};
use crate::job::{
    CancelOutcome, DeliveryAttempt, Job, JobId, JobStatus, Lease, LeaseToken, NewJob, Outcome,
    Priority, Retry,
};
use crate::store::{
    Claim, DeliveryClaim, EnqueueError, Enqueued, QueueStats, QueuedCancel, Store, StoreError,
    BATCH_SCAN,
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

    async fn claim_batch(
        &self,
        key: &str,
        max_items: u32,
        max_bytes: u64,
        lease: Duration,
        priority_aging: Option<Duration>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut inv = self.invocation(Function::ClaimBatch, Timestamp::now());
        inv.arg(millis(lease))
            .arg(priority_aging.map_or(String::new(), |a| millis(a).to_string()))
            .arg(key)
            .arg(max_items)
            .arg(max_bytes)
            .arg(BATCH_SCAN);
        let mut conn = self.inner.conn.clone();
        let jobs = self
            .exec("claim_batch", async move {
                inv.invoke_async::<Vec<Vec<Vec<u8>>>>(&mut conn).await
            })
            .await?;
        let mut claims = Vec::with_capacity(jobs.len());
        for flat in jobs {
            let id = first_id(&flat).ok_or_else(|| undecodable("claim_batch", "no id"))?;
            let job = decode("claim_batch", id, flat)?;
            let lease = job
                .lease
                .ok_or_else(|| undecodable("claim_batch", "a claimed job without lease"))?;
            self.inner.hub.changed(id);
            claims.push(Claim { job, lease });
        }
        Ok(claims)
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

    async fn wake_unavailable(&self) -> Result<u64, StoreError> {
        let inv = self.invocation(Function::WakeUnavailable, Timestamp::now());
        let (tag, _) = self.run("wake_unavailable", inv).await?;
        let woken = parse_u64("wake_unavailable", tag.as_bytes())?.unwrap_or(0);
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
