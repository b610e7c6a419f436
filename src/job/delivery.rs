//! Webhook delivery of a job's end: its state on the job, and the
//! transitions of delivering it (claim, record an attempt, lapse).

use std::time::Duration;

use super::{Job, Lease, LeaseToken, StaleLease};
use crate::time::Timestamp;

/// Where a job's webhook delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not yet delivered; more attempts to come.
    Pending,
    /// A receiver answered 2xx.
    Succeeded,
    /// The schedule ended (or the receiver refused for good) without a 2xx.
    Failed,
}

impl DeliveryStatus {
    /// `pending`, `succeeded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// A job's webhook delivery: its state, and the lease of whoever is delivering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's status code at the last attempt, if it answered.
    pub last_status_code: Option<u16>,
    /// What went wrong at the last attempt, if anything did.
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<Timestamp>,
    /// The deliverer's hold, while an attempt runs.
    pub lease: Option<Lease>,
    /// How many times delivery was claimed; the next lease token.
    pub claims: u64,
}

/// How one delivery attempt went.
#[derive(Clone, Debug)]
pub struct DeliveryAttempt {
    /// The receiver's status code, if it answered.
    pub status_code: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Whether it was delivered (a 2xx).
    pub delivered: bool,
    /// When to try again; `None` ends the schedule (failed unless delivered).
    pub retry_at: Option<Timestamp>,
}

impl WebhookDelivery {
    /// A delivery due at once, made when a job with a webhook ends.
    pub(super) fn due(now: Timestamp) -> Self {
        WebhookDelivery {
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status_code: None,
            last_error: None,
            next_attempt_at: Some(now),
            lease: None,
            claims: 0,
        }
    }
}

impl Job {
    /// When its webhook can be claimed for delivery: pending, not held by a
    /// deliverer, at its next attempt's time.
    pub fn delivery_ready_at(&self) -> Option<Timestamp> {
        let w = self.webhook.as_ref()?;
        (w.status == DeliveryStatus::Pending && w.lease.is_none())
            .then_some(w.next_attempt_at)
            .flatten()
    }

    /// Takes the webhook delivery: a lease of `lease` for one attempt.
    /// `None` unless a delivery is due at `now` and nobody holds it.
    pub fn claim_delivery(&mut self, now: Timestamp, lease: Duration) -> Option<Lease> {
        if self.delivery_ready_at().is_none_or(|at| at > now) {
            return None;
        }
        let w = self.webhook.as_mut()?;
        w.claims += 1;
        let held = Lease {
            token: LeaseToken(w.claims),
            until: now.after(lease),
        };
        w.lease = Some(held);
        Some(held)
    }

    /// Records one delivery attempt made under `token`.
    pub fn record_delivery(
        &mut self,
        token: LeaseToken,
        attempt: DeliveryAttempt,
    ) -> Result<(), StaleLease> {
        let w = self.webhook.as_mut().ok_or(StaleLease)?;
        if w.lease.map(|l| l.token) != Some(token) || w.status != DeliveryStatus::Pending {
            return Err(StaleLease);
        }
        w.attempts += 1;
        w.lease = None;
        w.last_status_code = attempt.status_code;
        w.last_error = attempt.error;
        (w.status, w.next_attempt_at) = match (attempt.delivered, attempt.retry_at) {
            (true, _) => (DeliveryStatus::Succeeded, None),
            (false, Some(at)) => (DeliveryStatus::Pending, Some(at)),
            (false, None) => (DeliveryStatus::Failed, None),
        };
        self.revision += 1;
        Ok(())
    }

    /// A delivery lease that lapsed (its deliverer died) frees the delivery
    /// for another attempt at once. Returns whether it changed.
    pub fn lapse_delivery_if_due(&mut self, now: Timestamp) -> bool {
        match self.webhook.as_mut() {
            Some(w) if w.lease.is_some_and(|l| l.until <= now) => {
                w.lease = None;
                w.next_attempt_at = Some(now);
                true
            }
            _ => false,
        }
    }
}
