//! A job as a Redis hash, and back: the one place that knows the encoding.
//!
//! The lifecycle scalars (status, attempts, revision, lease, deadlines and
//! times, the webhook delivery's state, flags saying which string fields
//! are there, and the options' durations) are packed into one field,
//! `life` ([`Life`]): one little-endian `f64` per scalar, in the order of
//! [`LIFE`], `-1` for none. The Lua scripts read and write them all with one
//! `struct.unpack` and one `struct.pack`, in code this module writes from
//! the same list ([`Life::lua`]); as fields of their own (the layout of
//! earlier development builds) each transition spent most of its time in
//! Redis converting them.
//!
//! Everything else is a field of its own: strings as text (error code and
//! message, owner, webhook URL...), the request as `request` (method, path
//! and query, and headers, [`encode_request`]) and `req_body`, the response
//! as `resp_status`, `resp_headers` and `resp_body`: bodies are raw bytes,
//! header maps a small length-prefixed binary encoding ([`encode_headers`]).
//! The request's head is one field because every string a claim reads
//! costs Redis twice (read into Lua, then answered); its method and path
//! come first, so the enqueue script can compare an idempotent
//! resubmission exactly as the memory store does (method, path and query,
//! body; headers may differ).
//!
//! Adding a scalar the scripts need: add it to the `life!` list (the Lua
//! follows). That changes the layout of every stored job, so say so in the
//! changelog. Adding any other field: give it a name below,
//! write it in [`new_job_fields`] (or in the script that sets it), read it in
//! [`decode_job`] treating its absence as the default, so jobs written by an
//! older version still decode.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use super::wire::millis;
use crate::job::{
    DeliveryStatus, ErrorCode, Job, JobError, JobId, JobOptions, JobStatus, Lease, LeaseToken,
    Priority, RetryPolicy, StoredRequest, StoredResponse, WebhookDelivery, WebhookFormat,
    WebhookTarget,
};
use crate::time::Timestamp;

/// A job hash as read from Redis.
pub(super) type Fields = HashMap<String, Vec<u8>>;

/// Field names. The Lua scripts spell the ones they touch too (a unit test
/// checks that each appears there).
pub(super) mod field {
    /// The job's id (also in its key; scripts that find a job return it).
    pub(crate) const ID: &str = "id";
    /// The lifecycle scalars, packed ([`Life`](super::Life)).
    pub(crate) const LIFE: &str = "life";
    pub(crate) const ERROR_CODE: &str = "error_code";
    pub(crate) const ERROR_MESSAGE: &str = "error_message";
    pub(crate) const OWNER: &str = "owner";
    pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency_key";
    pub(crate) const REQUEST: &str = "request";
    pub(crate) const REQ_BODY: &str = "req_body";
    pub(crate) const RESP_STATUS: &str = "resp_status";
    pub(crate) const RESP_HEADERS: &str = "resp_headers";
    pub(crate) const RESP_BODY: &str = "resp_body";
    pub(crate) const WEBHOOK_URL: &str = "webhook_url";
    pub(crate) const WEBHOOK_FORMAT: &str = "webhook_format";
    pub(crate) const WH_LAST_ERROR: &str = "wh_last_error";
    /// The key of the job's idempotency slot (read by the functions only).
    pub(crate) const IDEMPOTENCY_SLOT: &str = "idempotency_slot";
}

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
const STATUSES: [JobStatus; 6] = [
    JobStatus::Queued,
    JobStatus::InProgress,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
    JobStatus::Expired,
];
const DELIVERY_STATUSES: [DeliveryStatus; 3] = [
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

    fn required(&self, scalar: Scalar) -> Result<u64, CodecError> {
        self.get(scalar)
            .ok_or_else(|| bad(format!("{} is missing", LIFE[scalar as usize])))
    }

    fn time(&self, scalar: Scalar) -> Option<Timestamp> {
        self.get(scalar).map(Timestamp::from_millis)
    }

    fn ms(&self, scalar: Scalar, default: Duration) -> Duration {
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
fn indexed<T: Copy>(all: &[T], i: u64, what: &str) -> Result<T, CodecError> {
    usize::try_from(i)
        .ok()
        .and_then(|i| all.get(i))
        .copied()
        .ok_or_else(|| bad(format!("unknown {what} {i}")))
}

/// A job hash that does not decode: written by something else, or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CodecError(String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a stored job does not decode: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

fn bad(what: impl Into<String>) -> CodecError {
    CodecError(what.into())
}

const HEADERS_V1: u8 = 1;
const REQUEST_V1: u8 = 1;

/// Appends `part`, preceded by its length as four bytes (big-endian).
fn put_part(out: &mut Vec<u8>, part: &[u8]) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
}

/// Takes the next part [`put_part`] wrote off the front of `rest`.
fn take_part<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("truncated length"))?;
    let len = u32::from_be_bytes(*len) as usize;
    let (part, tail) = tail
        .split_at_checked(len)
        .ok_or_else(|| bad("truncated part"))?;
    *rest = tail;
    Ok(part)
}

