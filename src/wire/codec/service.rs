//! The service protocol's per-event messages without serde: `publish` (application → node)
//! encoded by the clients, and `deliver` (node → application) encoded by the node and decoded
//! by the Rust client. The bytes written are exactly those serde writes for the same
//! [`Publish`] and [`Deliver`] (shortest-form heads, fields in declaration order, a broadcast
//! `target` as null, `targeted` and `dropped` left out when false and 0), and the decoder
//! accepts only frames whose serde decoding is exactly what it returns: anything else goes
//! through the receiver rules and serde as before. The tests below check both, byte for byte.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::{
    encode_in_scratch, head_len, put_head, put_text, recent_text, ByteSink, EncodedMessage,
    FrameCodec, Reader, RecentText, WireError, CBOR_NULL, KEY_ID, KEY_PAYLOAD, KEY_PUBLISH,
    KEY_SEQ, KEY_TOPIC, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_UINT,
};
use crate::wire::frame::{Deliver, Frame, Message};

const KEY_DELIVER: &str = "deliver";
const KEY_FROM: &str = "from";
const KEY_TARGETED: &str = "targeted";
const KEY_DROPPED: &str = "dropped";
const CBOR_TRUE: u8 = 0xf5;

/// `{"publish": {"topic": …, "target": …` up to the topic's value.
const ENC_PUBLISH_TO_TOPIC: &[u8; 16] = b"\xa1\x67publish\xa3\x65topic";
/// `{"deliver": {` with the map head of 5 fields, then `"topic"`; the head is patched for 6
/// or 7.
const ENC_DELIVER_TO_TOPIC: &[u8; 16] = b"\xa1\x67deliver\xa5\x65topic";
const ENC_TARGET: &[u8; 7] = b"\x66target";
const ENC_PAYLOAD: &[u8; 8] = b"\x67payload";
const ENC_FROM: &[u8; 5] = b"\x64from";
const ENC_ID: &[u8; 3] = b"\x62id";
const ENC_SEQ: &[u8; 4] = b"\x63seq";
const ENC_TARGETED_TRUE: &[u8; 10] = b"\x68targeted\xf5";
const ENC_DROPPED: &[u8; 8] = b"\x67dropped";

/// The fields of a `deliver`, borrowed: the node writes one per event and application without
/// building (and allocating) a [`Deliver`] first.
#[derive(Debug, Clone, Copy)]
pub struct DeliverRef<'a> {
    pub topic: &'a str,
    pub from: &'a str,
    pub payload: &'a [u8],
    pub id: u64,
    pub seq: u64,
    pub targeted: bool,
    pub dropped: u64,
}

fn text_len(s: &str) -> usize {
    head_len(s.len() as u64) + s.len()
}

/// Bytes of `{"publish": {topic, target, payload}}`.
fn publish_len(topic: &str, target: Option<&str>, payload: &[u8]) -> usize {
    ENC_PUBLISH_TO_TOPIC.len()
        + text_len(topic)
        + ENC_TARGET.len()
        + target.map_or(1, text_len)
        + ENC_PAYLOAD.len()
        + head_len(payload.len() as u64)
        + payload.len()
}

fn write_publish(v: &mut impl ByteSink, topic: &str, target: Option<&str>, payload: &[u8]) {
    v.append(ENC_PUBLISH_TO_TOPIC);
    put_text(v, topic);
    v.append(ENC_TARGET);
    match target {
        None => v.append(&[CBOR_NULL]),
        Some(t) => put_text(v, t),
    }
    v.append(ENC_PAYLOAD);
    put_head(v, MAJOR_BYTES, payload.len() as u64);
    v.append(payload);
}

