//! What an autoscaler reads: how much work waits per call slot, and whether
//! it waits because nobody answers.
//!
//! These are the two signals SageMaker's asynchronous endpoints scale on
//! (`ApproximateBacklogSizePerInstance` and `HasBacklogWithoutCapacity`),
//! computed for one [`Defer`](crate::Defer) service:
//!
//! - **backlog**: the store's queued jobs, those ready to run and those
//!   waiting out a retry's backoff ([`QueueStats::queued`], which counts
//!   both). Running jobs are not backlog.
//! - **backlog per slot**: the backlog divided by the pool's concurrency,
//!   its call slots. Above 1, every slot would be busy and jobs still wait.
//! - **backlog without capacity**: `true` when the backlog is not empty and
//!   this pool's last call found nobody to answer (no connection could be
//!   made: refused, or with the proxy's `Upstream` any connect error) and no call has been answered since. A model scaled to
//!   zero shows it as soon as the first job is tried; the first answered call
//!   (any status, a `503` too) clears it.
//!
//! With a shared store (Redis) every replica reads the same backlog and
//! divides it by its own slots, and judges the upstream by its own calls: an
//! aggregate over replicas takes the maximum (or the mean), never the sum,
//! which would count the one backlog once per replica.
//!
//! [`Defer::scaling`](crate::Defer::scaling) hands out a [`Scaling`], which
//! turns the store's statistics into [`Signals`]; the queue document
//! (`{prefix}/queue`) shows them, and [`metrics::record_scaling`](crate::metrics::record_scaling)
//! sets them as gauges.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tower::Layer;
//! use tower_defer::{Body, DeferLayer, MemoryStore, Store};
//!
//! let inner = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//! });
//! let app = DeferLayer::new(MemoryStore::new()).concurrency(4).layer(inner);
//! let scaling = app.scaling();
//! let stats = app.store().stats().await.unwrap();
//! let signals = scaling.signals(&stats);
//! assert_eq!(signals.slots, 4);
//! assert_eq!(signals.backlog_per_slot, 0.0);
//! assert!(!signals.backlog_without_capacity);
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::store::QueueStats;

/// Reads the scaling signals of one [`Defer`](crate::Defer) service; get one
/// from [`Defer::scaling`](crate::Defer::scaling). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Scaling {
    /// The pool's own flag: set by a call that found nobody to answer,
    /// cleared by the next answered call.
    upstream_down: Arc<AtomicBool>,
    slots: usize,
}

impl Scaling {
    pub(crate) fn new(upstream_down: Arc<AtomicBool>, slots: usize) -> Self {
        Scaling {
            upstream_down,
            slots,
        }
    }

    /// Whether the pool's last call found nobody to answer, with no call
    /// answered since.
    pub fn upstream_down(&self) -> bool {
        self.upstream_down.load(Ordering::Relaxed)
    }

    /// The pool's call slots (its concurrency).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The signals, from the store's statistics and the pool's view of the
    /// upstream now.
    pub fn signals(&self, stats: &QueueStats) -> Signals {
        Signals::new(stats, self.slots, self.upstream_down())
    }
}

/// The scaling signals at one moment (see the [module docs](self)).
///
/// Non-exhaustive, so that signals can be added.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Signals {
    /// Queued jobs, ready or waiting out a retry's backoff.
    pub backlog: u64,
    /// The pool's call slots.
    pub slots: usize,
    /// `backlog / slots`.
    pub backlog_per_slot: f64,
    /// Jobs wait and the pool finds nobody to answer.
    pub backlog_without_capacity: bool,
}

impl Signals {
    /// The signals for `stats`, a pool of `slots` call slots, and whether
    /// that pool finds the upstream down.
    pub fn new(stats: &QueueStats, slots: usize, upstream_down: bool) -> Self {
        let backlog = stats.queued;
        Signals {
            backlog,
            slots,
            // A pool has at least one slot; the guard keeps a hand-built zero
            // from dividing by it.
            backlog_per_slot: backlog as f64 / slots.max(1) as f64,
            backlog_without_capacity: backlog > 0 && upstream_down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(queued: u64, retrying: u64) -> QueueStats {
        QueueStats {
            queued,
            retrying,
            ..QueueStats::default()
        }
    }

    #[test]
    fn the_backlog_is_every_queued_job_retrying_ones_included() {
        let s = Signals::new(&stats(6, 4), 4, false);
        assert_eq!(s.backlog, 6);
        assert_eq!(s.backlog_per_slot, 1.5);
        assert!(!s.backlog_without_capacity);
    }

    #[test]
    fn there_is_a_backlog_without_capacity_only_when_jobs_wait_and_the_upstream_is_down() {
        assert!(Signals::new(&stats(1, 1), 16, true).backlog_without_capacity);
        assert!(!Signals::new(&stats(0, 0), 16, true).backlog_without_capacity);
        assert!(!Signals::new(&stats(3, 0), 16, false).backlog_without_capacity);
    }

    #[test]
    fn the_handle_reads_the_pools_flag_as_it_changes() {
        let flag = Arc::new(AtomicBool::new(false));
        let scaling = Scaling::new(flag.clone(), 2);
        assert!(!scaling.signals(&stats(2, 0)).backlog_without_capacity);
        flag.store(true, Ordering::Relaxed);
        assert!(scaling.upstream_down());
        assert_eq!(
            scaling.signals(&stats(2, 0)),
            Signals {
                backlog: 2,
                slots: 2,
                backlog_per_slot: 1.0,
                backlog_without_capacity: true
            }
        );
    }
}
