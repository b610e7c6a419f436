//! The Baseten dialect, mounted at `/` (opt in with
//! [`DeferLayer::baseten`](crate::DeferLayer::baseten)).
//!
//! | request | answer |
//! |---|---|
//! | `POST /async_predict` (also under `/production`, `/development`, `/environments/{name}`, `/deployment/{id}`) | `201 {"request_id"}`; the inner request is `POST {predict_path}` with `model_input` as its JSON body |
//! | `GET /async_request/{id}` | `{request_id, model_id, deployment_id, status, webhook_status, created_at, status_at, errors}` |
//! | `DELETE /async_request/{id}` | `{request_id, canceled, message}`: as on Baseten, only queued jobs cancel |
//! | `GET …/async_queue_status` | `{model_id, deployment_id, num_queued_requests, num_in_progress_requests}` |
//!
//! Status polling is limited per owner (default 20 requests a second, as
//! Baseten does) with `429` + `Retry-After`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::jobs::{base_options, enqueue, lookup, no_job};
use super::Doors;
use super::RequestBody;
use super::{json, options, read_body, store_unavailable};
use crate::error::Problem;
use crate::job::{DeliveryStatus, Job, JobId, JobStatus, NewJob, StoredRequest, WebhookFormat};
use crate::store::{QueuedCancel, Store};

/// The Baseten dialect's settings.
///
/// ```
/// use tower_defer::{Baseten, DeferLayer, MemoryStore};
///
/// let layer = DeferLayer::new(MemoryStore::new()).baseten(
///     Baseten::new()
///         .predict_path("/v1/predict")
///         .model_id("abcd1234")
///         .deployment_id("dep5678"),
/// );
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct Baseten {
    predict_path: PathAndQuery,
    model_id: String,
    deployment_id: String,
    status_rate_limit: Option<u32>,
}

impl Default for Baseten {
    fn default() -> Self {
        Baseten {
            predict_path: PathAndQuery::from_static("/predict"),
            model_id: String::new(),
            deployment_id: String::new(),
            status_rate_limit: Some(20),
        }
    }
}

