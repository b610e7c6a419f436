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

/// Submits `jobs` envelopes, `{"data": n}` for n from 0, through `app` from
/// `submitters` tasks at once, as many clients would; each must answer 201.
pub async fn submit_all<A, B>(app: &A, jobs: usize, submitters: usize)
where
    A: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    A::Future: Send,
    A::Error: std::fmt::Debug,
    B: Send + 'static,
{
    use tower::ServiceExt;
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..submitters {
        let app = app.clone();
        tasks.spawn(async move {
            for n in (s..jobs).step_by(submitters) {
                let req = Request::post("/async")
                    .body(Body::from(format!(r#"{{"data": {n}}}"#)))
                    .unwrap();
                let answer = app.clone().oneshot(req).await.unwrap();
                assert_eq!(answer.status(), 201);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a submitter panicked");
    }
}

/// This process's CPU time so far, user and system, in seconds (Linux).
pub fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime and stime: the 12th and 13th fields after the command name
    // (which is in parentheses), in clock ticks (100 a second).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    ticks(11)
        .zip(ticks(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}