fn headers_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| 8 + n.as_str().len() + v.len())
        .sum()
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        put_part(out, name.as_str().as_bytes());
        put_part(out, value.as_bytes());
    }
}

/// The headers [`put_headers`] wrote, which are all of `rest`.
fn take_headers(mut rest: &[u8]) -> Result<HeaderMap, CodecError> {
    let mut headers = HeaderMap::new();
    while !rest.is_empty() {
        let name = take_part(&mut rest)?;
        let value = take_part(&mut rest)?;
        let name = HeaderName::from_bytes(name).map_err(|e| bad(e.to_string()))?;
        let value = HeaderValue::from_bytes(value).map_err(|e| bad(e.to_string()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A header map as bytes: a version byte, then for each value in order
/// `u32 name length, name, u32 value length, value` (big-endian lengths).
/// Binary-safe; repeated names keep their order.
pub(super) fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + headers_size(headers));
    out.push(HEADERS_V1);
    put_headers(&mut out, headers);
    out
}

/// The inverse of [`encode_headers`].
pub(super) fn decode_headers(bytes: &[u8]) -> Result<HeaderMap, CodecError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Ok(HeaderMap::new());
    };
    if version != HEADERS_V1 {
        return Err(bad(format!("unknown header encoding {version}")));
    }
    take_headers(rest)
}

/// A request's method, path and query, and headers as bytes: a version
/// byte, the method and the path as parts (`u32` big-endian length, then
/// the bytes), then the headers as [`encode_headers`] writes them after its
/// version byte. The enqueue script compares what comes before the headers.
pub(super) fn encode_request(request: &StoredRequest) -> Vec<u8> {
    let method = request.method.as_str().as_bytes();
    let path = request.path_and_query.as_str().as_bytes();
    let size = 9 + method.len() + path.len() + headers_size(&request.headers);
    let mut out = Vec::with_capacity(size);
    out.push(REQUEST_V1);
    put_part(&mut out, method);
    put_part(&mut out, path);
    put_headers(&mut out, &request.headers);
    out
}

/// The inverse of [`encode_request`], less the body.
fn decode_request(bytes: &[u8]) -> Result<(Method, PathAndQuery, HeaderMap), CodecError> {
    let (&version, mut rest) = bytes.split_first().ok_or_else(|| bad("request is empty"))?;
    if version != REQUEST_V1 {
        return Err(bad(format!("unknown request encoding {version}")));
    }
    let method = Method::from_bytes(take_part(&mut rest)?).map_err(|e| bad(e.to_string()))?;
    let path = PathAndQuery::try_from(take_part(&mut rest)?).map_err(|e| bad(e.to_string()))?;
    Ok((method, path, take_headers(rest)?))
}

