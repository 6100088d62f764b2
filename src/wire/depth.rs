//! A nesting bound checked before typed decoding. serde decoding of a recursive type (a
//! `serde_json::Value`, a user enum that nests) recurses once per level with no limit, so
//! 20 000 nested arrays (20 KB) would overflow the stack. This scanner walks the CBOR heads
//! iteratively — no recursion, and no allocation for the first [`INLINE_LEVELS`] open levels
//! (it runs once per delivered event, so a heap stack cost as much as the decoding) — and
//! refuses nesting deeper than the bound. It validates nothing else: whatever it cannot
//! read it leaves to the decoder, which refuses it.

use super::WireError;

/// What remains of an open array, map or tag: this many more items (a map counts keys and
/// values), or [`UNTIL_BREAK`]. One word, compared and decremented in place: the scan runs
/// once per delivered event.
type Open = u64;

/// An indefinite-length item: open until a break byte.
const UNTIL_BREAK: Open = u64::MAX;

/// A definite count of items. Counts of `UNTIL_BREAK` and more are stored one below: no
/// buffer holds that many items, so such a level never closes either way.
fn items(n: u64) -> Open {
    n.min(UNTIL_BREAK - 1)
}

/// Open levels tracked without allocating; deeper payloads (rare) spill to the heap.
const INLINE_LEVELS: usize = 8;

/// The levels enclosing the one being read, innermost last: the first [`INLINE_LEVELS`] in
/// place, the rest in `spill`.
struct Levels {
    inline: [Open; INLINE_LEVELS],
    spill: Vec<Open>,
    len: usize,
}

impl Levels {
    fn new() -> Self {
        Levels {
            inline: [0; INLINE_LEVELS],
            spill: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, open: Open) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = open,
            None => self.spill.push(open),
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Open> {
        let open = if self.len > INLINE_LEVELS {
            self.spill.pop()
        } else {
            self.inline.get(self.len.checked_sub(1)?).copied()
        };
        self.len -= 1;
        open
    }
}

/// `Err` when `bytes` opens more than `max` arrays, maps or tags inside one another.
///
/// # Errors
/// [`WireError::Malformed`] naming the bound.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), WireError> {
    // Nothing can nest deeper than it has bytes; the usual payload (a struct of scalars,
    // texts and byte strings) is one level deep, found without tracking levels.
    if bytes.len() <= max || (max >= 1 && is_flat(bytes)) {
        return Ok(());
    }
    let too_deep = || WireError::Malformed(format!("nested deeper than {max} levels"));
    // The level being read (at first the one top-level item) is kept apart from the ones
    // enclosing it: most items are read without touching `outer`.
    let mut top: Open = 1;
    let mut outer = Levels::new();
    let mut pos = 0usize;
    loop {
        if top == 0 {
            match outer.pop() {
                Some(parent) => {
                    top = parent;
                    continue;
                }
                None => return Ok(()),
            }
        }
        let Some(&initial) = bytes.get(pos) else {
            return Ok(()); // truncated: the decoder says so
        };
        pos += 1;
        if initial == 0xff {
            if top != UNTIL_BREAK {
                return Ok(()); // a stray break: the decoder's to refuse
            }
            match outer.pop() {
                Some(parent) => top = parent,
                None => return Ok(()),
            }
            continue;
        }
        if top != UNTIL_BREAK {
            top -= 1;
        }
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            31 => {
                // Indefinite arrays, maps and strings (strings are chunks up to a break, one
                // level down); anything else with this head is malformed, left to the decoder.
                if (2..=5).contains(&major) {
                    outer.push(top);
                    top = UNTIL_BREAK;
                    if outer.len() > max {
                        return Err(too_deep());
                    }
                }
                continue;
            }
            // Reserved or truncated: malformed, the decoder's to refuse.
            _ => match argument(bytes, &mut pos, info) {
                Some(arg) => arg,
                None => return Ok(()),
            },
        };
        let opened = match major {
            2 | 3 => {
                let Some(end) = usize::try_from(arg).ok().and_then(|l| pos.checked_add(l)) else {
                    return Ok(());
                };
                if end > bytes.len() {
                    return Ok(());
                }
                pos = end;
                continue;
            }
            4 => items(arg),
            5 => items(arg.saturating_mul(2)),
            6 => 1,
            _ => continue,
        };
        // `outer` then holds the top-level item and every open level but the new one.
        outer.push(top);
        top = opened;
        if outer.len() > max {
            return Err(too_deep());
        }
    }
}

/// Whether `bytes` is one definite array or map whose items are all numbers, simple values,
/// texts or byte strings of definite length: one level deep. `false` for anything else
/// (nesting, indefinite lengths, truncation), which the full walk then reads.
fn is_flat(bytes: &[u8]) -> bool {
    let mut pos = 0;
    let items = match definite_head(bytes, &mut pos) {
        Some((4, n)) => n,
        Some((5, n)) => n.saturating_mul(2),
        _ => return false,
    };
    // Each item takes at least a byte: the loop ends with the bytes, whatever `items` says.
    for _ in 0..items {
        match definite_head(bytes, &mut pos) {
            Some((0 | 1 | 7, _)) => {}
            Some((2 | 3, len)) => {
                match usize::try_from(len).ok().and_then(|l| pos.checked_add(l)) {
                    Some(end) if end <= bytes.len() => pos = end,
                    _ => return false,
                }
            }
            _ => return false,
        }
    }
    true
}

/// The head at `pos` if its length is definite: its major type and argument; `pos` moves
/// past it.
#[inline(always)]
fn definite_head(bytes: &[u8], pos: &mut usize) -> Option<(u8, u64)> {
    let initial = *bytes.get(*pos)?;
    *pos += 1;
    Some((initial >> 5, argument(bytes, pos, initial & 0x1f)?))
}

