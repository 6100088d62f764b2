//! The membership outbox: the delta records of one coalescing window, each held once however
//! many links it goes to. Owned by [`Membership`](super::Membership) (supervised by
//! NodeSupervisor), which fills it as changes come and empties it at the end of the window.
//!
//! A star's master relays every worker's record to every other worker. Kept per link, each
//! record was copied and encoded once per link (a thousand times at a thousand nodes), which
//! starved the master's thread. Here a record is stored once with the rule that says which
//! links get it, encoded once at the flush, and spliced into each link's frames
//! ([`encode_delta_frame`]).
//!
//! What a link gets is what a per-link queue would have held: the records for *every* link
//! (this node's own changes, and relays, less the links a relay must skip) that were queued
//! while the link was one of this node's links, and the records queued for it alone (answers
//! to its digest), all in the order they were queued.

use std::collections::{BTreeSet, HashMap};

use crate::wire::{encode_delta_frame, EncodedMessage, EncodedRecord, NodeDelta, WireError};

/// One `delta` message for one link, with what it carries (for the metrics).
pub(super) struct DeltaFrame {
    pub msg: EncodedMessage,
    pub records: u64,
    pub entries: u64,
}

/// A queued record.
struct Record {
    node: String,
    entries: u64,
    body: Body,
    /// Its node was forgotten while it waited: not sent. Kept in place so that the positions
    /// the other queues refer to still hold.
    dropped: bool,
}

/// A record as queued, then as sent.
enum Body {
    /// Encoded by [`Outbox::seal`].
    Pending(NodeDelta),
    /// Its bytes, made once for every link that gets it (or queued encoded already).
    Encoded(EncodedRecord),
}

impl Record {
    fn new(delta: NodeDelta) -> Self {
        Record {
            node: delta.node.clone(),
            entries: delta.entries.len() as u64,
            body: Body::Pending(delta),
            dropped: false,
        }
    }
}

/// A record for every link of this node but those in `skip`.
struct Shared {
    record: Record,
    /// The links it must not go to, sorted: for a relay, the one it came on, its origin and
    /// the links its origin reports (it pushed to those itself). Only those that were links
    /// of this node are listed, so this is short unless the graph is dense.
    skip: Box<[String]>,
}

