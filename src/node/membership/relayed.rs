//! Which whole states a link has been sent already: what lets a digest's answer leave out the
//! states the asker is about to receive anyway. Plain state owned by
//! [`Membership`](super::Membership) (supervised by NodeSupervisor); no actor of its own.
//!
//! A digest and the deltas a node queued before it read that digest cross on the link: the
//! asker lists what it held when it wrote the digest, and what was sent to it meanwhile is
//! on its way. Answered in full, each of those states arrived twice. In a forming 1,000-node
//! star, whose workers' links carried seconds of relays, 0.3 to 0.8 million of the 2 million
//! records the workers received were second copies of whole states they held by then.
//!
//! A link is *complete* from the first flush that finds it one of this node's links, until a
//! flush has to drop something queued for it (or another link to the same peer replaces it).
//! While it is complete, everything queued for it reaches it, in order. So the whole state
//! of a node went to it already when this node
//!
//! - took that state (a node or an incarnation new here) while the link was complete: the
//!   relay of every new state goes to every link but those an answer leaves out too; or
//! - took it before the link's last digest was answered, while complete: an asker that lacked
//!   it entirely then was sent it whole.
//!
//! An answer to that link leaves such a state out when the asker lacks it entirely. The
//! rule holds for [`Relayed::new`]'s horizon after the state was taken: past it, an asker
//! that still lacks the state (it dropped the relay, say, as a record about a node it
//! forgot) gets it whole again at its next digest.
//!
//! Events are ordered by a counter of their own, so that two in the same millisecond are
//! still ordered; times (this node's milliseconds since it started) are passed in, so the
//! rule is tested without waiting.

use std::collections::HashMap;

/// What one link was sent (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Sent {
    link_id: u64,
    /// Complete since this event.
    since: u64,
    /// The last answer to its digest, while complete.
    answered: Option<u64>,
}

/// See the module doc.
#[derive(Debug)]
pub(super) struct Relayed {
    links: HashMap<String, Sent>,
    /// When each whole state was taken here (event, ms), within the horizon.
    taken: HashMap<String, (u64, u64)>,
    horizon_ms: u64,
    /// The last event's number.
    event: u64,
}

impl Relayed {
    pub(super) fn new(horizon_ms: u64) -> Self {
        Relayed {
            links: HashMap::new(),
            taken: HashMap::new(),
            horizon_ms,
            event: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.event += 1;
        self.event
    }

    /// `node`'s whole state was taken here at `now_ms` (and queued for every link but those
    /// a relay skips, which an answer leaves out too).
    pub(super) fn taken(&mut self, node: &str, now_ms: u64) {
        let at = (self.next(), now_ms);
        match self.taken.get_mut(node) {
            Some(held) => *held = at,
            None => {
                self.taken.insert(node.to_owned(), at);
            }
        }
    }

    /// A flush found `peer`'s link `link_id` among this node's links and sent it all that
    /// was queued for it (`complete`), or had to drop some of it.
    pub(super) fn flushed(&mut self, peer: &str, link_id: u64, complete: bool) {
        match self.links.get(peer) {
            Some(s) if s.link_id == link_id && complete => {}
            _ => {
                let since = self.next();
                let sent = Sent {
                    link_id,
                    since,
                    answered: None,
                };
                self.links.insert(peer.to_owned(), sent);
            }
        }
    }

    /// `peer`'s digest was answered: every whole state held here that it lacked is queued
    /// for it.
    pub(super) fn answered(&mut self, peer: &str) {
        let at = self.next();
        if let Some(s) = self.links.get_mut(peer) {
            s.answered = Some(at);
        }
    }

    /// Keep the links `is_link` still names (an absent one starts again when it is back).
    pub(super) fn retain_links(&mut self, is_link: impl Fn(&str) -> bool) {
        self.links.retain(|peer, _| is_link(peer));
    }

    /// Whether `node`'s whole state went to `peer`'s link already (or is queued for it).
    pub(super) fn went_to(&self, peer: &str, node: &str, now_ms: u64) -> bool {
        let (Some(link), Some(&(at, at_ms))) = (self.links.get(peer), self.taken.get(node)) else {
            return false;
        };
        now_ms.saturating_sub(at_ms) < self.horizon_ms
            && (at > link.since || link.answered.is_some_and(|a| at < a))
    }

    pub(super) fn forget(&mut self, node: &str) {
        self.taken.remove(node);
    }

    /// Drop what is past the horizon: the map holds only states taken within it.
    pub(super) fn expire(&mut self, now_ms: u64) {
        let horizon = self.horizon_ms;
        self.taken
            .retain(|_, &mut (_, at_ms)| now_ms.saturating_sub(at_ms) < horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_taken_while_the_link_was_complete_went_to_it_until_the_horizon() {
        let mut r = Relayed::new(10_000);
        r.flushed("w1", 7, true);
        r.taken("w2", 150);
        assert!(r.went_to("w1", "w2", 200));
        assert!(r.went_to("w1", "w2", 10_149));
        assert!(
            !r.went_to("w1", "w2", 10_150),
            "past the horizon it goes again"
        );
        assert!(!r.went_to("w3", "w2", 200), "a link no flush has seen");
    }

    #[test]
    fn a_state_taken_before_the_link_joined_went_to_it_only_in_an_answer() {
        let mut r = Relayed::new(10_000);
        r.taken("w2", 100);
        r.flushed("w1", 7, true);
        assert!(
            !r.went_to("w1", "w2", 100),
            "taken in the same millisecond, but before"
        );
        r.answered("w1");
        assert!(r.went_to("w1", "w2", 100));
        r.answered("w9");
        assert!(
            !r.went_to("w9", "w2", 100),
            "an answer to a link no flush has seen"
        );
    }

    #[test]
    fn a_drop_or_another_link_to_the_peer_starts_the_link_again() {
        let mut r = Relayed::new(10_000);
        r.taken("w2", 100);
        r.flushed("w1", 7, true);
        r.answered("w1");
        r.taken("w3", 150);
        r.flushed("w1", 7, true);
        assert!(r.went_to("w1", "w2", 200) && r.went_to("w1", "w3", 200));
        r.flushed("w1", 7, false);
        assert!(!r.went_to("w1", "w2", 250), "a record for w1 was dropped");
        assert!(!r.went_to("w1", "w3", 250));
        r.taken("w4", 300);
        assert!(r.went_to("w1", "w4", 350));
        r.flushed("w1", 8, true);
        assert!(
            !r.went_to("w1", "w4", 450),
            "link 8 did not get what link 7 got"
        );
        r.retain_links(|p| p != "w1");
        r.taken("w5", 500);
        assert!(!r.went_to("w1", "w5", 550));
    }

    #[test]
    fn forgotten_and_expired_states_are_not_held() {
        let mut r = Relayed::new(1_000);
        r.flushed("w1", 7, true);
        r.taken("w2", 10);
        r.taken("w3", 900);
        r.forget("w3");
        assert!(!r.went_to("w1", "w3", 950));
        r.expire(1_010);
        assert!(r.taken.is_empty());
    }
}
