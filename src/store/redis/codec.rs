//! A job as a Redis hash, and back: the one place that knows the encoding.
//!
//! The lifecycle scalars are packed into one field, `life` (see
//! `life.rs`). Everything else is a field of its own: strings as text
//! (error code and message, owner, webhook URL...), the request as
//! `request` (method, path and query, and headers, [`encode_request`]) and
//! `req_body`, the response as `resp_status`, `resp_headers` and
//! `resp_body`: bodies are raw bytes, header maps a small length-prefixed
//! binary encoding ([`encode_headers`]).
//! The request's head is one field because every string a claim reads
//! costs Redis twice (read into Lua, then answered); its method and path
//! come first, so the enqueue script can compare an idempotent
//! resubmission exactly as the memory store does (method, path and query,
//! body; headers may differ).
//!
//! Adding a field other than a scalar of `life`: give it a name below,
//! write it in [`new_job_fields`] (or in the script that sets it), read it in
//! [`decode_job`] treating its absence as the default, so jobs written by an
//! older version still decode.
//!
//! The file is one concept, the encoding of a job's hash, and stays whole
//! although it is a little over 600 lines: about a third of it is the
//! round-trip tests, which belong beside what they check.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use super::life::{indexed, Life, Scalar, DELIVERY_STATUSES, STATUSES};
use crate::job::{
    BatchTag, ErrorCode, Job, JobError, JobId, JobOptions, Lease, LeaseToken, Priority,
    RetryPolicy, StoredRequest, StoredResponse, WebhookDelivery, WebhookFormat, WebhookTarget,
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
    /// A batching job's compatibility key and input count (claim_batch reads them).
    pub(crate) const BATCH_KEY: &str = "batch_key";
    pub(crate) const BATCH_ITEMS: &str = "batch_items";
    /// How many jobs shared the call that ended it (complete writes it).
    pub(crate) const BATCH_SIZE: &str = "batch_size";
    /// The key of the job's idempotency slot (read by the functions only).
    pub(crate) const IDEMPOTENCY_SLOT: &str = "idempotency_slot";
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

pub(super) fn bad(what: impl Into<String>) -> CodecError {
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
    if let Some(batch) = &o.batch {
        out.push((BATCH_KEY, batch.key.as_bytes().to_vec()));
        out.push((BATCH_ITEMS, num(u64::from(batch.items))));
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
        batch: match text(&f, BATCH_KEY)? {
            Some(key) => Some(BatchTag {
                key: Arc::from(key),
                items: opt_num(&f, BATCH_ITEMS)?
                    .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
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
        lapses: life
            .get(S::Lapses)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
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
        batch_size: opt_num(&f, BATCH_SIZE)?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
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
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::job::{DeliveryAttempt, NewJob, Outcome};

    pub(crate) fn sample() -> Job {
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
            batch: Some(BatchTag {
                key: "0123456789abcdef0123456789abcdef".into(),
                items: 3,
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
        if let Some(n) = job.batch_size {
            f.insert(BATCH_SIZE.into(), num(u64::from(n)));
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
            batch_size: Some(4),
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
    fn unknown_fields_are_ignored_so_new_versions_can_add_some() {
        let job = sample();
        let mut f = as_hash(&job);
        f.insert("webhook_state".into(), b"anything".to_vec());
        same(&decode_job(job.id, f).unwrap(), &job);
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
            BATCH_KEY,
            BATCH_ITEMS,
            BATCH_SIZE,
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
            ErrorCode::Abandoned,
            ErrorCode::Canceled,
        ] {
            assert!(lua.contains(&format!("'{}'", code.as_str())), "{code}");
        }
    }
}
