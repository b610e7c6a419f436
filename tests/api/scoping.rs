//! Owners: another tenant's job is a 404 on every route. Credentials: not
//! passed to the inner service unless the layer is told to.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use serde_json::json;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

#[tokio::test]
async fn another_owner_gets_404_on_every_route() {
    let gate = Gate::new();
    let inner = {
        let gate = gate.clone();
        tower::service_fn(move |_req: Request<Body>| {
            let gate = gate.clone();
            async move {
                let _call = gate.pass().await;
                infallible(json_response(200, json!({"ok": true})))
            }
        })
    };
    let app = DeferLayer::new(MemoryStore::new())
        .owner(|p| p.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
        .layer(inner);
    let server = serve(app).await;
    let client = HttpClient::new();
    let as_tenant = |tenant: Option<&'static str>, method: Method, path: String| {
        let headers: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant", t)).into_iter().collect();
        let (client, url) = (client.clone(), server.url(&path));
        async move { client.request(method, &url, &headers, Bytes::new()).await }
    };
    let submit = client
        .request(
            Method::POST,
            &server.url("/async"),
            &[("x-tenant", "a"), ("content-type", "application/json")],
            json!({"data": 1}).to_string(),
        )
        .await;
    assert_eq!(submit.status, 201);
    let id = submit.id();
    gate.started(1).await;

    let routes = || {
        [
            (Method::GET, format!("/async/{id}")),
            (Method::GET, format!("/async/{id}/output")),
            (Method::GET, format!("/async/{id}/result")),
            (Method::DELETE, format!("/async/{id}")),
        ]
    };
    // While it runs: B and nobody see nothing, and B's cancel does nothing.
    for tenant in [Some("b"), None] {
        for (method, path) in routes() {
            as_tenant(tenant, method.clone(), path.clone())
                .await
                .assert_problem(404, "not_found", &id);
        }
    }
    let a = as_tenant(Some("a"), Method::GET, format!("/async/{id}")).await;
    assert_eq!(a.status, 202, "A sees it, still running: {a:?}");
    assert_eq!(a.json()["status"], "in_progress");

    gate.release(1);
    let finished = {
        let url = server.url(&format!("/async/{id}"));
        loop {
            let a = client
                .request(
                    Method::GET,
                    &url,
                    &[("x-tenant", "a"), ("prefer", "wait=5")],
                    Bytes::new(),
                )
                .await;
            if a.status == 200 {
                break a.json();
            }
            assert_eq!(a.status, 202, "{a:?}");
        }
    };
    assert_eq!(finished["status"], "succeeded");
    let output = as_tenant(Some("a"), Method::GET, format!("/async/{id}/output")).await;
    assert_eq!(output.status, 200);
    assert_eq!(output.json()["output"], json!({"ok": true}));
    let result = as_tenant(Some("a"), Method::GET, format!("/async/{id}/result")).await;
    assert_eq!(result.status, 200);
    assert_eq!(result.json(), json!({"ok": true}));

    // Finished: still nothing for B.
    for (method, path) in routes() {
        as_tenant(Some("b"), method.clone(), path.clone())
            .await
            .assert_problem(404, "not_found", &id);
    }
    as_tenant(Some("a"), Method::DELETE, format!("/async/{id}"))
        .await
        .assert_problem(409, "already_terminal", &id);
}

#[tokio::test]
async fn credentials_reach_the_inner_service_only_when_forwarded() {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let make = |forward: bool| {
        let seen = seen.clone();
        let inner = tower::service_fn(move |req: Request<Body>| {
            seen.lock().unwrap().push(req.headers().clone());
            async { infallible(json_response(200, json!({}))) }
        });
        DeferLayer::new(MemoryStore::new())
            .forward_credentials(forward)
            .layer(inner)
    };
    let client = HttpClient::new();
    let credentials = [
        ("authorization", "Bearer secret"),
        ("cookie", "session=1"),
        ("proxy-authorization", "Basic eDp5"),
    ];
    for forward in [false, true] {
        seen.lock().unwrap().clear();
        let server = serve(make(forward)).await;
        let mut headers = credentials.to_vec();
        headers.extend([("prefer", "respond-async"), ("x-custom", "kept")]);
        let a = client
            .request(Method::POST, &server.url("/predict"), &headers, "{}")
            .await;
        assert_eq!(a.status, 202, "{a:?}");
        let id = a.id();
        assert_eq!(
            client.finished(&server.url(&format!("/async/{id}"))).await["status"],
            "succeeded"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["x-custom"], "kept", "other headers always pass");
        for (name, value) in credentials {
            if forward {
                assert_eq!(
                    seen[0][name], value,
                    "forward_credentials(true) keeps {name}"
                );
            } else {
                assert!(
                    !seen[0].contains_key(name),
                    "{name} is not passed by default"
                );
            }
        }
        server.stop().await;
    }
}