fn num(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// The fields of a job just made by [`Job::new`]: `request` and `req_body`
/// first, where the enqueue script looks for them (it compares them).
pub(super) fn new_job_fields(job: &Job) -> Vec<(&'static str, Vec<u8>)> {
    use field::*;
    let o = &job.options;
    let mut out = vec![
        (REQUEST, encode_request(&job.request)),
        (REQ_BODY, job.request.body.to_vec()),
        (ID, job.id.as_str().as_bytes().to_vec()),
        (LIFE, Life::of(job, job.created_at).encode()),
    ];
    if let Some(owner) = &o.owner {
        out.push((OWNER, owner.as_bytes().to_vec()));
    }
    if let Some(key) = &o.idempotency_key {
        out.push((IDEMPOTENCY_KEY, key.as_bytes().to_vec()));
    }
    if let Some(webhook) = &o.webhook {
        out.push((WEBHOOK_URL, webhook.url.as_bytes().to_vec()));
        out.push((
            WEBHOOK_FORMAT,
            format_str(webhook.format).as_bytes().to_vec(),
        ));
    }
    out
}

fn format_str(format: WebhookFormat) -> &'static str {
    match format {
        WebhookFormat::Standard => "standard",
        WebhookFormat::Baseten => "baseten",
    }
}

fn format_from(s: &str) -> Result<WebhookFormat, CodecError> {
    [WebhookFormat::Standard, WebhookFormat::Baseten]
        .into_iter()
        .find(|f| format_str(*f) == s)
        .ok_or_else(|| bad(format!("unknown webhook format {s:?}")))
}

fn decode_delivery(life: &Life, f: &Fields) -> Result<Option<WebhookDelivery>, CodecError> {
    use Scalar as S;
    let Some(status) = life.get(S::WhStatus) else {
        return Ok(None);
    };
    let status = indexed(&DELIVERY_STATUSES, status, "delivery status")?;
    let lease = match (life.get(S::WhLeaseToken), life.time(S::WhLeaseUntil)) {
        (Some(token), Some(until)) => Some(Lease {
            token: LeaseToken(token),
            until,
        }),
        _ => None,
    };
    Ok(Some(WebhookDelivery {
        status,
        attempts: life
            .get(S::WhAttempts)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        last_status_code: life
            .get(S::WhLastStatusCode)
            .map(|n| u16::try_from(n).map_err(|_| bad("bad webhook status code")))
            .transpose()?,
        last_error: text(f, field::WH_LAST_ERROR)?.map(str::to_owned),
        next_attempt_at: life.time(S::WhNextAttemptAt),
        lease,
        claims: life.get(S::WhClaims).unwrap_or(0),
    }))
}

/// A response as the scripts take it: status, headers, body.
pub(super) fn response_args(response: &StoredResponse) -> [Vec<u8>; 3] {
    [
        num(u64::from(response.status.as_u16())),
        encode_headers(&response.headers),
        response.body.to_vec(),
    ]
}

fn text<'a>(f: &'a Fields, name: &str) -> Result<Option<&'a str>, CodecError> {
    f.get(name)
        .map(|v| std::str::from_utf8(v).map_err(|_| bad(format!("{name} is not text"))))
        .transpose()
}

fn opt_num(f: &Fields, name: &str) -> Result<Option<u64>, CodecError> {
    text(f, name)?
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("{name} is not a number: {s:?}")))
        })
        .transpose()
}

fn code_from(s: &str) -> Result<ErrorCode, CodecError> {
    ErrorCode::ALL
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| bad(format!("unknown error code {s:?}")))
}

fn bytes(f: &mut Fields, name: &str) -> Bytes {
    f.remove(name).map(Bytes::from).unwrap_or_default()
}