/// The argument of a head whose additional information is `info`, read from `pos` on (which
/// moves past it): `None` for an indefinite length (31), a reserved value or a truncation.
#[inline(always)]
fn argument(bytes: &[u8], pos: &mut usize, info: u8) -> Option<u64> {
    let mut take = |n: usize| {
        let raw = bytes.get(*pos..*pos + n)?;
        *pos += n;
        Some(raw)
    };
    // A width each: fixed-size reads, not a loop over the argument's bytes.
    Some(match info {
        0..=23 => u64::from(info),
        24 => u64::from(take(1)?[0]),
        25 => u64::from(u16::from_be_bytes(take(2)?.try_into().ok()?)),
        26 => u64::from(u32::from_be_bytes(take(4)?.try_into().ok()?)),
        27 => u64::from_be_bytes(take(8)?.try_into().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut v = vec![0x81u8; levels];
        v.push(0x00);
        v
    }

    #[test]
    fn nesting_up_to_the_bound_passes_and_one_more_level_fails() {
        assert!(check_depth(&nested_arrays(64), 64).is_ok());
        assert!(check_depth(&nested_arrays(65), 64).is_err());
        assert!(check_depth(&nested_arrays(20_000), 64).is_err());
    }

    #[test]
    fn maps_tags_and_indefinite_containers_count_as_levels() {
        // {0: {0: ...}} 70 deep.
        let mut maps = Vec::new();
        for _ in 0..70 {
            maps.extend([0xa1, 0x00]);
        }
        maps.push(0x00);
        assert!(check_depth(&maps, 64).is_err());
        let mut tags = vec![0xc6u8; 70];
        tags.push(0x00);
        assert!(check_depth(&tags, 64).is_err());
        let mut indefinite = vec![0x9fu8; 70];
        indefinite.push(0x00);
        indefinite.extend(vec![0xffu8; 70]);
        assert!(check_depth(&indefinite, 64).is_err());
    }

    #[test]
    fn wide_and_flat_items_pass_whatever_their_size() {
        // An array of 1000 byte strings of 100 bytes, and a long text.
        let mut wide = vec![0x99, 0x03, 0xe8];
        for _ in 0..1000 {
            wide.extend([0x58, 100]);
            wide.extend([7u8; 100]);
        }
        assert!(check_depth(&wide, 64).is_ok());
        // Siblings do not add up: [[0], [0], ...] is two levels.
        let mut siblings = vec![0x98, 200];
        for _ in 0..200 {
            siblings.extend([0x81, 0x00]);
        }
        assert!(check_depth(&siblings, 2).is_ok());
        assert!(check_depth(&siblings, 1).is_err());
    }

    #[test]
    fn levels_past_the_inline_ones_are_counted_as_they_open_and_close() {
        // [deep(30), deep(30), 0]: two branches reaching 31 levels, each crossing the levels
        // kept in place, and a sibling after them at level 1.
        let mut v = vec![0x83u8];
        v.extend(nested_arrays(30));
        v.extend(nested_arrays(30));
        v.push(0x00);
        assert!(check_depth(&v, 31).is_ok());
        assert!(check_depth(&v, 30).is_err());
        // The second branch is the deep one: the first one's levels were all closed.
        let mut w = vec![0x82u8];
        w.extend(nested_arrays(20));
        w.extend(nested_arrays(40));
        assert!(check_depth(&w, 41).is_ok());
        assert!(check_depth(&w, 40).is_err());
    }

    #[test]
    fn a_recursive_type_refuses_deep_payloads_instead_of_overflowing_the_stack() {
        let deep = nested_arrays(20_000);
        let e = crate::wire::decode_payload::<serde_json::Value>(&deep).unwrap_err();
        assert!(e.to_string().contains("nested deeper than 64"), "{e}");
        let ok: serde_json::Value = crate::wire::decode_payload(&nested_arrays(10)).unwrap();
        assert_eq!(ok.to_string(), "[[[[[[[[[[0]]]]]]]]]]");
    }

    #[test]
    fn a_flat_struct_is_one_level_and_a_deep_value_behind_flat_items_is_still_refused() {
        // {"seq": 7, "data": h'00 × 100', "name": "x", "f": 1.5}
        let mut flat = vec![
            0xa4, 0x63, b's', b'e', b'q', 0x07, 0x64, b'd', b'a', b't', b'a',
        ];
        flat.extend([0x58, 100]);
        flat.extend([0u8; 100]);
        flat.extend([0x64, b'n', b'a', b'm', b'e', 0x61, b'x', 0x61, b'f']);
        flat.extend([0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert!(is_flat(&flat));
        assert!(check_depth(&flat, 1).is_ok());
        assert!(
            check_depth(&flat, 0).is_err(),
            "one level is past a bound of none"
        );
        // The same items, then one more whose value nests 65 arrays deep.
        let mut deep = flat.clone();
        deep[0] = 0xa5;
        deep.extend([0x61, b'z']);
        deep.extend(nested_arrays(65));
        assert!(!is_flat(&deep));
        assert!(check_depth(&deep, 64).is_err());
        // Indefinite, truncated and announced-but-missing items are not flat.
        assert!(!is_flat(&[0xbf, 0x61, b'a', 0x01, 0xff]));
        assert!(!is_flat(&flat[..flat.len() - 1]));
        assert!(!is_flat(&[
            0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]));
    }

    #[test]
    fn malformed_input_is_left_to_the_decoder() {
        for bad in [
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0xff; 100][..],
            &[0x1c; 100][..],
        ] {
            assert!(check_depth(bad, 64).is_ok());
        }
    }
}
