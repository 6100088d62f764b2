//! The wire: the only module that sees bytes.
//!
//! A link is a TCP (or Unix) stream of frames. A frame is a 4-byte big-endian length followed by
//! exactly one CBOR data item, the array `[seq, message]`: `seq` counts the frames one side has
//! sent on this link (from 0), `message` is a [`Message`]. The length is checked against the
//! link's maximum before a byte of the body is buffered.
//!
//! * [`frame`] — the message schema, shared by peer links and service links.
//! * [`codec`] — length prefix + CBOR, in both directions, with hostile-input checks.
//! * [`handshake`] — version/cluster check and mutual HMAC-SHA256 authentication.
//! * [`json`] — JSON ↔ CBOR payloads for the command line.
//!
//! docs/PROTOCOL.md is the normative description; keep the two in step.

mod codec;
mod frame;
mod handshake;
pub mod json;
mod lenient;

pub use codec::{
    decode_payload, encode_event, encode_message, encode_payload, EncodedMessage, FrameCodec,
    WireError,
};
pub use frame::{
    Auth, Bye, Call, ClusterQuery, ClusterView, Deliver, Envelope, ErrorFrame, Failure, Frame,
    Heartbeat, Hello, HelloAck, MemberView, Message, Method, NodeStats, Options, Outcome, PeerCall,
    PeerReply, Ping, Publish, Refused, Reply, Request, StatValue, Status, Topic, Welcome,
};
pub use handshake::{accept, dial, HandshakeError, Identity, PeerInfo};

/// Version of the peer protocol this build speaks; a peer with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

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
