//! The store conformance suite (`conformance/`, one file per area of the
//! contract) on every store: one `conformance_tests!` per store, each case a
//! test on tokio's paused clock against a fresh store.
//!
//! A store that must connect plugs in with an `async fn` giving a fresh store
//! (or `None` when it cannot be had here, which skips the case).

#[macro_use]
mod conformance;

use tower_defer::MemoryStore;

conformance_tests!(memory, async { Some(MemoryStore::new()) });

/// The same suite on RedisStore: each test thread starts its own
/// redis-server (killed when the thread ends) and takes a fresh namespace.
#[cfg(feature = "redis")]
async fn redis_store() -> Option<tower_defer::RedisStore> {
    use std::cell::RefCell;
    use tower_defer_testkit::redis::RedisServer;
    thread_local! {
        static SERVER: RefCell<Option<RedisServer>> = const { RefCell::new(None) };
    }
    let url = SERVER.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = RedisServer::start(false);
        }
        s.as_ref().map(|s| s.url())
    })?;
    Some(fresh(tower_defer::RedisStore::builder(url)).await)
}

#[cfg(feature = "redis")]
conformance_tests!(redis, redis_store());

/// The same suite on a Redis Cluster (three masters, each with a replica,
/// shared by every case of this process), a fresh namespace per case.
#[cfg(feature = "redis")]
async fn redis_cluster_store() -> Option<tower_defer::RedisStore> {
    use tower_defer_testkit::cluster::RedisCluster;
    let cluster = RedisCluster::shared()?;
    Some(fresh(tower_defer::RedisStore::cluster(cluster.urls())).await)
}

#[cfg(feature = "redis")]
conformance_tests!(redis_cluster, redis_cluster_store());

/// A store from `builder` in a namespace no other case of this process has
/// used, on the paused clock.
#[cfg(feature = "redis")]
async fn fresh(builder: tower_defer::RedisStoreBuilder) -> tower_defer::RedisStore {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NAMESPACE: AtomicUsize = AtomicUsize::new(0);
    builder
        .namespace(format!(
            "conformance{}",
            NAMESPACE.fetch_add(1, Ordering::SeqCst)
        ))
        .hold_paused_clock(true)
        .connect()
        .await
        .expect("connects to the test's Redis")
}
