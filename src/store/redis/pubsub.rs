//! Pub/sub wake-ups: the one subscription per store, and the local waiters
//! it wakes.
//!
//! Long-polls wait on `{ns}:changed` for their job, idle workers on
//! `{ns}:work`, idle deliverers on `{ns}:deliver`, of every shard. When the
//! subscription is lost it is made again (backing off from 50 ms to 2 s),
//! and every local waiter is woken to read again, so no change is missed
//! for long.
//!
//! On a Redis Cluster a message published on any node reaches the
//! subscribers of every node (the channels are not sharded), so one
//! subscription to one node hears every shard; when that node goes away,
//! the next attempt subscribes on the next of the nodes the store was
//! given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ::redis::{Client, RedisError};
use futures_util::StreamExt;
use tokio::sync::{oneshot, Notify};

use super::wire::parse_id;
use crate::job::JobId;
use crate::time::Timestamp;

/// Where pub/sub messages meet this process's waiters.
pub(super) struct Hub {
    /// Jobs somebody here waits on, with how many wait.
    waiters: Mutex<HashMap<JobId, (Arc<Notify>, usize)>>,
    /// Wakes one idle worker per message.
    pub(super) work: Notify,
    /// Wakes one idle deliverer per message.
    pub(super) deliveries: Notify,
    /// Per shard, the earliest due time the last claim or sweep saw (ms; 0:
    /// none).
    next_due: Box<[AtomicU64]>,
    /// Per shard, the earliest delivery time the last delivery claim saw
    /// (ms; 0: none).
    next_delivery: Box<[AtomicU64]>,
}

impl Hub {
    pub(super) fn new(shards: usize) -> Self {
        let times = || (0..shards).map(|_| AtomicU64::new(0)).collect();
        Hub {
            waiters: Mutex::default(),
            work: Notify::new(),
            deliveries: Notify::new(),
            next_due: times(),
            next_delivery: times(),
        }
    }

    pub(super) fn set_next_due(&self, shard: usize, at: Option<Timestamp>) {
        self.next_due[shard].store(at.map_or(0, Timestamp::as_millis), Ordering::Relaxed);
    }

    pub(super) fn set_next_delivery(&self, shard: usize, at: Option<Timestamp>) {
        self.next_delivery[shard].store(at.map_or(0, Timestamp::as_millis), Ordering::Relaxed);
    }

    /// The earliest due time any shard has told of.
    pub(super) fn next_due(&self) -> Option<Timestamp> {
        earliest(&self.next_due)
    }

    /// The earliest delivery time any shard has told of.
    pub(super) fn next_delivery(&self) -> Option<Timestamp> {
        earliest(&self.next_delivery)
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<JobId, (Arc<Notify>, usize)>> {
        // Never held across an await; a panic under it leaves a usable map.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn watch(self: &Arc<Self>, id: JobId) -> Watch {
        let mut waiters = self.waiters();
        let entry = waiters.entry(id).or_insert_with(|| (Arc::default(), 0));
        entry.1 += 1;
        Watch {
            hub: self.clone(),
            id,
            notify: entry.0.clone(),
        }
    }

    pub(super) fn changed(&self, id: JobId) {
        if let Some((n, _)) = self.waiters().get(&id) {
            n.notify_waiters();
        }
    }

    /// After the subscription was (re)made: whatever happened meanwhile was
    /// not heard, so everyone looks again.
    fn wake_all(&self) {
        for (n, _) in self.waiters().values() {
            n.notify_waiters();
        }
        self.work.notify_waiters();
        self.work.notify_one();
        self.deliveries.notify_waiters();
        self.deliveries.notify_one();
    }
}

fn earliest(times: &[AtomicU64]) -> Option<Timestamp> {
    times
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .filter(|&t| t != 0)
        .min()
        .map(Timestamp::from_millis)
}

/// The channels one subscription listens on: each shard's `changed`,
/// `work` and `deliver`.
pub(super) struct Channels {
    pub(super) changed: Vec<String>,
    pub(super) work: Vec<String>,
    pub(super) deliver: Vec<String>,
}

/// One waiter's registration; unregisters on drop.
pub(super) struct Watch {
    hub: Arc<Hub>,
    id: JobId,
    pub(super) notify: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiters = self.hub.waiters();
        if let Some(entry) = waiters.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}

/// Keeps one subscription to the store's channels, making it again when it
/// is lost, until the store is dropped; each attempt (connecting, then
/// subscribing) is bounded by `within`, and goes to the next of `nodes`
/// (one for a single Redis; a cluster's seeds). Signals `ready` once first
/// subscribed, or with the error of a first attempt that failed, so that
/// `connect` names it.
pub(super) async fn listen(
    nodes: Vec<Client>,
    channels: Channels,
    within: Duration,
    hub: Weak<Hub>,
    ready: oneshot::Sender<Result<(), RedisError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    let all: Vec<&str> = [&channels.changed, &channels.work, &channels.deliver]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    for attempt in 0.. {
        let client = &nodes[attempt % nodes.len()];
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for channel in &all {
                pubsub.subscribe(*channel).await?;
            }
            Ok::<_, RedisError>(pubsub)
        };
        match tokio::time::timeout(within, subscribe).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                match hub.upgrade() {
                    Some(hub) => hub.wake_all(),
                    None => return,
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(()));
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(hub) = hub.upgrade() else { return };
                    let channel = msg.get_channel_name();
                    let is = |names: &[String]| names.iter().any(|n| n == channel);
                    // A message names the jobs it is about, separated by
                    // spaces (a script that changes several sends one).
                    let ids = msg
                        .get_payload_bytes()
                        .split(|&b| b == b' ')
                        .filter(|id| !id.is_empty());
                    if is(&channels.work) {
                        ids.for_each(|_| hub.work.notify_one());
                    } else if is(&channels.deliver) {
                        ids.for_each(|_| hub.deliveries.notify_one());
                    } else if is(&channels.changed) {
                        let ids = ids.filter_map(parse_id);
                        for id in ids {
                            hub.changed(id);
                        }
                    }
                }
                tracing::warn!("the Redis subscription was lost; making it again");
            }
            // A first attempt fails `connect` once every node has failed it.
            Ok(Err(e)) if ready.is_some() && attempt + 1 >= nodes.len() => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "subscribing to Redis failed"),
            Err(_) => tracing::debug!("subscribing to Redis timed out"),
        }
        if hub.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
