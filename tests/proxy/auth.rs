//! Client tokens: owners kept apart, a tokens file, serving openly, and the
//! proxy's token stopping at the proxy.

use super::*;

#[test]
fn tokens_are_required_and_owners_are_kept_apart() {
    let proxy = Proxy::start(&["--token", "alice-secret-1", "--token", "bob-secret-2"]);

    // No token, a wrong one, an unknown scheme: 401 with a problem document.
    let none = proxy.post("/async", None, &json!({"data": {}}));
    assert_eq!(none.status, 401);
    assert_eq!(problem_code(&none), "unauthorized");
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    let wrong = proxy.post("/async", Some("alice-secret-2"), &json!({"data": {}}));
    assert_eq!(wrong.status, 401);
    let basic = vec![("authorization".into(), "Basic YWxpY2U6c2VjcmV0".into())];
    assert_eq!(proxy.call("GET", "/async/queue", &basic, None).status, 401);
    // Pass-through routes are behind the token too.
    assert_eq!(proxy.get("/health", None).status, 401);
    assert_eq!(proxy.get("/health", Some("bob-secret-2")).text(), "ok");

    // Bearer and Api-Key both work.
    let alice = proxy.submit(Some("alice-secret-1"), json!({"n": 1}));
    let mut headers = api_key("bob-secret-2");
    headers.push(("content-type".into(), "application/json".into()));
    let bob = proxy.call(
        "POST",
        "/async",
        &headers,
        Some(json!({"data": {"n": 2}}).to_string().as_bytes()),
    );
    assert_eq!(bob.status, 201, "{}", bob.text());
    let bob = bob.json()["id"].as_str().unwrap().to_owned();

    // Each sees its own job, and not the other's: 404, as for no job at all.
    assert_eq!(
        proxy.wait_done(Some("alice-secret-1"), &alice)["status"],
        "succeeded"
    );
    let theirs = proxy.get(&format!("/async/{bob}"), Some("alice-secret-1"));
    assert_eq!(theirs.status, 404);
    assert_eq!(problem_code(&theirs), "not_found");
    let output = proxy.call(
        "GET",
        &format!("/async/{alice}/output"),
        &api_key("bob-secret-2"),
        None,
    );
    assert_eq!(output.status, 404);
    let cancel = proxy.call(
        "DELETE",
        &format!("/async/{alice}"),
        &api_key("bob-secret-2"),
        None,
    );
    assert_eq!(cancel.status, 404);
    assert_eq!(
        proxy.wait_done(Some("bob-secret-2"), &bob)["status"],
        "succeeded"
    );

    // The operational routes and the live page need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/async/ui"] {
        assert_eq!(proxy.get(path, None).status, 200, "{path}");
    }
    // The start-up report names the identities, never the tokens.
    let report = proxy.stdout();
    assert!(report.contains("tokens"), "{report}");
    assert!(
        !report.contains("secret-1") && !report.contains("secret-2"),
        "{report}"
    );
    assert!(!proxy.stderr().contains("secret-"), "{}", proxy.stderr());
}

#[test]
fn a_tokens_file_names_owners_and_tokens_of_one_name_share_jobs() {
    let dir = std::env::temp_dir().join(format!("tower-defer-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        "# name:token, one a line\nalice:tok-alice-old\nalice:tok-alice-new\n\nbob:tok-bob\nanonymous-token\n",
    )
    .unwrap();
    let proxy = Proxy::start(&["--tokens-file", file.to_str().unwrap()]);
    let id = proxy.submit(Some("tok-alice-old"), json!({}));
    // Rotation: the new token of the same name sees the job; bob does not.
    assert_eq!(
        proxy
            .get(&format!("/async/{id}"), Some("tok-alice-new"))
            .status
            / 100,
        2
    );
    assert_eq!(
        proxy.get(&format!("/async/{id}"), Some("tok-bob")).status,
        404
    );
    assert_eq!(
        proxy
            .get(&format!("/async/{id}"), Some("anonymous-token"))
            .status,
        404
    );
    assert_eq!(proxy.get("/async/queue", Some("tok-alice")).status, 401);
    let report = proxy.stdout();
    assert!(report.contains("4 (alice, bob, token-"), "{report}");
    assert!(!report.contains("tok-"), "{report}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_tokens_it_serves_openly_and_says_so() {
    let proxy = Proxy::start(&[]);
    let id = proxy.submit(None, json!({"hello": "world"}));
    let doc = proxy.wait_done(None, &id);
    assert_eq!(doc["status"], "succeeded");
    let output = proxy.get(&format!("/async/{id}/output"), None).json();
    assert_eq!(output["output"]["echo"]["hello"], "world");
    assert!(proxy.stdout().contains("OPEN"), "{}", proxy.stdout());
    assert!(
        proxy.stderr().contains("serving openly"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn the_proxys_token_stops_at_the_proxy_unless_forwarded() {
    // An upstream that wants the same token shows what reaches it.
    let guarded = Proxy::start(&["--token", "t"]);
    let upstream = guarded.base();
    let stripping = Proxy::start(&["--upstream", &upstream, "--token", "t"]);
    assert_eq!(
        stripping.post("/predict", Some("t"), &json!({})).status,
        401
    );
    let forwarding = Proxy::start(&[
        "--upstream",
        &upstream,
        "--token",
        "t",
        "--forward-credentials",
    ]);
    assert_eq!(
        forwarding.post("/predict", Some("t"), &json!({})).status,
        200
    );
}
