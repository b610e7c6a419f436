//! The native API under the prefix `P` (VESSL-compatible), and
//! `Prefer: respond-async` on every other route.
//!
//! | request | answer |
//! |---|---|
//! | `POST P` + envelope | `201 {"id"}` + `Location` (`200` for a repeated `Idempotency-Key`) |
//! | `GET P/queue` | queue statistics |
//! | `GET P/activity` | the last 15 minutes, every replica's (see `live.rs`) |
//! | `GET P/recent` | the jobs last submitted or ended, every replica's; `?status=`, `?limit=` |
//! | `GET P/ui` | the live page |
//! | `GET P/{id}` | status document: `202` until terminal, then `200`; `Prefer: wait=N` long-polls |
//! | `GET P/{id}/output` | the VESSL document |
//! | `GET P/{id}/result` | the inner response, verbatim |
//! | `DELETE P/{id}` | cancel: `200`, or `409` if already terminal |
//! | other route + `Prefer: respond-async` | `202` + `Location`, or with `wait=N` the inner response itself |

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Map, Value};

use super::document::StatusDocument;
use super::envelope::{Envelope, EnvelopeError, Field, Fields};
use super::jobs::{answering_about, base_options, enqueue, lookup, no_job};
use super::live;
use super::vessl::OutputDocument;
use super::Doors;
use super::RequestBody;
use super::{json, json_body, options, read_body, store_unavailable, Prefer};
use crate::context::DoorConfig;
use crate::error::Problem;
use crate::job::{CancelOutcome, Job, JobId, JobOptions, NewJob, StoredRequest};
use crate::policy;
use crate::store::Store;
use crate::time::Timestamp;

/// The header naming the job on an inner response returned by `Prefer: wait`.
pub(crate) const JOB_ID_HEADER: &str = "defer-job-id";

/// A native route, matched from method and path.
pub(crate) enum Endpoint {
    Submit,
    Queue,
    Activity,
    Recent,
    Ui,
    OpenApi,
    Status(JobId),
    Cancel(JobId),
    Output(JobId),
    Result(JobId),
    NotFound(String),
    MethodNotAllowed(&'static str),
}

/// The endpoint for `path`, or `None` when the path is not under `prefix`.
pub(crate) fn endpoint(prefix: &str, method: &Method, path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None; // `/asyncfoo` is not under `/async`
    }
    // At most three segments matter; read without collecting them (this
    // runs on every request to the API).
    let mut segments = rest.split('/').skip(1);
    let segments = (segments.next(), segments.next(), segments.next());
    let by_method = |allowed: &'static str, ok: bool, endpoint: Endpoint| {
        if ok {
            endpoint
        } else {
            Endpoint::MethodNotAllowed(allowed)
        }
    };
    let job = |id: &str| id.parse::<JobId>().ok();
    let not_found = || Endpoint::NotFound(format!("no route {path}"));
    let is_get = method == Method::GET;
    Some(match segments {
        (None, _, _) => by_method("POST", method == Method::POST, Endpoint::Submit),
        (Some("queue"), None, _) => by_method("GET", is_get, Endpoint::Queue),
        (Some("activity"), None, _) => by_method("GET", is_get, Endpoint::Activity),
        (Some("recent"), None, _) => by_method("GET", is_get, Endpoint::Recent),
        (Some("ui"), None, _) => by_method("GET", is_get, Endpoint::Ui),
        (Some("openapi.json"), None, _) => by_method("GET", is_get, Endpoint::OpenApi),
        (Some(id), None, _) => match job(id) {
            Some(id) if method == Method::DELETE => Endpoint::Cancel(id),
            Some(id) => by_method("GET, DELETE", is_get, Endpoint::Status(id)),
            None => Endpoint::NotFound(no_job(id)),
        },
        (Some(id), Some("output"), None) => match job(id) {
            Some(id) => by_method("GET", is_get, Endpoint::Output(id)),
            None => Endpoint::NotFound(no_job(id)),
        },
        (Some(id), Some("result"), None) => match job(id) {
            Some(id) => by_method("GET", is_get, Endpoint::Result(id)),
            None => Endpoint::NotFound(no_job(id)),
        },
        _ => not_found(),
    })
}

