//! How a claimed job of a batching route finds company before its call.
//!
//! The job a worker claimed heads a batch. In this process, jobs of the same
//! batch key claimed meanwhile by other claimers join it (and free their
//! worker slots) rather than heading batches of their own; from the store,
//! [`Store::claim_batch`] takes queued jobs of the key submitted through any
//! replica. The head waits for company until it has been queued for the
//! route's `max_wait`, or the batch is full, whichever comes first: a job
//! that already waited that long in the queue waits no more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

use super::call::{self, Member};
use super::InnerService;
use crate::batch::Batch;
use crate::context::Pool;
use crate::store::{Claim, Store};
use crate::time::Timestamp;

/// The batches this process is gathering, one open batch per key at most.
/// The registry's lock is taken before an open batch's, never after.
#[derive(Default)]
pub(super) struct Gathering {
    open: Mutex<HashMap<Arc<str>, Arc<Open>>>,
}

/// A batch still taking members.
struct Open {
    members: Mutex<Members>,
    /// Woken when the batch is full.
    full: Notify,
}

struct Members {
    /// Each with its attempt's span, open while it waits for the call.
    claims: Vec<Member>,
    items: u32,
    bytes: u64,
    /// Taken by the head for a store claim in flight, so that jobs joining
    /// meanwhile leave room for what it brings.
    reserved: (u32, u64),
    closed: bool,
}

impl Members {
    fn room(&self, route: &Batch) -> (u32, u64) {
        (
            route
                .items_limit()
                .saturating_sub(self.items + self.reserved.0),
            route
                .bytes_limit()
                .saturating_sub(self.bytes + self.reserved.1),
        )
    }

    fn add(&mut self, member: Member) {
        self.items += weight(&member.claim).0;
        self.bytes += weight(&member.claim).1;
        self.claims.push(member);
    }
}

fn weight(claim: &Claim) -> (u32, u64) {
    let items = claim.job.options.batch.as_ref().map_or(1, |t| t.items);
    (items, claim.job.request.body.len() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `member`, a job of `route`: joins the batch open for its key, or
/// opens one, gathers company and makes the call.
pub(super) async fn run<S, St>(
    inner: S,
    member: Member,
    route: Batch,
    pool: Arc<Pool<St>>,
    gathering: Arc<Gathering>,
    permit: OwnedSemaphorePermit,
    hand_back: watch::Receiver<bool>,
) where
    S: InnerService,
    St: Store,
{
    let Some(key) = member
        .claim
        .job
        .options
        .batch
        .as_ref()
        .map(|t| t.key.clone())
    else {
        let Member { claim, trace, .. } = member;
        call::run_job(inner, claim, trace, pool, permit, hand_back, None).await;
        return;
    };
    let deadline = member.claim.job.created_at.after(route.wait_limit());
    // 1. Join the open batch of this key, if it has room.
    let open = {
        let mut registry = lock(&gathering.open);
        if let Some(open) = registry.get(&key) {
            let mut members = lock(&open.members);
            let (items, bytes) = members.room(&route);
            let (n, b) = weight(&member.claim);
            if !members.closed && n <= items && b <= bytes {
                members.add(member);
                if members.room(&route).0 == 0 {
                    open.full.notify_one();
                }
                return;
            }
        }
        let (items, bytes) = weight(&member.claim);
        let open = Arc::new(Open {
            members: Mutex::new(Members {
                claims: vec![member],
                items,
                bytes,
                reserved: (0, 0),
                closed: false,
            }),
            full: Notify::new(),
        });
        registry.insert(key.clone(), open.clone());
        open
    };
    // 2. Company from the store at once, then (while the head may still
    // wait) whatever joins before the deadline.
    if Timestamp::now() < deadline {
        take_from_store(&pool, &route, &key, &open).await;
        let full = open.full.notified();
        if lock(&open.members).room(&route).0 > 0 {
            let at = deadline.to_instant();
            let until = at.checked_sub(TIMER_SLACK).unwrap_or(at);
            let _ = tokio::time::timeout_at(until, full).await;
        }
    }
    // 3. Close it; take what the store has for the room left.
    let mut members = {
        let mut registry = lock(&gathering.open);
        if registry.get(&key).is_some_and(|o| Arc::ptr_eq(o, &open)) {
            registry.remove(&key);
        }
        let mut members = lock(&open.members);
        members.closed = true;
        Members {
            claims: std::mem::take(&mut members.claims),
            items: members.items,
            bytes: members.bytes,
            reserved: (0, 0),
            closed: true,
        }
    };
    let (items, bytes) = members.room(&route);
    if items > 0 {
        for member in claim_batch(&pool, &key, items, bytes).await {
            members.add(member);
        }
    }
    call::run_batch(inner, members.claims, &route, pool, hand_back).await;
    drop(permit);
}

/// How much before its deadline the head stops waiting for company. A
/// tokio timer rounds its deadline up to the next millisecond tick, and
/// the runtime that parks until that tick wakes up to another late: ended
/// this early, the head's wait stays within `max_wait` of its submission
/// instead of running up to two milliseconds past it. (The deadline itself
/// is never late: it counts from the submission's whole-millisecond
/// timestamp, which is at or before the submission.)
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Claims company from the store for the room `open` has, reserving it
/// meanwhile.
async fn take_from_store<St: Store>(pool: &Pool<St>, route: &Batch, key: &str, open: &Open) {
    let (items, bytes) = {
        let mut members = lock(&open.members);
        let room = members.room(route);
        members.reserved = room;
        room
    };
    let claims = if items > 0 {
        claim_batch(pool, key, items, bytes).await
    } else {
        Vec::new()
    };
    let mut members = lock(&open.members);
    members.reserved = (0, 0);
    for member in claims {
        members.add(member);
    }
    if members.room(route).0 == 0 {
        open.full.notify_one();
    }
}

/// Claims company for a batch from the store; each member's attempt span
/// starts here.
async fn claim_batch<St: Store>(pool: &Pool<St>, key: &str, items: u32, bytes: u64) -> Vec<Member> {
    let (lease, aging) = (pool.config.lease, pool.config.priority_aging);
    match pool
        .store
        .claim_batch(key, items, bytes, lease, aging)
        .await
    {
        Ok(claims) => claims.into_iter().map(Member::new).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "claiming a batch's company failed; it runs without");
            Vec::new()
        }
    }
}
