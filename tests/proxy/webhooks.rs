//! Webhook deliveries from the program, and signed means signed.

use super::*;

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
