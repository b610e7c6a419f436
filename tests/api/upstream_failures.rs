//! Which failures of a real upstream spend an attempt, over TCP against
//! [`Upstream`]: a connection never made spends none; one cut after the
//! request went out (reset, closed, cut mid-body) spends one, since the
//! model may have run it; a pooled connection the upstream closed while
//! idle spends none (hyper-util's client sends again on a new one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::Layer;
use tower_defer::upstream::Upstream;
use tower_defer::{DeferLayer, MemoryStore};

use crate::support::*;

/// What the raw upstream does once it has read a request.
#[derive(Clone, Copy)]
enum Then {
    /// Resets the connection (`SO_LINGER` 0): an RST, no answer.
    Reset,
    /// Closes it (FIN) without answering.
    Close,
    /// Promises 100 bytes of body, sends 10, closes.
    CutBody,
    /// Answers 200 in full, then closes the connection it let live.
    AnswerAndClose,
}

/// A raw HTTP/1.1 upstream on 127.0.0.1 that does `then` to every request;
/// the count of requests it read.
async fn raw_upstream(then: Then) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                if !read_request(&mut conn).await {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                match then {
                    // A zero linger makes the close an RST; it never blocks.
                    #[allow(deprecated)]
                    Then::Reset => conn.set_linger(Some(Duration::ZERO)).unwrap(),
                    Then::Close => {}
                    Then::CutBody => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
                        let _ = conn.write_all(head.as_bytes()).await;
                        let _ = conn.write_all(b"{\"partial\"").await;
                    }
                    Then::AnswerAndClose => {
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                        let _ = conn.write_all(answer.as_bytes()).await;
                        // Idle a moment (the client pools it), then close.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                drop(conn);
            });
        }
    });
    (url, seen)
}

/// Reads one request (head and a `content-length` body); false at EOF.
async fn read_request(conn: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// A layer over `Upstream` to `url`, served on 127.0.0.1.
async fn proxy_to(url: &str, connect_timeout: Option<Duration>) -> Server {
    let mut builder = Upstream::builder(url.parse().unwrap());
    if let Some(d) = connect_timeout {
        builder = builder.connect_timeout(d);
    }
    serve(DeferLayer::new(MemoryStore::new()).layer(builder.build().unwrap())).await
}

/// Two attempts, no delay between them.
fn two_attempts() -> Value {
    json!({"data": {"n": 1}, "inference_retry_config": {"max_attempts": 2, "initial_delay_ms": 0}})
}

/// Polls until the job waits for the upstream (`upstream_unavailable`).
async fn waiting_for_the_upstream(c: &HttpClient, server: &Server, id: &str) -> Value {
    loop {
        let doc = c.get(&server.url(&format!("/async/{id}"))).await.json();
        if doc["status"] == "queued" && doc["error"]["code"] == "upstream_unavailable" {
            return doc;
        }
        assert_ne!(doc["status"], "failed", "{doc}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn assert_spent_both_attempts(then: Then, code: &str) -> Value {
    let (url, seen) = raw_upstream(then).await;
    let server = proxy_to(&url, None).await;
    let c = HttpClient::new();
    let id = c.submit(&server, &two_attempts()).await;
    let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["attempts"], 2, "each cut call spent one: {doc}");
    assert_eq!(doc["error"]["code"], code, "{doc}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the upstream read both calls"
    );
    doc
}

#[tokio::test]
async fn a_connection_reset_after_the_request_went_out_spends_an_attempt() {
    assert_spent_both_attempts(Then::Reset, "upstream_error").await;
}

#[tokio::test]
async fn a_connection_closed_before_an_answer_spends_an_attempt() {
    assert_spent_both_attempts(Then::Close, "upstream_error").await;
}

#[tokio::test]
async fn a_body_cut_mid_way_spends_an_attempt() {
    let doc = assert_spent_both_attempts(Then::CutBody, "response_body_error").await;
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("reading the response body failed: "),
        "{message}"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_spends_no_attempt() {
    let (url, seen) = raw_upstream(Then::AnswerAndClose).await;
    let server = proxy_to(&url, None).await;
    let c = HttpClient::new();
    for n in 0..5 {
        let id = c.submit(&server, &json!({"data": {"n": n}})).await;
        let doc = c.finished(&server.url(&format!("/async/{id}"))).await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["attempts"], 1, "{doc}");
        // Each next job meets the connection just closed, or a new one.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_connect_timeout_spends_no_attempt() {
    // A listener that never accepts, its queue filled: connections to it
    // hang in the handshake until the client's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let server = proxy_to(&format!("http://{addr}"), Some(Duration::from_millis(200))).await;
    let c = HttpClient::new();
    let id = c.submit(&server, &json!({"data": 1})).await;
    let doc = waiting_for_the_upstream(&c, &server, &id).await;
    assert_eq!(doc["attempts"], 0, "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "the upstream is unavailable: client error (Connect): tcp connect error: \
         deadline has elapsed"
    );
    drop(listener);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_spends_no_attempt() {
    // `.invalid` never resolves (RFC 2606).
    let server = proxy_to("http://model.invalid:8000", None).await;
    let c = HttpClient::new();
    let id = c.submit(&server, &json!({"data": 1})).await;
    let doc = waiting_for_the_upstream(&c, &server, &id).await;
    assert_eq!(doc["attempts"], 0, "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("dns error"), "{message}");
}
