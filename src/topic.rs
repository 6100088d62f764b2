//! Topics and subscription patterns: their grammar, and the token trie that finds every pattern
//! matching a topic. Pure: no actor owns this module; the EventBus and the node's
//! `local_topics` each keep a [`TopicTrie`] of their own.
//!
//! A topic is 1 to [`MAX_TOPIC_BYTES`] bytes of `.`-separated, non-empty tokens
//! (`sensor.temperature`). A pattern is a topic in which a whole token may be a wildcard, with
//! the semantics of NATS subjects:
//!
//! * `*` matches exactly one token: `sensor.*` matches `sensor.a`, not `sensor` nor
//!   `sensor.a.b`;
//! * `>` matches one or more tokens and may only be the last token: `sensor.>` matches
//!   `sensor.a` and `sensor.a.b`, not `sensor`; `>` alone matches every topic.
//!
//! Unlike NATS, a `*` or `>` inside a longer token (`sens*`) is refused rather than taken as a
//! literal: it almost always means a wildcard that would silently match nothing. Events are
//! published on topics only, never on patterns.

use std::collections::HashMap;

/// The longest topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a string is not a valid topic (or pattern). The messages read after the word "topic".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes, more than {MAX_TOPIC_BYTES}")]
    TooLong { len: usize },
    #[error("has an empty token (a leading, trailing or doubled '.')")]
    EmptyToken,
    #[error("has '*' or '>' inside a token; a wildcard must be a whole token")]
    WildcardInToken,
    #[error("has '>' before its last token; '>' may only end a pattern")]
    FullWildcardNotLast,
    #[error("is a pattern ('*' or '>' token); events are published on concrete topics")]
    Wildcard,
}

/// Check a topic events may be published on: no wildcard tokens.
///
/// `const` so that a typed event's `TOPIC` is checked once, at compile time.
///
/// # Errors
/// [`TopicError`] naming the first fault.
pub const fn check_topic(topic: &str) -> Result<(), TopicError> {
    validate(topic.as_bytes(), false)
}

/// Check a subscription pattern: a topic whose tokens may be `*`, or `>` as the last one.
///
/// # Errors
/// [`TopicError`] naming the first fault.
pub const fn check_pattern(pattern: &str) -> Result<(), TopicError> {
    validate(pattern.as_bytes(), true)
}

/// Whether `s` has a wildcard token, so it goes into a trie rather than an exact-topic table.
pub fn is_pattern(s: &str) -> bool {
    s.split('.').any(|t| t == "*" || t == ">")
}

const fn validate(b: &[u8], wildcards: bool) -> Result<(), TopicError> {
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    if b.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: b.len() });
    }
    // One pass: at each '.' (and at the end) the token b[start..i] is complete.
    let (mut i, mut start, mut wild_chars) = (0, 0, 0);
    while i <= b.len() {
        if i == b.len() || b[i] == b'.' {
            let len = i - start;
            if len == 0 {
                return Err(TopicError::EmptyToken);
            }
            if len == 1 && wild_chars == 1 {
                if !wildcards {
                    return Err(TopicError::Wildcard);
                }
                if b[start] == b'>' && i != b.len() {
                    return Err(TopicError::FullWildcardNotLast);
                }
            } else if wild_chars > 0 {
                return Err(TopicError::WildcardInToken);
            }
            start = i + 1;
            wild_chars = 0;
        } else if b[i] == b'*' || b[i] == b'>' {
            wild_chars += 1;
        }
        i += 1;
    }
    Ok(())
}

/// Values filed under patterns, found by the topics they match. Matching walks only the
/// trie's branches the topic's tokens lead to: its cost grows with the topic's length and the
/// number of wildcards on the way, not with the number of patterns.
pub(crate) struct TopicTrie<T> {
    root: TrieNode<T>,
    len: usize,
}

struct TrieNode<T> {
    literal: HashMap<Box<str>, TrieNode<T>>,
    star: Option<Box<TrieNode<T>>>,
    /// Values of patterns that end at this node.
    here: Vec<T>,
    /// Values of patterns that end at this node with `>`: one or more tokens follow.
    rest: Vec<T>,
}

