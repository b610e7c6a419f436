//! `tower-defer`, the program: a reverse proxy that gives any HTTP server the
//! async request API, what an SRE deploys in front of a model server.
//!
//! ```text
//! cargo install --path . --features cli      # or: cargo install tower-defer --features cli
//! tower-defer --upstream http://127.0.0.1:8000 --tokens-file /etc/tower-defer/tokens
//! ```
//!
//! Built only with the `cli` feature, which pulls in its flag parser,
//! exporter, logs and allocator: a library user never compiles them.
//! Every flag is also read from `TOWER_DEFER_<NAME>` (`--max-queue` from
//! `TOWER_DEFER_MAX_QUEUE`); `tower-defer --help` lists them all with their
//! defaults. At start the proxy prints the configuration in force (secrets
//! masked), then `tower-defer proxy listening on http://ADDR` on stdout; logs
//! go to stderr (`--log-format text|json`, filtered by `RUST_LOG`). With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or the other standard `OTEL_*` variables,
//! see `tower_defer::otlp`) each job's spans are exported over OTLP, whatever
//! `RUST_LOG` says, and flushed at the graceful stop.
//!
//! # Layout
//!
//! - `alloc.rs`: the global allocator (jemalloc), and why.
//! - `config.rs`: the flags (clap), and the start-up report; `config/values.rs`:
//!   how each flag's value is read and written back.
//! - `auth.rs`: client tokens and `AuthLayer`, which makes each token's
//!   identity the owner of the jobs it submits.
//! - `health.rs`: `/healthz`, `/readyz` and `/metrics`, answered before auth.
//! - `demo.rs`: the built-in demo model, used when there is no `--upstream`.
//! - `access.rs`: the access log (`--access-log`), one line per request.
//! - `wake.rs`: `--wake-url`, called while jobs wait and the upstream
//!   refuses connections, so that a scaler can start the model.
//! - here: the stack and the graceful stop. Connections are served by
//!   `tower_defer::server::Server` (`--header-read-timeout`,
//!   `--idle-timeout`, `--max-connections`; the rules are in its docs).
//!
//! The stack, outermost first: `Front` (operational routes) ->
//! `AccessLogLayer` (with `--access-log`) -> `AuthLayer` -> `DeferLayer` (the async API; other routes stream through)
//! -> a `Timeout` around `Upstream` (pooled HTTP/1.1, or h2c), or the demo.
//!
//! # Stopping
//!
//! On SIGTERM or SIGINT the proxy stops accepting connections, lets open
//! connections finish their requests, and lets in-flight inner calls finish
//! (`DeferHandle::shutdown`), all within `--shutdown-grace`; calls still
//! running then go back to the queue. Queued jobs stay in the store (with
//! `--store redis://...` another replica runs them; the in-memory store goes
//! with the process). Then it exits 0.

mod access;
mod alloc;
mod auth;
mod config;
mod demo;
mod health;
mod wake;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Layer, ServiceBuilder};
use tower_defer::job::RetryPolicy;
use tower_defer::otlp::{OtlpConfig, OtlpHandle, OtlpLayer, Protocol};
use tower_defer::server::Server;
use tower_defer::upstream::Upstream;
use tower_defer::{Baseten, Defer, DeferLayer, InnerService, MemoryStore, Store, Webhooks};

use crate::access::AccessLogLayer;
use crate::auth::{AuthLayer, Identity, Tokens};
use crate::config::{Args, Dialect, LogFormat, StoreUrl};
use crate::health::{Front, Ops};
use crate::wake::Wake;

/// Histogram buckets for `*_seconds` (queue wait, execution time): 5 ms to 10 min.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Histogram buckets for `tower_defer_batch_size`: jobs per call.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Why the proxy did not run: exit code 2 for a configuration it cannot use,
/// 1 for a failure while starting.
struct Fail(u8, String);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Read before anything starts: a bad OTEL_* value is a configuration
    // error like a bad flag.
    let otlp = match OtlpConfig::from_env("tower-defer") {
        Ok(otlp) => otlp,
        Err(e) => {
            eprintln!("tower-defer: {e}");
            return ExitCode::from(2);
        }
    };
    let traces = init_logs(args.log_format, otlp);
    let result = start(args, traces.as_ref()).await;
    if let Some((_, handle)) = &traces {
        // The last spans, those of the graceful stop included.
        handle.flush().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, message)) => {
            eprintln!("tower-defer: {message}");
            ExitCode::from(code)
        }
    }
}

