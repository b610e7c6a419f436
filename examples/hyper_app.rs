//! A plain hyper 1.x server whose service is wrapped with the async request API.
//!
//! ```text
//! cargo run --example hyper_app            # listens on 127.0.0.1:3000
//! PORT=8081 cargo run --example hyper_app  # or another port
//! ```
//!
//! `POST /predict` upper-cases its body after half a second of "inference";
//! `GET /health` answers at once. Any route can also be called asynchronously.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

/// The inner service. It takes `Request<tower_defer::Body>`, never hyper's
/// `Incoming`: a request that passes through the layer arrives with the
/// client's body wrapped, still streaming, and a job replayed by a worker
/// arrives with its stored bytes. Same type, same code path for both.
async fn model(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let reply = |status, text: Bytes| {
        let mut r = Response::new(Full::new(text));
        *r.status_mut() = status;
        r
    };
    Ok(match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/health") => reply(StatusCode::OK, Bytes::from_static(b"ok\n")),
        ("POST", "/predict") => {
            let Ok(input) = body.collect().await.map(|c| c.to_bytes()) else {
                return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body\n".into()));
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            reply(StatusCode::OK, input.to_ascii_uppercase().into())
        }
        _ => reply(StatusCode::NOT_FOUND, "try POST /predict\n".into()),
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `layer` spawns the worker pool on this runtime. The result is a
    // `tower::Service<Request<B>>` for any body `B` with `Data = Bytes` (and
    // an error convertible to a boxed error), so it takes hyper's
    // `Request<Incoming>` as it is: the async routes read the body, every
    // other request hands it on to `model` inside a `tower_defer::Body`.
    let app = DeferLayer::new(MemoryStore::new()).layer(tower::service_fn(model));

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}; try:");
    println!("  curl -s -X POST {base}/predict -d 'hello'");
    println!("  curl -si -X POST {base}/async -H 'content-type: application/json' -d '{{\"data\": \"hello\", \"path\": \"/predict\"}}'");
    println!("  curl -s {base}/async/ID/output");
    println!("  curl -si -X POST {base}/predict -H 'prefer: respond-async' -d 'hello'");

    loop {
        let (stream, _) = listener.accept().await?;
        // One clone per connection: clones share the store and the worker pool.
        // `TowerToHyperService` adapts the tower service (`poll_ready` +
        // `call`) to hyper's `Service<Request<Incoming>>` (`call` only).
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // `auto` speaks HTTP/1.1, and HTTP/2 when that feature is on.
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                eprintln!("connection error: {e}");
            }
        });
    }
}
