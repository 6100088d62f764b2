//! Hostile event ids into the dedup window: never a panic or an overflow, an id is fresh at
//! most once, an unseen id inside the window (and not a forged jump) is always fresh, the
//! highest id never moves back nor jumps past the limit, and the origins tracked stay bounded.
#![no_main]

use std::collections::{HashMap, HashSet};

use libfuzzer_sys::fuzz_target;
use nodecloud::fuzzing::{Dedup, MAX_JUMP, WINDOW};
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    // Four origins of our own; another kind of step offers ids from new origins, which
    // evicts the least recently active (possibly one of ours: its record starts again).
    let mut d = Dedup::new(1);
    let mut seen: HashMap<u128, HashSet<u64>> = HashMap::new();
    let mut fresh_origin = 1000u128;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let mut word = [0u8; 8];
        let n = tail.len().min(8);
        word[..n].copy_from_slice(&tail[..n]);
        rest = &tail[n..];
        let arg = u64::from_le_bytes(word);
        let o = u128::from(op & 3);
        let origin = Uuid::from_u128(o);
        let highest = d.highest(origin);
        let id = match (op >> 2) & 7 {
            0 | 1 => arg,
            2 => highest.unwrap_or(0).wrapping_add(arg & 0xffff),
            3 => highest.unwrap_or(0).wrapping_sub(arg & 0x1fff),
            4 => highest
                .unwrap_or(0)
                .wrapping_add(MAX_JUMP)
                .wrapping_add(arg & 3)
                .wrapping_sub(1),
            5 => u64::MAX - (arg & 0xff),
            _ => {
                fresh_origin += 1;
                assert!(
                    d.first_sighting(Uuid::from_u128(fresh_origin), arg),
                    "a new origin's first id is fresh"
                );
                forget_evicted(&d, &mut seen);
                continue;
            }
        };
        let ids = seen.entry(o).or_default();
        let fresh = d.first_sighting(origin, id);
        if fresh {
            assert!(ids.insert(id), "id {id} of origin {o} fresh twice");
        }
        match highest {
            None => assert!(fresh, "an origin's first id is fresh"),
            Some(h) => {
                let in_window = h.checked_sub(id).is_none_or(|behind| behind < WINDOW);
                let plausible = id.checked_sub(h).is_none_or(|ahead| ahead <= MAX_JUMP);
                if in_window && plausible && !ids.contains(&id) {
                    panic!("unseen id {id} (highest {h}) of origin {o} counted as seen");
                }
                if !plausible {
                    assert!(!fresh, "a jump of {} refused", id - h);
                }
                let now = d.highest(origin).unwrap_or(0);
                assert!(now >= h, "highest moved back from {h} to {now}");
                assert!(now - h <= MAX_JUMP, "highest jumped from {h} to {now}");
            }
        }
        forget_evicted(&d, &mut seen);
    }
});

/// Check the bound on origins, and start again the record of any of ours that was evicted
/// (the least recently active origin goes when a new one needs room).
fn forget_evicted(d: &Dedup, seen: &mut HashMap<u128, HashSet<u64>>) {
    let (tracked, max) = d.origins_tracked();
    assert!(tracked <= max, "{tracked} origins tracked, at most {max}");
    for k in 0..4u128 {
        if d.highest(Uuid::from_u128(k)).is_none() {
            seen.remove(&k);
        }
    }
}
