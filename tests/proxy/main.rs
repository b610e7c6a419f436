//! The `tower-defer` program as an SRE meets it: the binary run as a process,
//! spoken to over TCP, one area a file: `auth.rs` (tokens and owners),
//! `operations.rs` (health, metrics, SIGTERM), `upstreams.rs` (h2c, https,
//! `Retry-After`), `flags.rs`, `clients.rs` (the vendors' Python snippets,
//! the live page in headless Chromium), `webhooks.rs`, `connections.rs`
//! (timeouts and the connection cap), `batching.rs` (`--batch`,
//! `--batch-file`), `redis_production.rs` (Redis over TLS with an ACL user,
//! its flags, and the errors that stop a start), `scaling.rs` (the
//! autoscaling signals, `--wake-url` and the KEDA files), `access_log.rs`
//! (`--access-log`), `traces.rs` (OTLP export, `OTEL_*`).
//! Here: the helpers they share.

mod access_log;
mod auth;
mod batching;
mod clients;
mod connections;
mod flags;
mod operations;
mod redis_production;
mod scaling;
mod support;
mod traces;
mod upstreams;
mod webhooks;
#[cfg(feature = "tls")]
use tower_defer_testkit::tls;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{have, Proxy, Reply};

/// The value of the sample `name` (labels included, as Prometheus writes
/// them) in a scrape; 0 when absent.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn problem_code(reply: &Reply) -> String {
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.json()["code"].as_str().unwrap().to_owned()
}

fn api_key(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Api-Key {token}"))]
}

/// The value of the start summary's line `name`.
fn summary_line(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
        .trim()
        .to_owned()
}