impl<T> Default for TrieNode<T> {
    fn default() -> Self {
        TrieNode {
            literal: HashMap::new(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> TrieNode<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }

    /// Remove the first value of `pattern`'s tokens that `pick` accepts, pruning the branches
    /// left empty.
    fn remove<'p>(
        &mut self,
        mut tokens: impl Iterator<Item = &'p str>,
        pick: &mut impl FnMut(&T) -> bool,
    ) -> Option<T> {
        fn take<T>(v: &mut Vec<T>, pick: &mut impl FnMut(&T) -> bool) -> Option<T> {
            let i = v.iter().position(&mut *pick)?;
            Some(v.remove(i))
        }
        match tokens.next() {
            None => take(&mut self.here, pick),
            Some(">") => take(&mut self.rest, pick),
            Some("*") => {
                let child = self.star.as_mut()?;
                let v = child.remove(tokens, pick);
                if child.is_empty() {
                    self.star = None;
                }
                v
            }
            Some(token) => {
                let child = self.literal.get_mut(token)?;
                let v = child.remove(tokens, pick);
                if child.is_empty() {
                    self.literal.remove(token);
                }
                v
            }
        }
    }

    /// Visit the values matching the tokens of `rest` (`None`: no token left).
    fn walk<'a>(&'a self, rest: Option<&str>, f: &mut impl FnMut(&'a T)) {
        let Some(rest) = rest else {
            self.here.iter().for_each(&mut *f);
            return;
        };
        // At least one token is left: every `>` ending here matches.
        self.rest.iter().for_each(&mut *f);
        let (token, after) = match rest.split_once('.') {
            Some((t, after)) => (t, Some(after)),
            None => (rest, None),
        };
        if let Some(child) = self.literal.get(token) {
            child.walk(after, f);
        }
        if let Some(child) = &self.star {
            child.walk(after, f);
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: TrieNode::default(),
            len: 0,
        }
    }
}

impl<T> TopicTrie<T> {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// File `value` under `pattern` (assumed valid: see [`check_pattern`]).
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            node = match token {
                ">" => {
                    node.rest.push(value);
                    self.len += 1;
                    return;
                }
                "*" => node.star.get_or_insert_with(Box::default),
                _ => node.literal.entry(token.into()).or_default(),
            };
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Remove the first value filed under `pattern` that `pick` accepts.
    pub fn remove(&mut self, pattern: &str, mut pick: impl FnMut(&T) -> bool) -> Option<T> {
        let v = self.root.remove(pattern.split('.'), &mut pick);
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    /// Call `f` with every value whose pattern matches `topic`, a value once per time it was
    /// filed. The order is fixed for a given trie: a walk repeated before the trie changes
    /// visits the same values in the same order.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a T)) {
        if !self.is_empty() {
            self.root.walk(Some(topic), &mut f);
        }
    }

    /// Whether any pattern matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        let mut any = false;
        // The walk is bounded by the trie's size; stopping it early is not worth a flag.
        self.for_each_match(topic, |_| any = true);
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(trie: &TopicTrie<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut v = Vec::new();
        trie.for_each_match(topic, |x| v.push(*x));
        v.sort_unstable();
        v
    }

