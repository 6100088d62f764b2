//! The receiver rules of docs/PROTOCOL.md §4, checked on a whole frame body before it is
//! decoded, so that what a receiver accepts does not depend on which field, or which decoder
//! path, an item reaches.
//!
//! A body is accepted when it is exactly one well-formed CBOR item (RFC 8949) in which:
//! every array, map, byte string and text string has a definite length; no tag appears; every
//! text string is UTF-8; every map key is a text string, and no key appears twice in one map;
//! simple values are only `false`, `true` and `null`; floats are float32 or float64 (no half
//! precision); arrays and maps nest at most [`MAX_NESTING`] deep. Anything else is
//! `malformed_frame`. Integer heads need not be in their shortest form.
//!
//! The check walks the item with an explicit stack, bounded by [`MAX_NESTING`], so hostile
//! nesting costs neither recursion nor memory; payloads are byte strings and are not looked
//! into.

use super::codec::WireError;

/// Arrays and maps inside each other, at most (the frame's own array counts as one).
pub const MAX_NESTING: usize = 32;

const MAJOR_UINT: u8 = 0;
const MAJOR_NINT: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;

/// An open array or map: the items it still holds, and for a map where its keys start in the
/// key list.
#[derive(Clone, Copy, Default)]
struct Open {
    items_left: u64,
    map_keys_from: Option<usize>,
}

/// Keys of the open maps, innermost last: on the stack while they are few (the usual case:
/// no allocation per frame), spilled to the heap beyond.
struct Keys<'a> {
    inline: [&'a [u8]; INLINE_KEYS],
    len: usize,
    spill: Vec<&'a [u8]>,
}

const INLINE_KEYS: usize = 32;
/// Maps with at most this many keys are checked pair by pair; larger ones are sorted.
const PAIRWISE_KEYS: usize = 16;

impl<'a> Keys<'a> {
    fn push(&mut self, key: &'a [u8]) {
        if self.len < INLINE_KEYS {
            self.inline[self.len] = key;
        } else {
            self.spill.push(key);
        }
        self.len += 1;
    }

    fn get(&self, i: usize) -> &'a [u8] {
        if i < INLINE_KEYS {
            self.inline[i]
        } else {
            self.spill[i - INLINE_KEYS]
        }
    }

    /// Whether two of the keys from `from` on are equal; then forget them.
    fn close_map(&mut self, from: usize) -> bool {
        let n = self.len - from;
        let dup = if n <= PAIRWISE_KEYS {
            (from..self.len).any(|i| (i + 1..self.len).any(|j| self.get(i) == self.get(j)))
        } else {
            let mut all: Vec<&[u8]> = (from..self.len).map(|i| self.get(i)).collect();
            all.sort_unstable();
            all.windows(2).any(|w| w[0] == w[1])
        };
        self.len = from;
        self.spill.truncate(from.saturating_sub(INLINE_KEYS));
        dup
    }
}

