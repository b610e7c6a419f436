//! The command connection: one Redis, or a Redis Cluster.
//!
//! Everything the store sends goes through [`Conn`], which is redis-rs's
//! multiplexed connection manager for one server, or its cluster
//! connection, which routes each command to the master of its key's slot
//! and follows `MOVED` and `ASK` (a function call by its first key, which
//! carries the shard's hash tag; `FUNCTION LOAD` to every master). The
//! scripts never learn which one they run on.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to one Redis or to a Redis Cluster. Cheap to clone: clones
/// share the underlying connections.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// `WAIT 1 timeout` on the master that holds `key`: blocks this
    /// connection until a replica has every write it sent before (or the
    /// timeout ends), and answers how many replicas have them.
    ///
    /// `WAIT` stops the connection it is sent on, so the store sends it on a
    /// connection of the submissions' own. On a cluster it goes to the
    /// master of `key`'s slot, where the write it covers went, rather than
    /// to every master, where redis-rs would send a `WAIT` of its own accord.
    pub(super) async fn wait_for_replica(
        &mut self,
        key: &str,
        timeout: Duration,
    ) -> RedisResult<u64> {
        let mut cmd = ::redis::cmd("WAIT");
        cmd.arg(1).arg(timeout.as_millis().max(1) as u64);
        match self {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let answer = conn
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(u64::from_redis_value(answer)?)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
