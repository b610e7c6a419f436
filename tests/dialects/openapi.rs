//! The OpenAPI document describes every route the layer answers, and only those.

use std::io;

use http::{Method, Request};
use serde_json::{json, Value};
use tower::Layer;
use tower_defer::{Baseten, Body, DeferLayer, MemoryStore};
use tower_defer_testkit::inproc::*;

fn app() -> App<impl tower_defer::InnerService> {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        let mut r = json_response(200, json!({}));
        r.headers_mut().insert("x-inner", "1".parse().unwrap());
        Ok::<_, io::Error>(r)
    });
    DeferLayer::new(MemoryStore::new())
        .prefix("/jobs")
        .bifrost()
        .baseten(Baseten::new())
        .layer(inner)
}

/// Does `template` (`/a/{x}/b`) match `path`? Parameters match one segment.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

fn operations(spec: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if let Ok(m) = method.to_uppercase().parse::<Method>() {
                if m != Method::OPTIONS && method != "parameters" {
                    out.push((m, path.clone()));
                }
            }
        }
    }
    out
}

async fn answered_by_layer<S: tower_defer::InnerService>(
    app: &App<S>,
    method: Method,
    path: &str,
) -> Answer {
    let body = if method == Method::POST {
        r#"{"data": 1, "model_input": 1}"#
    } else {
        ""
    };
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .body(Body::from(body))
        .unwrap();
    let a = call(app, req).await;
    assert!(
        !a.headers.contains_key("x-inner"),
        "{method} {path} reached the inner service"
    );
    a
}

#[tokio::test]
async fn every_route_the_layer_answers_is_in_the_document_and_back() {
    let app = app();
    let spec = call(&app, get("/jobs/openapi.json")).await;
    assert_eq!(spec.status, 200);
    let spec = spec.json();
    assert_eq!(spec["openapi"], "3.1.0");
    let ops = operations(&spec);
    let id = "0123456789abcdef";

    // Routes the layer answers (the code's side of the table).
    let answered = [
        (Method::POST, "/jobs".to_owned()),
        (Method::GET, "/jobs/queue".to_owned()),
        (Method::GET, "/jobs/activity".to_owned()),
        (Method::GET, "/jobs/recent".to_owned()),
        (Method::GET, "/jobs/ui".to_owned()),
        (Method::GET, "/jobs/openapi.json".to_owned()),
        (Method::GET, format!("/jobs/{id}")),
        (Method::DELETE, format!("/jobs/{id}")),
        (Method::GET, format!("/jobs/{id}/output")),
        (Method::GET, format!("/jobs/{id}/result")),
        (Method::POST, "/async_predict".to_owned()),
        (Method::POST, "/production/async_predict".to_owned()),
        (Method::POST, "/development/async_predict".to_owned()),
        (
            Method::POST,
            "/environments/staging/async_predict".to_owned(),
        ),
        (Method::POST, "/deployment/d1/async_predict".to_owned()),
        (Method::GET, "/async_queue_status".to_owned()),
        (Method::GET, "/production/async_queue_status".to_owned()),
        (Method::GET, "/development/async_queue_status".to_owned()),
        (
            Method::GET,
            "/environments/staging/async_queue_status".to_owned(),
        ),
        (Method::GET, "/deployment/d1/async_queue_status".to_owned()),
        (Method::GET, format!("/async_request/{id}")),
        (Method::DELETE, format!("/async_request/{id}")),
        (Method::POST, "/v1/async/completions".to_owned()),
        (Method::POST, "/v1/async/embeddings".to_owned()),
        (Method::POST, "/v1/async/chat/completions".to_owned()),
        (Method::POST, "/v1/async/audio/speech".to_owned()),
        (Method::POST, "/v1/async/audio/transcriptions".to_owned()),
        (Method::GET, format!("/v1/async/completions/{id}")),
        (Method::GET, format!("/v1/async/chat/completions/{id}")),
        (Method::GET, format!("/v1/async/audio/speech/{id}")),
        (Method::GET, format!("/v1/async/audio/transcriptions/{id}")),
    ];
    for (method, path) in &answered {
        answered_by_layer(&app, method.clone(), path).await;
        assert!(
            ops.iter().any(|(m, t)| m == method && matches(t, path)),
            "{method} {path} is answered but not in openapi.json"
        );
    }
    // The document's side: every operation is answered by the layer, by a
    // route (a 404 may say "no job", never "no route").
    for (method, template) in &ops {
        let path = template
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    if s == "{id}" || s == "{job_id}" || s == "{request_id}" {
                        id
                    } else {
                        "x"
                    }
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let a = answered_by_layer(&app, method.clone(), &path).await;
        if a.status == 404 {
            let detail = a.json()["detail"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| a.json()["error"]["message"].as_str().map(str::to_owned));
            assert!(
                !detail.clone().unwrap_or_default().starts_with("no route"),
                "{method} {path}: {detail:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_document_follows_the_configuration() {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, io::Error>(json_response(200, json!({})))
    });
    let plain = DeferLayer::new(MemoryStore::new()).layer(inner);
    let spec = call(&plain, get("/async/openapi.json")).await.json();
    let paths: Vec<_> = spec["paths"].as_object().unwrap().keys().cloned().collect();
    assert!(
        paths
            .iter()
            .all(|p| p == "/async" || p.starts_with("/async/")),
        "{paths:?}"
    );
    assert!(paths.contains(&"/async/{id}/output".to_owned()));
}
