//! Arbitrary bytes from an attached application, after its handshake: the service link's
//! frame codec (length prefix, receiver rules, message schema), then what a service session
//! does with each decoded message that needs no running node: the content checks (topics,
//! patterns, method names, options, kinds an application may send), the `pong` echoed to a
//! `ping`, and the payloads of `publish`, `call` and `respond` decoded as a recursive type and
//! as JSON for the command line. Never a panic, and every message gets exactly one verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecloud::fuzzing::check_request;
use nodecloud::wire::{decode_payload, encode_message, json, Frame, FrameCodec, Message, Outcome};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

/// The default `max_frame_bytes` of a cluster.
const MAX_FRAME_BYTES: usize = 1 << 20;

fn payload(bytes: &[u8]) {
    let _ = decode_payload::<serde_json::Value>(bytes);
    if let Ok(v) = json::cbor_to_json(bytes) {
        let text = v.to_string();
        assert!(text.len() <= 16 * bytes.len() + 64);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(MAX_FRAME_BYTES);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(Frame(_, msg))) = codec.decode(&mut buf) {
        let verdict = check_request(&msg);
        match (&msg, verdict) {
            (Message::Subscribe(t), Ok(())) => {
                assert!(nodecloud::topic::check_pattern(&t.topic).is_ok());
            }
            (Message::Publish(p), Ok(())) => {
                assert!(nodecloud::topic::check_topic(&p.topic).is_ok());
                payload(&p.payload);
            }
            (Message::Implement(m), Ok(())) => {
                assert!(!m.method.is_empty() && m.method.len() <= 255);
            }
            (Message::Call(c), Ok(())) => payload(&c.payload),
            (Message::Respond(r), Ok(())) => {
                if let Outcome::Ok(b) = &r.outcome {
                    payload(b);
                }
            }
            (Message::Ping(p), Ok(())) => {
                // The session echoes it: a ping that decoded always encodes as a pong.
                let pong = encode_message(&Message::Pong(p.clone()));
                assert!(pong.is_ok(), "pong for a decoded ping: {pong:?}");
            }
            (_, Ok(())) => {}
            (_, Err(("refused", code))) => {
                assert!(
                    matches!(code, "bad_topic" | "bad_method" | "bad_option"),
                    "{code}"
                );
            }
            (other, Err(("error", code))) => {
                assert_eq!(code, "unexpected_message");
                assert!(!matches!(
                    other,
                    Message::Subscribe(_)
                        | Message::Publish(_)
                        | Message::Call(_)
                        | Message::Ping(_)
                ));
            }
            (_, Err(e)) => panic!("unknown verdict {e:?}"),
        }
    }
});
