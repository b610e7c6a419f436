//! [`Server`]: serves a tower service (a wrapped axum `Router`, a [`Defer`])
//! over HTTP/1.1 and HTTP/2 with prior knowledge (h2c), with the guards a
//! public endpoint needs (feature `server`).
//!
//! `axum::serve` and a bare hyper accept loop keep a connection for as long
//! as the client holds it: a client that sends its request head a byte at a
//! time, never sends one, or keeps a connection idle, holds a file descriptor
//! for good, and enough of them take every descriptor the process has.
//! [`Server`] bounds each of these:
//!
//! - **Header-read timeout** (default 30 s): a request's head must have
//!   arrived whole within it, counted from the connection's opening for the
//!   first request and, on an HTTP/1.1 keep-alive connection, from the first
//!   byte of each later one. Past it the connection is closed without an
//!   answer; no request is running on it then. Over HTTP/2 it times the
//!   first request only: what arrives between later requests (pings, window
//!   updates) is not a head, and the idle timeout covers it.
//! - **Idle timeout** (default 2 min): a connection with no request in
//!   flight and no head begun for this long is closed gracefully: an
//!   HTTP/1.1 connection at once (it is between requests), an HTTP/2 one
//!   with a GOAWAY. A request is in flight from the arrival of its head to
//!   the end of its response body, so a long-poll, a slow upstream or a
//!   streaming answer is never cut however long it takes, and an HTTP/2
//!   connection is idle only when none of its streams is. A peer that keeps
//!   a connection open a further idle timeout after being asked to close,
//!   with nothing in flight, is dropped.
//!
//!   The two timers are independent: a keep-alive connection may wait for
//!   its next request for the whole idle timeout, longer than the
//!   header-read timeout, while a head once begun has only the header-read
//!   timeout. (hyper's own `header_read_timeout` also times the wait between
//!   HTTP/1.1 requests, which would cap every idle connection at the
//!   header-read timeout, so it is not used.)
//! - **Connection cap** (default 10 000): a connection past it is answered
//!   `503 Service Unavailable` with `Connection: close` and `Retry-After: 1`
//!   and closed at once with a FIN (what the client had already sent is read
//!   and discarded first, so closing does not reset the connection under
//!   the answer). Connections already open are untouched, and a new one is
//!   accepted as soon as one closes.
//! - **Graceful stop**: once the `signal` future given to [`Server::serve`]
//!   resolves, the server stops accepting, asks each connection to close
//!   once its requests are done, drops those still open after the shutdown
//!   grace (default 30 s), and returns.
//!
//! With feature `metrics` it counts, through the `metrics` facade:
//! `tower_defer_connections_open` (gauge), `tower_defer_connections_rejected_total`
//! (over the cap) and `tower_defer_connections_timed_out_total{timeout}`
//! (`header_read`, `idle`).
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use http::{Request, Response};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::Layer;
//! use tower_defer::server::Server;
//! use tower_defer::{Body, DeferLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let model = tower::service_fn(|_req: Request<Body>| async {
//!     Ok::<_, Infallible>(Response::new(Body::from("hello")))
//! });
//! let app = DeferLayer::new(MemoryStore::new()).layer(model);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = Server::new()
//!     .header_read_timeout(Duration::from_secs(10))
//!     .idle_timeout(Duration::from_secs(60))
//!     .max_connections(1_000);
//! let serving = tokio::spawn(server.serve(listener, app, async {
//!     let _ = stopped.await;
//! }));
//!
//! let mut client = tokio::net::TcpStream::connect(addr).await?;
//! client
//!     .write_all(b"GET / HTTP/1.1\r\nhost: example\r\nconnection: close\r\n\r\n")
//!     .await?;
//! let mut answer = String::new();
//! client.read_to_string(&mut answer).await?;
//! assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
//! assert!(answer.ends_with("hello"), "{answer}");
//!
//! let _ = stop.send(());
//! serving.await.unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! [`Defer`]: crate::Defer

mod connection;

use std::future::Future;
use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::metrics;
use crate::BoxError;
use connection::{Limits, Phase};

/// How long the accept loop pauses after an error such as running out of
/// file descriptors, rather than spinning on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What a connection over the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\n\
content-length: 21\r\n\
connection: close\r\n\
retry-after: 1\r\n\
\r\n\
too many connections\n";

