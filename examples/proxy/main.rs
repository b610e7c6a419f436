//! The smallest reverse proxy built from the library: the async API in front
//! of an HTTP server, with the in-memory store.
//!
//! ```text
//! cargo run --features proxy,server --example proxy -- http://127.0.0.1:8000
//! curl -s localhost:8080/async -d '{"data": {"prompt": "hi"}, "path": "/predict"}'
//! ```
//!
//! This shows how the pieces fit; it is not the program to deploy. That is
//! `tower-defer` (`cargo install tower-defer --features cli`): the same stack
//! with tokens, health and metrics, Redis, webhooks, dialects and a graceful
//! stop, all from flags (`src/bin/tower-defer/`).

use std::time::Duration;

use tower::Layer;
use tower_defer::server::Server;
use tower_defer::upstream::Upstream;
use tower_defer::{DeferLayer, MemoryStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream_url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());

    // The inner service: a pooled HTTP client that forwards every request.
    let upstream = Upstream::builder(upstream_url.parse()?)
        .connect_timeout(Duration::from_secs(5))
        .build()?;

    // The layer answers /async/...; every other request streams through.
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(4)
        .layer(upstream);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("forwarding to {upstream_url}; the async API is on http://127.0.0.1:8080/async");
    // A header-read timeout, an idle timeout and a connection cap, at their
    // defaults; it serves until the process is stopped.
    Server::new()
        .serve(listener, app, std::future::pending())
        .await;
    Ok(())
}
