//! JSON ↔ CBOR payloads, for the command line (`nodecloud pub/sub/call`).
//!
//! The mapping is faithful for everything JSON has: null, booleans, integers (as CBOR
//! integers), floats (as CBOR floats, `1.0` stays a float), text, arrays and maps. CBOR has
//! more, shown as follows: a byte string is the object `{"$bytes": "<hex>"}` (and that object
//! is turned back into a byte string), a map key that is not text is written in CBOR
//! diagnostic notation (RFC 8949 §8: `1`, `h'00ff'`, `[1, "a"]`, `{1: 2}`), `undefined` is
//! null, and a non-finite float is null (JSON has none). Nesting deeper than [`MAX_DEPTH`] is
//! refused, so hostile payloads cannot exhaust the stack.
//!
//! Size: the JSON is at most a small constant times the CBOR it came from (hex doubles byte
//! strings; escaping at most sextuples text). A key is written from the CBOR item itself, so
//! keys nested in keys are escaped once, not once per level: maps used as map keys cannot make
//! the output grow exponentially.

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};

use super::codec::encode_payload;
use super::lenient::{self, Value as Cbor};
use super::WireError;

/// Arrays and maps nested deeper than this are refused (both ways, as in payload decoding).
pub use super::lenient::MAX_DEPTH;

/// Encode a JSON value as one CBOR item.
///
/// # Errors
/// [`WireError::Encode`] when nested deeper than [`MAX_DEPTH`], or a `$bytes` value is not hex.
pub fn json_to_cbor(value: &Value) -> Result<Bytes, WireError> {
    encode_payload(&AsCbor(value, 0))
}

/// Decode one CBOR item into JSON.
///
/// # Errors
/// [`WireError::Malformed`] when the bytes are not one CBOR item or nest deeper than
/// [`MAX_DEPTH`].
pub fn cbor_to_json(bytes: &[u8]) -> Result<Value, WireError> {
    lenient::decode_value(bytes)
        .map(to_json)
        .map_err(WireError::Malformed)
}

/// The JSON form of a decoded CBOR item (its nesting is bounded by the decoder).
fn to_json(v: Cbor) -> Value {
    match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::U64(n) => Value::Number(n.into()),
        Cbor::I64(n) => Value::Number(n.into()),
        Cbor::I128(n) => Value::String(n.to_string()),
        Cbor::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Cbor::Text(t) => Value::String(t),
        Cbor::Bytes(b) => {
            let mut m = Map::new();
            m.insert("$bytes".into(), Value::String(to_hex(&b)));
            Value::Object(m)
        }
        Cbor::Seq(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Cbor::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Cbor::Text(t) => t,
                        other => {
                            let mut d = String::new();
                            diagnostic(&other, &mut d);
                            d
                        }
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

/// CBOR diagnostic notation of `v`, appended to `out`: linear in the size of `v`.
fn diagnostic(v: &Cbor, out: &mut String) {
    use std::fmt::Write;
    match v {
        Cbor::Null => out.push_str("null"),
        Cbor::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Cbor::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Cbor::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Cbor::I128(n) => {
            let _ = write!(out, "{n}");
        }
        Cbor::F64(f) if f.is_nan() => out.push_str("NaN"),
        Cbor::F64(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Cbor::F64(f) => {
            let _ = write!(out, "{f:?}");
        }
        Cbor::Text(t) => {
            let _ = write!(out, "{t:?}");
        }
        Cbor::Bytes(b) => {
            out.push_str("h'");
            out.push_str(&to_hex(b));
            out.push('\'');
        }
        Cbor::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                diagnostic(item, out);
            }
            out.push(']');
        }
        Cbor::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                diagnostic(k, out);
                out.push_str(": ");
                diagnostic(v, out);
            }
            out.push('}');
        }
    }
}

struct AsCbor<'a>(&'a Value, usize);