/// A job from its hash. Unknown fields are ignored; optional ones may be absent.
pub(super) fn decode_job(id: JobId, mut f: Fields) -> Result<Job, CodecError> {
    use field::*;
    use Scalar as S;
    let defaults = JobOptions::default();
    let life = f.get(LIFE).ok_or_else(|| {
        bad("life is missing (a job in the layout of earlier development builds?)")
    })?;
    let life = Life::decode(life)?;
    let head = f.get(REQUEST).ok_or_else(|| bad("request is missing"))?;
    let (method, path_and_query, headers) = decode_request(head)?;
    let request = StoredRequest {
        method,
        path_and_query,
        headers,
        body: bytes(&mut f, REQ_BODY),
    };
    let response = match opt_num(&f, RESP_STATUS)? {
        Some(status) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| bad(format!("bad response status {status}")))?;
            Some(Arc::new(StoredResponse {
                status,
                headers: decode_headers(f.get(RESP_HEADERS).map_or(&[][..], Vec::as_slice))?,
                body: bytes(&mut f, RESP_BODY),
            }))
        }
        None => None,
    };
    let error = match text(&f, ERROR_CODE)? {
        Some(code) => Some(JobError::new(
            code_from(code)?,
            text(&f, ERROR_MESSAGE)?.unwrap_or_default(),
        )),
        None => None,
    };
    let lease = match (life.get(S::LeaseToken), life.time(S::LeaseUntil)) {
        (Some(token), Some(until)) => Some(Lease {
            token: LeaseToken(token),
            until,
        }),
        _ => None,
    };
    let priority = u8::try_from(life.required(S::Priority)?)
        .ok()
        .and_then(Priority::new)
        .ok_or_else(|| bad("bad priority"))?;
    let status = indexed(&STATUSES, life.required(S::Status)?, "status")?;
    let options = JobOptions {
        priority,
        max_time_in_queue: life.ms(S::MaxTimeInQueueMs, defaults.max_time_in_queue),
        result_ttl: life.ms(S::ResultTtlMs, defaults.result_ttl),
        execution_timeout: life.ms(S::ExecutionTimeoutMs, defaults.execution_timeout),
        retry: RetryPolicy {
            max_attempts: life
                .get(S::MaxAttempts)
                .map_or(defaults.retry.max_attempts, |n| {
                    u32::try_from(n).unwrap_or(u32::MAX)
                }),
            initial_delay: life.ms(S::RetryInitialDelayMs, defaults.retry.initial_delay),
            max_delay: life.ms(S::RetryMaxDelayMs, defaults.retry.max_delay),
        },
        owner: text(&f, OWNER)?.map(Arc::from),
        idempotency_key: text(&f, IDEMPOTENCY_KEY)?.map(Arc::from),
        webhook: match text(&f, WEBHOOK_URL)? {
            Some(url) => Some(WebhookTarget {
                url: url.to_owned(),
                format: format_from(text(&f, WEBHOOK_FORMAT)?.unwrap_or("standard"))?,
            }),
            None => None,
        },
    };
    let webhook = decode_delivery(&life, &f)?.map(Box::new);
    let created_at = Timestamp::from_millis(life.required(S::CreatedAt)?);
    Ok(Job {
        id,
        request: Arc::new(request),
        options,
        status,
        attempts: u32::try_from(life.required(S::Attempts)?).unwrap_or(u32::MAX),
        revision: life.required(S::Revision)?,
        created_at,
        status_at: life.time(S::StatusAt).unwrap_or(created_at),
        started_at: life.time(S::StartedAt),
        completed_at: life.time(S::CompletedAt),
        expires_at: life.time(S::ExpiresAt),
        queue_deadline: Timestamp::from_millis(life.required(S::QueueDeadline)?),
        retry_at: life.time(S::RetryAt),
        response,
        error,
        lease,
        claims: life.get(S::Claims).unwrap_or(0),
        webhook,
    })
}

/// Pairs `name, value, name, value, ...` (as `HGETALL` and the scripts
/// answer) into a map.
pub(super) fn pairs(flat: Vec<Vec<u8>>) -> Result<Fields, CodecError> {
    changed_pairs(flat.into_iter().map(Some))
}

