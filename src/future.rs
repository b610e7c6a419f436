//! [`ResponseFuture`]: the future of [`Defer`](crate::Defer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project::pin_project;

use crate::api::ApiFuture;
use crate::body::{Body, ResponseBody};
use crate::worker::InnerService;

/// The response future of [`Defer`](crate::Defer): a request passed through
/// to the inner service, or the layer's own answer.
///
/// A pass-through waits for the inner service's `poll_ready` here, in its own
/// future, rather than in `Defer::poll_ready`: the async API must answer at
/// once even while the workers hold every slot of a busy inner service.
#[pin_project]
pub struct ResponseFuture<S: InnerService> {
    #[pin]
    kind: Kind<S>,
}

// The request waits in place until the inner service is ready; boxing it to
// even out the variants would cost an allocation per pass-through request.
#[allow(clippy::large_enum_variant)]
#[pin_project(project = KindProj)]
enum Kind<S: InnerService> {
    Ready {
        service: S,
        request: Option<Request<Body>>,
    },
    Inner(#[pin] S::Future),
    Api(ApiFuture),
}

impl<S: InnerService> ResponseFuture<S> {
    pub(crate) fn pass_through(service: S, request: Request<Body>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                service,
                request: Some(request),
            },
        }
    }

    pub(crate) fn api(fut: ApiFuture) -> Self {
        ResponseFuture {
            kind: Kind::Api(fut),
        }
    }
}

impl<S: InnerService> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S: InnerService> Future for ResponseFuture<S> {
    type Output = Result<Response<ResponseBody<S::ResponseBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            match kind.as_mut().project() {
                KindProj::Ready { service, request } => {
                    ready!(service.poll_ready(cx))?;
                    let request = request.take().expect("polled after the call was made");
                    let fut = service.call(request);
                    kind.set(Kind::Inner(fut));
                }
                KindProj::Inner(fut) => {
                    let response = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::Inner)));
                }
                KindProj::Api(fut) => {
                    let response = ready!(fut.as_mut().poll(cx));
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}
