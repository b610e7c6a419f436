//! `--access-log`: one structured line per request answered by the async API
//! or passed through, read back from the proxy's JSON logs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Proxy, ScriptedUpstream};

/// The access lines in the proxy's stderr so far, as JSON.
fn access_lines(proxy: &Proxy) -> Vec<Value> {
    proxy
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "tower_defer::access")
        .collect()
}

/// Waits until the proxy has logged `n` access lines (10 s at most).
/// The access lines, once the one for `path` (the last request's) has been
/// read from the proxy's stderr: lines arrive through a pipe a thread reads,
/// so a count of lines can be reached while the last one is on its way.
fn wait_for_line(proxy: &Proxy, path: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(proxy);
        if lines.iter().any(|l| l["fields"]["path"] == path) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no access line for {path}:\n{}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_access_log_names_each_requests_job_and_trace() {
    let model = ScriptedUpstream::start(Vec::new());
    let proxy = Proxy::start(&[
        "--upstream",
        &model.url(),
        "--access-log",
        "--log-format",
        "json",
    ]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = || {
        vec![
            (
                "traceparent".to_owned(),
                format!("00-{trace}-00f067aa0ba902b7-01"),
            ),
            ("content-type".to_owned(), "application/json".to_owned()),
        ]
    };
    let body = json!({"data": {"x": 1}}).to_string();
    let created = proxy.call("POST", "/async", &traceparent(), Some(body.as_bytes()));
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    // Looked up without a traceparent: the line still names the job's trace.
    proxy.wait_done(None, &id);
    let passed = proxy.call("GET", "/health?secret=1", &traceparent(), None);
    assert_eq!(passed.status, 200);
    assert_eq!(proxy.get("/async/queue", None).status, 200);

    let lines = wait_for_line(&proxy, "/async/queue");
    let fields: Vec<&Value> = lines.iter().map(|l| &l["fields"]).collect();
    let submit = fields[0];
    assert_eq!(submit["method"], "POST", "{submit}");
    assert_eq!(submit["path"], "/async");
    assert_eq!(submit["status"], 201);
    assert_eq!(submit["job_id"], id.as_str());
    assert_eq!(submit["trace_id"], trace);
    assert!(submit["duration_ms"].as_f64().unwrap() >= 0.0, "{submit}");

    let lookups: Vec<&&Value> = fields
        .iter()
        .filter(|f| f["path"] == format!("/async/{id}").as_str())
        .collect();
    assert!(!lookups.is_empty(), "{fields:?}");
    for lookup in &lookups {
        assert_eq!(lookup["method"], "GET");
        assert_eq!(lookup["job_id"], id.as_str(), "{lookup}");
        assert_eq!(lookup["trace_id"], trace, "{lookup}");
        let status = lookup["status"].as_u64().unwrap();
        assert!(status == 200 || status == 202, "{lookup}");
    }

    // A pass-through: no job, the request's own trace, the query left out.
    let through = fields.iter().find(|f| f["path"] == "/health").unwrap();
    assert_eq!(through["method"], "GET");
    assert_eq!(through["status"], 200);
    assert_eq!(through["trace_id"], trace);
    assert!(through.get("job_id").is_none(), "{through}");
    assert!(!proxy.stderr().contains("secret=1"));

    // The queue document is about no job, and the request sent no trace.
    let queue = fields.iter().find(|f| f["path"] == "/async/queue").unwrap();
    assert!(queue.get("job_id").is_none() && queue.get("trace_id").is_none());
    assert_eq!(fields.len(), 3 + lookups.len(), "{fields:?}");
}

#[test]
fn the_access_log_is_off_by_default() {
    let proxy = Proxy::start(&["--log-format", "json"]);
    let id = proxy.submit(None, json!({"x": 1}));
    proxy.wait_done(None, &id);
    // The job's own log line shows the logs are read; no access line came.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.stderr().contains("job finished") {
        assert!(Instant::now() < deadline, "{}", proxy.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(access_lines(&proxy).is_empty(), "{}", proxy.stderr());
}
