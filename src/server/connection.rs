//! One connection: hyper serves it, and a watchdog on a task of its own
//! times request heads and idleness from what the connection's reads and
//! requests record in its [`Activity`].
//!
//! One concept, a connection's timers, with their paused-clock tests beside
//! them (a third of the file): a little over 600 lines, kept whole.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::util::Oneshot;
use tower::ServiceExt;
use tower_service::Service;

use crate::metrics;
use crate::BoxError;

/// The timers a connection is held to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) header_read: Duration,
    pub(super) idle: Duration,
}

/// What the server asks of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Serve,
    /// Finish the requests in flight, take no more, and close.
    Drain,
    /// Close now, whatever is in flight.
    Stop,
}

/// Serves one connection until it ends, a timer ends it, or the server says stop.
pub(super) async fn serve<I, S, B>(
    io: I,
    http: &auto::Builder<TokioExecutor>,
    service: S,
    limits: Limits,
    phase: watch::Receiver<Phase>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
    });
    let service = Tracked {
        service,
        activity: activity.clone(),
    };
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    // The timers run on a task of their own: polled beside the connection,
    // they would be polled at every wake of every request's exchange.
    let (tell, mut orders) = mpsc::channel(1);
    let _watchdog = AbortOnDrop(tokio::spawn(watchdog(activity, limits, phase, tell)));
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            order = orders.recv() => match order {
                Some(Order::Close) => conn.as_mut().graceful_shutdown(),
                // The watchdog ends only when told to drop the connection or
                // when it is gone itself (it panicked): either way, stop.
                Some(Order::Drop) | None => return,
            },
        }
    }
}

/// What the watchdog asks of its connection.
#[derive(Debug)]
enum Order {
    /// Finish the requests in flight, take no more, and close.
    Close,
    /// Drop the connection now.
    Drop,
}

/// Aborts a task when dropped: the watchdog ends with its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Times the connection's heads and idleness, follows the server's phase,
/// and tells the connection when to close or to go.
async fn watchdog(
    activity: Arc<Activity>,
    limits: Limits,
    mut phase: watch::Receiver<Phase>,
    tell: mpsc::Sender<Order>,
) {
    // Set once the connection has been asked to close gracefully.
    let mut closing = false;
    // Set if the server's side of `phase` is gone (its future was dropped):
    // the connection then drains, and stops watching a closed channel.
    let mut orphaned = false;
    loop {
        let order = tokio::select! {
            expiry = activity.expired(limits) => match expiry {
                // No request is in flight: there is nothing to finish, and
                // hyper would not close an HTTP/1.1 connection that has
                // half of its first head, so the connection is dropped.
                Expiry::HeaderRead => {
                    metrics::connection_timed_out("header_read");
                    tracing::debug!("connection closed: no whole request head within the header-read timeout");
                    Order::Drop
                }
                // Asked to close an idle timeout ago, with nothing in flight
                // since: a peer that does not finish closing is dropped.
                Expiry::Idle if closing => Order::Drop,
                Expiry::Idle => {
                    metrics::connection_timed_out("idle");
                    tracing::debug!("closing an idle connection");
                    closing = true;
                    activity.rest();
                    Order::Close
                }
            },
            changed = phase.changed(), if !orphaned => {
                let asked = match changed {
                    Ok(()) => *phase.borrow_and_update(),
                    Err(_) => {
                        orphaned = true;
                        Phase::Drain
                    }
                };
                match asked {
                    Phase::Serve => continue,
                    Phase::Drain if closing => continue,
                    Phase::Drain => {
                        closing = true;
                        activity.rest();
                        Order::Close
                    }
                    Phase::Stop => Order::Drop,
                }
            }
        };
        let last = matches!(order, Order::Drop);
        if tell.send(order).await.is_err() || last {
            return;
        }
    }
}

/// Which limit a connection passed.
#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    HeaderRead,
    Idle,
}

