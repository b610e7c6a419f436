//! The events: what is POSTed when a job ends, in either format, and the
//! headers that sign it.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use super::sign::baseten_signature;
use super::Webhooks;
use crate::job::{Job, JobId, JobStatus, WebhookFormat};
use crate::time::Timestamp;

/// `webhook-id`: the same for every attempt at one job's event.
pub(crate) fn message_id(id: JobId) -> String {
    format!("msg_{id}")
}

/// What the layer knows beside the job, to render its event.
pub(crate) struct Context<'a> {
    pub(crate) webhooks: &'a Webhooks,
    /// The native prefix, for result URLs.
    pub(crate) prefix: &'a str,
    /// Baseten's `model_id` and `deployment_id`.
    pub(crate) baseten_ids: (&'a str, &'a str),
}

/// An event ready to send: its body and the headers that go with it.
pub(crate) struct Event {
    pub(crate) body: Bytes,
    pub(crate) headers: HeaderMap,
}

/// The event of a terminal `job`, signed at `now`.
pub(crate) fn render(job: &Job, format: WebhookFormat, cx: &Context<'_>, now: Timestamp) -> Event {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("tower-defer/", env!("CARGO_PKG_VERSION"))),
    );
    let body = match format {
        WebhookFormat::Standard => {
            let body = Bytes::from(to_json(&standard(job, cx)));
            let id = message_id(job.id);
            let timestamp = now.as_millis() / 1000;
            let signatures: Vec<String> = cx
                .webhooks
                .secrets
                .iter()
                .map(|s| s.sign(&id, timestamp, &body))
                .collect();
            insert(&mut headers, "webhook-id", id);
            insert(&mut headers, "webhook-timestamp", timestamp.to_string());
            if !signatures.is_empty() {
                insert(&mut headers, "webhook-signature", signatures.join(" "));
            }
            body
        }
        WebhookFormat::Baseten => {
            let body = Bytes::from(to_json(&baseten(job, cx)));
            insert(&mut headers, "x-baseten-request-id", job.id.to_string());
            if let Some(secret) = &cx.webhooks.baseten_secret {
                insert(
                    &mut headers,
                    "x-baseten-signature",
                    baseten_signature(&secret.0, &body),
                );
            }
            body
        }
    };
    Event { body, headers }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    // Ids, digits and base64: always valid header values.
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our documents hold strings, numbers and parsed JSON only.
    serde_json::to_vec(value).unwrap_or_default()
}

#[derive(Serialize)]
struct StandardEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: JobId,
    status: &'static str,
    status_code: Option<u16>,
    created_at: Timestamp,
    completed_at: Option<Timestamp>,
    output: Value,
    error: Option<ErrorBody<'a>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: Cow<'a, str>,
}

fn standard<'a>(job: &'a Job, cx: &Context<'_>) -> StandardEvent<'a> {
    let kind = match job.status {
        JobStatus::Succeeded => "job.succeeded",
        JobStatus::Expired => "job.expired",
        JobStatus::Canceled => "job.canceled",
        // Only terminal jobs are delivered.
        JobStatus::Failed | JobStatus::Queued | JobStatus::InProgress => "job.failed",
    };
    let output = match &job.response {
        None => Value::Null,
        Some(r) => (r.body.len() <= cx.webhooks.output_cap)
            .then(|| serde_json::from_slice(&r.body).ok())
            .flatten()
            .unwrap_or_else(|| Value::String(result_url(cx, job.id))),
    };
    StandardEvent {
        kind,
        id: job.id,
        status: job.status.as_str(),
        status_code: job.response.as_ref().map(|r| r.status.as_u16()),
        created_at: job.created_at,
        completed_at: job.completed_at,
        output,
        error: job.error.as_ref().map(|e| ErrorBody {
            code: e.code.as_str(),
            message: Cow::Borrowed(&e.message),
        }),
    }
}

/// `{public_url}{prefix}/{id}/result`: a path without a public URL.
fn result_url(cx: &Context<'_>, id: JobId) -> String {
    let base = cx.webhooks.public_url.as_deref().unwrap_or("");
    format!("{base}{}/{id}/result", cx.prefix)
}

#[derive(Serialize)]
struct BasetenEvent<'a> {
    request_id: JobId,
    model_id: &'a str,
    deployment_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: Timestamp,
    data: Value,
    errors: Vec<Value>,
}

fn baseten<'a>(job: &'a Job, cx: &Context<'a>) -> BasetenEvent<'a> {
    let data = match (&job.response, job.status) {
        (Some(r), JobStatus::Succeeded) => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    BasetenEvent {
        request_id: job.id,
        model_id: cx.baseten_ids.0,
        deployment_id: cx.baseten_ids.1,
        kind: "async_request_completed",
        time: job.completed_at.unwrap_or(job.status_at),
        data,
        // The same errors as Baseten's status document shows.
        errors: super::baseten_errors(job),
    }
}
