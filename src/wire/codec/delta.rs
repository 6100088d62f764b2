//! `delta` messages spliced from records encoded once.
//!
//! A node relays each new record of another node's state to most of its links (a star's
//! master to every other worker), and pushes its own changes to all of them. Encoding a
//! `delta` per link with serde encoded every record once per link; here each record is
//! encoded once, as an [`EncodedRecord`], and [`encode_delta_frame`] writes a link's message
//! around the records it gets: the message's constant head, the array head for their
//! number, then their bytes. The result is byte for byte what serde writes for
//! `Message::Delta(Delta { nodes })` of the same records (definite lengths, shortest-form
//! heads); the tests below check it, and that the normal decoder reads it back.

use std::sync::Arc;

use serde::Serialize;

use super::{
    encode_in_scratch, head_len, put_head, scratch_bytes, EncodedMessage, WireError, MAJOR_ARRAY,
};
use crate::wire::frame::NodeDelta;

/// `{"delta": {"nodes": ` up to the records' array head: the message is a one-entry map
/// (externally tagged enum) holding `Delta`, a one-field struct written as a map.
const ENC_DELTA_TO_NODES: &[u8; 14] = b"\xa1\x65delta\xa1\x65nodes";

/// One [`NodeDelta`] encoded as CBOR (as serde writes it inside a `delta`), to be spliced
/// into the `delta` messages of every link it goes to. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord(Arc<[u8]>);

impl EncodedRecord {
    /// Encode `record` once.
    ///
    /// # Errors
    /// [`WireError::Encode`] if serde refuses the value (not expected of a `NodeDelta`).
    pub fn encode(record: &NodeDelta) -> Result<Self, WireError> {
        scratch_bytes(|buf| {
            record
                .serialize(&mut minicbor_serde::Serializer::new(buf))
                .map_err(|e| WireError::Encode(e.to_string()))
        })
        .map(EncodedRecord)
    }

