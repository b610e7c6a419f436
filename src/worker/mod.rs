//! The worker pool: claims jobs, replays them against the inner service,
//! classifies the answers and records them.
//!
//! One pool per wrapped service. Up to 16 claimer tasks share a semaphore of
//! `concurrency` permits: each takes a permit, waits until a clone of the
//! inner service is ready (`poll_ready`), claims a job and spawns its call.
//! A call whose job completes, while the pool runs and a clone of the inner
//! service is ready at once, claims its next job with the result
//! ([`Store::complete_and_claim`]) and runs it in the same slot: a store
//! that makes both in one call saves a round trip per job.
//! A job waiting out a backoff sits in the store, not in a worker. A second
//! loop sweeps the store (deadlines, lapsed leases, retries coming due, TTLs).
//! With webhooks configured, a third loop delivers them, with permits of its
//! own (see `webhook`). A last one hands the live page's counts to the store
//! every few seconds (see `activity`).
//!
//! A call that finds nobody to answer (no connection could be made) marks
//! the upstream down; the next call answered wakes, through
//! [`Store::wake_unavailable`], every job waiting out a backoff for it, so a
//! backlog starts as soon as the upstream is back.
//!
//! While a call runs, its task renews the lease and watches the job: when the
//! job is canceled (or another worker took it over) the call's future is
//! dropped, which is how a running inner call is aborted.
//!
//! The worker never knows about dialects: it sees stored requests and
//! responses only.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::batch;
use crate::context::Pool;
use crate::job::JobStatus;
use crate::shutdown::{stopped, Control};
use crate::store::{Claim, Store};
use crate::time::Timestamp;
use crate::BoxError;

mod call;
mod gather;
mod inner;

pub use inner::InnerService;

/// The worker pool of one [`Defer`](crate::Defer) service, as a future that
/// runs until shutdown. [`DeferLayer::layer`](tower_layer::Layer::layer)
/// spawns it; [`DeferLayer::pair`](crate::DeferLayer::pair) hands it to you.
#[must_use = "the worker does nothing unless it is polled (spawn it)"]
pub struct Worker {
    fut: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Future for Worker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.fut.as_mut().poll(cx)
    }
}

/// Stops a worker pool gracefully. Get one from [`Defer::handle`](crate::Defer::handle).
///
/// ```
/// use std::time::Duration;
/// use tower::Layer;
/// use tower_defer::{Body, DeferLayer, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = tower::service_fn(|_req: http::Request<Body>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
/// });
/// let app = DeferLayer::new(MemoryStore::new()).layer(inner);
/// let handle = app.handle();
/// // ... serve `app` ...
/// handle.shutdown(Duration::from_secs(10)).await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeferHandle {
    control: Arc<watch::Sender<Control>>,
    done: watch::Receiver<bool>,
}

