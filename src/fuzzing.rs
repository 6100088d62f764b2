//! Internals the fuzz targets (the `fuzz/` crate) drive without a running node, behind the
//! `fuzzing` feature: not an API, never compiled into a user's build. Owns nothing and is
//! supervised by nobody: each item is a thin, pure wrapper over the code a node runs.
//!
//! * [`Dedup`]: the duplicate-suppression window of broadcasts (node/dedup.rs).
//! * [`accept_status`] / [`normalize_status`]: status acceptance in Membership.
//! * [`check_request`]: the content checks a ServiceSession applies to an application's
//!   messages before it acts on them.

use uuid::Uuid;

use crate::wire::{Message, Status};

/// Event ids remembered below the highest seen, per origin.
pub const WINDOW: u64 = crate::node::WINDOW;
/// The largest jump above the highest id seen that is taken.
pub const MAX_JUMP: u64 = crate::node::MAX_JUMP;
/// How far ahead of this node's clock a boot time may be.
pub const MAX_CLOCK_SKEW_MS: u64 = crate::node::MAX_CLOCK_SKEW_MS;

/// The dedup window of one node, tracking the origins of a cluster of `nodes` nodes.
pub struct Dedup(crate::node::Dedup);

impl Dedup {
    pub fn new(nodes: usize) -> Self {
        Dedup(crate::node::Dedup::new(nodes))
    }

    /// True the first time `(origin, id)` is offered.
    pub fn first_sighting(&mut self, origin: Uuid, id: u64) -> bool {
        self.0.first_sighting(origin, id)
    }

    /// Origins tracked, and the most that may be.
    pub fn origins_tracked(&self) -> (usize, usize) {
        self.0.origins_tracked()
    }

    /// The highest id taken from `origin`, if tracked.
    pub fn highest(&self, origin: Uuid) -> Option<u64> {
        self.0.highest(origin)
    }
}

/// Whether a status for node X is taken: `via` is the peer it came on, `via_incarnation` the
/// incarnation that peer's handshake authenticated, `linked` whether this node has a live link
/// to X, `held` the status held for X, `now_ms` this node's clock.
///
/// # Errors
/// Why the status is ignored, as the node would log it.
pub fn accept_status(
    status: &Status,
    via: &str,
    via_incarnation: Uuid,
    linked: bool,
    held: Option<&Status>,
    now_ms: u64,
) -> Result<(), String> {
    let link = crate::node::Link {
        via,
        via_incarnation,
        linked,
    };
    crate::node::accept_status(status, &link, held, now_ms).map_err(|e| match e {
        crate::node::Ignored::Stale => "stale".to_owned(),
        other => other.to_string(),
    })
}

/// Bound an accepted status's links (to `known` nodes, at most `nodes`) and methods.
pub fn normalize_status(status: &mut Status, known: impl Fn(&str) -> bool, nodes: usize) {
    crate::node::normalize_status(status, known, nodes);
}

/// What a service session answers to a message from its content alone: `Ok(())` when it acts
/// on it, `Err((kind, code))` with `kind` `"refused"` (it goes on) or `"error"` (it closes).
///
/// # Errors
/// The refusal or the closing error, with its protocol code.
pub fn check_request(msg: &Message) -> Result<(), (&'static str, &'static str)> {
    match crate::node::check_request(msg) {
        crate::node::Verdict::Admit => Ok(()),
        crate::node::Verdict::Refuse { code, .. } => Err(("refused", code)),
        crate::node::Verdict::Close { code, .. } => Err(("error", code)),
    }
}
