//! The wire: the only module that sees bytes.
//!
//! A link is a TCP (or Unix) stream of frames. A frame is a 4-byte big-endian length followed by
//! exactly one CBOR data item, the array `[seq, message]`: `seq` counts the frames one side has
//! sent on this link (from 0), `message` is a [`Message`]. The length is checked against the
//! link's maximum before a byte of the body is buffered.
//!
//! * [`frame`] — the message schema, shared by peer links and service links.
//! * [`codec`] — length prefix + CBOR, in both directions, with hostile-input checks; per
//!   connection or (resumable links) stream numbering; unknown message kinds skipped; `delta`
//!   messages spliced from records encoded once ([`EncodedRecord`]).
//! * [`rules`] — the receiver rules every frame body is checked against first (§4.1).
//! * [`handshake`] — version/cluster check and mutual HMAC-SHA256 authentication.
//! * [`json`] — JSON ↔ CBOR payloads for the command line.
//!
//! docs/PROTOCOL.md is the normative description; keep the two in step.

mod codec;
mod depth;
mod frame;
mod handshake;
pub mod json;
mod lenient;
mod rules;

pub use codec::{
    decode_payload, encode_delta_frame, encode_event, encode_message, encode_payload,
    envelope_overhead_bytes, DeliverRef, EncodedMessage, EncodedRecord, FrameCodec, ReadCounters,
    WireError, ENVELOPE_FIXED_BYTES,
};
pub use frame::{
    Ack, Auth, Bye, Call, ClusterQuery, ClusterSettings, ClusterView, Deliver, Delta, Digest,
    DigestEntry, Entry, Envelope, ErrorFrame, Failure, Frame, Heartbeat, Hello, HelloAck,
    HttpBackend, MemberView, Message, Method, NodeDelta, NodeStats, Options, Outcome, PeerCall,
    PeerReply, Ping, Publish, Refused, Reply, Request, Session, StatValue, Status, Topic, Value,
    Welcome, KNOWN_KINDS,
};
pub use handshake::{accept, accept_with, dial, dial_with, HandshakeError, Identity, PeerInfo};
pub use rules::{check_body, MAX_NESTING};

/// The highest protocol version this build speaks, offered in every `hello`.
pub const PROTOCOL_VERSION: u32 = 3;

/// The lowest version this build still speaks: version 1 applications (and nodes) attach.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Frames before authentication are tiny; anything larger is hostile.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 1024;

/// Node and application names on the wire: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
