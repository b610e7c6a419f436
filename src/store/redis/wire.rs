//! The Rust side of the functions' calling convention, besides a job's hash
//! (`codec.rs`): the arguments that several calls share, and reading the
//! answers (a tag, then a job's fields or a number).

use std::time::Duration;

use super::codec;
use super::functions::Invocation;
use crate::job::{Job, JobError, JobId, StoredResponse};
use crate::store::StoreError;

pub(super) fn undecodable(
    what: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::unavailable(format!("redis: the answer to {what} does not decode"), e)
}

pub(super) fn decode(what: &str, id: JobId, flat: Vec<Vec<u8>>) -> Result<Job, StoreError> {
    codec::pairs(flat)
        .and_then(|f| codec::decode_job(id, f))
        .map_err(|e| undecodable(what, e))
}

pub(super) fn parse_u64(what: &str, bytes: &[u8]) -> Result<Option<u64>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| undecodable(what, "not a number"))
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends a response and an error as the complete and retry scripts take them.
pub(super) fn outcome_args(
    inv: &mut Invocation,
    response: Option<&StoredResponse>,
    error: Option<&JobError>,
) {
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

/// The job id in a job hash returned by a script (its `id` field), for the
/// answers about a job the script found in Redis (claim_delivery,
/// idempotent enqueue).
pub(super) fn first_id(flat: &[Vec<u8>]) -> Option<JobId> {
    flat.chunks(2)
        .find(|kv| kv[0] == codec::field::ID.as_bytes())
        .and_then(|kv| kv.get(1))
        .and_then(|id| parse_id(id))
}

/// A job id as a script answers it.
pub(super) fn parse_id(bytes: &[u8]) -> Option<JobId> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A function's answer split into its tag and what follows it.
pub(super) fn split_tag(
    what: &'static str,
    mut out: Vec<Vec<u8>>,
) -> Result<(String, Vec<Vec<u8>>), StoreError> {
    if out.is_empty() {
        return Err(undecodable(what, "an empty answer"));
    }
    let tag = String::from_utf8(out.remove(0)).unwrap_or_default();
    Ok((tag, out))
}
