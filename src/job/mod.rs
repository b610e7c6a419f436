//! Jobs: what was asked, how it is going, and how it ended.
//!
//! A [`Job`] is a stored request plus its options, its lifecycle and its
//! outcome. Its state machine lives here, as plain methods on `Job` that take
//! the time as an argument: every [`Store`](crate::store::Store) applies the
//! same transitions atomically, and they are tested without any I/O.
//!
//! ```text
//! queued ──claim──> in_progress ──finish──> succeeded | failed
//!   │  ^                 │
//!   │  └──requeue/lapse──┤
//!   ├──cancel──> canceled <──cancel──┘
//!   └──deadline──> expired
//! ```
//!
//! Terminal states never change again.
//!
//! Attempts and lapses are counted apart. An attempt is spent by a call the
//! inner service may have run (an answer, an error once connected, a
//! timeout); a retry because nobody could be reached, a worker's shutdown,
//! or a lapsed lease (the worker died or hung) spends none. A job whose
//! lease lapses [`MAX_LAPSES`] times fails with
//! [`ErrorCode::Abandoned`]: it may be what kills its workers.

// One concept per file; everything is re-exported here, so a job type's path
// is `crate::job::X` whichever file defines it.
mod delivery;
mod id;
mod lease;
mod lifecycle;
mod options;
mod outcome;
mod request;

pub use delivery::{DeliveryAttempt, DeliveryStatus, WebhookDelivery};
pub use id::{InvalidJobId, JobId, JOB_ID_LEN};
pub use lease::{Lease, LeaseToken, StaleLease};
pub use lifecycle::{Job, JobStatus, MAX_LAPSES};
pub use options::{BatchTag, JobOptions, Priority, RetryPolicy, WebhookFormat, WebhookTarget};
pub use outcome::{CancelOutcome, ErrorCode, JobError, Outcome, Retry};
pub use request::{NewJob, StoredRequest, StoredResponse};