/// Bytes of `{"deliver": {…}}`.
fn deliver_len(d: &DeliverRef<'_>) -> usize {
    ENC_DELIVER_TO_TOPIC.len()
        + text_len(d.topic)
        + ENC_FROM.len()
        + text_len(d.from)
        + ENC_PAYLOAD.len()
        + head_len(d.payload.len() as u64)
        + d.payload.len()
        + ENC_ID.len()
        + head_len(d.id)
        + ENC_SEQ.len()
        + head_len(d.seq)
        + if d.targeted {
            ENC_TARGETED_TRUE.len()
        } else {
            0
        }
        + if d.dropped > 0 {
            ENC_DROPPED.len() + head_len(d.dropped)
        } else {
            0
        }
}

fn write_deliver(v: &mut impl ByteSink, d: &DeliverRef<'_>) {
    let fields = 5 + u8::from(d.targeted) + u8::from(d.dropped > 0);
    let mut start = *ENC_DELIVER_TO_TOPIC;
    start[9] = (MAJOR_MAP << 5) | fields;
    v.append(&start);
    put_text(v, d.topic);
    v.append(ENC_FROM);
    put_text(v, d.from);
    v.append(ENC_PAYLOAD);
    put_head(v, MAJOR_BYTES, d.payload.len() as u64);
    v.append(d.payload);
    v.append(ENC_ID);
    put_head(v, MAJOR_UINT, d.id);
    v.append(ENC_SEQ);
    put_head(v, MAJOR_UINT, d.seq);
    if d.targeted {
        v.append(ENC_TARGETED_TRUE);
    }
    if d.dropped > 0 {
        v.append(ENC_DROPPED);
        put_head(v, MAJOR_UINT, d.dropped);
    }
}

/// Encode into the per-thread scratch buffer, `len` bytes exactly.
fn encode_exact(len: usize, write: impl FnOnce(&mut Vec<u8>)) -> EncodedMessage {
    let written: Result<EncodedMessage, std::convert::Infallible> = encode_in_scratch(|v| {
        v.reserve(len);
        write(v);
        debug_assert_eq!(v.len(), len);
        Ok(())
    });
    match written {
        Ok(m) => m,
    }
}

impl EncodedMessage {
    /// `{"publish": {"topic", "target", "payload"}}`, byte-identical to serde's encoding of
    /// `Message::Publish`.
    pub fn publish(topic: &str, target: Option<&str>, payload: &[u8]) -> EncodedMessage {
        encode_exact(publish_len(topic, target, payload), |v| {
            write_publish(v, topic, target, payload)
        })
    }

    /// `{"deliver": {…}}`, byte-identical to serde's encoding of `Message::Deliver`.
    pub fn deliver(d: &DeliverRef<'_>) -> EncodedMessage {
        encode_exact(deliver_len(d), |v| write_deliver(v, d))
    }
}

impl FrameCodec {
    /// Append one numbered `publish` frame to `dst`, written in place: the same bytes as
    /// [`FrameCodec::encode_frame`] of [`EncodedMessage::publish`], without the message's
    /// own allocation (a client's batch of publishes is framed this way).
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] if the frame would exceed this link's maximum (nothing is
    /// written, and the frame takes no sequence number).
    pub fn encode_publish_frame(
        &mut self,
        topic: &str,
        target: Option<&str>,
        payload: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        let seq = self.take_out_seq();
        if let Err(e) = self.begin_frame(seq, publish_len(topic, target, payload), dst) {
            self.untake_out_seq();
            return Err(e);
        }
        write_publish(dst, topic, target, payload);
        Ok(())
    }
}