pub(crate) async fn handle<St, B>(
    doors: &Doors<St>,
    endpoint: Endpoint,
    req: Request<B>,
) -> Result<Response<Bytes>, Problem>
where
    St: Store,
    B: RequestBody,
{
    let (parts, body) = req.into_parts();
    let owner = doors.config.owner_of(&parts);
    let owner = owner.as_deref();
    match endpoint {
        Endpoint::Submit => submit_envelope(doors, &parts, body).await,
        Endpoint::Queue => queue(doors).await,
        Endpoint::Activity => live::activity(doors).await,
        Endpoint::Recent => live::recent(doors, owner, parts.uri.query()).await,
        Endpoint::OpenApi => {
            let spec = super::openapi::document(&doors.config, doors.baseten.is_some());
            Ok(json_body(StatusCode::OK, spec))
        }
        Endpoint::Ui => Ok(live::page()),
        Endpoint::Status(id) => {
            let wait = Prefer::from_headers(&parts.headers).wait;
            let mut job = lookup(doors, id, owner).await?;
            if let Some(secs) = wait.filter(|_| !job.status.is_terminal()) {
                let until =
                    Timestamp::now().after(doors.config.max_wait.min(Duration::from_secs(secs)));
                let changed = doors.store.wait(id, job.revision, until).await;
                job = changed
                    .map_err(|e| store_unavailable(&e))?
                    .ok_or_else(|| Problem::not_found(no_job(id.as_str())))?;
            }
            Ok(status_response(&doors.config.prefix, &job))
        }
        Endpoint::Output(id) => {
            let job = lookup(doors, id, owner).await?;
            Ok(json(StatusCode::OK, &OutputDocument::new(&job)))
        }
        Endpoint::Result(id) => {
            let job = lookup(doors, id, owner).await?;
            match (&job.response, job.status.is_terminal()) {
                (Some(response), true) => Ok(replay(&job, response)),
                (_, false) => Ok(status_response(&doors.config.prefix, &job)),
                (None, true) => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "no_result",
                    format!(
                        "job {id} ended {} without a response from the service: {}",
                        job.status,
                        job.error
                            .as_ref()
                            .map_or("no detail", |e| e.message.as_str())
                    ),
                )),
            }
        }
        Endpoint::Cancel(id) => match doors.store.cancel(id, owner).await {
            Ok(CancelOutcome::Canceled(job)) => {
                answering_about(&job);
                crate::metrics::finished(job.status);
                doors.activity.finished(job.id, job.status);
                Ok(json(StatusCode::OK, &StatusDocument::new(&job)))
            }
            Ok(CancelOutcome::AlreadyTerminal(job)) => {
                answering_about(&job);
                Err(Problem::new(
                    StatusCode::CONFLICT,
                    "already_terminal",
                    format!("job {id} has already ended: {}", job.status),
                ))
            }
            Ok(CancelOutcome::NotFound) => Err(Problem::not_found(no_job(id.as_str()))),
            Err(e) => Err(store_unavailable(&e)),
        },
        Endpoint::NotFound(detail) => Err(Problem::not_found(detail)),
        Endpoint::MethodNotAllowed(allow) => Err(Problem::method_not_allowed(allow)),
    }
}

async fn queue<St: Store>(doors: &Doors<St>) -> Result<Response<Bytes>, Problem> {
    let stats = doors
        .store
        .stats()
        .await
        .map_err(|e| store_unavailable(&e))?;
    let now = Timestamp::now();
    let oldest = stats
        .oldest_queued_at
        .map_or(0.0, |t| now.since(t).as_secs_f64());
    let signals = doors.scaling.signals(&stats);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "queued": stats.queued,
            "queued_by_priority": stats.queued_by_priority,
            "retrying": stats.retrying,
            "in_progress": stats.in_progress,
            "oldest_queued_seconds": (oldest * 1000.0).round() / 1000.0,
            "max_queued": doors.config.max_queue,
            "concurrency": doors.config.concurrency,
            "backlog_per_slot": (signals.backlog_per_slot * 1000.0).round() / 1000.0,
            "backlog_without_capacity": u8::from(signals.backlog_without_capacity),
        }),
    ))
}

