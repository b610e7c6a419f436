//! Fuzzes the `Prefer` header parser (`api::prefer`, RFC 7240) through
//! `tower_defer::__fuzz::prefer`. The input is split at `\n` into header
//! values, so repeated `Prefer` headers are covered too.
//!
//! Run (from the repository root; cargo-fuzz needs nightly flags, which the
//! stable toolchain accepts with RUSTC_BOOTSTRAP=1):
//!
//!     cargo install cargo-fuzz            # once
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run prefer -- -max_total_time=60
//!
//! or `cargo +nightly fuzz run prefer` where nightly is installed;
//! `.ci/fuzz-smoke` runs every target for a few seconds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_defer::__fuzz::prefer;

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let (respond_async, wait) = prefer(values.iter().copied());
    let text = String::from_utf8_lossy(data).to_ascii_lowercase();
    if respond_async {
        assert!(text.contains("respond-async"), "{text:?}");
    }
    if wait.is_some() {
        assert!(text.contains("wait"), "{text:?}");
    }
});