impl DeferHandle {
    /// Stops claiming jobs, lets in-flight calls finish within `grace`, hands
    /// the ones still running after it back to the queue, and resolves when
    /// the pool has stopped. Queued jobs stay queued in the store.
    pub async fn shutdown(&self, grace: Duration) {
        self.control.send_if_modified(|c| {
            if *c == Control::Run {
                *c = Control::Stop { grace };
                true
            } else {
                false
            }
        });
        let mut done = self.done.clone();
        // An error means the worker was dropped, so it has stopped too.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Builds the pool for `inner`: the worker future, the handle that stops it,
/// and the control sender whose last clone stopping also stops it.
pub(crate) fn build<S, St>(
    inner: S,
    pool: Arc<Pool<St>>,
) -> (Worker, DeferHandle, Arc<watch::Sender<Control>>)
where
    S: InnerService,
    St: Store,
{
    let (control_tx, control_rx) = watch::channel(Control::Run);
    let (done_tx, done_rx) = watch::channel(false);
    let control = Arc::new(control_tx);
    let handle = DeferHandle {
        control: control.clone(),
        done: done_rx,
    };
    let fut = async move {
        run(inner, pool, control_rx).await;
        let _ = done_tx.send(true);
    };
    (Worker { fut: Box::pin(fut) }, handle, control)
}

async fn run<S, St>(inner: S, pool: Arc<Pool<St>>, mut control: watch::Receiver<Control>)
where
    S: InnerService,
    St: Store,
{
    let default_grace = pool.config.shutdown_grace;
    let permits = Arc::new(Semaphore::new(pool.config.concurrency));
    let (hand_back_tx, hand_back) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(sweep_loop(pool.clone(), control.clone()));
    // The live page's counts go to the store every few seconds, beside the
    // calls, never on their path.
    tasks.spawn(crate::activity::flush_loop(
        pool.store.clone(),
        pool.activity.clone(),
        control.clone(),
    ));
    // Webhook deliveries run beside the workers, with permits of their own.
    #[cfg(feature = "webhooks")]
    if let Some(webhooks) = pool.config.webhooks.clone() {
        let about = crate::webhook::About {
            prefix: pool.config.prefix.clone(),
            baseten_ids: pool.config.baseten_ids.clone(),
        };
        tasks.spawn(crate::webhook::deliver_loop(
            pool.store.clone(),
            webhooks,
            about,
            default_grace,
            control.clone(),
        ));
    }

    // Several claimers, so that a store with a network round trip per claim
    // (Redis) is not one round trip per job behind a single loop. Each starts
    // the calls it claims itself: no hop through a dispatcher per job.
    let gathering = Arc::new(gather::Gathering::default());
    for _ in 0..pool.config.concurrency.min(MAX_CLAIMERS) {
        tasks.spawn(claimer(
            inner.clone(),
            pool.clone(),
            permits.clone(),
            gathering.clone(),
            control.clone(),
            hand_back.clone(),
        ));
    }
    let grace = stopped(&mut control, default_grace).await;

    // Shutdown: the claimers stop claiming and wait for their calls. These get
    // the grace period; after it they are told to hand their jobs back, which
    // they do at once. Queued jobs stay in the store.
    let drain = async { while tasks.join_next().await.is_some() {} };
    tokio::pin!(drain);
    if tokio::time::timeout(grace, &mut drain).await.is_err() {
        let _ = hand_back_tx.send(true);
        drain.await;
    }
    // What the last calls counted, before the process goes.
    crate::activity::flush(&*pool.store, &pool.activity).await;
}

/// Claims jobs one after another and starts each call, until the pool stops;
/// then waits for its calls to end.
async fn claimer<S, St>(
    inner: S,
    pool: Arc<Pool<St>>,
    permits: Arc<Semaphore>,
    gathering: Arc<gather::Gathering>,
    control: watch::Receiver<Control>,
    hand_back: watch::Receiver<bool>,
) where
    S: InnerService,
    St: Store,
{
    let mut calls = JoinSet::new();
    loop {
        while calls.try_join_next().is_some() {}
        let next = next_job(
            inner.clone(),
            pool.clone(),
            permits.clone(),
            control.clone(),
        )
        .await;
        match next {
            Some((svc, claim, permit)) => {
                let serve = serve(
                    inner.clone(),
                    pool.clone(),
                    gathering.clone(),
                    control.clone(),
                    hand_back.clone(),
                    (svc, claim, permit),
                );
                // Boxed: the call's future is a few kilobytes, and the task
                // would otherwise copy it whole as it is spawned and run.
                calls.spawn(Box::pin(serve));
            }
            // Stopping (or the inner service was not ready: try again).
            None if control.has_changed().is_err() || *control.borrow() != Control::Run => break,
            None => {}
        }
    }
    while calls.join_next().await.is_some() {}
}

/// Runs a claimed job, then each job claimed with the result of the one
/// before ([`Store::complete_and_claim`]) in the same worker slot, until a
/// job ends without claiming the next.
async fn serve<S, St>(
    inner: S,
    pool: Arc<Pool<St>>,
    gathering: Arc<gather::Gathering>,
    control: watch::Receiver<Control>,
    hand_back: watch::Receiver<bool>,
    first: call::Next<S>,
) where
    S: InnerService,
    St: Store,
{
    let mut next = Some(first);
    while let Some((svc, claim, permit)) = next.take() {
        // Each attempt is a span of the job's trace, stored with the job at
        // submission, with an id of its own that is sent upstream
        // (trace.rs).
        let member = call::Member::new(claim);
        let span = member.span.clone();
        let claim = &member.claim;
        let route = claim
            .job
            .options
            .batch
            .as_ref()
            .and_then(|_| batch::route_for(&pool.config.batches, &claim.job.request));
        if let Some(route) = route {
            // The ready clone is not kept: a batch readies its own when its
            // company is gathered.
            drop(svc);
            let call = gather::run(
                inner.clone(),
                member,
                route.clone(),
                pool.clone(),
                gathering.clone(),
                permit,
                hand_back.clone(),
            );
            return call.instrument(span).await;
        }
        let chain = call::Chain {
            inner: inner.clone(),
            control: control.clone(),
        };
        let call = call::run_job(
            svc,
            member.claim,
            member.trace,
            pool.clone(),
            permit,
            hand_back.clone(),
            Some(chain),
        );
        next = call.instrument(span).await;
    }
}

/// How many claims one pool makes at once, at most.
const MAX_CLAIMERS: usize = 16;

/// Waits for a worker slot, a ready inner service and a job, in that order:
/// a job is claimed only when it can be started at once. `None` when the
/// pool is stopping, or the service failed to become ready (after a pause, so
/// the caller may try again). A claim in flight is never abandoned: a job the
/// store handed out is always returned.
///
/// Readiness is held only across a claim: when there is no work, the ready
/// clone is dropped while waiting, so an inner service with a concurrency
/// limit keeps its slots for the requests that pass through.
async fn next_job<S, St>(
    inner: S,
    pool: Arc<Pool<St>>,
    permits: Arc<Semaphore>,
    mut control: watch::Receiver<Control>,
) -> Option<(S, Claim, OwnedSemaphorePermit)>
where
    S: InnerService,
    St: Store,
{
    // Biased, the slot and the service first: when both are there at once,
    // as under load, the stop signal is not polled (nor its waiter queued)
    // for every job. A stop is still seen: the control is checked below
    // before each claim.
    let permit = tokio::select! {
        biased;
        permit = permits.acquire_owned() => permit.expect("the pool's semaphore is never closed"),
        _ = stopped(&mut control, Duration::ZERO) => return None,
    };
    loop {
        let mut svc = inner.clone();
        let ready = tokio::select! {
            biased;
            ready = poll_fn(|cx| svc.poll_ready(cx)) => ready.map_err(Into::<BoxError>::into),
            _ = stopped(&mut control, Duration::ZERO) => return None,
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "the inner service is not ready; trying again in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return None;
        }
        if *control.borrow() != Control::Run {
            return None;
        }
        let claimed = pool
            .store
            .claim(pool.config.lease, pool.config.priority_aging)
            .await;
        let wait = match claimed {
            Ok(Some(claim)) => return Some((svc, claim, permit)),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        drop(svc);
        match wait {
            None => {
                let until = Timestamp::now().after(Duration::from_secs(1));
                tokio::select! {
                    _ = stopped(&mut control, Duration::ZERO) => return None,
                    () = pool.store.work_available(until) => {}
                }
            }
            Some(e) => {
                tracing::warn!(error = %e, "claiming a job failed; trying again in 1 s");
                tokio::select! {
                    _ = stopped(&mut control, Duration::ZERO) => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Applies what is due in the store, as it comes due (at least once a second,
/// so that due times added meanwhile are not late by more than that).
async fn sweep_loop<St: Store>(pool: Arc<Pool<St>>, mut control: watch::Receiver<Control>) {
    loop {
        let cap = Timestamp::now().after(Duration::from_secs(1));
        let next = match pool.store.sweep().await {
            Ok(swept) => {
                // No process ends an expired or an abandoned job: the sweep
                // that reports it counts it, once across every replica.
                for (status, n) in [
                    (JobStatus::Expired, swept.expired),
                    (JobStatus::Failed, swept.abandoned),
                ] {
                    if n > 0 {
                        crate::metrics::ended_in_store(status, n);
                        pool.activity.ended_in_store(status, n);
                    }
                }
                swept.next_due.map_or(cap, |t| t.min(cap))
            }
            Err(e) => {
                tracing::warn!(error = %e, "sweeping the store failed");
                cap
            }
        };
        tokio::select! {
            _ = stopped(&mut control, Duration::ZERO) => return,
            _ = tokio::time::sleep_until(next.to_instant()) => {}
        }
    }
}
