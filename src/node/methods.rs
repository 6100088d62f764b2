//! The method ledger: which methods this node serves, by implementation, with the budget that
//! keeps its `method:` entries within half a frame (a bound kept from the version-2 status,
//! which had to fit one frame). Plain state behind a lock in `NodeShared`, written by
//! whoever adds or removes an implementation (an application's ServiceSession, a
//! `NodeHandle`, Calls) and read by Membership when it announces. No actor of its own.
//!
//! Why a ledger beside Calls' table: an application's `implement` must be refused *at once*,
//! with a code, when it would make this node's status too large for a frame, and Calls answers
//! through its mailbox. And why Membership reads it rather than being sent the list: a change
//! used to send Membership the whole list, so a mass leave of n methods cost O(n²) (12
//! applications × 256 methods leaving at once took a node from 9 to 281 MiB). Now a change
//! only raises a flag; Calls tells Membership once per flag, and Membership reads the list
//! when it announces (at most twice per heartbeat interval).
//!
//! Bounds: at most [`MAX_METHODS`](super::calls::MAX_METHODS) methods, whose names take at
//! most [`method_bytes_budget`] bytes encoded (each name costs its length plus
//! [`NAME_OVERHEAD_BYTES`](super::counted::NAME_OVERHEAD_BYTES)): half the frame limit less
//! the HTTP backends' budget (`backends::backend_bytes_budget`), at most
//! [`MAX_METHOD_TABLE_BYTES`]. The other half holds the rest of a status: names of at most 64
//! bytes, one link per configured node, and the stats. The counting itself is
//! `counted::CountedNames`, shared with the HTTP-backend ledger.

use std::sync::Mutex;

use super::backends::backend_bytes_budget;
use super::calls::{ImplementationId, MAX_METHODS};
use super::counted::{CountedNames, Full};

/// The most bytes a node's method names take in its replicated state (CBOR-encoded).
pub const MAX_METHOD_TABLE_BYTES: usize = 512 * 1024;

/// The budget of method-name bytes for a node whose frames are at most `max_frame_bytes`:
/// half a frame, less what the HTTP backends may take.
pub fn method_bytes_budget(max_frame_bytes: usize) -> usize {
    let half = (max_frame_bytes / 2).saturating_sub(backend_bytes_budget(max_frame_bytes));
    MAX_METHOD_TABLE_BYTES.min(half)
}

/// Why an implementation was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("this node already serves {MAX_METHODS} methods")]
    TooMany,
    #[error("this node's method names would take more than {budget} bytes")]
    TooManyBytes { budget: usize },
}

#[derive(Default)]
struct Ledger {
    /// The method of each implementation.
    methods: CountedNames<ImplementationId>,
    /// A change not yet read by Membership.
    changed: bool,
    /// Membership was told of the change and has not read the list yet.
    told: bool,
}

pub struct MethodLedger {
    inner: Mutex<Ledger>,
    budget_bytes: usize,
}

impl MethodLedger {
    pub fn new(max_frame_bytes: usize) -> Self {
        MethodLedger {
            inner: Mutex::new(Ledger::default()),
            budget_bytes: method_bytes_budget(max_frame_bytes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Every update leaves the ledger consistent: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit implementation `id` of `method`. A method already served costs nothing more.
    ///
    /// # Errors
    /// [`LedgerError`] when a new method would cross the count or the byte budget.
    pub fn add(&self, id: ImplementationId, method: &str) -> Result<(), LedgerError> {
        let mut l = self.lock();
        match l.methods.add(id, method, MAX_METHODS, self.budget_bytes) {
            Ok(grew) => {
                l.changed |= grew;
                Ok(())
            }
            Err(Full::Count) => Err(LedgerError::TooMany),
            Err(Full::Bytes) => Err(LedgerError::TooManyBytes {
                budget: self.budget_bytes,
            }),
        }
    }

    /// Forget implementation `id` (unknown ids are ignored: removal is idempotent).
    pub fn remove(&self, id: ImplementationId) {
        let mut l = self.lock();
        if l.methods.remove(&id) {
            l.changed = true;
        }
    }

    /// Whether Membership should be told of a change now: true once per batch of changes,
    /// until it reads the list.
    pub fn tell(&self) -> bool {
        let mut l = self.lock();
        if l.changed && !l.told {
            l.told = true;
            true
        } else {
            false
        }
    }

    /// The methods served, sorted, each once; clears the change flags.
    pub fn names(&self) -> Vec<String> {
        let mut l = self.lock();
        l.changed = false;
        l.told = false;
        l.methods.names()
    }

    /// Encoded bytes of the distinct method names now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().methods.bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::counted::NAME_OVERHEAD_BYTES;
    use super::*;

    #[test]
    fn a_method_served_twice_costs_once_and_leaves_with_its_last_implementation() {
        let l = MethodLedger::new(1024 * 1024);
        let (a, b) = (ImplementationId::next(), ImplementationId::next());
        l.add(a, "echo").unwrap();
        l.add(b, "echo").unwrap();
        assert_eq!(l.bytes(), 4 + NAME_OVERHEAD_BYTES);
        l.remove(a);
        assert_eq!(l.names(), ["echo"]);
        l.remove(b);
        l.remove(b);
        assert!(l.names().is_empty());
        assert_eq!(l.bytes(), 0);
    }

    #[test]
    fn the_method_that_would_overflow_the_status_is_refused() {
        let l = MethodLedger::new(1024 * 1024);
        let budget = method_bytes_budget(1024 * 1024);
        let name = |i: usize| format!("{i:0>255}");
        let fit = budget / (255 + NAME_OVERHEAD_BYTES);
        for i in 0..fit {
            l.add(ImplementationId::next(), &name(i)).unwrap();
        }
        assert_eq!(
            l.add(ImplementationId::next(), &name(fit)),
            Err(LedgerError::TooManyBytes { budget })
        );
        // One more implementation of a method already served is free.
        l.add(ImplementationId::next(), &name(0)).unwrap();
        assert!(l.bytes() <= budget);
        assert_eq!(l.names().len(), fit);
    }

    #[test]
    fn the_count_of_methods_is_bounded_too() {
        let l = MethodLedger::new(64 * 1024 * 1024);
        for i in 0..MAX_METHODS {
            l.add(ImplementationId::next(), &format!("m{i}")).unwrap();
        }
        assert_eq!(
            l.add(ImplementationId::next(), "one-more"),
            Err(LedgerError::TooMany)
        );
    }

    #[test]
    fn membership_is_told_once_per_batch_of_changes() {
        let l = MethodLedger::new(1024 * 1024);
        assert!(!l.tell(), "nothing changed");
        for i in 0..100 {
            l.add(ImplementationId::next(), &format!("m{i}")).unwrap();
        }
        assert!(l.tell());
        assert!(!l.tell(), "told already, not read yet");
        assert_eq!(l.names().len(), 100);
        assert!(!l.tell(), "read: nothing new");
        l.add(ImplementationId::next(), "new").unwrap();
        assert!(l.tell());
    }

    #[test]
    fn a_small_frame_limit_shrinks_the_budget_to_half_a_frame_less_the_backends() {
        assert_eq!(method_bytes_budget(1024), 512 - 64);
        assert_eq!(
            method_bytes_budget(1024 * 1024),
            512 * 1024 - super::super::backends::MAX_BACKEND_TABLE_BYTES
        );
        assert_eq!(
            method_bytes_budget(64 * 1024 * 1024),
            MAX_METHOD_TABLE_BYTES
        );
    }
}
