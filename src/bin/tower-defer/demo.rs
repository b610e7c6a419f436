//! The built-in demo model, served when no `--upstream` is given, so the
//! proxy runs on a fresh machine with nothing else installed.
//!
//! Any `POST` with a JSON body (Baseten's `/predict`, VESSL's
//! `/predictions/my-model`, Bifrost's `/v1/completions`, ...) answers
//! `{"echo": <input>, "model": "demo"}` after 500 ms of "inference". Two
//! optional input fields steer it, for demonstrations and tests:
//! `"demo_delay_ms"` (up to 60 000) and `"demo_status"` (the status code to
//! answer with). `GET /health` answers `ok`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower_defer::Body;

const DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY_MS: u64 = 60_000;

pub(crate) async fn model(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/health") => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
        ("POST", _) => {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let Ok(input) = serde_json::from_slice::<Value>(&bytes) else {
                return Ok(answer(
                    StatusCode::BAD_REQUEST,
                    json!({"message": "the body must be JSON"}),
                ));
            };
            let delay = input
                .get("demo_delay_ms")
                .and_then(Value::as_u64)
                .map_or(DELAY, |ms| Duration::from_millis(ms.min(MAX_DELAY_MS)));
            let status = input
                .get("demo_status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            tokio::time::sleep(delay).await;
            Ok(answer(status, json!({"echo": input, "model": "demo"})))
        }
        _ => Ok(answer(
            StatusCode::NOT_FOUND,
            json!({"message": "the demo model answers POST with a JSON body, and GET /health"}),
        )),
    }
}

fn answer(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
