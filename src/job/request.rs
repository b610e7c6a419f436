//! What a job asks of the inner service, and the answer it keeps.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use super::JobOptions;

/// The request a job replays against the inner service.
///
/// Credentials and hop-by-hop headers were dropped when it was stored (see
/// [`DeferLayer::forward_credentials`](crate::DeferLayer::forward_credentials)).
#[derive(Clone, Debug)]
pub struct StoredRequest {
    /// The method.
    pub method: Method,
    /// Path and query, as the inner service will see them.
    pub path_and_query: PathAndQuery,
    /// The headers to send.
    pub headers: HeaderMap,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// The inner service's answer, kept to be replayed verbatim.
#[derive(Clone, Debug)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers, less hop-by-hop ones.
    pub headers: HeaderMap,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// A job as submitted, before a store gives it an id.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// What to send to the inner service.
    pub request: StoredRequest,
    /// Its options.
    pub options: JobOptions,
}
