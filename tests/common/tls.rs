//! The testkit's self-signed certificate, for tests/proxy, which still
//! includes this file by path; it goes once that test takes the testkit.

pub use tower_defer_testkit::tls::*;
