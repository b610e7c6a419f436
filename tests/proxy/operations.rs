//! Running it: the demo model, metrics, readiness, and SIGTERM.

use super::*;

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