/// What a connection is doing, written by its reads and its requests and
/// read by its watchdog. Requests over HTTP/2 run on tasks of their own, so
/// this is shared through atomics. Times are milliseconds since the
/// connection opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    /// When the last request in flight ended (or the connection opened).
    idle_since: AtomicU64,
    /// One more than when the head being read began; zero when none is.
    head_since: AtomicU64,
    /// A request came over HTTP/2: bytes between requests are frames such
    /// as pings, not the start of a head.
    h2: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // The first head is due from the moment the connection opens.
            head_since: AtomicU64::new(1),
            h2: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived: with nothing in flight on HTTP/1.1, a head has begun.
    fn arrived(&self) {
        if self.head_since.load(Relaxed) == 0
            && self.in_flight.load(Relaxed) == 0
            && !self.h2.load(Relaxed)
        {
            self.head_since.store(self.now() + 1, Relaxed);
        }
    }

    /// A request's head has arrived whole; it is in flight until the guard drops.
    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        if version == Version::HTTP_2 {
            self.h2.store(true, Relaxed);
        }
        InFlight(self.clone())
    }

    /// Restarts the idle clock.
    fn rest(&self) {
        self.idle_since.fetch_max(self.now(), Relaxed);
    }

    /// Resolves once a limit has passed. It recomputes its deadline from
    /// the atomics at each wake, so it may be dropped and called again at
    /// any time.
    async fn expired(&self, limits: Limits) -> Expiry {
        let header_read = millis(limits.header_read);
        let idle = millis(limits.idle);
        // Any deadline set after now lies at least this far ahead, so a
        // watchdog that never sleeps longer sees each one in time.
        let horizon = header_read.min(idle);
        loop {
            let now = self.now();
            // Nothing expires while a request runs.
            let mut wait = horizon;
            if self.in_flight.load(Relaxed) == 0 {
                match self.head_since.load(Relaxed) {
                    0 => {
                        let deadline = self.idle_since.load(Relaxed).saturating_add(idle);
                        if now >= deadline {
                            return Expiry::Idle;
                        }
                        wait = wait.min(deadline - now);
                    }
                    since => {
                        let deadline = (since - 1).saturating_add(header_read);
                        if now >= deadline {
                            return Expiry::HeaderRead;
                        }
                        wait = wait.min(deadline - now);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// A duration in whole milliseconds, at least one.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A request in flight; dropping it ends it.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The time first: the watchdog reads it only once the count is zero.
        self.0.rest();
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The connection's socket, noting each read in the [`Activity`].
#[pin_project]
struct Watched<I> {
    #[pin]
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.arrived();
        }
        poll
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// The application's service as hyper calls it, each request counted in
/// flight from its call to the end of its response body.
struct Tracked<S> {
    service: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin(req.version());
        TrackedFuture {
            call: self.service.clone().oneshot(req),
            in_flight: Some(in_flight),
        }
    }
}

#[pin_project]
struct TrackedFuture<S: Service<Request<Incoming>>> {
    #[pin]
    call: Oneshot<S, Request<Incoming>>,
    in_flight: Option<InFlight>,
}

impl<S, B> Future for TrackedFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Output = Result<Response<TrackedBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.call.poll(cx));
        Poll::Ready(answer.map(|response| {
            response.map(|body| TrackedBody {
                body,
                in_flight: this.in_flight.take(),
            })
        }))
    }
}

/// A response body that ends its request's time in flight when it ends.
#[pin_project]
struct TrackedBody<B> {
    #[pin]
    body: B,
    in_flight: Option<InFlight>,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // The end, or an error that ends the exchange.
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    //! Each rule on a paused clock, over an in-memory pipe: times are exact.

    use std::convert::Infallible;

    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    use super::*;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(30),
        idle: Duration::from_secs(120),
    };

    /// A response body of `chunks` chunks, one every `every`.
    struct Slow {
        chunks: usize,
        every: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Body for Slow {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.chunks == 0 {
                return Poll::Ready(None);
            }
            let every = self.every;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
            self.chunks -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
        }
    }

    /// Answers after `x-sleep` seconds; with `x-chunks`, streams that many
    /// chunks, one every `x-every` seconds.
    async fn answer(
        req: Request<Incoming>,
    ) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
        let number = |name: &str| -> u64 {
            req.headers()
                .get(name)
                .map_or(0, |v| v.to_str().unwrap().parse().unwrap())
        };
        tokio::time::sleep(Duration::from_secs(number("x-sleep"))).await;
        let body = match number("x-chunks") {
            0 => Full::new(Bytes::from_static(b"ok")).boxed(),
            chunks => Slow {
                chunks: chunks as usize,
                every: Duration::from_secs(number("x-every")),
                sleep: None,
            }
            .boxed(),
        };
        Ok(Response::new(body))
    }

    /// One connection served on one end of a pipe; the other end, the
    /// server's phase, and the task serving it.
    fn start(limits: Limits) -> (DuplexStream, watch::Sender<Phase>, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (phase, phases) = watch::channel(Phase::Serve);
        let task = tokio::spawn(async move {
            let mut http = auto::Builder::new(TokioExecutor::new());
            http.http1().header_read_timeout(None);
            serve(server, &http, tower::service_fn(answer), limits, phases).await;
        });
        (client, phase, task)
    }

    /// Reads one HTTP/1.1 answer (`content-length` or chunked); its body.
    async fn read_answer(client: &mut DuplexStream) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let body = &raw[end + 4..];
                let done = match head.split("content-length: ").nth(1) {
                    Some(n) => body.len() >= n.lines().next().unwrap().parse().unwrap(),
                    None => body.ends_with(b"0\r\n\r\n"),
                };
                if done {
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                    return body.to_vec();
                }
            }
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-answer");
            raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Waits for the server to close the pipe; how long that took.
    async fn closed(client: &mut (impl AsyncRead + Unpin)) -> Duration {
        let started = Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"", "closed unanswered");
        started.elapsed()
    }

    fn assert_about(took: Duration, expected: Duration) {
        assert!(
            took >= expected && took <= expected + Duration::from_millis(5),
            "took {took:?}, expected {expected:?}"
        );
    }

    async fn get(client: &mut DuplexStream, headers: &str) -> Vec<u8> {
        let head = format!("GET / HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        read_answer(client).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
        let (mut client, _phase, _task) = start(LIMITS);
        assert_about(closed(&mut client).await, LIMITS.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_sent_a_byte_at_a_time_is_cut_at_the_header_read_timeout() {
        let (client, _phase, _task) = start(LIMITS);
        let (mut from, mut to) = tokio::io::split(client);
        // One byte every half second of a head that never ends.
        let dribble = tokio::spawn(async move {
            let head = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ";
            for n in 0.. {
                let byte = head.get(n).copied().unwrap_or(b'a');
                if to.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        assert_about(closed(&mut from).await, LIMITS.header_read);
        dribble.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timeout_applies_then_the_header_read_timeout_from_the_first_byte(
    ) {
        let (mut client, _phase, _task) = start(LIMITS);
        assert_eq!(get(&mut client, "").await, b"ok");
        // Longer than the header-read timeout, shorter than the idle timeout.
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(get(&mut client, "").await, b"ok");
        tokio::time::sleep(Duration::from_secs(100)).await;
        client.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        assert_about(closed(&mut client).await, LIMITS.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_the_idle_timeout_after_its_last_answer() {
        let (mut client, _phase, _task) = start(LIMITS);
        assert_eq!(get(&mut client, "").await, b"ok");
        assert_about(closed(&mut client).await, LIMITS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_timeout_shorter_than_the_header_read_timeout_holds_too() {
        let limits = Limits {
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(5),
        };
        let (mut client, _phase, _task) = start(limits);
        // The watchdog first sees the head awaited, then the request.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(get(&mut client, "").await, b"ok");
        assert_about(closed(&mut client).await, limits.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_and_a_slow_body_are_never_cut_and_idleness_counts_from_their_end() {
        let (mut client, _phase, _task) = start(LIMITS);
        let started = Instant::now();
        assert_eq!(get(&mut client, "x-sleep: 300\r\n").await, b"ok");
        assert_about(started.elapsed(), Duration::from_secs(300));

        let started = Instant::now();
        let body = get(&mut client, "x-chunks: 3\r\nx-every: 100\r\n").await;
        assert_eq!(body.windows(5).filter(|w| w == b"chunk").count(), 3);
        assert_about(started.elapsed(), Duration::from_secs(300));
        assert_about(closed(&mut client).await, LIMITS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn over_http2_a_running_stream_holds_the_connection_and_idleness_ends_it() {
        let (client, _phase, _task) = start(LIMITS);
        let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(client),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let started = Instant::now();
        let request = Request::get("http://x/")
            .header("x-sleep", "300")
            .body(Empty::new())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        assert_about(started.elapsed(), Duration::from_secs(300));

        // What the client sends between requests (window updates, the
        // settings' acknowledgements) begins no head: only idleness ends it.
        let answered = Instant::now();
        conn.await.unwrap().unwrap();
        assert_about(answered.elapsed(), LIMITS.idle);
    }

    /// A connection with a 10 s request in flight for a second.
    async fn a_request_in_flight() -> (DuplexStream, watch::Sender<Phase>, JoinHandle<()>) {
        let (mut client, phase, task) = start(LIMITS);
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-sleep: 10\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        (client, phase, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_lets_the_request_in_flight_finish_then_closes() {
        let (mut client, phase, task) = a_request_in_flight().await;
        phase.send(Phase::Drain).unwrap();
        assert_eq!(read_answer(&mut client).await, b"ok");
        assert_about(closed(&mut client).await, Duration::ZERO);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_drops_the_connection_whatever_is_in_flight() {
        let (mut client, phase, task) = a_request_in_flight().await;
        phase.send(Phase::Stop).unwrap();
        assert_about(closed(&mut client).await, Duration::ZERO);
        task.await.unwrap();
    }
}