impl Baseten {
    /// The defaults: inner path `/predict`, empty ids, 20 status polls a
    /// second per owner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `model_input` is sent (default `/predict`).
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/` or is not a valid path.
    pub fn predict_path(mut self, path: &str) -> Self {
        assert!(
            path.starts_with('/'),
            "the predict path must start with '/', got {path:?}"
        );
        self.predict_path = path.parse().expect("a valid path");
        self
    }

    /// The `model_id` shown in status documents.
    pub fn model_id(mut self, id: impl Into<String>) -> Self {
        self.model_id = id.into();
        self
    }

    /// The `deployment_id` shown in status documents.
    pub fn deployment_id(mut self, id: impl Into<String>) -> Self {
        self.deployment_id = id.into();
        self
    }

    /// `model_id` and `deployment_id`, for the webhook body.
    pub(crate) fn ids(&self) -> (String, String) {
        (self.model_id.clone(), self.deployment_id.clone())
    }

    /// Status polls allowed per owner and second (default 20); `None` for no limit.
    pub fn status_rate_limit(mut self, per_second: Option<u32>) -> Self {
        self.status_rate_limit = per_second.filter(|&n| n > 0);
        self
    }
}

/// The dialect's settings and its polling limiter, doors by clones.
pub(crate) struct BasetenState {
    settings: Baseten,
    limiter: RateLimiter,
}

impl BasetenState {
    pub(crate) fn new(settings: Baseten) -> Self {
        BasetenState {
            limiter: RateLimiter::new(settings.status_rate_limit),
            settings,
        }
    }
}

pub(crate) enum Endpoint {
    Submit,
    QueueStatus,
    Status(JobId),
    Cancel(JobId),
    NotFound(String),
    MethodNotAllowed(&'static str),
}

/// The environment prefixes Baseten serves a model under.
fn strip_environment(path: &str) -> &str {
    for fixed in ["/production", "/development"] {
        if let Some(rest) = path.strip_prefix(fixed) {
            if rest.starts_with('/') {
                return rest;
            }
        }
    }
    for named in ["/environments/", "/deployment/"] {
        if let Some(rest) = path.strip_prefix(named) {
            if let Some((name, rest)) = rest.split_once('/') {
                if !name.is_empty() {
                    return path
                        .len()
                        .checked_sub(rest.len() + 1)
                        .map_or(path, |i| &path[i..]);
                }
            }
        }
    }
    path
}

/// The endpoint for `path`, or `None` when it is not a Baseten route.
pub(crate) fn endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    let by_method = |allowed: &'static str, ok: bool, endpoint: Endpoint| {
        if ok {
            endpoint
        } else {
            Endpoint::MethodNotAllowed(allowed)
        }
    };
    if let Some(id) = path.strip_prefix("/async_request/") {
        return Some(match id.parse::<JobId>() {
            Ok(id) if method == Method::DELETE => Endpoint::Cancel(id),
            Ok(id) => by_method("GET, DELETE", method == Method::GET, Endpoint::Status(id)),
            Err(_) => Endpoint::NotFound(no_job(id)),
        });
    }
    match strip_environment(path) {
        "/async_predict" => Some(by_method("POST", method == Method::POST, Endpoint::Submit)),
        "/async_queue_status" => Some(by_method(
            "GET",
            method == Method::GET,
            Endpoint::QueueStatus,
        )),
        _ => None,
    }
}

pub(crate) async fn handle<St, B>(
    doors: &Doors<St>,
    state: &BasetenState,
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
    let settings = &state.settings;
    match endpoint {
        Endpoint::Submit => submit(doors, settings, &parts, body).await,
        Endpoint::Status(id) => {
            state.limiter.check(owner)?;
            let job = lookup(doors, id, owner).await?;
            Ok(json(StatusCode::OK, &status_document(settings, &job)))
        }
        Endpoint::Cancel(id) => {
            let job = lookup(doors, id, owner).await?;
            cancel_queued(doors, &job, owner).await
        }
        Endpoint::QueueStatus => {
            let stats = doors
                .store
                .stats()
                .await
                .map_err(|e| store_unavailable(&e))?;
            Ok(json(
                StatusCode::OK,
                &json!({
                    "model_id": settings.model_id,
                    "deployment_id": settings.deployment_id,
                    "num_queued_requests": stats.queued,
                    "num_in_progress_requests": stats.in_progress,
                }),
            ))
        }
        Endpoint::NotFound(detail) => Err(Problem::not_found(detail)),
        Endpoint::MethodNotAllowed(allow) => Err(Problem::method_not_allowed(allow)),
    }
}

async fn submit<St, B>(
    doors: &Doors<St>,
    settings: &Baseten,
    parts: &http::request::Parts,
    body: B,
) -> Result<Response<Bytes>, Problem>
where
    St: Store,
    B: RequestBody,
{
    let mut options = base_options(doors, parts)?;
    let bytes = read_body(&doors.config, &parts.headers, body).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(mut fields) = value else {
        return Err(Problem::bad_request(
            "invalid_envelope",
            "the body must be a JSON object with a `model_input` field",
        ));
    };
    let model_input = fields
        .remove("model_input")
        .ok_or_else(|| Problem::bad_request("missing_field", "missing field `model_input`"))?;
    options::from_envelope(&fields, &mut options, doors.config.max_result_ttl)?;
    match fields.get("webhook_endpoint") {
        None | Some(Value::Null) => {}
        Some(Value::String(url)) => {
            options.webhook = Some(super::options::webhook_target(
                &doors.config,
                url,
                WebhookFormat::Baseten,
                "webhook_endpoint",
            )?);
        }
        Some(other) => {
            return Err(Problem::bad_request(
                "invalid_field",
                format!("`webhook_endpoint` must be a URL string, got {other}"),
            ))
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let request = StoredRequest {
        method: Method::POST,
        path_and_query: settings.predict_path.clone(),
        headers,
        body: Bytes::from(serde_json::to_vec(&model_input).unwrap_or_default()),
    };
    let enqueued = enqueue(doors, NewJob { request, options }, &parts.headers).await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &json!({ "request_id": enqueued.job.id })))
}

/// Baseten's cancel: only a queued job cancels; a running or finished one is
/// left alone and says why.
async fn cancel_queued<St: Store>(
    doors: &Doors<St>,
    job: &Job,
    owner: Option<&str>,
) -> Result<Response<Bytes>, Problem> {
    let id = job.id;
    let answer = |canceled: bool, message: String| {
        json(
            StatusCode::OK,
            &json!({ "request_id": id, "canceled": canceled, "message": message }),
        )
    };
    if job.status != JobStatus::Queued {
        return Ok(answer(false, not_canceled(job)));
    }
    match doors.store.cancel_queued(id, owner).await {
        Ok(QueuedCancel::Canceled(job)) => {
            crate::metrics::finished(job.status);
            doors.activity.finished(job.id, job.status);
            Ok(answer(true, format!("Request {id} was canceled.")))
        }
        Ok(QueuedCancel::NotQueued(job)) => Ok(answer(false, not_canceled(&job))),
        Ok(QueuedCancel::NotFound) => Err(Problem::not_found(no_job(id.as_str()))),
        Err(e) => Err(store_unavailable(&e)),
    }
}

fn not_canceled(job: &Job) -> String {
    let why = match job.status {
        JobStatus::InProgress => "it is in progress".to_owned(),
        _ => format!("it has already ended ({})", baseten_status(job)),
    };
    format!("Request {} was not canceled: {why}.", job.id)
}

/// Baseten's status: a job that succeeded but whose webhook could not be
/// delivered is `WEBHOOK_FAILED`.
fn baseten_status(job: &Job) -> &'static str {
    match job.status {
        JobStatus::Queued => "QUEUED",
        JobStatus::InProgress => "IN_PROGRESS",
        JobStatus::Succeeded if webhook_status(job) == "FAILED" => "WEBHOOK_FAILED",
        JobStatus::Succeeded => "SUCCEEDED",
        JobStatus::Failed => "FAILED",
        JobStatus::Expired => "EXPIRED",
        JobStatus::Canceled => "CANCELED",
    }
}

fn webhook_status(job: &Job) -> &'static str {
    match (&job.options.webhook, &job.webhook) {
        (None, _) => "NO_WEBHOOK_PROVIDED",
        (Some(_), None) => "PENDING",
        (Some(_), Some(w)) => match w.status {
            DeliveryStatus::Pending => "PENDING",
            DeliveryStatus::Succeeded => "SUCCEEDED",
            DeliveryStatus::Failed => "FAILED",
        },
    }
}

fn status_document(settings: &Baseten, job: &Job) -> Value {
    json!({
        "request_id": job.id,
        "model_id": settings.model_id,
        "deployment_id": settings.deployment_id,
        "status": baseten_status(job),
        "webhook_status": webhook_status(job),
        "created_at": job.created_at,
        "status_at": job.status_at,
        "errors": crate::webhook::baseten_errors(job),
    })
}

/// A token bucket per owner: `rate` requests a second, bursts of `rate`.
struct RateLimiter {
    rate: Option<u32>,
    buckets: DashMap<Option<Arc<str>>, Mutex<(f64, tokio::time::Instant)>>,
}

impl RateLimiter {
    fn new(rate: Option<u32>) -> Self {
        RateLimiter {
            rate,
            buckets: DashMap::new(),
        }
    }

    fn check(&self, owner: Option<&str>) -> Result<(), Problem> {
        let Some(rate) = self.rate else { return Ok(()) };
        let rate = f64::from(rate);
        let now = tokio::time::Instant::now();
        let key = owner.map(Arc::from);
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Mutex::new((rate, now)));
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.duration_since(b.1).as_secs_f64() * rate;
        b.0 = (b.0 + refill).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - b.0) / rate);
        Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("status polling is limited to {rate} requests per second; use a webhook instead of polling"),
        )
        .retry_after(wait.as_secs().max(1)))
    }
}
