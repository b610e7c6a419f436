//! Shared by the proxy tests: the `tower-defer` program run as a process, a
//! small blocking HTTP/1.1 client, and tool checks (a private `redis-server`
//! is the testkit's).
//!
//! [`Proxy::start`] runs the binary cargo built for this test (the test
//! requires feature `cli`, so cargo builds `tower-defer` first) on
//! `--listen 127.0.0.1:0` and reads the bound address from its stdout.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `tower-defer` binary, as cargo built it for this test.
pub fn proxy_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tower-defer"))
}

/// A running proxy, killed when dropped.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy with `args` (plus `--listen 127.0.0.1:0`).
    pub fn start(args: &[&str]) -> Proxy {
        Proxy::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut child = Command::new(proxy_binary())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the proxy");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the proxy did not say where it listens\nstdout:\n{}\nstderr:\n{}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
        };
        Proxy {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit within {limit:?}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, &auth(token), None)
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut headers = auth(token);
        headers.push(("content-type".into(), "application/json".into()));
        self.call("POST", path, &headers, Some(body.to_string().as_bytes()))
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Reply {
        request(self.addr, method, path, headers, body)
    }

    /// Submits `data` to the native API as `token`; the job's id.
    pub fn submit(&self, token: Option<&str>, data: Value) -> String {
        let reply = self.post("/async", token, &serde_json::json!({ "data": data }));
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    /// Long-polls job `id` until it has ended; its status document.
    pub fn wait_done(&self, token: Option<&str>, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut headers = auth(token);
            headers.push(("prefer".into(), "wait=5".into()));
            let reply = self.call("GET", &format!("/async/{id}"), &headers, None);
            if reply.status == 200 {
                return reply.json();
            }
            assert_eq!(reply.status, 202, "{}", reply.text());
            assert!(Instant::now() < deadline, "job {id} did not end");
        }
    }

    /// Polls job `id` until its status is `status`.
    pub fn wait_status(&self, token: Option<&str>, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let doc = self.get(&format!("/async/{id}"), token).json();
            if doc["status"] == status {
                return;
            }
            assert!(Instant::now() < deadline, "job {id} never {status}: {doc}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn auth(token: Option<&str>) -> Vec<(String, String)> {
    token
        .map(|t| vec![("authorization".into(), format!("Bearer {t}"))])
        .unwrap_or_default()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a connection of its own (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    parse(&raw)
}

/// A response head's status and its headers (names lowercased).
pub fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(raw)));
    let (status, headers) = parse_head(std::str::from_utf8(&raw[..split]).unwrap());
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// A chunked body's data.
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// Whether `tool` runs. Missing: a failure when `CI` is set, else `false`
/// with a message (the caller skips).
pub fn have(tool: &str, what: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed, and CI is set: {what} must run"
        );
        eprintln!("SKIPPED: {tool} is not installed ({what} needs it)");
    }
    found
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An https upstream on 127.0.0.1 with a fresh self-signed certificate for
/// `localhost`, whose PEM is in the file `ca`. It answers every request
/// with `{"tls": true, "path": …}`, over h2 or HTTP/1.1 as ALPN settles, on
/// a thread of its own until dropped.
#[cfg(feature = "tls")]
pub struct HttpsUpstream {
    pub port: u16,
    pub ca: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[cfg(feature = "tls")]
impl HttpsUpstream {
    pub fn start() -> HttpsUpstream {
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let (cert, config) = crate::tls::self_signed_localhost();
        static N: AtomicUsize = AtomicUsize::new(0);
        let ca = std::env::temp_dir().join(format!(
            "tower-defer-upstream-ca-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // An untrusting client ends the handshake: nothing to serve.
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let answer = hyper::service::service_fn(
                                |req: http::Request<hyper::body::Incoming>| async move {
                                    let body =
                                        serde_json::json!({"tls": true, "path": req.uri().path()});
                                    Ok::<_, std::convert::Infallible>(http::Response::new(
                                        http_body_util::Full::new(bytes::Bytes::from(
                                            body.to_string(),
                                        )),
                                    ))
                                },
                            );
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), answer)
                                    .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        HttpsUpstream {
            port,
            ca,
            stop: Some(stop),
        }
    }
}

#[cfg(feature = "tls")]
impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_file(&self.ca);
    }
}

/// An HTTP/1.1 upstream on 127.0.0.1 that answers its n-th request with the
/// n-th scripted `(status, headers)` and an empty JSON object, and `200 {}`
/// once the script has run out; it records when each request came. One
/// thread, one request a connection, until the test ends.
pub struct ScriptedUpstream {
    pub port: u16,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl ScriptedUpstream {
    pub fn start(script: Vec<(u16, Vec<(String, String)>)>) -> ScriptedUpstream {
        ScriptedUpstream::start_on(0, script)
    }

    /// The same on `port` (0: a free one), for an upstream that appears
    /// where the proxy already points.
    pub fn start_on(port: u16, script: Vec<(u16, Vec<(String, String)>)>) -> ScriptedUpstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let times = Arc::new(Mutex::new(Vec::new()));
        let seen = times.clone();
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if read_request(&mut stream).is_none() {
                    continue;
                }
                seen.lock().unwrap().push(Instant::now());
                let (status, headers) = script.next().unwrap_or((200, Vec::new()));
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n"
                );
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n{}");
                let _ = stream.write_all(head.as_bytes());
            }
        });
        ScriptedUpstream { port, times }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// When each request came, in order.
    pub fn times(&self) -> Vec<Instant> {
        self.times.lock().unwrap().clone()
    }
}

/// One request a [`Recorder`] received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    /// The request line and headers, lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 endpoint on 127.0.0.1 that answers every request `200 {}`
/// and records each (a fake scaler's wake endpoint). One thread, one request
/// a connection, until the test ends.
pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some((head, body)) = read_request(&mut stream) else {
                    continue;
                };
                sink.lock().unwrap().push(Recorded {
                    at: Instant::now(),
                    head,
                    body,
                });
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            }
        });
        Recorder { port, seen }
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one request's head (lowercased) and its `content-length` body;
/// `None` when the peer closed first.
pub fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Some((head, raw[head_end..head_end + length].to_vec()))
}
