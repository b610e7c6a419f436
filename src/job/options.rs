//! A job's options, fixed when it is submitted: priority, deadlines,
//! retries, owner, idempotency key and webhook.

use std::sync::Arc;
use std::time::Duration;

/// A job's options, fixed when it is submitted.
///
/// Non-exhaustive, so that options can be added: start from
/// [`JobOptions::default`] and set the fields you need.
///
/// ```
/// use std::time::Duration;
/// use tower_defer::job::{JobOptions, Priority};
///
/// let mut options = JobOptions::default();
/// options.priority = Priority::HIGH;
/// options.result_ttl = Duration::from_secs(60);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JobOptions {
    /// 0 runs first, 2 last.
    pub priority: Priority,
    /// A job not started this long after submission ends `expired`.
    pub max_time_in_queue: Duration,
    /// How long a finished job stays retrievable.
    pub result_ttl: Duration,
    /// How long one inner call may run.
    pub execution_timeout: Duration,
    /// Retries after a 5xx.
    pub retry: RetryPolicy,
    /// Who submitted it: lookups and cancels by anyone else answer 404.
    pub owner: Option<Arc<str>>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<Arc<str>>,
    /// Where to deliver the job's end, if anywhere.
    pub webhook: Option<WebhookTarget>,
    /// Which queued jobs it may share one inner call with, if any (set at
    /// submission for a route that batches; see [`crate::batch`]).
    pub batch: Option<BatchTag>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            priority: Priority::NORMAL,
            max_time_in_queue: Duration::from_secs(600),
            result_ttl: Duration::from_secs(3600),
            execution_timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            owner: None,
            idempotency_key: None,
            webhook: None,
            batch: None,
        }
    }
}

/// What a store needs to know to batch a job: its compatibility key and
/// how many inputs it carries. See [`crate::batch`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BatchTag {
    /// Jobs with equal keys may share one call.
    pub key: Arc<str>,
    /// How many inputs the job's request carries (at least 1).
    pub items: u32,
}

/// A job's priority: 0 runs first, 2 last; 1 is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// The highest priority (0).
    pub const HIGH: Priority = Priority(0);
    /// The default priority (1).
    pub const NORMAL: Priority = Priority(1);
    /// The lowest priority (2).
    pub const LOW: Priority = Priority(2);
    /// How many levels there are.
    pub const LEVELS: usize = 3;

    /// A priority from 0 to 2; `None` outside that range.
    pub fn new(level: u8) -> Option<Self> {
        (usize::from(level) < Self::LEVELS).then_some(Priority(level))
    }

    /// The level, 0 to 2.
    pub fn level(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

/// How often, and how patiently, a job is retried after a 5xx.
///
/// Non-exhaustive, so that the policy can learn more (jitter, say): start
/// from [`RetryPolicy::default`] and change what you need.
///
/// ```
/// use std::time::Duration;
/// use tower_defer::job::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(5)
///     .with_initial_delay(Duration::from_millis(200))
///     .with_max_delay(Duration::from_secs(10));
/// assert_eq!(policy.max_attempts, 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay before the second attempt; it doubles after each.
    pub initial_delay: Duration,
    /// The cap on the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(5000),
        }
    }
}

impl RetryPolicy {
    /// This policy with `max_attempts` attempts in all, the first included.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// This policy with `initial_delay` before the second attempt.
    pub fn with_initial_delay(mut self, initial_delay: Duration) -> Self {
        self.initial_delay = initial_delay;
        self
    }

    /// This policy with its delays capped at `max_delay`.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }
}

/// Where, and in which format, a job's end is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// An `http` or `https` URL.
    pub url: String,
    /// The body and signature scheme.
    pub format: WebhookFormat,
}

/// A webhook's body and signature scheme.
///
/// Non-exhaustive: more platforms' formats will come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookFormat {
    /// The native event, signed per the Standard Webhooks specification.
    Standard,
    /// Baseten's body, signed with `X-BASETEN-SIGNATURE`.
    Baseten,
}
