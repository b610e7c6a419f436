//! Redis as production runs it: TLS with a private CA, an ACL user limited
//! to the store's namespace, connect and command timeouts; and each way
//! connecting goes wrong, named in the error, which arrives rather than hangs.

use std::time::Duration;

use tower_defer::{RedisStore, RedisStoreBuilder};
use tower_defer_testkit::redis::Config;
use tower_defer_testkit::redis_or_skip;

/// A password with the characters a URL must percent-encode.
const PASSWORD: &str = "p@ss:w/rd%";

/// The ACL rule the README gives a store's user in namespace `ns`.
fn acl_user(ns: &str) -> String {
    format!(
        "app on >{PASSWORD} ~{{{ns}}}:* &{{{ns}}}:* +@read +@write +@pubsub +@connection \
         -@dangerous +fcall +function|load"
    )
}

/// The error `builder` fails with. A guard, not a measure: the error must
/// come, and ten seconds is far more than any of these cases takes.
async fn refused(builder: RedisStoreBuilder) -> String {
    let result = tokio::time::timeout(Duration::from_secs(10), builder.connect())
        .await
        .expect("connect must fail, not hang");
    let e = result.expect_err("must not connect");
    assert!(e.is_unavailable(), "{e}");
    e.to_string()
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_over_tls_with_a_private_ca_runs_jobs_across_replicas() {
    use serde_json::json;
    use tower::Layer;
    use tower_defer::DeferLayer;
    use tower_defer_testkit::inproc::{finished_within, submit};

    let server = redis_or_skip!(Config {
        tls: true,
        users: vec![acl_user("app")],
        ..Config::default()
    });
    let ca = server.ca_pem().unwrap();
    let store = || {
        RedisStore::builder(server.url_as("app", PASSWORD))
            .namespace("app")
            .root_certificates(ca)
            .connect()
    };
    let counter = crate::Counter::default();
    // A has no worker: B runs the job, and A hears of its end by pub/sub.
    let (a, _a_worker) =
        DeferLayer::new(store().await.expect("A connects")).pair(counter.service("a"));
    let b = DeferLayer::new(store().await.expect("B connects")).layer(counter.service("b"));
    let id = submit(&a, json!({"data": "over TLS"})).await;
    let done = finished_within(&a, &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    drop(b);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_certificate_from_a_ca_not_trusted_is_refused_and_said_so() {
    let server = redis_or_skip!(Config {
        tls: true,
        ..Config::default()
    });
    let port = server.port;
    // Mozilla's roots only: the test's CA is not among them.
    assert_eq!(
        refused(RedisStore::builder(server.url())).await,
        format!(
            "redis: the TLS certificate of 127.0.0.1:{port} is not trusted (invalid peer \
             certificate: UnknownIssuer): a server with a private CA needs that CA's \
             certificate as a root"
        )
    );
    // Another CA's certificate.
    let other = tower_defer_testkit::tls::PrivateCa::new();
    assert_eq!(
        refused(RedisStore::builder(server.url()).root_certificates(other.ca_pem)).await,
        format!(
            "redis: the TLS certificate of 127.0.0.1:{port} is not trusted by the root \
             certificates given (invalid peer certificate: UnknownIssuer): they do not \
             hold the CA that signed it"
        )
    );
}

#[tokio::test]
async fn a_wrong_password_a_missing_one_and_a_user_outside_its_namespace_are_named() {
    let server = redis_or_skip!(Config {
        users: vec![acl_user("app")],
        ..Config::default()
    });
    let port = server.port;
    assert_eq!(
        refused(RedisStore::builder(server.url_as("app", "wrong")).namespace("app")).await,
        format!(
            "redis: authentication failed: 127.0.0.1:{port} refused the user name and \
             password (WRONGPASS: a wrong user name or password, or a disabled user)"
        )
    );
    assert_eq!(
        refused(RedisStore::builder(server.url()).namespace("app")).await,
        format!(
            "redis: 127.0.0.1:{port} requires authentication (NOAUTH): give a user name \
             and password in the URL, redis://USER:PASSWORD@HOST:PORT/DB"
        )
    );
    // The user's keys are `{app}:*`; the default namespace is not among them.
    let message = refused(RedisStore::builder(server.url_as("app", PASSWORD))).await;
    assert!(
        message.starts_with("redis: the user lacks a permission the store needs (")
            && message.ends_with(
                "): it needs the keys and channels {tower-defer}:* (see the ACL rule under \
                 \"Redis in production\" in tower-defer's README)"
            ),
        "{message}"
    );
    // And with the rule's namespace, the same user connects.
    RedisStore::builder(server.url_as("app", PASSWORD))
        .namespace("app")
        .connect()
        .await
        .expect("the README's ACL rule is enough for the store");
}

/// A plain-text Redis behind `rediss://` either never answers the TLS
/// handshake (it waits for the end of a line that never comes) or answers
/// it with a plain-text error: both are said to be a server that may not
/// speak TLS, and the connect timeout ends the first.
#[cfg(feature = "tls")]
#[tokio::test]
async fn a_plain_text_server_behind_rediss_is_named_within_the_connect_timeout() {
    let server = redis_or_skip!(false);
    let port = server.port;
    let url = server.url().replace("redis://", "rediss://");
    let message = refused(
        RedisStore::builder(url)
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(60)),
    )
    .await;
    assert!(
        message.starts_with(&format!("redis: the TLS handshake with 127.0.0.1:{port} "))
            && message.ends_with(
                ": the server may not speak TLS (rediss:// needs its TLS port; a plain-text \
                 Redis is redis://)"
            ),
        "{message}"
    );

    // A server that takes the connection and never says a word: only the
    // connect timeout (not the 60 s command timeout) ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.incoming().take(64).collect::<Vec<_>>());
    assert_eq!(
        refused(
            RedisStore::builder(format!("rediss://127.0.0.1:{port}/0"))
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(60))
        )
        .await,
        format!(
            "redis: the TLS handshake with 127.0.0.1:{port} did not finish within 300 ms: \
             the server may not speak TLS (rediss:// needs its TLS port; a plain-text Redis \
             is redis://)"
        )
    );
    // The same server behind redis://: reached, and silent.
    assert_eq!(
        refused(
            RedisStore::builder(format!("redis://127.0.0.1:{port}/0"))
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(60))
        )
        .await,
        format!("redis: 127.0.0.1:{port} took the connection but did not answer within 300 ms")
    );
    drop(held);
}

