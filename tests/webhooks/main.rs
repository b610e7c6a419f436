//! Webhook delivery against real receivers on 127.0.0.1:0, one file per
//! area: delivery, retries, signatures, Baseten's format, and refusals.
//!
//! Real sockets and tokio's paused clock do not mix (the clock jumps ahead
//! while a task waits on I/O), so these tests keep the clock running and
//! configure short schedules (tens to hundreds of milliseconds). They wait
//! for what must happen with generous bounds and never assert how fast.

mod baseten;
mod delivery;
mod refusals;
mod retries;
mod signatures;
mod support;

/// The key most deliveries are signed with.
const KEY: &[u8] = b"a key of thirty-two bytes, really";
/// A second key, for rotation and for a signature that must not verify.
const OLD_KEY: &[u8] = b"the key being rotated out, 32 by";
