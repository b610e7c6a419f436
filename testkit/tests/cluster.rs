//! The Redis Cluster of the kit: its hash slots are Redis's, and it starts
//! whole, fails over, and takes a killed master back as a replica, as the
//! tests that use it rely on.

use std::collections::BTreeSet;
use std::time::Duration;

use tower_defer_testkit::cluster::{slot_of, Reply, SLOTS};
use tower_defer_testkit::redis_cluster_or_skip;

#[test]
fn slots_are_redis_clusters() {
    // CRC16-XMODEM of "123456789" is 0x31C3, below the slot count.
    assert_eq!(slot_of("123456789"), 0x31C3);
    assert_eq!(slot_of("foo"), 12182);
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_eq!(slot_of("{user1000}.followers"), slot_of("user1000"));
    // Only the first tag counts.
    assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));
    assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
}

#[test]
fn a_failed_over_master_rejoins_as_a_replica() {
    let mut cluster = redis_cluster_or_skip!(3, 1);
    assert_eq!(cluster.urls().len(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.master_urls().len(), 3);

    // Every slot, once, served by the three masters.
    let ranges = cluster.slot_ranges();
    let mut next = 0;
    for (range, _) in &ranges {
        assert_eq!(*range.start(), next, "{ranges:?}");
        next = range.end() + 1;
    }
    assert_eq!(next, SLOTS);
    let owners: BTreeSet<usize> = ranges.iter().map(|&(_, owner)| owner).collect();
    assert_eq!(owners, masters.iter().copied().collect());

    let keys = [
        "foo",
        "123456789",
        "{user1000}.x",
        "a{}{b}",
        "a{{b}}c",
        "}{x}",
    ];
    for key in keys {
        let slot = cluster.ask(0, &format!("CLUSTER KEYSLOT {key}"));
        assert_eq!(slot, Some(Reply::Int(slot_of(key).into())), "{key}");
    }

    let slot = slot_of("foo");
    let old = cluster.master_for_slot(slot);
    let replicas = cluster.replicas_of(old);
    assert_eq!(replicas.len(), 1);
    assert_eq!(
        cluster.ask(old, "SET foo bar"),
        Some(Reply::Status("OK".into()))
    );
    // The replica has the write before its master dies.
    assert_eq!(cluster.ask(old, "WAIT 1 5000"), Some(Reply::Int(1)));

    cluster.kill(old);
    let new = cluster.wait_for_failover(old);
    assert_eq!(new, replicas[0]);
    assert_eq!(cluster.master_for_slot(slot), new);
    assert_eq!(cluster.ask(new, "GET foo"), Some(Reply::Bulk("bar".into())));
    assert!(cluster.main_thread_cpu(new) > Duration::ZERO);

    cluster.restart(old);
    assert_eq!(cluster.replicas_of(new), [old]);
    assert!(!cluster.masters().contains(&old));
    assert_eq!(cluster.master_for_slot(slot), new);
}
