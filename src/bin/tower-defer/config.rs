//! The command line: every flag, each also read from `TOWER_DEFER_<NAME>`,
//! and the effective configuration printed at start with secrets masked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::Uri;
use tower_defer::batch::Batch;

use crate::auth::Tokens;

mod values;

use values::{
    aging, batch, bytes, human, namespace, path, percent_encoded, positive_duration, prefix, store,
    upstream_url, wake_url, webhook_secret,
};
pub(crate) use values::{batch_file, duration, mask_url, size};

/// A reverse proxy that gives any HTTP server the async request API.
///
/// Every flag may also be set in the environment as TOWER_DEFER_<FLAG>
/// (TOWER_DEFER_LISTEN, TOWER_DEFER_TOKEN=a,b, ...); a flag wins over its
/// variable. Repeatable flags take comma-separated lists there. Durations are
/// `500ms`, `30s`, `10m`, `1h`, `7d` (a bare number is seconds); sizes are
/// `512KiB`, `10MiB`, `1GiB` (a bare number is bytes).
#[derive(Parser, Debug)]
#[command(name = "tower-defer", version, max_term_width = 100)]
pub(crate) struct Args {
    /// The address to serve on; port 0 picks a free one (the bound address is printed).
    #[arg(long, env = "TOWER_DEFER_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// The server to forward to (http://host:port[/base], or https://); none serves a built-in demo model.
    #[arg(long, env = "TOWER_DEFER_UPSTREAM", value_parser = upstream_url)]
    pub(crate) upstream: Option<Uri>,

    /// A PEM file of root certificates to trust for an https upstream, beside Mozilla's (its private CA, or its self-signed certificate).
    #[arg(long, env = "TOWER_DEFER_UPSTREAM_CA")]
    pub(crate) upstream_ca: Option<PathBuf>,

    /// Speak HTTP/2 with prior knowledge (h2c) to the upstream instead of HTTP/1.1.
    #[arg(long, env = "TOWER_DEFER_UPSTREAM_HTTP2", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub(crate) upstream_http2: bool,

    /// How long a connection to the upstream may take to open.
    #[arg(long, env = "TOWER_DEFER_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub(crate) upstream_connect_timeout: Duration,

    /// How long the upstream may take to start answering a request (its head; the body then streams).
    #[arg(long, env = "TOWER_DEFER_UPSTREAM_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub(crate) upstream_timeout: Duration,

    /// Where the native async API lives.
    #[arg(long, env = "TOWER_DEFER_PREFIX", default_value = "/async", value_parser = prefix)]
    pub(crate) prefix: String,

    /// At most this many inner calls at once.
    #[arg(long, env = "TOWER_DEFER_CONCURRENCY", default_value = "16", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,

    /// `memory`, or `redis://[user:password@]host:port/db` (`rediss://` for TLS) to share one queue between proxies; a password holding `@`, `:` or `/` is percent-encoded. With --redis-cluster, the URLs of some of the cluster's nodes, separated by commas.
    #[arg(long, env = "TOWER_DEFER_STORE", default_value = "memory", value_parser = store)]
    pub(crate) store: StoreUrl,

    /// The Redis password, when it is not in the --store URL (set TOWER_DEFER_REDIS_PASSWORD rather than the flag, which others can read in the process list).
    #[arg(long, env = "TOWER_DEFER_REDIS_PASSWORD", hide_env_values = true)]
    pub(crate) redis_password: Option<String>,

    /// The --store URLs are nodes of a Redis Cluster: commands go to the master of each shard's slot, following the cluster as slots move and masters fail over.
    #[arg(long, env = "TOWER_DEFER_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub(crate) redis_cluster: bool,

    /// How many shards the namespace spreads over, 1 to 36 (on a Redis Cluster, one per master spreads the work over them); every proxy of a namespace gives the same number.
    #[arg(long, env = "TOWER_DEFER_REDIS_SHARDS", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=36))]
    pub(crate) redis_shards: u32,

