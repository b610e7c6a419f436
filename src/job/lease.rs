//! Leases: the hold of whoever is working on a job, which fences their
//! writes.

use crate::time::Timestamp;

/// The token of one claim on a job: it fences the worker's writes.
///
/// Tokens of one job only grow, so a stale worker's token never matches again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken(pub u64);

/// A worker's hold on a running job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Fences writes.
    pub token: LeaseToken,
    /// The lease lapses (the job may be claimed again) at this time.
    pub until: Timestamp,
}

/// A write with a lease that no longer holds (another worker owns the job,
/// or it was canceled or expired meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleLease;
