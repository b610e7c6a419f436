//! A job's lifecycle scalars, packed in one field of its hash: `life`.
//!
//! The scalars (status, attempts, revision, lease, deadlines and times, the
//! webhook delivery's state, flags saying which string fields are there,
//! and the options' durations) are one little-endian `f64` each, in the
//! order of [`LIFE`], `-1` for none. The functions read and write them all
//! with one `struct.unpack` and one `struct.pack`, in Lua this module
//! writes from the same list ([`Life::lua`]), because a field of its own
//! per scalar costs Redis a string and a conversion each.
//!
//! Adding a scalar the functions need: add it to the `life!` list (the Lua
//! follows). That changes the layout of every stored job, so say so in the
//! changelog.

use std::time::Duration;

use super::codec::{bad, CodecError};
use super::wire::millis;
use crate::job::{DeliveryStatus, Job, JobStatus};
use crate::time::Timestamp;

/// Declares the packed scalars once: [`LIFE`] (their names, in order) and
/// [`Scalar`] (an index into it).
macro_rules! life {
    ($($scalar:ident = $name:literal,)*) => {
        /// The names of the scalars packed in a job's `life` field, in
        /// order; the scripts' Lua for them is written from it
        /// ([`Life::lua`]).
        pub(super) const LIFE: &[&str] = &[$($name),*];

        /// One scalar of [`LIFE`].
        #[derive(Clone, Copy, Debug)]
        pub(super) enum Scalar {
            $($scalar),*
        }
    };
}

life! {
    Status = "status",
    Attempts = "attempts",
    Revision = "revision",
    Claims = "claims",
    LeaseToken = "lease_token",
    LeaseUntil = "lease_until",
    RetryAt = "retry_at",
    QueueDeadline = "queue_deadline",
    CreatedAt = "created_at",
    StatusAt = "status_at",
    StartedAt = "started_at",
    CompletedAt = "completed_at",
    ExpiresAt = "expires_at",
    // When the job last became ready (for aging); the scripts keep it.
    ReadyAt = "ready_at",
    Priority = "priority",
    MaxAttempts = "max_attempts",
    ResultTtlMs = "result_ttl_ms",
    // 1 when the field `error_code` (and `error_message`) is there.
    HasError = "has_error",
    // 1 when the job has a webhook (field `webhook_url`).
    HasWebhook = "has_webhook",
    // 1 when the field `idempotency_slot` is there.
    HasSlot = "has_slot",
    WhStatus = "wh_status",
    WhAttempts = "wh_attempts",
    WhClaims = "wh_claims",
    WhNextAttemptAt = "wh_next_attempt_at",
    WhLeaseToken = "wh_lease_token",
    WhLeaseUntil = "wh_lease_until",
    WhLastStatusCode = "wh_last_status_code",
    // Options the scripts do not read, here to keep the job's fields few.
    MaxTimeInQueueMs = "max_time_in_queue_ms",
    ExecutionTimeoutMs = "execution_timeout_ms",
    RetryInitialDelayMs = "retry_initial_delay_ms",
    RetryMaxDelayMs = "retry_max_delay_ms",
}

/// `status` and `wh_status` are packed as their index here (`STATUS_NAME`
/// and `DELIVERY_NAME` in [`Life::lua`]).
pub(super) const STATUSES: [JobStatus; 6] = [
    JobStatus::Queued,
    JobStatus::InProgress,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
    JobStatus::Expired,
];
pub(super) const DELIVERY_STATUSES: [DeliveryStatus; 3] = [
    DeliveryStatus::Pending,
    DeliveryStatus::Succeeded,
    DeliveryStatus::Failed,
];

/// A job's lifecycle scalars, as packed in its `life` field.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Life([Option<u64>; LIFE.len()]);

