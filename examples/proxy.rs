//! A reverse proxy that gives any HTTP server the async request API.
//!
//! ```text
//! cargo run --release --features proxy --example proxy -- --upstream http://127.0.0.1:8000
//! ```
//!
//! Flags, each also read from the environment (`--listen` from
//! `TOWER_DEFER_LISTEN`, and so on):
//!
//! | flag | env | default |
//! |---|---|---|
//! | `--listen ADDR` | `TOWER_DEFER_LISTEN` | `127.0.0.1:8080` |
//! | `--upstream URL` | `TOWER_DEFER_UPSTREAM` | none: a built-in demo model |
//! | `--prefix P` | `TOWER_DEFER_PREFIX` | `/async` |
//! | `--concurrency N` | `TOWER_DEFER_CONCURRENCY` | `16` |
//! | `--store S` | `TOWER_DEFER_STORE` | `memory`; or `redis://host:port/db` (feature `redis`) |
//!
//! With `--store redis://...` several proxies share one queue: submit to any,
//! read from any (build with `--features proxy,redis`).
//!
//! Without `--upstream` it serves a small demo model (`POST /predict` echoes
//! its JSON input after a short "inference" delay), so it runs on a fresh
//! machine with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::Layer;
use tower_defer::upstream::Upstream;
use tower_defer::{Baseten, Body, DeferLayer, MemoryStore, Store};

struct Options {
    listen: SocketAddr,
    upstream: Option<String>,
    prefix: String,
    concurrency: usize,
    store: String,
    dialects: Vec<String>,
    predict_path: String,
    model_id: String,
    deployment_id: String,
}

const USAGE: &str = "usage: proxy [--listen ADDR] [--upstream URL] [--prefix P] [--concurrency N] [--store memory|redis://host:port/db]
             [--dialect baseten|bifrost]... [--predict-path P] [--model-id ID] [--deployment-id ID]
each flag may also be set as TOWER_DEFER_<FLAG> (TOWER_DEFER_LISTEN, ..., TOWER_DEFER_DIALECT=baseten,bifrost)";

fn parse_options() -> Result<Options, String> {
    let mut listen = std::env::var("TOWER_DEFER_LISTEN").ok();
    let mut upstream = std::env::var("TOWER_DEFER_UPSTREAM").ok();
    let mut prefix = std::env::var("TOWER_DEFER_PREFIX").ok();
    let mut concurrency = std::env::var("TOWER_DEFER_CONCURRENCY").ok();
    let mut store = std::env::var("TOWER_DEFER_STORE").ok();
    let mut predict_path = std::env::var("TOWER_DEFER_PREDICT_PATH").ok();
    let mut model_id = std::env::var("TOWER_DEFER_MODEL_ID").ok();
    let mut deployment_id = std::env::var("TOWER_DEFER_DEPLOYMENT_ID").ok();
    let mut dialects: Vec<String> = std::env::var("TOWER_DEFER_DIALECT")
        .map(|v| {
            v.split(',')
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut dialect_flag = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--upstream" => &mut upstream,
            "--prefix" => &mut prefix,
            "--concurrency" => &mut concurrency,
            "--store" => &mut store,
            "--dialect" => &mut dialect_flag,
            "--predict-path" => &mut predict_path,
            "--model-id" => &mut model_id,
            "--deployment-id" => &mut deployment_id,
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        };
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        *slot = Some(value);
        // `--dialect` is repeatable.
        if let Some(d) = dialect_flag.take() {
            dialects.push(d);
        }
    }
    for d in &dialects {
        if d != "baseten" && d != "bifrost" {
            return Err(format!("--dialect must be baseten or bifrost, got {d:?}"));
        }
    }
    let predict_path = predict_path.unwrap_or_else(|| "/predict".into());
    if !predict_path.starts_with('/') || predict_path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!(
            "--predict-path must be a path starting with '/', got {predict_path:?}"
        ));
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1:8080".into());
    let concurrency = concurrency.unwrap_or_else(|| "16".into());
    let prefix = prefix.unwrap_or_else(|| "/async".into());
    let store = store
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "memory".into());
    if store != "memory" && !store.starts_with("redis://") && !store.starts_with("rediss://") {
        return Err(format!(
            "--store must be memory or redis://host:port/db, got {store:?}"
        ));
    }
    if !prefix.starts_with('/') || prefix.trim_end_matches('/').is_empty() {
        return Err(format!(
            "--prefix must start with '/' and name a path, got {prefix:?}"
        ));
    }
    Ok(Options {
        listen: listen.parse().map_err(|_| {
            format!("--listen must be an address such as 127.0.0.1:8080, got {listen:?}")
        })?,
        upstream: upstream.filter(|u| !u.is_empty()),
        prefix,
        concurrency: concurrency.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            format!("--concurrency must be a whole number of at least 1, got {concurrency:?}")
        })?,
        store,
        dialects,
        predict_path,
        model_id: model_id.unwrap_or_default(),
        deployment_id: deployment_id.unwrap_or_default(),
    })
}

