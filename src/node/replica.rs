//! The replicated state as versioned entries (scuttlebutt, as chitchat and Cassandra's gossip
//! do): pure data, owned by Membership (which is supervised by NodeSupervisor) and driven by
//! it; nothing here touches a link or a clock.
//!
//! Each node owns its state: an incarnation, a boot time, and entries keyed `role`,
//! `link:<peer>`, `method:<name>`, `http:<host:port>`, `stats`. Every change of one of them
//! (a set, or a removal, which leaves a tombstone) takes the next version of one counter per
//! incarnation, so a node's history is a sequence of versions and "what changed since v" is
//! the entries above v. This node holds, for every node it heard of, the incarnation, the
//! highest version it holds all changes up to (`max_version`), and the entries.
//!
//! A [`NodeDelta`] carries every change in a range `(from, max_version]`. It is applied when
//! it extends what is held without a gap (`from <= held max < max_version`); a `from` of 0 is
//! the whole state and replaces what is held (a newcomer, a new incarnation, or a receiver
//! that missed a tombstone this node has since forgotten). What a delta added is returned, so
//! Membership relays only that, never an unchanged entry.
//!
//! Bounds: entries per node are capped by the caller's `max_entries` (a delta that would
//! exceed it is refused whole); tombstones are forgotten after a caller-given time, and the
//! highest forgotten version (`gc_version`) makes a peer that holds less than it take a whole
//! state rather than miss the removal.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use uuid::Uuid;

use crate::wire::{DigestEntry, Entry, NodeDelta, Value};

/// One node's replicated state as held here.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub incarnation: Uuid,
    pub boot_ms: u64,
    /// Every change up to this version is held.
    pub max_version: u64,
    /// The highest version of a tombstone forgotten here, or adopted with a whole state.
    pub gc_version: u64,
    entries: Entries,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Stored {
    version: u64,
    value: Option<Value>,
    /// For tombstones: when (the caller's clock, ms) it was stored here.
    since_ms: u64,
}

impl NodeState {
    pub fn new(incarnation: Uuid, boot_ms: u64) -> Self {
        NodeState {
            incarnation,
            boot_ms,
            max_version: 0,
            gc_version: 0,
            entries: Entries::default(),
        }
    }

