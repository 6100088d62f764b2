//! Internals the fuzz targets (the `fuzz/` crate) drive without a running node, behind the
//! `fuzzing` feature: not an API, never compiled into a user's build. Owns nothing and is
//! supervised by nobody: each item is a thin, pure wrapper over the code a node runs.
//!
//! * [`Dedup`]: the duplicate-suppression window of broadcasts (node/dedup.rs).
//! * [`Replica`]: how Membership takes a delta (its claim checks and the versioned store).
//! * [`check_request`]: the content checks a ServiceSession applies to an application's
//!   messages before it acts on them.

use uuid::Uuid;

use crate::wire::{Message, NodeDelta};

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

/// What a node holds of other nodes' replicated states, fed deltas as Membership feeds them
/// (claim checks, then the versioned store).
#[derive(Default)]
pub struct Replica(crate::node::Replica);

/// What became of a delta: taken (`Ok(true)` if something was new), or why it was not.
pub type Taken = Result<bool, String>;

impl Replica {
    pub fn new() -> Self {
        Replica::default()
    }

    /// Take `delta` as if it came on the link to `via` (authenticated as `via_incarnation`),
    /// `linked` saying whether this node has a live link to the delta's node; `now_ms` is
    /// this node's clock, and a node holds at most `max_entries` entries.
    ///
    /// # Errors
    /// Why the delta is ignored, as the node would log it.
    pub fn take(
        &mut self,
        delta: NodeDelta,
        via: &str,
        via_incarnation: Uuid,
        linked: bool,
        now_ms: u64,
        max_entries: usize,
    ) -> Taken {
        let link = crate::node::Link {
            via,
            via_incarnation,
            linked,
        };
        match crate::node::take_delta(&mut self.0, delta, &link, now_ms, now_ms, max_entries) {
            Ok(crate::node::Applied::New(_)) => Ok(true),
            Ok(crate::node::Applied::Stale) => Ok(false),
            Ok(crate::node::Applied::Gap) => Err("gap".to_owned()),
            Ok(crate::node::Applied::Refused) => Err("refused".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The incarnation, boot time, highest version and entry count held for `node`.
    pub fn held(&self, node: &str) -> Option<(Uuid, u64, u64, usize)> {
        self.0
            .get(node)
            .map(|s| (s.incarnation, s.boot_ms, s.max_version, s.len()))
    }
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