impl Serialize for AsCbor<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let depth = self.1 + 1;
        if depth > MAX_DEPTH {
            return Err(S::Error::custom(format!("nested deeper than {MAX_DEPTH}")));
        }
        match self.0 {
            Value::Null => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_u64() {
                    s.serialize_u64(i)
                } else if let Some(i) = n.as_i64() {
                    s.serialize_i64(i)
                } else {
                    s.serialize_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(t) => s.serialize_str(t),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&AsCbor(item, depth))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                if let (1, Some(Value::String(hex))) = (map.len(), map.get("$bytes")) {
                    let bytes = from_hex(hex).ok_or_else(|| {
                        S::Error::custom("\"$bytes\" must be an even number of hex digits")
                    })?;
                    return s.serialize_bytes(&bytes);
                }
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, &AsCbor(v, depth))?;
                }
                m.end()
            }
        }
    }
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_survives_a_round_trip_through_cbor_with_floats_kept_floats() {
        let v = json!({"a": 1, "b": -2, "c": 1.0, "d": 2.5, "e": "text", "f": [true, false, null],
                       "g": {"nested": [1, [2, [3]]]}, "h": 18446744073709551615u64});
        let back = cbor_to_json(&json_to_cbor(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(back["c"].is_f64(), "1.0 stays a float");
    }

    #[test]
    fn byte_strings_are_shown_as_hex_objects_and_read_back_as_bytes() {
        let v = json!({"$bytes": "00ff10"});
        let cbor = json_to_cbor(&v).unwrap();
        assert_eq!(&cbor[..], &[0x43, 0x00, 0xff, 0x10]);
        assert_eq!(cbor_to_json(&cbor).unwrap(), v);
        assert!(json_to_cbor(&json!({"$bytes": "abc"})).is_err());
    }

    #[test]
    fn a_typed_payload_reads_as_the_json_a_user_expects() {
        #[derive(Serialize)]
        struct Temperature {
            celsius: f32,
        }
        let cbor = encode_payload(&Temperature { celsius: 21.5 }).unwrap();
        assert_eq!(cbor_to_json(&cbor).unwrap(), json!({"celsius": 21.5}));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused_both_ways() {
        let mut deep = json!(0);
        for _ in 0..MAX_DEPTH + 1 {
            deep = json!([deep]);
        }
        assert!(json_to_cbor(&deep).is_err());
        let mut cbor = vec![0x81u8; 100_000];
        cbor.push(0x00);
        assert!(cbor_to_json(&cbor).is_err());
    }

    #[test]
    fn keys_that_are_not_text_are_written_in_diagnostic_notation() {
        // {1: "a", h'00ff': 2, [1, "x"]: 3, {true: null}: 4}
        let cbor = [
            0xa4, 0x01, 0x61, b'a', 0x42, 0x00, 0xff, 0x02, 0x82, 0x01, 0x61, b'x', 0x03, 0xa1,
            0xf5, 0xf6, 0x04,
        ];
        let v = cbor_to_json(&cbor).unwrap();
        assert_eq!(
            v,
            json!({"1": "a", "h'00ff'": 2, "[1, \"x\"]": 3, "{true: null}": 4})
        );
    }

    #[test]
    fn maps_used_as_map_keys_grow_the_output_linearly_not_exponentially() {
        // 34 nested one-entry maps each keyed by the next: `a1` x 34, then 35 zeros. Writing
        // each key as escaped JSON text doubled the size per level (2^34 bytes).
        let mut cbor = vec![0xa1u8; 34];
        cbor.extend([0x00u8; 35]);
        let v = cbor_to_json(&cbor).unwrap();
        let text = v.to_string();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(text.starts_with("{\"{{{{"), "{text}");
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors_not_panics() {
        assert!(cbor_to_json(&[0xff]).is_err());
        assert!(cbor_to_json(&[0x01, 0x02]).is_err());
        assert!(cbor_to_json(&[]).is_err());
        assert!(cbor_to_json(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
