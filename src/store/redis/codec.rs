//! A job as a Redis hash, and back: the one place that knows the encoding.
//!
//! Scalar lifecycle fields are hash fields of their own (numbers as decimal
//! text, times in ms since the epoch), so the Lua scripts read and write them
//! without decoding anything and `redis-cli HGETALL` shows a job plainly.
//! The request is stored as `method`, `path`, `req_headers` and `req_body`,
//! the response as `resp_status`, `resp_headers` and `resp_body`: bodies are
//! raw bytes, header maps a small length-prefixed binary encoding
//! ([`encode_headers`]). Keeping method, path and body apart lets the enqueue
//! script compare an idempotent resubmission exactly as the memory store does
//! (method, path and query, body; headers may differ).
//!
//! Adding a field: give it a name below, write it in [`new_job_fields`] (or
//! in the script that sets it), read it in [`decode_job`] treating its
//! absence as the default, so jobs written by an older version still decode.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use crate::job::{
    DeliveryStatus, ErrorCode, Job, JobError, JobId, JobOptions, JobStatus, Lease, LeaseToken,
    Priority, RetryPolicy, StoredRequest, StoredResponse, WebhookDelivery, WebhookFormat,
    WebhookTarget,
};
use crate::time::Timestamp;

/// A job hash as read from Redis.
pub(super) type Fields = HashMap<String, Vec<u8>>;

