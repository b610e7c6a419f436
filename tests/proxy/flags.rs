//! The command line: `--version`, `--help`, flags from the environment,
//! and bad ones.

use super::*;

#[test]
fn version_and_help_name_the_program_and_every_flag() {
    let version = Command::new(support::proxy_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tower-defer {}", env!("CARGO_PKG_VERSION"))
    );

    let help = Command::new(support::proxy_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: tower-defer [OPTIONS]"), "{help}");
    for flag in [
        "--listen",
        "--upstream",
        "--store",
        "--token",
        "--webhook-secret",
        "--dialect",
        "--access-log",
        "--wake-url",
        "--wake-interval",
        "--wake-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("[env: TOWER_DEFER_LISTEN="), "{help}");
}

#[test]
fn flags_come_from_the_environment_and_bad_ones_exit_2() {
    let proxy = Proxy::start_with_env(
        &[],
        &[
            ("TOWER_DEFER_PREFIX", "/jobs"),
            ("TOWER_DEFER_TOKEN", "env-a,env-b"),
            ("TOWER_DEFER_LOG_FORMAT", "json"),
        ],
    );
    let reply = proxy.post("/jobs", Some("env-b"), &json!({"data": {}}));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert!(reply.header("location").unwrap().starts_with("/jobs/"));
    assert!(proxy.stdout().contains("2 (token-"), "{}", proxy.stdout());
    // --log-format json: one JSON object a line on stderr.
    let logs = proxy.stderr();
    assert!(!logs.is_empty());
    for line in logs.lines() {
        let _: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    let mut bad = vec![
        (&["--store", "memcached://x"][..], "--store"),
        (&["--concurrency", "0"][..], "--concurrency"),
        (&["--result-ttl", "1w"][..], "unknown unit"),
        (&["--dialect", "openai"][..], "--dialect"),
        (
            &["--tokens-file", "/nonexistent/tokens"][..],
            "--tokens-file",
        ),
        (
            &["--upstream-ca", "/nonexistent/ca.pem"][..],
            "--upstream-ca: there is no --upstream to trust it for",
        ),
        (
            &[
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-ca",
                "/nonexistent/ca.pem",
            ][..],
            "--upstream-ca /nonexistent/ca.pem: the upstream http://127.0.0.1:9/ is not https",
        ),
    ];
    bad.extend([
        (
            &["--upstream", "https://localhost:9", "--upstream-ca", "/nonexistent/ca.pem"][..],
            "--upstream-ca /nonexistent/ca.pem: No such file or directory",
        ),
        (
            &["--upstream", "https://localhost:9", "--upstream-ca", "/dev/null"][..],
            "--upstream https://localhost:9/: a root certificate for the upstream holds no PEM certificate",
        ),
    ]);
    for (args, says) in bad {
        let out = Command::new(support::proxy_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