    /// The live (not removed) value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key).and_then(|s| s.value.as_ref())
    }

    /// The live entries whose key starts with `prefix`, with the prefix cut off, in key order.
    pub fn keys_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .with_prefix(prefix)
            .filter(|(_, s)| s.value.is_some())
            .filter_map(move |(k, _)| k.get(prefix.len()..))
    }

    /// Entries held, tombstones included (what the bound counts).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Set `key` (a new version) if its value differs; true if it changed.
    pub fn set(&mut self, key: &str, value: Value) -> bool {
        if self.get(key) == Some(&value) {
            return false;
        }
        self.max_version += 1;
        self.entries.insert(
            key,
            Stored {
                version: self.max_version,
                value: Some(value),
                since_ms: 0,
            },
        );
        true
    }

    /// Remove `key` (a tombstone at a new version, stored at `now_ms`); true if it was set.
    pub fn remove(&mut self, key: &str, now_ms: u64) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        self.max_version += 1;
        self.entries.insert(
            key,
            Stored {
                version: self.max_version,
                value: None,
                since_ms: now_ms,
            },
        );
        true
    }

    /// Forget tombstones stored at or before `before_ms`; how many were forgotten.
    pub fn gc(&mut self, before_ms: u64) -> usize {
        let (mut forgotten, mut gc_version) = (0, self.gc_version);
        self.entries.retain(|s| {
            let old = s.value.is_none() && s.since_ms <= before_ms;
            if old {
                forgotten += 1;
                gc_version = gc_version.max(s.version);
            }
            !old
        });
        self.gc_version = gc_version;
        forgotten
    }

    /// Whether a peer holding this state up to `after` gets the whole state rather than
    /// what changed since (see [`NodeState::since`]).
    pub fn takes_whole(&self, after: u64) -> bool {
        after == 0 || after < self.gc_version
    }

    /// The changes after version `after`, as deltas of at most `budget` estimated bytes each
    /// (at least one entry each), in version order: together they cover `(after, max]`. A
    /// peer that holds less than a forgotten tombstone (`after < gc_version`), or nothing,
    /// gets the whole state (`from` 0).
    pub fn since(&self, node: &str, after: u64, budget: usize) -> Vec<NodeDelta> {
        let after = if self.takes_whole(after) { 0 } else { after };
        let mut entries: Vec<(&str, &Stored)> = self
            .entries
            .iter()
            .filter(|(_, s)| s.version > after)
            .collect();
        if after == 0 {
            // A whole state needs no tombstones: it replaces what the receiver holds.
            entries.retain(|(_, s)| s.value.is_some());
        }
        entries.sort_unstable_by_key(|(_, s)| s.version);
        let mut out = Vec::new();
        let mut from = after;
        let mut chunk: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for (key, stored) in entries {
            let size = entry_bytes(key, stored.value.as_ref());
            if !chunk.is_empty() && bytes + size > budget {
                let to = chunk.last().map_or(from, |e| e.version);
                out.push(self.delta(node, from, to, std::mem::take(&mut chunk)));
                from = to;
                bytes = 0;
            }
            bytes += size;
            chunk.push(Entry {
                key: key.to_owned(),
                version: stored.version,
                value: stored.value.clone(),
            });
        }
        if !chunk.is_empty() || from < self.max_version || (after == 0 && out.is_empty()) {
            out.push(self.delta(node, from, self.max_version, chunk));
        }
        out
    }

    fn delta(&self, node: &str, from: u64, to: u64, entries: Vec<Entry>) -> NodeDelta {
        NodeDelta {
            node: node.to_owned(),
            incarnation: self.incarnation,
            boot_ms: self.boot_ms,
            from,
            max_version: to,
            gc_version: self.gc_version,
            entries,
        }
    }
}

/// A rough upper bound of an entry's encoded size, for splitting deltas across frames.
pub fn entry_bytes(key: &str, value: Option<&Value>) -> usize {
    let value = match value {
        None => 0,
        Some(Value::Set) => 4,
        Some(Value::Text(t)) => t.len() + 8,
        Some(Value::Stats(s)) => {
            160 + s.version.len()
                + s.extra
                    .iter()
                    .map(|(k, v)| {
                        k.len()
                            + 12
                            + match v {
                                crate::wire::StatValue::Text(t) => t.len(),
                                _ => 0,
                            }
                    })
                    .sum::<usize>()
        }
    };
    key.len() + 32 + value
}

/// What became of a delta (see [`Replica::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Something new: the part to relay (only what was new here).
    New(NodeDelta),
    /// Everything in it is held already.
    Stale,
    /// It starts past what is held: a digest exchange with the sender fills the gap.
    Gap,
    /// It would take the node past `max_entries`, or is malformed (entries outside its
    /// range, not in version order).
    Refused,
}

/// Past this many entries a state's entries are a map rather than a sorted vector.
const MAP_PAST: usize = 32;