/// The logs on stderr, filtered by `RUST_LOG`; and, when `OTEL_*` names a
/// collector, the OTLP exporter beside them with a filter of its own: the
/// log level never decides which of a job's spans are exported.
fn init_logs(format: LogFormat, otlp: Option<OtlpConfig>) -> Option<(OtlpConfig, OtlpHandle)> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
    };
    let (layer, traces) = match otlp {
        Some(config) => {
            let (layer, handle) = OtlpLayer::new(config.clone());
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target("tower_defer", tracing::Level::INFO);
            (Some(layer.with_filter(only_ours)), Some((config, handle)))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(layer).init();
    traces
}

async fn start(mut args: Args, traces: Option<&(OtlpConfig, OtlpHandle)>) -> Result<(), Fail> {
    if let Some(path) = &args.batch_file {
        let routes = config::batch_file(path).map_err(|e| Fail(2, e))?;
        args.batches.extend(routes);
    }
    let tokens = Tokens::load(&args.tokens, args.tokens_file.as_deref()).map_err(|e| Fail(2, e))?;
    let webhooks = webhooks(&args)?;
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("tower_defer_batch_size".into()),
                BATCH_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| Fail(1, format!("cannot set up the metrics: {e}")))?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    let redis_urls = args.redis_urls().map_err(|e| Fail(2, e))?;
    println!("tower-defer proxy {}", env!("CARGO_PKG_VERSION"));
    for (name, value) in args.effective(&tokens) {
        println!("  {name:<20} {value}");
    }
    let traces = match traces {
        Some((config, _)) => format!(
            "{} (OTLP {})",
            config::mask_url(&config.endpoint().to_string()),
            match config.protocol() {
                Protocol::HttpProtobuf => "http/protobuf",
                Protocol::Grpc => "grpc",
            }
        ),
        None => "off (set OTEL_EXPORTER_OTLP_ENDPOINT to export them)".to_owned(),
    };
    println!("  {:<20} {traces}", "traces");
    if tokens.is_empty() {
        tracing::warn!(
            "no --token or --tokens-file: serving openly, every client sees and cancels every job"
        );
    }
    match redis_urls {
        None => run(&args, tokens, prometheus, webhooks, MemoryStore::new()).await,
        Some(urls) => run_redis(&args, tokens, prometheus, webhooks, urls).await,
    }
}

/// Webhook delivery, from the flags.
fn webhooks(args: &Args) -> Result<Webhooks, Fail> {
    let mut webhooks = Webhooks::new().deny_private_addresses(!args.webhook_allow_private);
    for secret in &args.webhook_secrets {
        // Checked first: `Webhooks::secret` panics on a bad one.
        tower_defer::webhook::Secret::new(secret)
            .map_err(|e| Fail(2, format!("--webhook-secret: {e}")))?;
        webhooks = webhooks.secret(secret);
    }
    if let Some(secret) = &args.baseten_webhook_secret {
        webhooks = webhooks.baseten_secret(secret.clone());
    }
    if !args.webhook_allow_hosts.is_empty() {
        webhooks = webhooks.allow_hosts(args.webhook_allow_hosts.iter().cloned());
    }
    if let Some(url) = &args.public_url {
        webhooks = webhooks.public_url(url.clone());
    }
    let baseten = args.dialects.contains(&Dialect::Baseten);
    if baseten && !args.webhook_secrets.is_empty() && args.baseten_webhook_secret.is_none() {
        // Signed means signed: whoever set a secret expects every delivery
        // to carry a signature, and a Baseten receiver checks
        // X-BASETEN-SIGNATURE, which only the Baseten secret makes.
        return Err(Fail(
            2,
            "--dialect baseten with --webhook-secret: Baseten-format webhooks would be sent \
             unsigned; give --baseten-webhook-secret (the secret your receivers verify \
             X-BASETEN-SIGNATURE with)"
                .into(),
        ));
    }
    if args.webhook_secrets.is_empty() {
        tracing::warn!("no --webhook-secret: webhooks are delivered unsigned");
    }
    if baseten && args.baseten_webhook_secret.is_none() {
        tracing::warn!(
            "no --baseten-webhook-secret: Baseten-format webhooks are delivered unsigned"
        );
    }
    Ok(webhooks)
}