impl Life {
    /// The scalars of `job`, which last became ready at `ready_at`.
    pub(super) fn of(job: &Job, ready_at: Timestamp) -> Life {
        use Scalar::*;
        let mut life = Life([None; LIFE.len()]);
        let time = |t: Option<Timestamp>| t.map(Timestamp::as_millis);
        let flag = |b: bool| Some(u64::from(b));
        let index = |i: Option<usize>| i.map(|i| i as u64);
        let o = &job.options;
        life.set(
            Status,
            index(STATUSES.iter().position(|s| *s == job.status)),
        );
        life.set(Attempts, Some(u64::from(job.attempts)));
        life.set(Revision, Some(job.revision));
        life.set(Claims, Some(job.claims));
        life.set(LeaseToken, job.lease.map(|l| l.token.0));
        life.set(LeaseUntil, job.lease.map(|l| l.until.as_millis()));
        life.set(RetryAt, time(job.retry_at));
        life.set(QueueDeadline, Some(job.queue_deadline.as_millis()));
        life.set(CreatedAt, Some(job.created_at.as_millis()));
        life.set(StatusAt, Some(job.status_at.as_millis()));
        life.set(StartedAt, time(job.started_at));
        life.set(CompletedAt, time(job.completed_at));
        life.set(ExpiresAt, time(job.expires_at));
        life.set(ReadyAt, Some(ready_at.as_millis()));
        life.set(Priority, Some(u64::from(o.priority.level())));
        life.set(MaxAttempts, Some(u64::from(o.retry.max_attempts)));
        life.set(ResultTtlMs, Some(millis(o.result_ttl)));
        life.set(HasError, flag(job.error.is_some()));
        life.set(HasWebhook, flag(o.webhook.is_some()));
        life.set(HasSlot, flag(o.idempotency_key.is_some()));
        if let Some(w) = &job.webhook {
            let status = DELIVERY_STATUSES.iter().position(|s| *s == w.status);
            life.set(WhStatus, index(status));
            life.set(WhAttempts, Some(u64::from(w.attempts)));
            life.set(WhClaims, Some(w.claims));
            life.set(WhNextAttemptAt, time(w.next_attempt_at));
            life.set(WhLeaseToken, w.lease.map(|l| l.token.0));
            life.set(WhLeaseUntil, w.lease.map(|l| l.until.as_millis()));
            life.set(WhLastStatusCode, w.last_status_code.map(u64::from));
        }
        life.set(MaxTimeInQueueMs, Some(millis(o.max_time_in_queue)));
        life.set(ExecutionTimeoutMs, Some(millis(o.execution_timeout)));
        life.set(RetryInitialDelayMs, Some(millis(o.retry.initial_delay)));
        life.set(RetryMaxDelayMs, Some(millis(o.retry.max_delay)));
        life
    }

    pub(super) fn get(&self, scalar: Scalar) -> Option<u64> {
        self.0[scalar as usize]
    }

    fn set(&mut self, scalar: Scalar, value: Option<u64>) {
        self.0[scalar as usize] = value;
    }

    pub(super) fn required(&self, scalar: Scalar) -> Result<u64, CodecError> {
        self.get(scalar)
            .ok_or_else(|| bad(format!("{} is missing", LIFE[scalar as usize])))
    }

    pub(super) fn time(&self, scalar: Scalar) -> Option<Timestamp> {
        self.get(scalar).map(Timestamp::from_millis)
    }

    pub(super) fn ms(&self, scalar: Scalar, default: Duration) -> Duration {
        self.get(scalar).map_or(default, Duration::from_millis)
    }

