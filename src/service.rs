//! [`Defer`]: routes each request to the async API or to the inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tokio::sync::watch;
use tower_service::Service;

use crate::api::{self, Doors, Route};
use crate::body::{Body, ResponseBody};
use crate::context::{DoorConfig, Pool, PoolConfig};
use crate::future::ResponseFuture;
use crate::scaling::Scaling;
use crate::shutdown::Control;
use crate::store::Store;
use crate::worker::{self, DeferHandle, InnerService, Worker};
use crate::BoxError;

/// A service wrapped by [`DeferLayer`](crate::DeferLayer).
///
/// Requests to the async routes are answered here; every other request goes
/// to the inner service untouched, its body still streaming. Clones share one
/// worker pool, which stops (gracefully) when the last clone and the last
/// [`DeferHandle`] are dropped, or when [`DeferHandle::shutdown`] is called.
pub struct Defer<S, St = crate::MemoryStore> {
    // The inner service is cloned with the service, as tower's are (it need
    // not be Sync); the rest is one allocation shared by the clones, since a
    // server clones the service for every request.
    inner: S,
    shared: Arc<Shared<St>>,
}

struct Shared<St> {
    doors: Arc<Doors<St>>,
    handle: DeferHandle,
    // Keeps the pool running while any clone lives.
    _control: Arc<watch::Sender<Control>>,
}

impl<S: Clone, St> Clone for Defer<S, St> {
    fn clone(&self) -> Self {
        Defer {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Defer<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Defer")
            .field("inner", &self.inner)
            .field("prefix", &self.shared.doors.config.prefix)
            .finish_non_exhaustive()
    }
}

impl<S, St> Defer<S, St>
where
    S: InnerService,
    St: Store,
{
    pub(crate) fn pair(
        inner: S,
        store: Arc<St>,
        doors: DoorConfig,
        pool: PoolConfig,
        baseten: Option<crate::Baseten>,
    ) -> (Self, Worker) {
        let pool = Arc::new(Pool::new(store.clone(), pool));
        let scaling = Scaling::new(pool.upstream_down.clone(), pool.config.concurrency);
        let activity = pool.activity.clone();
        let doors = Arc::new(Doors::new(store, doors, baseten, scaling, activity));
        let (worker, handle, control) = worker::build(inner.clone(), pool);
        let service = Defer {
            inner,
            shared: Arc::new(Shared {
                doors,
                handle,
                _control: control,
            }),
        };
        (service, worker)
    }
}

impl<S, St> Defer<S, St> {
    /// A handle that shuts the worker pool down gracefully.
    pub fn handle(&self) -> DeferHandle {
        self.shared.handle.clone()
    }

    /// The autoscaling signals of this service's pool (see [`scaling`](crate::scaling)).
    pub fn scaling(&self) -> Scaling {
        self.shared.doors.scaling.clone()
    }

    /// The store behind this service.
    pub fn store(&self) -> &St {
        &self.shared.doors.store
    }
}

impl<S, St, B> Service<Request<B>> for Defer<S, St>
where
    S: InnerService,
    St: Store,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<S::ResponseBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S>;

    /// Always ready: the async API never waits for the inner service, and a
    /// pass-through waits for it inside its own [`ResponseFuture`].
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        match api::route(&shared.doors, &req) {
            Route::PassThrough => {
                ResponseFuture::pass_through(self.inner.clone(), req.map(Body::new))
            }
            route => ResponseFuture::api(api::handle(shared.doors.clone(), route, req)),
        }
    }
}
