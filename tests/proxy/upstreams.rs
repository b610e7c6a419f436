//! Reaching the upstream: h2c, https with a private CA, and an upstream's
//! `Retry-After` date.

use super::*;

#[test]
fn h2c_to_the_upstream() {
    // The demo behind one proxy is the upstream of another, spoken to in h2c.
    let model = Proxy::start(&[]);
    let upstream = model.base();
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-http2", "--token", "t"]);
    let passed = proxy.post("/predict", Some("t"), &json!({"q": 1}));
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert_eq!(passed.json()["echo"]["q"], 1);
    let id = proxy.submit(Some("t"), json!({"q": 2}));
    assert_eq!(proxy.wait_done(Some("t"), &id)["status"], "succeeded");
    let output = proxy.get(&format!("/async/{id}/output"), Some("t")).json();
    assert_eq!(output["output"]["echo"]["q"], 2);
    assert_eq!(proxy.get("/readyz", None).json()["upstream"], "reachable");
    assert!(proxy.stdout().contains("h2c"), "{}", proxy.stdout());
}

#[cfg(feature = "tls")]
#[test]
fn an_https_upstream_is_trusted_through_upstream_ca_and_refused_without_it() {
    let upstream = support::HttpsUpstream::start();
    let url = format!("https://localhost:{}", upstream.port);
    let ca = upstream.ca.to_str().unwrap();
    let proxy = Proxy::start(&["--upstream", &url, "--upstream-ca", ca, "--token", "t"]);
    let passed = proxy.post("/predict", Some("t"), &json!({}));
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert_eq!(passed.json(), json!({"tls": true, "path": "/predict"}));
    let id = proxy.submit(Some("t"), json!({"q": 1}));
    assert_eq!(proxy.wait_done(Some("t"), &id)["status"], "succeeded");
    let output = proxy.get(&format!("/async/{id}/output"), Some("t")).json();
    assert_eq!(output["output"], json!({"tls": true, "path": "/"}));
    let report = proxy.stdout();
    assert!(report.contains(&format!("also trusting {ca}")), "{report}");

    // Without the CA the certificate is not trusted: the job fails and says why.
    let distrusting = Proxy::start(&["--upstream", &url, "--retry-attempts", "1"]);
    let id = distrusting.submit(None, json!({"q": 2}));
    let doc = distrusting.wait_done(None, &id);
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["error"]["code"], "upstream_error", "{doc}");
    assert_eq!(
        doc["error"]["message"], "client error (Connect): invalid peer certificate: UnknownIssuer",
        "{doc}"
    );
}

#[test]
fn an_upstreams_retry_after_date_is_waited_out_without_spending_an_attempt() {
    // A 503 asking to come back at a date 2 s ahead (HTTP-dates count whole
    // seconds: the wait is between 1 and 2 s). With one attempt allowed, a
    // 503 whose Retry-After went unread would end the job failed.
    let at = std::time::SystemTime::now() + Duration::from_secs(2);
    let upstream = support::ScriptedUpstream::start(vec![(
        503,
        vec![("retry-after".into(), httpdate::fmt_http_date(at))],
    )]);
    let proxy = Proxy::start(&["--upstream", &upstream.url(), "--retry-attempts", "1"]);
    let id = proxy.submit(None, json!({"q": 1}));
    let doc = proxy.wait_done(None, &id);
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["attempts"], 1, "{doc}");
    let times = upstream.times();
    assert_eq!(times.len(), 2);
    let gap = times[1] - times[0];
    assert!(gap >= Duration::from_millis(900), "{gap:?}");
}
