//! Black-box tests of the layer over real TCP on 127.0.0.1:0, with a real
//! client: the native (VESSL-compatible) API, `Prefer`, cancel, owners,
//! limits and bad input, three kinds of inner service, and the worker pool.
//!
//! Run with `cargo test --all-features --test api` (the `Upstream` tests
//! need feature `proxy`; the rest run without it).

mod bad_input;
mod batching;
mod cancel;
mod oversized;
mod pool;
mod prefer;
mod result;
mod scoping;
mod services;
#[allow(dead_code)]
mod support;
#[cfg(feature = "proxy")]
mod upstream_failures;
mod vessl;
