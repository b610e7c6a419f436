//! The delivery loop: claims due deliveries from the store, makes each
//! attempt on its own task, and records how it went.
//!
//! It runs beside the worker pool, never in it: deliveries hold permits of
//! their own semaphore ([`Webhooks::concurrency`]), so a slow or dead
//! receiver never takes a slot from the inner service. Every attempt is
//! fenced by the delivery's lease: a process that dies mid-attempt loses
//! nothing, its lease lapses and the delivery is claimed again (by another
//! replica, or by this one after a restart). Delivery is at-least-once;
//! receivers deduplicate on `webhook-id`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::client::{is_refused_address, Client};
use super::event::{self, Context};
use super::Webhooks;
use crate::error::error_chain;
use crate::job::DeliveryAttempt;
use crate::policy;
use crate::shutdown::{stopped, Control};
use crate::store::{DeliveryClaim, Store};
use crate::time::Timestamp;
use crate::trace::{self, TraceContext};

/// The longest `Retry-After` a receiver can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of a receiver's answer is read (and dropped), so the connection
/// can be reused.
const MAX_ANSWER: usize = 64 * 1024;

/// What the delivery loop knows beside the jobs, to render their events.
pub(crate) struct About {
    /// The native prefix, for result links.
    pub(crate) prefix: String,
    /// Baseten's `model_id` and `deployment_id` (`None`: empty strings).
    pub(crate) baseten_ids: Option<(String, String)>,
}

