//! [`DeferLayer`]: the builder, and the layer that wraps an inner service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use tower_layer::Layer;

use crate::context::{DoorConfig, PoolConfig};
use crate::job::{Priority, RetryPolicy};
use crate::service::Defer;
use crate::store::{MemoryStore, Store};
use crate::worker::{InnerService, Worker};

/// The settings a [`DeferLayer`] collects, split by who reads them.
#[derive(Clone, Default)]
struct Config {
    doors: DoorConfig,
    pool: PoolConfig,
    baseten: Option<crate::Baseten>,
}

/// Wraps a service so that its requests can also be made asynchronously.
///
/// Wrap the whole application, once: `DeferLayer::new(store).layer(app)`
/// gives one worker pool for all of it. (Axum's `Router::layer` would apply
/// the layer to each route separately, with a pool per route.)
///
/// `layer` spawns the worker pool on the current tokio runtime, so call it
/// inside one; [`pair`](DeferLayer::pair) hands the worker to you instead.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt};
/// use tower_defer::{Body, DeferLayer, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let model = tower::service_fn(|_req: Request<Body>| async {
///     Ok::<_, Infallible>(Response::new(Body::from("{\"text\":\"Hello!\"}")))
/// });
/// let app = DeferLayer::new(MemoryStore::new())
///     .prefix("/async")
///     .concurrency(4)
///     .layer(model);
///
/// let submit = Request::post("/async")
///     .header("content-type", "application/json")
///     .body(Body::from(r#"{"data": {"question": "How are you?"}}"#))
///     .unwrap();
/// let created = app.oneshot(submit).await.unwrap();
/// assert_eq!(created.status(), 201);
/// assert!(created.headers()["location"].to_str().unwrap().starts_with("/async/"));
/// # }
/// ```
#[derive(Clone)]
pub struct DeferLayer<St = MemoryStore> {
    store: Arc<St>,
    config: Config,
}

impl<St> fmt::Debug for DeferLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferLayer")
            .field("prefix", &self.config.doors.prefix)
            .field("concurrency", &self.config.pool.concurrency)
            .finish_non_exhaustive()
    }
}

impl<St: Store> DeferLayer<St> {
    /// A layer over `store` with the defaults: prefix `/async`, 16 inner calls
    /// at once, 10 MiB request bodies, 10 000 queued jobs, 100 MiB stored
    /// responses, results kept 1 h.
    pub fn new(store: St) -> Self {
        DeferLayer {
            store: Arc::new(store),
            config: Config::default(),
        }
    }