async fn run_redis(
    args: &Args,
    tokens: Tokens,
    prometheus: PrometheusHandle,
    webhooks: Webhooks,
    urls: Vec<String>,
) -> Result<(), Fail> {
    let shown = urls
        .iter()
        .map(|u| config::mask_url(u))
        .collect::<Vec<_>>()
        .join(",");
    let builder = if args.redis_cluster {
        tower_defer::RedisStore::cluster(urls)
    } else {
        tower_defer::RedisStore::builder(urls.into_iter().next().unwrap_or_default())
    };
    let mut builder = builder
        .namespace(args.redis_namespace.clone())
        .shards(args.redis_shards as usize)
        .durability(args.redis_durability.into())
        .connect_timeout(args.redis_connect_timeout)
        .timeout(args.redis_timeout);
    if let Some(path) = &args.redis_ca {
        let pem = std::fs::read(path)
            .map_err(|e| Fail(2, format!("--redis-ca {}: {e}", path.display())))?;
        builder = builder.root_certificates(pem);
    }
    let store = builder.connect().await.map_err(|e| {
        let mut message = format!("--store {shown}: {e}");
        // The library's advice, in the program's words.
        if message.ends_with("needs that CA's certificate as a root") {
            message.push_str(": give it with --redis-ca FILE");
        }
        Fail(1, message)
    })?;
    run(args, tokens, prometheus, webhooks, store).await
}

/// The layer, from the flags.
fn defer_layer<St: Store>(args: &Args, store: St, webhooks: Webhooks) -> DeferLayer<St> {
    let mut layer = DeferLayer::new(store)
        .prefix(args.prefix.clone())
        .concurrency(args.concurrency as usize)
        .max_body(args.max_body)
        .max_queue(args.max_queue)
        .max_output(args.max_output)
        .result_ttl(args.result_ttl)
        .max_result_ttl(args.max_result_ttl)
        .max_time_in_queue(args.max_time_in_queue)
        .execution_timeout(args.execution_timeout)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(args.retry_attempts)
                .with_initial_delay(args.retry_initial_delay)
                .with_max_delay(args.retry_max_delay),
        )
        .priority_aging(args.priority_aging.0)
        .max_wait(args.max_wait)
        .lease(args.lease)
        .shutdown_grace(args.shutdown_grace)
        .forward_credentials(args.forward_credentials)
        // The identity AuthLayer found owns the job; with no tokens there is none.
        .owner(|parts| Some(parts.extensions.get::<Identity>()?.0.to_string()))
        .webhooks(webhooks);
    for batch in &args.batches {
        layer = layer.batch(batch.clone());
    }
    if args.dialects.contains(&Dialect::Bifrost) {
        layer = layer.bifrost();
    }
    if args.dialects.contains(&Dialect::Baseten) {
        layer = layer.baseten(
            Baseten::new()
                .predict_path(&args.predict_path)
                .model_id(args.model_id.clone())
                .deployment_id(args.deployment_id.clone()),
        );
    }
    layer
}

/// Builds the stack on `store` in front of the upstream (or the demo model), and serves it.
async fn run<St: Store + Clone>(
    args: &Args,
    tokens: Tokens,
    prometheus: PrometheusHandle,
    webhooks: Webhooks,
    store: St,
) -> Result<(), Fail> {
    let layer = defer_layer(args, store.clone(), webhooks);
    let ops = |upstream, scaling| Ops {
        store: store.clone(),
        prometheus: prometheus.clone(),
        upstream,
        scaling,
    };
    match &args.upstream {
        Some(url) => {
            let upstream = upstream(args, url)?;
            let inner = ServiceBuilder::new()
                .timeout(args.upstream_timeout)
                .service(upstream);
            let authority = url.authority().map(|a| match a.port_u16() {
                Some(_) => a.to_string(),
                None if url.scheme_str() == Some("https") => format!("{}:443", a.host()),
                None => format!("{}:80", a.host()),
            });
            let app = layer.layer(inner);
            serve(args, tokens, ops(authority, app.scaling()), app).await
        }
        None if args.upstream_ca.is_some() => Err(Fail(
            2,
            "--upstream-ca: there is no --upstream to trust it for".into(),
        )),
        None => {
            let app = layer.layer(tower::service_fn(demo::model));
            serve(args, tokens, ops(None, app.scaling()), app).await
        }
    }
}

