//! Fuzzes route matching: the native matcher (`api::native::endpoint`, under
//! the prefixes `/async` and `/api/jobs`) and the Bifrost matcher
//! (`api::bifrost::endpoint`, under `/v1/async`), through
//! `tower_defer::__fuzz`. The input is one method byte, then the path: used
//! as is (lossy UTF-8) and, when it parses as a URI, as `Uri::path()` (what
//! the layer really passes).
//!
//! Run (from the repository root; cargo-fuzz needs nightly flags, which the
//! stable toolchain accepts with RUSTC_BOOTSTRAP=1):
//!
//!     cargo install cargo-fuzz            # once
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run routes -- -max_total_time=60
//!
//! or `cargo +nightly fuzz run routes` where nightly is installed;
//! `.ci/fuzz-smoke` runs every target for a few seconds.

#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use tower_defer::__fuzz::{bifrost_endpoint, native_endpoint, Matched};

const METHODS: [&str; 9] = [
    "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "get", "QUERY",
];

fn check(method: &Method, path: &str) {
    for prefix in ["/async", "/api/jobs"] {
        let matched = native_endpoint(prefix, method, path);
        if !path.starts_with(prefix) {
            assert_eq!(matched, Matched::Elsewhere, "{path:?}");
        }
        match &matched {
            Matched::Job { id, .. } => {
                // The id is the first segment under the prefix.
                let rest = &path[prefix.len()..];
                let first = rest.split('/').nth(1);
                assert_eq!(first, Some(id.as_str()), "{path:?}");
            }
            Matched::Elsewhere | Matched::Route | Matched::Refused | Matched::Submit { .. } => {}
        }
    }
    match bifrost_endpoint(method, path) {
        Matched::Elsewhere => {
            assert!(
                !path.starts_with("/v1/async/") && path != "/v1/async",
                "{path:?}"
            )
        }
        Matched::Submit { route } => {
            assert_eq!(path, format!("/v1/async/{route}"));
            assert!(route
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."));
        }
        Matched::Job { id, route } => {
            let route = route.expect("a Bifrost job has a route");
            assert_eq!(path, format!("/v1/async/{route}/{id}"));
            assert!(route
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."));
        }
        Matched::Route | Matched::Refused => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, path)) = data.split_first() else {
        return;
    };
    let method = match METHODS.get(usize::from(m) % (METHODS.len() + 1)) {
        Some(name) => Method::from_bytes(name.as_bytes()).unwrap(),
        None => Method::GET,
    };
    check(&method, &String::from_utf8_lossy(path));
    if let Ok(uri) = Uri::try_from(path) {
        check(&method, uri.path());
    }
});