/// This window's records (see the module doc).
#[derive(Default)]
pub(super) struct Outbox {
    /// Records for every link, in the order queued; a record's index is its position.
    shared: Vec<Shared>,
    /// Records for one link only, each with the number of shared records queued before it.
    only: HashMap<String, Vec<(usize, Record)>>,
    /// The links that joined (true) or left (false) this node's links during the window,
    /// and at which position: a shared record goes to a link that was one when it was
    /// queued. A link that did not move is one for the whole window, or for none of it.
    moves: HashMap<String, Vec<(usize, bool)>>,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.only.is_empty()
    }

    /// Queue `delta` for every link of this node now except those in `skip`.
    pub(super) fn queue_for_links(&mut self, delta: NodeDelta, mut skip: Vec<String>) {
        skip.sort_unstable();
        skip.dedup();
        self.shared.push(Shared {
            record: Record::new(delta),
            skip: skip.into_boxed_slice(),
        });
    }

    /// At the end of the window, before [`Outbox::seal`]: a relayed record (one whose node
    /// is not `me`) skips also the links its origin reports now (`reports(origin)`, those of
    /// this node's links the origin pushed to itself). While a cluster forms, what this node
    /// knows of the origin's links when the record comes is often behind what it knows a
    /// window later.
    pub(super) fn skip_reported(&mut self, me: &str, mut reports: impl FnMut(&str) -> Vec<String>) {
        for shared in &mut self.shared {
            if shared.record.node == me {
                continue;
            }
            let more = reports(&shared.record.node);
            if more.iter().all(|p| shared.skip.binary_search(p).is_ok()) {
                continue;
            }
            let mut skip: Vec<String> = std::mem::take(&mut shared.skip).into_vec();
            skip.extend(more);
            skip.sort_unstable();
            skip.dedup();
            shared.skip = skip.into_boxed_slice();
        }
    }

    /// Queue `delta` for the link to `peer` alone.
    pub(super) fn queue_for_link(&mut self, peer: &str, delta: NodeDelta) {
        self.queue_record_for_link(peer, Record::new(delta));
    }

    /// Queue a record of `node` encoded already (carrying `entries` entries) for the link to
    /// `peer` alone.
    pub(super) fn queue_encoded_for_link(
        &mut self,
        peer: &str,
        node: &str,
        encoded: EncodedRecord,
        entries: u64,
    ) {
        let record = Record {
            node: node.to_owned(),
            entries,
            body: Body::Encoded(encoded),
            dropped: false,
        };
        self.queue_record_for_link(peer, record);
    }

    fn queue_record_for_link(&mut self, peer: &str, record: Record) {
        let at = self.shared.len();
        match self.only.get_mut(peer) {
            Some(queue) => queue.push((at, record)),
            None => {
                self.only.insert(peer.to_owned(), vec![(at, record)]);
            }
        }
    }

    /// This node's links went from `before` to `after`: records queued from now on go to
    /// `after`, those queued before to `before`.
    pub(super) fn links_moved(&mut self, before: &BTreeSet<String>, after: &BTreeSet<String>) {
        if self.shared.is_empty() {
            // No record is affected: every link is judged by what it is at the flush.
            return;
        }
        let at = self.shared.len();
        let joined = after.difference(before).map(|p| (p, true));
        let left = before.difference(after).map(|p| (p, false));
        for (peer, joined) in joined.chain(left) {
            self.moves
                .entry(peer.clone())
                .or_default()
                .push((at, joined));
        }
    }

    /// Drop the queued records about `node` (it was forgotten).
    pub(super) fn forget(&mut self, node: &str) {
        let records = self.shared.iter_mut().map(|s| &mut s.record);
        let only = self.only.values_mut().flatten().map(|(_, r)| r);
        for r in records.chain(only) {
            if r.node == node {
                r.dropped = true;
            }
        }
    }

    /// Encode every record that may be sent, once. A record that cannot be encoded is
    /// dropped; its node and the error are returned (not expected of a `NodeDelta`).
    pub(super) fn seal(&mut self) -> Vec<(String, WireError)> {
        let mut failed = Vec::new();
        let records = self.shared.iter_mut().map(|s| &mut s.record);
        let only = self.only.values_mut().flatten().map(|(_, r)| r);
        for r in records.chain(only) {
            let Body::Pending(delta) = &r.body else {
                continue;
            };
            if r.dropped {
                continue;
            }
            match EncodedRecord::encode(delta) {
                Ok(e) => r.body = Body::Encoded(e),
                Err(e) => {
                    r.dropped = true;
                    failed.push((r.node.clone(), e));
                }
            }
        }
        failed
    }

    /// Hand `push` the frames for the link to `peer` (`linked`: it is one of this node's
    /// links now), each of at most `budget` bytes of records (a record larger than that goes
    /// alone), in order; stop at the first frame `push` refuses. Call [`Outbox::seal`] first:
    /// a record not encoded is not sent.
    pub(super) fn frames_for(
        &self,
        peer: &str,
        linked: bool,
        budget: usize,
        mut push: impl FnMut(DeltaFrame) -> bool,
    ) {
        let moves = self.moves.get(peer).map(Vec::as_slice);
        let only = self.only.get(peer).map_or(&[][..], Vec::as_slice);
        let mut only = only.iter().peekable();
        let mut batch = Batch::new(budget);
        for (i, shared) in self.shared.iter().enumerate() {
            while let Some((_, r)) = only.next_if(|(at, _)| *at <= i) {
                if !batch.add(r, &mut push) {
                    return;
                }
            }
            let wanted = linked_at(moves, linked, i)
                && shared
                    .skip
                    .binary_search_by(|s| s.as_str().cmp(peer))
                    .is_err();
            if wanted && !batch.add(&shared.record, &mut push) {
                return;
            }
        }
        for (_, r) in only {
            if !batch.add(r, &mut push) {
                return;
            }
        }
        batch.finish(&mut push);
    }

    /// The window is over: everything queued was sent or is dropped.
    pub(super) fn clear(&mut self) {
        self.shared.clear();
        self.only.clear();
        self.moves.clear();
    }
}

/// Whether a link was one of this node's links when the shared record at position `i` was
/// queued, given its moves during the window and whether it is one now.
fn linked_at(moves: Option<&[(usize, bool)]>, linked_now: bool, i: usize) -> bool {
    let Some(moves) = moves else {
        return linked_now;
    };
    match moves.iter().rev().find(|(at, _)| *at <= i) {
        Some(&(_, joined)) => joined,
        // Before its first move it was what that move undid.
        None => moves.first().map_or(linked_now, |&(_, joined)| !joined),
    }
}

/// The frame being filled for one link.
struct Batch<'a> {
    records: Vec<&'a EncodedRecord>,
    bytes: usize,
    entries: u64,
    budget: usize,
}

impl<'a> Batch<'a> {
    fn new(budget: usize) -> Self {
        Batch {
            records: Vec::new(),
            bytes: 0,
            entries: 0,
            budget,
        }
    }

