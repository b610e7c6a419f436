//! The workload the benchmarks and `examples/profile.rs` share: an inner
//! service that answers at once, and the requests they send it.

use std::convert::Infallible;

use http::{Request, Response};
use tower_defer::Body;

pub const ENVELOPE: &str =
    r#"{"data": {"prompt": "How are you?", "max_tokens": 16}, "path": "/predict"}"#;
pub const INPUT: &str = r#"{"prompt": "How are you?", "max_tokens": 16}"#;

/// The inner service: answers at once.
pub async fn instant(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from(r#"{"text":"fine"}"#)))
}

/// `POST /async` with a JSON envelope.
pub fn envelope() -> Request<Body> {
    Request::post("/async")
        .header("content-type", "application/json")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .body(Body::from(ENVELOPE))
        .unwrap()
}

/// `POST /predict` with the envelope's `data` as its body.
pub fn predict() -> Request<Body> {
    Request::post("/predict")
        .header("content-type", "application/json")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .body(Body::from(INPUT))
        .unwrap()
}
