//! The `tower-defer` program as an SRE meets it: the binary run as a process,
//! spoken to over TCP. Auth and owners, health and metrics, SIGTERM, h2c to
//! the upstream, the vendors' Python client snippets, and the live page in
//! headless Chromium. `redis_production.rs`: Redis over TLS with an ACL
//! user, its flags, and the errors that stop a start. `scaling.rs`: the
//! autoscaling signals, `--wake-url` and the KEDA files; `access_log.rs`:
//! `--access-log`.

mod access_log;
mod connections;
mod redis_production;
mod scaling;
mod support;
#[cfg(feature = "tls")]
use tower_defer_testkit::tls;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{have, Proxy, Reply};

/// The value of the sample `name` (labels included, as Prometheus writes
/// them) in a scrape; 0 when absent.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn problem_code(reply: &Reply) -> String {
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.json()["code"].as_str().unwrap().to_owned()
}

fn api_key(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Api-Key {token}"))]
}

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
fn the_demo_model_answers_any_json_post() {
    let proxy = Proxy::start(&[]);
    for path in ["/predict", "/predictions/my-model", "/v1/completions"] {
        let reply = proxy.post(path, None, &json!({"prompt": "hi"}));
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.json()["echo"]["prompt"], "hi", "{path}");
    }
    assert_eq!(proxy.get("/health", None).text(), "ok");
}

#[test]
fn a_metrics_scrape_counts_jobs_by_status() {
    let proxy = Proxy::start(&["--token", "t"]);
    let ids: Vec<String> = (0..3)
        .map(|n| proxy.submit(Some("t"), json!({"n": n, "demo_delay_ms": 50})))
        .chain([proxy.submit(Some("t"), json!({"demo_status": 400, "demo_delay_ms": 50}))])
        .collect();
    let statuses: Vec<Value> = ids
        .iter()
        .map(|id| proxy.wait_done(Some("t"), id)["status"].clone())
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "succeeded", "failed"]);

    let reply = proxy.get("/metrics", None);
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let scrape = reply.text();
    let expect = [
        ("tower_defer_jobs_submitted_total", 4.0),
        ("tower_defer_jobs_finished_total{status=\"succeeded\"}", 3.0),
        ("tower_defer_jobs_finished_total{status=\"failed\"}", 1.0),
        (
            "tower_defer_inner_responses_total{status_code=\"200\"}",
            3.0,
        ),
        (
            "tower_defer_inner_responses_total{status_code=\"400\"}",
            1.0,
        ),
        ("tower_defer_execution_seconds_count", 4.0),
        ("tower_defer_queue_wait_seconds_count", 4.0),
        ("tower_defer_queue_depth{priority=\"1\"}", 0.0),
        ("tower_defer_in_progress", 0.0),
        ("tower_defer_in_flight", 0.0),
        ("tower_defer_store_up", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&scrape, name), value, "{name} in\n{scrape}");
    }
    assert!(scrape.contains("tower_defer_execution_seconds_bucket{le=\"0.05\"}"));
    assert!(
        scrape.contains("# TYPE tower_defer_queue_depth gauge"),
        "{scrape}"
    );
}

#[test]
fn readiness_reports_the_upstream_but_does_not_require_it() {
    let closed = support::free_port();
    let upstream = format!("http://127.0.0.1:{closed}");
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-connect-timeout", "1s"]);
    assert_eq!(proxy.get("/healthz", None).status, 200);
    let ready = proxy.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    let doc = ready.json();
    assert_eq!(doc["store"], "reachable");
    assert!(
        doc["upstream"]
            .as_str()
            .unwrap()
            .starts_with("unreachable (not required)"),
        "{doc}"
    );
}