/// At most this much of what a rejected client sent is read off before its
/// connection is closed.
const REJECT_DRAIN: usize = 64 * 1024;

/// Serves a tower service over HTTP/1.1 and h2c with a header-read timeout,
/// an idle timeout, a connection cap and a graceful stop; see the [module
/// docs](self) for the rules and an example.
#[derive(Clone, Debug)]
pub struct Server {
    limits: Limits,
    max_connections: usize,
    shutdown_grace: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// A server with the defaults: header-read timeout 30 s, idle timeout
    /// 2 min, at most 10 000 connections, shutdown grace 30 s.
    pub fn new() -> Server {
        Server {
            limits: Limits {
                header_read: Duration::from_secs(30),
                idle: Duration::from_secs(120),
            },
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// How long a request head may take to arrive (see the [module docs](self)).
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "the header-read timeout must be positive"
        );
        self.limits.header_read = timeout;
        self
    }

    /// How long a connection may stay open with no request in flight (see
    /// the [module docs](self)).
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "the idle timeout must be positive");
        self.limits.idle = timeout;
        self
    }

    /// At most this many connections open at once; past it, new ones are
    /// answered `503` and closed.
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    pub fn max_connections(mut self, max: usize) -> Self {
        assert!(max > 0, "max_connections must be at least 1");
        // The drain waits for every permit in one call, which counts in u32.
        self.max_connections = max.min(u32::MAX as usize);
        self
    }

    /// After the stop signal, how long open connections may take to finish
    /// their requests before they are dropped.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Accepts connections on `listener` and serves `service` on each, until
    /// `signal` resolves; then stops accepting and returns once the open
    /// connections have finished, or the shutdown grace has passed.
    ///
    /// Each request goes to a clone of `service` (as `poll_ready`, then
    /// `call`). Errors while accepting (a connection reset before it was
    /// accepted, the process out of file descriptors) are logged and
    /// outlived, never returned.
    pub async fn serve<S, B>(
        self,
        listener: TcpListener,
        service: S,
        signal: impl Future<Output = ()>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // The watchdog times heads; see the module docs for why not hyper.
        http.http1().header_read_timeout(None);
        let http = Arc::new(http);
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let (phase, phases) = watch::channel(Phase::Serve);
        let mut signal = std::pin::pin!(signal);
        // Whether the last connection offered was refused, so that reaching
        // the cap is logged once, not once a connection.
        let mut at_cap = false;
        loop {
            let accepted = tokio::select! {
                () = &mut signal => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::select! {
                        () = &mut signal => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if !at_cap {
                    tracing::warn!(
                        max_connections = self.max_connections,
                        "at the connection cap: new connections are answered 503 and closed"
                    );
                }
                at_cap = true;
                reject(stream);
                continue;
            };
            at_cap = false;
            let _ = stream.set_nodelay(true);
            let open = Open::new(permit);
            let http = http.clone();
            let service = service.clone();
            let limits = self.limits;
            let phases = phases.clone();
            tokio::spawn(async move {
                connection::serve(stream, &http, service, limits, phases).await;
                drop(open);
            });
        }
        drop(listener);
        let _ = phase.send(Phase::Drain);
        // Every permit back means every connection has ended.
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(self.shutdown_grace, permits.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!("connections still open after the shutdown grace are closed");
            let _ = phase.send(Phase::Stop);
            let _ = permits.acquire_many(all).await;
        }
    }
}

/// An accepted connection, counted open (and holding its place under the
/// cap) until dropped.
struct Open {
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit) -> Open {
        metrics::connection_opened();
        Open { _permit: permit }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::connection_closed();
    }
}

/// Answers a connection over the cap and closes it, without waiting on it.
fn reject(stream: TcpStream) {
    metrics::connection_rejected();
    // A fresh socket's send buffer is empty: the answer goes out whole.
    let _ = stream.try_write(BUSY);
    let Ok(stream) = stream.into_std() else {
        return;
    };
    // The FIN now. Unread bytes at close would turn it into a reset, which
    // may discard the answer at the client, so read off what has come (the
    // socket is non-blocking: this stops at the first empty read).
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < REJECT_DRAIN {
        match (&stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Errors about one connection that went away before it was accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
