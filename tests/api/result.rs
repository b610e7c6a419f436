//! `GET /async/{id}/result`: the inner response replayed verbatim, binary
//! bodies included, both ways.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

/// NUL bytes and sequences that are not UTF-8.
const BINARY: &[u8] = b"\x00\xff\xfe binary \x80\x00\xc3\x28 end\x00";

#[tokio::test]
async fn the_result_is_the_inner_response_verbatim_and_binary_safe() {
    let received: Arc<Mutex<Option<(HeaderMap, Bytes)>>> = Arc::default();
    let inner = {
        let received = received.clone();
        tower::service_fn(move |req: Request<Body>| {
            let received = received.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                *received.lock().unwrap() = Some((parts.headers, body));
                let mut r = http::Response::new(Body::full(Bytes::from_static(BINARY)));
                *r.status_mut() = http::StatusCode::CREATED;
                let h = r.headers_mut();
                h.insert("content-type", "application/octet-stream".parse().unwrap());
                h.insert("x-model-version", "7".parse().unwrap());
                h.append("x-multi", "one".parse().unwrap());
                h.append("x-multi", "two".parse().unwrap());
                infallible(r)
            }
        })
    };
    let server = serve(DeferLayer::new(MemoryStore::new()).layer(inner)).await;
    let client = HttpClient::new();
    let a = client
        .request(
            Method::POST,
            &server.url("/upload"),
            &[
                ("prefer", "respond-async"),
                ("content-type", "application/octet-stream"),
            ],
            Bytes::from_static(BINARY),
        )
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.id();
    client.finished(&server.url(&format!("/async/{id}"))).await;

    let (headers, body) = received.lock().unwrap().clone().unwrap();
    assert_eq!(&body[..], BINARY, "the inner service got the exact bytes");
    assert_eq!(headers["content-type"], "application/octet-stream");

    let a = client
        .get(&server.url(&format!("/async/{id}/result")))
        .await;
    assert_eq!(a.status, 201, "the inner status");
    assert_eq!(a.header("content-type"), "application/octet-stream");
    assert_eq!(a.header("x-model-version"), "7");
    let multi: Vec<_> = a.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"], "repeated headers, in order");
    assert_eq!(a.header("defer-job-id"), id);
    assert_eq!(&a.body[..], BINARY, "the exact bytes back");

    let output = client
        .get(&server.url(&format!("/async/{id}/output")))
        .await
        .json();
    assert_eq!(output["status"], "completed");
    assert_eq!(output["status_code"], 201);
    assert!(output.get("output").is_none(), "not JSON: {output}");
}
