//! The connection guards, over raw sockets: `--header-read-timeout`,
//! `--idle-timeout` and `--max-connections`. Each test sets short limits and
//! waits for what the proxy does; `HANG` only bounds a wait that would
//! otherwise never end.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{self, dechunk, parse_head, Proxy, Reply};
use crate::{sample, summary_line};

/// Far beyond any limit these tests set: a connection still open after it
/// would stay open for good.
const HANG: Duration = Duration::from_secs(20);

/// One client connection, kept alive across requests.
struct Client {
    stream: TcpStream,
    addr: SocketAddr,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream.set_read_timeout(Some(HANG)).unwrap();
        Client { stream, addr }
    }

    /// Sends a request without a body and reads its answer.
    fn call(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\n",
            self.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.stream
            .write_all(head.as_bytes())
            .expect("send a request");
        self.reply()
    }

    /// Reads one answer: its head, then a `content-length` or chunked body.
    fn reply(&mut self) -> Reply {
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill(&mut raw);
        };
        let (status, headers) = parse_head(std::str::from_utf8(&raw[..head_end]).unwrap());
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let mut body = raw.split_off(head_end);
        if let Some(length) = header("content-length") {
            let length: usize = length.parse().unwrap();
            while body.len() < length {
                self.fill(&mut body);
            }
        } else {
            assert_eq!(
                header("transfer-encoding").map(String::as_str),
                Some("chunked")
            );
            while !body.ends_with(b"0\r\n\r\n") {
                self.fill(&mut body);
            }
            body = dechunk(&body);
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    fn fill(&mut self, into: &mut Vec<u8>) {
        let mut buf = [0u8; 8192];
        let n = self.stream.read(&mut buf).expect("read an answer");
        assert!(n > 0, "the proxy closed the connection mid-answer");
        into.extend_from_slice(&buf[..n]);
    }

    /// Waits until the proxy closes the connection; what it sent before.
    /// Fails if the connection is still open after `HANG`.
    fn closed(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("the connection is still open after {HANG:?}")
                }
                // A reset closes it too.
                Err(_) => return got,
            }
        }
    }
}

#[test]
fn a_head_sent_a_byte_at_a_time_and_a_silent_connection_are_cut_at_the_header_read_timeout() {
    let proxy = Proxy::start(&["--header-read-timeout", "1s"]);
    assert_eq!(summary_line(&proxy.stdout(), "header-read-timeout"), "1s");
    let mut silent = Client::connect(proxy.addr);

    // One byte every half second of a head that never ends.
    let mut slow = TcpStream::connect(proxy.addr).unwrap();
    slow.set_nonblocking(true).unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nhost: slow\r\nx-slow: ";
    let started = Instant::now();
    let mut sent = 0;
    let cut = loop {
        assert!(
            started.elapsed() < HANG,
            "a head sent a byte at a time was still read after {HANG:?}"
        );
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if slow.write_all(&[byte]).is_err() {
            break sent;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
        match slow.read(&mut [0u8; 64]) {
            Ok(0) => break sent,
            Ok(_) => panic!("the proxy answered a head that never ended"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break sent,
        }
    };
    assert!(cut >= 1, "cut before the first byte was sent");
    assert_eq!(
        silent.closed(),
        b"",
        "a silent connection is closed unanswered"
    );

    // The proxy serves on, and says what it closed.
    let mut client = Client::connect(proxy.addr);
    let scrape = client.call("GET", "/metrics", &[]).text();
    assert_eq!(
        sample(
            &scrape,
            "tower_defer_connections_timed_out_total{timeout=\"header_read\"}"
        ),
        2.0,
        "{scrape}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header-read timeout stays at its 30 s default, beyond HANG: only
    // the idle timeout can close this connection in time.
    let proxy = Proxy::start(&["--idle-timeout", "1s"]);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.call("GET", "/healthz", &[]).status, 200);
    assert_eq!(client.call("GET", "/healthz", &[]).status, 200);
    assert_eq!(client.closed(), b"", "closed between requests, unanswered");
}

#[test]
fn a_keep_alive_connection_may_wait_longer_than_the_header_read_timeout() {
    let proxy = Proxy::start(&["--header-read-timeout", "1s", "--idle-timeout", "15s"]);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.call("GET", "/healthz", &[]).status, 200);
    // Idle for three header-read timeouts, well within the idle timeout.
    std::thread::sleep(Duration::from_secs(3));
    let again = client.call("GET", "/healthz", &[]);
    assert_eq!(again.status, 200, "{}", again.text());
}

#[test]
fn a_long_poll_outlasts_the_idle_timeout_and_idleness_counts_from_its_end() {
    let proxy = Proxy::start(&["--idle-timeout", "1s"]);
    let id = proxy.submit(None, json!({"demo_delay_ms": 3000}));
    // A long-poll answers at the job's next change: wait until it runs, so
    // that the next change is its end, three idle timeouts away.
    proxy.wait_status(None, &id, "in_progress");
    let mut client = Client::connect(proxy.addr);
    let reply = client.call("GET", &format!("/async/{id}"), &[("prefer", "wait=15")]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "succeeded");
    assert_eq!(client.closed(), b"");
}

#[test]
fn past_max_connections_a_new_connection_gets_503_and_is_closed_and_counted() {
    let proxy = Proxy::start_with_env(&[], &[("TOWER_DEFER_MAX_CONNECTIONS", "2")]);
    assert_eq!(summary_line(&proxy.stdout(), "max-connections"), "2");
    let mut first = Client::connect(proxy.addr);
    assert_eq!(first.call("GET", "/healthz", &[]).status, 200);
    let mut second = Client::connect(proxy.addr);
    assert_eq!(second.call("GET", "/healthz", &[]).status, 200);

    // The third is answered and closed without sending anything.
    let mut third = Client::connect(proxy.addr);
    let answer = String::from_utf8(third.closed()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");

    // The first two are untouched.
    assert_eq!(first.call("GET", "/healthz", &[]).status, 200);
    assert_eq!(second.call("GET", "/healthz", &[]).status, 200);

    // Once one closes, a new connection is served.
    drop(first);
    let started = Instant::now();
    let mut fourth = loop {
        let mut client = Client::connect(proxy.addr);
        client
            .stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let reply = client.reply();
        if reply.status == 200 {
            break client;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(started.elapsed() < HANG, "no place freed after a close");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(fourth.call("GET", "/healthz", &[]).status, 200);

    let scrape = second.call("GET", "/metrics", &[]).text();
    assert!(
        sample(&scrape, "tower_defer_connections_rejected_total") >= 1.0,
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "tower_defer_connections_open"),
        2.0,
        "{scrape}"
    );
}

#[test]
fn connection_limits_are_in_the_summary_and_must_be_positive() {
    let proxy = Proxy::start(&[]);
    let stdout = proxy.stdout();
    assert_eq!(summary_line(&stdout, "header-read-timeout"), "30s");
    assert_eq!(summary_line(&stdout, "idle-timeout"), "2m");
    let cap = summary_line(&stdout, "max-connections");
    assert!(
        cap.contains("half the open-file limit") || cap.contains("unknown"),
        "{cap}"
    );

    for flag in [
        "--header-read-timeout",
        "--idle-timeout",
        "--max-connections",
    ] {
        let out = Command::new(support::proxy_binary())
            .args(["--listen", "127.0.0.1:0", flag, "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} 0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}
