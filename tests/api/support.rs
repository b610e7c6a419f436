//! Real servers on 127.0.0.1:0 and a real client; the answers they read,
//! and the responses the inner services write, are the testkit's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
pub use tower_defer_testkit::inproc::{assert_valid_id, json_response, Answer};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server on a fresh port. [`Server::stop`] (or dropping it) closes the
/// listener and every open connection.
pub struct Server {
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting and drops every connection; resolves once it has.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// What the servers here serve: any tower service over hyper's `Incoming`
/// body, answering with a [`ServedBody`].
pub trait Served<B>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Served<B> for S where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body the servers here can send.
pub trait ServedBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ServedBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

/// Serves `service` (any tower service over hyper's `Incoming` body) on
/// 127.0.0.1:0 with hyper-util's auto (HTTP/1 + HTTP/2) connection builder.
pub async fn serve<S, B>(service: S) -> Server
where
    S: Served<B>,
    B: ServedBody,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, service)
}

/// Serves `service` on a listener the caller bound.
pub fn serve_on<S, B>(listener: tokio::net::TcpListener, service: S) -> Server
where
    S: Served<B>,
    B: ServedBody,
{
    serve_with(listener, None, service)
}

/// Serves `service` over https on 127.0.0.1:0, with this TLS configuration
/// (its ALPN protocols decide between HTTP/2 and HTTP/1.1).
pub async fn serve_tls<S, B>(config: Arc<tokio_rustls::rustls::ServerConfig>, service: S) -> Server
where
    S: Served<B>,
    B: ServedBody,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_with(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(config)),
        service,
    )
}

fn serve_with<S, B>(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
) -> Server
where
    S: Served<B>,
    B: ServedBody,
{
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Connections live in this set, so aborting the accept loop drops them too.
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            while connections.try_join_next().is_some() {}
            let service = TowerToHyperService::new(service.clone());
            let tls = tls.clone();
            connections.spawn(async move {
                let http = auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                    // A refused handshake (an untrusting client) just ends the connection.
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    Server {
        addr,
        task: Some(task),
    }
}

#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl HttpClient {
    pub fn new() -> Self {
        HttpClient(Client::builder(TokioExecutor::new()).build_http())
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let response = self.0.request(req).await.expect("the server answered");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Any method, headers and body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req.body(Full::new(body.into())).unwrap()).await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.request(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> Answer {
        self.request(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    pub async fn delete(&self, url: &str) -> Answer {
        self.request(Method::DELETE, url, &[], Bytes::new()).await
    }

    /// Submits an envelope to `POST {server}/async` and returns the new id.
    pub async fn submit(&self, server: &Server, envelope: &Value) -> String {
        let a = self.post_json(&server.url("/async"), envelope).await;
        assert_eq!(a.status, 201, "{a:?}");
        a.id()
    }

    /// Submits `envelope`, waits until the job has succeeded, and returns
    /// its `/output` document.
    pub async fn output_of(&self, server: &Server, envelope: &Value) -> Value {
        let id = self.submit(server, envelope).await;
        let doc = self.finished(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        self.get(&server.url(&format!("/async/{id}/output")))
            .await
            .json()
    }

    /// Long-polls `url` (a status route) until it answers 200; the document.
    pub async fn finished(&self, url: &str) -> Value {
        loop {
            let a = self
                .request(Method::GET, url, &[("prefer", "wait=30")], Bytes::new())
                .await;
            if a.status == 200 {
                return a.json();
            }
            assert_eq!(a.status, 202, "{a:?}");
        }
    }

    /// Waits, by long-polling the status, until job `id` has status `status`.
    pub async fn until_status(&self, server: &Server, id: &str, status: &str) -> Value {
        let url = server.url(&format!("/async/{id}"));
        loop {
            let a = self
                .request(Method::GET, &url, &[("prefer", "wait=5")], Bytes::new())
                .await;
            let doc = a.json();
            if doc["status"] == status {
                return doc;
            }
            assert!(
                a.status == 202,
                "job {id} ended {doc} while waiting for {status}"
            );
        }
    }
}

pub fn infallible<T>(t: T) -> Result<T, Infallible> {
    Ok(t)
}

/// Holds inner calls until the test lets them go, and counts them in flight.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    started: Arc<Notify>,
    /// Calls that have started and not yet returned.
    pub in_flight: Arc<AtomicUsize>,
    /// The most calls in flight at once.
    pub max_in_flight: Arc<AtomicUsize>,
    /// Calls started so far.
    pub calls: Arc<AtomicUsize>,
}

impl Gate {
    pub fn new() -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// An open gate: calls pass at once.
    pub fn open() -> Self {
        let gate = Gate::new();
        gate.release(Semaphore::MAX_PERMITS / 2);
        gate
    }

    /// Lets `n` more calls through.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Waits until at least `n` calls have started in total.
    pub async fn started(&self, n: usize) {
        loop {
            let notified = self.started.notified();
            if self.calls.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }

    /// Called by an inner service: counts the call, waits for a permit.
    /// The returned guard counts it out when the call ends or is dropped.
    pub async fn pass(&self) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        self.started.notify_waiters();
        self.permits.acquire().await.unwrap().forget();
        guard
    }
}

/// One inner call in flight; counted out on drop.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A body sent in chunks, with no length known in advance.
pub struct Chunks(pub std::vec::IntoIter<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(http_body::Frame::data(b))))
    }
}
