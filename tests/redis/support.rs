//! Shared by the Redis tests: a private `redis-server` per test, and the
//! layer called in process.
//!
//! Each [`RedisServer`] runs on a free port of 127.0.0.1 in a temp dir of its
//! own and is killed when dropped. Without a `redis-server` binary the tests
//! are skipped with a message, unless `CI` is set, where that is a failure.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_defer::{Body, Defer, InnerService, RedisStore};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    appendonly: bool,
}

/// Starts a server, or skips the calling test (returns from it) when there
/// is no `redis-server` and `CI` is not set.
#[macro_export]
macro_rules! redis_or_skip {
    ($appendonly:expr) => {
        match $crate::support::RedisServer::start($appendonly) {
            Some(server) => server,
            None => return,
        }
    };
}

impl RedisServer {
    pub fn start(appendonly: bool) -> Option<Self> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is not installed, and CI is set: the Redis tests must run");
            }
            eprintln!("SKIPPED: redis-server is not installed (install it to run the Redis tests and benchmarks)");
            return None;
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-defer-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            appendonly,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server with SIGKILL (no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (its AOF, if any).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A store on `server` in namespace `ns`, on a running clock.
pub async fn store(server: &RedisServer, ns: &str) -> RedisStore {
    RedisStore::builder(server.url())
        .namespace(ns)
        .connect()
        .await
        .expect("connects to the test's redis-server")
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn call<S: InnerService>(app: &Defer<S, RedisStore>, req: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(req)
        .await
        .map_err(Into::into)
        .expect("the layer answered");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(Into::into)
        .expect("the body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn submit_request(data: &serde_json::Value) -> Request<Body> {
    Request::post("/async")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::json!({ "data": data }).to_string()))
        .unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Submits and returns the id.
pub async fn submit<S: InnerService>(
    app: &Defer<S, RedisStore>,
    data: &serde_json::Value,
) -> String {
    let a = call(app, submit_request(data)).await;
    assert_eq!(a.status, 201, "{:?}", String::from_utf8_lossy(&a.body));
    a.json()["id"].as_str().unwrap().to_owned()
}

/// Long-polls until the job ended; its status document.
pub async fn finished<S: InnerService>(
    app: &Defer<S, RedisStore>,
    id: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not finish within {within:?}"
        );
        let req = Request::get(format!("/async/{id}"))
            .header("prefer", "wait=5")
            .body(Body::empty())
            .unwrap();
        let a = call(app, req).await;
        if a.status == 200 {
            return a.json();
        }
        assert_eq!(a.status, 202, "{:?}", String::from_utf8_lossy(&a.body));
    }
}
