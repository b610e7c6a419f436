//! The VESSL output view: `GET {prefix}/{id}/output`.
//!
//! `status` is `pending`, `in_progress`, `completed` (the inner service
//! answered 2xx) or `failed` (any other answer, or no answer: expired,
//! canceled, an error on the way). Once finished: `status_code` and
//! `raw_output` when there was an answer, `output` when its body is JSON,
//! and `fail_reason` when failed.

use serde::Serialize;

use crate::job::{Job, JobStatus};

#[derive(Serialize)]
pub(crate) struct OutputDocument {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_reason: Option<String>,
}

impl OutputDocument {
    pub(crate) fn new(job: &Job) -> Self {
        let status = match job.status {
            JobStatus::Queued => "pending",
            JobStatus::InProgress => "in_progress",
            JobStatus::Succeeded => "completed",
            JobStatus::Failed | JobStatus::Canceled | JobStatus::Expired => "failed",
        };
        let mut doc = OutputDocument {
            status,
            status_code: None,
            raw_output: None,
            output: None,
            fail_reason: None,
        };
        if !job.status.is_terminal() {
            return doc;
        }
        if let Some(response) = &job.response {
            doc.status_code = Some(response.status.as_u16());
            doc.raw_output = Some(String::from_utf8_lossy(&response.body).into_owned());
            doc.output = serde_json::from_slice(&response.body).ok();
        }
        if job.status != JobStatus::Succeeded {
            doc.fail_reason = Some(match (&job.error, &job.response) {
                (Some(e), _) => e.message.clone(),
                (None, Some(r)) => {
                    format!("Server responded with status code {}", r.status.as_u16())
                }
                (None, None) => job.status.as_str().to_owned(),
            });
        }
        doc
    }
}