/// The built-in demo model: any `POST` with a JSON body (`/predict`, VESSL's
/// `/predictions/...`, Bifrost's `/v1/completions`, ...) echoes its input
/// after 500 ms; `GET /health` answers `ok`.
async fn demo_model(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/health") => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
        ("POST", _) => {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let Ok(input) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                return Ok(json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"message": "the body must be JSON"}),
                ));
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({"echo": input, "model": "demo"}),
            ))
        }
        _ => Ok(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "the demo model answers POST with a JSON body, and GET /health"}),
        )),
    }
}

async fn serve<S, B>(listen: SocketAddr, service: S) -> std::io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "tower-defer proxy listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let result = if options.store == "memory" {
        run(&options, MemoryStore::new(), "in-memory store").await
    } else {
        connect_redis_and_run(&options).await
    };
    if let Err(e) = result {
        eprintln!("cannot serve on {}: {e}", options.listen);
        std::process::exit(1);
    }
}

#[cfg(feature = "redis")]
async fn connect_redis_and_run(options: &Options) -> std::io::Result<()> {
    match tower_defer::RedisStore::connect(options.store.as_str()).await {
        Ok(store) => run(options, store, "Redis store").await,
        Err(e) => {
            eprintln!("--store {}: {e}", options.store);
            std::process::exit(2);
        }
    }
}

#[cfg(not(feature = "redis"))]
async fn connect_redis_and_run(options: &Options) -> std::io::Result<()> {
    eprintln!(
        "--store {}: this proxy was built without the redis feature (build with --features proxy,redis)",
        options.store
    );
    std::process::exit(2);
}

/// Serves the async API on `store` in front of the upstream (or the demo model).
async fn run<St: Store>(options: &Options, store: St, what: &str) -> std::io::Result<()> {
    let mut layer = DeferLayer::new(store)
        .prefix(options.prefix.clone())
        .concurrency(options.concurrency);
    if options.dialects.iter().any(|d| d == "bifrost") {
        layer = layer.bifrost();
        println!("Bifrost dialect under /v1/async");
    }
    if options.dialects.iter().any(|d| d == "baseten") {
        layer = layer.baseten(
            Baseten::new()
                .predict_path(&options.predict_path)
                .model_id(options.model_id.clone())
                .deployment_id(options.deployment_id.clone()),
        );
        println!(
            "Baseten dialect: async_predict -> POST {}",
            options.predict_path
        );
    }
    println!(
        "async API under {} (concurrency {}, {what})",
        options.prefix.trim_end_matches('/'),
        options.concurrency
    );
    match &options.upstream {
        Some(url) => {
            let upstream = match url
                .parse()
                .map_err(|e| format!("{e}"))
                .and_then(|u| Upstream::new(u).map_err(|e| e.to_string()))
            {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("--upstream {url:?}: {e}");
                    std::process::exit(2);
                }
            };
            println!("forwarding to {url}");
            let app = layer.layer(upstream);
            serve(options.listen, app).await
        }
        None => {
            println!(
                "no --upstream given: serving the built-in demo model (any POST echoes its JSON input after 500 ms)"
            );
            let app = layer.layer(tower::service_fn(demo_model));
            serve(options.listen, app).await
        }
    }
}