/// A state's entries, in key order without repeats. Most states hold a handful (`role`,
/// `stats`, a link or two): those are a vector of exactly what is held rather than a
/// `BTreeMap`, whose every node is allocated for 11 entries (the half-empty nodes were the
/// largest part of a 1,000-node cluster's memory: 46 of 142 MB at 256 nodes, under
/// `heaptrack`). A state past [`MAP_PAST`] entries (a hub's `link:` to every worker) is a
/// `BTreeMap`: a key merged into a sorted vector moves every entry after it, and a worker
/// of a forming 1,000-node star took the hub's thousand `link:` entries a few at a time, a
/// tenth of its time spent moving and comparing them.
#[derive(Debug, Clone)]
enum Entries {
    Few(Vec<(String, Stored)>),
    Many(BTreeMap<String, Stored>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Few(Vec::new())
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Entries {
    fn find(v: &[(String, Stored)], key: &str) -> Result<usize, usize> {
        v.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    fn get(&self, key: &str) -> Option<&Stored> {
        match self {
            Entries::Few(v) => Self::find(v, key)
                .ok()
                .and_then(|i| v.get(i))
                .map(|(_, s)| s),
            Entries::Many(m) => m.get(key),
        }
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn len(&self) -> usize {
        match self {
            Entries::Few(v) => v.len(),
            Entries::Many(m) => m.len(),
        }
    }

    /// Every entry, in key order.
    fn iter(&self) -> impl Iterator<Item = (&str, &Stored)> {
        self.with_prefix("")
    }

    /// The entries whose key starts with `prefix`, in key order.
    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Stored)> {
        let (few, many) = match self {
            Entries::Few(v) => {
                let start = v.partition_point(|(k, _)| k.as_str() < prefix);
                (Some(v.get(start..).unwrap_or_default().iter()), None)
            }
            Entries::Many(m) => {
                let range = (Bound::Included(prefix), Bound::Unbounded);
                (None, Some(m.range::<str, _>(range)))
            }
        };
        let few = few.into_iter().flatten().map(|(k, s)| (k.as_str(), s));
        let many = many.into_iter().flatten().map(|(k, s)| (k.as_str(), s));
        few.chain(many)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Keep the entries `keep` says to keep.
    fn retain(&mut self, mut keep: impl FnMut(&Stored) -> bool) {
        match self {
            Entries::Few(v) => v.retain(|(_, s)| keep(s)),
            Entries::Many(m) => {
                m.retain(|_, s| keep(s));
                if m.len() <= MAP_PAST / 2 {
                    *self = Entries::Few(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    /// Set one entry.
    fn insert(&mut self, key: &str, stored: Stored) {
        self.insert_all(std::iter::once((key, stored)));
    }

    /// Set every entry of `items`, in their order (of a key given twice, the later stays).
    fn insert_all<'a>(&mut self, items: impl Iterator<Item = (&'a str, Stored)>) {
        match self {
            Entries::Few(v) => {
                Self::merge(v, items);
                if v.len() > MAP_PAST {
                    *self = Entries::Many(std::mem::take(v).into_iter().collect());
                }
            }
            Entries::Many(m) => {
                for (key, stored) in items {
                    match m.get_mut(key) {
                        Some(held) => *held = stored,
                        None => {
                            m.insert(key.to_owned(), stored);
                        }
                    }
                }
            }
        }
    }

    /// [`Entries::insert_all`] on a sorted vector: the held keys in place, the new ones
    /// merged in from the back, in place. Each held entry after the first new key moves
    /// once, and nothing is allocated but the vector's growth.
    fn merge<'a>(v: &mut Vec<(String, Stored)>, items: impl Iterator<Item = (&'a str, Stored)>) {
        let mut new: Vec<(String, Stored)> = Vec::new();
        for (key, stored) in items {
            match Self::find(v, key) {
                Ok(i) => {
                    if let Some((_, held)) = v.get_mut(i) {
                        *held = stored;
                    }
                }
                Err(_) => new.push((key.to_owned(), stored)),
            }
        }
        if new.is_empty() {
            return;
        }
        // Stable: of a key given twice, the later stays last of its run.
        new.sort_by(|a, b| a.0.cmp(&b.0));
        new.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        // Room at the end (empty placeholders, nothing allocated), then from the back: each
        // new entry goes after the held ones greater than it, which move up past it.
        let mut held = v.len();
        v.resize_with(held + new.len(), Default::default);
        let mut hole = v.len();
        while let Some(next) = new.pop() {
            while held > 0 && v.get(held - 1).is_some_and(|h| h.0 > next.0) {
                held -= 1;
                hole -= 1;
                v.swap(held, hole);
            }
            hole -= 1;
            if let Some(slot) = v.get_mut(hole) {
                *slot = next;
            }
        }
    }
}

/// Every node's state as held here, this node's own included.
#[derive(Debug, Default)]
pub struct Replica {
    nodes: BTreeMap<String, NodeState>,
}

impl Replica {
    pub fn new() -> Self {
        Replica::default()
    }

    pub fn get(&self, node: &str) -> Option<&NodeState> {
        self.nodes.get(node)
    }

    /// This node's own state, created at its incarnation.
    pub fn own(&mut self, me: &str, incarnation: Uuid, boot_ms: u64) -> &mut NodeState {
        self.nodes
            .entry(me.to_owned())
            .or_insert_with(|| NodeState::new(incarnation, boot_ms))
    }

    /// Drop `node`'s state whole (a forgotten member): what it held, its versions and its
    /// tombstones.
    pub fn remove(&mut self, node: &str) -> Option<NodeState> {
        self.nodes.remove(node)
    }

    /// Forget, in every state, the tombstones stored at or before `before_ms`.
    pub fn gc(&mut self, before_ms: u64) {
        for state in self.nodes.values_mut() {
            state.gc(before_ms);
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeState)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// What this node holds, for a peer to answer with what it lacks.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.nodes
            .iter()
            .map(|(node, s)| DigestEntry {
                node: node.clone(),
                incarnation: s.incarnation,
                max_version: s.max_version,
            })
            .collect()
    }

    /// What a peer whose digest is `digest` lacks, in deltas of at most `budget` estimated
    /// bytes: newer entries of the incarnations it holds, and the whole state of nodes it
    /// does not know or holds another incarnation of (whichever incarnation is right, the
    /// receiver's checks decide). Nodes `skip` names are left out (the peer itself speaks
    /// for itself). (Membership builds the same from [`Replica::lacking`], a node at a time.)
    #[cfg(test)]
    pub fn delta_for(
        &self,
        digest: &[DigestEntry],
        budget: usize,
        skip: impl Fn(&str) -> bool,
    ) -> Vec<NodeDelta> {
        self.lacking(digest, |node, _| skip(node))
            .into_iter()
            .flat_map(|(node, state, after)| state.since(node, after, budget))
            .collect()
    }

    /// What a peer whose digest is `digest` lacks, node by node, before any delta is built:
    /// each node it lacks something of, that node's state here, and the version past which
    /// the peer lacks its changes (0: the whole state; see [`NodeState::since`]). Nodes
    /// `skip` names are left out; it sees each node's state, so that it need not look it up.
    pub fn lacking<'a>(
        &'a self,
        digest: &[DigestEntry],
        skip: impl Fn(&str, &NodeState) -> bool,
    ) -> Vec<(&'a str, &'a NodeState, u64)> {
        // Hashed: a thousand names looked up in a tree cost a thousand string comparisons
        // each time a hub answered a digest.
        let theirs: HashMap<&str, &DigestEntry> =
            digest.iter().map(|d| (d.node.as_str(), d)).collect();
        let mut out = Vec::new();
        for (node, state) in &self.nodes {
            let after = match theirs.get(node.as_str()) {
                Some(d) if d.incarnation == state.incarnation => {
                    if d.max_version >= state.max_version {
                        continue;
                    }
                    d.max_version
                }
                _ => 0,
            };
            if !skip(node, state) {
                out.push((node.as_str(), state, after));
            }
        }
        out
    }

    /// Whether a peer whose digest is `digest` holds something this replica lacks: a newer
    /// version of an incarnation held here, or a node unknown here that `admits` takes.
    /// Nodes `skip` names are left out; so are nodes held with another incarnation (which
    /// one is right is for the claim checks, not for a digest, to decide).
    pub fn lacks(
        &self,
        digest: &[DigestEntry],
        skip: impl Fn(&str) -> bool,
        admits: impl Fn(&str) -> bool,
    ) -> bool {
        digest.iter().any(|d| {
            if skip(&d.node) {
                return false;
            }
            match self.nodes.get(&d.node) {
                Some(s) => s.incarnation == d.incarnation && s.max_version < d.max_version,
                None => admits(&d.node),
            }
        })
    }

    /// Apply a delta the caller has checked (its claim of incarnation and boot time is the
    /// caller's business: a delta of another incarnation than the one held replaces it).
    /// `now_ms` stamps the tombstones it brings; `max_entries` bounds the node's entries.
    pub fn apply(&mut self, d: NodeDelta, now_ms: u64, max_entries: usize) -> Applied {
        if d.from > d.max_version
            || d.entries.windows(2).any(|w| w[0].version >= w[1].version)
            || d.entries
                .iter()
                .any(|e| e.version <= d.from || e.version > d.max_version)
            || d.entries.len() > max_entries
        {
            return Applied::Refused;
        }
        let held = self.nodes.get(&d.node);
        let reset = match held {
            None => true,
            Some(h) if h.incarnation != d.incarnation => true,
            // Missed a tombstone the sender has forgotten: only a whole state will do.
            Some(h) if h.max_version < d.gc_version && h.gc_version < d.gc_version => true,
            Some(_) => false,
        };
        if reset && d.from != 0 {
            return Applied::Gap;
        }
        // The held state this delta builds on (none when it replaces it).
        let kept = held.filter(|_| !reset);
        if let Some(h) = kept {
            if d.max_version <= h.max_version {
                return Applied::Stale;
            }
            if d.from > h.max_version {
                return Applied::Gap;
            }
        }
        let before = kept.map_or(0, |h| h.max_version);
        let fresh: Vec<Entry> = d
            .entries
            .into_iter()
            .filter(|e| e.version > before)
            .collect();
        // The bound is checked before anything changes, so a refused delta leaves the held
        // state as it was without a copy of it being made (a copy per delta was most of a
        // converging 1,000-node cluster's allocations).
        let held_len = kept.map_or(0, |h| h.entries.len());
        let added = fresh
            .iter()
            .filter(|e| !kept.is_some_and(|h| h.entries.contains_key(&e.key)))
            .count();
        if held_len + added > max_entries {
            return Applied::Refused;
        }
        if reset {
            let mut s = NodeState::new(d.incarnation, d.boot_ms);
            s.gc_version = d.gc_version;
            self.nodes.insert(d.node.clone(), s);
        }
        let Some(state) = self.nodes.get_mut(&d.node) else {
            return Applied::Refused;
        };
        state.entries.insert_all(fresh.iter().map(|e| {
            let since_ms = if e.value.is_none() { now_ms } else { 0 };
            let stored = Stored {
                version: e.version,
                value: e.value.clone(),
                since_ms,
            };
            (e.key.as_str(), stored)
        }));
        state.max_version = d.max_version;
        state.gc_version = state.gc_version.max(d.gc_version);
        Applied::New(NodeDelta {
            node: d.node,
            incarnation: state.incarnation,
            boot_ms: state.boot_ms,
            from: before,
            max_version: state.max_version,
            gc_version: state.gc_version,
            entries: fresh,
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::{Applied, NodeState, Replica};
    use super::{Entries, Stored};
    use crate::wire::{NodeDelta, Value};
    use uuid::Uuid;

    const BIG: usize = 1 << 20;

    fn origin() -> (Replica, Uuid) {
        let inc = Uuid::from_u128(7);
        let mut r = Replica::new();
        let me = r.own("x", inc, 100);
        me.set("role", Value::Text("worker".into()));
        me.set("link:master", Value::Set);
        me.set("method:echo", Value::Set);
        (r, inc)
    }

    fn sync(from: &Replica, to: &mut Replica) -> Vec<Applied> {
        from.delta_for(&to.digest(), BIG, |_| false)
            .into_iter()
            .map(|d| to.apply(d, 0, 100))
            .collect()
    }

    #[test]
    fn entries_merged_in_batches_hold_what_a_map_holds_in_key_order() {
        use std::collections::BTreeMap;
        let stored = |version: u64| Stored {
            version,
            value: Some(Value::Set),
            since_ms: 0,
        };
        let (mut entries, mut model) = (Entries::default(), BTreeMap::new());
        let mut x: u64 = 7;
        let mut version = 0;
        for batch in 0..200 {
            // Batches of 0 to 9 keys out of 64, repeats within a batch included.
            let mut items = Vec::new();
            for _ in 0..batch % 10 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                version += 1;
                items.push((format!("link:n{}", (x >> 33) % 64), stored(version)));
            }
            for (k, s) in &items {
                model.insert(k.clone(), s.clone());
            }
            if batch % 7 == 0 {
                for (k, s) in items {
                    entries.insert(&k, s);
                }
            } else {
                entries.insert_all(items.iter().map(|(k, s)| (k.as_str(), s.clone())));
            }
            let held: Vec<(&str, u64)> = entries.iter().map(|(k, s)| (k, s.version)).collect();
            let want: Vec<(&str, u64)> =
                model.iter().map(|(k, s)| (k.as_str(), s.version)).collect();
            assert_eq!(held, want, "after batch {batch}");
        }
        assert_eq!(
            entries.with_prefix("link:n1").count(),
            model
                .range("link:n1".to_owned().."link:n2".to_owned())
                .count()
        );
        assert_eq!(entries.with_prefix("method:").count(), 0);
    }

    #[test]
    fn a_large_state_is_a_map_in_key_order_and_a_vector_again_once_its_tombstones_go() {
        let mut s = NodeState::new(Uuid::new_v4(), 1);
        for i in (0..100).rev() {
            s.set(&format!("link:n{i:03}"), Value::Set);
        }
        s.set("role", Value::Text("master".into()));
        assert!(matches!(s.entries, Entries::Many(_)));
        let links: Vec<&str> = s.keys_with("link:").collect();
        let want: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        assert_eq!(links, want);
        assert_eq!(s.keys_with("link:n09").count(), 10);
        for i in 0..95 {
            s.remove(&format!("link:n{i:03}"), 5);
        }
        assert_eq!(s.len(), 101);
        assert_eq!(s.gc(5), 95);
        assert!(matches!(s.entries, Entries::Few(_)));
        let left: Vec<&str> = s.keys_with("link:").collect();
        assert_eq!(left, ["n095", "n096", "n097", "n098", "n099"]);
        assert_eq!(s.get("role"), Some(&Value::Text("master".into())));
    }

    #[test]
    fn setting_an_unchanged_value_takes_no_version() {
        let (mut r, inc) = origin();
        let me = r.own("x", inc, 100);
        assert_eq!(me.max_version, 3);
        assert!(!me.set("link:master", Value::Set));
        assert!(!me.remove("link:nobody", 0));
        assert_eq!(me.max_version, 3);
        assert!(me.set("role", Value::Text("master".into())));
        assert_eq!(me.max_version, 4);
    }

    #[test]
    fn a_newcomer_gets_the_whole_state_from_one_digest() {
        let (origin, inc) = origin();
        let mut newcomer = Replica::new();
        let applied = sync(&origin, &mut newcomer);
        assert_eq!(applied.len(), 1);
        let x = newcomer.get("x").expect("x is held");
        assert_eq!((x.incarnation, x.boot_ms, x.max_version), (inc, 100, 3));
        assert_eq!(x.keys_with("link:").collect::<Vec<_>>(), ["master"]);
        assert_eq!(x.keys_with("method:").collect::<Vec<_>>(), ["echo"]);
        assert_eq!(x.get("role"), Some(&Value::Text("worker".into())));
        assert!(
            origin
                .delta_for(&newcomer.digest(), BIG, |_| false)
                .is_empty(),
            "nothing is lacking any more"
        );
    }

    #[test]
    fn only_what_is_new_is_applied_and_returned_for_relaying() {
        let (mut origin, inc) = origin();
        let mut relay = Replica::new();
        sync(&origin, &mut relay);
        origin.own("x", inc, 100).set("method:ping", Value::Set);
        let deltas = origin.delta_for(&relay.digest(), BIG, |_| false);
        assert_eq!(deltas.len(), 1);
        let d = deltas.into_iter().next().expect("one delta");
        assert_eq!((d.from, d.max_version, d.entries.len()), (3, 4, 1));
        match relay.apply(d.clone(), 0, 100) {
            Applied::New(r) => {
                assert_eq!((r.from, r.max_version), (3, 4));
                assert_eq!(r.entries.len(), 1);
                assert_eq!(r.entries[0].key, "method:ping");
            }
            other => panic!("expected new entries, got {other:?}"),
        }
        assert_eq!(relay.apply(d, 0, 100), Applied::Stale, "the same again");
    }

    #[test]
    fn an_older_or_overlapping_delta_adds_only_the_newer_entries() {
        let (mut origin, inc) = origin();
        let mut r = Replica::new();
        sync(&origin, &mut r);
        let me = origin.own("x", inc, 100);
        me.set("method:a", Value::Set); // 4
        me.set("method:b", Value::Set); // 5
        let wide = me.since("x", 2, BIG).remove(0); // (2, 5]: overlaps what r holds
        match r.apply(wide, 0, 100) {
            Applied::New(relay) => {
                assert_eq!(relay.from, 3);
                let keys: Vec<_> = relay.entries.iter().map(|e| e.key.as_str()).collect();
                assert_eq!(keys, ["method:a", "method:b"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_delta_past_what_is_held_is_a_gap() {
        let (mut origin, inc) = origin();
        let mut r = Replica::new();
        sync(&origin, &mut r);
        let me = origin.own("x", inc, 100);
        me.set("method:a", Value::Set); // 4
        me.set("method:b", Value::Set); // 5
        let later = me.since("x", 4, BIG).remove(0);
        assert_eq!(r.apply(later, 0, 100), Applied::Gap);
        assert_eq!(r.get("x").map(|x| x.max_version), Some(3));
    }

    #[test]
    fn a_removal_travels_as_a_tombstone() {
        let (mut origin, inc) = origin();
        let mut r = Replica::new();
        sync(&origin, &mut r);
        origin.own("x", inc, 100).remove("link:master", 50);
        let applied = sync(&origin, &mut r);
        assert!(matches!(applied.as_slice(), [Applied::New(d)] if d.entries[0].value.is_none()));
        let x = r.get("x").expect("held");
        assert_eq!(x.keys_with("link:").count(), 0);
        assert_eq!(x.len(), 3, "the tombstone is kept until collected");
    }

    #[test]
    fn a_peer_that_missed_a_forgotten_tombstone_gets_a_whole_state() {
        let (mut origin, inc) = origin();
        let mut behind = Replica::new();
        sync(&origin, &mut behind);
        let me = origin.own("x", inc, 100);
        me.remove("method:echo", 10); // 4
        assert_eq!(me.gc(9), 0, "not yet old enough");
        assert_eq!(me.gc(10), 1);
        assert_eq!(me.gc_version, 4);
        me.set("method:new", Value::Set); // 5
        let deltas = origin.delta_for(&behind.digest(), BIG, |_| false);
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].from, 0, "a whole state");
        assert!(matches!(
            behind.apply(deltas[0].clone(), 0, 100),
            Applied::New(_)
        ));
        let x = behind.get("x").expect("held");
        assert_eq!(x.keys_with("method:").collect::<Vec<_>>(), ["new"]);
        assert_eq!(x.max_version, 5);
        // A peer already past the forgotten tombstone gets only the change.
        let mut ahead = Replica::new();
        sync(&origin, &mut ahead);
        origin.own("x", inc, 100).set("method:later", Value::Set);
        let deltas = origin.delta_for(&ahead.digest(), BIG, |_| false);
        assert_eq!((deltas[0].from, deltas[0].entries.len()), (5, 1));
    }

    #[test]
    fn a_new_incarnation_replaces_the_held_state_only_whole() {
        let (origin, _) = origin();
        let mut r = Replica::new();
        sync(&origin, &mut r);
        let reborn = Uuid::from_u128(8);
        let mut again = Replica::new();
        let me = again.own("x", reborn, 200);
        me.set("role", Value::Text("worker".into()));
        me.set("method:other", Value::Set);
        let partial = me.since("x", 1, BIG).remove(0);
        assert_eq!(r.apply(partial, 0, 100), Applied::Gap);
        let applied = sync(&again, &mut r);
        assert!(matches!(applied.as_slice(), [Applied::New(_)]));
        let x = r.get("x").expect("held");
        assert_eq!((x.incarnation, x.boot_ms, x.max_version), (reborn, 200, 2));
        assert_eq!(x.keys_with("method:").collect::<Vec<_>>(), ["other"]);
        assert_eq!(x.keys_with("link:").count(), 0, "the old links are gone");
    }

    #[test]
    fn deltas_are_split_to_fit_a_budget_and_apply_in_order() {
        let inc = Uuid::from_u128(1);
        let mut origin = Replica::new();
        let me = origin.own("x", inc, 1);
        for i in 0..50 {
            me.set(&format!("method:m{i:02}"), Value::Set);
        }
        me.set("stats", Value::Stats(Box::default()));
        let deltas = origin.delta_for(&[], 400, |_| false);
        assert!(deltas.len() > 5, "split into {}", deltas.len());
        assert_eq!(deltas[0].from, 0);
        for w in deltas.windows(2) {
            assert_eq!(w[0].max_version, w[1].from, "contiguous ranges");
        }
        let mut r = Replica::new();
        for d in deltas {
            assert!(matches!(r.apply(d, 0, 100), Applied::New(_)));
        }
        let x = r.get("x").expect("held");
        assert_eq!(x.keys_with("method:").count(), 50);
        assert!(x.get("stats").is_some());
        assert_eq!(x.max_version, 51);
    }

    #[test]
    fn a_delta_beyond_the_entry_bound_or_malformed_is_refused() {
        let (origin, _) = origin();
        let mut r = Replica::new();
        let d = origin.delta_for(&[], BIG, |_| false).remove(0);
        assert_eq!(r.apply(d.clone(), 0, 2), Applied::Refused);
        assert!(r.get("x").is_none());
        let mut unordered = d.clone();
        unordered.entries.reverse();
        assert_eq!(r.apply(unordered, 0, 100), Applied::Refused);
        let mut outside: NodeDelta = d;
        outside.max_version = 1;
        assert_eq!(r.apply(outside, 0, 100), Applied::Refused);
    }

    #[test]
    fn skipped_nodes_and_equal_digests_produce_nothing() {
        let (origin, _) = origin();
        assert!(origin.delta_for(&[], BIG, |n| n == "x").is_empty());
        let mut r = Replica::new();
        sync(&origin, &mut r);
        assert!(r.delta_for(&origin.digest(), BIG, |_| false).is_empty());
    }

    #[test]
    fn a_digest_shows_what_this_replica_lacks_and_only_that() {
        let (mut origin, inc) = origin();
        let mut behind = Replica::new();
        let all = |_: &str| true;
        let none = |_: &str| false;
        assert!(behind.lacks(&origin.digest(), none, all), "x unknown here");
        assert!(
            !behind.lacks(&origin.digest(), none, none),
            "x not admitted"
        );
        sync(&origin, &mut behind);
        assert!(!behind.lacks(&origin.digest(), none, all), "in step");
        origin.own("x", inc, 100).set("method:new", Value::Set);
        assert!(behind.lacks(&origin.digest(), none, all), "a newer version");
        assert!(
            !behind.lacks(&origin.digest(), |n| n == "x", all),
            "x skipped"
        );
        assert!(
            !origin.lacks(&behind.digest(), none, all),
            "the one ahead lacks nothing"
        );
        let mut reborn = Replica::new();
        reborn
            .own("x", Uuid::from_u128(99), 200)
            .set("role", Value::Text("worker".into()));
        assert!(
            !behind.lacks(&reborn.digest(), none, all),
            "another incarnation is not for a digest to settle"
        );
    }

    #[test]
    fn an_empty_state_is_sent_whole_so_the_node_is_known() {
        let s = NodeState::new(Uuid::from_u128(3), 5);
        let d = s.since("y", 0, BIG);
        assert_eq!(d.len(), 1);
        let mut r = Replica::new();
        assert!(matches!(r.apply(d[0].clone(), 0, 10), Applied::New(_)));
        assert!(r.get("y").is_some_and(|y| y.len() == 0));
    }
}
