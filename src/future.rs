//! [`ResponseFuture`]: the future of [`Defer`](crate::Defer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project::pin_project;

use crate::body::ResponseBody;

type ApiFuture = Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>;

/// The response future of [`Defer`](crate::Defer): the inner service's call,
/// or the layer's own answer.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    kind: Kind<F>,
}

#[pin_project(project = KindProj)]
enum Kind<F> {
    Inner(#[pin] F),
    Api(ApiFuture),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner(fut),
        }
    }

    pub(crate) fn api(fut: ApiFuture) -> Self {
        ResponseFuture {
            kind: Kind::Api(fut),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner(fut) => {
                let response = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::Inner)))
            }
            KindProj::Api(fut) => {
                let response = ready!(fut.as_mut().poll(cx));
                Poll::Ready(Ok(response.map(ResponseBody::full)))
            }
        }
    }
}
