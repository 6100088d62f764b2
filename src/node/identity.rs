//! Identity: one process per node name. Not an actor: PeerListener and Upstream consult it
//! during a link's handshake, once the peer has proved it holds the cluster secret and before
//! the link is set up, reading the route table snapshot (no mailbox hop).
//!
//! A peer claiming a name this node already holds a link to is judged by that link:
//! - the same incarnation: the same process reconnecting (the old link is half-dead); the new
//!   link replaces the old one (the Router keeps the newest);
//! - another incarnation while the held link is alive and fresh (a frame within the failure
//!   timeout): a second process claiming a node that is up. It is refused with
//!   `duplicate_node`, logged at WARN here, and this node keeps its link;
//! - another incarnation while the held link is silent past the failure timeout: a restart
//!   (the old process is gone and its link was not closed yet); admitted, and the new link
//!   replaces the old one as before.
//!
//! With no link held to that name, anyone authenticated is admitted (a start or a restart).
//! The side refused treats `duplicate_node` as fatal: see [`refused_as_duplicate`].

use std::time::Duration;

use uuid::Uuid;

use super::shared::NodeShared;
use crate::wire::{HandshakeError, PeerInfo};

/// The code of the refusal, in the `error` frame and in logs.
pub const DUPLICATE_NODE: &str = "duplicate_node";

/// What a claim to a node name amounts to, given the link held to that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No link is held to that name.
    Free,
    /// The incarnation of the held link: the same process, reconnecting.
    Reconnect,
    /// Another incarnation, and the held link has been silent past the failure timeout.
    Restart,
    /// Another incarnation while the held link is alive and fresh.
    Duplicate { held: Uuid, silent: Duration },
}

/// Judge a claim by `claimed` given the held link's incarnation and how long it has been
/// silent (`None`: no link held).
pub(crate) fn judge(
    held: Option<(Uuid, Duration)>,
    claimed: Uuid,
    failure_timeout: Duration,
) -> Claim {
    match held {
        None => Claim::Free,
        Some((inc, _)) if inc == claimed => Claim::Reconnect,
        Some((_, silent)) if silent > failure_timeout => Claim::Restart,
        Some((held, silent)) => Claim::Duplicate { held, silent },
    }
}

/// The handshake check of both link directions: refuse `peer` with
/// [`HandshakeError::Duplicate`] when another process of that name is up on a live link.
/// `addr` is where the claim came from (for the log line).
///
/// # Errors
/// [`HandshakeError::Duplicate`], logged at WARN.
pub(crate) fn check(
    shared: &NodeShared,
    peer: &PeerInfo,
    addr: &str,
) -> Result<(), HandshakeError> {
    let table = shared.routes.load();
    let held = table.link(&peer.node).map(|l| {
        let silent_ms = shared.now_ms().saturating_sub(l.counters.last_inbound_ms());
        (l.incarnation, Duration::from_millis(silent_ms))
    });
    match judge(held, peer.incarnation, shared.failure_timeout()) {
        Claim::Duplicate { held, silent } => {
            tracing::warn!(node = %shared.name(), peer = %peer.node, addr,
                claimed = %peer.incarnation, held = %held,
                "{DUPLICATE_NODE}: refused a second process claiming {}: incarnation {held} is up on a live link (last frame {} ms ago)",
                peer.node, silent.as_millis());
            Err(HandshakeError::Duplicate(format!(
                "node {:?} is already up on a live link to {:?} (incarnation {held}); \
                 is a second process running with this name?",
                peer.node,
                shared.name()
            )))
        }
        Claim::Restart => {
            tracing::info!(node = %shared.name(), peer = %peer.node, addr, incarnation = %peer.incarnation,
                "{} restarted: a new incarnation replaces the silent link", peer.node);
            Ok(())
        }
        Claim::Free | Claim::Reconnect => Ok(()),
    }
}

/// Whether a handshake failed because the peer refused this node as a duplicate: the message
/// to stop the node with (naming the node and the peer that refused), or `None`.
pub(crate) fn refused_as_duplicate(me: &str, peer: &str, e: &HandshakeError) -> Option<String> {
    match e {
        HandshakeError::Refused { code, message } if code == DUPLICATE_NODE => Some(format!(
            "node {me}: {DUPLICATE_NODE}: {peer} refused the link: {message}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(500);

    #[test]
    fn a_name_with_no_link_held_is_free_to_claim() {
        assert_eq!(judge(None, Uuid::new_v4(), TIMEOUT), Claim::Free);
    }

    #[test]
    fn the_same_incarnation_reconnecting_is_never_a_duplicate() {
        let inc = Uuid::new_v4();
        assert_eq!(
            judge(Some((inc, Duration::ZERO)), inc, TIMEOUT),
            Claim::Reconnect
        );
    }

    #[test]
    fn another_incarnation_while_the_held_link_is_fresh_is_a_duplicate() {
        let (held, claimed) = (Uuid::new_v4(), Uuid::new_v4());
        let silent = Duration::from_millis(100);
        assert_eq!(
            judge(Some((held, silent)), claimed, TIMEOUT),
            Claim::Duplicate { held, silent }
        );
        // At the failure timeout exactly the link still counts as alive.
        assert!(matches!(
            judge(Some((held, TIMEOUT)), claimed, TIMEOUT),
            Claim::Duplicate { .. }
        ));
    }

    #[test]
    fn another_incarnation_after_the_held_link_went_silent_is_a_restart() {
        let silent = TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            judge(Some((Uuid::new_v4(), silent)), Uuid::new_v4(), TIMEOUT),
            Claim::Restart
        );
    }

    #[test]
    fn only_a_duplicate_node_refusal_is_fatal_and_its_message_names_node_and_peer() {
        let refused = HandshakeError::Refused {
            code: DUPLICATE_NODE.into(),
            message: "node \"worker-1\" is already up".into(),
        };
        let msg = refused_as_duplicate("worker-1", "master", &refused).unwrap_or_default();
        assert!(
            msg.contains("node worker-1")
                && msg.contains("master refused")
                && msg.contains(DUPLICATE_NODE),
            "{msg}"
        );
        let other = HandshakeError::Refused {
            code: "not_admitted".into(),
            message: String::new(),
        };
        assert_eq!(refused_as_duplicate("worker-1", "master", &other), None);
        assert_eq!(
            refused_as_duplicate("worker-1", "master", &HandshakeError::AuthFailed),
            None
        );
    }
}