/// A `deliver` as this crate writes it, `[seq, {"deliver": {topic, from, payload, id, seq,
/// targeted?, dropped?}}]` in that order, decoded without serde; the payload is a slice of
/// `frame` (no copy). `None` for anything else (another order, omitted or unknown fields,
/// non-UTF-8 text, trailing bytes…): the receiver rules and serde then decide as always.
pub(super) fn decode_deliver_fast(
    body: &[u8],
    recent: &mut RecentText,
) -> Option<(Frame, Option<Range<usize>>)> {
    let mut r = Reader { b: body, at: 0 };
    if r.head(MAJOR_ARRAY)? != 2 {
        return None;
    }
    let seq = r.head(MAJOR_UINT)?;
    if r.head(MAJOR_MAP)? != 1 {
        return None;
    }
    r.key(KEY_DELIVER)?;
    let fields = r.head(MAJOR_MAP)?;
    if !(5..=7).contains(&fields) {
        return None;
    }
    r.key(KEY_TOPIC)?;
    let topic = recent_text(r.text_bytes()?, &mut recent.topic)?;
    r.key(KEY_FROM)?;
    let from = recent_text(r.text_bytes()?, &mut recent.origin)?;
    r.key(KEY_PAYLOAD)?;
    let len = usize::try_from(r.head(MAJOR_BYTES)?).ok()?;
    let start = r.at;
    r.take(len)?;
    r.key(KEY_ID)?;
    let id = r.head(MAJOR_UINT)?;
    r.key(KEY_SEQ)?;
    let event_seq = r.head(MAJOR_UINT)?;
    let mut rest = fields - 5;
    let mut targeted = false;
    if rest > 0 && r.b.get(r.at + 1..r.at + 9) == Some(KEY_TARGETED.as_bytes()) {
        r.key(KEY_TARGETED)?;
        // `false` is left out by the encoder; serde would take it too, but it is not this
        // shape.
        if r.peek()? != CBOR_TRUE {
            return None;
        }
        r.at += 1;
        targeted = true;
        rest -= 1;
    }
    let mut dropped = 0;
    if rest > 0 {
        r.key(KEY_DROPPED)?;
        dropped = r.head(MAJOR_UINT)?;
        rest -= 1;
    }
    if rest != 0 || r.at != body.len() {
        return None;
    }
    let frame = Frame(
        seq,
        Message::Deliver(Deliver {
            // The SDK hands owned strings to the application. `String::from`, not
            // `to_string`: an `Arc<str>` has no fast path there, and each went through the
            // formatter (two a delivery were a seventh of a subscribing application's work).
            topic: String::from(&*topic),
            from: String::from(&*from),
            payload: Bytes::new(),
            id,
            seq: event_seq,
            targeted,
            dropped,
        }),
    );
    Some((frame, Some(start..start + len)))
}

