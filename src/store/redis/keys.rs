//! The names of the store's keys and channels (the layout is in the
//! [module docs](super)), and the hash tag of each shard.

use super::functions::{Function, Invocation};
use crate::job::JobId;
use crate::time::Timestamp;

/// The keys of one shard: every one carries the shard's hash tag.
pub(super) struct Keys {
    /// `{tag}:`
    pub(super) prefix: String,
    /// The keys every script takes first, in the order `prelude.lua` reads them.
    common: [String; 8],
    pub(super) changed: String,
    pub(super) work: String,
    pub(super) deliver: String,
    /// The live page's recent ids (used on shard 0 only; see `activity.rs`).
    pub(super) recent: String,
}

impl Keys {
    /// A function call with the keys and arguments every function takes.
    pub(super) fn invocation(&self, function: Function, now: Timestamp) -> Invocation {
        let mut inv = Invocation::new(function);
        for key in &self.common {
            inv.key(key.as_str());
        }
        inv.arg(self.prefix.as_str()).arg(now.as_millis());
        inv
    }

    /// The keys of the shard whose hash tag is `tag` (see [`shard_tags`]).
    pub(super) fn new(tag: &str) -> Self {
        let prefix = format!("{{{tag}}}:");
        let k = |name: &str| format!("{prefix}{name}");
        Keys {
            common: [
                k("ready:0"),
                k("ready:1"),
                k("ready:2"),
                k("due"),
                k("seq"),
                k("n:retrying"),
                k("n:in_progress"),
                k("deliveries"),
            ],
            changed: k("changed"),
            work: k("work"),
            deliver: k("deliver"),
            recent: k("recent"),
            prefix,
        }
    }

    /// A key of this shard, to route a command that names none (`WAIT`) to
    /// the node that holds the shard.
    pub(super) fn anchor(&self) -> &str {
        &self.common[0]
    }

    pub(super) fn job(&self, id: JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// The live page's bucket that starts at `start` ms (see `activity.rs`).
    pub(super) fn activity(&self, start: u64) -> String {
        format!("{}activity:{start}", self.prefix)
    }

    pub(super) fn idempotency(&self, owner: Option<&str>, key: &str) -> String {
        match owner {
            None => format!("{}idem:-:{key}", self.prefix),
            Some(o) => format!("{}idem:{}:{o}:{key}", self.prefix, o.len()),
        }
    }
}

/// The most shards a namespace may have: a job id's first character (one
/// of 36) names its shard.
pub(super) const MAX_SHARDS: usize = 36;

/// Redis Cluster's slots, which keys hash into.
const SLOTS: u32 = 16_384;

/// The hash tag of each of the `count` shards of `namespace`.
///
/// One shard keeps the layout of a store without shards: the tag is the
/// namespace. With more, shard `i`'s tag is `namespace/i/n`, `n` the
/// smallest number that puts its slot in the `i`-th `count`-th of the
/// slot space: on a cluster whose masters hold equal runs of slots (what
/// `redis-cli --cluster create` makes), as many shards as masters put one
/// shard on each. Every replica computes the same tags from the same two
/// values.
pub(super) fn shard_tags(namespace: &str, count: usize) -> Vec<String> {
    if count <= 1 {
        return vec![namespace.to_owned()];
    }
    (0..count)
        .map(|i| {
            let span = (i as u32 * SLOTS / count as u32)..((i as u32 + 1) * SLOTS / count as u32);
            (0u32..)
                .map(|n| format!("{namespace}/{i}/{n}"))
                .find(|tag| span.contains(&u32::from(slot(tag.as_bytes()))))
                .expect("some n lands in every span")
        })
        .collect()
}

/// The shard an idempotency key belongs to: a hash of its owner and key,
/// so every replica sends a resubmission where the first one went.
pub(super) fn idempotency_shard(owner: Option<&str>, key: &str, shards: usize) -> usize {
    let owner = owner.map_or(&[0xff][..], str::as_bytes);
    let hash = fnv1a(owner.iter().chain(&[0]).chain(key.as_bytes()).copied());
    (hash % shards as u64) as usize
}

/// FNV-1a: a hash that spreads and names, not a secret (the shard of an
/// idempotency key, the name of the function library).
pub(super) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The cluster slot of a hash tag's text: CRC16 (XMODEM) modulo 16384,
/// as Redis computes it.
fn slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Redis Cluster's specification gives CRC16("123456789") = 0x31C3.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12_182);
    }

    #[test]
    fn one_shard_keeps_the_namespace_and_more_spread_over_the_slots() {
        assert_eq!(shard_tags("ns", 1), ["ns"]);
        for count in [2, 3, 5, MAX_SHARDS] {
            let tags = shard_tags("my-app", count);
            assert_eq!(tags.len(), count);
            for (i, tag) in tags.iter().enumerate() {
                assert!(tag.starts_with(&format!("my-app/{i}/")), "{tag}");
                let (i, count) = (i as u32, count as u32);
                let span = (i * SLOTS / count)..((i + 1) * SLOTS / count);
                assert!(span.contains(&u32::from(slot(tag.as_bytes()))), "{tag}");
            }
        }
    }
}
