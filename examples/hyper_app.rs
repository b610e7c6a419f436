//! A service written with hyper's types alone (no framework), given the async
//! request API and served by `tower_defer::server::Server`.
//!
//! ```text
//! cargo run --features server --example hyper_app            # listens on 127.0.0.1:3000
//! PORT=8081 cargo run --features server --example hyper_app  # or another port
//! ```
//!
//! `POST /predict` upper-cases its body after half a second of "inference";
//! `GET /health` answers at once. Any route can also be called asynchronously.
//!
//! `Server` is hyper's auto builder (HTTP/1.1 and h2c) with the guards a
//! public port needs: a header-read timeout, an idle timeout that never cuts
//! a request in flight, a cap on open connections, and a graceful stop.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::Layer;
use tower_defer::server::Server;
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
    let handle = app.handle();

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}; try:");
    println!("  curl -s -X POST {base}/predict -d 'hello'");
    println!("  curl -si -X POST {base}/async -H 'content-type: application/json' -d '{{\"data\": \"hello\", \"path\": \"/predict\"}}'");
    println!("  curl -s {base}/async/ID/output");
    println!("  curl -si -X POST {base}/predict -H 'prefer: respond-async' -d 'hello'");

    // Each request goes to a clone of `app`: clones share the store and the
    // worker pool. The header-read timeout and the connection cap keep their
    // defaults (see `tower_defer::server`); the idle timeout is set here.
    let server = Server::new().idle_timeout(Duration::from_secs(60));
    server
        .serve(listener, app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    // Let running jobs finish (queued ones are lost with the in-memory store).
    handle.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
