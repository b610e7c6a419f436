//! How the memory store keeps a job: compact until a transition first
//! changes it.
//!
//! Most of a backlog is jobs nobody has claimed yet, and such a job is little
//! more than its request. Kept as a [`Job`], with its request behind an
//! `Arc` and an `http::HeaderMap` (a large entry for each header, whose
//! values are slices of whatever buffer the request was read into), a queued
//! job costs many times its method, path and headers, beside its body. So a
//! job fresh from [`Job::new`] is kept as [`Fresh`]: its method, path and
//! headers encoded in one buffer, its body, its options in whole milliseconds
//! and the time it was submitted. Everything else about such a job is what
//! `Job::new` makes it: queued, revision 1, its queue deadline, no attempt,
//! no lease, no error, no response. Readers get a `Job` made again from it;
//! the first transition (a claim, a cancel, an expiry) turns it into that
//! `Job`, in place.
//!
//! A job that does not fit the compact form (a duration that is not whole
//! milliseconds, say) is kept as a `Job` from the start: the compact form is
//! a saving, never a change of what a reader sees.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};

use crate::job::{
    BatchTag, Job, JobId, JobOptions, JobStatus, NewJob, Priority, RetryPolicy, StoredRequest,
    WebhookTarget,
};
use crate::time::Timestamp;

/// A job as the memory store holds it.
pub(super) enum Stored {
    /// Never changed since it was submitted.
    Fresh(Box<Fresh>),
    /// Anything else.
    Full(Box<Job>),
}

/// A queued job as submitted, compact (see the module docs).
pub(super) struct Fresh {
    /// Method, path and query, then each header's name and value, each
    /// preceded by its length (see [`encode_head`]).
    head: Box<[u8]>,
    body: Bytes,
    options: CompactOptions,
    created_at: Timestamp,
}

/// [`JobOptions`] with its durations in whole milliseconds.
struct CompactOptions {
    max_time_in_queue_ms: u64,
    result_ttl_ms: u64,
    execution_timeout_ms: u64,
    initial_delay_ms: u64,
    max_delay_ms: u64,
    max_attempts: u32,
    priority: Priority,
    owner: Option<Arc<str>>,
    idempotency_key: Option<Arc<str>>,
    // Rare, and a `String` and a tag inline: boxed.
    webhook: Option<Box<WebhookTarget>>,
    batch: Option<BatchTag>,
}

impl Stored {
    /// How to keep `job`, a job just made by [`Job::new`].
    pub(super) fn new(job: &Job) -> Stored {
        match Fresh::new(job) {
            Some(fresh) => Stored::Fresh(Box::new(fresh)),
            None => Stored::Full(Box::new(job.clone())),
        }
    }

    /// The job, as a reader sees it.
    pub(super) fn to_job(&self, id: JobId) -> Job {
        match self {
            Stored::Fresh(fresh) => fresh.to_job(id),
            Stored::Full(job) => Job::clone(job),
        }
    }

    /// The job, to change: a fresh one becomes the `Job` it stands for.
    pub(super) fn full(&mut self, id: JobId) -> &mut Job {
        if let Stored::Fresh(fresh) = self {
            *self = Stored::Full(Box::new(fresh.to_job(id)));
        }
        match self {
            Stored::Full(job) => job,
            Stored::Fresh(_) => unreachable!("made full just above"),
        }
    }

    pub(super) fn status(&self) -> JobStatus {
        match self {
            Stored::Fresh(_) => JobStatus::Queued,
            Stored::Full(job) => job.status,
        }
    }

    pub(super) fn revision(&self) -> u64 {
        match self {
            Stored::Fresh(_) => 1,
            Stored::Full(job) => job.revision,
        }
    }

    pub(super) fn created_at(&self) -> Timestamp {
        match self {
            Stored::Fresh(fresh) => fresh.created_at,
            Stored::Full(job) => job.created_at,
        }
    }

    /// [`Job::next_due`]: a fresh job's is its queue deadline.
    pub(super) fn next_due(&self) -> Option<Timestamp> {
        match self {
            Stored::Fresh(fresh) => Some(fresh.queue_deadline()),
            Stored::Full(job) => job.next_due(),
        }
    }

    /// [`Job::delivery_ready_at`]: a fresh job has no delivery yet.
    pub(super) fn delivery_ready_at(&self) -> Option<Timestamp> {
        match self {
            Stored::Fresh(_) => None,
            Stored::Full(job) => job.delivery_ready_at(),
        }
    }

    /// [`Job::is_forgotten`]: a fresh job has not ended.
    pub(super) fn is_forgotten(&self, now: Timestamp) -> bool {
        match self {
            Stored::Fresh(_) => false,
            Stored::Full(job) => job.is_forgotten(now),
        }
    }

    /// [`Job::is_visible_to`].
    pub(super) fn is_visible_to(&self, owner: Option<&str>) -> bool {
        match self {
            Stored::Fresh(fresh) => fresh.options.owner.as_deref() == owner,
            Stored::Full(job) => job.is_visible_to(owner),
        }
    }