    /// When a submission is acknowledged (201): once the Redis master that holds it has it (primary), or once a replica has it too (replicated: WAIT; no acknowledged job is lost at a failover, and a submission no replica confirms within half the --redis-timeout answers 503).
    #[arg(
        long,
        env = "TOWER_DEFER_REDIS_DURABILITY",
        value_enum,
        default_value = "primary"
    )]
    pub(crate) redis_durability: RedisDurability,

    /// A PEM file of the root certificates to trust for a rediss:// store, in place of Mozilla's (its private CA's certificate).
    #[arg(long, env = "TOWER_DEFER_REDIS_CA")]
    pub(crate) redis_ca: Option<PathBuf>,

    /// Every Redis key is `{NAMESPACE}:...`; proxies with the same namespace on one Redis share one queue.
    #[arg(long, env = "TOWER_DEFER_REDIS_NAMESPACE", default_value = "tower-defer", value_parser = namespace)]
    pub(crate) redis_namespace: String,

    /// How long opening a Redis connection may take (TCP, TLS handshake, AUTH), at start and on each reconnect.
    #[arg(long, env = "TOWER_DEFER_REDIS_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub(crate) redis_connect_timeout: Duration,

    /// How long one Redis command may take (then the request it serves answers 503).
    #[arg(long, env = "TOWER_DEFER_REDIS_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub(crate) redis_timeout: Duration,

    /// The largest request body accepted for a job (larger: 413).
    #[arg(long, env = "TOWER_DEFER_MAX_BODY", default_value = "10MiB", value_parser = size)]
    pub(crate) max_body: usize,

    /// At most this many queued jobs (past it: 429 + Retry-After).
    #[arg(long, env = "TOWER_DEFER_MAX_QUEUE", default_value = "10000")]
    pub(crate) max_queue: usize,

    /// The largest inner response kept for a job (larger: the job fails, response_too_large).
    #[arg(long, env = "TOWER_DEFER_MAX_OUTPUT", default_value = "100MiB", value_parser = size)]
    pub(crate) max_output: usize,

    /// How long a finished job's result stays retrievable, unless the job asks otherwise.
    #[arg(long, env = "TOWER_DEFER_RESULT_TTL", default_value = "1h", value_parser = duration)]
    pub(crate) result_ttl: Duration,

    /// The longest result TTL a job may ask for.
    #[arg(long, env = "TOWER_DEFER_MAX_RESULT_TTL", default_value = "7d", value_parser = duration)]
    pub(crate) max_result_ttl: Duration,

    /// A job not started this long after submission ends `expired`.
    #[arg(long, env = "TOWER_DEFER_MAX_TIME_IN_QUEUE", default_value = "10m", value_parser = duration)]
    pub(crate) max_time_in_queue: Duration,

    /// How long one inner call of a job may run (then the job fails, execution_timeout).
    #[arg(long, env = "TOWER_DEFER_EXECUTION_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub(crate) execution_timeout: Duration,

    /// Attempts in all after a 500, 502, 503 or 504, the first included.
    #[arg(long, env = "TOWER_DEFER_RETRY_ATTEMPTS", default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) retry_attempts: u32,

    /// The delay before the second attempt; it doubles after each.
    #[arg(long, env = "TOWER_DEFER_RETRY_INITIAL_DELAY", default_value = "1s", value_parser = duration)]
    pub(crate) retry_initial_delay: Duration,

    /// The cap on the delay between attempts.
    #[arg(long, env = "TOWER_DEFER_RETRY_MAX_DELAY", default_value = "5s", value_parser = duration)]
    pub(crate) retry_max_delay: Duration,

    /// How fast waiting jobs gain priority, or `off` for strict priority.
    #[arg(long, env = "TOWER_DEFER_PRIORITY_AGING", default_value = "60s", value_parser = aging)]
    pub(crate) priority_aging: Aging,

    /// The longest `Prefer: wait=N` honoured.
    #[arg(long, env = "TOWER_DEFER_MAX_WAIT", default_value = "60s", value_parser = duration)]
    pub(crate) max_wait: Duration,

    /// How long a worker's claim on a job lasts without renewal (a crashed proxy's jobs run again after it).
    #[arg(long, env = "TOWER_DEFER_LEASE", default_value = "30s", value_parser = duration)]
    pub(crate) lease: Duration,

    /// How long a client may take to send a request's head: from the connection's opening, then from the first byte of each later request (past it: closed).
    #[arg(long, env = "TOWER_DEFER_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub(crate) header_read_timeout: Duration,

    /// How long a connection may stay open with no request in flight (a long-poll or a streaming answer is never cut).
    #[arg(long, env = "TOWER_DEFER_IDLE_TIMEOUT", default_value = "2m", value_parser = positive_duration)]
    pub(crate) idle_timeout: Duration,

    /// At most this many client connections open at once; past it, new ones are answered 503 and closed. Default: half the open-file limit, at most 10000.
    #[arg(long, env = "TOWER_DEFER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: Option<u32>,

    /// On SIGTERM or SIGINT: how long in-flight calls and connections may take to finish.
    #[arg(long, env = "TOWER_DEFER_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub(crate) shutdown_grace: Duration,

    /// Send the client's Authorization and Cookie on to the upstream (default: the proxy's token stops here).
    #[arg(long, env = "TOWER_DEFER_FORWARD_CREDENTIALS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub(crate) forward_credentials: bool,

    /// Batch a route's queued jobs into one upstream call (repeatable):
    /// `'POST /v1/embeddings input=/input output=/data max=32 bytes=1048576 wait=10ms'`.
    #[arg(long = "batch", env = "TOWER_DEFER_BATCH", value_delimiter = ';', value_parser = batch)]
    pub(crate) batches: Vec<Batch>,

    /// A JSON file of batching routes: `[{"route": "POST /v1/embeddings", "input": "/input", "output": "/data", "max_items": 32, "max_bytes": 1048576, "max_wait_ms": 10}]`.
    #[arg(long, env = "TOWER_DEFER_BATCH_FILE")]
    pub(crate) batch_file: Option<PathBuf>,

    /// Also answer a hosted platform's async API (repeatable): baseten, bifrost.
    #[arg(
        long = "dialect",
        env = "TOWER_DEFER_DIALECT",
        value_enum,
        value_delimiter = ','
    )]
    pub(crate) dialects: Vec<Dialect>,

    /// Baseten: the upstream route that async_predict calls.
    #[arg(long, env = "TOWER_DEFER_PREDICT_PATH", default_value = "/predict", value_parser = path)]
    pub(crate) predict_path: String,

    /// Baseten: the model_id reported in status documents.
    #[arg(long, env = "TOWER_DEFER_MODEL_ID", default_value = "")]
    pub(crate) model_id: String,

    /// Baseten: the deployment_id reported in status documents.
    #[arg(long, env = "TOWER_DEFER_DEPLOYMENT_ID", default_value = "")]
    pub(crate) deployment_id: String,

    /// A webhook signing secret, `whsec_<base64>` (repeatable: the first signs, all are listed for rotation).
    #[arg(long = "webhook-secret", env = "TOWER_DEFER_WEBHOOK_SECRET", value_delimiter = ',', hide_env_values = true, value_parser = webhook_secret)]
    pub(crate) webhook_secrets: Vec<String>,

    /// Baseten dialect: the secret its webhooks are signed with (X-BASETEN-SIGNATURE); required with --dialect baseten once any --webhook-secret is set.
    #[arg(
        long,
        env = "TOWER_DEFER_BASETEN_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub(crate) baseten_webhook_secret: Option<String>,

    /// Accept webhook URLs on these hosts only (repeatable; `*.example.com` for subdomains). Default: any.
    #[arg(
        long = "webhook-allow-host",
        env = "TOWER_DEFER_WEBHOOK_ALLOW_HOST",
        value_delimiter = ','
    )]
    pub(crate) webhook_allow_hosts: Vec<String>,

    /// Allow webhook receivers on loopback and private addresses (refused by default).
    #[arg(long, env = "TOWER_DEFER_WEBHOOK_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub(crate) webhook_allow_private: bool,

    /// This service's public base URL (https://api.example.com), to make result URLs in webhook events absolute.
    #[arg(long, env = "TOWER_DEFER_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,

    /// A client token (repeatable), accepted as `Authorization: Bearer T` or `Api-Key T`.
    #[arg(
        long = "token",
        env = "TOWER_DEFER_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) tokens: Vec<String>,

    /// A file of client tokens, one a line, each `token` or `name:token`; `#` starts a comment.
    #[arg(long, env = "TOWER_DEFER_TOKENS_FILE")]
    pub(crate) tokens_file: Option<PathBuf>,

    /// Logs on stderr as text or as one JSON object a line.
    #[arg(
        long,
        env = "TOWER_DEFER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,

    /// Log one line per request answered by the async API or passed through (method, path, status, duration_ms, job_id, trace_id), target tower_defer::access.
    #[arg(long, env = "TOWER_DEFER_ACCESS_LOG", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub(crate) access_log: bool,

    /// While jobs wait and the upstream refuses connections, POST to this URL (http:// or https://), so that a scaler can start the model.
    #[arg(long, env = "TOWER_DEFER_WAKE_URL", value_parser = wake_url)]
    pub(crate) wake_url: Option<Uri>,

    /// Call --wake-url at most once per this long.
    #[arg(long, env = "TOWER_DEFER_WAKE_INTERVAL", default_value = "30s", value_parser = positive_duration)]
    pub(crate) wake_interval: Duration,

    /// How long one call to --wake-url may take, connecting included.
    #[arg(long, env = "TOWER_DEFER_WAKE_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub(crate) wake_timeout: Duration,
}

