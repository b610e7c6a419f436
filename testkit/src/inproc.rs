//! The layer called in process: no sockets, so that a test can run on
//! tokio's paused clock. [`Answer`] is also what the socket tests' clients
//! read a response into, so every test checks an answer the same way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_defer::{Body, Defer, InnerService, MemoryStore, Store};

pub type App<S> = Defer<S, MemoryStore>;

/// A whole response: status, headers and the collected body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {:?}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {self:?}"))
            .to_str()
            .unwrap()
    }

    /// The `id` of a submission's answer, checked to be a VESSL-valid id.
    pub fn id(&self) -> String {
        let id = self.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {self:?}"))
            .to_owned();
        assert_valid_id(&id);
        id
    }

    /// The problem document's `code` and `detail`, after checking it is one
    /// whose `status` is the answer's.
    pub fn problem(&self) -> (String, String) {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        let doc = self.json();
        assert_eq!(doc["status"], self.status.as_u16(), "{self:?}");
        assert!(doc["title"].is_string() && doc["type"].is_string(), "{doc}");
        (
            doc["code"].as_str().unwrap().to_owned(),
            doc["detail"].as_str().unwrap().to_owned(),
        )
    }

    /// Asserts a problem answer: exact status, exact code, and a detail that
    /// names `names`.
    pub fn assert_problem(&self, status: u16, code: &str, names: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(!self.status.is_server_error());
        let (c, detail) = self.problem();
        assert_eq!(c, code, "{self:?}");
        assert!(
            detail.contains(names),
            "the detail {detail:?} does not name {names:?}"
        );
    }
}

/// VESSL's rule for ids: 1 to 16 lowercase alphanumerics.
pub fn assert_valid_id(id: &str) {
    assert!((1..=16).contains(&id.len()), "{id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{id:?}"
    );
}

/// Calls the layer (on any store) and collects its whole answer.
pub async fn call<S: InnerService, St: Store>(app: &Defer<S, St>, req: Request<Body>) -> Answer {
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

/// `POST /async` with this envelope.
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
pub async fn submit<S: InnerService, St: Store>(app: &Defer<S, St>, v: Value) -> String {
    let a = call(app, envelope(v)).await;
    assert_eq!(a.status, 201, "{:?}", String::from_utf8_lossy(&a.body));
    a.json()["id"].as_str().unwrap().to_owned()
}

pub async fn status<S: InnerService, St: Store>(app: &Defer<S, St>, id: &str) -> Value {
    call(app, get(&format!("/async/{id}"))).await.json()
}

/// Long-polls until the job has ended, and returns its status document. For
/// the paused clock, where a long poll costs no time.
pub async fn finished<S: InnerService, St: Store>(app: &Defer<S, St>, id: &str) -> Value {
    finished_with(app, id, &[]).await
}

/// [`finished`], with `headers` on each poll (a tenant's, say).
pub async fn finished_with<S: InnerService, St: Store>(
    app: &Defer<S, St>,
    id: &str,
    headers: &[(&str, &str)],
) -> Value {
    loop {
        let mut req = Request::get(format!("/async/{id}")).header("prefer", "wait=60");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let a = call(app, req.body(Body::empty()).unwrap()).await;
        if a.status == 200 {
            return a.json();
        }
        assert_eq!(a.status, 202, "{:?}", String::from_utf8_lossy(&a.body));
    }
}

/// [`finished`] on a running clock: short polls, and a failure once `within`
/// has passed (a bound against hanging, not a measure of speed).
pub async fn finished_within<S: InnerService, St: Store>(
    app: &Defer<S, St>,
    id: &str,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not finish within {within:?}"
        );
        let req = Request::get(format!("/async/{id}"))
            .header("prefer", "wait=5")
            .body(Body::empty())
            .unwrap();
        let a = call(app, req).await;
        if a.status == 200 {
            return a.json();
        }
        assert_eq!(a.status, 202, "{:?}", String::from_utf8_lossy(&a.body));
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
