//! Codec tests: round trips, the exact bytes of known frames (these pin the wire format, and
//! the worked examples of docs/PROTOCOL.md are checked against them), and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::*;
use crate::wire::frame::{
    Ack, Auth, Bye, Call, ClusterQuery, ClusterView, Deliver, Delta, Digest, DigestEntry, Entry,
    ErrorFrame, Failure, Heartbeat, Hello, HelloAck, HttpBackend, MemberView, Method, NodeDelta,
    NodeStats, Options, Outcome, PeerCall, PeerReply, Ping, Publish, Refused, Reply, Request,
    Session, StatValue, Status, Topic, Value, Welcome,
};
use crate::wire::MAX_HANDSHAKE_FRAME_BYTES;

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Helpers

fn uuid(byte: u8) -> Uuid {
    Uuid::from_bytes([byte; 16])
}

fn envelope(target: Option<&str>, payload: &[u8]) -> Envelope {
    Envelope {
        id: 300,
        seq: 301,
        topic: "sensor.temperature".into(),
        origin: "worker-1".into(),
        origin_incarnation: uuid(0xab),
        target: target.map(str::to_owned),
        ttl: 4,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn status() -> Status {
    let mut extra = BTreeMap::new();
    extra.insert("ok".to_owned(), StatValue::Bool(true));
    extra.insert("queue".to_owned(), StatValue::Int(-3));
    extra.insert("ratio".to_owned(), StatValue::Float(0.25));
    extra.insert("zone".to_owned(), StatValue::Text("eu-1".into()));
    Status {
        node: "worker-1".into(),
        incarnation: uuid(7),
        boot_ms: 1_700_000_000_000,
        version: 42,
        role: "worker".into(),
        links: vec!["master".into()],
        stats: NodeStats {
            pid: 4242,
            version: "0.1.0".into(),
            uptime_s: 3600,
            rss_bytes: 12 << 20,
            cpus: 8,
            load_avg: [0.5, 1.0, 1.5],
            free_mem_bytes: 1 << 30,
            total_mem_bytes: 4 << 30,
            extra,
        },
        methods: vec!["math.add".into(), "py.add".into()],
        http: vec!["127.0.0.1:9001".into()],
    }
}

/// One message of every kind (events twice: broadcast and targeted).
fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            version: 1,
            cluster: "test".into(),
            node: "worker-1".into(),
            incarnation: uuid(1),
            nonce: [0x11; 32],
            session: None,
        }),
        Message::HelloAck(HelloAck {
            version: 1,
            cluster: "test".into(),
            node: "master".into(),
            incarnation: uuid(2),
            nonce: [0x22; 32],
            proof: [0x33; 32],
            session: Some(Session {
                id: u64::MAX,
                received: 300,
            }),
        }),
        Message::Auth(Auth { proof: [0x44; 32] }),
        Message::Welcome(Welcome::default()),
        Message::Ack(Ack { seq: 70_000 }),
        Message::Error(ErrorFrame {
            code: "auth_failed".into(),
            message: "authentication failed".into(),
        }),
        Message::Ping(Ping { n: 1 }),
        Message::Pong(Ping { n: u64::MAX }),
        Message::Status(Box::new(status())),
        Message::Heartbeat(Heartbeat {
            master: "master".into(),
            incarnation: uuid(3),
            n: 99,
        }),
        Message::Digest(Digest {
            nodes: vec![DigestEntry {
                node: "worker-1".into(),
                incarnation: uuid(2),
                max_version: 12,
            }],
            linked: vec!["worker-2".into()],
        }),
        Message::Delta(Delta {
            nodes: vec![NodeDelta {
                node: "worker-1".into(),
                incarnation: uuid(2),
                boot_ms: 1_700_000_000_000,
                from: 10,
                max_version: 12,
                gc_version: 0,
                entries: vec![
                    Entry {
                        key: "link:master".into(),
                        version: 11,
                        value: None,
                    },
                    Entry {
                        key: "method:py.add".into(),
                        version: 12,
                        value: Some(Value::Set),
                    },
                ],
            }],
        }),
        Message::Event(envelope(None, b"\xa1\x67celsius\xfa\x41\xac\x00\x00")),
        Message::Event(envelope(Some("worker-2"), b"")),
        Message::Bye(Bye {
            reason: "node shutting down".into(),
        }),
        Message::PeerCall(PeerCall {
            id: 7,
            method: "math.add".into(),
            origin: "worker-1".into(),
            origin_incarnation: uuid(4),
            target: "worker-2".into(),
            ttl: 4,
            timeout_ms: 5000,
            payload: Bytes::from_static(b"\xa2\x61a\x01\x61b\x02"),
        }),
        Message::PeerReply(PeerReply {
            id: 7,
            target: "worker-1".into(),
            target_incarnation: uuid(4),
            ttl: 4,
            outcome: Outcome::Ok(Bytes::from_static(b"\x03")),
        }),
        Message::PeerReply(PeerReply {
            id: 8,
            target: "worker-1".into(),
            target_incarnation: uuid(4),
            ttl: 1,
            outcome: Outcome::Error(Failure::new("timeout", "no answer within 250 ms")),
        }),
        Message::Subscribe(Topic {
            topic: "sensor.temperature".into(),
        }),
        Message::Unsubscribe(Topic {
            topic: "sensor.temperature".into(),
        }),
        Message::Publish(Publish {
            topic: "sensor.temperature".into(),
            target: None,
            payload: Bytes::from_static(b"\xa1\x67celsius\xfb\x40\x35\x80\x00\x00\x00\x00\x00"),
        }),
        Message::Publish(Publish {
            topic: "hvac.command".into(),
            target: Some("worker-2".into()),
            payload: Bytes::new(),
        }),
        Message::Deliver(Deliver {
            topic: "sensor.temperature".into(),
            from: "master".into(),
            payload: Bytes::from_static(b"\xf6"),
            id: 41,
            seq: 7,
            targeted: false,
            dropped: 0,
        }),
        Message::Implement(Method {
            method: "py.add".into(),
        }),
        Message::HttpBackend(HttpBackend {
            address: "127.0.0.1:9001".into(),
        }),
        Message::Unimplement(Method {
            method: "py.add".into(),
        }),
        Message::Call(Call {
            id: u64::MAX,
            method: "py.add".into(),
            target: None,
            timeout_ms: Some(250),
            payload: Bytes::from_static(b"\x80"),
        }),
        Message::Reply(Reply {
            id: 1,
            outcome: Outcome::Error(Failure::new("no_implementer", "py.add")),
        }),
        Message::Request(Request {
            id: 0,
            method: "py.add".into(),
            from: "worker-1".into(),
            payload: Bytes::from_static(b"\xa0"),
        }),
        Message::Respond(Reply {
            id: 0,
            outcome: Outcome::Ok(Bytes::from_static(b"\xa1\x63sum\x03")),
        }),
        Message::Refused(Refused {
            op: "subscribe".into(),
            code: "bad_topic".into(),
            message: "topic is empty".into(),
        }),
        Message::Cluster(ClusterQuery { id: 3 }),
        Message::Options(Options {
            overflow: Some("drop_oldest".into()),
        }),
        Message::ClusterView(ClusterView {
            id: 3,
            cluster: "demo".into(),
            topology: "star".into(),
            node: "master".into(),
            members: vec![
                MemberView {
                    name: "master".into(),
                    role: "master".into(),
                    state: "up".into(),
                    incarnation: Some(uuid(1)),
                    stats: Some(NodeStats::default()),
                    links: vec!["worker-1".into()],
                    methods: vec!["py.add".into()],
                    http: vec![],
                },
                MemberView {
                    name: "worker-1".into(),
                    role: "worker".into(),
                    state: "down".into(),
                    incarnation: None,
                    stats: None,
                    links: vec![],
                    methods: vec![],
                    http: vec![],
                },
            ],
        }),
    ]
}