    fn trie(patterns: &[&'static str]) -> TopicTrie<&'static str> {
        let mut t = TopicTrie::default();
        for p in patterns {
            t.insert(p, *p);
        }
        t
    }

    #[test]
    fn star_matches_exactly_one_token() {
        let t = trie(&["sensor.*"]);
        assert_eq!(matching(&t, "sensor.a"), ["sensor.*"]);
        assert!(matching(&t, "sensor.a.b").is_empty());
        assert!(matching(&t, "sensor").is_empty());
        assert!(matching(&t, "other.a").is_empty());
    }

    #[test]
    fn full_wildcard_matches_one_or_more_tokens() {
        let t = trie(&["sensor.>"]);
        assert_eq!(matching(&t, "sensor.a"), ["sensor.>"]);
        assert_eq!(matching(&t, "sensor.a.b.c"), ["sensor.>"]);
        assert!(matching(&t, "sensor").is_empty());
        assert!(matching(&t, "sensors.a").is_empty());
    }

    #[test]
    fn lone_full_wildcard_matches_every_topic() {
        let t = trie(&[">"]);
        for topic in ["a", "a.b", "sensor.temperature.x.y"] {
            assert_eq!(matching(&t, topic), [">"], "{topic}");
        }
    }

    #[test]
    fn literal_patterns_match_only_their_topic() {
        let t = trie(&["a.b"]);
        assert_eq!(matching(&t, "a.b"), ["a.b"]);
        assert!(matching(&t, "a").is_empty());
        assert!(matching(&t, "a.b.c").is_empty());
    }

    #[test]
    fn every_matching_pattern_is_found_once() {
        let t = trie(&[
            "a.*.c", "a.b.*", "*.b.c", "a.>", ">", "a.b.c", "*.*", "a.*", "x.>",
        ]);
        assert_eq!(
            matching(&t, "a.b.c"),
            ["*.b.c", ">", "a.*.c", "a.>", "a.b.*", "a.b.c"]
        );
        assert_eq!(matching(&t, "a.b"), ["*.*", ">", "a.*", "a.>"]);
        assert_eq!(matching(&t, "a"), [">"]);
        assert!(t.matches("q.r"));
    }

    #[test]
    fn a_pattern_filed_twice_matches_twice_and_is_removed_one_at_a_time() {
        let mut t = TopicTrie::default();
        t.insert("s.*", 1);
        t.insert("s.*", 2);
        let mut v = Vec::new();
        t.for_each_match("s.x", |x| v.push(*x));
        assert_eq!(v, [1, 2]);
        assert_eq!(t.remove("s.*", |x| *x == 2), Some(2));
        assert_eq!(t.len, 1);
        assert_eq!(t.remove("s.*", |x| *x == 2), None);
        assert!(t.matches("s.x"));
    }

    #[test]
    fn removing_the_last_pattern_prunes_the_trie() {
        let mut t = trie(&["a.*.c.>", "a.b", ">"]);
        assert_eq!(t.remove("a.*.c.>", |_| true), Some("a.*.c.>"));
        assert_eq!(t.remove("a.b", |_| true), Some("a.b"));
        assert_eq!(t.remove(">", |_| true), Some(">"));
        assert_eq!(t.remove("a.b", |_| true), None);
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "emptied branches are removed");
        assert!(!t.matches("a.x.c.d"));
    }

    #[test]
    fn match_order_is_stable_for_a_given_trie() {
        let t = trie(&["*.b", "a.*", "a.b", ">", "a.>"]);
        let walk = || {
            let mut v = Vec::new();
            t.for_each_match("a.b", |x| v.push(*x));
            v
        };
        assert_eq!(walk().len(), 5);
        assert_eq!(walk(), walk());
    }

    #[test]
    fn topics_with_empty_tokens_match_only_wildcards() {
        let t = trie(&["a.*", "a.>"]);
        // Published by nothing valid, but a peer could send one: it matches as tokens do.
        assert_eq!(matching(&t, "a."), ["a.*", "a.>"]);
        assert!(matching(&t, ".a").is_empty());
    }

    #[test]
    fn valid_topics_and_patterns_pass() {
        for t in ["a", "sensor.temperature", "a-b_c.D9", "é.ü"] {
            assert_eq!(check_topic(t), Ok(()), "{t}");
            assert_eq!(check_pattern(t), Ok(()), "{t}");
        }
        for p in [">", "*", "sensor.*", "sensor.>", "*.a.*", "*.>"] {
            assert_eq!(check_pattern(p), Ok(()), "{p}");
            assert!(is_pattern(p), "{p}");
        }
        assert!(!is_pattern("sensor.a"));
    }

    #[test]
    fn empty_and_oversized_topics_are_refused() {
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(check_pattern(""), Err(TopicError::Empty));
        let long = "a".repeat(MAX_TOPIC_BYTES + 1);
        assert_eq!(
            check_topic(&long),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_BYTES + 1
            })
        );
        assert_eq!(check_topic(&long[1..]), Ok(()));
    }

    #[test]
    fn empty_tokens_are_refused() {
        for t in ["a..b", ".a", "a.", ".", "a.*..b"] {
            assert_eq!(check_pattern(t), Err(TopicError::EmptyToken), "{t}");
        }
        assert_eq!(check_topic("a..b"), Err(TopicError::EmptyToken));
    }

    #[test]
    fn a_wildcard_must_be_a_whole_token() {
        for p in ["sens*", "a.b>", "a.**", "a.>>", "*a", "a.*>.b"] {
            assert_eq!(check_pattern(p), Err(TopicError::WildcardInToken), "{p}");
            assert_eq!(check_topic(p), Err(TopicError::WildcardInToken), "{p}");
        }
    }

    #[test]
    fn full_wildcard_only_ends_a_pattern() {
        assert_eq!(check_pattern(">.a"), Err(TopicError::FullWildcardNotLast));
        assert_eq!(check_pattern("a.>.*"), Err(TopicError::FullWildcardNotLast));
    }

    #[test]
    fn publishing_topics_refuse_wildcard_tokens() {
        for t in ["*", ">", "sensor.*", "sensor.>", "a.*.b"] {
            assert_eq!(check_topic(t), Err(TopicError::Wildcard), "{t}");
        }
    }

    #[test]
    fn topic_errors_read_after_the_word_topic() {
        let msg = format!("topic {}", TopicError::WildcardInToken);
        assert_eq!(
            msg,
            "topic has '*' or '>' inside a token; a wildcard must be a whole token"
        );
        assert_eq!(format!("topic {}", TopicError::Empty), "topic is empty");
    }
}