fn location(prefix: &str, id: JobId) -> HeaderValue {
    // Concatenated by hand: on every submission, and `format!` costs more.
    let mut path = String::with_capacity(prefix.len() + 1 + id.as_str().len());
    path.push_str(prefix);
    path.push('/');
    path.push_str(id.as_str());
    HeaderValue::try_from(path).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// `202` + `Retry-After` while the job runs, `200` once it has ended.
fn status_response(prefix: &str, job: &Job) -> Response<Bytes> {
    let terminal = job.status.is_terminal();
    let status = if terminal {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = json(status, &StatusDocument::new(job));
    if !terminal {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
        response
            .headers_mut()
            .insert(LOCATION, location(prefix, job.id));
    }
    response
}

/// The inner response, verbatim, plus the job's id.
fn replay(job: &Job, response: &crate::job::StoredResponse) -> Response<Bytes> {
    let mut out = Response::new(response.body.clone());
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers.clone();
    if let Ok(v) = HeaderValue::from_str(job.id.as_str()) {
        out.headers_mut()
            .insert(HeaderName::from_static(JOB_ID_HEADER), v);
    }
    out
}

/// `POST P` with the VESSL envelope.
pub(crate) async fn submit_envelope<St, B>(
    doors: &Doors<St>,
    parts: &http::request::Parts,
    body: B,
) -> Result<Response<Bytes>, Problem>
where
    St: Store,
    B: RequestBody,
{
    let content_type = parts.headers.get(CONTENT_TYPE);
    if content_type.is_some() && !policy::is_json_content_type(content_type) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the envelope must be JSON (Content-Type: application/json)",
        ));
    }
    let options = base_options(doors, parts)?;
    let bytes = read_body(&doors.config, &parts.headers, body).await?;
    let mut job = parse_envelope(&bytes, options, &doors.config)?;
    policy::retain_request_headers_to_store(
        &mut job.request.headers,
        doors.config.forward_credentials,
    );
    let enqueued = enqueue(doors, job, &parts.headers).await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = created(status, enqueued.job.id);
    response
        .headers_mut()
        .insert(LOCATION, location(&doors.config.prefix, enqueued.job.id));
    Ok(response)
}

/// The answer to a submission, `{"id":"…"}`, written by hand: it is on the
/// path of every submission, and an id needs no escaping (its alphabet is
/// letters and digits).
fn created(status: StatusCode, id: JobId) -> Response<Bytes> {
    let id = id.as_str();
    let mut body = Vec::with_capacity(r#"{"id":""}"#.len() + id.len());
    body.extend_from_slice(br#"{"id":""#);
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(br#""}"#);
    json_body(status, Bytes::from(body))
}

fn invalid(field: &str, detail: impl std::fmt::Display) -> Problem {
    Problem::bad_request("invalid_field", format!("`{field}` {detail}"))
}

/// Parses the envelope: `data` (required), `method` (POST), `path` (/),
/// `headers`, the per-job options of [`options`], and `webhook`.
/// Fields it does not know are ignored, as VESSL does.
pub(crate) fn parse_envelope(
    bytes: &[u8],
    mut options: JobOptions,
    config: &DoorConfig,
) -> Result<NewJob, Problem> {
    let envelope = Envelope::parse(bytes).map_err(|e| match e {
        EnvelopeError::Malformed(e) => {
            Problem::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        }
        EnvelopeError::NotAnObject => Problem::bad_request(
            "invalid_envelope",
            "the body must be a JSON object with a `data` field",
        ),
    })?;
    let data = envelope
        .data
        .ok_or_else(|| Problem::bad_request("missing_field", "missing field `data`"))?;
    let method = match envelope.field("method")? {
        Field::Missing => Method::POST,
        Field::Text(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
            invalid(
                "method",
                format_args!("must be an HTTP method such as \"POST\", got {m:?}"),
            )
        })?,
        Field::Other(other) => {
            return Err(invalid(
                "method",
                format_args!("must be a string, got {other}"),
            ))
        }
    };
    let path = match envelope.field("path")? {
        Field::Missing => PathAndQuery::from_static("/"),
        Field::Text(p) if p.starts_with('/') => PathAndQuery::try_from(&*p)
            .map_err(|_| invalid("path", format_args!("is not a valid path: {p:?}")))?,
        Field::Text(p) => {
            return Err(invalid(
                "path",
                format_args!("must start with \"/\", got {p:?}"),
            ))
        }
        Field::Other(other) => {
            return Err(invalid(
                "path",
                format_args!("must be a string, got {other}"),
            ))
        }
    };
    let mut headers = match envelope.field("headers")? {
        // Room for the `Content-Type` added below, and no more: the job keeps
        // this map, at its exact size, for as long as it is queued.
        Field::Missing => HeaderMap::with_capacity(1),
        Field::Other(map) if map.is_object() => {
            envelope_headers(map.as_object().expect("an object"))?
        }
        _ => {
            return Err(invalid(
                "headers",
                "must be an object of header names to strings",
            ))
        }
    };
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    options::from_envelope(&envelope, &mut options, config.max_result_ttl)?;
    options::webhook_from_envelope(&envelope, &mut options, config)?;
    Ok(NewJob {
        request: StoredRequest {
            method,
            path_and_query: path,
            headers,
            body: Bytes::copy_from_slice(data.get().as_bytes()),
        },
        options,
    })
}

fn envelope_headers(map: &Map<String, Value>) -> Result<HeaderMap, Problem> {
    let mut headers = HeaderMap::with_capacity(map.len());
    for (name, value) in map {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "headers",
                format_args!("has an invalid header name {name:?}"),
            )
        })?;
        let Value::String(value) = value else {
            return Err(invalid(
                "headers",
                format_args!("value of {name:?} must be a string"),
            ));
        };
        let value = HeaderValue::from_str(value).map_err(|_| {
            invalid(
                "headers",
                format_args!("value of {name:?} is not a valid header value"),
            )
        })?;
        headers.append(header, value);
    }
    Ok(headers)
}

