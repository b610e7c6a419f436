//! The native status document of a job.

use serde::Serialize;

use crate::job::{DeliveryStatus, Job, JobId};
use crate::time::Timestamp;

/// `GET {prefix}/{id}`: where a job is, and how it ended.
#[derive(Serialize)]
pub(crate) struct StatusDocument<'a> {
    id: JobId,
    status: &'static str,
    created_at: Timestamp,
    status_at: Timestamp,
    priority: u8,
    attempts: u32,
    /// Shown once a lease lapsed: lapses spend no attempt, so this says why
    /// a job ran more often than its attempts.
    #[serde(skip_serializing_if = "is_zero")]
    lapses: u32,
    queue_deadline: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDocument<'a>>,
    /// How many jobs shared the call that ended it, for a job of a
    /// batching route (1 when it ran alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<u32>,
    /// Present when the job has a webhook: `pending` until it has ended and
    /// its event was delivered or given up on.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<WebhookDocument<'a>>,
}

#[derive(Serialize)]
struct WebhookDocument<'a> {
    status: &'static str,
    attempts: u32,
    last_status_code: Option<u16>,
    last_error: Option<&'a str>,
}

impl<'a> WebhookDocument<'a> {
    fn new(job: &'a Job) -> Option<Self> {
        job.options.webhook.as_ref()?;
        Some(match &job.webhook {
            None => WebhookDocument {
                status: DeliveryStatus::Pending.as_str(),
                attempts: 0,
                last_status_code: None,
                last_error: None,
            },
            Some(w) => WebhookDocument {
                status: w.status.as_str(),
                attempts: w.attempts,
                last_status_code: w.last_status_code,
                last_error: w.last_error.as_deref(),
            },
        })
    }
}

#[derive(Serialize)]
struct ErrorDocument<'a> {
    code: &'static str,
    message: &'a str,
}

impl<'a> StatusDocument<'a> {
    pub(crate) fn new(job: &'a Job) -> Self {
        StatusDocument {
            id: job.id,
            status: job.status.as_str(),
            created_at: job.created_at,
            status_at: job.status_at,
            priority: job.options.priority.level(),
            attempts: job.attempts,
            lapses: job.lapses,
            queue_deadline: job.queue_deadline,
            started_at: job.started_at,
            completed_at: job.completed_at,
            expires_at: job.expires_at,
            retry_at: job.retry_at,
            status_code: job.response.as_ref().map(|r| r.status.as_u16()),
            error: job.error.as_ref().map(|e| ErrorDocument {
                code: e.code.as_str(),
                message: &e.message,
            }),
            batch_size: job.batch_size,
            webhook: WebhookDocument::new(job),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