/// Check `body` against the receiver rules.
///
/// # Errors
/// [`WireError::Malformed`] naming the first rule broken and where.
pub fn check_body(body: &[u8]) -> Result<(), WireError> {
    let bad = |at: usize, why: &str| WireError::Malformed(format!("{why} at byte {at}"));
    let mut at = 0usize;
    let mut open = [Open::default(); MAX_NESTING];
    let mut depth = 0usize;
    let mut keys = Keys {
        inline: [&[]; INLINE_KEYS],
        len: 0,
        spill: Vec::new(),
    };
    loop {
        let start = at;
        let initial = *body.get(at).ok_or_else(|| bad(at, "truncated CBOR item"))?;
        at += 1;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let bytes = body
                    .get(at..at + n)
                    .ok_or_else(|| bad(start, "truncated CBOR head"))?;
                at += n;
                bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b))
            }
            31 if matches!(major, MAJOR_BYTES..=MAJOR_MAP) => {
                return Err(bad(start, "indefinite length (lengths must be definite)"))
            }
            _ => return Err(bad(start, "reserved or misplaced CBOR head")),
        };
        let is_key = depth > 0 && {
            let top = open[depth - 1];
            top.map_keys_from.is_some() && top.items_left % 2 == 0
        };
        if is_key && major != MAJOR_TEXT {
            return Err(bad(start, "map key that is not a text string"));
        }
        match major {
            MAJOR_UINT | MAJOR_NINT => {}
            MAJOR_BYTES | MAJOR_TEXT => {
                let len = usize::try_from(arg).map_err(|_| bad(start, "string too long"))?;
                let end = at
                    .checked_add(len)
                    .filter(|end| *end <= body.len())
                    .ok_or_else(|| bad(start, "truncated string"))?;
                let content = &body[at..end];
                at = end;
                // Most texts are short names and keys: an ASCII scan is inlined, and
                // `from_utf8` (a call per text) is needed only past it.
                if major == MAJOR_TEXT {
                    if !content.is_ascii() {
                        std::str::from_utf8(content)
                            .map_err(|_| bad(start, "text that is not UTF-8"))?;
                    }
                    if is_key {
                        keys.push(content);
                    }
                }
            }
            MAJOR_ARRAY | MAJOR_MAP => {
                if depth >= MAX_NESTING {
                    return Err(bad(start, "arrays and maps nested too deep"));
                }
                let items_left = if major == MAJOR_MAP {
                    arg.checked_mul(2)
                        .ok_or_else(|| bad(start, "map too long"))?
                } else {
                    arg
                };
                // Every item takes at least one byte: a longer count cannot be well formed,
                // and the check stops here rather than at the end of the body.
                if items_left > (body.len() - at) as u64 {
                    return Err(bad(start, "truncated array or map"));
                }
                if items_left > 0 {
                    open[depth] = Open {
                        items_left,
                        map_keys_from: (major == MAJOR_MAP).then_some(keys.len),
                    };
                    depth += 1;
                    continue;
                }
            }
            MAJOR_TAG => return Err(bad(start, "CBOR tag (tags are not allowed)")),
            MAJOR_SIMPLE => match info {
                20..=22 | 26 | 27 => {}
                25 => return Err(bad(start, "half-precision float")),
                _ => return Err(bad(start, "simple value other than false, true, null")),
            },
            _ => return Err(bad(start, "unknown major type")),
        }
        // One item is complete: close every array or map it completes.
        loop {
            if depth == 0 {
                if at != body.len() {
                    return Err(WireError::Malformed(format!(
                        "{} bytes after the CBOR item",
                        body.len() - at
                    )));
                }
                return Ok(());
            }
            let top = &mut open[depth - 1];
            top.items_left -= 1;
            if top.items_left > 0 {
                break;
            }
            if let Some(from) = top.map_keys_from {
                if keys.close_map(from) {
                    return Err(bad(at, "map with a duplicate key"));
                }
            }
            depth -= 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ok(body: &[u8]) -> bool {
        check_body(body).is_ok()
    }

    #[test]
    fn well_formed_definite_items_are_accepted() {
        for body in [
            &b"\x00"[..],
            b"\x82\x00\xa1\x64ping\xa1\x61n\x01",
            b"\x83\x18\x00\x39\x01\x00\xfb\x40\x35\x80\x00\x00\x00\x00\x00", // [0, -257, 21.5]
            b"\xa3\x61a\xf4\x61b\xf5\x61c\xf6",                              // false true null
            b"\x82\x40\xfa\x41\xac\x00\x00",                                 // h'', 21.5f32
            b"\xa0",
            b"\x80",
        ] {
            assert!(ok(body), "{body:x?}: {:?}", check_body(body));
        }
    }

    #[test]
    fn indefinite_lengths_are_refused_for_every_kind_of_item() {
        for body in [
            &b"\x9f\x01\xff"[..],
            b"\xbf\x61a\x01\xff",
            b"\x7f\x61a\xff",
            b"\x5f\x41a\xff",
            b"\x82\x00\xa1\x64ping\xbf\x61n\x01\xff",
        ] {
            let err = check_body(body).unwrap_err();
            assert!(err.to_string().contains("indefinite"), "{body:x?}: {err}");
        }
    }

    #[test]
    fn tags_duplicate_keys_and_non_text_keys_are_refused() {
        for (body, why) in [
            (&b"\xc1\x1a\x00\x00\x00\x01"[..], "tag"),
            (b"\x82\x00\xa1\x64ping\xa1\x61n\xc0\x01", "tag"),
            (b"\xa2\x61n\x01\x61n\x02", "duplicate"),
            (b"\xa1\x61x\xa2\x61n\x01\x62n\x00\x02", "nothing"), // "n" and "n\0" differ
            (b"\xa1\x01\x02", "not a text"),
        ] {
            let got = check_body(body);
            if why == "nothing" {
                assert!(got.is_ok(), "{body:x?}: {got:?}");
            } else {
                let err = got.unwrap_err();
                assert!(err.to_string().contains(why), "{body:x?}: {err}");
                assert_eq!(err.code(), "malformed_frame");
            }
        }
        // Equal keys in different maps are fine; a key repeated in the outer map after an
        // inner map closed is not.
        assert!(ok(b"\xa2\x61a\xa1\x61a\x01\x61b\xa1\x61a\x02"));
        assert!(!ok(b"\xa2\x61a\xa1\x61b\x01\x61a\x02"));
    }

    /// A map of `n` distinct one- or two-byte keys, then `extra` (raw key-value bytes).
    fn big_map(n: usize, extra: &[u8]) -> Vec<u8> {
        let mut body = vec![0xb9];
        body.extend_from_slice(&(n as u16 + u16::from(!extra.is_empty())).to_be_bytes());
        for i in 0..n {
            body.extend_from_slice(&[0x62, b'a' + (i / 26) as u8, b'a' + (i % 26) as u8, 0x00]);
        }
        body.extend_from_slice(extra);
        body
    }

    #[test]
    fn duplicate_keys_are_found_in_maps_of_any_size() {
        for n in [2, 16, 17, 64, 65, 300] {
            assert!(ok(&big_map(n, b"")), "{n} distinct keys");
            // The duplicate of the first key, last.
            let err = check_body(&big_map(n, b"\x62aa\x01")).unwrap_err();
            assert!(err.to_string().contains("duplicate"), "{n}: {err}");
        }
        // Nested maps share the key list: an inner map's keys do not clash with the outer's,
        // and the outer's are still checked after a large inner one closed.
        let mut body = vec![0xa2, 0x61, b'x'];
        body.extend_from_slice(&big_map(100, b""));
        body.extend_from_slice(b"\x61y\x00");
        assert!(ok(&body));
        let last = body.len() - 2;
        body[last] = b'x';
        assert!(!ok(&body));
    }

    #[test]
    fn bad_simple_values_text_and_heads_are_refused() {
        for body in [
            &b"\xf9\x3c\x00"[..],                    // half float 1.0
            b"\xf7",                                 // undefined
            b"\xf8\x20",                             // simple(32)
            b"\xff",                                 // break outside an indefinite item
            b"\x1c",                                 // reserved additional information
            b"\x62\xff\xfe",                         // text that is not UTF-8
            b"\x63ab\xc3",                           // ASCII, then a cut sequence
            b"\x62\xc0\xaf",                         // an overlong "/"
            b"\x19\x01",                             // truncated head
            b"\x43\x01\x02",                         // truncated byte string
            b"\x82\x01",                             // array missing an item
            b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", // a huge count, no items
            b"\xbb\x80\x00\x00\x00\x00\x00\x00\x00", // a map count that overflows when doubled
            b"\x00\x00",                             // trailing byte
            b"",
        ] {
            assert!(!ok(body), "{body:x?}");
        }
    }

    #[test]
    fn text_in_any_script_is_accepted() {
        for text in ["n17", "", "é", "ノード", "worker-😀"] {
            let mut body = vec![0x60 | u8::try_from(text.len()).unwrap()];
            body.extend_from_slice(text.as_bytes());
            assert!(ok(&body), "{text}");
        }
    }

    #[test]
    fn nesting_is_bounded_without_recursion_or_memory() {
        let mut deep = vec![0x81u8; MAX_NESTING];
        deep.push(0x00);
        assert!(ok(&deep));
        let mut deeper = vec![0x81u8; MAX_NESTING + 1];
        deeper.push(0x00);
        assert!(check_body(&deeper)
            .unwrap_err()
            .to_string()
            .contains("deep"));
        let mut hostile = vec![0xa1u8, 0x61, b'a'];
        for _ in 0..200_000 {
            hostile.extend_from_slice(b"\xa1\x61a");
        }
        hostile.push(0);
        assert!(!ok(&hostile));
    }
}
