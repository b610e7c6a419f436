//! The program on Redis as production runs it: `rediss://` with a private CA
//! (`--redis-ca`), an ACL user whose password a URL must percent-encode,
//! `--redis-namespace` and the timeouts; the start summary never shows the
//! password; and each way connecting goes wrong ends the start with exit
//! code 1 and a message naming the cause.

use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use tower_defer_testkit::redis::Config;
use tower_defer_testkit::redis_or_skip;

use crate::summary_line;
use crate::support::{proxy_binary, Proxy};

/// Holds `@`, `:`, `/` and `%`: percent-encoded in a URL, whole in a flag.
const PASSWORD: &str = "p@ss:w/rd%";
/// The same, as the URL holds it.
const ENCODED: &str = "p%40ss%3Aw%2Frd%25";

/// The README's ACL rule for a store in namespace `app`.
fn acl_user() -> String {
    format!(
        "app on >{PASSWORD} ~{{app}}:* &{{app}}:* +@read +@write +@pubsub +@connection \
         -@dangerous +fcall +function|load"
    )
}

fn tls_server_with_user() -> Config {
    Config {
        tls: true,
        users: vec![acl_user()],
        ..Config::default()
    }
}

/// Runs the program with `args` (and `env`) until it exits, which must be
/// within ten seconds (a guard against a hang, not a measure): its status,
/// stdout and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let child = Command::new(proxy_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(out) => {
            let out = out.unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status, text(&out.stdout), text(&out.stderr))
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the proxy neither started nor exited within 10 s: {args:?}");
        }
    }
}

/// The one line the program wrote on stderr about why it stopped.
fn failure(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("tower-defer: "))
        .unwrap_or_else(|| panic!("no failure line in:\n{stderr}"))
}

