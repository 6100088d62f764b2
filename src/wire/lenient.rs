//! The second chance of payload decoding: numbers by value, not by CBOR width.
//!
//! The fast decoder maps each Rust type to one CBOR encoding: an `f32` field accepts only a
//! single-precision float. Other languages write what they have: Python and JSON send
//! `21.5` as a double, and `21` as an integer. When the fast decoding of a payload fails,
//! it is decoded again through a generic value tree that hands numbers to serde's visitors
//! as they are, so an `f32` field takes a double (rounded) or an integer, an `f64` field an
//! integer, and every other field the same as before. Only payloads that the fast path
//! refuses pay for this. Nesting is limited to [`MAX_DEPTH`] levels.

use std::fmt;

use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};

/// Arrays and maps nested deeper than this are refused.
pub const MAX_DEPTH: usize = 64;

/// Decode `bytes` (one CBOR item) into `T`, numbers by value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    T::deserialize(decode_value(bytes)?).map_err(|e| e.to_string())
}

/// Decode `bytes`, exactly one CBOR item, into a generic tree (also what JSON is made from).
pub(crate) fn decode_value(bytes: &[u8]) -> Result<Value, String> {
    let mut de = minicbor_serde::Deserializer::new(bytes);
    let value = Seed(0).deserialize(&mut de).map_err(|e| e.to_string())?;
    let used = de.decoder().position();
    if used != bytes.len() {
        return Err(format!("{} bytes after the CBOR item", bytes.len() - used));
    }
    Ok(value)
}

/// Any CBOR item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    /// An integer outside the `i64` and `u64` ranges (CBOR reaches −2⁶⁴).
    I128(i128),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Seq(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

#[derive(Clone, Copy)]
struct Seed(usize);

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom(format!("nested deeper than {MAX_DEPTH}")));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any CBOR item")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::U64(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::I128(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map_or(Value::F64(v as f64), Value::I128))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::F64(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_owned()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = Seed(self.0 + 1);
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = Seed(self.0 + 1);
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(k) = map.next_key_seed(inner)? {
            entries.push((k, map.next_value_seed(inner)?));
        }
        Ok(Value::Map(entries))
    }
}

impl<'de> IntoDeserializer<'de, Error> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl<'de> Deserializer<'de> for Value {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(b),
            Value::U64(n) => v.visit_u64(n),
            Value::I64(n) => v.visit_i64(n),
            Value::I128(n) => v.visit_i128(n),
            Value::F64(f) => v.visit_f64(f),
            Value::Text(s) => v.visit_string(s),
            Value::Bytes(b) => v.visit_byte_buf(b),
            Value::Seq(items) => v.visit_seq(SeqDeserializer::new(items.into_iter())),
            Value::Map(entries) => v.visit_map(MapDeserializer::new(entries.into_iter())),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => v.visit_none(),
            other => v.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self {
            Value::Text(_) => v.visit_enum(Variant(self, None)),
            Value::Map(mut entries) if entries.len() == 1 => {
                let (tag, value) = entries.remove(0);
                v.visit_enum(Variant(tag, Some(value)))
            }
            _ => Err(de::Error::custom(
                "an enum is a text (unit variant) or a map of one entry",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// An enum's tag and, unless it is a unit variant, its content.
struct Variant(Value, Option<Value>);

impl<'de> EnumAccess<'de> for Variant {
    type Error = Error;
    type Variant = Content;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Content), Error> {
        Ok((seed.deserialize(self.0)?, Content(self.1)))
    }
}

struct Content(Option<Value>);

impl<'de> VariantAccess<'de> for Content {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(de::Error::custom("a unit variant carries no value")),
        }
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(self.0.unwrap_or(Value::Null))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
        self.0.unwrap_or(Value::Null).deserialize_any(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.0.unwrap_or(Value::Null).deserialize_any(v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::wire::json::json_to_cbor;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Temperature {
        celsius: f32,
        at: Option<u64>,
        tag: Kind,
        raw: serde_bytes::ByteBuf,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    enum Kind {
        Indoor,
        Probe(u8),
    }

    #[test]
    fn doubles_and_integers_fill_f32_fields_and_everything_else_decodes_as_usual() {
        let cbor = json_to_cbor(&json!({"celsius": 21.5, "at": null, "tag": "Indoor",
                                        "raw": {"$bytes": "0102"}}))
        .unwrap();
        let t: Temperature = decode(&cbor).unwrap();
        assert_eq!(t.celsius, 21.5);
        assert_eq!(
            (t.at, t.tag, t.raw.into_vec()),
            (None, Kind::Indoor, vec![1, 2])
        );
        let cbor = json_to_cbor(&json!({"celsius": 21, "at": 7, "tag": {"Probe": 3},
                                        "raw": {"$bytes": ""}}))
        .unwrap();
        let t: Temperature = decode(&cbor).unwrap();
        assert_eq!((t.celsius, t.at, t.tag), (21.0, Some(7), Kind::Probe(3)));
    }

    #[test]
    fn mismatches_are_still_errors_and_depth_is_bounded() {
        let cbor = json_to_cbor(&json!({"celsius": "warm"})).unwrap();
        assert!(decode::<Temperature>(&cbor).is_err());
        let mut deep = vec![0x81u8; 10_000];
        deep.push(0);
        assert!(decode::<serde::de::IgnoredAny>(&deep).is_err());
    }
}