    /// Add `r` (if it is to be sent), first sending the frame so far if `r` would take it
    /// past the budget; false if `push` refused that frame.
    fn add(&mut self, r: &'a Record, push: &mut impl FnMut(DeltaFrame) -> bool) -> bool {
        let Body::Encoded(encoded) = &r.body else {
            return true; // not sent: it failed to encode, or seal was not called
        };
        if r.dropped {
            return true;
        }
        if !self.records.is_empty() && self.bytes + encoded.len() > self.budget && !self.send(push)
        {
            return false;
        }
        self.records.push(encoded);
        self.bytes += encoded.len();
        self.entries += r.entries;
        true
    }

    fn send(&mut self, push: &mut impl FnMut(DeltaFrame) -> bool) -> bool {
        let frame = DeltaFrame {
            msg: encode_delta_frame(&self.records),
            records: self.records.len() as u64,
            entries: self.entries,
        };
        self.records.clear();
        self.bytes = 0;
        self.entries = 0;
        push(frame)
    }

    fn finish(mut self, push: &mut impl FnMut(DeltaFrame) -> bool) {
        if !self.records.is_empty() {
            self.send(push);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use bytes::BytesMut;
    use tokio_util::codec::Decoder;
    use uuid::Uuid;

    use super::{DeltaFrame, Outbox};
    use crate::wire::{Entry, Frame, FrameCodec, Message, NodeDelta, Value};

    /// A record about `node` whose `max_version` tells records of one node apart.
    fn rec(node: &str, version: u64) -> NodeDelta {
        NodeDelta {
            node: node.into(),
            incarnation: Uuid::from_bytes([7; 16]),
            boot_ms: 1,
            from: version - 1,
            max_version: version,
            gc_version: 0,
            entries: vec![Entry {
                key: "role".into(),
                version,
                value: Some(Value::Text("worker".into())),
            }],
        }
    }

    fn links(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn skip(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// The frames `peer` gets, sealed first, with a budget that fits everything.
    fn frames(out: &mut Outbox, peer: &str, linked: bool, budget: usize) -> Vec<DeltaFrame> {
        assert!(out.seal().is_empty());
        let mut sent = Vec::new();
        out.frames_for(peer, linked, budget, |f| {
            sent.push(f);
            true
        });
        sent
    }

    /// How many records each of the frames to link "a" carries, within `budget`.
    fn records_per_frame(out: &mut Outbox, budget: usize) -> Vec<u64> {
        frames(out, "a", true, budget)
            .iter()
            .map(|f| f.records)
            .collect()
    }

    /// What `peer` gets, as (node, max_version) in order, read back by a link's decoder.
    fn received(out: &mut Outbox, peer: &str, linked: bool) -> Vec<(String, u64)> {
        let mut all = Vec::new();
        let mut codec = FrameCodec::new(1 << 24);
        for f in frames(out, peer, linked, 1 << 20) {
            let mut wire = BytesMut::new();
            codec.encode_frame(&f.msg, &mut wire).unwrap();
            let Some(Frame(_, Message::Delta(delta))) = codec.decode(&mut wire).unwrap() else {
                panic!("not a delta frame")
            };
            assert_eq!(f.records, delta.nodes.len() as u64);
            all.extend(delta.nodes.into_iter().map(|d| (d.node, d.max_version)));
        }
        all
    }

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
    }

    #[test]
    fn a_relay_skips_the_links_named_and_reaches_every_other() {
        let mut out = Outbox::default();
        out.queue_for_links(rec("w1", 2), skip(&["w1", "master", "w1"]));
        out.queue_for_links(rec("me", 5), Vec::new());
        assert_eq!(
            received(&mut out, "w2", true),
            pairs(&[("w1", 2), ("me", 5)])
        );
        assert_eq!(received(&mut out, "w1", true), pairs(&[("me", 5)]));
        assert_eq!(received(&mut out, "master", true), pairs(&[("me", 5)]));
    }

    #[test]
    fn a_relay_also_skips_the_links_its_origin_reports_by_the_end_of_the_window() {
        let mut out = Outbox::default();
        out.queue_for_links(rec("w1", 2), skip(&["w1"]));
        out.queue_for_links(rec("me", 5), Vec::new());
        out.queue_for_link("w2", rec("w1", 1));
        // By the flush, w1 reports links to w2 and w3: they hear w1 themselves. The node's
        // own record and the record for w2 alone are not relays.
        out.skip_reported("me", |origin| match origin {
            "w1" => skip(&["w3", "w2"]),
            _ => skip(&["w2", "w3", "w4"]),
        });
        assert_eq!(
            received(&mut out, "w2", true),
            pairs(&[("me", 5), ("w1", 1)])
        );
        assert_eq!(received(&mut out, "w3", true), pairs(&[("me", 5)]));
        assert_eq!(
            received(&mut out, "w4", true),
            pairs(&[("w1", 2), ("me", 5)])
        );
    }

    #[test]
    fn records_for_one_link_keep_their_place_among_the_shared_ones() {
        let mut out = Outbox::default();
        out.queue_for_link("w2", rec("a", 1));
        out.queue_for_links(rec("b", 2), Vec::new());
        out.queue_for_link("w2", rec("c", 3));
        out.queue_for_link("w2", rec("d", 4));
        out.queue_for_links(rec("e", 5), Vec::new());
        out.queue_for_link("w2", rec("f", 6));
        assert_eq!(
            received(&mut out, "w2", true),
            pairs(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6)])
        );
        assert_eq!(received(&mut out, "w3", true), pairs(&[("b", 2), ("e", 5)]));
        assert!(
            received(&mut out, "w4", false).is_empty(),
            "not a link of this node: only what was queued for it alone"
        );
    }

    #[test]
    fn a_link_gets_the_shared_records_queued_while_it_was_a_link() {
        let mut out = Outbox::default();
        let (ab, abc, ac) = (
            links(&["a", "b"]),
            links(&["a", "b", "c"]),
            links(&["a", "c"]),
        );
        out.queue_for_links(rec("x", 1), Vec::new());
        out.links_moved(&ab, &abc);
        out.queue_for_links(rec("x", 2), Vec::new());
        out.links_moved(&abc, &ac);
        out.queue_for_links(rec("x", 3), Vec::new());
        out.links_moved(&ac, &abc);
        out.queue_for_links(rec("x", 4), Vec::new());
        let got = |out: &mut Outbox, peer: &str| -> Vec<u64> {
            received(out, peer, true)
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        };
        assert_eq!(got(&mut out, "a"), [1, 2, 3, 4]);
        assert_eq!(got(&mut out, "b"), [1, 2, 4], "away while 3 was queued");
        assert_eq!(got(&mut out, "c"), [2, 3, 4], "joined after 1");
        out.clear();
        assert!(out.is_empty());
        out.queue_for_links(rec("x", 5), Vec::new());
        assert_eq!(got(&mut out, "b"), [5], "moves last one window");
    }

    #[test]
    fn a_link_that_left_still_gets_what_was_queued_before() {
        let mut out = Outbox::default();
        out.queue_for_links(rec("x", 1), Vec::new());
        out.links_moved(&links(&["a", "b"]), &links(&["a"]));
        out.queue_for_links(rec("x", 2), Vec::new());
        assert_eq!(received(&mut out, "b", false), pairs(&[("x", 1)]));
    }

    #[test]
    fn a_forgotten_nodes_records_are_not_sent() {
        let mut out = Outbox::default();
        out.queue_for_links(rec("gone", 1), Vec::new());
        out.queue_for_link("a", rec("gone", 2));
        out.queue_for_links(rec("kept", 3), Vec::new());
        out.forget("gone");
        assert_eq!(received(&mut out, "a", true), pairs(&[("kept", 3)]));
    }

    #[test]
    fn frames_are_split_by_the_records_exact_sizes() {
        let mut out = Outbox::default();
        for v in 1..=5 {
            out.queue_for_links(rec("x", v), Vec::new());
        }
        assert!(out.seal().is_empty());
        let one = crate::wire::EncodedRecord::encode(&rec("x", 1))
            .unwrap()
            .len();
        // Two records fit exactly; a third does not.
        assert_eq!(records_per_frame(&mut out, 2 * one), [2, 2, 1]);
        assert_eq!(records_per_frame(&mut out, 2 * one - 1), [1, 1, 1, 1, 1]);
        assert_eq!(
            records_per_frame(&mut out, 1),
            [1, 1, 1, 1, 1],
            "a record larger than the budget goes alone"
        );
    }

    #[test]
    fn a_refused_frame_stops_the_links_frames_and_counts_are_per_frame() {
        let mut out = Outbox::default();
        for v in 1..=4 {
            out.queue_for_links(rec("x", v), Vec::new());
        }
        assert!(out.seal().is_empty());
        let one = crate::wire::EncodedRecord::encode(&rec("x", 1))
            .unwrap()
            .len();
        let mut offered = Vec::new();
        out.frames_for("a", true, one, |f| {
            offered.push((f.records, f.entries));
            offered.len() < 2
        });
        assert_eq!(offered, [(1, 1), (1, 1)], "nothing after the refused frame");
    }
}
