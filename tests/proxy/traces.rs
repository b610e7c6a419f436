//! The program's OTLP export: bad `OTEL_*` values stop the start, and with
//! a collector named the spans of a job reach it, flushed at the graceful
//! stop.

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::summary_line;
use crate::support::{self, read_request, Proxy};

#[test]
fn an_unusable_otel_variable_exits_2_naming_it() {
    for (name, value, says) in [
        (
            "OTEL_BSP_SCHEDULE_DELAY",
            "soon",
            r#"tower-defer: OTEL_BSP_SCHEDULE_DELAY: "soon" is not a whole number of milliseconds (at least 1)"#,
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            r#"tower-defer: OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" is not supported; use http/protobuf or grpc"#,
        ),
    ] {
        let out = Command::new(support::proxy_binary())
            .args(["--listen", "127.0.0.1:0"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
}

/// A collector on 127.0.0.1:0 answering 200 to each `POST /v1/traces`.
fn collector() -> (u16, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let seen = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some((head, body)) = read_request(&mut stream) else {
                continue;
            };
            assert!(head.starts_with("post /v1/traces "), "{head}");
            let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            for rs in request.resource_spans {
                for ss in rs.scope_spans {
                    seen.lock().unwrap().extend(ss.spans);
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, spans)
}

#[test]
fn a_jobs_spans_reach_the_collector_by_the_graceful_stop() {
    let (port, spans) = collector();
    let endpoint = format!("http://127.0.0.1:{port}");
    // A long schedule: only the flush at the stop sends them.
    let mut proxy = Proxy::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    assert_eq!(
        summary_line(&proxy.stdout(), "traces"),
        format!("{endpoint}/v1/traces (OTLP http/protobuf)")
    );
    let id = proxy.submit(None, json!({"prompt": "hi"}));
    assert_eq!(proxy.wait_done(None, &id)["status"], "succeeded");
    proxy.terminate();
    assert!(proxy.wait(Duration::from_secs(30)).success());
    let spans = spans.lock().unwrap().clone();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let (submit, job) = (named("submit"), named("job"));
    assert_eq!((submit.len(), job.len()), (1, 1), "{spans:#?}");
    assert_eq!(job[0].trace_id, submit[0].trace_id);
    assert_eq!(job[0].parent_span_id, submit[0].span_id);
}

#[test]
fn without_a_collector_the_summary_says_traces_are_off() {
    let proxy = Proxy::start(&[]);
    assert_eq!(
        summary_line(&proxy.stdout(), "traces"),
        "off (set OTEL_EXPORTER_OTLP_ENDPOINT to export them)"
    );
}