/// Fails to compile when a variant is added: give it a sample above, and a section in
/// docs/PROTOCOL.md.
fn variant_has_a_sample(m: &Message) -> bool {
    match m {
        Message::Hello(_)
        | Message::HelloAck(_)
        | Message::Auth(_)
        | Message::Welcome(_)
        | Message::Error(_)
        | Message::Ping(_)
        | Message::Pong(_)
        | Message::Status(_)
        | Message::Heartbeat(_)
        | Message::Digest(_)
        | Message::Delta(_)
        | Message::Event(_)
        | Message::Bye(_)
        | Message::PeerCall(_)
        | Message::PeerReply(_)
        | Message::Subscribe(_)
        | Message::Unsubscribe(_)
        | Message::Publish(_)
        | Message::Deliver(_)
        | Message::Implement(_)
        | Message::Unimplement(_)
        | Message::Call(_)
        | Message::Reply(_)
        | Message::Request(_)
        | Message::Respond(_)
        | Message::Refused(_)
        | Message::Cluster(_)
        | Message::ClusterView(_)
        | Message::Ack(_)
        | Message::Options(_)
        | Message::HttpBackend(_) => true,
        // Never encoded: the codec makes it from a kind it does not know.
        Message::Unknown(_) => false,
    }
}

fn frame_bytes(codec: &mut FrameCodec, msg: &Message) -> BytesMut {
    let mut buf = BytesMut::new();
    codec.encode(msg, &mut buf).unwrap();
    buf
}

/// A frame around an arbitrary body (bypassing the encoder's checks).
fn raw_frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    buf
}

fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    while let Some(f) = codec.decode(buf)? {
        frames.push(f);
    }
    Ok(frames)
}

/// Hex with `#` comments, as in docs/PROTOCOL.md's examples.
fn parse_hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Round trips and exact bytes

#[test]
fn every_message_variant_survives_a_round_trip() {
    let samples = samples();
    assert!(samples.iter().all(variant_has_a_sample));
    let kinds: std::collections::BTreeSet<&str> = samples.iter().map(Message::kind).collect();
    assert_eq!(kinds.len(), 31, "one sample per variant: {kinds:?}");
    assert_eq!(kinds.len(), crate::wire::KNOWN_KINDS.len());
    assert!(kinds.iter().all(|k| crate::wire::KNOWN_KINDS.contains(k)));

    let mut out = FrameCodec::new(MIB);
    let mut buf = BytesMut::new();
    for msg in &samples {
        out.encode(msg, &mut buf).unwrap();
    }
    let frames = decode_all(&mut FrameCodec::new(MIB), &mut buf).unwrap();
    assert!(buf.is_empty());
    let expected: Vec<Frame> = samples
        .into_iter()
        .enumerate()
        .map(|(i, m)| Frame(i as u64, m))
        .collect();
    assert_eq!(frames, expected);
}