    /// Where the native API lives (default `/async`).
    ///
    /// # Panics
    ///
    /// If `prefix` does not start with `/` or is only `/`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let trimmed = prefix.trim_end_matches('/');
        assert!(
            prefix.starts_with('/') && !trimmed.is_empty(),
            "the prefix must start with '/' and name a path, got {prefix:?}"
        );
        self.config.doors.prefix = trimmed.to_owned();
        self.config.pool.prefix = trimmed.to_owned();
        self
    }

    /// At most this many inner calls in flight (default 16).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn concurrency(mut self, n: usize) -> Self {
        assert!(n > 0, "concurrency must be at least 1");
        self.config.doors.concurrency = n;
        self.config.pool.concurrency = n;
        self
    }

    /// The largest request body accepted for a job, in bytes (default 10 MiB);
    /// larger ones answer 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.doors.max_body = bytes;
        self
    }

    /// How long a job's request body may take to arrive (default 30 s);
    /// slower ones answer 408.
    pub fn body_timeout(mut self, d: Duration) -> Self {
        self.config.doors.body_timeout = d;
        self
    }

    /// At most this many queued jobs (default 10 000); past it, submissions
    /// answer 429 with `Retry-After`.
    pub fn max_queue(mut self, jobs: usize) -> Self {
        self.config.doors.max_queue = jobs;
        self
    }

    /// The largest inner response kept, in bytes (default 100 MiB); a larger
    /// one fails its job with `response_too_large`.
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.config.pool.max_output = bytes;
        self
    }

    /// How long a finished job's result stays retrievable (default 1 h).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.config.doors.defaults.result_ttl = ttl;
        self
    }

    /// The longest result TTL a job may ask for (default 7 days); longer
    /// requests are capped to it.
    pub fn max_result_ttl(mut self, ttl: Duration) -> Self {
        self.config.doors.max_result_ttl = ttl;
        self
    }

    /// A job not started this long after submission ends `expired`
    /// (default 600 s).
    pub fn max_time_in_queue(mut self, d: Duration) -> Self {
        self.config.doors.defaults.max_time_in_queue = d;
        self
    }

    /// How long one inner call may run before its job fails with
    /// `execution_timeout` (default 600 s).
    pub fn execution_timeout(mut self, d: Duration) -> Self {
        self.config.doors.defaults.execution_timeout = d;
        self
    }

    /// Retries after a 500, 502, 503 or 504 (default 3 attempts, 1 s doubling to 5 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.doors.defaults.retry = policy;
        self
    }

    /// The priority of jobs that do not ask for one (default 1).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.config.doors.defaults.priority = priority;
        self
    }

    /// How fast waiting jobs gain priority (default 60 s; `None` for strict
    /// priority). A job ready for `k` periods competes as if `k` levels
    /// higher, so under a constant stream of priority-0 work a priority-2 job
    /// starts within two periods plus the work queued ahead of it.
    ///
    /// # Panics
    ///
    /// If the period is zero.
    pub fn priority_aging(mut self, period: Option<Duration>) -> Self {
        assert!(
            period != Some(Duration::ZERO),
            "the aging period must be positive"
        );
        self.config.pool.priority_aging = period;
        self
    }

    /// Scopes jobs to an owner taken from the submitting request's head (a
    /// token, a tenant id): lookups and cancels by any other owner answer 404.
    ///
    /// ```
    /// use tower_defer::{DeferLayer, MemoryStore};
    ///
    /// let layer = DeferLayer::new(MemoryStore::new()).owner(|parts| {
    ///     parts.headers.get("x-tenant")?.to_str().ok().map(str::to_owned)
    /// });
    /// # let _ = layer;
    /// ```
    pub fn owner<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.doors.owner = Some(Arc::new(f));
        self
    }

    /// Whether a job keeps `authorization`, `cookie` and `proxy-authorization`
    /// to send to the inner service (default `false`: they are not stored).
    pub fn forward_credentials(mut self, forward: bool) -> Self {
        self.config.doors.forward_credentials = forward;
        self
    }

    /// The longest `Prefer: wait=N` honoured (default 60 s).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.config.doors.max_wait = d;
        self
    }

    /// How long a worker's claim on a job lasts without renewal (default 30 s;
    /// renewed every third of it while the call runs).
    pub fn lease(mut self, d: Duration) -> Self {
        self.config.pool.lease = d.max(Duration::from_millis(30));
        self
    }

    /// How long in-flight calls may finish when the last handle to the
    /// service is dropped (default 30 s). See [`DeferHandle::shutdown`](crate::DeferHandle::shutdown).
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.config.pool.shutdown_grace = d;
        self
    }

    /// Also answers the Bifrost dialect under `/v1/async`: `POST
    /// /v1/async/{route}` runs the inner `POST /v1/{route}` as a job, and
    /// `GET /v1/async/{route}/{id}` reads it, as Bifrost's async API does.
    pub fn bifrost(mut self) -> Self {
        self.config.doors.bifrost = true;
        self
    }

    /// Also answers the Baseten dialect at `/`: `POST /async_predict` (and
    /// under `/production`, `/development`, `/environments/{name}`,
    /// `/deployment/{id}`), `GET` and `DELETE /async_request/{id}`, and
    /// `…/async_queue_status`, as Baseten's async API does.
    pub fn baseten(mut self, settings: crate::Baseten) -> Self {
        self.config.pool.baseten_ids = Some(settings.ids());
        self.config.baseten = Some(settings);
        self
    }

    /// Delivers a signed event to the job's webhook when it ends (see
    /// [`webhook`](crate::webhook)). Without it, a submission naming a
    /// webhook answers `400`.
    #[cfg(feature = "webhooks")]
    pub fn webhooks(mut self, webhooks: crate::Webhooks) -> Self {
        let webhooks = Arc::new(webhooks);
        self.config.doors.webhooks = Some(webhooks.clone());
        self.config.pool.webhooks = Some(webhooks);
        self
    }

    /// Batches the queued jobs of a route: compatible jobs share one call to
    /// the inner service, and each gets its own part of the answer (see
    /// [`batch`](crate::batch)). Repeat for more routes; the first that
    /// matches a request applies.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_defer::batch::Batch;
    /// use tower_defer::{DeferLayer, MemoryStore};
    ///
    /// let layer = DeferLayer::new(MemoryStore::new()).batch(
    ///     Batch::post("/v1/embeddings")
    ///         .input("/input")
    ///         .output("/data")
    ///         .max_items(32)
    ///         .max_wait(Duration::from_millis(10)),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn batch(mut self, batch: crate::batch::Batch) -> Self {
        let mut routes = self.config.pool.batches.to_vec();
        routes.push(batch);
        let routes: Arc<[crate::batch::Batch]> = Arc::from(routes);
        self.config.doors.batches = routes.clone();
        self.config.pool.batches = routes;
        self
    }

    /// The service and its worker pool, for the caller to run: the worker is
    /// a future that runs until shutdown.
    pub fn pair<S>(&self, inner: S) -> (Defer<S, St>, Worker)
    where
        S: InnerService,
    {
        let Config {
            doors,
            pool,
            baseten,
        } = self.config.clone();
        Defer::pair(inner, self.store.clone(), doors, pool, baseten)
    }
}

impl<S, St> Layer<S> for DeferLayer<St>
where
    S: InnerService,
    St: Store,
{
    type Service = Defer<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        let (service, worker) = self.pair(inner);
        tokio::spawn(worker);
        service
    }
}