/// Loading the functions is a command: the command timeout bounds it, not
/// the connect timeout. `CLIENT PAUSE WRITE` holds every write (`FUNCTION
/// LOAD` among them) while letting a connection be made.
#[tokio::test]
async fn the_command_timeout_bounds_the_commands_of_connecting() {
    let server = redis_or_skip!(false);
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let paused: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(paused, "OK");
    assert_eq!(
        refused(
            RedisStore::builder(server.url())
                .connect_timeout(Duration::from_secs(60))
                .timeout(Duration::from_millis(300))
        )
        .await,
        "redis: load functions timed out after 300 ms"
    );
}

#[tokio::test]
async fn a_server_not_listening_is_named() {
    let port = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap().port()
    };
    assert_eq!(
        refused(RedisStore::builder(format!("redis://127.0.0.1:{port}/0"))).await,
        format!("redis: 127.0.0.1:{port} refused the connection (is Redis listening there?)")
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn root_certificates_are_checked_before_connecting() {
    let ca = tower_defer_testkit::tls::PrivateCa::new();
    assert_eq!(
        refused(RedisStore::builder("redis://127.0.0.1:1/0").root_certificates(ca.ca_pem.clone()))
            .await,
        "redis: root certificates are for a rediss:// URL, and this one is not"
    );
    assert_eq!(
        refused(RedisStore::builder("rediss://127.0.0.1:1/0").root_certificates(ca.key_pem)).await,
        "redis: the root certificates hold no certificate (PEM: -----BEGIN CERTIFICATE-----)"
    );
}

#[test]
fn a_builders_debug_never_shows_the_password() {
    let builder = RedisStore::builder("rediss://app:p%40ss@redis.internal:6380/0");
    let shown = format!("{builder:?}");
    assert!(
        shown.contains("rediss://****@redis.internal:6380/0"),
        "{shown}"
    );
    assert!(
        !shown.contains("p%40ss") && !shown.contains("app:"),
        "{shown}"
    );
}
