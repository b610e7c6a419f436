//! What clients see: the vendors' Python snippets run unchanged, and the
//! live page in headless Chromium.

use super::*;

#[test]
fn the_vendors_python_client_snippets_run_unchanged() {
    if !have("python3", "the client snippets") || !have("curl", "the Bifrost snippet") {
        return;
    }
    let proxy = Proxy::start(&[
        "--dialect",
        "baseten",
        "--dialect",
        "bifrost",
        "--model-id",
        "demo-model",
        "--deployment-id",
        "demo-deployment",
        "--token",
        "snippet-token",
    ]);
    let out = Command::new("python3")
        .arg("tests/clients/snippets.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BASE_URL", proxy.base())
        .env("TOKEN", "snippet-token")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}

/// The text of the element with `id` in a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let rest = &dom[start..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    &text[..text.find('<').unwrap()]
}

#[test]
fn the_live_page_shows_what_the_api_says() {
    if !have("chromium", "the live page test") {
        return;
    }
    let proxy = Proxy::start(&["--token", "page-token", "--concurrency", "1"]);
    // One job running for a while, two queued behind it, and nothing moving.
    let running = proxy.submit(Some("page-token"), json!({"demo_delay_ms": 30000}));
    proxy.wait_status(Some("page-token"), &running, "in_progress");
    let queued = [
        proxy.submit(Some("page-token"), json!({"n": 1})),
        proxy.submit(Some("page-token"), json!({"n": 2})),
    ];
    let stats = proxy.get("/async/queue", Some("page-token")).json();
    assert_eq!(
        (stats["queued"].as_u64(), stats["in_progress"].as_u64()),
        (Some(2), Some(1))
    );

    let profile = std::env::temp_dir().join(format!("tower-defer-chromium-{}", std::process::id()));
    let url = format!("{}/async/ui#token=page-token", proxy.base());
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let shown = |id| element_text(&dom, id).trim().to_owned();
    assert_eq!(shown("error"), "", "{dom}");
    for field in ["queued", "in_progress", "retrying"] {
        assert_eq!(shown(field), stats[field].to_string(), "#{field} in\n{dom}");
    }
    let recent = proxy.get("/async/recent", Some("page-token")).json();
    let rows = dom.matches("<tr data-id=").count();
    assert_eq!(rows, recent["jobs"].as_array().unwrap().len(), "{dom}");
    assert_eq!(rows, 3);
    for id in queued.iter().chain([&running]) {
        assert!(dom.contains(&format!("data-id=\"{id}\"")), "{id} in\n{dom}");
    }
}
