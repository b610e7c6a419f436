//! In-process helpers, shared by the test crates that include this file: the layer called directly (no sockets), so that every
//! test can run on tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_defer::{Body, Defer, InnerService, MemoryStore};

pub type App<S> = Defer<S, MemoryStore>;

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn call<S: InnerService>(app: &App<S>, req: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(req)
        .await
        .map_err(Into::into)
        .expect("the layer answered");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(Into::into)
        .expect("the body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn envelope(v: Value) -> Request<Body> {
    Request::post("/async")
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Submits an envelope and returns the new job's id.
pub async fn submit<S: InnerService>(app: &App<S>, v: Value) -> String {
    let a = call(app, envelope(v)).await;
    assert_eq!(a.status, 201, "{:?}", String::from_utf8_lossy(&a.body));
    a.json()["id"].as_str().unwrap().to_owned()
}

pub async fn status<S: InnerService>(app: &App<S>, id: &str) -> Value {
    call(app, get(&format!("/async/{id}"))).await.json()
}

/// Long-polls until the job has ended, and returns its status document.
pub async fn finished<S: InnerService>(app: &App<S>, id: &str) -> Value {
    loop {
        let req = Request::get(format!("/async/{id}"))
            .header("prefer", "wait=60")
            .body(Body::empty())
            .unwrap();
        let a = call(app, req).await;
        if a.status == 200 {
            return a.json();
        }
        assert_eq!(a.status, 202);
    }
}

pub fn json_response(status: u16, v: Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The inner calls a test's service saw, in order: (body as JSON, time).
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<(Value, tokio::time::Instant)>>>);

impl Calls {
    pub fn record(&self, body: &[u8]) -> Value {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.0
            .lock()
            .unwrap()
            .push((v.clone(), tokio::time::Instant::now()));
        v
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(v, _)| v.clone())
            .collect()
    }

    pub fn times(&self) -> Vec<tokio::time::Instant> {
        self.0.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub async fn body_bytes(req: Request<Body>) -> Bytes {
    req.into_body().collect().await.unwrap().to_bytes()
}

pub const SECOND: Duration = Duration::from_secs(1);

/// Milliseconds since the epoch of an RFC 3339 timestamp of ours
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`), for differences within a day.
pub fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    let day: i64 = s[8..10].parse().unwrap();
    let h: i64 = s[11..13].parse().unwrap();
    let m: i64 = s[14..16].parse().unwrap();
    let sec: i64 = s[17..19].parse().unwrap();
    let milli: i64 = s[20..23].parse().unwrap();
    (((day * 24 + h) * 60 + m) * 60 + sec) * 1000 + milli
}