#[test]
fn framed_bytes_equal_the_serde_encoding_of_the_frame_array() {
    // encode_frame writes `[seq, message]` by hand around a pre-encoded message: it must be
    // byte-identical to serializing the Frame itself, for small and multi-byte seqs.
    let mut codec = FrameCodec::new(MIB);
    for seq in 0..300u64 {
        let msg = Message::Ping(Ping { n: seq });
        let framed = frame_bytes(&mut codec, &msg);
        let body = minicbor_serde::to_vec(Frame(seq, msg)).unwrap();
        assert_eq!(&framed[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&framed[4..], &body[..], "seq {seq}");
    }
}

#[test]
fn sequence_numbers_use_the_shortest_cbor_integer() {
    for n in [
        0,
        23,
        24,
        255,
        256,
        65_535,
        65_536,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        u64::MAX,
    ] {
        let shortest = minicbor_serde::to_vec(n).unwrap();
        // The same head of each major type, as put_head writes it after other bytes.
        for major in [MAJOR_UINT, MAJOR_BYTES, MAJOR_TEXT, MAJOR_MAP] {
            let mut v = vec![0xee];
            put_head(&mut v, major, n);
            let mut expected = vec![0xee];
            expected.extend_from_slice(&shortest);
            expected[1] |= major << 5;
            assert_eq!(v, expected, "major {major}, {n}");
        }
    }
}

#[test]
fn ping_frame_has_the_exact_bytes_of_the_spec() {
    // 00 00 00 0c    length 12
    // 82             array(2)
    // 00             seq 0
    // a1             map(1)
    // 64 70696e67    "ping"
    // a1             map(1)
    // 61 6e          "n"
    // 01             1
    let expected = [
        0x00, 0x00, 0x00, 0x0c, 0x82, 0x00, 0xa1, 0x64, b'p', b'i', b'n', b'g', 0xa1, 0x61, b'n',
        0x01,
    ];
    let bytes = frame_bytes(
        &mut FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES),
        &Message::Ping(Ping { n: 1 }),
    );
    assert_eq!(bytes.len(), 16);
    assert_eq!(&bytes[..], &expected);
}

