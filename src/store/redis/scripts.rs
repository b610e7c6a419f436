//! The Lua scripts: one per transition, each run atomically by Redis.
//!
//! Every script is `lua/prelude.lua` (the transitions of [`Job`](crate::Job)
//! and the bookkeeping of the ready lists, the due index and the counters)
//! followed by its own body. `redis::Script` sends `EVALSHA` and loads the
//! script once on `NOSCRIPT` (after a Redis restart, say).

use std::sync::LazyLock;

use ::redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(super) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        });
    };
}

script!(ENQUEUE, "enqueue.lua");
script!(CLAIM, "claim.lua");
script!(EXTEND, "extend.lua");
script!(COMPLETE, "complete.lua");
script!(RETRY_LATER, "retry_later.lua");
script!(CANCEL, "cancel.lua");
script!(SWEEP, "sweep.lua");
script!(CLAIM_DELIVERY, "claim_delivery.lua");
script!(RECORD_DELIVERY, "record_delivery.lua");
script!(PEEK, "peek.lua");
script!(STATS, "stats.lua");

/// Every script, to load them all when a store connects.
pub(super) static ALL: [&LazyLock<Script>; 11] = [
    &ENQUEUE,
    &CLAIM,
    &EXTEND,
    &COMPLETE,
    &RETRY_LATER,
    &CANCEL,
    &SWEEP,
    &CLAIM_DELIVERY,
    &RECORD_DELIVERY,
    &PEEK,
    &STATS,
];

/// Every script's source, for tests that check them against the codec.
#[cfg(test)]
pub(super) const SOURCES: &[&str] = &[
    include_str!("lua/prelude.lua"),
    include_str!("lua/enqueue.lua"),
    include_str!("lua/claim.lua"),
    include_str!("lua/extend.lua"),
    include_str!("lua/complete.lua"),
    include_str!("lua/retry_later.lua"),
    include_str!("lua/cancel.lua"),
    include_str!("lua/sweep.lua"),
    include_str!("lua/peek.lua"),
    include_str!("lua/stats.lua"),
    include_str!("lua/claim_delivery.lua"),
    include_str!("lua/record_delivery.lua"),
];