    /// The Lua that reads and writes `life` in the scripts, written from
    /// [`LIFE`] so the two cannot disagree: `STATUS_NAME` and
    /// `DELIVERY_NAME` (a packed status is its index there) and their
    /// inverses, `LIFE_SET` (the scalars' names), `unpack_life(key, id,
    /// life)` (a job table from the field) and `pack_life(j)` (the
    /// field from a job table). The job table is made by one constructor
    /// that names every scalar, so Lua sizes it once: filled name by name
    /// it grew and rehashed six times, 1.5 of the 2.3 µs an unpack took.
    /// `pack_life` hands the values straight to `struct.pack`. For the
    /// functions that work on the packed values themselves, in an array
    /// (claim and complete, see `prelude.lua`): `I_<NAME>`, each scalar's
    /// place in it, and `N_LIFE`, how many there are.
    pub(super) fn lua() -> String {
        let quoted = |names: &mut dyn Iterator<Item = &str>| {
            names
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let codes = |names: &mut dyn Iterator<Item = &str>| {
            names
                .enumerate()
                .map(|(i, n)| format!("{n} = {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let statuses = || STATUSES.iter().map(|s| s.as_str());
        let deliveries = || DELIVERY_STATUSES.iter().map(|s| s.as_str());
        let values: Vec<String> = (1..=LIFE.len()).map(|i| format!("v{i}")).collect();
        let mut fields = Vec::with_capacity(LIFE.len());
        let mut packed = Vec::with_capacity(LIFE.len());
        for (name, v) in LIFE.iter().zip(&values) {
            let (read, write) = match *name {
                "status" => (
                    format!("STATUS_NAME[{v}]"),
                    "STATUS_CODE[j.status]".to_owned(),
                ),
                "wh_status" => (
                    format!("DELIVERY_NAME[{v}]"),
                    "j.wh_status and DELIVERY_CODE[j.wh_status] or -1".to_owned(),
                ),
                _ => (
                    format!("{v} >= 0 and {v} or nil"),
                    format!("j.{name} or -1"),
                ),
            };
            fields.push(format!("    {name} = {read},\n"));
            packed.push(format!("    {write}"));
        }
        format!(
            "-- Written by codec.rs (Life::lua) from its list of scalars.\n\
             local STATUS_NAME = {{[0] = {}}}\n\
             local DELIVERY_NAME = {{[0] = {}}}\n\
             local STATUS_CODE = {{{}}}\n\
             local DELIVERY_CODE = {{{}}}\n\
             local LIFE_FORMAT = '<{}'\n\
             local LIFE_SET = {{{}}}\n\
             local {} = {}\n\
             local N_LIFE = {}\n\
             local function unpack_life(key, id, life)\n\
             \x20 local {} = struct.unpack(LIFE_FORMAT, life)\n\
             \x20 return {{\n    key = key, id = id,\n{}  }}\n\
             end\n\
             local function pack_life(j)\n\
             \x20 return struct.pack(LIFE_FORMAT,\n{})\n\
             end\n",
            quoted(&mut statuses()),
            quoted(&mut deliveries()),
            codes(&mut statuses()),
            codes(&mut deliveries()),
            "d".repeat(LIFE.len()),
            LIFE.iter()
                .map(|n| format!("{n} = true"))
                .collect::<Vec<_>>()
                .join(", "),
            LIFE.iter()
                .map(|n| format!("I_{}", n.to_uppercase()))
                .collect::<Vec<_>>()
                .join(", "),
            (1..=LIFE.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            LIFE.len(),
            values.join(", "),
            fields.concat(),
            packed.join(",\n"),
        )
    }

    /// The `life` field's bytes. (Every value is below 2^53 in practice, so
    /// the `f64` holds it exactly, as Lua's numbers do.)
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * LIFE.len());
        for value in self.0 {
            let value = value.map_or(-1.0, |n| n as f64);
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// The inverse of [`encode`](Self::encode).
    pub(super) fn decode(bytes: &[u8]) -> Result<Life, CodecError> {
        if bytes.len() != 8 * LIFE.len() {
            return Err(bad(format!(
                "life is {} bytes, not {}",
                bytes.len(),
                8 * LIFE.len()
            )));
        }
        let mut life = Life([None; LIFE.len()]);
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut raw = [0; 8];
            raw.copy_from_slice(chunk);
            let value = f64::from_le_bytes(raw);
            life.0[i] = if value == -1.0 {
                None
            } else if value >= 0.0 && value.fract() == 0.0 {
                // Saturates at u64::MAX, where a text number would have too.
                Some(value as u64)
            } else {
                return Err(bad(format!("{} is {value}", LIFE[i])));
            };
        }
        Ok(life)
    }
}

/// The status packed as its index `i` in `all` (a [`Life`] scalar).
pub(super) fn indexed<T: Copy>(all: &[T], i: u64, what: &str) -> Result<T, CodecError> {
    usize::try_from(i)
        .ok()
        .and_then(|i| all.get(i))
        .copied()
        .ok_or_else(|| bad(format!("unknown {what} {i}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::codec::tests::sample;

    #[test]
    fn life_keeps_every_scalar_and_none_apart_from_zero() {
        let mut job = sample();
        job.claim(job.created_at, Duration::from_secs(30)).unwrap();
        let life = Life::of(&job, Timestamp::from_millis(42));
        assert_eq!(Life::decode(&life.encode()).unwrap(), life);
        assert_eq!(life.get(Scalar::ReadyAt), Some(42));
        assert_eq!(life.get(Scalar::RetryAt), None);
        assert_eq!(life.get(Scalar::HasError), Some(0));
        assert_eq!(life.get(Scalar::HasWebhook), Some(1));
        assert_eq!(life.get(Scalar::HasSlot), Some(1));
        assert_eq!(life.get(Scalar::Status), Some(1), "in_progress");
        let big = (1u64 << 53) - 1;
        let mut wide = Life([Some(big); LIFE.len()]);
        wide.set(Scalar::Claims, Some(0));
        assert_eq!(Life::decode(&wide.encode()).unwrap(), wide);
    }

    /// The Lua the scripts read and write `life` with, as written from
    /// [`LIFE`]; the store tests run it on Redis.
    #[test]
    fn the_lua_for_life_follows_the_list() {
        let lua = Life::lua();
        let format = format!("local LIFE_FORMAT = '<{}'", "d".repeat(LIFE.len()));
        assert!(lua.contains(&format), "{format}");
        let at = |s: Scalar| s as usize + 1;
        for expected in [
            "local STATUS_NAME = {[0] = 'queued', 'in_progress', 'succeeded', 'failed', 'canceled', 'expired'}".to_owned(),
            "local DELIVERY_CODE = {pending = 0, succeeded = 1, failed = 2}".to_owned(),
            format!("status = STATUS_NAME[v{}],", at(Scalar::Status)),
            format!("wh_status = DELIVERY_NAME[v{}],", at(Scalar::WhStatus)),
            format!("attempts = v{0} >= 0 and v{0} or nil,", at(Scalar::Attempts)),
            "    STATUS_CODE[j.status],".to_owned(),
            "    j.wh_status and DELIVERY_CODE[j.wh_status] or -1,".to_owned(),
            "    j.retry_max_delay_ms or -1)".to_owned(),
        ] {
            assert!(lua.contains(&expected), "{expected}");
        }
        for name in LIFE {
            assert!(lua.contains(&format!("{name} = true")), "{name}");
        }
        let prelude = super::super::functions::sources()[0];
        assert!(
            !prelude.contains("local LIFE"),
            "the prelude keeps no list of its own"
        );
    }
}
