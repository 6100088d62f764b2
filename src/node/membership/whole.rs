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
use crate::wire::{EncodedRecord, NodeDelta, WireError};

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

/// A whole state as [`WholeStates::get`] hands it out.
pub(super) enum Whole {
    /// One record, encoded, and its number of entries.
    Encoded(EncodedRecord, u64),
    /// The records of a state too large for one.
    Parts(Vec<NodeDelta>),
}

/// One encoded whole state per node held (see the module doc).
#[derive(Default)]
pub(super) struct WholeStates {
    held: HashMap<String, Held>,
}

impl WholeStates {
    /// The whole state of `node` as `state` holds it now: one record encoded, with its number
    /// of entries (the bytes of last time if the state did not change since, else encoded now
    /// and kept), or the records it takes when it is larger than `budget` estimated bytes
    /// (not kept: [`NodeState::since`]'s parts).
    ///
    /// # Errors
    /// What encoding the record returns (not expected of a `NodeDelta`).
    pub(super) fn get(
        &mut self,
        node: &str,
        state: &NodeState,
        budget: usize,
    ) -> Result<Whole, WireError> {
        if let Some(h) = self.held.get(node).filter(|h| h.is_of(state)) {
            return Ok(Whole::Encoded(h.record.clone(), h.entries));
        }
        let mut parts = state.since(node, 0, budget);
        let whole = match parts.pop() {
            Some(whole) if parts.is_empty() => whole,
            last => {
                parts.extend(last);
                return Ok(Whole::Parts(parts));
            }
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
        Ok(Whole::Encoded(record, entries))
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

    use super::{Whole, WholeStates};
    use crate::node::replica::NodeState;
    use crate::wire::{EncodedRecord, Value};

    fn state() -> NodeState {
        let mut s = NodeState::new(Uuid::from_bytes([3; 16]), 42);
        s.set("role", Value::Text("worker".into()));
        s.set("link:master", Value::Set);
        s
    }

    fn encoded(w: Whole) -> (EncodedRecord, u64) {
        match w {
            Whole::Encoded(record, entries) => (record, entries),
            Whole::Parts(parts) => panic!("{} parts", parts.len()),
        }
    }

    #[test]
    fn an_unchanged_state_is_served_from_the_bytes_of_last_time_and_a_change_encodes_it_again() {
        let mut whole = WholeStates::default();
        let mut s = state();
        let (first, entries) = encoded(whole.get("w1", &s, 1 << 20).unwrap());
        assert_eq!(entries, 2);
        let expected = EncodedRecord::encode(&s.since("w1", 0, 1 << 20).remove(0)).unwrap();
        assert_eq!(first, expected, "the record is the whole state's");
        let (again, _) = encoded(whole.get("w1", &s, 1 << 20).unwrap());
        assert_eq!(again, first);

        s.remove("link:master", 7);
        let (after, entries) = encoded(whole.get("w1", &s, 1 << 20).unwrap());
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
        match whole.get("w1", &s, 1).unwrap() {
            Whole::Parts(parts) => assert_eq!(parts, s.since("w1", 0, 1), "two parts"),
            Whole::Encoded(..) => panic!("one record past the budget"),
        }
        assert_eq!(whole.len(), 0);
        encoded(whole.get("w1", &s, 1 << 20).unwrap());
        whole.forget("w1");
        assert_eq!(whole.len(), 0);
    }
}