#[cfg(feature = "redis")]
#[test]
fn readiness_follows_the_redis_store() {
    let mut redis = tower_defer_testkit::redis_or_skip!(false);
    let proxy = Proxy::start(&["--store", &redis.url()]);
    let ready = proxy.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["store"], "reachable");

    redis.kill();
    let ready = proxy.get("/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.text());
    let doc = ready.json();
    assert_eq!(doc["status"], "not ready");
    assert!(
        doc["store"].as_str().unwrap().starts_with("unreachable"),
        "{doc}"
    );
    // Alive all the same, and the scrape says the store is down.
    assert_eq!(proxy.get("/healthz", None).status, 200);
    let scrape = proxy.get("/metrics", None).text();
    assert_eq!(sample(&scrape, "tower_defer_store_up"), 0.0, "{scrape}");
}

#[test]
fn sigterm_lets_the_job_in_flight_finish_and_exits_0() {
    let mut proxy = Proxy::start(&["--token", "t", "--shutdown-grace", "10s"]);
    let id = proxy.submit(Some("t"), json!({"demo_delay_ms": 1500}));
    proxy.wait_status(Some("t"), &id, "in_progress");
    // A long-poll open across the signal: an in-flight connection.
    let addr = proxy.addr;
    let path = format!("/async/{id}");
    let poll = std::thread::spawn(move || {
        let headers = vec![
            ("authorization".to_owned(), "Bearer t".to_owned()),
            ("prefer".to_owned(), "wait=20".to_owned()),
        ];
        support::request(addr, "GET", &path, &headers, None)
    });
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    proxy.terminate();
    let status = proxy.wait(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}\n{}", proxy.stderr());
    let reply = poll.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "succeeded");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
    assert!(proxy.stderr().contains("SIGTERM"), "{}", proxy.stderr());
}

#[cfg(feature = "redis")]
#[test]
fn sigterm_leaves_queued_jobs_in_the_redis_store() {
    use tower_defer::{JobId, JobStatus, RedisStore, Store};

    let redis = tower_defer_testkit::redis_or_skip!(false);
    let url = redis.url();
    let mut proxy = Proxy::start(&["--store", &url, "--concurrency", "1"]);
    let running = proxy.submit(None, json!({"demo_delay_ms": 1500}));
    proxy.wait_status(None, &running, "in_progress");
    let queued = proxy.submit(None, json!({"demo_delay_ms": 10}));
    proxy.terminate();
    let status = proxy.wait(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}\n{}", proxy.stderr());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = RedisStore::connect(url.as_str()).await.unwrap();
        let get = |id: &str| {
            let id: JobId = id.parse().unwrap();
            let store = store.clone();
            async move {
                store
                    .get(id)
                    .await
                    .unwrap()
                    .expect("the job is in the store")
            }
        };
        assert_eq!(get(&running).await.status, JobStatus::Succeeded);
        assert_eq!(get(&queued).await.status, JobStatus::Queued);
    });
}

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

