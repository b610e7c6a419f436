//! Autoscaling: the signals in `/metrics` and `/async/queue` with an upstream
//! that is not there, `--wake-url` called for it, and the KEDA files in
//! `docs/keda/` checked against what a running proxy really exports.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sample;
use crate::support::{free_port, have, Proxy, Recorder, ScriptedUpstream};

/// Polls the queue document until `ok` holds for it (20 s at most); the
/// document that did.
fn queue_until(proxy: &Proxy, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = proxy.get("/async/queue", None).json();
        if ok(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "never {what}: {doc}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_upstream_shows_a_backlog_without_capacity_until_it_answers() {
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}");
    let proxy = Proxy::start(&["--upstream", &upstream, "--concurrency", "4"]);

    let idle = proxy.get("/async/queue", None).json();
    assert_eq!(idle["backlog_per_slot"], 0.0, "{idle}");
    assert_eq!(idle["backlog_without_capacity"], 0, "{idle}");

    let ids: Vec<String> = (0..6)
        .map(|i| proxy.submit(None, json!({ "n": i })))
        .collect();
    // Every job is tried, refused, and waits out a backoff: all six queued.
    let doc = queue_until(&proxy, "six jobs waiting without capacity", |d| {
        d["backlog_without_capacity"] == 1 && d["queued"] == 6
    });
    assert_eq!(doc["backlog_per_slot"], 1.5, "6 jobs over 4 slots: {doc}");
    // The jobs are tried again each second, and one being tried is in
    // progress for that moment, not queued: a scrape then reads 1.25. So
    // the scrape is read until it shows the state the document showed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = proxy.get("/metrics", None).text();
        let per_slot = sample(&scrape, "tower_defer_backlog_per_slot");
        let without = sample(&scrape, "tower_defer_backlog_without_capacity");
        if (per_slot, without) == (1.5, 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed six jobs without capacity: {per_slot}, {without}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The model comes up where the proxy points: the jobs run, the flag drops.
    let _model = ScriptedUpstream::start_on(port, Vec::new());
    for id in &ids {
        assert_eq!(proxy.wait_done(None, id)["status"], "succeeded");
    }
    let doc = proxy.get("/async/queue", None).json();
    assert_eq!(doc["backlog_without_capacity"], 0, "{doc}");
    assert_eq!(doc["backlog_per_slot"], 0.0, "{doc}");
    let scrape = proxy.get("/metrics", None).text();
    assert_eq!(sample(&scrape, "tower_defer_backlog_without_capacity"), 0.0);
}

#[test]
fn the_wake_url_is_called_at_most_once_per_interval_while_jobs_wait() {
    let scaler = Recorder::start();
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}");
    let wake = format!("http://127.0.0.1:{}/wake?model=demo", scaler.port);
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--concurrency",
        "2",
        "--wake-url",
        &wake,
        "--wake-interval",
        "1s",
        "--wake-timeout",
        "2s",
    ]);

    // No job, no call: the upstream's absence alone is no reason to wake it.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(scaler.requests().is_empty(), "{:?}", scaler.requests());

    let ids = [
        proxy.submit(None, json!({"n": 1})),
        proxy.submit(None, json!({"n": 2})),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while scaler.requests().is_empty() {
        assert!(Instant::now() < deadline, "the wake URL was never called");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = scaler.requests()[0].clone();
    assert!(
        first.head.starts_with("post /wake?model=demo http/1.1"),
        "{}",
        first.head
    );
    assert!(first.head.contains("content-type: application/json"));
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["reason"], "backlog_without_capacity", "{body}");
    assert_eq!(body["backlog"], 2, "{body}");
    assert_eq!(body["backlog_per_slot"], 1.0, "{body}");
    assert_eq!(body["slots"], 2, "{body}");

    // Over 2.5 s more: a call each interval, not one each check or each job.
    std::thread::sleep(Duration::from_millis(2500));
    let calls = scaler.requests();
    assert!(
        (2..=4).contains(&calls.len()),
        "{} calls in about 2.5 s at one a second",
        calls.len()
    );
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(900), "calls {gap:?} apart");
    }

    // The model comes up: the jobs run and the calls stop.
    let _model = ScriptedUpstream::start_on(port, Vec::new());
    for id in &ids {
        assert_eq!(proxy.wait_done(None, id)["status"], "succeeded");
    }
    let settled = scaler.requests().len();
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        scaler.requests().len(),
        settled,
        "called after the jobs ran"
    );
    assert!(proxy.stderr().contains("the wake URL was called"));
}

/// Every YAML document of `docs/keda/`, as JSON, read by Python's yaml
/// module (so a malformed file fails here); `None` when that is missing
/// outside CI.
fn keda_documents() -> Option<Vec<(String, Value)>> {
    if !have("python3", "the KEDA files' YAML check") {
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/keda");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "no KEDA files in {}", dir.display());
    let script = "import json, sys, yaml\n\
                  print(json.dumps([list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]))";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'yaml'") {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 has no yaml module, and CI is set"
        );
        eprintln!("SKIPPED: python3 has no yaml module (the KEDA files' check needs it)");
        return None;
    }
    assert!(
        out.status.success(),
        "a KEDA file is not valid YAML: {stderr}"
    );
    let parsed: Vec<Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        files
            .iter()
            .zip(parsed)
            .flat_map(|(f, docs)| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                docs.into_iter().map(move |d| (name.clone(), d))
            })
            .collect(),
    )
}

#[test]
fn the_keda_files_name_signals_a_running_proxy_exports() {
    let Some(documents) = keda_documents() else {
        return;
    };
    let proxy = Proxy::start(&[]);
    let queue = proxy.get("/async/queue", None).json();
    let scrape = proxy.get("/metrics", None).text();
    let exported: Vec<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split([' ', '{']).next())
        .collect();

    let mut kinds = Vec::new();
    for (file, doc) in &documents {
        if doc["kind"] != "ScaledObject" {
            continue;
        }
        let triggers = doc["spec"]["triggers"].as_array().unwrap();
        assert!(!triggers.is_empty(), "{file}: no triggers");
        // Scale from zero: KEDA may take the model to zero replicas.
        assert_eq!(doc["spec"]["minReplicaCount"], 0, "{file}");
        for trigger in triggers {
            let meta = &trigger["metadata"];
            let kind = trigger["type"].as_str().unwrap();
            kinds.push(kind.to_owned());
            match kind {
                "metrics-api" => {
                    let field = meta["valueLocation"].as_str().unwrap();
                    assert!(
                        queue.get(field).is_some(),
                        "{file}: valueLocation {field} is not in the queue document {queue}"
                    );
                    let url = meta["url"].as_str().unwrap();
                    assert!(url.ends_with("/async/queue"), "{file}: url {url}");
                    assert!(
                        meta["activationTargetValue"].is_string(),
                        "{file}: no activationTargetValue"
                    );
                }
                "prometheus" => {
                    let query = meta["query"].as_str().unwrap();
                    let names: Vec<&str> = query
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with("tower_defer_"))
                        .collect();
                    assert!(!names.is_empty(), "{file}: query {query}");
                    for name in names {
                        assert!(
                            exported.contains(&name),
                            "{file}: {name} is not in /metrics:\n{scrape}"
                        );
                    }
                    assert!(
                        meta["activationThreshold"].is_string(),
                        "{file}: no activationThreshold"
                    );
                }
                other => panic!("{file}: a trigger of type {other}"),
            }
        }
    }
    assert!(kinds.iter().any(|k| k == "metrics-api"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "prometheus"), "{kinds:?}");
}
