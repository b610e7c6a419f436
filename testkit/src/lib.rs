//! What tower-defer's tests, benchmarks and examples share, written once:
//!
//! - [`cluster`]: a private Redis Cluster, whose masters a test can fail over.
//! - [`inproc`]: the layer called in process, with no sockets, so that a test
//!   can run on tokio's paused clock.
//! - [`redis`]: a private `redis-server` per test or benchmark.
//! - [`tls`]: a self-signed certificate for https servers on localhost.
//! - [`workload`]: the instant inner service and the requests the benchmarks
//!   and `examples/profile.rs` send it.
//!
//! Not published: the root crate takes it as a path dev-dependency, so only
//! its integration tests, benchmarks and examples see it.

pub mod cluster;
pub mod inproc;
pub mod redis;
pub mod tls;
pub mod workload;
