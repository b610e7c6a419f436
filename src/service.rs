//! [`Defer`]: routes each request to the async API or to the inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tokio::sync::watch;
use tower_service::Service;

use crate::api::{self, Route};
use crate::body::{Body, ResponseBody};
use crate::future::ResponseFuture;
use crate::layer::Config;
use crate::store::Store;
use crate::worker::{self, Control, DeferHandle, InnerService, Worker};
use crate::BoxError;

/// What the front doors and the workers share: the store and the settings.
pub(crate) struct Shared<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: Config,
    /// Jobs submitted through this process, for the live page.
    pub(crate) recent: crate::api::Recent,
}

/// A service wrapped by [`DeferLayer`](crate::DeferLayer).
///
/// Requests to the async routes are answered here; every other request goes
/// to the inner service untouched, its body still streaming. Clones share one
/// worker pool, which stops (gracefully) when the last clone and the last
/// [`DeferHandle`] are dropped, or when [`DeferHandle::shutdown`] is called.
pub struct Defer<S, St = crate::MemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
    handle: DeferHandle,
    // Keeps the pool running while any clone lives.
    _control: Arc<watch::Sender<Control>>,
}

impl<S: Clone, St> Clone for Defer<S, St> {
    fn clone(&self) -> Self {
        Defer {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            handle: self.handle.clone(),
            _control: self._control.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Defer<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Defer")
            .field("inner", &self.inner)
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl<S, St> Defer<S, St>
where
    S: InnerService,
    St: Store,
{
    pub(crate) fn pair(inner: S, store: Arc<St>, config: Config) -> (Self, Worker) {
        let shared = Arc::new(Shared {
            store,
            config,
            recent: crate::api::Recent::default(),
        });
        let (worker, handle, control) = worker::pool(inner.clone(), shared.clone());
        let service = Defer {
            inner,
            shared,
            handle,
            _control: control,
        };
        (service, worker)
    }
}

impl<S, St> Defer<S, St> {
    /// A handle that shuts the worker pool down gracefully.
    pub fn handle(&self) -> DeferHandle {
        self.handle.clone()
    }

    /// The store behind this service.
    pub fn store(&self) -> &St {
        &self.shared.store
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
        match api::route(&self.shared.config, &req) {
            Route::PassThrough => {
                ResponseFuture::pass_through(self.inner.clone(), req.map(Body::new))
            }
            route => ResponseFuture::api(api::handle(self.shared.clone(), route, req)),
        }
    }
}