/// Any other route with `Prefer: respond-async`: the request, stored as sent.
pub(crate) async fn submit_prefer<St, B>(
    doors: &Doors<St>,
    prefer: Prefer,
    req: Request<B>,
) -> Result<Response<Bytes>, Problem>
where
    St: Store,
    B: RequestBody,
{
    let (parts, body) = req.into_parts();
    let mut options = base_options(doors, &parts)?;
    options::from_headers(&parts.headers, &mut options, doors.config.max_result_ttl)?;
    options::webhook_from_headers(&parts.headers, &mut options, &doors.config)?;
    let bytes = read_body(&doors.config, &parts.headers, body).await?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let request = StoredRequest {
        method: parts.method.clone(),
        path_and_query,
        headers: policy::request_headers_to_store(&parts.headers, doors.config.forward_credentials),
        body: bytes,
    };
    let enqueued = enqueue(doors, NewJob { request, options }, &parts.headers).await?;
    let mut job = enqueued.job;
    let wait = prefer
        .wait
        .map(|s| doors.config.max_wait.min(Duration::from_secs(s)));
    if let Some(wait) = wait {
        let until = Timestamp::now().after(wait);
        while !job.status.is_terminal() && Timestamp::now() < until {
            match doors.store.wait(job.id, job.revision, until).await {
                Ok(Some(changed)) => job = changed,
                Ok(None) => break,
                Err(e) => return Err(store_unavailable(&e)),
            }
        }
    }
    let mut applied = String::from("respond-async");
    if let Some(wait) = wait {
        applied.push_str(&format!(", wait={}", wait.as_secs()));
    }
    let mut response = match (&job.response, job.status.is_terminal()) {
        (Some(inner), true) => replay(&job, inner),
        _ => {
            let mut r = json(
                if job.status.is_terminal() {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                },
                &StatusDocument::new(&job),
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
            r.headers_mut()
                .insert(LOCATION, location(&doors.config.prefix, job.id));
            r
        }
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::try_from(applied) {
        headers.insert(HeaderName::from_static("preference-applied"), v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_created_answer_is_the_json_a_serializer_would_write() {
        let id = JobId::random();
        let response = created(StatusCode::CREATED, id);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let expected = serde_json::to_vec(&serde_json::json!({ "id": id.as_str() })).unwrap();
        assert_eq!(response.body()[..], expected[..]);
    }
}
