//! Thin wrappers over the request parsers, for the fuzz targets in `fuzz/`
//! only: compiled with the `fuzzing` feature and re-exported, hidden, as
//! `tower_defer::__fuzz`. Not an API: it changes whenever the parsers do.
//!
//! The wrappers answer in plain types so that no API type becomes public.

use http::{HeaderMap, HeaderValue, Method};

use super::{bifrost, native, Prefer, PREFER};
use crate::job::{JobId, JobOptions, NewJob};

/// A refused parse: the problem's status code and stable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status of the problem (400 for every parse error).
    pub status: u16,
    /// The problem's stable `code`.
    pub code: &'static str,
}

/// The native envelope parser (`POST {prefix}`), with default job options and
/// the layer's default cap on the result TTL (7 days).
pub fn parse_envelope(body: &[u8]) -> Result<NewJob, Refused> {
    native::parse_envelope(
        body,
        JobOptions::default(),
        &crate::context::DoorConfig::default(),
    )
    .map_err(|p| Refused {
        status: p.status.as_u16(),
        code: p.code,
    })
}

/// What a route matcher decided, flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matched {
    /// The path is not under the dialect's mount: the request passes on.
    Elsewhere,
    /// A route that takes no job id (submit, queue, ...).
    Route,
    /// A route about the job `id` (Bifrost: of the route `route`).
    Job {
        /// The job id from the path.
        id: JobId,
        /// Bifrost's inner route, if any.
        route: Option<String>,
    },
    /// A Bifrost submission to `route`.
    Submit {
        /// The inner route.
        route: String,
    },
    /// Under the mount, but not a route (404 or 405).
    Refused,
}

/// The native route matcher, for the path of a request under `prefix`.
pub fn native_endpoint(prefix: &str, method: &Method, path: &str) -> Matched {
    use native::Endpoint as E;
    match native::endpoint(prefix, method, path) {
        None => Matched::Elsewhere,
        Some(E::Status(id) | E::Cancel(id) | E::Output(id) | E::Result(id)) => {
            Matched::Job { id, route: None }
        }
        Some(E::NotFound(_) | E::MethodNotAllowed(_)) => Matched::Refused,
        Some(_) => Matched::Route,
    }
}

/// The Bifrost route matcher (`/v1/async/...`).
pub fn bifrost_endpoint(method: &Method, path: &str) -> Matched {
    use bifrost::Endpoint as E;
    match bifrost::endpoint(method, path) {
        None => Matched::Elsewhere,
        Some(E::Submit { route }) => Matched::Submit { route },
        Some(E::Get { route, id: Ok(id) }) => Matched::Job {
            id,
            route: Some(route),
        },
        Some(_) => Matched::Refused,
    }
}

/// The `Prefer` header parser, over header values as sent (values that are
/// not valid header values are dropped, as `http` would refuse them).
/// Returns `(respond_async, wait)`.
pub fn prefer<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> (bool, Option<u64>) {
    let mut headers = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(PREFER, v);
        }
    }
    let p = Prefer::from_headers(&headers);
    (p.respond_async, p.wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrappers_reach_the_parsers() {
        let job = parse_envelope(br#"{"data": {"q": 1}, "priority": 0}"#).unwrap();
        assert_eq!(job.options.priority.level(), 0);
        assert_eq!(
            parse_envelope(b"[]").unwrap_err(),
            Refused {
                status: 400,
                code: "invalid_envelope"
            }
        );
        let id: JobId = "0123456789abcdef".parse().unwrap();
        assert_eq!(
            native_endpoint("/async", &Method::GET, "/async/0123456789abcdef/output"),
            Matched::Job { id, route: None }
        );
        assert_eq!(
            native_endpoint("/async", &Method::GET, "/asyncx"),
            Matched::Elsewhere
        );
        assert_eq!(
            bifrost_endpoint(&Method::GET, "/v1/async/chat/0123456789abcdef"),
            Matched::Job {
                id,
                route: Some("chat".into())
            }
        );
        assert_eq!(
            bifrost_endpoint(&Method::POST, "/v1/async/a/../b"),
            Matched::Refused
        );
        assert_eq!(
            prefer([&b"respond-async, wait=5"[..], b"wait=9"]),
            (true, Some(5))
        );
    }
}
