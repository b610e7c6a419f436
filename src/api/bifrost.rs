//! The Bifrost dialect, mounted at `/v1/async` (opt in with
//! [`DeferLayer::bifrost`](crate::DeferLayer::bifrost)).
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/async/{route…}` | the inner `POST /v1/{route…}` with the same body and headers, as a job: `202 {id, status: "pending", created_at}`; `x-bf-async-job-result-ttl` (seconds) sets the result TTL |
//! | `GET /v1/async/{route…}/{id}` | `202 {id, status: "pending" \| "processing", created_at}` until finished, then `200 {id, status: "completed" \| "failed", created_at, completed_at, expires_at, status_code, result \| error}` |
//!
//! Unknown or expired ids, and ids submitted under another route, are `404`.
//! Errors use Bifrost's error shape: `{is_bifrost_error, status_code, error: {type, message}}`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, LOCATION, RETRY_AFTER};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::jobs::{base_options, enqueue, lookup, no_job};
use super::Doors;
use super::RequestBody;
use super::{json, read_body};
use crate::error::Problem;
use crate::job::{Job, JobId, JobStatus, NewJob, StoredRequest};
use crate::policy;
use crate::store::Store;

/// Where the dialect is mounted.
pub(crate) const MOUNT: &str = "/v1/async";
const RESULT_TTL_HEADER: &str = "x-bf-async-job-result-ttl";

pub(crate) enum Endpoint {
    Submit {
        route: String,
    },
    Get {
        route: String,
        id: Result<JobId, String>,
    },
    MethodNotAllowed(&'static str),
    NotFound(String),
}

/// The endpoint for `path`, or `None` when it is not under `/v1/async/`.
///
/// `POST /v1/async/a/b` submits to route `a/b`; `GET /v1/async/a/b/{id}`
/// reads job `id` of route `a/b`.
pub(crate) fn endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix(MOUNT)?;
    let rest = match rest.strip_prefix('/') {
        Some(r) => r,
        None if rest.is_empty() => "",
        None => return None, // `/v1/asyncfoo`
    };
    if rest.is_empty()
        || rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some(Endpoint::NotFound(format!("no route {path}")));
    }
    Some(match *method {
        Method::POST => Endpoint::Submit {
            route: rest.to_owned(),
        },
        Method::GET => match rest.rsplit_once('/') {
            Some((route, id)) => Endpoint::Get {
                route: route.to_owned(),
                id: id.parse().map_err(|_| id.to_owned()),
            },
            None => Endpoint::NotFound(format!("no route {path}: add a job id")),
        },
        _ => Endpoint::MethodNotAllowed("GET, POST"),
    })
}

pub(crate) async fn handle<St, B>(
    doors: &Doors<St>,
    endpoint: Endpoint,
    req: Request<B>,
) -> Response<Bytes>
where
    St: Store,
    B: RequestBody,
{
    let result = match endpoint {
        Endpoint::Submit { route } => submit(doors, &route, req).await,
        Endpoint::Get { route, id } => {
            let owner = doors.config.owner_of(&req.into_parts().0);
            match id {
                Ok(id) => get(doors, &route, id, owner.as_deref()).await,
                Err(id) => Err(Problem::not_found(no_job(&id))),
            }
        }
        Endpoint::MethodNotAllowed(allow) => Err(Problem::method_not_allowed(allow)),
        Endpoint::NotFound(detail) => Err(Problem::not_found(detail)),
    };
    result.unwrap_or_else(bifrost_error)
}

/// A layer problem in Bifrost's error shape.
fn bifrost_error(problem: Problem) -> Response<Bytes> {
    let mut response = json(
        problem.status,
        &json!({
            "is_bifrost_error": true,
            "status_code": problem.status.as_u16(),
            "error": { "type": problem.code, "message": problem.detail },
        }),
    );
    if let Some(s) = problem.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(allow) = problem.allow {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn inner_path(route: &str) -> String {
    format!("/v1/{route}")
}

async fn submit<St, B>(
    doors: &Doors<St>,
    route: &str,
    req: Request<B>,
) -> Result<Response<Bytes>, Problem>
where
    St: Store,
    B: RequestBody,
{
    let (parts, body) = req.into_parts();
    let mut options = base_options(doors, &parts)?;
    if let Some(value) = parts.headers.get(RESULT_TTL_HEADER) {
        let secs = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&s| s >= 1)
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid_header",
                    format!("`{RESULT_TTL_HEADER}` must be a whole number of seconds, at least 1"),
                )
            })?;
        options.result_ttl = Duration::from_secs(secs).min(doors.config.max_result_ttl);
    }
    let bytes = read_body(&doors.config, &parts.headers, body).await?;
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let path_and_query = PathAndQuery::try_from(format!("{}{query}", inner_path(route)))
        .map_err(|_| Problem::not_found(format!("no route {}", parts.uri.path())))?;
    let mut headers =
        policy::request_headers_to_store(&parts.headers, doors.config.forward_credentials);
    headers.remove(RESULT_TTL_HEADER);
    let request = StoredRequest {
        method: Method::POST,
        path_and_query,
        headers,
        body: bytes,
    };
    let enqueued = enqueue(doors, NewJob { request, options }, &parts.headers).await?;
    let job = &enqueued.job;
    let mut response = json(
        StatusCode::ACCEPTED,
        &json!({ "id": job.id, "status": status_name(job), "created_at": job.created_at }),
    );
    if let Ok(location) = HeaderValue::try_from(format!("{MOUNT}/{route}/{}", job.id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

fn status_name(job: &Job) -> &'static str {
    match job.status {
        JobStatus::Queued => "pending",
        JobStatus::InProgress => "processing",
        JobStatus::Succeeded => "completed",
        JobStatus::Failed | JobStatus::Canceled | JobStatus::Expired => "failed",
    }
}

async fn get<St: Store>(
    doors: &Doors<St>,
    route: &str,
    id: JobId,
    owner: Option<&str>,
) -> Result<Response<Bytes>, Problem> {
    let job = lookup(doors, id, owner).await?;
    // The route of the GET must be the route the job was submitted to.
    if job.request.path_and_query.path() != inner_path(route) {
        return Err(Problem::not_found(no_job(id.as_str())));
    }
    let mut doc = Map::new();
    doc.insert("id".into(), json!(job.id));
    doc.insert("status".into(), json!(status_name(&job)));
    doc.insert("created_at".into(), json!(job.created_at));
    if !job.status.is_terminal() {
        let mut response = json(StatusCode::ACCEPTED, &doc);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
        return Ok(response);
    }
    doc.insert("completed_at".into(), json!(job.completed_at));
    doc.insert("expires_at".into(), json!(job.expires_at));
    if let Some(r) = &job.response {
        doc.insert("status_code".into(), json!(r.status.as_u16()));
    }
    if job.status == JobStatus::Succeeded {
        doc.insert("result".into(), body_value(&job));
    } else {
        doc.insert("error".into(), error_value(&job));
    }
    Ok(json(StatusCode::OK, &doc))
}

/// The inner body as JSON when it is JSON, else as text.
fn body_value(job: &Job) -> Value {
    job.response.as_ref().map_or(Value::Null, |r| {
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()))
    })
}

/// A failed job's error, shaped like Bifrost's: an OpenAI-style error body
/// from the inner service is carried over; otherwise the layer's own error.
fn error_value(job: &Job) -> Value {
    let status_code = job.response.as_ref().map(|r| r.status.as_u16());
    let inner_error = job
        .response
        .as_ref()
        .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .and_then(|v| v.get("error").filter(|e| e.is_object()).cloned());
    match (inner_error, &job.error) {
        (Some(error), _) => {
            let kind = error.get("type").cloned().unwrap_or(Value::Null);
            json!({
                "type": kind,
                "is_bifrost_error": false,
                "status_code": status_code,
                "error": error,
            })
        }
        (None, Some(e)) => json!({
            "type": e.code.as_str(),
            "is_bifrost_error": true,
            "status_code": status_code,
            "error": { "type": e.code.as_str(), "code": e.code.as_str(), "message": e.message },
        }),
        (None, None) => {
            let message = match &job.response {
                Some(r) => format!("Server responded with status code {}", r.status.as_u16()),
                None => format!("the job ended {}", job.status),
            };
            let raw = job
                .response
                .as_ref()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned());
            json!({
                "type": "upstream_error",
                "is_bifrost_error": false,
                "status_code": status_code,
                "error": { "type": "upstream_error", "message": message, "raw": raw },
            })
        }
    }
}