/// Field names. The Lua scripts spell the lifecycle ones too (a unit test
/// checks that each appears there).
pub(super) mod field {
    /// The job's id (also in its key; scripts that find a job return it).
    pub(crate) const ID: &str = "id";
    pub(crate) const STATUS: &str = "status";
    pub(crate) const ATTEMPTS: &str = "attempts";
    pub(crate) const REVISION: &str = "revision";
    pub(crate) const CLAIMS: &str = "claims";
    pub(crate) const LEASE_TOKEN: &str = "lease_token";
    pub(crate) const LEASE_UNTIL: &str = "lease_until";
    pub(crate) const RETRY_AT: &str = "retry_at";
    pub(crate) const QUEUE_DEADLINE: &str = "queue_deadline";
    pub(crate) const CREATED_AT: &str = "created_at";
    pub(crate) const STATUS_AT: &str = "status_at";
    pub(crate) const STARTED_AT: &str = "started_at";
    pub(crate) const COMPLETED_AT: &str = "completed_at";
    pub(crate) const EXPIRES_AT: &str = "expires_at";
    pub(crate) const PRIORITY: &str = "priority";
    pub(crate) const ERROR_CODE: &str = "error_code";
    pub(crate) const ERROR_MESSAGE: &str = "error_message";
    pub(crate) const MAX_ATTEMPTS: &str = "max_attempts";
    pub(crate) const RESULT_TTL_MS: &str = "result_ttl_ms";
    pub(crate) const MAX_TIME_IN_QUEUE_MS: &str = "max_time_in_queue_ms";
    pub(crate) const EXECUTION_TIMEOUT_MS: &str = "execution_timeout_ms";
    pub(crate) const RETRY_INITIAL_DELAY_MS: &str = "retry_initial_delay_ms";
    pub(crate) const RETRY_MAX_DELAY_MS: &str = "retry_max_delay_ms";
    pub(crate) const OWNER: &str = "owner";
    pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency_key";
    pub(crate) const METHOD: &str = "method";
    pub(crate) const PATH: &str = "path";
    pub(crate) const REQ_HEADERS: &str = "req_headers";
    pub(crate) const REQ_BODY: &str = "req_body";
    pub(crate) const RESP_STATUS: &str = "resp_status";
    pub(crate) const RESP_HEADERS: &str = "resp_headers";
    pub(crate) const RESP_BODY: &str = "resp_body";
    pub(crate) const WEBHOOK_URL: &str = "webhook_url";
    pub(crate) const WEBHOOK_FORMAT: &str = "webhook_format";
    pub(crate) const WH_STATUS: &str = "wh_status";
    pub(crate) const WH_ATTEMPTS: &str = "wh_attempts";
    pub(crate) const WH_LAST_STATUS_CODE: &str = "wh_last_status_code";
    pub(crate) const WH_LAST_ERROR: &str = "wh_last_error";
    pub(crate) const WH_NEXT_ATTEMPT_AT: &str = "wh_next_attempt_at";
    pub(crate) const WH_LEASE_TOKEN: &str = "wh_lease_token";
    pub(crate) const WH_LEASE_UNTIL: &str = "wh_lease_until";
    pub(crate) const WH_CLAIMS: &str = "wh_claims";
    /// Written by the scripts only: when the job last became ready (aging).
    #[cfg(test)]
    pub(crate) const READY_AT: &str = "ready_at";
    /// Written by the scripts only: the key of its idempotency slot.
    #[cfg(test)]
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

fn bad(what: impl Into<String>) -> CodecError {
    CodecError(what.into())
}

const HEADERS_V1: u8 = 1;

/// A header map as bytes: a version byte, then for each value in order
/// `u32 name length, name, u32 value length, value` (big-endian lengths).
/// Binary-safe; repeated names keep their order.
pub(super) fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let size: usize = headers
        .iter()
        .map(|(n, v)| 8 + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(HEADERS_V1);
    for (name, value) in headers {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The inverse of [`encode_headers`].
pub(super) fn decode_headers(bytes: &[u8]) -> Result<HeaderMap, CodecError> {
    let mut headers = HeaderMap::new();
    let Some((&version, mut rest)) = bytes.split_first() else {
        return Ok(headers);
    };
    if version != HEADERS_V1 {
        return Err(bad(format!("unknown header encoding {version}")));
    }
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, CodecError> {
        if rest.len() < 4 {
            return Err(bad("truncated header length"));
        }
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if tail.len() < len {
            return Err(bad("truncated header"));
        }
        let (part, tail) = tail.split_at(len);
        *rest = tail;
        Ok(part.to_vec())
    };
    while !rest.is_empty() {
        let name = take(&mut rest)?;
        let value = take(&mut rest)?;
        let name = HeaderName::from_bytes(&name).map_err(|e| bad(e.to_string()))?;
        let value = HeaderValue::from_bytes(&value).map_err(|e| bad(e.to_string()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn num(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

fn ms(d: Duration) -> Vec<u8> {
    num(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The fields of a job just made by [`Job::new`], less `method`, `path` and
/// `req_body`, which the enqueue script takes apart (it compares them).
pub(super) fn new_job_fields(job: &Job) -> Vec<(&'static str, Vec<u8>)> {
    use field::*;
    let o = &job.options;
    let mut out = vec![
        (ID, job.id.as_str().as_bytes().to_vec()),
        (STATUS, job.status.as_str().as_bytes().to_vec()),
        (ATTEMPTS, num(u64::from(job.attempts))),
        (REVISION, num(job.revision)),
        (CLAIMS, num(job.claims)),
        (QUEUE_DEADLINE, num(job.queue_deadline.as_millis())),
        (CREATED_AT, num(job.created_at.as_millis())),
        (STATUS_AT, num(job.status_at.as_millis())),
        (PRIORITY, num(u64::from(o.priority.level()))),
        (MAX_ATTEMPTS, num(u64::from(o.retry.max_attempts))),
        (RESULT_TTL_MS, ms(o.result_ttl)),
        (MAX_TIME_IN_QUEUE_MS, ms(o.max_time_in_queue)),
        (EXECUTION_TIMEOUT_MS, ms(o.execution_timeout)),
        (RETRY_INITIAL_DELAY_MS, ms(o.retry.initial_delay)),
        (RETRY_MAX_DELAY_MS, ms(o.retry.max_delay)),
        (REQ_HEADERS, encode_headers(&job.request.headers)),
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

fn delivery_status_from(s: &str) -> Result<DeliveryStatus, CodecError> {
    [
        DeliveryStatus::Pending,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
    ]
    .into_iter()
    .find(|d| d.as_str() == s)
    .ok_or_else(|| bad(format!("unknown delivery status {s:?}")))
}

fn decode_delivery(f: &Fields) -> Result<Option<WebhookDelivery>, CodecError> {
    use field::*;
    let Some(status) = text(f, WH_STATUS)? else {
        return Ok(None);
    };
    let lease = match (opt_num(f, WH_LEASE_TOKEN)?, opt_time(f, WH_LEASE_UNTIL)?) {
        (Some(token), Some(until)) => Some(Lease {
            token: LeaseToken(token),
            until,
        }),
        _ => None,
    };
    Ok(Some(WebhookDelivery {
        status: delivery_status_from(status)?,
        attempts: opt_num(f, WH_ATTEMPTS)?.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        last_status_code: opt_num(f, WH_LAST_STATUS_CODE)?
            .map(|n| u16::try_from(n).map_err(|_| bad("bad webhook status code")))
            .transpose()?,
        last_error: text(f, WH_LAST_ERROR)?.map(str::to_owned),
        next_attempt_at: opt_time(f, WH_NEXT_ATTEMPT_AT)?,
        lease,
        claims: opt_num(f, WH_CLAIMS)?.unwrap_or(0),
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

fn req_num(f: &Fields, name: &str) -> Result<u64, CodecError> {
    opt_num(f, name)?.ok_or_else(|| bad(format!("{name} is missing")))
}

fn opt_time(f: &Fields, name: &str) -> Result<Option<Timestamp>, CodecError> {
    Ok(opt_num(f, name)?.map(Timestamp::from_millis))
}

fn opt_ms(f: &Fields, name: &str, default: Duration) -> Result<Duration, CodecError> {
    Ok(opt_num(f, name)?.map_or(default, Duration::from_millis))
}

fn status_from(s: &str) -> Result<JobStatus, CodecError> {
    Ok(match s {
        "queued" => JobStatus::Queued,
        "in_progress" => JobStatus::InProgress,
        "succeeded" => JobStatus::Succeeded,
        "failed" => JobStatus::Failed,
        "canceled" => JobStatus::Canceled,
        "expired" => JobStatus::Expired,
        other => return Err(bad(format!("unknown status {other:?}"))),
    })
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
    let defaults = JobOptions::default();
    let method = text(&f, METHOD)?.ok_or_else(|| bad("method is missing"))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let path = text(&f, PATH)?.ok_or_else(|| bad("path is missing"))?;
    let path_and_query = PathAndQuery::try_from(path).map_err(|e| bad(e.to_string()))?;
    let request = StoredRequest {
        method,
        path_and_query,
        headers: decode_headers(f.get(REQ_HEADERS).map_or(&[][..], Vec::as_slice))?,
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
    let lease = match (opt_num(&f, LEASE_TOKEN)?, opt_time(&f, LEASE_UNTIL)?) {
        (Some(token), Some(until)) => Some(Lease {
            token: LeaseToken(token),
            until,
        }),
        _ => None,
    };
    let priority = u8::try_from(req_num(&f, PRIORITY)?)
        .ok()
        .and_then(Priority::new)
        .ok_or_else(|| bad("bad priority"))?;
    let options = JobOptions {
        priority,
        max_time_in_queue: opt_ms(&f, MAX_TIME_IN_QUEUE_MS, defaults.max_time_in_queue)?,
        result_ttl: opt_ms(&f, RESULT_TTL_MS, defaults.result_ttl)?,
        execution_timeout: opt_ms(&f, EXECUTION_TIMEOUT_MS, defaults.execution_timeout)?,
        retry: RetryPolicy {
            max_attempts: opt_num(&f, MAX_ATTEMPTS)?.map_or(defaults.retry.max_attempts, |n| {
                u32::try_from(n).unwrap_or(u32::MAX)
            }),
            initial_delay: opt_ms(&f, RETRY_INITIAL_DELAY_MS, defaults.retry.initial_delay)?,
            max_delay: opt_ms(&f, RETRY_MAX_DELAY_MS, defaults.retry.max_delay)?,
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
    let webhook = decode_delivery(&f)?.map(Box::new);
    let created_at = Timestamp::from_millis(req_num(&f, CREATED_AT)?);
    Ok(Job {
        id,
        request: Arc::new(request),
        options,
        status: status_from(text(&f, STATUS)?.ok_or_else(|| bad("status is missing"))?)?,
        attempts: u32::try_from(req_num(&f, ATTEMPTS)?).unwrap_or(u32::MAX),
        revision: req_num(&f, REVISION)?,
        created_at,
        status_at: opt_time(&f, STATUS_AT)?.unwrap_or(created_at),
        started_at: opt_time(&f, STARTED_AT)?,
        completed_at: opt_time(&f, COMPLETED_AT)?,
        expires_at: opt_time(&f, EXPIRES_AT)?,
        queue_deadline: Timestamp::from_millis(req_num(&f, QUEUE_DEADLINE)?),
        retry_at: opt_time(&f, RETRY_AT)?,
        response,
        error,
        lease,
        claims: opt_num(&f, CLAIMS)?.unwrap_or(0),
        webhook,
    })
}

/// Pairs `name, value, name, value, ...` (as `HGETALL` and the scripts
/// answer) into a map.
pub(super) fn pairs(flat: Vec<Vec<u8>>) -> Result<Fields, CodecError> {
    if !flat.len().is_multiple_of(2) {
        return Err(bad("an odd number of hash items"));
    }
    let mut out = Fields::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k = String::from_utf8(k).map_err(|_| bad("a field name is not text"))?;
        out.insert(k, v);
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
            webhook: Some(WebhookTarget {
                url: "https://example.com/hook?a=1".into(),
                format: WebhookFormat::Baseten,
            }),
            ..JobOptions::default()
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
        f.insert(METHOD.into(), job.request.method.as_str().into());
        f.insert(PATH.into(), job.request.path_and_query.as_str().into());
        f.insert(REQ_BODY.into(), job.request.body.to_vec());
        let mut put = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                f.insert(k.into(), num(v));
            }
        };
        put(STARTED_AT, job.started_at.map(Timestamp::as_millis));
        put(COMPLETED_AT, job.completed_at.map(Timestamp::as_millis));
        put(EXPIRES_AT, job.expires_at.map(Timestamp::as_millis));
        put(RETRY_AT, job.retry_at.map(Timestamp::as_millis));
        put(LEASE_TOKEN, job.lease.map(|l| l.token.0));
        put(LEASE_UNTIL, job.lease.map(|l| l.until.as_millis()));
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
        if let Some(w) = &job.webhook {
            f.insert(WH_STATUS.into(), w.status.as_str().into());
            f.insert(WH_ATTEMPTS.into(), num(u64::from(w.attempts)));
            f.insert(WH_CLAIMS.into(), num(w.claims));
            if let Some(c) = w.last_status_code {
                f.insert(WH_LAST_STATUS_CODE.into(), num(u64::from(c)));
            }
            if let Some(e) = &w.last_error {
                f.insert(WH_LAST_ERROR.into(), e.clone().into_bytes());
            }
            if let Some(at) = w.next_attempt_at {
                f.insert(WH_NEXT_ATTEMPT_AT.into(), num(at.as_millis()));
            }
            if let Some(l) = w.lease {
                f.insert(WH_LEASE_TOKEN.into(), num(l.token.0));
                f.insert(WH_LEASE_UNTIL.into(), num(l.until.as_millis()));
            }
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
        for (k, v) in [
            (field::STATUS, &b"sleeping"[..]),
            (field::REVISION, b"x"),
            (field::PRIORITY, b"7"),
            (field::ERROR_CODE, b"nope"),
            (field::METHOD, b"BAD METHOD"),
            (field::REQ_HEADERS, b"\x01\x00"),
        ] {
            let mut f = as_hash(&job);
            f.insert(k.into(), v.to_vec());
            assert!(decode_job(job.id, f).is_err(), "{k}");
        }
        let mut f = as_hash(&job);
        f.remove(field::STATUS);
        assert!(decode_job(job.id, f).is_err());
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
    fn the_scripts_spell_the_lifecycle_fields_as_the_codec_does() {
        use field::*;
        let lua = super::super::scripts::SOURCES.concat();
        for name in [
            STATUS,
            ATTEMPTS,
            REVISION,
            CLAIMS,
            LEASE_TOKEN,
            LEASE_UNTIL,
            RETRY_AT,
            QUEUE_DEADLINE,
            CREATED_AT,
            STATUS_AT,
            STARTED_AT,
            COMPLETED_AT,
            EXPIRES_AT,
            PRIORITY,
            ERROR_CODE,
            ERROR_MESSAGE,
            MAX_ATTEMPTS,
            RESULT_TTL_MS,
            OWNER,
            METHOD,
            PATH,
            REQ_BODY,
            RESP_STATUS,
            RESP_HEADERS,
            RESP_BODY,
            READY_AT,
            IDEMPOTENCY_SLOT,
            WEBHOOK_URL,
            WH_STATUS,
            WH_ATTEMPTS,
            WH_LAST_STATUS_CODE,
            WH_LAST_ERROR,
            WH_NEXT_ATTEMPT_AT,
            WH_LEASE_TOKEN,
            WH_LEASE_UNTIL,
            WH_CLAIMS,
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