/// The upstream client, from the flags.
fn upstream(args: &Args, url: &http::Uri) -> Result<Upstream, Fail> {
    let builder = Upstream::builder(url.clone())
        .http2_prior_knowledge(args.upstream_http2)
        .connect_timeout(args.upstream_connect_timeout);
    let builder = match &args.upstream_ca {
        None => builder,
        Some(path) if url.scheme_str() != Some("https") => {
            return Err(Fail(
                2,
                format!(
                    "--upstream-ca {}: the upstream {url} is not https",
                    path.display()
                ),
            ))
        }
        Some(path) => with_upstream_ca(builder, path)?,
    };
    builder
        .build()
        .map_err(|e| Fail(2, format!("--upstream {url}: {e}")))
}

fn with_upstream_ca(
    builder: tower_defer::upstream::UpstreamBuilder,
    path: &std::path::Path,
) -> Result<tower_defer::upstream::UpstreamBuilder, Fail> {
    let pem = std::fs::read(path)
        .map_err(|e| Fail(2, format!("--upstream-ca {}: {e}", path.display())))?;
    Ok(builder.add_root_certificate(pem))
}

/// Accepts connections until SIGTERM or SIGINT, then drains.
async fn serve<S, St>(
    args: &Args,
    tokens: Tokens,
    ops: Ops<St>,
    app: Defer<S, St>,
) -> Result<(), Fail>
where
    S: InnerService,
    S::Error: Send + std::fmt::Display,
    St: Store + Clone,
{
    let store = ops.store.clone();
    let handle = app.handle();
    if let Some(url) = &args.wake_url {
        let shown = config::mask_url(&url.to_string());
        let wake = Wake::new(url, shown, args.wake_interval, args.wake_timeout)
            .map_err(|e| Fail(2, format!("--wake-url {url}: {e}")))?;
        tokio::spawn(wake.watch(store.clone(), app.scaling()));
    }
    // The live page is static HTML; the data it fetches is checked as usual.
    let open = vec![format!("{}/ui", args.prefix)];
    let auth = AuthLayer::new(Arc::new(tokens), open, !args.forward_credentials);
    let access = tower::util::option_layer(args.access_log.then_some(AccessLogLayer));
    let front = Front {
        ops: Arc::new(ops),
        app: access.layer(auth.layer(app)),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Fail(1, format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Fail(1, format!("cannot listen on {}: {e}", args.listen)))?;
    // Tests and scripts read the port from this line: keep its shape.
    println!("tower-defer proxy listening on http://{addr}");
    tracing::info!(%addr, "listening");

    let grace = args.shutdown_grace;
    let server = Server::new()
        .header_read_timeout(args.header_read_timeout)
        .idle_timeout(args.idle_timeout)
        .max_connections(args.max_connections().0)
        .shutdown_grace(grace);
    // The signal stops the accept loop and, at the same moment, the workers:
    // open connections and in-flight inner calls share the grace period.
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let signal = async move {
        let signal = stop_signal().await;
        tracing::info!(
            signal,
            ?grace,
            "stopping: no new connections; in-flight work may finish within the grace period"
        );
        let _ = stopping.send(());
    };
    let workers = async move {
        if stopped.await.is_ok() {
            handle.shutdown(grace).await;
        }
    };
    tokio::join!(server.serve(listener, front, signal), workers);
    match store.stats().await {
        Ok(stats) if stats.queued > 0 && matches!(args.store, StoreUrl::Memory) => {
            tracing::warn!(
                queued = stats.queued,
                "stopped; queued jobs are lost with the in-memory store"
            )
        }
        Ok(stats) => tracing::info!(
            queued = stats.queued,
            "stopped; queued jobs stay in the store"
        ),
        Err(e) => tracing::warn!(error = %e, "stopped; cannot read the store"),
    }
    Ok(())
}

/// Resolves with the signal's name on SIGTERM or SIGINT.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
