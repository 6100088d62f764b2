//! Statuses from hostile peers into Membership's acceptance checks: a decoded list of
//! statuses, each arriving on a link chosen by the input (its own, or relayed; linked or not).
//! Never a panic or an overflow; what is taken is consistent (the authenticated incarnation
//! on its own link, nothing relayed while linked, nothing from beyond the clock skew, always
//! newer than what is held) and bounded once normalised; and whatever was taken before, the
//! real node's status on its own link is taken: a forged status cannot keep a live node down.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use nodecloud::fuzzing::{accept_status, normalize_status, MAX_CLOCK_SKEW_MS};
use nodecloud::wire::{decode_payload, NodeStats, Status};
use uuid::Uuid;

/// This node's clock for the whole run.
const NOW_MS: u64 = 1_800_000_000_000;
const NODES: [&str; 4] = ["master", "worker-1", "worker-2", "x"];

fuzz_target!(|data: &[u8]| {
    let Some((control, cbor)) = data.split_at_checked(8) else {
        return;
    };
    let Ok(statuses) = decode_payload::<Vec<Status>>(cbor) else {
        return;
    };
    let mut held: HashMap<String, Status> = HashMap::new();
    for (i, status) in statuses.into_iter().enumerate() {
        let c = control[i % control.len()];
        let via = if c & 1 == 1 {
            status.node.clone()
        } else {
            NODES[usize::from(c >> 4) % 4].to_owned()
        };
        let via_incarnation = if c & 2 == 2 {
            status.incarnation
        } else {
            Uuid::from_u128(u128::from(c))
        };
        let linked = c & 4 == 4;
        let before = held.get(&status.node);
        if accept_status(&status, &via, via_incarnation, linked, before, NOW_MS).is_err() {
            continue;
        }
        assert!(
            status.boot_ms <= NOW_MS + MAX_CLOCK_SKEW_MS,
            "a status from the future taken"
        );
        if via == status.node {
            assert_eq!(
                status.incarnation, via_incarnation,
                "not the authenticated incarnation"
            );
        } else {
            assert!(!linked, "relayed while linked");
        }
        if let Some(h) = before {
            if h.incarnation == status.incarnation || via != status.node {
                assert!(
                    (status.boot_ms, status.version) > (h.boot_ms, h.version),
                    "not newer"
                );
            }
        }
        let mut status = status;
        normalize_status(&mut status, |n| NODES.contains(&n), NODES.len());
        assert!(status.links.len() <= NODES.len());
        assert!(status.links.iter().all(|l| NODES.contains(&l.as_str())));
        assert!(status.methods.len() <= 4096);
        assert!(
            status.methods.windows(2).all(|w| w[0] < w[1]),
            "methods sorted, each once"
        );
        assert!(status.http.len() <= 16);
        assert!(
            status.http.windows(2).all(|w| w[0] < w[1]),
            "backends sorted, each once"
        );
        assert!(status.http.iter().all(|a| a.len() <= 255 && a.contains(':')));
        held.insert(status.node.clone(), status);
    }
    // The real "x", just booted, speaks on its own link.
    let real = Uuid::from_u128(0x5eed);
    let live = Status {
        node: "x".into(),
        incarnation: real,
        boot_ms: NOW_MS,
        version: 1,
        role: "worker".into(),
        links: vec!["master".into()],
        stats: NodeStats::default(),
        methods: vec![],
        http: vec![],
    };
    let held_x = held.get("x").filter(|h| h.incarnation != real);
    assert_eq!(
        accept_status(&live, "x", real, true, held_x, NOW_MS),
        Ok(()),
        "the live node is kept down"
    );
});
