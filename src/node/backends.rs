//! The backend ledger: the HTTP backends this node advertises (its configured `http`, and
//! those its applications registered with `http_backend`), with the bounds that keep its
//! status within one frame. Plain state behind a lock in `NodeShared`, written by the
//! application sessions that register and leave, read by Membership when it announces. No
//! actor of its own.
//!
//! Why nobody tells Membership of a change: backends change when an application attaches or
//! detaches, a few times in a node's life, and Membership looks at the ledger's flag on every
//! tick (once per heartbeat interval) and announces then. A change is therefore advertised
//! within an interval, and no message travels from the application's path to Membership.
//!
//! Bounds: at most [`MAX_BACKENDS`] distinct addresses of at most
//! [`MAX_BACKEND_ADDRESS_BYTES`] bytes each, within [`backend_bytes_budget`] encoded bytes,
//! which the method ledger leaves aside (see `methods::method_bytes_budget`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::counted::{CountedNames, Full, NAME_OVERHEAD_BYTES};
use crate::config::HostPort;

/// The most distinct HTTP backends one node advertises.
pub const MAX_BACKENDS: usize = 16;
/// The longest backend address (`HOST:PORT`).
pub const MAX_BACKEND_ADDRESS_BYTES: usize = 255;
/// The most bytes the backends take in a status (CBOR-encoded).
pub const MAX_BACKEND_TABLE_BYTES: usize =
    MAX_BACKENDS * (MAX_BACKEND_ADDRESS_BYTES + NAME_OVERHEAD_BYTES);

/// The budget of backend bytes in a status of a node whose frames are at most
/// `max_frame_bytes`: a sixteenth of a frame, at most [`MAX_BACKEND_TABLE_BYTES`].
pub fn backend_bytes_budget(max_frame_bytes: usize) -> usize {
    MAX_BACKEND_TABLE_BYTES.min(max_frame_bytes / 16)
}

/// One registration of a backend, by an application (unique in the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(u64);

static NEXT_BACKEND: AtomicU64 = AtomicU64::new(1);

impl BackendId {
    pub fn next() -> Self {
        BackendId(NEXT_BACKEND.fetch_add(1, Ordering::Relaxed))
    }
}

/// Why a backend was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("address {address:?} is not HOST:PORT: {why}")]
    BadAddress { address: String, why: String },
    #[error("address of {0} bytes is longer than {MAX_BACKEND_ADDRESS_BYTES}")]
    TooLong(usize),
    #[error("this node already advertises {MAX_BACKENDS} HTTP backends")]
    TooMany,
    #[error("this node's backends would take more than {budget} bytes")]
    TooManyBytes { budget: usize },
}

/// Check that `address` is a backend address: `HOST:PORT`, at most
/// [`MAX_BACKEND_ADDRESS_BYTES`] bytes.
///
/// # Errors
/// [`BackendError::TooLong`] or [`BackendError::BadAddress`].
pub fn check_address(address: &str) -> Result<(), BackendError> {
    if address.len() > MAX_BACKEND_ADDRESS_BYTES {
        return Err(BackendError::TooLong(address.len()));
    }
    HostPort::parse(address)
        .map(|_| ())
        .map_err(|e| BackendError::BadAddress {
            address: address.to_owned(),
            why: e.to_string(),
        })
}

#[derive(Default)]
struct Ledger {
    /// The address of each registration (the configured one is a registration for ever).
    addresses: CountedNames<BackendId>,
    /// A change not yet read by Membership.
    changed: bool,
}

pub struct BackendLedger {
    inner: Mutex<Ledger>,
    budget_bytes: usize,
}