/// The fields of a hash as read, followed by changes to them: each later
/// pair stands over an earlier one of its name, and a name without a value
/// deletes it.
pub(super) fn changed_pairs(
    flat: impl IntoIterator<Item = Option<Vec<u8>>, IntoIter: ExactSizeIterator>,
) -> Result<Fields, CodecError> {
    let mut it = flat.into_iter();
    if !it.len().is_multiple_of(2) {
        return Err(bad("an odd number of hash items"));
    }
    let mut out = Fields::with_capacity(it.len() / 2);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k = k.ok_or_else(|| bad("a field without a name"))?;
        let k = String::from_utf8(k).map_err(|_| bad("a field name is not text"))?;
        match v {
            Some(v) => out.insert(k, v),
            None => out.remove(&k),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{DeliveryAttempt, NewJob, Outcome};

    fn sample() -> Job {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("x-bin", HeaderValue::from_bytes(b"\xff\x80 tab\t").unwrap());
        let request = StoredRequest {
            method: Method::PUT,
            path_and_query: PathAndQuery::from_static("/v1/x?y=1&z=%20"),
            headers,
            body: Bytes::from_static(b"\x00\x01binary\xff body"),
        };
        let options = JobOptions {
            priority: Priority::LOW,
            owner: Some("tenant:a".into()),
            idempotency_key: Some("key 1".into()),
            result_ttl: Duration::from_millis(1234),
            max_time_in_queue: Duration::from_millis(4321),
            execution_timeout: Duration::from_millis(987),
            retry: RetryPolicy {
                max_attempts: 7,
                initial_delay: Duration::from_millis(250),
                max_delay: Duration::from_secs(9),
            },
            webhook: Some(WebhookTarget {
                url: "https://example.com/hook?a=1".into(),
                format: WebhookFormat::Baseten,
            }),
        };
        Job::new(
            JobId::random(),
            NewJob { request, options },
            Timestamp::from_millis(1_795_337_626_123),
        )
    }

    /// What the scripts would store for `job`, built here field by field.
    fn as_hash(job: &Job) -> Fields {
        use field::*;
        let mut f: Fields = new_job_fields(job)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        f.insert(LIFE.into(), Life::of(job, job.created_at).encode());
        if let Some(r) = &job.response {
            let [s, h, b] = response_args(r);
            f.insert(RESP_STATUS.into(), s);
            f.insert(RESP_HEADERS.into(), h);
            f.insert(RESP_BODY.into(), b);
        }
        if let Some(e) = &job.error {
            f.insert(ERROR_CODE.into(), e.code.as_str().into());
            f.insert(ERROR_MESSAGE.into(), e.message.clone().into_bytes());
        }
        if let Some(e) = job.webhook.as_ref().and_then(|w| w.last_error.as_ref()) {
            f.insert(WH_LAST_ERROR.into(), e.clone().into_bytes());
        }
        f
    }

    fn same(a: &Job, b: &Job) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn headers_round_trip_binary_safe_and_in_order() {
        let job = sample();
        let encoded = encode_headers(&job.request.headers);
        let decoded = decode_headers(&encoded).unwrap();
        assert_eq!(decoded, job.request.headers);
        let multi: Vec<_> = decoded.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(decode_headers(&[]).unwrap(), HeaderMap::new());
        assert_eq!(
            decode_headers(&encode_headers(&HeaderMap::new())).unwrap(),
            HeaderMap::new()
        );
        assert!(decode_headers(&encoded[..encoded.len() - 1]).is_err());
        assert!(decode_headers(&[9]).is_err());
    }

    #[test]
    fn a_new_job_round_trips() {
        let job = sample();
        same(&decode_job(job.id, as_hash(&job)).unwrap(), &job);
    }

    #[test]
    fn a_finished_job_with_response_error_and_lease_history_round_trips() {
        let mut job = sample();
        let t = job.created_at;
        let lease = job.claim(t, Duration::from_secs(30)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-r", HeaderValue::from_static("1"));
        let response = StoredResponse {
            status: StatusCode::BAD_GATEWAY,
            headers,
            body: Bytes::from_static(b"\xffout"),
        };
        let outcome = Outcome {
            response: Some(response),
            error: Some(JobError::new(ErrorCode::UpstreamStatus, "bad gateway")),
        };
        job.finish(lease.token, t.after(Duration::from_secs(1)), outcome)
            .unwrap();
        same(&decode_job(job.id, as_hash(&job)).unwrap(), &job);
        let held = job
            .claim_delivery(t.after(Duration::from_secs(2)), Duration::from_secs(5))
            .unwrap();
        same(&decode_job(job.id, as_hash(&job)).unwrap(), &job);
        let attempt = DeliveryAttempt {
            status_code: Some(500),
            error: Some("receiver said 500".into()),
            delivered: false,
            retry_at: Some(t.after(Duration::from_secs(9))),
        };
        job.record_delivery(held.token, attempt).unwrap();
        same(&decode_job(job.id, as_hash(&job)).unwrap(), &job);

        let mut running = sample();
        running.claim(t, Duration::from_secs(30)).unwrap();
        same(
            &decode_job(running.id, as_hash(&running)).unwrap(),
            &running,
        );
    }

    #[test]
    fn damaged_hashes_are_errors_not_panics() {
        let job = sample();
        let life = |scalar: Scalar, value: f64| {
            let mut bytes = Life::of(&job, job.created_at).encode();
            bytes[8 * scalar as usize..][..8].copy_from_slice(&value.to_le_bytes());
            bytes
        };
        for (k, v) in [
            (field::LIFE, life(Scalar::Status, 6.0)),
            (field::LIFE, life(Scalar::Revision, 0.5)),
            (field::LIFE, life(Scalar::Attempts, -2.0)),
            (field::LIFE, life(Scalar::Priority, 7.0)),
            (field::LIFE, life(Scalar::QueueDeadline, f64::NAN)),
            (field::LIFE, life(Scalar::CreatedAt, -1.0)),
            (field::LIFE, vec![0; 8]),
            (field::ERROR_CODE, b"nope".to_vec()),
            (field::REQUEST, b"\x01\x00\x00\x00\x03BAD".to_vec()),
            (
                field::REQUEST,
                b"\x01\x00\x00\x00\x0aBAD METHOD\x00\x00\x00\x01/".to_vec(),
            ),
            (
                field::REQUEST,
                b"\x02\x00\x00\x00\x03GET\x00\x00\x00\x01/".to_vec(),
            ),
            (field::REQUEST, Vec::new()),
        ] {
            let mut f = as_hash(&job);
            f.insert(k.into(), v);
            assert!(decode_job(job.id, f).is_err(), "{k}");
        }
        let mut f = as_hash(&job);
        f.remove(field::LIFE);
        let err = decode_job(job.id, f).unwrap_err();
        assert!(err.to_string().contains("life is missing"), "{err}");
        assert!(pairs(vec![b"a".to_vec()]).is_err());
    }

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

    #[test]
    fn unknown_fields_are_ignored_so_new_versions_can_add_some() {
        let job = sample();
        let mut f = as_hash(&job);
        f.insert("webhook_state".into(), b"anything".to_vec());
        same(&decode_job(job.id, f).unwrap(), &job);
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

    #[test]
    fn the_scripts_spell_the_fields_as_the_codec_does() {
        use field::*;
        let lua = super::super::functions::sources().concat();
        for name in [
            LIFE,
            ERROR_CODE,
            ERROR_MESSAGE,
            OWNER,
            REQUEST,
            REQ_BODY,
            RESP_STATUS,
            RESP_HEADERS,
            RESP_BODY,
            IDEMPOTENCY_SLOT,
            WH_LAST_ERROR,
        ] {
            assert!(
                lua.contains(&format!("'{name}'")),
                "{name} not in the scripts"
            );
        }
        // The codes the scripts write themselves.
        for code in [
            ErrorCode::QueueTimeout,
            ErrorCode::LeaseExpired,
            ErrorCode::Canceled,
        ] {
            assert!(lua.contains(&format!("'{}'", code.as_str())), "{code}");
        }
    }
}
