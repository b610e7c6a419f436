//! What the front doors and the worker pool each need at run time, defined
//! below both so that neither reaches up into the layer or the service.
//!
//! [`DeferLayer`](crate::DeferLayer) fills a [`DoorConfig`] and a
//! [`PoolConfig`]; [`Defer`](crate::Defer) hands the first to the front doors
//! (`api::Doors`, which adds the doors' own state) and the second to the pool
//! ([`Pool`]). The two share only the store and the few settings both read,
//! which are copied into each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::activity::Recorder;
use crate::batch::Batch;
use crate::job::JobOptions;
use crate::store::Store;

/// Extracts a job's owner from the submitting request's head.
pub(crate) type OwnerFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// The front doors' settings: what a submission may be, how lookups wait.
#[derive(Clone)]
pub(crate) struct DoorConfig {
    pub(crate) prefix: String,
    /// The pool's concurrency, shown in the queue document.
    pub(crate) concurrency: usize,
    pub(crate) max_body: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) max_queue: usize,
    pub(crate) defaults: JobOptions,
    pub(crate) max_result_ttl: Duration,
    pub(crate) forward_credentials: bool,
    pub(crate) max_wait: Duration,
    pub(crate) owner: Option<OwnerFn>,
    pub(crate) bifrost: bool,
    /// The routes that batch: a submission to one is tagged with its batch key.
    pub(crate) batches: Arc<[Batch]>,
    /// Webhook delivery, when configured; `None` refuses every webhook.
    #[cfg(feature = "webhooks")]
    pub(crate) webhooks: Option<Arc<crate::Webhooks>>,
}

impl Default for DoorConfig {
    fn default() -> Self {
        DoorConfig {
            prefix: "/async".into(),
            concurrency: DEFAULT_CONCURRENCY,
            max_body: 10 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            max_queue: 10_000,
            defaults: JobOptions::default(),
            max_result_ttl: Duration::from_secs(7 * 86_400),
            forward_credentials: false,
            max_wait: Duration::from_secs(60),
            owner: None,
            bifrost: false,
            batches: Arc::from([]),
            #[cfg(feature = "webhooks")]
            webhooks: None,
        }
    }
}

impl DoorConfig {
    pub(crate) fn owner_of(&self, parts: &Parts) -> Option<Arc<str>> {
        self.owner.as_ref().and_then(|f| f(parts)).map(Arc::from)
    }
}

/// The pool's settings: how many calls, how long a lease, how large an answer.
#[derive(Clone)]
pub(crate) struct PoolConfig {
    pub(crate) concurrency: usize,
    pub(crate) max_output: usize,
    pub(crate) lease: Duration,
    pub(crate) priority_aging: Option<Duration>,
    pub(crate) shutdown_grace: Duration,
    /// The routes that batch: how a claimed job of one finds company.
    pub(crate) batches: Arc<[Batch]>,
    /// The native prefix, for the result links in webhook events.
    #[cfg_attr(not(feature = "webhooks"), allow(dead_code))]
    pub(crate) prefix: String,
    /// Webhook delivery, when configured.
    #[cfg(feature = "webhooks")]
    pub(crate) webhooks: Option<Arc<crate::Webhooks>>,
    /// Baseten's `model_id` and `deployment_id`, for its webhook body
    /// (`None`: empty strings).
    #[cfg_attr(not(feature = "webhooks"), allow(dead_code))]
    pub(crate) baseten_ids: Option<(String, String)>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            concurrency: DEFAULT_CONCURRENCY,
            max_output: 100 * 1024 * 1024,
            lease: Duration::from_secs(30),
            priority_aging: Some(Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(30),
            batches: Arc::from([]),
            prefix: "/async".into(),
            #[cfg(feature = "webhooks")]
            webhooks: None,
            baseten_ids: None,
        }
    }
}

/// Inner calls in flight at once, by default.
const DEFAULT_CONCURRENCY: usize = 16;

/// What the worker pool shares between its tasks: the store and its settings.
pub(crate) struct Pool<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: PoolConfig,
    /// Set when a call found the upstream unavailable (nobody could be
    /// reached); the next call answered clears it and wakes the jobs that
    /// wait for the upstream. Shared with [`Scaling`](crate::scaling::Scaling),
    /// which reports it.
    pub(crate) upstream_down: Arc<AtomicBool>,
    /// What this process saw happen, for the live page; shared with the
    /// doors, which count submissions and cancels.
    pub(crate) activity: Arc<Recorder>,
}

impl<St: Store> Pool<St> {
    pub(crate) fn new(store: Arc<St>, config: PoolConfig) -> Self {
        Pool {
            store,
            config,
            upstream_down: Arc::new(AtomicBool::new(false)),
            activity: Arc::default(),
        }
    }

    /// A call found nobody to answer.
    pub(crate) fn saw_unavailable(&self) {
        self.upstream_down.store(true, Ordering::Relaxed);
    }

    /// A call was answered: after a run of refusals, the upstream is back,
    /// so the jobs waiting out a backoff for it run now rather than each at
    /// the end of its own. One caller wakes them (the swap), and a call
    /// answered while nothing was down costs one load.
    pub(crate) async fn answered(&self) {
        if !self.upstream_down.load(Ordering::Relaxed)
            || !self.upstream_down.swap(false, Ordering::Relaxed)
        {
            return;
        }
        match self.store.wake_unavailable().await {
            Ok(0) => {}
            Ok(woken) => tracing::info!(woken, "the upstream answered again: waiting jobs run now"),
            Err(e) => {
                tracing::warn!(error = %e, "waking the jobs that wait for the upstream failed")
            }
        }
    }
}