#[test]
fn version_and_help_name_the_program_and_every_flag() {
    let version = Command::new(support::proxy_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tower-defer {}", env!("CARGO_PKG_VERSION"))
    );

    let help = Command::new(support::proxy_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: tower-defer [OPTIONS]"), "{help}");
    for flag in [
        "--listen",
        "--upstream",
        "--store",
        "--token",
        "--webhook-secret",
        "--dialect",
        "--access-log",
        "--wake-url",
        "--wake-interval",
        "--wake-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("[env: TOWER_DEFER_LISTEN="), "{help}");
}

#[test]
fn flags_come_from_the_environment_and_bad_ones_exit_2() {
    let proxy = Proxy::start_with_env(
        &[],
        &[
            ("TOWER_DEFER_PREFIX", "/jobs"),
            ("TOWER_DEFER_TOKEN", "env-a,env-b"),
            ("TOWER_DEFER_LOG_FORMAT", "json"),
        ],
    );
    let reply = proxy.post("/jobs", Some("env-b"), &json!({"data": {}}));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert!(reply.header("location").unwrap().starts_with("/jobs/"));
    assert!(proxy.stdout().contains("2 (token-"), "{}", proxy.stdout());
    // --log-format json: one JSON object a line on stderr.
    let logs = proxy.stderr();
    assert!(!logs.is_empty());
    for line in logs.lines() {
        let _: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    let mut bad = vec![
        (&["--store", "memcached://x"][..], "--store"),
        (&["--concurrency", "0"][..], "--concurrency"),
        (&["--result-ttl", "1w"][..], "unknown unit"),
        (&["--dialect", "openai"][..], "--dialect"),
        (
            &["--tokens-file", "/nonexistent/tokens"][..],
            "--tokens-file",
        ),
        (
            &["--upstream-ca", "/nonexistent/ca.pem"][..],
            "--upstream-ca: there is no --upstream to trust it for",
        ),
        (
            &[
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-ca",
                "/nonexistent/ca.pem",
            ][..],
            "--upstream-ca /nonexistent/ca.pem: the upstream http://127.0.0.1:9/ is not https",
        ),
    ];
    bad.extend([
        (
            &["--upstream", "https://localhost:9", "--upstream-ca", "/nonexistent/ca.pem"][..],
            "--upstream-ca /nonexistent/ca.pem: No such file or directory",
        ),
        (
            &["--upstream", "https://localhost:9", "--upstream-ca", "/dev/null"][..],
            "--upstream https://localhost:9/: a root certificate for the upstream holds no PEM certificate",
        ),
    ]);
    for (args, says) in bad {
        let out = Command::new(support::proxy_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn the_vendors_python_client_snippets_run_unchanged() {
    if !have("python3", "the client snippets") || !have("curl", "the Bifrost snippet") {
        return;
    }
    let proxy = Proxy::start(&[
        "--dialect",
        "baseten",
        "--dialect",
        "bifrost",
        "--model-id",
        "demo-model",
        "--deployment-id",
        "demo-deployment",
        "--token",
        "snippet-token",
    ]);
    let out = Command::new("python3")
        .arg("tests/clients/snippets.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BASE_URL", proxy.base())
        .env("TOKEN", "snippet-token")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}

/// The text of the element with `id` in a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let rest = &dom[start..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    &text[..text.find('<').unwrap()]
}

#[test]
fn the_live_page_shows_what_the_api_says() {
    if !have("chromium", "the live page test") {
        return;
    }
    let proxy = Proxy::start(&["--token", "page-token", "--concurrency", "1"]);
    // One job running for a while, two queued behind it, and nothing moving.
    let running = proxy.submit(Some("page-token"), json!({"demo_delay_ms": 30000}));
    proxy.wait_status(Some("page-token"), &running, "in_progress");
    let queued = [
        proxy.submit(Some("page-token"), json!({"n": 1})),
        proxy.submit(Some("page-token"), json!({"n": 2})),
    ];
    let stats = proxy.get("/async/queue", Some("page-token")).json();
    assert_eq!(
        (stats["queued"].as_u64(), stats["in_progress"].as_u64()),
        (Some(2), Some(1))
    );

    let profile = std::env::temp_dir().join(format!("tower-defer-chromium-{}", std::process::id()));
    let url = format!("{}/async/ui#token=page-token", proxy.base());
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let shown = |id| element_text(&dom, id).trim().to_owned();
    assert_eq!(shown("error"), "", "{dom}");
    for field in ["queued", "in_progress", "retrying"] {
        assert_eq!(shown(field), stats[field].to_string(), "#{field} in\n{dom}");
    }
    let recent = proxy.get("/async/recent", Some("page-token")).json();
    let rows = dom.matches("<tr data-id=").count();
    assert_eq!(rows, recent["jobs"].as_array().unwrap().len(), "{dom}");
    assert_eq!(rows, 3);
    for id in queued.iter().chain([&running]) {
        assert!(dom.contains(&format!("data-id=\"{id}\"")), "{id} in\n{dom}");
    }
}

#[cfg(feature = "webhooks")]
/// A webhook receiver for one delivery: its URL, and the delivery's head
/// (lowercased) and body once it came. It answers 204.
fn receive_one() -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
    use std::io::{Read, Write};

    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    let received = std::thread::spawn(move || {
        let (mut conn, _) = receiver.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body_start) = loop {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the delivery ended early");
            raw.extend_from_slice(&buf[..n]);
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break (String::from_utf8_lossy(&raw[..i]).to_lowercase(), i + 4);
            }
        };
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while raw.len() < body_start + length {
            let n = conn.read(&mut buf).unwrap();
            raw.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .unwrap();
        (head, raw[body_start..body_start + length].to_vec())
    });
    (hook, received)
}

/// The value of the start summary's line `name`.
fn summary_line(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
        .trim()
        .to_owned()
}

#[test]
fn webhooks_are_delivered_signed() {
    let (hook, received) = receive_one();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let proxy = Proxy::start(&[
        "--token",
        "t",
        "--webhook-secret",
        secret,
        "--webhook-allow-private",
    ]);
    let reply = proxy.post(
        "/async",
        Some("t"),
        &json!({"data": {"q": 1}, "webhook": hook}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let (head, body) = received.join().unwrap();
    assert!(head.starts_with("post /hook "), "{head}");
    assert!(head.contains("\r\nwebhook-id:"), "{head}");
    assert!(head.contains("\r\nwebhook-signature: v1,"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains(&id));
    let report = proxy.stdout();
    assert_eq!(
        summary_line(&report, "webhooks standard"),
        "signed, webhook-signature with 1 secret(s) whsec_****"
    );
    assert_eq!(
        summary_line(&report, "webhooks baseten"),
        "not used (no --dialect baseten)"
    );
    assert!(!report.contains("MfKQ9r8"), "{report}");
}

#[test]
fn baseten_webhooks_are_never_sent_unsigned_once_a_secret_is_set() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // A webhook secret, the Baseten dialect, and no Baseten secret: Baseten
    // deliveries could not be signed, so the program does not start.
    let out = Command::new(support::proxy_binary())
        .args(["--listen", "127.0.0.1:0", "--dialect", "baseten"])
        .args(["--webhook-secret", secret])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "tower-defer: --dialect baseten with --webhook-secret: Baseten-format webhooks \
             would be sent unsigned; give --baseten-webhook-secret"
        ),
        "{stderr}"
    );

    // With it, a Baseten delivery carries X-BASETEN-SIGNATURE over its body.
    let (hook, received) = receive_one();
    let baseten_secret = "baseten-receiver-secret";
    let proxy = Proxy::start(&[
        "--dialect",
        "baseten",
        "--webhook-secret",
        secret,
        "--baseten-webhook-secret",
        baseten_secret,
        "--webhook-allow-private",
    ]);
    let reply = proxy.post(
        "/async_predict",
        None,
        &json!({"model_input": {"q": 1}, "webhook_endpoint": hook}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["request_id"].as_str().unwrap().to_owned();
    let (head, body) = received.join().unwrap();
    let signature = tower_defer::webhook::baseten_signature(baseten_secret, &body);
    assert!(
        head.contains(&format!("\r\nx-baseten-signature: {signature}")),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nx-baseten-request-id: {id}")),
        "{head}"
    );
    let report = proxy.stdout();
    assert_eq!(
        summary_line(&report, "webhooks baseten"),
        "signed, X-BASETEN-SIGNATURE with **** (--baseten-webhook-secret)"
    );
    assert!(!report.contains(baseten_secret), "{report}");

    // No secret at all: the summary says each format goes unsigned.
    let open = Proxy::start(&["--dialect", "baseten"]);
    let report = open.stdout();
    assert_eq!(
        summary_line(&report, "webhooks standard"),
        "UNSIGNED (no --webhook-secret)"
    );
    assert_eq!(
        summary_line(&report, "webhooks baseten"),
        "UNSIGNED (no --baseten-webhook-secret)"
    );
}