/// The bytes of `KEY_PUBLISH`, checked against the encoder's constant (both spell it).
const _: () = assert!(ENC_PUBLISH_TO_TOPIC[2] == KEY_PUBLISH.as_bytes()[0]);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::wire::frame::Publish;
    use crate::wire::{check_body, encode_message};

    fn delivers() -> Vec<Deliver> {
        let mut v = Vec::new();
        for (i, (len, targeted, dropped)) in [
            (64usize, false, 0u64),
            (0, true, 0),
            (23, false, 1),
            (24, true, 23),
            (255, false, 24),
            (256, true, u64::from(u32::MAX) + 1),
            (65_536, false, u64::MAX),
        ]
        .into_iter()
        .enumerate()
        {
            v.push(Deliver {
                topic: "bench.data".repeat(1 + i % 3),
                from: if i % 2 == 0 { "worker-1" } else { "n\u{e9}ud" }.to_owned(),
                payload: Bytes::from(vec![0xa5; len]),
                id: [0, 23, 24, 255, 65_536, u64::MAX, 7][i],
                seq: [1, 0, 300, u64::from(u32::MAX), 5, 6, u64::MAX][i],
                targeted,
                dropped,
            });
        }
        v
    }

    fn borrowed(d: &Deliver) -> DeliverRef<'_> {
        DeliverRef {
            topic: &d.topic,
            from: &d.from,
            payload: &d.payload,
            id: d.id,
            seq: d.seq,
            targeted: d.targeted,
            dropped: d.dropped,
        }
    }

    fn publishes() -> Vec<Publish> {
        [
            ("bench.data", None, 64usize),
            ("t", Some("worker-1"), 0),
            ("sensor.temp", Some(""), 24),
            ("x".repeat(255).leak() as &str, Some("n"), 256),
            ("x", None, 70_000),
        ]
        .into_iter()
        .map(|(topic, target, len)| Publish {
            topic: topic.into(),
            target: target.map(str::to_owned),
            payload: Bytes::from(vec![0x5a; len]),
        })
        .collect()
    }

    #[test]
    fn hand_encoded_delivers_are_byte_identical_to_serde() {
        for d in delivers() {
            let serde = encode_message(&Message::Deliver(d.clone())).unwrap();
            let fast = EncodedMessage::deliver(&borrowed(&d));
            assert_eq!(&fast.0[..], &serde.0[..], "{d:?}");
        }
    }

    #[test]
    fn hand_encoded_publishes_are_byte_identical_to_serde() {
        for p in publishes() {
            let serde = encode_message(&Message::Publish(p.clone())).unwrap();
            let fast = EncodedMessage::publish(&p.topic, p.target.as_deref(), &p.payload);
            assert_eq!(&fast.0[..], &serde.0[..], "{p:?}");
        }
    }

    #[test]
    fn publish_frames_written_in_place_equal_framed_messages() {
        let (mut framed, mut in_place) = (FrameCodec::new(1 << 20), FrameCodec::new(1 << 20));
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        // Enough frames for the seq to take 1, 2 and 3 bytes.
        for i in 0..300 {
            for p in publishes() {
                let msg = EncodedMessage::publish(&p.topic, p.target.as_deref(), &p.payload);
                framed.encode_frame(&msg, &mut a).unwrap();
                in_place
                    .encode_publish_frame(&p.topic, p.target.as_deref(), &p.payload, &mut b)
                    .unwrap();
            }
            assert_eq!(a, b, "round {i}");
        }
    }

    #[test]
    fn a_publish_frame_too_large_is_not_written_and_takes_no_seq() {
        let mut codec = FrameCodec::new(100);
        let mut dst = BytesMut::new();
        let err = codec
            .encode_publish_frame("t", None, &[0; 100], &mut dst)
            .unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
        assert!(dst.is_empty());
        codec
            .encode_publish_frame("t", None, &[0; 8], &mut dst)
            .unwrap();
        // seq 0: `00 00 00 len 82 00 …`
        assert_eq!(dst[5], 0);
    }

    /// The fast decoding of `body` with its payload sliced in, as the codec does.
    fn decode_with(body: &[u8], recent: &mut RecentText) -> Option<Frame> {
        let (mut frame, at) = decode_deliver_fast(body, recent)?;
        if let Some(at) = at {
            frame.set_payload(Bytes::copy_from_slice(body).slice(at));
        }
        Some(frame)
    }

    fn decode(body: &[u8]) -> Option<Frame> {
        decode_with(body, &mut RecentText::default())
    }

    #[test]
    fn fast_deliver_decoding_equals_serde_decoding() {
        let mut recent = RecentText::default();
        for (seq, d) in delivers()
            .into_iter()
            .chain(delivers().into_iter().rev())
            .enumerate()
        {
            let frame = Frame(seq as u64 * 100, Message::Deliver(d));
            let body = minicbor_serde::to_vec(&frame).unwrap();
            check_body(&body).unwrap();
            assert_eq!(decode_with(&body, &mut recent).unwrap(), frame);
            assert_eq!(super::super::decode_one::<Frame>(&body).unwrap(), frame);
        }
    }

    /// `[7, {"deliver": {fields…}}]` from its fields' encoded pairs.
    fn deliver_body(map_head: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![0x82, 0x07, 0xa1, 0x67];
        b.extend_from_slice(b"deliver");
        b.push(map_head);
        for f in fields {
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn fast_deliver_decoding_declines_what_serde_must_judge() {
        let topic: &[u8] = b"\x65topic\x61t";
        let from: &[u8] = b"\x64from\x61n";
        let payload: &[u8] = b"\x67payload\x42\x01\x02";
        let id: &[u8] = b"\x62id\x01";
        let seq: &[u8] = b"\x63seq\x02";
        let good = deliver_body(0xa5, &[topic, from, payload, id, seq]);
        assert_eq!(
            decode(&good).unwrap(),
            super::super::decode_one::<Frame>(&good).unwrap()
        );
        // A version 1 node's deliver (no id, no seq), another order, `targeted: false`, an
        // unknown field, a text payload, trailing bytes, bad UTF-8, indefinite-length maps.
        let mut indefinite_inner = deliver_body(0xbf, &[topic, from, payload, id, seq]);
        indefinite_inner.push(0xff);
        let mut indefinite_outer = good.clone();
        indefinite_outer[2] = 0xbf;
        indefinite_outer.push(0xff);
        for body in [
            deliver_body(0xa3, &[topic, from, payload]),
            deliver_body(0xa5, &[from, topic, payload, id, seq]),
            deliver_body(0xa6, &[topic, from, payload, id, seq, b"\x68targeted\xf4"]),
            deliver_body(0xa6, &[topic, from, payload, id, seq, b"\x61z\x00"]),
            deliver_body(0xa5, &[topic, from, b"\x67payload\x62ab", id, seq]),
            [good.clone(), vec![0x00]].concat(),
            deliver_body(0xa5, &[b"\x65topic\x61\xff", from, payload, id, seq]),
            indefinite_inner.clone(),
            indefinite_outer.clone(),
        ] {
            assert!(decode(&body).is_none(), "{body:x?}");
        }
        // Serde (after the receiver rules) takes the reordered and v1 forms the same way…
        let v1 = deliver_body(0xa3, &[topic, from, payload]);
        let Frame(_, Message::Deliver(d)) = super::super::decode_one::<Frame>(&v1).unwrap() else {
            panic!("not a deliver");
        };
        assert_eq!((d.id, d.seq, &d.payload[..]), (0, 0, &[1u8, 2][..]));
        // …and the rules refuse indefinite lengths before serde sees them, as they always did.
        assert!(check_body(&indefinite_inner).is_err());
        assert!(check_body(&indefinite_outer).is_err());
    }

    #[test]
    fn the_codec_decodes_delivers_as_slices_of_its_read_buffer() {
        use tokio_util::codec::Decoder;
        let mut node = FrameCodec::new(1 << 20);
        let mut wire = BytesMut::new();
        for d in delivers() {
            node.encode_frame(&EncodedMessage::deliver(&borrowed(&d)), &mut wire)
                .unwrap();
        }
        let mut app = FrameCodec::new(1 << 20);
        let read = wire.as_ptr_range();
        for (seq, d) in delivers().into_iter().enumerate() {
            let frame = app.decode(&mut wire).unwrap().unwrap();
            let Frame(_, Message::Deliver(got)) = &frame else {
                panic!("not a deliver: {frame:?}");
            };
            // Taken by the fast path: the payload was not copied out of the read buffer.
            assert!(read.contains(&got.payload.as_ptr()) || got.payload.is_empty());
            assert_eq!(frame, Frame(seq as u64, Message::Deliver(d)));
        }
        assert!(app.decode(&mut wire).unwrap().is_none());
    }

    #[test]
    fn every_per_event_message_takes_the_fast_path_whatever_its_seq() {
        let d = delivers().remove(0);
        let p = publishes().remove(0);
        let env = crate::wire::Envelope {
            id: 1,
            seq: 2,
            topic: "t".into(),
            origin: "n".into(),
            origin_incarnation: uuid::Uuid::nil(),
            target: None,
            ttl: 3,
            payload: Bytes::from_static(b"\x01"),
        };
        for seq in [0u64, 23, 24, 255, 256, 65_536, 1 << 33] {
            for msg in [
                Message::Deliver(d.clone()),
                Message::Publish(p.clone()),
                Message::Event(env.clone()),
            ] {
                let frame = Frame(seq, msg);
                let body = minicbor_serde::to_vec(&frame).unwrap();
                let (mut fast, at) = super::super::decode_fast(&body, &mut RecentText::default())
                    .unwrap_or_else(|| panic!("declined {frame:?}"));
                if let Some(at) = at {
                    fast.set_payload(Bytes::copy_from_slice(&body[at]));
                }
                assert_eq!(fast, frame);
            }
        }
    }
}
