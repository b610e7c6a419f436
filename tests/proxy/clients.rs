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
        .args(CHROMIUM)
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

/// Headless Chromium's flags for a page of known size: the same layout in
/// a DOM dump as in a screenshot, one CSS pixel a pixel.
const CHROMIUM: [&str; 12] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=1400,1300",
    "--virtual-time-budget=4000",
];

/// Runs headless Chromium on `url` with `action` (`--dump-dom`, or
/// `--screenshot=<file>`) in a profile of its own; its stdout.
fn chromium(action: &str, url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "tower-defer-chromium-{}-{}",
        std::process::id(),
        action.len()
    ));
    let out = Command::new("chromium")
        .args(CHROMIUM)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([action, url])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of attribute `name` on the element with `id` in a dumped DOM.
fn attribute<'a>(dom: &'a str, id: &str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let tag = &dom[dom[..start].rfind('<').unwrap()..];
    let tag = &tag[..tag.find('>').unwrap()];
    let value = tag
        .split(&format!(" {name}=\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} on #{id}: {tag}"));
    &value[..value.find('"').unwrap()]
}

/// How many pixels of `image` (RGBA or RGB rows) in the box `x,y,w,h` are
/// strongly coloured: a chart's series, not its grey grid, axes and labels
/// on white.
fn coloured_pixels(image: &(png::OutputInfo, Vec<u8>), plot: &str) -> usize {
    let (info, data) = image;
    let channels = info.color_type.samples();
    let b: Vec<usize> = plot.split(',').map(|n| n.parse().unwrap()).collect();
    let (x0, y0, w, h) = (b[0], b[1], b[2], b[3]);
    assert!(x0 + w <= info.width as usize && y0 + h <= info.height as usize);
    let mut n = 0;
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            let i = y * info.line_size + x * channels;
            let px = &data[i..i + 3];
            let (max, min) = (px.iter().max().unwrap(), px.iter().min().unwrap());
            if max - min > 80 {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn two_replicas_on_one_redis_show_each_others_jobs_and_charts_on_the_live_page() {
    if !have("chromium", "the live page test") {
        return;
    }
    let redis = tower_defer_testkit::redis_or_skip!(false);
    let url = redis.url();
    let token = Some("page-token");
    let start = || {
        Proxy::start(&[
            "--store",
            &url,
            "--token",
            "page-token",
            "--concurrency",
            "2",
        ])
    };
    let (a, b) = (start(), start());

    // Through each replica: jobs that succeed, one that fails; through b,
    // one canceled while it runs.
    let mut done = Vec::new();
    for (proxy, delay) in [(&a, 50), (&b, 300)] {
        for n in 0..3 {
            done.push(proxy.submit(token, json!({"n": n, "demo_delay_ms": delay})));
        }
    }
    let failed = b.submit(token, json!({"demo_status": 422, "demo_delay_ms": 100}));
    let canceled = b.submit(token, json!({"demo_delay_ms": 60000}));
    b.wait_status(token, &canceled, "in_progress");
    let reply = b.call(
        "DELETE",
        &format!("/async/{canceled}"),
        &[("authorization".into(), "Bearer page-token".into())],
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    for id in done.iter().chain([&failed]) {
        a.wait_done(token, id);
    }
    // Then a backlog: four long jobs take every slot of both, three wait.
    for _ in 0..4 {
        a.submit(token, json!({"demo_delay_ms": 60000}));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.get("/async/queue", token).json()["in_progress"] != 4 {
        assert!(Instant::now() < deadline, "the long jobs never all ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let waiting: Vec<String> = (0..3).map(|n| b.submit(token, json!({"w": n}))).collect();

    // Both replicas flush every 2 s; the activity document ends with the
    // last complete 10-second bucket. Read through a: b's jobs are there.
    let deadline = Instant::now() + Duration::from_secs(40);
    let activity = loop {
        let doc = a.get("/async/activity", token).json();
        let buckets = doc["buckets"].as_array().unwrap().clone();
        let sum = |status: &str| -> u64 {
            buckets
                .iter()
                .map(|b| b["finished"][status].as_u64().unwrap())
                .sum()
        };
        if (sum("succeeded"), sum("failed"), sum("canceled")) == (6, 1, 1) {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "the activity never added up: {doc}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let runs: u64 = activity["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["run_seconds"]["count"].as_u64().unwrap())
        .sum();
    assert!(runs >= 8, "{activity}");
    let every: Vec<&String> = done
        .iter()
        .chain([&failed, &canceled])
        .chain(&waiting)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recent = a.get("/async/recent", token).json();
        let listed: Vec<&str> = recent["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        if every.iter().all(|id| listed.contains(&id.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "not every job in {recent}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let only_failed = a.get("/async/recent?status=failed", token).json();
    assert_eq!(only_failed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(only_failed["jobs"][0]["id"], failed.as_str());

    // The page on a: every replica's jobs, and the failed one's detail.
    let page = format!("{}/async/ui#token=page-token&job={failed}", a.base());
    let dom = chromium("--dump-dom", &page);
    assert_eq!(element_text(&dom, "error").trim(), "", "{dom}");
    for id in &every {
        assert!(dom.contains(&format!("data-id=\"{id}\"")), "{id} in\n{dom}");
    }
    assert_eq!(element_text(&dom, "detail-id"), failed, "{dom}");
    assert_eq!(attribute(&dom, "detail-status", "data-status"), "failed");
    assert_eq!(element_text(&dom, "detail-code"), "422");
    assert_eq!(element_text(&dom, "detail-attempts"), "1");
    assert!(
        element_text(&dom, "detail-output").contains(r#""model":"demo""#),
        "{dom}"
    );
    assert_eq!(element_text(&dom, "detail-webhook"), "none asked for");
    for chart in ["depth", "finished", "wait", "run"] {
        let points: usize = attribute(&dom, &format!("chart-{chart}"), "data-points")
            .parse()
            .unwrap();
        assert!(points > 0, "chart {chart} has no data:\n{dom}");
    }

    // Filtered by status: the canceled job alone.
    let filtered = chromium(
        "--dump-dom",
        &format!("{}/async/ui#token=page-token&status=canceled", a.base()),
    );
    assert_eq!(filtered.matches("<tr data-id=").count(), 1, "{filtered}");
    assert!(filtered.contains(&format!("data-id=\"{canceled}\"")));

    // The screenshot: each chart's plot area holds coloured series.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&format!("--screenshot={}", shot.display()), &page);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut data = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut data).unwrap();
    assert!(matches!(
        info.color_type,
        png::ColorType::Rgb | png::ColorType::Rgba
    ));
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let image = (info, data);
    for chart in ["depth", "finished", "wait", "run"] {
        let plot = attribute(&dom, &format!("chart-{chart}"), "data-plot");
        let coloured = coloured_pixels(&image, plot);
        assert!(
            coloured >= 15,
            "chart {chart} ({plot}) shows {coloured} coloured pixels in {}",
            shot.display()
        );
    }
}