impl BackendLedger {
    /// The ledger of a node whose frames are at most `max_frame_bytes`, advertising
    /// `configured` (its `http`) from the start.
    pub fn new(max_frame_bytes: usize, configured: Option<&HostPort>) -> Self {
        let ledger = BackendLedger {
            inner: Mutex::new(Ledger {
                changed: true,
                ..Ledger::default()
            }),
            budget_bytes: backend_bytes_budget(max_frame_bytes),
        };
        if let Some(address) = configured {
            // A configured address that does not fit is reported when the node starts.
            if let Err(e) = ledger.add(BackendId::next(), &address.to_string()) {
                tracing::error!("http {address} is not advertised: {e}");
            }
        }
        ledger
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Every update leaves the ledger consistent: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advertise `address` for registration `id`. An address advertised already costs
    /// nothing more.
    ///
    /// # Errors
    /// [`BackendError`] when the address is malformed or would cross a bound.
    pub fn add(&self, id: BackendId, address: &str) -> Result<(), BackendError> {
        check_address(address)?;
        let mut l = self.lock();
        match l
            .addresses
            .add(id, address, MAX_BACKENDS, self.budget_bytes)
        {
            Ok(grew) => {
                l.changed |= grew;
                Ok(())
            }
            Err(Full::Count) => Err(BackendError::TooMany),
            Err(Full::Bytes) => Err(BackendError::TooManyBytes {
                budget: self.budget_bytes,
            }),
        }
    }

    /// Forget registration `id` (unknown ids are ignored: removal is idempotent).
    pub fn remove(&self, id: BackendId) {
        let mut l = self.lock();
        if l.addresses.remove(&id) {
            l.changed = true;
        }
    }

    /// The addresses advertised, sorted, each once, if they changed since the last call.
    pub fn take_changed(&self) -> Option<Vec<String>> {
        let mut l = self.lock();
        if !l.changed {
            return None;
        }
        l.changed = false;
        Some(l.addresses.names())
    }

    /// The addresses advertised now, sorted.
    #[cfg(test)]
    pub fn addresses(&self) -> Vec<String> {
        self.lock().addresses.names()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_configured_backend_is_advertised_from_the_start() {
        let configured = HostPort::parse("127.0.0.1:9001").unwrap();
        let l = BackendLedger::new(1024 * 1024, Some(&configured));
        assert_eq!(l.take_changed().unwrap(), ["127.0.0.1:9001"]);
        assert_eq!(l.take_changed(), None, "read: nothing new");
    }

    #[test]
    fn a_registered_backend_leaves_with_its_last_registration() {
        let l = BackendLedger::new(1024 * 1024, None);
        let _ = l.take_changed();
        let (a, b) = (BackendId::next(), BackendId::next());
        l.add(a, "web-1:8080").unwrap();
        l.add(b, "web-1:8080").unwrap();
        assert_eq!(l.take_changed().unwrap(), ["web-1:8080"]);
        l.remove(a);
        assert_eq!(l.take_changed(), None, "still registered once");
        l.remove(b);
        l.remove(b);
        assert_eq!(l.take_changed().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn malformed_and_overlong_addresses_are_refused() {
        let l = BackendLedger::new(1024 * 1024, None);
        assert!(matches!(
            l.add(BackendId::next(), "no-port"),
            Err(BackendError::BadAddress { .. })
        ));
        let long = format!("{}:80", "a".repeat(MAX_BACKEND_ADDRESS_BYTES));
        assert_eq!(
            l.add(BackendId::next(), &long),
            Err(BackendError::TooLong(long.len()))
        );
        assert!(l.addresses().is_empty());
    }

    #[test]
    fn at_most_sixteen_backends_are_advertised_and_they_fit_their_budget() {
        let l = BackendLedger::new(1024 * 1024, None);
        let host = vec!["a".repeat(49); 5].join(".");
        let name = |i: usize| format!("{host}:{:0>5}", i + 1);
        for i in 0..MAX_BACKENDS {
            l.add(BackendId::next(), &name(i)).unwrap();
        }
        assert_eq!(
            l.add(BackendId::next(), &name(MAX_BACKENDS)),
            Err(BackendError::TooMany)
        );
        assert!(l.lock().addresses.bytes() <= backend_bytes_budget(1024 * 1024));
    }

    #[test]
    fn a_small_frame_limit_shrinks_the_backend_budget() {
        let l = BackendLedger::new(1024, None);
        assert_eq!(backend_bytes_budget(1024), 64);
        l.add(BackendId::next(), "10.0.0.1:80").unwrap();
        let long = format!("{}:80", "b".repeat(60));
        assert_eq!(
            l.add(BackendId::next(), &long),
            Err(BackendError::TooManyBytes { budget: 64 })
        );
    }
}