#[test]
fn welcome_is_an_empty_map_and_a_broadcast_target_is_null() {
    let welcome = encode_message(&Message::Welcome(Welcome::default())).unwrap();
    // {"welcome": {}}
    assert_eq!(&welcome.0[..], b"\xa1\x67welcome\xa0");

    let env = envelope(None, b"");
    let bytes = encode_event(&env).unwrap();
    let needle = b"\x66target\xf6"; // "target": null
    assert!(bytes.0.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn encode_event_matches_encoding_the_event_message() {
    // The last is written in place (a large event), the others copied out of scratch.
    for env in [
        envelope(None, b"\x01\x02"),
        envelope(Some("master"), b""),
        envelope(Some("master"), &[0xa5; 1024]),
    ] {
        let by_ref = encode_event(&env).unwrap();
        let owned = encode_message(&Message::Event(env)).unwrap();
        assert_eq!(by_ref.bytes(), owned.bytes());
    }
}

#[test]
fn uuids_nonces_and_payloads_are_cbor_byte_strings() {
    let hello = encode_message(&samples()[0]).unwrap();
    // incarnation: 0x50 = byte string of 16; nonce: 0x58 0x20 = byte string of 32.
    let inc = [&b"\x6bincarnation\x50"[..], &[1u8; 16]].concat();
    let nonce = [&b"\x65nonce\x58\x20"[..], &[0x11u8; 32]].concat();
    assert!(hello.0.windows(inc.len()).any(|w| w == inc));
    assert!(hello.0.windows(nonce.len()).any(|w| w == nonce));

    let event = encode_event(&envelope(None, b"\xf6")).unwrap();
    assert!(event.0.ends_with(b"\x67payload\x41\xf6"));
}

#[test]
fn optional_fields_may_be_omitted() {
    // An envelope without "target" (broadcast) or "seq" (0: unnumbered), and stats without
    // "extra", decode.
    let mut body = vec![0x82, 0x00, 0xa1, 0x65];
    body.extend_from_slice(b"event");
    body.push(0xa6); // map(6): no "target"
    body.extend_from_slice(b"\x62id\x01");
    body.extend_from_slice(b"\x65topic\x61t");
    body.extend_from_slice(b"\x66origin\x61o");
    body.extend_from_slice(b"\x72origin_incarnation\x50");
    body.extend_from_slice(&[9; 16]);
    body.extend_from_slice(b"\x63ttl\x02");
    body.extend_from_slice(b"\x67payload\x40");
    let mut buf = raw_frame(&body);
    let frame = FrameCodec::new(MIB).decode(&mut buf).unwrap().unwrap();
    let Message::Event(got) = frame.1 else {
        panic!("not an event: {frame:?}")
    };
    assert_eq!(got.target, None);
    assert_eq!(got.seq, 0);
    assert_eq!(got.origin_incarnation, uuid(9));
    assert_eq!(got.ttl, 2);
}

#[test]
fn unknown_fields_are_ignored() {
    // {"ping": {"n": 5, "future": [1, {"x": h''}]}}
    let mut body = vec![0x82, 0x00, 0xa1, 0x64];
    body.extend_from_slice(b"ping");
    body.extend_from_slice(b"\xa2\x61n\x05\x66future\x82\x01\xa1\x61x\x40");
    let mut buf = raw_frame(&body);
    let frame = FrameCodec::new(MIB).decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame, Frame(0, Message::Ping(Ping { n: 5 })));
}

#[test]
fn payload_helpers_round_trip_and_refuse_trailing_bytes() {
    let value = (String::from("celsius"), 21.5f64);
    let bytes = encode_payload(&value).unwrap();
    assert_eq!(decode_payload::<(String, f64)>(&bytes).unwrap(), value);
    let mut longer = bytes.to_vec();
    longer.push(0x00);
    assert!(matches!(
        decode_payload::<(String, f64)>(&longer),
        Err(WireError::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Reassembly

#[test]
fn frame_fed_one_byte_at_a_time_is_decoded_once_complete() {
    let msg = Message::Ping(Ping { n: 1 });
    let bytes = frame_bytes(&mut FrameCodec::new(MIB), &msg);
    let mut codec = FrameCodec::new(MIB);
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = codec.decode(&mut buf).unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(got, None, "after {} bytes", i + 1);
        } else {
            assert_eq!(got, Some(Frame(0, msg.clone())));
        }
    }
}

#[test]
fn frame_whose_body_arrives_in_a_later_read_is_decoded() {
    // A large event split the way TCP delivers it: the prefix and a first part of the body,
    // then the rest.
    let env = envelope(None, &[0x5a; 20_000]);
    let bytes = frame_bytes(&mut FrameCodec::new(MIB), &Message::Event(env.clone()));
    let mut codec = FrameCodec::new(MIB);
    let mut buf = BytesMut::from(&bytes[..8192]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&bytes[8192..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame(0, Message::Event(env)))
    );
}

#[test]
fn two_frames_in_one_read_are_both_decoded_in_order() {
    let mut out = FrameCodec::new(MIB);
    let mut buf = frame_bytes(&mut out, &Message::Ping(Ping { n: 1 }));
    buf.extend_from_slice(&frame_bytes(&mut out, &Message::Pong(Ping { n: 1 })));
    let frames = decode_all(&mut FrameCodec::new(MIB), &mut buf).unwrap();
    assert_eq!(
        frames,
        vec![
            Frame(0, Message::Ping(Ping { n: 1 })),
            Frame(1, Message::Pong(Ping { n: 1 }))
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Hostile input

#[test]
fn frame_truncated_at_eof_is_an_error() {
    let bytes = frame_bytes(&mut FrameCodec::new(MIB), &Message::Ping(Ping { n: 1 }));
    for cut in [2, 4, 5, 10, bytes.len() - 1] {
        let mut codec = FrameCodec::new(MIB);
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
        match codec.decode_eof(&mut buf) {
            Err(WireError::Truncated { have }) => assert_eq!(have, cut, "cut at {cut}"),
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn clean_eof_between_frames_is_not_an_error() {
    let mut codec = FrameCodec::new(MIB);
    let mut buf = frame_bytes(&mut FrameCodec::new(MIB), &Message::Ping(Ping { n: 1 }));
    assert!(codec.decode_eof(&mut buf).unwrap().is_some());
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
}

#[test]
fn length_over_the_maximum_is_rejected_from_the_prefix_alone() {
    for announced in [MAX_HANDSHAKE_FRAME_BYTES as u32 + 1, 0xFFFF_FFF0, u32::MAX] {
        let mut codec = FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES);
        let mut buf = BytesMut::with_capacity(4);
        buf.extend_from_slice(&announced.to_be_bytes());
        match codec.decode(&mut buf) {
            Err(WireError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u64::from(announced));
                assert_eq!(max, MAX_HANDSHAKE_FRAME_BYTES);
            }
            other => panic!("{announced:#x}: expected FrameTooLarge, got {other:?}"),
        }
        // Nothing was reserved for the announced body.
        assert!(buf.capacity() < 64, "capacity grew to {}", buf.capacity());
        assert_eq!(
            WireError::FrameTooLarge { len: 0, max: 0 }.code(),
            "frame_too_large"
        );
    }
}

#[test]
fn length_of_exactly_the_maximum_is_accepted() {
    let mut codec = FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(MAX_HANDSHAKE_FRAME_BYTES as u32).to_be_bytes());
    assert_eq!(codec.decode(&mut buf).unwrap(), None, "waits for the body");
}

#[test]
fn raising_the_maximum_after_authentication_admits_larger_frames() {
    let env = envelope(None, &[1; 4096]);
    let mut buf = frame_bytes(&mut FrameCodec::new(MIB), &Message::Event(env.clone()));
    let mut codec = FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES);
    assert!(matches!(
        codec.clone().decode(&mut buf.clone()),
        Err(WireError::FrameTooLarge { .. })
    ));
    codec.set_max_frame_bytes(MIB);
    assert_eq!(codec.max_frame_bytes(), MIB);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame(0, Message::Event(env)))
    );
}

#[test]
fn junk_body_with_a_valid_length_is_malformed() {
    for junk in [
        &b"\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        b"GET / HTTP/1.1\r\n",
        b"\x1c",
    ] {
        let mut buf = raw_frame(junk);
        let err = FrameCodec::new(MIB).decode(&mut buf).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{junk:?}: {err:?}");
        assert_eq!(err.code(), "malformed_frame");
    }
}

#[test]
fn well_formed_cbor_of_the_wrong_shape_is_malformed() {
    let shapes: [&[u8]; 6] = [
        b"\x00",                                                   // a bare integer
        b"\x83\x00\xa1\x64ping\xa1\x61n\x01\x00",                  // three elements
        b"\x82\x00\xa2\x64ping\xa1\x61n\x01\x64pong\xa1\x61n\x01", // two kinds in one map
        b"\x82\x00\xa2\x65nope!\xa0\x65nope?\xa0",                 // two unknown kinds
        b"\x82\x00\xa1\x64ping\xa1\x61n\x20",                      // n = -1
        b"\x82\x00\xa1\x64ping\xa0",                               // missing field n
    ];
    for body in shapes {
        let mut buf = raw_frame(body);
        let err = FrameCodec::new(MIB).decode(&mut buf).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{body:x?}: {err:?}");
    }
}

#[test]
fn trailing_bytes_after_the_cbor_item_are_malformed() {
    let mut body =
        frame_bytes(&mut FrameCodec::new(MIB), &Message::Ping(Ping { n: 1 }))[4..].to_vec();
    body.push(0x00);
    let mut buf = raw_frame(&body);
    match FrameCodec::new(MIB).decode(&mut buf) {
        Err(WireError::Malformed(why)) => assert!(why.contains("1 bytes after"), "{why}"),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn wrong_sequence_number_is_out_of_sequence() {
    let mut out = FrameCodec::new(MIB);
    let first = frame_bytes(&mut out, &Message::Ping(Ping { n: 1 }));
    let second = frame_bytes(&mut out, &Message::Ping(Ping { n: 2 }));

    // Starting at 1 instead of 0.
    let mut buf = second.clone();
    match FrameCodec::new(MIB).decode(&mut buf) {
        Err(
            e @ WireError::OutOfSequence {
                expected: 0,
                got: 1,
            },
        ) => {
            assert_eq!(e.code(), "out_of_sequence")
        }
        other => panic!("expected OutOfSequence, got {other:?}"),
    }

    // A replayed frame.
    let mut codec = FrameCodec::new(MIB);
    let mut buf = first.clone();
    buf.extend_from_slice(&first);
    assert!(codec.decode(&mut buf).unwrap().is_some());
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::OutOfSequence {
            expected: 1,
            got: 0
        })
    ));
}

#[test]
fn zero_length_frame_is_malformed() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    let err = FrameCodec::new(MIB).decode(&mut buf).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
}

/// A status frame whose `extra` field "k" holds `value` (spliced in after encoding).
fn status_with_extra(value: &[u8]) -> BytesMut {
    let mut s = status();
    s.methods.clear();
    s.http.clear();
    s.stats.extra.clear();
    s.stats
        .extra
        .insert("k".into(), StatValue::Text("Z".into()));
    let mut msg = encode_message(&Message::Status(Box::new(s)))
        .unwrap()
        .bytes()
        .to_vec();
    // `extra` is the last field of `stats`, itself the last field of `status`.
    assert!(msg.ends_with(b"\x61k\x61Z"));
    msg.truncate(msg.len() - 2);
    msg.extend_from_slice(value);
    let mut buf = BytesMut::new();
    FrameCodec::new(4 * MIB)
        .encode_frame(&EncodedMessage::from_cbor(&msg), &mut buf)
        .unwrap();
    buf
}

/// Decode on a thread with a small stack: recursion proportional to the nesting would
/// overflow it.
fn decode_on_small_stack(buf: BytesMut) -> Result<Option<Frame>, WireError> {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut buf = buf;
            FrameCodec::new(4 * MIB).decode(&mut buf)
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deeply_nested_arrays_in_a_status_extra_field_are_refused_without_recursion() {
    const DEPTH: usize = 500_000;
    let mut nested = vec![0x81u8; DEPTH]; // [[[[...0...]]]]
    nested.push(0x00);
    let err = decode_on_small_stack(status_with_extra(&nested)).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err:?}");

    let mut maps = Vec::with_capacity(DEPTH * 3);
    for _ in 0..DEPTH {
        maps.extend_from_slice(b"\xa1\x61a"); // {"a": {"a": ...}}
    }
    maps.push(0x00);
    let err = decode_on_small_stack(status_with_extra(&maps)).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
}

#[test]
fn deeply_nested_unknown_field_is_refused_without_recursion() {
    const DEPTH: usize = 500_000;
    // {"ping": {"n": 1, "x": [[[...]]]}} with definite, then indefinite, arrays.
    for (open, close) in [(0x81u8, None), (0x9fu8, Some(0xffu8))] {
        let mut body = b"\x82\x00\xa1\x64ping\xa2\x61n\x01\x61x".to_vec();
        body.resize(body.len() + DEPTH, open);
        body.push(0x00);
        if let Some(c) = close {
            body.resize(body.len() + DEPTH, c);
        }
        let err = decode_on_small_stack(raw_frame(&body)).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Receiver rules (docs/PROTOCOL.md §4): one rule for every field, known or not.

/// `{"ping": {"n": 1, "x": <value>}}` as frame 0.
fn ping_with_unknown_field(value: &[u8]) -> BytesMut {
    let mut body = b"\x82\x00\xa1\x64ping\xa2\x61n\x01\x61x".to_vec();
    body.extend_from_slice(value);
    raw_frame(&body)
}

#[test]
fn receiver_rules_apply_to_known_and_unknown_fields_alike() {
    let ping = Some(Frame(0, Message::Ping(Ping { n: 1 })));
    // Accepted anywhere: definite items, non-shortest heads, floats of 32 and 64 bits.
    for value in [
        &b"\x82\x01\xa1\x61k\xf6"[..],
        b"\x19\x00\x01",
        b"\xfa\x41\xac\x00\x00",
        b"\xfb\x40\x35\x80\x00\x00\x00\x00\x00",
    ] {
        let got = FrameCodec::new(MIB).decode(&mut ping_with_unknown_field(value));
        assert_eq!(got.unwrap(), ping, "{value:x?}");
    }
    // Refused anywhere: indefinite lengths of every kind, tags, duplicate keys, non-text keys,
    // half floats, undefined.
    for value in [
        &b"\x9f\x01\xff"[..],
        b"\xbf\x61k\x01\xff",
        b"\x7f\x61a\xff",
        b"\x5f\x41a\xff",
        b"\xc1\x00",
        b"\xa2\x61k\x01\x61k\x02",
        b"\xa1\x01\x02",
        b"\xf9\x3c\x00",
        b"\xf7",
    ] {
        let err = FrameCodec::new(MIB)
            .decode(&mut ping_with_unknown_field(value))
            .unwrap_err();
        assert_eq!(err.code(), "malformed_frame", "{value:x?}: {err}");
    }
    // The same rules in a known field: an indefinite-length map and text, a repeated key.
    for body in [
        &b"\x82\x00\xa1\x64ping\xbf\x61n\x01\xff"[..],
        b"\x82\x00\xa1\x63bye\xa1\x66reason\x7f\x61a\xff",
        b"\x82\x00\xa1\x64ping\xa2\x61n\x01\x61n\x01",
    ] {
        let err = FrameCodec::new(MIB)
            .decode(&mut raw_frame(body))
            .unwrap_err();
        assert_eq!(err.code(), "malformed_frame", "{body:x?}: {err}");
    }
}

#[test]
fn unknown_message_kinds_are_skipped_and_still_counted() {
    // [0, {"nope": {"x": 1}}], then a ping with seq 1: the ping is what comes out, in the
    // same read or in a later one.
    let unknown = raw_frame(b"\x82\x00\xa1\x64nope\xa1\x61x\x01");
    let ping = frame_bytes(
        &mut {
            let mut c = FrameCodec::new(MIB);
            c.encode_frame(
                &encode_message(&Message::Ping(Ping { n: 1 })).unwrap(),
                &mut BytesMut::new(),
            )
            .unwrap();
            c
        },
        &Message::Ping(Ping { n: 9 }),
    );
    let mut both = unknown.clone();
    both.extend_from_slice(&ping);
    let mut codec = FrameCodec::new(MIB);
    assert_eq!(
        codec.decode(&mut both).unwrap(),
        Some(Frame(1, Message::Ping(Ping { n: 9 })))
    );
    let mut codec = FrameCodec::new(MIB);
    let mut first = unknown.clone();
    assert_eq!(codec.decode(&mut first).unwrap(), None);
    assert!(first.is_empty(), "the unknown frame was consumed");
    let mut second = ping.clone();
    assert_eq!(
        codec.decode(&mut second).unwrap(),
        Some(Frame(1, Message::Ping(Ping { n: 9 })))
    );
    // A kind we know, of the wrong shape, is still malformed.
    let err = FrameCodec::new(MIB)
        .decode(&mut raw_frame(b"\x82\x00\xa1\x64ping\xa1\x61n\x61x"))
        .unwrap_err();
    assert_eq!(err.code(), "malformed_frame");
}

#[test]
fn a_resumable_link_numbers_stream_frames_and_zeroes_the_rest() {
    let mut out = FrameCodec::new(MIB);
    out.set_resumable();
    let mut inp = FrameCodec::new(MIB);
    inp.set_resumable();
    let event = Message::Event(envelope(None, b"\x01"));
    let mut buf = BytesMut::new();
    out.encode(&Message::Ping(Ping { n: 3 }), &mut buf).unwrap();
    out.encode_frame_at(&encode_message(&event).unwrap(), 7, &mut buf)
        .unwrap();
    out.encode_frame_at(&encode_message(&event).unwrap(), 7, &mut buf)
        .unwrap();
    // An unknown kind: skipped with seq 0, handed up with a stream seq (to be counted).
    buf.extend_from_slice(&raw_frame(b"\x82\x00\xa1\x64nope\xa0"));
    buf.extend_from_slice(&raw_frame(b"\x82\x08\xa1\x64nope\xa0"));
    let frames = decode_all(&mut inp, &mut buf).unwrap();
    assert_eq!(
        frames,
        vec![
            Frame(0, Message::Ping(Ping { n: 3 })),
            Frame(7, event.clone()),
            Frame(7, event.clone()),
            Frame(8, Message::Unknown("nope".into())),
        ],
        "repeats are the stream's to judge, not the codec's"
    );
    // A stream frame with seq 0, or another frame with a seq, breaks the numbering.
    for (body, kind) in [
        (frame_bytes(&mut FrameCodec::new(MIB), &event), "event"),
        (
            {
                let mut c = FrameCodec::new(MIB);
                frame_bytes(&mut c, &Message::Ping(Ping { n: 0 }));
                frame_bytes(&mut c, &Message::Ping(Ping { n: 1 }))
            },
            "ping",
        ),
    ] {
        let mut codec = FrameCodec::new(MIB);
        codec.set_resumable();
        match codec.decode(&mut body.clone()) {
            Err(e @ WireError::StreamNumbering { .. }) => {
                assert_eq!(e.code(), "out_of_sequence");
                assert!(e.to_string().contains(kind), "{e}");
            }
            other => panic!("{kind}: expected StreamNumbering, got {other:?}"),
        }
    }
    // An `error` is taken whatever its seq: the dialler's handshake `error` (seq 2) may
    // arrive after the acceptor switched to stream numbering (PROTOCOL.md §3).
    let error = Message::Error(crate::wire::ErrorFrame {
        code: "timeout".into(),
        message: "late".into(),
    });
    let mut per_connection = FrameCodec::new(MIB);
    frame_bytes(&mut per_connection, &Message::Ping(Ping { n: 0 }));
    frame_bytes(&mut per_connection, &Message::Ping(Ping { n: 1 }));
    let mut body = frame_bytes(&mut per_connection, &error);
    let mut codec = FrameCodec::new(MIB);
    codec.set_resumable();
    assert_eq!(codec.decode(&mut body).unwrap(), Some(Frame(2, error)));
}

#[test]
fn the_envelope_overhead_bounds_every_event_that_is_not_too_large() {
    // The longest heads: id over 32 bits, ttl over 23, a topic, an origin and a target of 24
    // bytes or more, a payload of 65 536 bytes or more. The node refuses an event whose
    // encoding + 16 exceeds max_frame_bytes.
    let (topic, origin, target) = ("t".repeat(255), "o".repeat(64), "g".repeat(64));
    let payload = vec![0u8; 70_000];
    let msg = EncodedMessage::event(
        u64::MAX,
        u64::MAX,
        &topic,
        &origin,
        uuid(1),
        Some(&target),
        255,
        &payload,
    );
    let variable = payload.len() + topic.len() + target.len();
    assert_eq!(msg.len() + 16, variable + envelope_overhead_bytes(&origin));
    // Shorter heads only make it smaller.
    let small = EncodedMessage::event(0, 0, "t", "o", uuid(1), None, 2, b"");
    assert!(small.len() + 16 <= 1 + envelope_overhead_bytes("o"));
}

#[test]
fn encode_frame_refuses_a_frame_over_the_maximum_and_sends_nothing() {
    let mut codec = FrameCodec::new(64);
    let big = encode_message(&Message::Bye(Bye {
        reason: "x".repeat(100),
    }))
    .unwrap();
    let mut buf = BytesMut::new();
    match codec.encode_frame(&big, &mut buf) {
        Err(WireError::FrameTooLarge { len, max: 64 }) => assert_eq!(len, 2 + big.len() as u64),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(buf.is_empty());
    // The refused frame did not consume a sequence number.
    assert_eq!(codec.next_out_seq(), 0);
    let small = frame_bytes(&mut codec, &Message::Ping(Ping { n: 1 }));
    assert_eq!(small[5], 0x00, "seq 0");
}

#[test]
fn frame_of_exactly_the_maximum_is_encoded_and_decoded() {
    // body = 0x82 + seq (1 byte) + message: grow the reason until the body is 64 bytes.
    let msg = (0..64)
        .map(|n| {
            Message::Bye(Bye {
                reason: "x".repeat(n),
            })
        })
        .find(|m| 2 + encode_message(m).unwrap().len() == 64)
        .unwrap();
    let mut buf = frame_bytes(&mut FrameCodec::new(64), &msg);
    assert_eq!(buf.len(), 4 + 64);
    assert_eq!(
        FrameCodec::new(64).decode(&mut buf).unwrap(),
        Some(Frame(0, msg))
    );
}

// ---------------------------------------------------------------------------------------
// docs/PROTOCOL.md: its worked examples are the encoder's output, byte for byte.

const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

/// The fenced block that follows `<!-- check: name -->` in docs/PROTOCOL.md.
fn doc_block(name: &str) -> &'static str {
    let marker = format!("<!-- check: {name} -->");
    let at = PROTOCOL_MD
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {marker}"));
    let rest = &PROTOCOL_MD[at + marker.len()..];
    let open = rest.find("```").unwrap();
    let start = open + rest[open..].find('\n').unwrap() + 1;
    let end = start + rest[start..].find("```").unwrap();
    &rest[start..end]
}

/// A generic CBOR item, to print diagnostic notation.
enum Cbor {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
}

impl<'de> Deserialize<'de> for Cbor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cbor;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any CBOR item")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Cbor, E> {
                Ok(Cbor::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Cbor, E> {
                Ok(Cbor::Uint(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Cbor, E> {
                Ok(Cbor::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Cbor, E> {
                Ok(Cbor::Float(v))
            }
            fn visit_none<E>(self) -> Result<Cbor, E> {
                Ok(Cbor::Null)
            }
            fn visit_unit<E>(self) -> Result<Cbor, E> {
                Ok(Cbor::Null)
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Cbor, E> {
                Ok(Cbor::Bytes(v.to_vec()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Cbor, E> {
                Ok(Cbor::Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Cbor, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Cbor::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Cbor, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    entries.push(entry);
                }
                Ok(Cbor::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// RFC 8949 §8 diagnostic notation, on one line.
fn diag(item: &Cbor) -> String {
    match item {
        Cbor::Uint(n) => n.to_string(),
        Cbor::Int(n) => n.to_string(),
        Cbor::Float(f) => format!("{f:?}"),
        Cbor::Bool(b) => b.to_string(),
        Cbor::Null => "null".into(),
        Cbor::Bytes(b) => format!("h'{}'", hex(b)),
        Cbor::Text(s) => format!("{s:?}"),
        Cbor::Array(items) => format!(
            "[{}]",
            items.iter().map(diag).collect::<Vec<_>>().join(", ")
        ),
        Cbor::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", diag(k), diag(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Diagnostic notation without `/ comments /` and without whitespace outside strings.
fn normalize_diag(text: &str) -> String {
    let (mut out, mut in_string, mut in_comment) = (String::new(), false, false);
    for c in text.chars() {
        match (in_string, in_comment, c) {
            (false, false, '/') => in_comment = true,
            (false, true, '/') => in_comment = false,
            (_, true, _) => {}
            (false, false, c) if c.is_whitespace() => {}
            (_, _, '"') => {
                in_string = !in_string;
                out.push(c);
            }
            (_, _, c) => out.push(c),
        }
    }
    out
}

/// The values of the worked examples.
fn example_incarnation() -> Uuid {
    Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap()
}

fn example_hello() -> Message {
    let mut nonce = [0u8; 32];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = i as u8;
    }
    Message::Hello(Hello {
        version: 2,
        cluster: "demo".into(),
        node: "worker-1".into(),
        incarnation: example_incarnation(),
        nonce,
        session: None,
    })
}

#[derive(serde::Serialize)]
struct Temperature {
    celsius: f32,
}

fn example_event() -> Message {
    Message::Event(Envelope {
        id: 7,
        seq: 1,
        topic: "sensor.temperature".into(),
        origin: "worker-1".into(),
        origin_incarnation: example_incarnation(),
        target: None,
        ttl: 3,
        payload: encode_payload(&Temperature { celsius: 21.5 }).unwrap(),
    })
}

/// Check one example: the doc's hex is what the encoder writes for `msg` as frame `seq`,
/// it decodes back to `msg`, and the doc's diagnostic notation (if any) describes it.
fn check_example(name: &str, seq: u64, msg: &Message, with_diag: bool) {
    // Frames before the example, so that both sides are at its seq.
    let mut sender = FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES);
    let mut receiver = FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES);
    for _ in 0..seq {
        let mut earlier = frame_bytes(&mut sender, &Message::Ping(Ping { n: 0 }));
        receiver.decode(&mut earlier).unwrap().unwrap();
    }
    let ours = frame_bytes(&mut sender, msg);
    let theirs = parse_hex(doc_block(&format!("{name}-hex")));
    assert_eq!(
        hex(&theirs),
        hex(&ours),
        "docs/PROTOCOL.md {name}-hex differs from the encoder"
    );
    let mut buf = BytesMut::from(&theirs[..]);
    assert_eq!(
        receiver.decode(&mut buf).unwrap(),
        Some(Frame(seq, msg.clone()))
    );

    if with_diag {
        let item: Cbor = decode_payload(&theirs[4..]).unwrap();
        assert_eq!(
            normalize_diag(doc_block(&format!("{name}-diag"))),
            normalize_diag(&diag(&item)),
            "docs/PROTOCOL.md {name}-diag does not describe the frame"
        );
    }
}

#[test]
fn protocol_md_ping_example_is_the_encoder_output() {
    check_example("ping-frame", 0, &Message::Ping(Ping { n: 1 }), false);
}

#[test]
fn protocol_md_hello_example_is_the_encoder_output() {
    check_example("hello-frame", 0, &example_hello(), true);
}

#[test]
fn protocol_md_event_example_is_the_encoder_output() {
    check_example("event-frame", 5, &example_event(), true);
}

/// The §7.6 example: the session both sides hold.
const EXAMPLE_SESSION: u64 = 0x0123_4567_89ab_cdef;

fn bytes32(first: u8) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = first + i as u8;
    }
    b
}

#[test]
fn protocol_md_resume_handshake_examples_are_the_encoder_output() {
    let Message::Hello(mut hello) = example_hello() else {
        unreachable!()
    };
    hello.session = Some(Session {
        id: EXAMPLE_SESSION,
        received: 41,
    });
    check_example("hello-resume-frame", 0, &Message::Hello(hello), false);

    let mut proof = [0u8; 32];
    let hex = "3b09c1261bfbe0476b0ec7d86cf02d578cfdd945d59eb8d8f95c9c67b67bd7c7";
    for (i, b) in proof.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let ack = HelloAck {
        version: 2,
        cluster: "demo".into(),
        node: "master".into(),
        incarnation: Uuid::parse_str("ffeeddcc-bbaa-9988-7766-554433221100").unwrap(),
        nonce: bytes32(0x20),
        proof,
        session: Some(Session {
            id: EXAMPLE_SESSION,
            received: 17,
        }),
    };
    check_example("hello-ack-resume-frame", 0, &Message::HelloAck(ack), false);
}

#[test]
fn protocol_md_welcome_and_ack_examples_are_the_encoder_output() {
    let peer = Welcome {
        max_frame_bytes: Some(MIB as u64),
        envelope_overhead_bytes: Some(envelope_overhead_bytes("master") as u64),
        ..Welcome::default()
    };
    check_example("welcome-peer-frame", 1, &Message::Welcome(peer), false);
    let service = Welcome {
        max_frame_bytes: Some(MIB as u64),
        envelope_overhead_bytes: Some(envelope_overhead_bytes("worker-1") as u64),
        max_subscriptions: Some(1024),
        max_methods: Some(256),
        max_calls: Some(4096),
        max_requests: Some(4096),
        cluster: None,
    };
    check_example(
        "welcome-service-frame",
        1,
        &Message::Welcome(service),
        false,
    );
    check_example("ack-frame", 0, &Message::Ack(Ack { seq: 45 }), false);
}

#[test]
fn diagnostic_notation_check_notices_a_difference() {
    // The checker itself: a changed value or key is caught, comments and layout are not.
    let item: Cbor = decode_payload(b"\x82\x05\xa1\x61k\xf6").unwrap();
    assert_eq!(
        normalize_diag(&diag(&item)),
        normalize_diag("[5, / seq / {\"k\": null}]")
    );
    assert_ne!(
        normalize_diag(&diag(&item)),
        normalize_diag("[6, {\"k\": null}]")
    );
    assert_ne!(
        normalize_diag(&diag(&item)),
        normalize_diag("[5, {\"j\": null}]")
    );
}

#[test]
fn mutated_frames_are_decoded_or_refused_never_anything_else() {
    // Every sample, with one to three bytes changed at random: the codec answers with a frame
    // or with a framing error, and never panics.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut accepted, mut refused) = (0, 0);
    for msg in samples() {
        let good = frame_bytes(&mut FrameCodec::new(MIB), &msg);
        for _ in 0..400 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 3 {
                let at = 4 + (next() as usize) % (bad.len() - 4);
                bad[at] = next() as u8;
            }
            match FrameCodec::new(MIB).decode(&mut bad) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert!(
                        matches!(e.code(), "malformed_frame" | "out_of_sequence"),
                        "{e}"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert!(
        accepted > 100 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn payloads_encode_to_the_bytes_serde_writes_into_a_vector_whatever_the_sizes_of_their_pieces() {
    #[derive(serde::Serialize)]
    struct Mixed {
        small: u8,
        mid: u16,
        wide: u32,
        widest: u64,
        negative: i64,
        float: f64,
        half: f32,
        text: String,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        nested: BTreeMap<String, Vec<Option<bool>>>,
    }
    for n in [0usize, 1, 2, 3, 4, 5, 8, 9, 23, 24, 255, 256, 70_000] {
        let value = Mixed {
            small: n as u8,
            mid: n as u16,
            wide: (n as u32).wrapping_mul(65_537),
            widest: (n as u64) << 40,
            negative: -(n as i64),
            float: n as f64 / 3.0,
            half: n as f32,
            text: "é".repeat(n % 40),
            blob: vec![7; n],
            nested: [("k".repeat(n % 30), vec![Some(true), None])].into(),
        };
        let ours = encode_payload(&value).unwrap();
        let serde = minicbor_serde::to_vec(&value).unwrap();
        assert_eq!(&ours[..], &serde[..], "size {n}");
    }
}