/// A front door besides the native API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dialect {
    Baseten,
    Bifrost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// `--redis-durability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RedisDurability {
    Primary,
    Replicated,
}

impl From<RedisDurability> for tower_defer::store::redis::Durability {
    fn from(d: RedisDurability) -> Self {
        match d {
            RedisDurability::Primary => Self::Primary,
            RedisDurability::Replicated => Self::Replicated,
        }
    }
}

/// Where jobs are kept.
#[derive(Clone, Debug)]
pub(crate) enum StoreUrl {
    Memory,
    Redis(String),
}

/// The aging period, `None` for strict priority.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Aging(pub(crate) Option<Duration>);

/// The cap on connections when `--max-connections` is not given: half the
/// open-file limit (each client connection may hold an upstream connection
/// beside it), at most this.
const MAX_CONNECTIONS: u64 = 10_000;

/// The process's soft limit on open files, where the system says (Linux).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap for `--max-connections`, defaulted from the open-file
/// limit when `given` is `None`, and how it was reached.
fn connection_cap(given: Option<u32>, limit: Option<u64>) -> (usize, String) {
    match (given, limit) {
        (Some(n), Some(limit)) if u64::from(n) > limit / 2 => (
            n as usize,
            format!("{n} (above half the open-file limit {limit}: raise `ulimit -n`)"),
        ),
        (Some(n), _) => (n as usize, n.to_string()),
        (None, Some(limit)) => {
            let n = (limit / 2).clamp(1, MAX_CONNECTIONS);
            (
                n as usize,
                format!("{n} (half the open-file limit {limit}, at most {MAX_CONNECTIONS})"),
            )
        }
        (None, None) => (
            MAX_CONNECTIONS as usize,
            format!("{MAX_CONNECTIONS} (the open-file limit is unknown)"),
        ),
    }
}

