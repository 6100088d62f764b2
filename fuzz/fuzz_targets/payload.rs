//! Arbitrary event payloads: decoding into a recursive type, into a typed struct, and into
//! JSON for the command line must each return a value or an error, never panic or exhaust
//! the stack, and JSON output stays proportional to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecloud::wire::{decode_payload, json};
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Reading {
    celsius: f32,
    tags: Vec<String>,
    nested: Option<Box<Reading>>,
}

/// A user enum that nests, as an application's own recursive type would.
#[derive(Deserialize)]
#[allow(dead_code)]
enum Tree {
    Leaf(i64),
    Text(String),
    Node(Vec<Tree>),
    Keyed(std::collections::BTreeMap<String, Tree>),
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_payload::<serde_json::Value>(data);
    let _ = decode_payload::<Tree>(data);
    let _ = decode_payload::<Reading>(data);
    if let Ok(v) = json::cbor_to_json(data) {
        let text = v.to_string();
        assert!(
            text.len() <= 16 * data.len() + 64,
            "{} bytes of JSON from {}",
            text.len(),
            data.len()
        );
        let _ = json::json_to_cbor(&v);
    }
});