    /// Bytes of the record's encoding: what it adds to a `delta` message (with at most 8
    /// more for the array head, see [`encode_delta_frame`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `delta` message carrying `records`, in this order: byte-identical to
/// `encode_message(&Message::Delta(Delta { nodes }))` of the records they were encoded from,
/// with no record encoded again. Its length is 14 bytes, the array head (1 to 9 bytes) and
/// the records' lengths.
pub fn encode_delta_frame(records: &[&EncodedRecord]) -> EncodedMessage {
    let n = records.len() as u64;
    let len =
        ENC_DELTA_TO_NODES.len() + head_len(n) + records.iter().map(|r| r.len()).sum::<usize>();
    let written: Result<EncodedMessage, std::convert::Infallible> = encode_in_scratch(|v| {
        v.reserve(len);
        v.extend_from_slice(ENC_DELTA_TO_NODES);
        put_head(v, MAJOR_ARRAY, n);
        for r in records {
            v.extend_from_slice(&r.0);
        }
        debug_assert_eq!(v.len(), len);
        Ok(())
    });
    match written {
        Ok(m) => m,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;

    use bytes::BytesMut;
    use tokio_util::codec::Decoder;
    use uuid::Uuid;

    use super::*;
    use crate::wire::codec::{encode_message, FrameCodec};
    use crate::wire::frame::{Delta, Entry, Frame, Message, NodeStats, StatValue, Value};

    /// A record of every shape in turn: plain entries, stats with custom fields, tombstones,
    /// a `gc_version`, a whole state (`from` 0), and sizes that cross the heads' widths.
    fn record(i: usize) -> NodeDelta {
        let mut entries = vec![Entry {
            key: "role".into(),
            version: 1,
            value: Some(Value::Text("worker".into())),
        }];
        match i % 4 {
            0 => {}
            1 => {
                let mut extra = BTreeMap::new();
                extra.insert("jobs".to_owned(), StatValue::Int(-(i as i64)));
                extra.insert("zone".to_owned(), StatValue::Text("eu-1".into()));
                extra.insert("ratio".to_owned(), StatValue::Float(0.25));
                entries.push(Entry {
                    key: "stats".into(),
                    version: 300 + i as u64,
                    value: Some(Value::Stats(Box::new(NodeStats {
                        pid: 4242,
                        version: "0.1.0".into(),
                        uptime_s: 70_000,
                        rss_bytes: 12 << 20,
                        cpus: 8,
                        load_avg: [0.5, 1.0, 1.5],
                        free_mem_bytes: 1 << 33,
                        total_mem_bytes: 1 << 34,
                        extra,
                    }))),
                });
            }
            2 => {
                // Tombstones: no value.
                for p in 0..(i % 30) {
                    entries.push(Entry {
                        key: format!("link:worker-{p}"),
                        version: 70_000 + p as u64,
                        value: None,
                    });
                }
            }
            _ => entries.push(Entry {
                key: format!("method:{}", "m".repeat(i % 300)),
                version: u64::MAX - i as u64,
                value: Some(Value::Set),
            }),
        }
        NodeDelta {
            node: format!("worker-{i}"),
            incarnation: Uuid::from_bytes([i as u8; 16]),
            boot_ms: 1_700_000_000_000 + i as u64,
            from: if i % 5 == 0 { 0 } else { i as u64 },
            max_version: 400 + i as u64,
            gc_version: if i % 3 == 0 { 0 } else { 17 * i as u64 },
            entries,
        }
    }

    fn records(n: usize) -> Vec<NodeDelta> {
        (0..n).map(record).collect()
    }

    fn spliced(nodes: &[NodeDelta]) -> EncodedMessage {
        let encoded: Vec<EncodedRecord> = nodes
            .iter()
            .map(|d| EncodedRecord::encode(d).unwrap())
            .collect();
        let refs: Vec<&EncodedRecord> = encoded.iter().collect();
        encode_delta_frame(&refs)
    }

    #[test]
    fn the_message_head_is_what_serde_writes_before_an_empty_array() {
        let empty = encode_message(&Message::Delta(Delta::default())).unwrap();
        assert_eq!(empty.0.last(), Some(&0x80), "an empty definite array");
        assert_eq!(&empty.0[..empty.len() - 1], &ENC_DELTA_TO_NODES[..]);
    }

    #[test]
    fn a_spliced_delta_is_byte_identical_to_serdes_for_any_number_of_records() {
        for n in [0, 1, 2, 23, 24, 255, 256, 300] {
            let nodes = records(n);
            let serde = encode_message(&Message::Delta(Delta {
                nodes: nodes.clone(),
            }))
            .unwrap();
            let fast = spliced(&nodes);
            assert_eq!(&fast.0[..], &serde.0[..], "{n} records");
        }
    }

    #[test]
    fn records_with_stats_tombstones_and_gc_versions_are_spliced_unchanged() {
        let nodes: Vec<NodeDelta> = (1..4).map(record).collect();
        assert!(nodes.iter().any(|d| d.gc_version != 0));
        assert!(nodes
            .iter()
            .any(|d| d.entries.iter().any(|e| e.value.is_none())));
        assert!(nodes.iter().any(|d| d
            .entries
            .iter()
            .any(|e| matches!(e.value, Some(Value::Stats(_))))));
        for d in &nodes {
            let one = EncodedRecord::encode(d).unwrap();
            let serde = minicbor_serde::to_vec(d).unwrap();
            assert_eq!(&one.0[..], &serde[..], "{}", d.node);
        }
        let serde = encode_message(&Message::Delta(Delta {
            nodes: nodes.clone(),
        }))
        .unwrap();
        assert_eq!(&spliced(&nodes).0[..], &serde.0[..]);
    }

    #[test]
    fn a_spliced_delta_decodes_to_the_records_it_was_made_of() {
        for n in [0, 1, 2, 24, 300] {
            let nodes = records(n);
            let mut codec = FrameCodec::new(1 << 24);
            let mut wire = BytesMut::new();
            codec.encode_frame(&spliced(&nodes), &mut wire).unwrap();
            let frame = codec.decode(&mut wire).unwrap().expect("one whole frame");
            assert_eq!(
                frame,
                Frame(0, Message::Delta(Delta { nodes })),
                "{n} records"
            );
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn a_delta_is_its_head_and_its_records_and_nothing_more() {
        let d = EncodedRecord::encode(&record(1)).unwrap();
        let e = EncodedRecord::encode(&record(2)).unwrap();
        let both = encode_delta_frame(&[&d, &e]);
        let one = encode_delta_frame(&[&d]);
        assert_eq!(both.len(), 15 + d.len() + e.len());
        assert_eq!(one.len(), 15 + d.len());
        let copy = d.clone();
        assert!(Arc::ptr_eq(&copy.0, &d.0), "a clone shares the bytes");
    }
}
