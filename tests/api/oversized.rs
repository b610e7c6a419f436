//! A body over the limit is answered `413` even when the client sends it
//! whole without `Expect: 100-continue`: the layer reads the rest and drops
//! it, rather than answering with the body unread (which makes the kernel
//! reset the connection, and the reset can discard the answer).

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::Layer;
use tower_defer::{Body, DeferLayer, MemoryStore};

use crate::support::*;

const LIMIT: usize = 10 * 1024 * 1024;

async fn server() -> Server {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        infallible(http::Response::new(Body::from("{}")))
    });
    serve(
        DeferLayer::new(MemoryStore::new())
            .max_body(LIMIT)
            .layer(inner),
    )
    .await
}

/// Sends `head` then the whole `body` on a fresh connection, and only then
/// reads the answer, as a client that does not wait for `100 Continue`
/// does. Python's `requests` raises on a failed write and never reads the
/// answer, so the whole body must be taken.
async fn send_whole(server: &Server, head: String, body: Vec<u8>) -> String {
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let written = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await
    }
    .await;
    if let Err(e) = written {
        panic!("the server stopped reading the body before its end: {e}");
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer);
                if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                    break;
                }
            }
            Err(e) => panic!(
                "the connection failed before the answer was read ({e}); read so far: {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn an_oversized_body_sent_whole_gets_its_413_not_a_reset() {
    let s = server().await;
    let envelope = format!("{{\"data\": \"{}\"}}", "x".repeat(LIMIT + LIMIT / 10));
    // Several tries of each form: the reset this guards against was a race,
    // lost more often than not.
    for _ in 0..3 {
        let head = format!(
            "POST /async HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            envelope.len()
        );
        let answer = send_whole(&s, head, envelope.clone().into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");

        // Chunked, so the limit is only found while reading.
        let mut chunked = Vec::new();
        for chunk in envelope.as_bytes().chunks(8 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let head = "POST /predict HTTP/1.1\r\nhost: x\r\nprefer: respond-async\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
        let answer = send_whole(&s, head, chunked).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");
    }
}
