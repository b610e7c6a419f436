//! `--wake-url`: while jobs wait and the upstream refuses connections, the
//! proxy POSTs to a URL, so that an external scaler can start the model.
//!
//! A task of its own watches the pool's scaling signals (see
//! `tower_defer::scaling`). When there is a backlog without capacity (jobs
//! queued, and the pool's last call found nobody to answer) it sends
//! `POST URL` with `{"reason": "backlog_without_capacity", "backlog",
//! "backlog_per_slot", "slots"}`, at most once per `--wake-interval`, each
//! call bounded by `--wake-timeout`. Any 2xx is success; another status, an
//! error or the timeout is logged and the next interval tries again. The
//! workers never wait for it: they only set the flag this task reads.
//!
//! The store is read only while the flag is up and a call is due, so an
//! upstream that answers costs one atomic load per check.

use std::time::Duration;

use http::header::{CONTENT_TYPE, USER_AGENT};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Method, Request};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_defer::scaling::{Scaling, Signals};
use tower_defer::upstream::Upstream;
use tower_defer::{Body, Store};

/// How often the flag is checked, at most: often enough that the first call
/// follows the first refusal closely, whatever the interval.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The wake call, from the flags.
pub(crate) struct Wake {
    client: Upstream,
    target: PathAndQuery,
    url: String,
    interval: Duration,
    timeout: Duration,
}

impl Wake {
    /// `url` is absolute (`http://` or `https://`), checked by the flag parser.
    pub(crate) fn new(
        url: &Uri,
        shown: String,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        // The client is built for the origin alone, and each call names the
        // URL's own path and query, kept exactly as given.
        let origin = Uri::builder()
            .scheme(url.scheme().cloned().ok_or("no scheme")?)
            .authority(url.authority().cloned().ok_or("no host")?)
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let client = Upstream::builder(origin)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Wake {
            client,
            target: url
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            url: shown,
            interval,
            timeout,
        })
    }

    /// Watches `scaling` for ever, calling the URL as the module docs say.
    pub(crate) async fn watch<St: Store>(self, store: St, scaling: Scaling) {
        let mut check = tokio::time::interval((self.interval / 4).min(CHECK_EVERY));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Instant> = None;
        loop {
            check.tick().await;
            if !scaling.upstream_down() || last.is_some_and(|t| t.elapsed() < self.interval) {
                continue;
            }
            let stats = match tokio::time::timeout(self.timeout, store.stats()).await {
                Ok(Ok(stats)) => stats,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "wake: cannot read the queue from the store");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("wake: the store did not answer in time");
                    continue;
                }
            };
            let signals = scaling.signals(&stats);
            if !signals.backlog_without_capacity {
                continue;
            }
            last = Some(Instant::now());
            self.call(&signals).await;
        }
    }

    async fn call(&self, signals: &Signals) {
        let body = serde_json::json!({
            "reason": "backlog_without_capacity",
            "backlog": signals.backlog,
            "backlog_per_slot": signals.backlog_per_slot,
            "slots": signals.slots,
        });
        let mut request = Request::new(Body::from(body.to_string()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from(self.target.clone());
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tower-defer/", env!("CARGO_PKG_VERSION"))),
        );
        let sent = self.client.clone().oneshot(request);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(response)) if response.status().is_success() => tracing::info!(
                url = %self.url,
                backlog = signals.backlog,
                "wake: jobs wait and the upstream refuses connections; the wake URL was called"
            ),
            Ok(Ok(response)) => tracing::warn!(
                url = %self.url,
                status = response.status().as_u16(),
                "wake: the wake URL answered with an error; trying again next interval"
            ),
            Ok(Err(e)) => tracing::warn!(
                url = %self.url,
                error = %chain(&e),
                "wake: calling the wake URL failed; trying again next interval"
            ),
            Err(_) => tracing::warn!(
                url = %self.url,
                timeout = ?self.timeout,
                "wake: the wake URL did not answer in time; trying again next interval"
            ),
        }
    }
}

/// An error and its sources, `: `-joined: the client's own message alone
/// ("client error (Connect)") does not say what went wrong.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        out.push_str(": ");
        out.push_str(&source.to_string());
        next = source.source();
    }
    out
}