    /// Its batch tag and request body size, if it batches.
    pub(super) fn batch(&self) -> Option<(&BatchTag, usize)> {
        match self {
            Stored::Fresh(fresh) => Some((fresh.options.batch.as_ref()?, fresh.body.len())),
            Stored::Full(job) => Some((job.options.batch.as_ref()?, job.request.body.len())),
        }
    }

    /// The owner and idempotency key the job was submitted with.
    pub(super) fn idempotency_key(&self) -> Option<(Option<Arc<str>>, Arc<str>)> {
        let (owner, key) = match self {
            Stored::Fresh(fresh) => (&fresh.options.owner, &fresh.options.idempotency_key),
            Stored::Full(job) => (&job.options.owner, &job.options.idempotency_key),
        };
        Some((owner.clone(), key.clone()?))
    }

    /// Whether `request` is the one this job was submitted with, as far as
    /// an idempotency key compares them: method, path and body.
    pub(super) fn same_request(&self, request: &StoredRequest) -> bool {
        match self {
            Stored::Fresh(fresh) => {
                let mut items = Items(&fresh.head);
                items.next() == Some(request.method.as_str().as_bytes())
                    && items.next() == Some(request.path_and_query.as_str().as_bytes())
                    && fresh.body == request.body
            }
            Stored::Full(job) => {
                job.request.method == request.method
                    && job.request.path_and_query == request.path_and_query
                    && job.request.body == request.body
            }
        }
    }
}

impl Fresh {
    /// The compact form of `job`, if it is fresh and fits.
    fn new(job: &Job) -> Option<Fresh> {
        let untouched = job.status == JobStatus::Queued
            && job.revision == 1
            && job.attempts == 0
            && job.claims == 0
            && job.status_at == job.created_at
            && job.started_at.is_none()
            && job.completed_at.is_none()
            && job.expires_at.is_none()
            && job.retry_at.is_none()
            && job.response.is_none()
            && job.error.is_none()
            && job.lease.is_none()
            && job.webhook.is_none()
            && job.batch_size.is_none()
            // What `Job::new` makes it, so it need not be kept.
            && job.queue_deadline == job.created_at.after(job.options.max_time_in_queue);
        if !untouched {
            return None;
        }
        Some(Fresh {
            head: encode_head(&job.request)?,
            body: job.request.body.clone(),
            options: CompactOptions::new(&job.options)?,
            created_at: job.created_at,
        })
    }

    fn queue_deadline(&self) -> Timestamp {
        // As `Job::new` sets it.
        let wait = Duration::from_millis(self.options.max_time_in_queue_ms);
        self.created_at.after(wait)
    }

    fn to_job(&self, id: JobId) -> Job {
        let mut items = Items(&self.head);
        // The buffer was written by `encode_head` from a valid request, so
        // every part reads back.
        let method = Method::from_bytes(items.next().unwrap_or_default()).expect("a valid method");
        let path = items.next().unwrap_or_default();
        let path_and_query =
            PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(path)).expect("a valid path");
        let mut headers = HeaderMap::with_capacity(items.clone().count() / 2);
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            headers.append(
                HeaderName::from_bytes(name).expect("a valid header name"),
                HeaderValue::from_bytes(value).expect("a valid header value"),
            );
        }
        let request = StoredRequest {
            method,
            path_and_query,
            headers,
            body: self.body.clone(),
        };
        let options = self.options.to_options();
        // The job it was, made again the same way.
        Job::new(id, NewJob { request, options }, self.created_at)
    }
}

/// The method, the path and query, and each header's name and value, each
/// preceded by its length as four bytes (big-endian): one allocation for
/// what a `HeaderMap` spreads over several. `None` for a part longer than
/// four bytes can count.
fn encode_head(request: &StoredRequest) -> Option<Box<[u8]>> {
    let parts = || {
        [
            request.method.as_str().as_bytes(),
            request.path_and_query.as_str().as_bytes(),
        ]
        .into_iter()
        .chain(
            request
                .headers
                .iter()
                .flat_map(|(name, value)| [name.as_str().as_bytes(), value.as_bytes()]),
        )
    };
    let len: usize = parts().map(|p| 4 + p.len()).sum();
    let mut head = Vec::with_capacity(len);
    for part in parts() {
        head.extend_from_slice(&u32::try_from(part.len()).ok()?.to_be_bytes());
        head.extend_from_slice(part);
    }
    Some(head.into_boxed_slice())
}

/// The parts of an encoded head, in order.
#[derive(Clone)]
struct Items<'a>(&'a [u8]);

impl<'a> Iterator for Items<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (part, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some(part)
    }
}

