//! Policy: how answers are classified, how long to back off, which headers
//! travel. Plain data and pure functions, tested without I/O.

use std::error::Error as StdError;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::job::RetryPolicy;
use crate::time::Timestamp;

/// What a worker does with an inner call's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Record it: the job ends.
    Final,
    /// The upstream is unavailable (scaled to zero, restarting: no connection
    /// could be made, or it asked to wait): back to the queue, no attempt
    /// spent, after `delay`.
    Unavailable { delay: Duration },
    /// A retryable failure: spend an attempt and retry after `delay`.
    RetryAttempt { delay: Duration },
}

/// Caps every delay an upstream asks for with `Retry-After`.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The first and the longest wait while an upstream is unavailable.
pub(crate) const UNAVAILABLE_BASE: Duration = Duration::from_millis(250);
pub(crate) const UNAVAILABLE_CAP: Duration = Duration::from_secs(10);

/// Classifies an inner response.
///
/// `attempts` is the number of attempts spent, this one included; `now`
/// is when the answer came, which a `Retry-After` date is counted from.
pub(crate) fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    retry: &RetryPolicy,
    attempts: u32,
    now: Timestamp,
) -> Verdict {
    if matches!(status.as_u16(), 429 | 503) {
        if let Some(delay) = retry_after(headers, now) {
            return Verdict::Unavailable {
                delay: delay.min(MAX_RETRY_AFTER),
            };
        }
    }
    if matches!(status.as_u16(), 500 | 502 | 503 | 504) {
        return retry_attempt(retry, attempts);
    }
    Verdict::Final
}

