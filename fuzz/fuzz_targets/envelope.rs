//! Fuzzes the native envelope parser (`POST /async` bodies):
//! `tower_defer::__fuzz::parse_envelope`, which is `api::native::parse_envelope`
//! with default job options (it also runs the per-job option fields).
//!
//! Run (from the repository root; cargo-fuzz needs nightly flags, which the
//! stable toolchain accepts with RUSTC_BOOTSTRAP=1):
//!
//!     cargo install cargo-fuzz            # once
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run envelope -- -max_total_time=60
//!
//! or `cargo +nightly fuzz run envelope` where nightly is installed;
//! `.ci/fuzz-smoke` runs every target for a few seconds.
//! Crashes land in `fuzz/artifacts/envelope/`; replay one with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run envelope fuzz/artifacts/envelope/<file>`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_defer::__fuzz::parse_envelope;

fuzz_target!(|data: &[u8]| {
    match parse_envelope(data) {
        Ok(job) => {
            // What the parser lets through is what a worker will replay.
            assert!(job.request.path_and_query.as_str().starts_with('/'));
            assert!(job.request.headers.contains_key(http::header::CONTENT_TYPE));
            assert!(job.options.retry.max_attempts >= 1);
            assert!(job.options.result_ttl.as_secs() <= 7 * 86_400);
            // The stored body is the `data` field, re-serialized: valid JSON.
            assert!(std::str::from_utf8(&job.request.body).is_ok());
        }
        // Every refusal is a client error with a stable code.
        Err(refused) => {
            assert_eq!(refused.status, 400, "{refused:?}");
            assert!(!refused.code.is_empty());
        }
    }
});
