//! The operations a case is made of, and the strategy proptest draws them
//! from.

use proptest::prelude::*;

/// What a step does. Jobs and claims are named by index into those made so far
/// (taken modulo their number), so a shrunk sequence stays meaningful.
#[derive(Clone, Debug)]
pub enum Op {
    Enqueue(Enqueue),
    Claim {
        lease_ms: u64,
        aging_ms: Option<u64>,
    },
    /// Renews the lease of claim `claim` (perhaps a stale one).
    Extend {
        claim: usize,
        lease_ms: u64,
    },
    Complete {
        claim: usize,
        how: How,
    },
    /// `complete_and_claim`: completes claim `claim` and claims the next
    /// job with `lease_ms` and `aging_ms`, as a worker does.
    CompleteAndClaim {
        claim: usize,
        how: How,
        lease_ms: u64,
        aging_ms: Option<u64>,
    },
    RetryLater {
        claim: usize,
        spend: bool,
        delay_ms: u64,
    },
    Cancel {
        job: usize,
        by: By,
    },
    Advance {
        ms: u64,
    },
    /// Advances just past the latest lease of a running job.
    LapseLeases,
    Sweep,
    /// `wake_unavailable`: the jobs waiting for the upstream run now.
    WakeUnavailable,
}

/// An `enqueue`: the job's options, its body, and the call's queue bound.
#[derive(Clone, Debug)]
pub struct Enqueue {
    pub priority: u8,
    /// `max_time_in_queue`, in ms.
    pub queue_ms: u64,
    /// Idempotency key `k0` / `k1`.
    pub key: Option<u8>,
    /// Owner `o0` / `o1`.
    pub owner: Option<u8>,
    /// The request body: two enqueues with one key and different bodies conflict.
    pub body: u8,
    /// The store must not fail a job for it (only the worker reads it).
    pub max_attempts: u32,
    pub ttl_ms: u64,
    pub max_queued: usize,
}

impl Enqueue {
    /// A job of priority 1 with no key and no owner, 3 attempts and a 5 s
    /// result TTL, in a roomy queue: the regression cases' job.
    pub fn plain(queue_ms: u64) -> Op {
        Op::Enqueue(Enqueue {
            priority: 1,
            queue_ms,
            key: None,
            owner: None,
            body: 0,
            max_attempts: 3,
            ttl_ms: 5_000,
            max_queued: 1_000,
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub enum How {
    Ok2xx,
    Non2xx,
    Error,
}

#[derive(Clone, Copy, Debug)]
pub enum By {
    /// The job's own owner.
    Owner,
    /// Another owner (or none, when the job has one).
    Other,
    /// An id the store never made.
    Unknown,
}

pub const OWNERS: [&str; 2] = ["o0", "o1"];
pub const KEYS: [&str; 2] = ["k0", "k1"];

fn op() -> impl Strategy<Value = Op> {
    let enqueue = (
        0..=2u8,
        prop_oneof![Just(2_000u64), Just(30_000), Just(600_000)],
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        0..2u8,
        1..=3u32,
        prop_oneof![Just(5_000u64), Just(3_600_000)],
        prop_oneof![4 => Just(1_000usize), 1 => Just(3)],
    )
        .prop_map(
            |(priority, queue_ms, key, owner, body, max_attempts, ttl_ms, max_queued)| {
                Op::Enqueue(Enqueue {
                    priority,
                    queue_ms,
                    key,
                    owner,
                    body,
                    max_attempts,
                    ttl_ms,
                    max_queued,
                })
            },
        );
    let lease = || prop_oneof![Just(5_000u64), Just(30_000)];
    let aging = || proptest::option::of(prop_oneof![Just(1_000u64), Just(10_000)]);
    let claim =
        (lease(), aging()).prop_map(|(lease_ms, aging_ms)| Op::Claim { lease_ms, aging_ms });
    let index = || 0..16usize;
    let how = prop_oneof![Just(How::Ok2xx), Just(How::Non2xx), Just(How::Error)];
    let by = prop_oneof![3 => Just(By::Owner), 1 => Just(By::Other), 1 => Just(By::Unknown)];
    prop_oneof![
        4 => enqueue,
        4 => claim,
        1 => (index(), lease()).prop_map(|(claim, lease_ms)| Op::Extend { claim, lease_ms }),
        3 => (index(), how.clone()).prop_map(|(claim, how)| Op::Complete { claim, how }),
        2 => (index(), how, lease(), aging()).prop_map(|(claim, how, lease_ms, aging_ms)| {
            Op::CompleteAndClaim { claim, how, lease_ms, aging_ms }
        }),
        3 => (index(), any::<bool>(), prop_oneof![Just(0u64), Just(1_000), Just(10_000)])
            .prop_map(|(claim, spend, delay_ms)| Op::RetryLater { claim, spend, delay_ms }),
        2 => (index(), by).prop_map(|(job, by)| Op::Cancel { job, by }),
        3 => prop_oneof![Just(1u64), Just(1_000), Just(5_000), 1..40_000u64, Just(700_000)]
            .prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::LapseLeases),
        1 => Just(Op::Sweep),
        1 => Just(Op::WakeUnavailable),
    ]
}

pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..40)
}
