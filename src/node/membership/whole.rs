//! Whole states encoded once: the record a node sends for a state a peer does not hold at
//! all (a newcomer's digest lists nothing), kept until that state changes. Owned by
//! [`Membership`](super::Membership), which NodeSupervisor supervises; pure data.
//!
//! A star's master answers each newcomer's first digest with the whole state of every node
//! it holds. Built and encoded again for each newcomer, a thousand workers joining cost the
//! master a million records built and encoded: over half its thread while a large star
//! formed. A worker's state seldom changes once it is up, so the master now encodes it once
//! and splices the same bytes into every newcomer's answer.
//!
//! Bounded by the states held: one record per node, replaced when the state moved on, and
//! dropped when the node is forgotten.

use std::collections::HashMap;

use uuid::Uuid;

use crate::node::replica::NodeState;
use crate::wire::{EncodedRecord, WireError};

/// The encoded whole state of a node as it stood at `(incarnation, max_version,
/// gc_version)`.
struct Held {
    incarnation: Uuid,
    max_version: u64,
    gc_version: u64,
    record: EncodedRecord,
    entries: u64,
}

impl Held {
    fn is_of(&self, state: &NodeState) -> bool {
        self.incarnation == state.incarnation
            && self.max_version == state.max_version
            && self.gc_version == state.gc_version
    }
}

/// One encoded whole state per node held (see the module doc).
#[derive(Default)]
pub(super) struct WholeStates {
    held: HashMap<String, Held>,
}

impl WholeStates {
    /// The whole state of `node` as `state` holds it now, encoded, with its number of
    /// entries: the bytes of last time if the state did not change since, else encoded now
    /// and kept. `Ok(None)` when the state takes more than one record of at most `budget`
    /// estimated bytes: the caller sends it in parts ([`NodeState::since`]).
    ///
    /// # Errors
    /// What encoding the record returns (not expected of a `NodeDelta`).
    pub(super) fn get(
        &mut self,
        node: &str,
        state: &NodeState,
        budget: usize,
    ) -> Result<Option<(EncodedRecord, u64)>, WireError> {
        if let Some(h) = self.held.get(node).filter(|h| h.is_of(state)) {
            return Ok(Some((h.record.clone(), h.entries)));
        }
        let mut parts = state.since(node, 0, budget);
        let Some(whole) = parts.pop().filter(|_| parts.is_empty()) else {
            return Ok(None);
        };
        let record = EncodedRecord::encode(&whole)?;
        let entries = whole.entries.len() as u64;
        let held = Held {
            incarnation: state.incarnation,
            max_version: state.max_version,
            gc_version: state.gc_version,
            record: record.clone(),
            entries,
        };
        match self.held.get_mut(node) {
            Some(h) => *h = held,
            None => {
                self.held.insert(node.to_owned(), held);
            }
        }
        Ok(Some((record, entries)))
    }

    /// `node` was forgotten: its record goes with it.
    pub(super) fn forget(&mut self, node: &str) {
        self.held.remove(node);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use uuid::Uuid;

    use super::WholeStates;
    use crate::node::replica::NodeState;
    use crate::wire::{EncodedRecord, Value};

    fn state() -> NodeState {
        let mut s = NodeState::new(Uuid::from_bytes([3; 16]), 42);
        s.set("role", Value::Text("worker".into()));
        s.set("link:master", Value::Set);
        s
    }

    #[test]
    fn an_unchanged_state_is_served_from_the_bytes_of_last_time_and_a_change_encodes_it_again() {
        let mut whole = WholeStates::default();
        let mut s = state();
        let (first, entries) = whole.get("w1", &s, 1 << 20).unwrap().unwrap();
        assert_eq!(entries, 2);
        let expected = EncodedRecord::encode(&s.since("w1", 0, 1 << 20).remove(0)).unwrap();
        assert_eq!(first, expected, "the record is the whole state's");
        let (again, _) = whole.get("w1", &s, 1 << 20).unwrap().unwrap();
        assert_eq!(again, first);

        s.remove("link:master", 7);
        let (after, entries) = whole.get("w1", &s, 1 << 20).unwrap().unwrap();
        assert_eq!(entries, 1, "a whole state carries no tombstones");
        assert_ne!(after, first, "a changed state is encoded again");
        assert_eq!(
            after,
            EncodedRecord::encode(&s.since("w1", 0, 1 << 20).remove(0)).unwrap()
        );
        assert_eq!(whole.len(), 1, "one record per node");
    }

    #[test]
    fn a_state_larger_than_one_record_is_not_kept_and_a_forgotten_node_leaves_nothing() {
        let mut whole = WholeStates::default();
        let s = state();
        assert!(whole.get("w1", &s, 1).unwrap().is_none(), "two parts");
        assert_eq!(whole.len(), 0);
        assert!(whole.get("w1", &s, 1 << 20).unwrap().is_some());
        whole.forget("w1");
        assert_eq!(whole.len(), 0);
    }
}
