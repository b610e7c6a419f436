//! A private `redis-server` per test or benchmark.
//!
//! Each [`RedisServer`] runs on a free port of 127.0.0.1 in a temp dir of its
//! own and is killed when dropped, so tests never share a server's data or
//! touch one the machine runs. Without a `redis-server` binary the caller is
//! told to skip, unless `CI` is set, where that is a failure: CI must run the
//! Redis tests, not pass by skipping them.
//!
//! A [`Config`] runs it as production does: TLS only, with a certificate from
//! a private CA made for the test, and ACL users with the default user off.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_rustls::rustls;

use crate::tls::PrivateCa;

/// How a [`RedisServer`] runs. `false` and `true` convert to a plain server
/// without and with an append-only file.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// An append-only file, synced at every write, so that a
    /// [`restart`](RedisServer::restart) after a SIGKILL finds everything
    /// acknowledged (with `everysec`, Redis may hold a write back for up to
    /// two seconds while a sync runs, and a kill loses it).
    pub appendonly: bool,
    /// TLS only on the port (no plain-text port), presenting a certificate
    /// signed by a fresh private CA: [`RedisServer::ca_file`].
    pub tls: bool,
    /// ACL users, one rule each as `ACL SETUSER` takes it (`app on >secret
    /// ~* +@all`). When any is given the default user is off, so every
    /// client must authenticate.
    pub users: Vec<String>,
}

impl From<bool> for Config {
    fn from(appendonly: bool) -> Self {
        Config {
            appendonly,
            ..Config::default()
        }
    }
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    config: Config,
    ca: Option<PrivateCa>,
    /// Kept for a restart, which must start the same server.
    extra_args: Vec<String>,
}

/// Starts a server (`false`, `true` or a [`Config`]), or skips the calling
/// test (returns from it) when there is no `redis-server` and `CI` is not set.
#[macro_export]
macro_rules! redis_or_skip {
    ($config:expr) => {
        match $crate::redis::RedisServer::start($config) {
            Some(server) => server,
            None => return,
        }
    };
}

impl RedisServer {
    /// A fresh server as `config` says (`true`: with an append-only file);
    /// `None` when there is no `redis-server` and `CI` is unset.
    pub fn start(config: impl Into<Config>) -> Option<Self> {
        if !installed_or_skip("redis-server") {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Some(Self::launch(config.into(), port, Vec::new()))
    }

    /// A server as `config` says on `port`, in a fresh temp dir, with
    /// `extra_args` after the ones `config` makes (a cluster node's). The
    /// caller has checked that `redis-server` is installed.
    pub(crate) fn launch(config: Config, port: u16, extra_args: Vec<String>) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-defer-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let ca = config.tls.then(|| {
            let ca = PrivateCa::new();
            std::fs::write(dir.join("ca.pem"), &ca.ca_pem).expect("write ca.pem");
            std::fs::write(dir.join("server.pem"), &ca.cert_pem).expect("write server.pem");
            std::fs::write(dir.join("server.key"), &ca.key_pem).expect("write server.key");
            ca
        });
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            config,
            ca,
            extra_args,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        if self.config.tls {
            command
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &port]);
        }
        if !self.config.users.is_empty() {
            command.args(["--user", "default", "off"]);
            for rule in &self.config.users {
                // One word an argument: redis-server joins them into the
                // config line `user <rule>`.
                command.arg("--user").args(rule.split_whitespace());
            }
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .args([
                "--appendonly",
                if self.config.appendonly { "yes" } else { "no" },
            ])
            .args(["--appendfsync", "always"])
            .args(&self.extra_args)
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
        // The port is chosen free, then released for redis-server to bind,
        // and a restart frees it again: another process may take it in
        // between, and answer the ping. Then this server is not ours, and
        // a test would read another test's data: say so rather than that.
        if self.config.users.is_empty() {
            let ours = self.child.as_ref().map(Child::id);
            let answering = self.ask("INFO server").and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("process_id:")?.trim().parse::<u32>().ok())
            });
            assert_eq!(
                answering, ours,
                "port {} answers for another process than the redis-server started on it",
                self.port
            );
        }
    }

    /// Whether the server answers: `+PONG`, or `-NOAUTH` when the default
    /// user is off (it answers, which is all this asks).
    fn answers_ping(&self) -> bool {
        self.ask("PING")
            .is_some_and(|line| line.starts_with("+PONG") || line.starts_with("-NOAUTH"))
    }

    /// Sends one inline command and reads the answer: a status line, or a
    /// bulk string's contents.
    fn ask(&self, command: &str) -> Option<String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
        match &self.ca {
            Some(ca) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = rustls::ClientConnection::new(ca.client_config(), name).ok()?;
                answer(rustls::StreamOwned::new(tls, tcp), command)
            }
            None => answer(tcp, command),
        }
    }

    /// The CPU time, user and system, of the server's main thread: the one
    /// that runs commands, so the one a benchmark saturates.
    pub fn main_thread_cpu(&self) -> Duration {
        let info = self
            .ask("INFO cpu")
            .unwrap_or_else(|| panic!("port {} does not answer INFO cpu", self.port));
        let seconds = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("INFO cpu has no {name}: an old Redis?"))
        };
        Duration::from_secs_f64(
            seconds("used_cpu_user_main_thread") + seconds("used_cpu_sys_main_thread"),
        )
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://` with [`Config::tls`].
    pub fn url(&self) -> String {
        let scheme = if self.config.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// [`url`](Self::url) with a user name and password, percent-encoded as
    /// a URL must have them.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let url = self.url();
        let (scheme, rest) = url.split_once("://").unwrap();
        format!(
            "{scheme}://{}:{}@{rest}",
            percent_encoded(user),
            percent_encoded(password)
        )
    }

    /// The PEM file of the private CA that signed a TLS server's
    /// certificate (`--redis-ca`); `None` without [`Config::tls`].
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(|_| self.dir.join("ca.pem"))
    }

    /// That CA's certificate, as PEM text.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|ca| ca.ca_pem.as_str())
    }

    /// The server's own directory (its files, and room for a test's).
    pub fn dir(&self) -> &Path {
        &self.dir
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

/// Whether `program` runs. When it does not, the caller is to skip: says so
/// and returns `false`, or panics when `CI` is set.
pub(crate) fn installed_or_skip(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{program} is not installed, and CI is set: the Redis tests must run");
        }
        eprintln!("SKIPPED: {program} is not installed (install it to run the Redis tests and benchmarks)");
    }
    found
}

/// Sends `command` inline and reads its answer: the first line, or for a
/// bulk string (`$LEN`) the string itself.
fn answer(mut stream: impl Read + Write, command: &str) -> Option<String> {
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let Some(len) = line.strip_prefix('$') else {
        return Some(line);
    };
    let mut bulk = vec![0; len.trim().parse::<usize>().ok()? + 2];
    reader.read_exact(&mut bulk).ok()?;
    bulk.truncate(bulk.len() - 2);
    String::from_utf8(bulk).ok()
}

/// Every byte but the URL's unreserved characters as `%XX`.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