impl Args {
    /// The connection cap in force, and how it was reached.
    pub(crate) fn max_connections(&self) -> (usize, String) {
        connection_cap(self.max_connections, open_file_limit())
    }

    /// The Redis URLs to connect to (one, or a cluster's nodes),
    /// `--redis-password` in each; `None` for the memory store; `Err` when
    /// the Redis flags do not fit the store.
    pub(crate) fn redis_urls(&self) -> Result<Option<Vec<String>>, String> {
        let list = match &self.store {
            StoreUrl::Redis(list) => list,
            StoreUrl::Memory => {
                let misfit = if let Some(path) = &self.redis_ca {
                    format!(
                        "--redis-ca {}: the store is memory, not rediss://",
                        path.display()
                    )
                } else if self.redis_password.is_some() {
                    "--redis-password: the store is memory".to_owned()
                } else if self.redis_cluster {
                    "--redis-cluster: the store is memory".to_owned()
                } else if self.redis_shards != 1 {
                    format!("--redis-shards {}: the store is memory", self.redis_shards)
                } else if self.redis_durability != RedisDurability::Primary {
                    "--redis-durability replicated: the store is memory".to_owned()
                } else {
                    return Ok(None);
                };
                return Err(misfit);
            }
        };
        let urls: Vec<&str> = list.split(',').collect();
        if urls.len() > 1 && !self.redis_cluster {
            return Err(format!(
                "--store: {} URLs are the nodes of a Redis Cluster; say so with --redis-cluster",
                urls.len()
            ));
        }
        urls.into_iter()
            .map(|url| self.redis_url(url))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// One Redis URL to connect to, `--redis-password` in it.
    fn redis_url(&self, url: &str) -> Result<String, String> {
        if let Some(path) = &self.redis_ca {
            if !url.starts_with("rediss://") {
                return Err(format!(
                    "--redis-ca {}: the store {} is not rediss://",
                    path.display(),
                    mask_url(url)
                ));
            }
        }
        let Some(password) = &self.redis_password else {
            return Ok(url.to_owned());
        };
        let mut parsed =
            url::Url::parse(url).map_err(|e| format!("--store {}: {e}", mask_url(url)))?;
        if parsed.password().is_some() {
            return Err(
                "--redis-password: the --store URL holds a password already; give it once".into(),
            );
        }
        parsed
            .set_password(Some(&percent_encoded(password)))
            .map_err(|()| format!("--store {}: a URL with a host", mask_url(url)))?;
        Ok(parsed.to_string())
    }

    /// The configuration in force, one `name value` line each, secrets masked.
    pub(crate) fn effective(&self, tokens: &Tokens) -> Vec<(&'static str, String)> {
        let store = match self.redis_urls() {
            Ok(Some(urls)) => format!(
                "{} ({}; {}namespace {}{}{}; connect timeout {}, timeout {})",
                urls.iter()
                    .map(|u| mask_url(u))
                    .collect::<Vec<_>>()
                    .join(","),
                match (urls[0].starts_with("rediss://"), &self.redis_ca) {
                    (false, _) => "plain text".to_owned(),
                    (true, None) => "TLS, Mozilla's roots".to_owned(),
                    (true, Some(path)) => format!("TLS, trusting only {}", path.display()),
                },
                if self.redis_cluster { "cluster; " } else { "" },
                self.redis_namespace,
                match self.redis_shards {
                    1 => String::new(),
                    n => format!(", {n} shards"),
                },
                match self.redis_durability {
                    RedisDurability::Primary => "",
                    RedisDurability::Replicated => "; durability replicated",
                },
                human(self.redis_connect_timeout),
                human(self.redis_timeout)
            ),
            Ok(None) => "memory".to_owned(),
            // Refused before this is printed; masked all the same.
            Err(_) => match &self.store {
                StoreUrl::Memory => "memory".to_owned(),
                StoreUrl::Redis(list) => {
                    list.split(',').map(mask_url).collect::<Vec<_>>().join(",")
                }
            },
        };
        let upstream = match &self.upstream {
            Some(u) => format!(
                "{u} ({}{}, connect timeout {}, timeout {})",
                match (
                    u.scheme() == Some(&http::uri::Scheme::HTTPS),
                    self.upstream_http2
                ) {
                    (false, false) => "HTTP/1.1",
                    (false, true) => "h2c",
                    (true, false) => "TLS, h2 or HTTP/1.1 by ALPN",
                    (true, true) => "TLS, h2",
                },
                match &self.upstream_ca {
                    Some(path) => format!(", also trusting {}", path.display()),
                    None => String::new(),
                },
                human(self.upstream_connect_timeout),
                human(self.upstream_timeout)
            ),
            None => "none: the built-in demo model".to_owned(),
        };
        let dialects = if self.dialects.is_empty() {
            "none (native API only)".to_owned()
        } else {
            let mut names: Vec<&str> = self
                .dialects
                .iter()
                .map(|d| match d {
                    Dialect::Baseten => "baseten",
                    Dialect::Bifrost => "bifrost",
                })
                .collect();
            names.sort_unstable();
            names.dedup();
            names.join(", ")
        };
        let hosts = match self.webhook_allow_hosts.len() {
            0 => "any host".to_owned(),
            _ => format!("hosts {}", self.webhook_allow_hosts.join(", ")),
        };
        let private = if self.webhook_allow_private {
            "private addresses allowed"
        } else {
            "private addresses refused"
        };
        let webhooks = format!("on: {hosts}; {private}");
        // Per format: whether its deliveries carry a signature.
        let standard = match self.webhook_secrets.len() {
            0 => "UNSIGNED (no --webhook-secret)".to_owned(),
            n => format!("signed, webhook-signature with {n} secret(s) whsec_****"),
        };
        let baseten = match (
            self.dialects.contains(&Dialect::Baseten),
            &self.baseten_webhook_secret,
        ) {
            (false, _) => "not used (no --dialect baseten)",
            (true, Some(_)) => "signed, X-BASETEN-SIGNATURE with **** (--baseten-webhook-secret)",
            (true, None) => "UNSIGNED (no --baseten-webhook-secret)",
        };
        vec![
            ("listen", self.listen.to_string()),
            ("upstream", upstream),
            ("prefix", self.prefix.clone()),
            ("store", store),
            ("concurrency", self.concurrency.to_string()),
            ("max-body", bytes(self.max_body)),
            ("max-queue", self.max_queue.to_string()),
            ("max-output", bytes(self.max_output)),
            ("result-ttl", human(self.result_ttl)),
            ("max-result-ttl", human(self.max_result_ttl)),
            ("max-time-in-queue", human(self.max_time_in_queue)),
            ("execution-timeout", human(self.execution_timeout)),
            (
                "retry",
                format!(
                    "{} attempts, {} doubling to {}",
                    self.retry_attempts,
                    human(self.retry_initial_delay),
                    human(self.retry_max_delay)
                ),
            ),
            (
                "priority-aging",
                self.priority_aging.0.map_or("off".into(), human),
            ),
            ("max-wait", human(self.max_wait)),
            ("lease", human(self.lease)),
            ("header-read-timeout", human(self.header_read_timeout)),
            ("idle-timeout", human(self.idle_timeout)),
            ("max-connections", self.max_connections().1),
            ("shutdown-grace", human(self.shutdown_grace)),
            ("forward-credentials", self.forward_credentials.to_string()),
            ("dialects", dialects),
            ("predict-path", self.predict_path.clone()),
            ("model-id", self.model_id.clone()),
            ("deployment-id", self.deployment_id.clone()),
            ("webhooks", webhooks),
            ("webhooks standard", standard),
            ("webhooks baseten", baseten.to_owned()),
            (
                "public-url",
                self.public_url.clone().unwrap_or_else(|| "none".into()),
            ),
            ("tokens", tokens.describe()),
            (
                "log-format",
                format!("{:?}", self.log_format).to_lowercase(),
            ),
            (
                "access-log",
                if self.access_log { "on" } else { "off" }.to_owned(),
            ),
            (
                "wake-url",
                match &self.wake_url {
                    Some(url) => format!(
                        "{} (at most every {}, timeout {})",
                        mask_url(&url.to_string()),
                        human(self.wake_interval),
                        human(self.wake_timeout)
                    ),
                    None => "off".to_owned(),
                },
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_defaults_to_half_the_open_file_limit() {
        assert_eq!(connection_cap(None, Some(1024)).0, 512);
        assert_eq!(connection_cap(None, Some(1_048_576)).0, 10_000);
        assert_eq!(connection_cap(None, None).0, 10_000);
        assert_eq!(connection_cap(None, Some(1)).0, 1);
        assert_eq!(connection_cap(Some(300), Some(1024)), (300, "300".into()));
        let (n, said) = connection_cap(Some(600), Some(1024));
        assert_eq!(n, 600);
        assert!(
            said.contains("above half the open-file limit 1024"),
            "{said}"
        );
    }

    #[test]
    fn a_redis_password_flag_goes_into_the_url_percent_encoded() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["tower-defer", "--store", "rediss://app@redis:6380/0"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap()
        };
        assert_eq!(
            args(&["--redis-password", "p@ss:w/rd%"]).redis_urls(),
            Ok(Some(vec![
                "rediss://app:p%40ss%3Aw%2Frd%25@redis:6380/0".to_owned()
            ]))
        );
        assert_eq!(
            args(&[]).redis_urls(),
            Ok(Some(vec!["rediss://app@redis:6380/0".to_owned()]))
        );
    }

    #[test]
    fn a_cluster_takes_several_urls_each_with_the_password() {
        let args = |argv: &[&str]| Args::try_parse_from([&["tower-defer"], argv].concat()).unwrap();
        let two = "redis://a:6379,redis://b:6379";
        assert_eq!(
            args(&[
                "--store",
                two,
                "--redis-cluster",
                "--redis-password",
                "p@ss"
            ])
            .redis_urls(),
            Ok(Some(vec![
                "redis://:p%40ss@a:6379".to_owned(),
                "redis://:p%40ss@b:6379".to_owned()
            ]))
        );
        assert_eq!(
            args(&["--store", two]).redis_urls(),
            Err(
                "--store: 2 URLs are the nodes of a Redis Cluster; say so with --redis-cluster"
                    .to_owned()
            )
        );
        for (flag, message) in [
            (
                &["--redis-cluster"][..],
                "--redis-cluster: the store is memory",
            ),
            (
                &["--redis-shards", "3"],
                "--redis-shards 3: the store is memory",
            ),
            (
                &["--redis-durability", "replicated"],
                "--redis-durability replicated: the store is memory",
            ),
        ] {
            assert_eq!(args(flag).redis_urls(), Err(message.to_owned()), "{flag:?}");
        }
    }
}
