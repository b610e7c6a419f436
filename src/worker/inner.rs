//! [`InnerService`]: what the layer can wrap.

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::body::Body;
use crate::BoxError;

/// A service the layer can wrap: it takes `Request<`[`Body`]`>`, is `Clone`
/// (each worker calls a clone) and `Send`, and answers with a body of
/// [`Bytes`] chunks. Implemented for every such [`Service`]; nothing to
/// implement by hand.
pub trait InnerService: Clone + Send + 'static {
    /// The response body.
    type ResponseBody: http_body::Body<Data = Bytes, Error = Self::BodyError> + Send + 'static;
    /// The response body's error.
    type BodyError: Into<BoxError>;
    /// The service's error.
    type Error: Into<BoxError>;
    /// The service's future.
    type Future: Future<Output = Result<Response<Self::ResponseBody>, Self::Error>> + Send + 'static;

    /// [`Service::poll_ready`].
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;
    /// [`Service::call`].
    fn call(&mut self, req: Request<Body>) -> Self::Future;
}

impl<S, B> InnerService for S
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
    type BodyError = B::Error;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request<Body>) -> S::Future {
        Service::call(self, req)
    }
}