/// Classifies an error from the inner service (no response at all).
/// `unavailable` is how often the job already found the upstream unavailable,
/// `jitter` a number in `[0, 1)`.
pub(crate) fn classify_error(
    error: &(dyn StdError + 'static),
    retry: &RetryPolicy,
    attempts: u32,
    unavailable: u32,
    jitter: f64,
) -> Verdict {
    if is_unavailable(error) {
        Verdict::Unavailable {
            delay: unavailable_backoff(unavailable, jitter),
        }
    } else {
        retry_attempt(retry, attempts)
    }
}

fn retry_attempt(retry: &RetryPolicy, attempts: u32) -> Verdict {
    if attempts >= retry.max_attempts {
        Verdict::Final
    } else {
        Verdict::RetryAttempt {
            delay: attempt_backoff(retry, attempts),
        }
    }
}

/// The delay after the `attempts`-th spent attempt: `initial_delay` doubling,
/// capped at `max_delay`.
pub(crate) fn attempt_backoff(retry: &RetryPolicy, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    retry
        .initial_delay
        .saturating_mul(1u32 << doublings)
        .min(retry.max_delay)
}

/// Capped exponential backoff with full jitter in its upper half, for an
/// upstream that is not there: many jobs waiting for one upstream to come back
/// must not all knock at the same instant.
pub(crate) fn unavailable_backoff(previous: u32, jitter: f64) -> Duration {
    let ceiling = UNAVAILABLE_BASE
        .saturating_mul(1u32 << previous.min(16))
        .min(UNAVAILABLE_CAP);
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// `Retry-After` in either of its forms (RFC 9110, 10.2.3): delta-seconds
/// (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`), which is read
/// as the time from `now` until then (zero once it has passed). `now` comes
/// from [`Timestamp::now`], so a paused test clock governs both forms alike.
pub(crate) fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let millis = date.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    let millis = u64::try_from(millis).unwrap_or(u64::MAX);
    Some(Duration::from_millis(
        millis.saturating_sub(now.as_millis()),
    ))
}

/// Whether an error means the connection was never made: refused, or, for
/// [`Upstream`](crate::upstream::Upstream), any error hyper-util's client
/// calls a connect error (refused, a connect timeout, a name that did not
/// resolve) except a TLS handshake the upstream failed. The request was
/// never sent, so the model cannot have run it and no attempt is spent.
///
/// Anything after the connection was made is not this: a connection reset,
/// aborted or closed after the request went out (the model may have run
/// it), or a certificate the client does not trust (a setting to fix, not a
/// wait). Walks the source chain, so it sees the `io::Error` under a hyper
/// or hyper-util client error.
pub(crate) fn is_unavailable(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        #[cfg(any(feature = "proxy", feature = "webhooks"))]
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            // The client knows whether it got as far as sending: trust it
            // over whatever io error lies below.
            return client.is_connect() && !is_tls_failure(client);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Whether a TLS handshake failed somewhere in `error`'s chain. rustls
/// reports one as an `io::Error` holding a `rustls::Error`, which
/// hyper-rustls wraps in another `io::Error`; an `io::Error`'s `source`
/// skips what it holds, so this looks inside each one.
#[cfg(any(feature = "proxy", feature = "webhooks"))]
fn is_tls_failure(error: &(dyn StdError + 'static)) -> bool {
    #[cfg(feature = "tls")]
    {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<rustls::Error>() {
                return true;
            }
            next = match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => e.source(),
            };
        }
    }
    let _ = error;
    false
}

/// Whether a content type says JSON: `application/json` or any `+json` suffix.
pub(crate) fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().as_bytes();
    // Compared without folding into a new string: this runs on every submission.
    let starts = |prefix: &str| {
        essence.len() >= prefix.len()
            && essence[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    let ends = |suffix: &str| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    essence.eq_ignore_ascii_case(b"application/json") || (starts("application/") && ends("+json"))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `content-length`, which the layer recomputes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_connection_header(name) || name == header::CONTENT_LENGTH
}

fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name == header::COOKIE || name == header::PROXY_AUTHORIZATION
}

/// The headers of a request as the job keeps them: everything the client sent
/// except hop-by-hop headers, those named by `Connection`, `content-length`,
/// `host`, `prefer`, the layer's own `defer-*` options and, unless
/// `forward_credentials`, `authorization`, `cookie` and `proxy-authorization`.
pub(crate) fn request_headers_to_store(
    headers: &HeaderMap,
    forward_credentials: bool,
) -> HeaderMap {
    let named_by_connection = connection_named(headers);
    let stored = |name: &HeaderName| is_stored(name, &named_by_connection, forward_credentials);
    // Sized to what is kept, not to what came: a map with room to spare
    // would be copied again by `Job::new`, which keeps a job's headers at
    // their exact size.
    let mut out = HeaderMap::with_capacity(headers.iter().filter(|(n, _)| stored(n)).count());
    for (name, value) in headers {
        if stored(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// [`request_headers_to_store`] in place, for headers the job already owns
/// (an envelope's): nothing is copied when nothing is dropped.
pub(crate) fn retain_request_headers_to_store(headers: &mut HeaderMap, forward_credentials: bool) {
    let named_by_connection = connection_named(headers);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !is_stored(name, &named_by_connection, forward_credentials))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

fn is_stored(
    name: &HeaderName,
    named_by_connection: &[HeaderName],
    forward_credentials: bool,
) -> bool {
    !(is_hop_by_hop(name)
        || name == header::HOST
        || name.as_str() == "prefer"
        || name.as_str().starts_with("defer-")
        || named_by_connection.contains(name)
        || (!forward_credentials && is_credential(name)))
}

/// The headers of an inner response as the job keeps them, less hop-by-hop ones.
pub(crate) fn response_headers_to_store(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection = connection_named(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_hop_by_hop(name) && !named_by_connection.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Removes the headers that describe the client's connection to us (RFC 9110
/// §7.6.1), before a proxy forwards a request on a connection of its own.
/// `content-length` stays: it describes the message.
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
pub(crate) fn strip_connection_headers(headers: &mut HeaderMap) {
    // Most requests carry none of these: one pass over the names finds out,
    // where removing each name would hash and probe seven times.
    if !headers.keys().any(is_connection_header) {
        return;
    }
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The hop-by-hop headers RFC 9110 §7.6.1 names, besides those `Connection` lists.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_connection_header(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn backoff_doubles_from_initial_to_max() {
        let p = RetryPolicy::default();
        let delays: Vec<_> = (1..=5)
            .map(|a| attempt_backoff(&p, a).as_millis())
            .collect();
        assert_eq!(delays, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(attempt_backoff(&p, u32::MAX), Duration::from_millis(5000));
    }

    #[test]
    fn unavailable_backoff_is_capped_and_jittered() {
        assert_eq!(unavailable_backoff(0, 0.0), Duration::from_millis(125));
        assert_eq!(unavailable_backoff(0, 1.0), Duration::from_millis(250));
        assert_eq!(unavailable_backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(unavailable_backoff(1000, 1.0), UNAVAILABLE_CAP);
        assert!(unavailable_backoff(1000, 0.3) >= UNAVAILABLE_CAP / 2);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date_from_now() {
        // Wed, 21 Oct 2026 07:28:00 GMT
        let now = Timestamp::from_millis(1_792_567_680_000);
        let at = |v: &'static str| retry_after(&headers(&[("retry-after", v)]), now);
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        // IMF-fixdate, and the two obsolete forms RFC 9110 says to accept.
        assert_eq!(
            at("Wed, 21 Oct 2026 07:30:30 GMT"),
            Some(Duration::from_secs(150))
        );
        assert_eq!(
            at("Wednesday, 21-Oct-26 07:29:00 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(at("Wed Oct 21 07:28:09 2026"), Some(Duration::from_secs(9)));
        // A date already passed: retry now.
        assert_eq!(at("Wed, 21 Oct 2026 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("soon"), None);
        assert_eq!(at("-5"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);

        // And the classification honours the date form.
        let p = RetryPolicy::default();
        let dated = headers(&[("retry-after", "Wed, 21 Oct 2026 07:28:45 GMT")]);
        assert_eq!(
            classify_response(StatusCode::SERVICE_UNAVAILABLE, &dated, &p, 1, now),
            Verdict::Unavailable {
                delay: Duration::from_secs(45)
            }
        );
    }

    #[test]
    fn classifies_answers_per_the_worker_rules() {
        let p = RetryPolicy::default();
        let none = HeaderMap::new();
        let after = headers(&[("retry-after", "7")]);
        let c = |s: u16, h: &HeaderMap, a| {
            classify_response(StatusCode::from_u16(s).unwrap(), h, &p, a, Timestamp::now())
        };
        assert_eq!(c(200, &none, 1), Verdict::Final);
        assert_eq!(c(400, &none, 1), Verdict::Final);
        assert_eq!(c(429, &none, 1), Verdict::Final);
        assert_eq!(
            c(429, &after, 1),
            Verdict::Unavailable {
                delay: Duration::from_secs(7)
            }
        );
        assert_eq!(
            c(503, &after, 3),
            Verdict::Unavailable {
                delay: Duration::from_secs(7)
            }
        );
        assert_eq!(
            c(503, &none, 1),
            Verdict::RetryAttempt {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            c(500, &none, 2),
            Verdict::RetryAttempt {
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(c(502, &none, 3), Verdict::Final, "attempts spent");
        assert_eq!(c(501, &none, 1), Verdict::Final);
        let huge = headers(&[("retry-after", "99999999")]);
        assert_eq!(
            c(503, &huge, 1),
            Verdict::Unavailable {
                delay: MAX_RETRY_AFTER
            }
        );
    }

    #[test]
    fn refused_connections_are_unavailable_through_the_source_chain() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_unavailable(&refused));
        // Cut after the request went out: the model may have run it.
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::NotConnected,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::InvalidData,
        ] {
            assert!(!is_unavailable(&Wrapper(kind.into())), "{kind:?}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_failure_is_found_inside_the_io_errors_that_wrap_it() {
        use std::io::{Error, ErrorKind};
        let handshake = Error::new(ErrorKind::InvalidData, rustls::Error::General("bad".into()));
        assert!(is_tls_failure(&Error::other(handshake)));
        assert!(!is_tls_failure(&Error::from(ErrorKind::ConnectionRefused)));
    }

    #[test]
    fn stored_request_headers_drop_hop_by_hop_and_credentials() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("host", "example"),
            ("prefer", "respond-async"),
            ("content-length", "3"),
            ("x-keep", "1"),
            ("x-keep", "2"),
        ]);
        let kept = request_headers_to_store(&h, false);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-keep"]);
        assert_eq!(kept.get_all("x-keep").iter().count(), 2);
        let with_creds = request_headers_to_store(&h, true);
        assert!(with_creds.contains_key("authorization"));
        assert!(with_creds.contains_key("cookie"));
        // In place, the same headers are kept, in the same order.
        for forward_credentials in [false, true] {
            let mut owned = h.clone();
            retain_request_headers_to_store(&mut owned, forward_credentials);
            assert_eq!(owned, request_headers_to_store(&h, forward_credentials));
        }
    }

    #[test]
    fn forwarded_requests_lose_connection_headers_only() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-length", "3"),
            ("authorization", "Bearer t"),
        ]);
        strip_connection_headers(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "content-length"]);

        // Without a Connection header the others still go; with none of them, nothing does.
        let mut h = headers(&[("te", "trailers"), ("accept", "*/*")]);
        strip_connection_headers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        let mut h = headers(&[("accept", "*/*"), ("x-hop", "1")]);
        strip_connection_headers(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn json_content_types() {
        let j = |s: &'static str| is_json_content_type(Some(&HeaderValue::from_static(s)));
        assert!(j("application/json"));
        assert!(j("Application/JSON; charset=utf-8"));
        assert!(j("application/problem+json"));
        assert!(!j("text/plain"));
        assert!(!j("application/jsonx"));
        assert!(!is_json_content_type(None));
    }
}
