//! JSON ↔ CBOR for the command line, both ways: arbitrary CBOR into JSON and back, arbitrary
//! JSON text into CBOR and back. Never a panic or a stack overflow, and the output stays
//! proportional to the input (no exponential growth from maps used as map keys).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecloud::wire::json::{cbor_to_json, json_to_cbor};

fuzz_target!(|data: &[u8]| {
    // CBOR → JSON → CBOR.
    if let Ok(v) = cbor_to_json(data) {
        let text = v.to_string();
        // Hex doubles byte strings, escaping at most sextuples text, diagnostic notation adds
        // a few bytes per item: 16× plus a constant is a generous ceiling.
        assert!(
            text.len() <= 16 * data.len() + 64,
            "{} bytes of JSON from {} bytes of CBOR",
            text.len(),
            data.len()
        );
        if let Ok(cbor) = json_to_cbor(&v) {
            assert!(
                cbor.len() <= 4 * text.len() + 64,
                "{} bytes of CBOR from {} bytes of JSON",
                cbor.len(),
                text.len()
            );
            // What the command line prints reads back as the same JSON.
            let again = cbor_to_json(&cbor).expect("CBOR made from JSON decodes");
            assert_eq!(again, v, "JSON changed through CBOR");
        }
    }
    // JSON text → CBOR → JSON. serde_json has its own recursion limit (128); ours is lower.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(cbor) = json_to_cbor(&v) {
            assert!(
                cbor.len() <= 4 * data.len() + 64,
                "{} bytes of CBOR from {} bytes of JSON",
                cbor.len(),
                data.len()
            );
            let back = cbor_to_json(&cbor).expect("CBOR made from JSON decodes");
            let text = back.to_string();
            assert!(text.len() <= 16 * data.len() + 64);
        }
    }
});
