//! Baseten's list of what went wrong with a job, as both its webhook body and
//! its status document show it. Compiled with or without the `webhooks`
//! feature: the Baseten front door shows it too.

use serde_json::{json, Value};

use crate::job::{ErrorCode, Job, JobStatus};

/// Baseten's error codes for what went wrong, as its status document and
/// its webhook show them.
pub(crate) fn baseten_errors(job: &Job) -> Vec<Value> {
    let error = |code: &str, message: String| json!({ "code": code, "message": message });
    if let Some(e) = &job.error {
        if job.status.is_terminal() {
            let code = match e.code {
                ErrorCode::ExecutionTimeout => "MODEL_PREDICT_TIMEOUT",
                ErrorCode::QueueTimeout | ErrorCode::UpstreamUnavailable => "MODEL_UNAVAILABLE",
                ErrorCode::Canceled => "CANCELED",
                ErrorCode::UpstreamStatus
                | ErrorCode::UpstreamError
                | ErrorCode::ResponseBodyError => "MODEL_PREDICT_ERROR",
                _ => "INTERNAL_SERVER_ERROR",
            };
            return vec![error(code, e.message.clone())];
        }
    }
    match (&job.response, job.status) {
        (Some(r), JobStatus::Failed) => {
            let code = if r.status.is_client_error() {
                "MODEL_INVALID_INPUT"
            } else {
                "MODEL_PREDICT_ERROR"
            };
            vec![error(
                code,
                format!("Server responded with status code {}", r.status.as_u16()),
            )]
        }
        _ => Vec::new(),
    }
}
