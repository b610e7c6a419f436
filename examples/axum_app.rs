//! An axum app with a slow "model" route, given the async request API in one line.
//!
//! ```text
//! cargo run --features server --example axum_app            # listens on 127.0.0.1:3000
//! PORT=8081 cargo run --features server --example axum_app  # or another port
//! ```
//!
//! `POST /predict` takes about a second; `GET /health` answers at once. Both
//! still work as before, and every route can now also be called
//! asynchronously: submit under `/async` (or send `Prefer: respond-async`),
//! get an id at once, and fetch the result later.
//!
//! It is served by `tower_defer::server::Server` rather than `axum::serve`,
//! which has no header-read timeout, no idle timeout and no connection cap:
//! a client that trickles its request head, or just holds connections open,
//! would keep a file descriptor each for good.

use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::Layer;
use tower_defer::server::Server;
use tower_defer::{DeferLayer, MemoryStore};

/// The "model": a second of "inference", then an answer built from the input.
async fn predict(Json(input): Json<Value>) -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Json(json!({ "model": "slow-echo", "echo": input }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let router = Router::new()
        .route("/predict", post(predict))
        .route("/health", get(|| async { "ok" }));

    // Wrap the whole Router, once: one queue and one worker pool for the app.
    // (`router.layer(DeferLayer::..)` would not do: axum's `Router::layer`
    // applies a layer to each route separately, which would make one worker
    // pool per route, and would not see the `/async` routes at all, since the
    // Router answers 404 for paths it has no route for.)
    //
    // `layer` spawns the worker pool, so it runs inside the runtime.
    let defer = DeferLayer::new(MemoryStore::new()).layer(router);
    let handle = defer.handle();

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}; try:");
    println!("  curl -s {base}/health");
    println!(
        "  curl -s -X POST {base}/predict -H 'content-type: application/json' -d '{{\"x\": 1}}'"
    );
    println!("  curl -si -X POST {base}/async -H 'content-type: application/json' -d '{{\"data\": {{\"x\": 1}}, \"path\": \"/predict\"}}'");
    println!("  curl -s {base}/async/ID            # status; add -H 'prefer: wait=5' to long-poll");
    println!("  curl -s {base}/async/ID/output     # VESSL-style output document");
    println!("  curl -s {base}/async/ID/result     # the /predict response itself");
    println!("  curl -si -X POST {base}/predict -H 'prefer: respond-async' -H 'content-type: application/json' -d '{{\"x\": 2}}'");

    // The wrapped Router is a tower service taking hyper's requests as they
    // are: no `into_make_service`, no mapping of bodies. The server's
    // defaults (see `tower_defer::server`) suit a public port; a long-poll in
    // flight never counts as idle.
    Server::new()
        .serve(listener, defer, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    // Let running jobs finish (queued ones stay in the store, which is gone
    // with the process here: use a persistent store to keep them).
    handle.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
