//! Rows of the link graph that name a node without an index yet. Owned by
//! [`Membership`](super::Membership) (supervised by NodeSupervisor).
//!
//! A held state may report a link to a node this one has not indexed yet (its own state has
//! not arrived). The row of that state is then short of the link, and must be built again
//! once the node gets an index. The names come from peers, so what is remembered is bounded:
//! at most `max_pairs` (name, row) pairs. Past that, nothing more is remembered and the next
//! new index has every row built again: slower, never wrong.

use std::collections::HashMap;

/// What to build again now that a node has an index.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rebuild {
    /// These rows (none, if no row waited for the name).
    Rows(Vec<usize>),
    /// Every row: a pair was left out when the bound was reached.
    All,
}

pub(super) struct IndexWaits {
    rows: HashMap<String, Vec<usize>>,
    pairs: usize,
    max_pairs: usize,
    overflow: bool,
}

impl IndexWaits {
    pub(super) fn new(max_pairs: usize) -> Self {
        IndexWaits {
            rows: HashMap::new(),
            pairs: 0,
            max_pairs,
            overflow: false,
        }
    }

    /// Row `row` names `peer`, which has no index yet.
    pub(super) fn wait(&mut self, peer: &str, row: usize) {
        if let Some(rows) = self.rows.get_mut(peer) {
            if rows.contains(&row) {
                return;
            }
        }
        if self.pairs >= self.max_pairs {
            self.overflow = true;
            return;
        }
        self.rows.entry(peer.to_owned()).or_default().push(row);
        self.pairs += 1;
    }

    /// `name` got an index: the rows to build again.
    pub(super) fn indexed(&mut self, name: &str) -> Rebuild {
        if std::mem::take(&mut self.overflow) {
            self.clear();
            return Rebuild::All;
        }
        let rows = self.rows.remove(name).unwrap_or_default();
        self.pairs -= rows.len();
        Rebuild::Rows(rows)
    }

    /// Forget every wait (every row is being built again anyway).
    pub(super) fn clear(&mut self) {
        self.rows.clear();
        self.pairs = 0;
        self.overflow = false;
    }

    #[cfg(test)]
    fn pairs(&self) -> usize {
        self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::{IndexWaits, Rebuild};

    #[test]
    fn the_rows_that_named_a_node_are_built_again_when_it_gets_an_index_and_only_once() {
        let mut w = IndexWaits::new(8);
        w.wait("b", 0);
        w.wait("b", 3);
        w.wait("b", 3);
        w.wait("c", 1);
        assert_eq!(w.pairs(), 3, "a repeated pair is held once");
        assert_eq!(w.indexed("b"), Rebuild::Rows(vec![0, 3]));
        assert_eq!(w.indexed("b"), Rebuild::Rows(vec![]));
        assert_eq!(w.indexed("nobody"), Rebuild::Rows(vec![]));
        assert_eq!(w.pairs(), 1);
        assert_eq!(w.indexed("c"), Rebuild::Rows(vec![1]));
        assert_eq!(w.pairs(), 0);
    }

    #[test]
    fn past_its_bound_it_remembers_nothing_more_and_the_next_index_rebuilds_every_row() {
        let mut w = IndexWaits::new(4);
        for row in 0..4 {
            w.wait(&format!("peer-{row}"), row);
        }
        assert_eq!(w.pairs(), 4);
        // A pair already held is no new pair: no overflow.
        w.wait("peer-0", 0);
        assert_eq!(w.indexed("peer-0"), Rebuild::Rows(vec![0]));
        w.wait("peer-0", 0);
        // The fifth pair does not fit: it is not held, and everything is rebuilt next.
        for row in 0..1000 {
            w.wait(&format!("flood-{row}"), row);
        }
        assert_eq!(w.pairs(), 4, "held pairs stay at the bound");
        assert_eq!(w.indexed("peer-3"), Rebuild::All);
        assert_eq!(w.pairs(), 0, "emptied: every row is being built again");
        assert_eq!(w.indexed("flood-7"), Rebuild::Rows(vec![]));
        // Room again.
        w.wait("later", 9);
        assert_eq!(w.indexed("later"), Rebuild::Rows(vec![9]));
    }
}