impl CompactOptions {
    fn new(options: &JobOptions) -> Option<Self> {
        let ms = |d: Duration| {
            d.subsec_nanos()
                .is_multiple_of(1_000_000)
                .then(|| u64::try_from(d.as_millis()).ok())
                .flatten()
        };
        Some(CompactOptions {
            max_time_in_queue_ms: ms(options.max_time_in_queue)?,
            result_ttl_ms: ms(options.result_ttl)?,
            execution_timeout_ms: ms(options.execution_timeout)?,
            initial_delay_ms: ms(options.retry.initial_delay)?,
            max_delay_ms: ms(options.retry.max_delay)?,
            max_attempts: options.retry.max_attempts,
            priority: options.priority,
            owner: options.owner.clone(),
            idempotency_key: options.idempotency_key.clone(),
            webhook: options.webhook.clone().map(Box::new),
            batch: options.batch.clone(),
        })
    }

    fn to_options(&self) -> JobOptions {
        JobOptions {
            priority: self.priority,
            max_time_in_queue: Duration::from_millis(self.max_time_in_queue_ms),
            result_ttl: Duration::from_millis(self.result_ttl_ms),
            execution_timeout: Duration::from_millis(self.execution_timeout_ms),
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                initial_delay: Duration::from_millis(self.initial_delay_ms),
                max_delay: Duration::from_millis(self.max_delay_ms),
            },
            owner: self.owner.clone(),
            idempotency_key: self.idempotency_key.clone(),
            webhook: self.webhook.as_deref().cloned(),
            batch: self.batch.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::WebhookFormat;

    fn new_job(options: JobOptions, headers: &[(&'static str, &'static [u8])]) -> Job {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let request = StoredRequest {
            method: Method::from_bytes(b"PATCH").unwrap(),
            path_and_query: PathAndQuery::from_static("/v1/models/m:predict?x=%20y&z"),
            headers: map,
            body: Bytes::from_static(b"{\"a\": 1.0}"),
        };
        Job::new(
            JobId::random(),
            NewJob { request, options },
            Timestamp::from_millis(1_700_000_000_123),
        )
    }

    fn options() -> JobOptions {
        JobOptions {
            priority: Priority::new(2).unwrap(),
            max_time_in_queue: Duration::from_secs(600),
            result_ttl: Duration::from_millis(86_400_001),
            execution_timeout: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts: 4,
                initial_delay: Duration::from_millis(250),
                max_delay: Duration::ZERO,
            },
            owner: Some(Arc::from("team-a")),
            idempotency_key: Some(Arc::from("k:1")),
            webhook: Some(WebhookTarget {
                url: "https://hooks.example/x".into(),
                format: WebhookFormat::Standard,
            }),
            batch: Some(BatchTag {
                key: Arc::from("00112233445566778899aabbccddeeff"),
                items: 2,
            }),
        }
    }

    #[test]
    fn a_fresh_job_reads_back_as_the_job_it_stands_for() {
        let headers: &[(&str, &[u8])] = &[
            ("content-type", b"application/json"),
            ("x-repeated", b"1"),
            ("accept", b"*/*"),
            ("x-repeated", b"2"),
            ("x-opaque", b"caf\xc3\xa9 \xff"),
        ];
        for (options, headers) in [(options(), headers), (JobOptions::default(), &[][..])] {
            let job = new_job(options, headers);
            let stored = Stored::new(&job);
            assert!(matches!(stored, Stored::Fresh(_)));
            assert_eq!(format!("{:?}", stored.to_job(job.id)), format!("{job:?}"));
            assert_eq!(stored.next_due(), job.next_due());
            assert_eq!(stored.created_at(), job.created_at);
            assert!(stored.same_request(&job.request));
            assert!(stored.is_visible_to(job.options.owner.as_deref()));
            assert!(!stored.is_visible_to(Some("someone else")));
        }
    }

    #[test]
    fn what_does_not_fit_is_kept_whole_and_a_change_makes_it_whole() {
        let mut odd = options();
        odd.execution_timeout = Duration::from_micros(1_500);
        let job = new_job(odd, &[]);
        let stored = Stored::new(&job);
        assert!(matches!(stored, Stored::Full(_)));
        assert_eq!(format!("{:?}", stored.to_job(job.id)), format!("{job:?}"));

        let job = new_job(options(), &[("content-type", b"text/plain")]);
        let mut stored = Stored::new(&job);
        let now = Timestamp::from_millis(1_700_000_000_500);
        let lease = stored
            .full(job.id)
            .claim(now, Duration::from_secs(30))
            .expect("a fresh job is runnable");
        assert!(matches!(stored, Stored::Full(_)));
        assert_eq!(stored.status(), JobStatus::InProgress);
        assert_eq!(stored.revision(), 2);
        assert_eq!(stored.to_job(job.id).lease, Some(lease));
    }

    #[test]
    fn another_request_is_not_the_same() {
        let job = new_job(options(), &[]);
        let stored = Stored::new(&job);
        let mut other = StoredRequest::clone(&job.request);
        other.body = Bytes::from_static(b"{}");
        assert!(!stored.same_request(&other));
        let mut other = StoredRequest::clone(&job.request);
        other.method = Method::POST;
        assert!(!stored.same_request(&other));
        let mut other = StoredRequest::clone(&job.request);
        other.path_and_query = PathAndQuery::from_static("/v1/models/m:predict");
        assert!(!stored.same_request(&other));
    }
}
