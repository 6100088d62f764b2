//! Membership deltas from hostile peers into Membership's claim checks and versioned store: a
//! decoded list of deltas, each arriving on a link chosen by the input (its own, or relayed;
//! linked or not). Never a panic or an overflow; what is taken is consistent (the
//! authenticated incarnation on its own link, nothing relayed while linked, nothing from
//! beyond the clock skew) and bounded (entries per node); and whatever was taken before, the
//! real node's whole state on its own link is taken: a forged delta cannot keep a live node
//! down.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecloud::fuzzing::{Replica, MAX_CLOCK_SKEW_MS};
use nodecloud::wire::{decode_payload, Entry, NodeDelta, Value};
use uuid::Uuid;

/// This node's clock for the whole run.
const NOW_MS: u64 = 1_800_000_000_000;
const NODES: [&str; 4] = ["master", "worker-1", "worker-2", "x"];
const MAX_ENTRIES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((control, cbor)) = data.split_at_checked(8) else {
        return;
    };
    let Ok(deltas) = decode_payload::<Vec<NodeDelta>>(cbor) else {
        return;
    };
    let mut replica = Replica::new();
    for (i, delta) in deltas.into_iter().enumerate() {
        let c = control[i % control.len()];
        let via = if c & 1 == 1 {
            delta.node.clone()
        } else {
            NODES[usize::from(c >> 4) % 4].to_owned()
        };
        let via_incarnation = if c & 2 == 2 {
            delta.incarnation
        } else {
            Uuid::from_u128(u128::from(c))
        };
        let linked = c & 4 == 4;
        let before = replica.held(&delta.node);
        let (node, incarnation, boot_ms) = (delta.node.clone(), delta.incarnation, delta.boot_ms);
        let taken = replica.take(delta, &via, via_incarnation, linked, NOW_MS, MAX_ENTRIES);
        let after = replica.held(&node);
        if taken != Ok(true) {
            assert_eq!(before, after, "a delta not taken changed what is held");
            continue;
        }
        assert!(
            boot_ms <= NOW_MS + MAX_CLOCK_SKEW_MS,
            "a delta from the future taken"
        );
        if via == node {
            assert_eq!(
                incarnation, via_incarnation,
                "not the authenticated incarnation"
            );
        } else {
            assert!(!linked, "relayed while linked");
        }
        let (inc, boot, max, len) = after.expect("a taken delta is held");
        assert_eq!(inc, incarnation);
        // An incarnation's boot time is fixed when it is first held.
        match before {
            Some((b_inc, b_boot, _, _)) if b_inc == inc => assert_eq!(boot, b_boot),
            _ => assert_eq!(boot, boot_ms),
        }
        assert!(len <= MAX_ENTRIES, "entries past the bound");
        if let Some((b_inc, _, b_max, _)) = before {
            if b_inc == inc {
                assert!(max > b_max, "taken but not newer");
            }
        }
    }
    // The real "x", just booted, sends its whole state on its own link.
    let real = Uuid::from_u128(0x5eed);
    let live = NodeDelta {
        node: "x".into(),
        incarnation: real,
        boot_ms: NOW_MS,
        from: 0,
        max_version: 2,
        gc_version: 0,
        entries: vec![
            Entry {
                key: "role".into(),
                version: 1,
                value: Some(Value::Text("worker".into())),
            },
            Entry {
                key: "link:master".into(),
                version: 2,
                value: Some(Value::Set),
            },
        ],
    };
    if replica.held("x").is_some_and(|h| h.0 == real) {
        return; // the input already held this incarnation
    }
    assert_eq!(
        replica.take(live, "x", real, true, NOW_MS, MAX_ENTRIES),
        Ok(true),
        "the live node is kept down"
    );
});