/// Delivers until the pool is told to stop; then lets attempts in flight
/// finish within the grace period and drops the rest (their leases lapse).
pub(crate) async fn deliver_loop<St: Store>(
    store: Arc<St>,
    webhooks: Arc<Webhooks>,
    about: About,
    default_grace: Duration,
    mut control: watch::Receiver<Control>,
) {
    let client = Client::new(&webhooks);
    let permits = Arc::new(Semaphore::new(webhooks.concurrency));
    let about = Arc::new(about);
    let mut attempts = JoinSet::new();
    let grace = loop {
        while attempts.try_join_next().is_some() {}
        let permit = tokio::select! {
            grace = stopped(&mut control, default_grace) => break grace,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        // A claim is never abandoned half-way: the store would hold the
        // delivery until its lease lapsed.
        match store.claim_delivery(webhooks.lease()).await {
            Ok(Some(claim)) => {
                // A delivery is a span of the job's trace, like an attempt.
                let trace = trace::Call::of(&claim.job.request.headers, claim.job.id);
                let span = trace::job_span!(
                    "webhook",
                    tracing::field::display(claim.job.id),
                    trace.context,
                    Some(&trace.parent),
                    attempt = claim.job.webhook.as_ref().map_or(0, |w| w.attempts) + 1
                );
                let attempt = attempt(
                    store.clone(),
                    about.clone(),
                    webhooks.clone(),
                    client.clone(),
                    claim,
                    trace.context,
                    permit,
                );
                attempts.spawn(attempt.instrument(span));
            }
            Ok(None) => {
                drop(permit);
                let until = Timestamp::now().after(Duration::from_secs(1));
                tokio::select! {
                    grace = stopped(&mut control, default_grace) => break grace,
                    () = store.delivery_available(until) => {}
                }
            }
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e, "claiming a webhook delivery failed; trying again in 1 s");
                tokio::select! {
                    grace = stopped(&mut control, default_grace) => break grace,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let drain = async { while attempts.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::debug!(
            "webhook attempts still in flight at shutdown are dropped; they will be retried"
        );
    }
    attempts.shutdown().await;
}

/// How one attempt went, before it is recorded.
enum Sent {
    Answered {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// No answer: refused, reset, timed out. Tried again.
    Failed(String),
    /// Refused by policy (allowlist, private address). Never tried again.
    Refused(String),
}

async fn attempt<St: Store>(
    store: Arc<St>,
    about: Arc<About>,
    webhooks: Arc<Webhooks>,
    client: Client,
    claim: DeliveryClaim,
    trace: TraceContext,
    _permit: OwnedSemaphorePermit,
) {
    let job = &claim.job;
    let Some(target) = job.options.webhook.as_ref() else {
        // A store only hands out jobs with a target; end one that has none
        // rather than claim it again at every lapse.
        let attempt = DeliveryAttempt {
            status_code: None,
            error: Some("the job has no webhook target".into()),
            delivered: false,
            retry_at: None,
        };
        let _ = store
            .record_delivery(job.id, claim.lease.token, attempt)
            .await;
        return;
    };
    let made = job.webhook.as_ref().map_or(0, |w| w.attempts);
    if made == 0 {
        // The first attempt waits out the schedule's first delay.
        let first = job
            .completed_at
            .unwrap_or(job.status_at)
            .after(webhooks.schedule[0]);
        tokio::time::sleep_until(first.to_instant()).await;
    }
    let (model_id, deployment_id) = about
        .baseten_ids
        .as_ref()
        .map_or(("", ""), |(m, d)| (m.as_str(), d.as_str()));
    let cx = Context {
        webhooks: &webhooks,
        prefix: &about.prefix,
        baseten_ids: (model_id, deployment_id),
    };
    let mut event = event::render(job, target.format, &cx, Timestamp::now());
    trace.set_on(&mut event.headers);
    let sent = match webhooks.check_url(&target.url) {
        Err(why) => Sent::Refused(format!("the webhook URL {why}")),
        Ok(()) => send(&client, &target.url, event, webhooks.attempt_timeout).await,
    };
    let made = made + 1;
    let retry = |retry_after: Option<Duration>| {
        retry_delay(&webhooks.schedule, made, retry_after).map(|d| Timestamp::now().after(d))
    };
    let record = match sent {
        Sent::Answered { status, .. } if status.is_success() => DeliveryAttempt {
            status_code: Some(status.as_u16()),
            error: None,
            delivered: true,
            retry_at: None,
        },
        Sent::Answered {
            status,
            retry_after,
        } => {
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            let error = if status.is_redirection() {
                format!(
                    "the receiver answered {} (redirects are not followed)",
                    status.as_u16()
                )
            } else {
                format!("the receiver answered {}", status.as_u16())
            };
            DeliveryAttempt {
                status_code: Some(status.as_u16()),
                error: Some(error),
                delivered: false,
                retry_at: retryable.then(|| retry(retry_after)).flatten(),
            }
        }
        Sent::Failed(error) => DeliveryAttempt {
            status_code: None,
            error: Some(error),
            delivered: false,
            retry_at: retry(None),
        },
        Sent::Refused(error) => DeliveryAttempt {
            status_code: None,
            error: Some(error),
            delivered: false,
            retry_at: None,
        },
    };
    let result = match (record.delivered, record.retry_at.is_some()) {
        (true, _) => "succeeded",
        (false, true) => "retrying",
        (false, false) => "failed",
    };
    crate::metrics::webhook_delivery(result);
    if let Some(code) = record.status_code {
        trace::note_status_code(code);
    }
    trace::note_outcome(result, record.delivered);
    match &record.error {
        None => tracing::info!(status_code = record.status_code, "webhook delivered"),
        Some(error) if result == "retrying" => {
            tracing::info!(%error, retry_at = ?record.retry_at, "webhook not delivered; will retry")
        }
        Some(error) => tracing::warn!(%error, "webhook not delivered; giving up"),
    }
    match store
        .record_delivery(job.id, claim.lease.token, record)
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_stale_lease() => {
            tracing::debug!("the delivery's lease lapsed meanwhile; another attempt owns it")
        }
        Err(e) => tracing::warn!(
            error = %e,
            "recording the webhook attempt failed; its lease will lapse and it will be tried again"
        ),
    }
}

/// How long to wait before the next attempt, after `made` attempts; `None`
/// once the schedule has ended. `Retry-After` (capped) can lengthen the
/// schedule's wait, never shorten it.
fn retry_delay(
    schedule: &[Duration],
    made: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let step = *schedule.get(made as usize)?;
    Some(retry_after.map_or(step, |asked| step.max(asked.min(MAX_RETRY_AFTER))))
}

/// POSTs the event, waiting at most `timeout` for the answer's head; the
/// answer's body is read (and dropped) within what is left of it.
async fn send(client: &Client, url: &str, event: event::Event, timeout: Duration) -> Sent {
    let mut request = Request::new(Full::new(event.body));
    *request.method_mut() = Method::POST;
    *request.headers_mut() = event.headers;
    match url.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return Sent::Refused("the webhook URL is not a valid URL".into()),
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let response = match tokio::time::timeout_at(deadline, client.send(request)).await {
        Err(_) => {
            return Sent::Failed(format!(
                "the receiver did not answer within {} s",
                timeout.as_secs_f64()
            ))
        }
        Ok(Err(e)) if is_refused_address(&*e) => return Sent::Refused(error_chain(&*e)),
        Ok(Err(e)) => return Sent::Failed(error_chain(&*e)),
        Ok(Ok(response)) => response,
    };
    let (parts, body) = response.into_parts();
    let _ = tokio::time::timeout_at(deadline, Limited::new(body, MAX_ANSWER).collect()).await;
    Sent::Answered {
        status: parts.status,
        retry_after: policy::retry_after(&parts.headers, Timestamp::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_ends_and_retry_after_only_lengthens_it() {
        let schedule = Webhooks::new().schedule;
        assert_eq!(schedule.len(), 5);
        let total: Duration = schedule.iter().sum();
        assert!(total > Duration::from_secs(50 * 60) && total < Duration::from_secs(70 * 60));
        let s = |n| Duration::from_secs(n);
        assert_eq!(retry_delay(&schedule, 1, None), Some(s(30)));
        assert_eq!(retry_delay(&schedule, 4, None), Some(s(2700)));
        assert_eq!(retry_delay(&schedule, 5, None), None, "five attempts made");
        assert_eq!(retry_delay(&schedule, 1, Some(s(5))), Some(s(30)));
        assert_eq!(retry_delay(&schedule, 1, Some(s(90))), Some(s(90)));
        assert_eq!(
            retry_delay(&schedule, 1, Some(s(86_400))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_delay(&schedule, 5, Some(s(1))), None);
    }
}
