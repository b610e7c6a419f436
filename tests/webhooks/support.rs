//! Receivers on 127.0.0.1:0 that record every request byte for byte, the
//! layer called in process (through the testkit's helpers), and a
//! verification of signatures written here, independently of the crate's own.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::Layer;
use tower_defer::{Body, Defer, DeferLayer, MemoryStore, Webhooks};
pub use tower_defer_testkit::inproc::{call, envelope, get, status};

// ---------------------------------------------------------------- receivers

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON event")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

/// How a receiver answers its `n`-th request (from 0).
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16, Vec<(&'static str, String)>),
    /// Reads the request, then never answers.
    Hang,
}

pub fn ok() -> Reply {
    Reply::Status(200, vec![])
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A receiver; dropping it stops it and closes its connections.
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    hits: mpsc::UnboundedReceiver<Hit>,
    pub seen: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::on(listener, script)
    }

    /// A receiver on a listener the caller bound (a port chosen earlier).
    pub fn on(
        listener: TcpListener,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::serve(listener, Arc::new(script), None)
    }

    /// An https receiver with this TLS configuration.
    pub async fn start_tls(
        config: Arc<tokio_rustls::rustls::ServerConfig>,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener, Arc::new(script), Some(config))
    }

    fn serve(
        listener: TcpListener,
        script: Script,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let (tx, hits) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(Mutex::new(0usize));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, seen, count, script) =
                    (tx.clone(), seen2.clone(), count.clone(), script.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (tx, seen, count, script) =
                        (tx.clone(), seen.clone(), count.clone(), script.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let hit = Hit {
                            path,
                            headers: parts.headers,
                            body,
                            at: Instant::now(),
                        };
                        let n = {
                            let mut c = count.lock().unwrap();
                            *c += 1;
                            *c - 1
                        };
                        seen.lock().unwrap().push(hit.clone());
                        let _ = tx.send(hit);
                        match script(n) {
                            Reply::Hang => std::future::pending().await,
                            Reply::Status(status, headers) => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                for (k, v) in headers {
                                    r.headers_mut().insert(k, v.parse().unwrap());
                                }
                                Ok::<_, Infallible>(r)
                            }
                        }
                    }
                });
                let tls = tls.clone();
                connections.spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            hits,
            seen,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request, waiting up to 20 s (a bound against hanging, not a
    /// measure of speed).
    pub async fn next(&mut self) -> Hit {
        tokio::time::timeout(Duration::from_secs(20), self.hits.recv())
            .await
            .expect("the receiver got a request in time")
            .expect("the receiver is running")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------- the layer

pub type App =
    Defer<tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>, MemoryStore>;

/// Releases jobs sent to `/block`.
#[derive(Clone, Default)]
pub struct Gate(pub Arc<Notify>);

/// The inner service: `/` answers `{"text":"Hello!"}`, `/text` plain text,
/// `/big` a JSON body of 1000 bytes, `/block` waits for the gate first.
pub fn model(
    gate: Gate,
) -> tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible> {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let (body, content_type) = match req.uri().path() {
                "/text" => ("hello".to_owned(), "text/plain"),
                "/big" => (
                    format!("{{\"pad\":\"{}\"}}", "x".repeat(990)),
                    "application/json",
                ),
                "/block" => {
                    gate.0.notified().await;
                    ("{\"text\":\"late\"}".to_owned(), "application/json")
                }
                _ => ("{\"text\":\"Hello!\"}".to_owned(), "application/json"),
            };
            let mut r = Response::new(Body::from(body));
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            Ok::<_, Infallible>(r)
        }
    }))
}

pub fn layer() -> DeferLayer {
    DeferLayer::new(MemoryStore::new())
}

pub fn app(layer: DeferLayer) -> App {
    layer.layer(model(Gate::default()))
}

/// Webhooks for receivers on loopback: private addresses allowed, short
/// steps between attempts.
pub fn local() -> Webhooks {
    Webhooks::new()
        .deny_private_addresses(false)
        .schedule([Duration::ZERO, ms(100), ms(100)])
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Submits `{"data": {}, "webhook": url}` and returns the job id.
pub async fn submit_with(app: &App, url: &str) -> String {
    let answer = call(
        app,
        envelope(serde_json::json!({"data": {}, "webhook": url})),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    answer.json()["id"].as_str().unwrap().to_owned()
}

/// Polls the status document until `done` holds (up to 20 s, a bound
/// against hanging, not a measure of speed), and returns it.
pub async fn wait_until(app: &App, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = status(app, id).await;
        if done(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "still waiting: {doc}");
        tokio::time::sleep(ms(20)).await;
    }
}

/// The status document once the webhook is no longer pending.
pub async fn delivered(app: &App, id: &str) -> Value {
    wait_until(app, id, |d| d["webhook"]["status"] != "pending").await
}

// ------------------------------------------------- verification, our own code

pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret's key and its `whsec_` text.
pub fn secret(key: &[u8]) -> String {
    format!("whsec_{}", base64(key))
}

/// Whether any `v1,` signature in the hit's `webhook-signature` is the
/// HMAC of `"{id}.{timestamp}.{raw body}"` under `key`.
pub fn verifies(hit: &Hit, key: &[u8]) -> bool {
    let mut signed = Vec::new();
    signed.extend_from_slice(hit.header("webhook-id").as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(hit.header("webhook-timestamp").as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(&hit.body);
    let expected = base64(&hmac_sha256(key, &signed));
    hit.header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// Unix seconds on the wall clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
