//! `--batch` and `--batch-file`: the program batches a route's queued jobs
//! into one call to a small fake embeddings server.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::support::{proxy_binary, read_request, Proxy};

/// An embeddings server on 127.0.0.1: `POST /v1/embeddings` answers
/// OpenAI's shape (`data`, each item with its `index`), `POST /embed`
/// Text Embeddings Inference's (a top-level array); each input's
/// embedding is its length. It records each request's body.
struct Embeddings {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Embeddings {
    fn start() -> Embeddings {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some((path, body)) = read(&mut stream) else {
                    continue;
                };
                seen.lock().unwrap().push(body.clone());
                let field = if path == "/embed" { "inputs" } else { "input" };
                let texts: Vec<String> = match &body[field] {
                    Value::Array(a) => a.iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
                    t => vec![t.as_str().unwrap_or_default().to_owned()],
                };
                let answer = if path == "/embed" {
                    json!(texts.iter().map(|t| json!([t.len()])).collect::<Vec<_>>())
                } else {
                    let data: Vec<Value> = texts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": [t.len()]}))
                        .collect();
                    json!({"object": "list", "model": body["model"], "data": data})
                };
                let answer = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Embeddings { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// One request's path and JSON body.
fn read(stream: &mut TcpStream) -> Option<(String, Value)> {
    let (head, body) = read_request(stream)?;
    let path = head.split_whitespace().nth(1)?.to_owned();
    Some((path, serde_json::from_slice(&body).ok()?))
}

fn submit(proxy: &Proxy, path: &str, data: Value) -> String {
    let reply = proxy.post("/async", None, &json!({"path": path, "data": data}));
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn output(proxy: &Proxy, id: &str) -> Value {
    proxy.get(&format!("/async/{id}/output"), None).json()["output"].clone()
}

#[test]
fn the_batch_flag_sends_queued_jobs_as_one_upstream_call() {
    let upstream = Embeddings::start();
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url(),
        "--concurrency",
        "1",
        "--batch",
        "POST /v1/embeddings input=/input output=/data max=8 wait=500ms",
    ]);
    let ids = [
        submit(
            &proxy,
            "/v1/embeddings",
            json!({"model": "m", "input": "a"}),
        ),
        submit(
            &proxy,
            "/v1/embeddings",
            json!({"model": "m", "input": ["bb", "ccc"]}),
        ),
        submit(
            &proxy,
            "/v1/embeddings",
            json!({"model": "m", "input": "dddd"}),
        ),
    ];
    for id in &ids {
        let doc = proxy.wait_done(None, id);
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["batch_size"], 3, "{doc}");
    }
    assert_eq!(
        upstream.bodies(),
        [json!({"model": "m", "input": ["a", "bb", "ccc", "dddd"]})]
    );
    let second = output(&proxy, &ids[1]);
    assert_eq!(
        second["data"],
        json!([
            {"object": "embedding", "index": 0, "embedding": [2]},
            {"object": "embedding", "index": 1, "embedding": [3]},
        ])
    );
    assert_eq!(output(&proxy, &ids[2])["data"][0]["embedding"], json!([4]));
    let scrape = proxy.get("/metrics", None).text();
    assert!(
        scrape.contains("tower_defer_batch_size_bucket{le=\"4\"} 1"),
        "{scrape}"
    );
}

#[test]
fn a_batch_file_configures_a_top_level_array_answer() {
    let upstream = Embeddings::start();
    let dir = std::env::temp_dir().join(format!("tower-defer-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("batch.json");
    std::fs::write(
        &file,
        r#"[{"route": "POST /embed", "input": "/inputs", "output": "", "max_items": 4, "max_wait_ms": 500}]"#,
    )
    .unwrap();
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url(),
        "--concurrency",
        "1",
        "--batch-file",
        file.to_str().unwrap(),
    ]);
    let ids = [
        submit(&proxy, "/embed", json!({"inputs": "a"})),
        submit(&proxy, "/embed", json!({"inputs": ["bb", "ccc"]})),
    ];
    for id in &ids {
        assert_eq!(proxy.wait_done(None, id)["status"], "succeeded");
    }
    assert_eq!(upstream.bodies(), [json!({"inputs": ["a", "bb", "ccc"]})]);
    assert_eq!(output(&proxy, &ids[0]), json!([[1]]));
    assert_eq!(output(&proxy, &ids[1]), json!([[2], [3]]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_batch_route_stops_the_program_with_exit_code_2() {
    let out = Command::new(proxy_binary())
        .args(["--batch", "POST /embed max=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max=0"), "{stderr}");

    let file =
        std::env::temp_dir().join(format!("tower-defer-badbatch-{}.json", std::process::id()));
    std::fs::write(&file, r#"[{"route": "POST /embed", "colour": "red"}]"#).unwrap();
    let out = Command::new(proxy_binary())
        .args(["--batch-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"colour\""), "{stderr}");
}