/// Starts the program on `store` with the given connect and command
/// timeouts, expects it to stop with exit code 1, and returns its failure line.
fn start_fails(store: &str, connect_timeout: &str, timeout: &str) -> String {
    let (status, _, stderr) = run_to_exit(
        &[
            "--store",
            store,
            "--redis-connect-timeout",
            connect_timeout,
            "--redis-timeout",
            timeout,
        ],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    failure(&stderr).to_owned()
}

#[test]
fn an_acl_user_over_rediss_connects_and_the_summary_masks_its_password() {
    let redis = redis_or_skip!(tls_server_with_user());
    let port = redis.port;
    let ca = redis.ca_file().unwrap();
    let ca = ca.to_str().unwrap();
    let url = redis.url_as("app", PASSWORD);
    assert!(url.contains(ENCODED), "{url}");

    let proxy = Proxy::start(&[
        "--store",
        &url,
        "--redis-ca",
        ca,
        "--redis-namespace",
        "app",
        "--redis-connect-timeout",
        "5s",
        "--redis-timeout",
        "3s",
    ]);
    // The user may touch `{app}:*` only: a job that runs went through it.
    let id = proxy.submit(None, json!({"demo_delay_ms": 0}));
    assert_eq!(proxy.wait_done(None, &id)["status"], "succeeded");
    let stdout = proxy.stdout();
    assert_eq!(
        summary_line(&stdout, "store"),
        format!(
            "rediss://app:****@127.0.0.1:{port}/0 (TLS, trusting only {ca}; namespace app; \
             connect timeout 5s, timeout 3s)"
        )
    );
    let printed = stdout + &proxy.stderr();
    for secret in [PASSWORD, ENCODED, "w/rd", "w%2Frd"] {
        assert!(!printed.contains(secret), "{secret:?} printed:\n{printed}");
    }

    // The password apart from the URL, from the environment: the same.
    let user_only = redis.url().replace("rediss://", "rediss://app@");
    let proxy = Proxy::start_with_env(
        &[
            "--store",
            &user_only,
            "--redis-ca",
            ca,
            "--redis-namespace",
            "app",
        ],
        &[("TOWER_DEFER_REDIS_PASSWORD", PASSWORD)],
    );
    let id = proxy.submit(None, json!({"demo_delay_ms": 0}));
    assert_eq!(proxy.wait_done(None, &id)["status"], "succeeded");
    let stdout = proxy.stdout();
    assert!(
        summary_line(&stdout, "store").starts_with(&format!(
            "rediss://app:****@127.0.0.1:{port}/0 (TLS, trusting only {ca}; namespace app;"
        )),
        "{stdout}"
    );
    let printed = stdout + &proxy.stderr();
    for secret in [PASSWORD, ENCODED, "w/rd", "w%2Frd"] {
        assert!(!printed.contains(secret), "{secret:?} printed:\n{printed}");
    }
}

#[test]
fn a_wrong_password_or_an_untrusted_certificate_stops_the_start_and_says_which() {
    let redis = redis_or_skip!(tls_server_with_user());
    let port = redis.port;
    let ca = redis.ca_file().unwrap();
    let ca = ca.to_str().unwrap();

    let wrong = redis.url_as("app", "wrong");
    let (status, _, stderr) = run_to_exit(
        &[
            "--store",
            &wrong,
            "--redis-ca",
            ca,
            "--redis-namespace",
            "app",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        failure(&stderr),
        format!(
            "tower-defer: --store rediss://app:****@127.0.0.1:{port}/0: redis: authentication \
             failed: 127.0.0.1:{port} refused the user name and password (WRONGPASS: a wrong \
             user name or password, or a disabled user)"
        )
    );

    let right = redis.url_as("app", PASSWORD);
    let (status, _, stderr) = run_to_exit(&["--store", &right, "--redis-namespace", "app"], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        failure(&stderr),
        format!(
            "tower-defer: --store rediss://app:****@127.0.0.1:{port}/0: redis: the TLS \
             certificate of 127.0.0.1:{port} is not trusted (invalid peer certificate: \
             UnknownIssuer): a server with a private CA needs that CA's certificate as a \
             root: give it with --redis-ca FILE"
        )
    );
    assert!(!stderr.contains(ENCODED), "{stderr}");

    // Without --redis-namespace the store's keys are `{tower-defer}:*`,
    // which the user may not touch.
    let (status, _, stderr) = run_to_exit(&["--store", &right, "--redis-ca", ca], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = failure(&stderr);
    assert!(
        line.contains("redis: the user lacks a permission the store needs (")
            && line.contains("it needs the keys and channels {tower-defer}:*"),
        "{line}"
    );
}

#[test]
fn a_plain_text_redis_behind_rediss_stops_the_start_within_the_connect_timeout() {
    let redis = redis_or_skip!(false);
    let port = redis.port;
    let url = redis.url().replace("redis://", "rediss://");
    let line = start_fails(&url, "500ms", "1m");
    assert!(
        line.starts_with(&format!(
            "tower-defer: --store {url}: redis: the TLS handshake with 127.0.0.1:{port} "
        )) && line.ends_with(
            ": the server may not speak TLS (rediss:// needs its TLS port; a plain-text Redis \
             is redis://)"
        ),
        "{line}"
    );

    // A server that takes the connection and never answers: the connect
    // timeout given ends the start, and the message names it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.incoming().take(64).collect::<Vec<_>>());
    let url = format!("rediss://127.0.0.1:{port}/0");
    assert_eq!(
        start_fails(&url, "500ms", "1m"),
        format!(
            "tower-defer: --store {url}: redis: the TLS handshake with 127.0.0.1:{port} did \
             not finish within 500 ms: the server may not speak TLS (rediss:// needs its TLS \
             port; a plain-text Redis is redis://)"
        )
    );
    drop(held);
}

/// `CLIENT PAUSE WRITE` holds `FUNCTION LOAD`, the first command of a
/// start, but not the connection: `--redis-timeout` is what ends it.
#[test]
fn the_redis_command_timeout_bounds_the_start() {
    let redis = redis_or_skip!(false);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let paused: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("WRITE")
        .query(&mut conn)
        .unwrap();
    assert_eq!(paused, "OK");
    assert_eq!(
        start_fails(&redis.url(), "1m", "300ms"),
        format!(
            "tower-defer: --store {}: redis: load functions timed out after 300 ms",
            redis.url()
        )
    );
}

#[test]
fn redis_flags_that_do_not_fit_the_store_exit_2() {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--store",
                "redis://127.0.0.1:6379/0",
                "--redis-ca",
                "ca.pem",
            ],
            "tower-defer: --redis-ca ca.pem: the store redis://127.0.0.1:6379/0 is not rediss://",
        ),
        (
            &["--redis-ca", "ca.pem"],
            "tower-defer: --redis-ca ca.pem: the store is memory, not rediss://",
        ),
        (
            &[
                "--store",
                "rediss://app:s3cr3t-pw@127.0.0.1:6379/0",
                "--redis-password",
                "other",
            ],
            "tower-defer: --redis-password: the --store URL holds a password already; give it once",
        ),
        (
            &[
                "--store",
                "rediss://127.0.0.1:1/0",
                "--redis-ca",
                "/nonexistent/ca.pem",
            ],
            "tower-defer: --redis-ca /nonexistent/ca.pem: No such file or directory (os error 2)",
        ),
    ];
    for (args, expected) in cases {
        let (status, _, stderr) = run_to_exit(args, &[]);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(failure(&stderr), expected, "{args:?}");
        assert!(!stderr.contains("s3cr3t-pw"), "{stderr}");
    }
    // A namespace Redis Cluster's hash tag cannot hold: refused by the parser.
    let (status, _, stderr) = run_to_exit(&["--redis-namespace", "a{b}"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--redis-namespace"), "{stderr}");
}

/// On a Redis Cluster: the nodes in `--store`, `--redis-cluster`, three
/// shards and replicated durability; jobs run, and the summary says so.
#[test]
fn the_program_runs_on_a_redis_cluster_with_shards() {
    use tower_defer_testkit::cluster::RedisCluster;
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let urls = cluster.urls();
    let seeds = urls[..3].join(",");
    let proxy = Proxy::start(&[
        "--store",
        &seeds,
        "--redis-cluster",
        "--redis-namespace",
        "program",
        "--redis-shards",
        "3",
        "--redis-durability",
        "replicated",
    ]);
    let ids: Vec<String> = (0..6)
        .map(|i| proxy.submit(None, json!({ "demo_delay_ms": 0, "n": i })))
        .collect();
    for id in &ids {
        assert_eq!(proxy.wait_done(None, id)["status"], "succeeded");
    }
    assert_eq!(
        summary_line(&proxy.stdout(), "store"),
        format!(
            "{} (plain text; cluster; namespace program, 3 shards; durability replicated; \
             connect timeout 2s, timeout 2s)",
            seeds
        )
    );
}
