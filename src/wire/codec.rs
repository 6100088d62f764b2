//! Length prefix + CBOR: frames in, frames out, and the checks that keep hostile bytes out.
//!
//! Decoding checks, in this order: the announced length against the link's maximum (before any
//! body byte is buffered), the receiver rules of docs/PROTOCOL.md §4 ([`check_body`]: exactly
//! one well-formed item, definite lengths, no tags, text keys each once, bounded nesting), the
//! message's shape, and the sender's sequence number. A message of a kind this build does not
//! know is skipped (forward compatibility). Encoding writes `[seq, message]` around a message
//! encoded once, so a broadcast is serialized once however many links it leaves on.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use uuid::Uuid;

use super::frame::{Envelope, Frame, Message, Publish, KNOWN_KINDS};
use super::rules::check_body;

/// Bytes of the big-endian length prefix.
const LENGTH_PREFIX_BYTES: usize = 4;

/// What can be wrong with bytes on a link. All of these close the link.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: u64, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream ended in the middle of a frame ({have} bytes buffered)")]
    Truncated { have: usize },
    #[error("frame out of sequence: expected {expected}, got {got}")]
    OutOfSequence { expected: u64, got: u64 },
    #[error("{kind} with seq {seq} on a resumable link (stream frames carry 1, 2, …; others 0)")]
    StreamNumbering { kind: &'static str, seq: u64 },
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The code sent to the peer in an `error` frame before closing.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::FrameTooLarge { .. } => "frame_too_large",
            WireError::Malformed(_) | WireError::Truncated { .. } => "malformed_frame",
            WireError::OutOfSequence { .. } | WireError::StreamNumbering { .. } => {
                "out_of_sequence"
            }
            WireError::Encode(_) | WireError::Io(_) => "internal",
        }
    }
}

/// A message already encoded as CBOR, ready to be framed on any number of links.
///
/// The bytes are reference-counted: a frame is shared by a resumable link's replay buffer and
/// its write queue, and a broadcast by every link it leaves on, so cloning must not allocate
/// (a `Bytes` built from a `Vec` allocates its shared header at its first clone).
#[derive(Debug, Clone)]
pub struct EncodedMessage(Body);

#[derive(Debug, Clone)]
enum Body {
    /// Written into a scratch buffer, then copied into one allocation of its exact size
    /// that also holds the count: a small message costs one allocation.
    Copied(Arc<[u8]>),
    /// Written where it stays, in a vector of its exact size, with the count in an
    /// allocation of its own: a large event is not copied once more (a copy of each
    /// kilobyte event was a tenth of a publisher's work).
    Written(Arc<Vec<u8>>),
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Copied(b) => b,
            Body::Written(v) => v,
        }
    }
}

/// Events of at least this many bytes are written in place ([`Body::Written`]); below it a
/// copy costs less than a second allocation.
const WRITE_IN_PLACE_BYTES: usize = 512;

impl EncodedMessage {
    /// Any bytes as an encoded message: for tests that send what this crate would not.
    #[cfg(test)]
    pub(crate) fn from_cbor(bytes: &[u8]) -> Self {
        EncodedMessage(Body::Copied(Arc::from(bytes)))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Whether this message fits in a frame of at most `max_frame_bytes` whatever its
    /// sequence number (the frame adds an array head and up to 9 bytes of seq).
    pub fn fits(&self, max_frame_bytes: usize) -> bool {
        1 + 9 + self.len() <= max_frame_bytes
    }

    /// Whether this is a stream frame of a resumable link (`event`, `peer_call`,
    /// `peer_reply`): read off the one-entry map's key, without decoding the message.
    pub fn is_stream(&self) -> bool {
        let b = self.bytes();
        matches!(b.first(), Some(0xa1))
            && [
                &b"\x65event"[..],
                &b"\x69peer_call"[..],
                &b"\x6apeer_reply"[..],
            ]
            .iter()
            .any(|key| b[1..].starts_with(key))
    }
}

/// Encode a message once, to be framed with [`FrameCodec::encode_frame`] per link.
///
/// # Errors
/// [`WireError::Encode`] if serde refuses the value (for example a map with non-string keys).
pub fn encode_message(msg: &Message) -> Result<EncodedMessage, WireError> {
    encode_in_scratch(|buf| {
        msg.serialize(&mut minicbor_serde::Serializer::new(buf))
            .map_err(|e| WireError::Encode(e.to_string()))
    })
}

thread_local! {
    /// Reused buffer a message is written into before it is copied, at its exact size, into
    /// its shared allocation: no growing `Vec` per message once the buffer has grown.
    static MESSAGE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `write` on an empty per-thread buffer and return what it wrote as an encoded message.
/// A nested call (a `Serialize` impl that encodes a message) gets a buffer of its own.
fn encode_in_scratch<E>(
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<EncodedMessage, E> {
    scratch_bytes(write).map(|b| EncodedMessage(Body::Copied(b)))
}

/// [`encode_in_scratch`]'s bytes, copied out of the scratch buffer at their exact size.
fn scratch_bytes<E>(write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<Arc<[u8]>, E> {
    MESSAGE_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let result = write(&mut buf).map(|()| Arc::from(&buf[..]));
            if buf.capacity() > SCRATCH_KEEP_BYTES {
                *buf = Vec::new();
            }
            result
        }
        Err(_) => {
            let mut buf = Vec::new();
            write(&mut buf).map(|()| Arc::from(buf))
        }
    })
}

/// Encode `{"event": envelope}` from a borrowed envelope (relays and publishers keep theirs).
///
/// # Errors
/// None in practice (kept for callers written against the serde encoder): the envelope is
/// written by [`encode_event_ref`].
pub fn encode_event(env: &Envelope) -> Result<EncodedMessage, WireError> {
    Ok(encode_event_ref(&EventRef {
        id: env.id,
        seq: env.seq,
        topic: &env.topic,
        origin: &env.origin,
        origin_incarnation: env.origin_incarnation,
        target: env.target.as_deref(),
        ttl: env.ttl,
        payload: &env.payload,
    }))
}

/// The most an event envelope adds to its variable parts, with the 16 bytes a publishing node
/// keeps for the frame's head and seq: every CBOR head at its longest (the id and the seq 9 bytes each, the
/// payload's length 5), and the keys.
pub const ENVELOPE_FIXED_BYTES: usize = 130;

/// What `welcome` states as `envelope_overhead_bytes` for events published by `origin`: an
/// event with `payload + topic + target + this <= max_frame_bytes` is never `too_large`.
pub fn envelope_overhead_bytes(origin: &str) -> usize {
    ENVELOPE_FIXED_BYTES + origin.len()
}

/// The fields of an [`Envelope`], borrowed.
#[derive(Debug, Clone, Copy)]
struct EventRef<'a> {
    id: u64,
    seq: u64,
    topic: &'a str,
    origin: &'a str,
    origin_incarnation: Uuid,
    target: Option<&'a str>,
    ttl: u8,
    payload: &'a [u8],
}

impl EncodedMessage {
    /// `{"event": envelope}` from the envelope's fields, borrowed: a publisher encodes its
    /// event without building (and allocating) an [`Envelope`] first. Byte-identical to
    /// [`encode_event`] of the same envelope.
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        id: u64,
        seq: u64,
        topic: &str,
        origin: &str,
        origin_incarnation: Uuid,
        target: Option<&str>,
        ttl: u8,
        payload: &[u8],
    ) -> EncodedMessage {
        encode_event_ref(&EventRef {
            id,
            seq,
            topic,
            origin,
            origin_incarnation,
            target,
            ttl,
            payload,
        })
    }

    /// Encode `value` as an event payload (what [`encode_payload`] returns) into a reused
    /// per-thread buffer and hand the bytes to `f`: no allocation once the buffer has grown.
    ///
    /// # Errors
    /// [`WireError::Encode`] if serde refuses the value; `f` is not called then.
    pub fn with_payload<T: Serialize + ?Sized, R>(
        value: &T,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, WireError> {
        with_encoded_payload(value, f)
    }
}

/// The envelope's map keys, in the order serde writes them (declaration order of `Envelope`).
const KEY_ID: &str = "id";
const KEY_SEQ: &str = "seq";
const KEY_TOPIC: &str = "topic";
const KEY_ORIGIN: &str = "origin";
const KEY_INCARNATION: &str = "origin_incarnation";
const KEY_TARGET: &str = "target";
const KEY_TTL: &str = "ttl";
const KEY_PAYLOAD: &str = "payload";
const KEY_EVENT: &str = "event";
const KEY_PUBLISH: &str = "publish";
const UUID_BYTES: usize = 16;

/// The encoded constant runs of an event message: `{"event": {"id": ...` up to the id's value
/// (`0xa8`: the envelope's eight fields), then each key (and for the incarnation, the head of
/// its 16-byte string). Written by [`write_event`] and compared by [`decode_event_fast`].
const ENC_EVENT_TO_ID: &[u8; 11] = b"\xa1\x65event\xa8\x62id";
const ENC_SEQ: &[u8; 4] = b"\x63seq";
const ENC_TOPIC: &[u8; 6] = b"\x65topic";
const ENC_ORIGIN: &[u8; 7] = b"\x66origin";
const ENC_INCARNATION: &[u8; 20] = b"\x72origin_incarnation\x50";
const ENC_TARGET: &[u8; 7] = b"\x66target";
const ENC_TTL: &[u8; 4] = b"\x63ttl";
const ENC_PAYLOAD: &[u8; 8] = b"\x67payload";

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const CBOR_NULL: u8 = 0xf6;

/// Encode `{"event": envelope}` by hand, its size computed first (the scratch buffer grows
/// at most once; the message gets one allocation of exactly that size). The bytes are identical to serde's encoding of
/// `Message::Event(envelope)` (shortest-form heads, fields in declaration order, uuid and
/// payload as byte strings, a broadcast target as null); the codec tests check this.
fn encode_event_ref(e: &EventRef<'_>) -> EncodedMessage {
    let text = |s: &str| head_len(s.len() as u64) + s.len();
    let target = match e.target {
        None => 1,
        Some(t) => text(t),
    };
    let len = 1
        + text(KEY_EVENT)
        + 1
        + text(KEY_ID)
        + head_len(e.id)
        + text(KEY_SEQ)
        + head_len(e.seq)
        + text(KEY_TOPIC)
        + text(e.topic)
        + text(KEY_ORIGIN)
        + text(e.origin)
        + text(KEY_INCARNATION)
        + 1
        + UUID_BYTES
        + text(KEY_TARGET)
        + target
        + text(KEY_TTL)
        + head_len(u64::from(e.ttl))
        + text(KEY_PAYLOAD)
        + head_len(e.payload.len() as u64)
        + e.payload.len();
    if len >= WRITE_IN_PLACE_BYTES {
        let mut v = Vec::with_capacity(len);
        write_event(&mut v, e, len);
        return EncodedMessage(Body::Written(Arc::new(v)));
    }
    let written: Result<EncodedMessage, std::convert::Infallible> = encode_in_scratch(|v| {
        write_event(v, e, len);
        Ok(())
    });
    match written {
        Ok(m) => m,
    }
}

/// [`encode_event_ref`]'s bytes, `len` of them, appended to `v`.
fn write_event(v: &mut Vec<u8>, e: &EventRef<'_>, len: usize) {
    // The constant runs (keys, and the heads next to them) are copied as fixed-size arrays.
    v.reserve(len);
    let start = v.len();
    v.extend_from_slice(ENC_EVENT_TO_ID);
    put_head(v, MAJOR_UINT, e.id);
    v.extend_from_slice(ENC_SEQ);
    put_head(v, MAJOR_UINT, e.seq);
    v.extend_from_slice(ENC_TOPIC);
    put_text(v, e.topic);
    v.extend_from_slice(ENC_ORIGIN);
    put_text(v, e.origin);
    v.extend_from_slice(ENC_INCARNATION);
    v.extend_from_slice(e.origin_incarnation.as_bytes());
    v.extend_from_slice(ENC_TARGET);
    match e.target {
        None => v.push(CBOR_NULL),
        Some(t) => put_text(v, t),
    }
    v.extend_from_slice(ENC_TTL);
    put_head(v, MAJOR_UINT, u64::from(e.ttl));
    v.extend_from_slice(ENC_PAYLOAD);
    put_head(v, MAJOR_BYTES, e.payload.len() as u64);
    v.extend_from_slice(e.payload);
    debug_assert_eq!(v.len() - start, len);
}

/// Bytes of a CBOR head carrying `n` in its shortest form.
fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Where encoded pieces are appended: a message being written (a `Vec`, then an
/// [`EncodedMessage`]) or a link's write buffer (a `BytesMut`, a frame written in place).
/// `BytesMut`'s `BufMut::put_slice` is not inlined here, so a piece of fixed size went
/// through a `memcpy` call; `extend_from_slice` of one is plain stores.
trait ByteSink {
    fn append(&mut self, bytes: &[u8]);
}

impl ByteSink for Vec<u8> {
    #[inline(always)]
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl ByteSink for BytesMut {
    #[inline(always)]
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A CBOR head (major type + argument) in its shortest form.
#[inline]
fn put_head(v: &mut impl ByteSink, major: u8, n: u64) {
    // Each width is a copy of fixed size, which compiles to plain stores: a copy of a
    // variable length was a `memcpy` call per head (a publisher's copies fell from 16 % to
    // 10 % of its thread in the profile).
    let m = major << 5;
    match n {
        0..=23 => v.append(&[m | n as u8]),
        24..=0xff => v.append(&[m | 24, n as u8]),
        0x100..=0xffff => {
            let [a, b] = (n as u16).to_be_bytes();
            v.append(&[m | 25, a, b]);
        }
        0x1_0000..=0xffff_ffff => {
            let [a, b, c, d] = (n as u32).to_be_bytes();
            v.append(&[m | 26, a, b, c, d]);
        }
        _ => {
            let [a, b, c, d, e, f, g, h] = n.to_be_bytes();
            v.append(&[m | 27, a, b, c, d, e, f, g, h]);
        }
    }
}

#[inline]
fn put_text(v: &mut impl ByteSink, s: &str) {
    put_head(v, MAJOR_TEXT, s.len() as u64);
    v.append(s.as_bytes());
}

/// Encode an application value as the CBOR payload of an event or call.
///
/// # Errors
/// [`WireError::Encode`] if serde refuses the value.
pub fn encode_payload<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, WireError> {
    with_encoded_payload(value, Bytes::copy_from_slice)
}

/// A scratch buffer larger than this after a payload (one huge event) is released.
const SCRATCH_KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    /// Reused payload buffer: encoding into it costs no allocation once it has grown.
    static PAYLOAD_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encode `value` as a CBOR payload into a per-thread scratch buffer and hand the bytes to
/// `f`. A nested call (a `Serialize` impl that publishes) gets a buffer of its own.
///
/// # Errors
/// [`WireError::Encode`] if serde refuses the value; `f` is not called then.
fn with_encoded_payload<T: Serialize + ?Sized, R>(
    value: &T,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, WireError> {
    fn encode<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), WireError> {
        value
            .serialize(&mut minicbor_serde::Serializer::new(Pieces(buf)))
            .map_err(|e| WireError::Encode(e.to_string()))
    }
    PAYLOAD_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let result = encode(value, &mut buf).map(|()| f(&buf));
            if buf.capacity() > SCRATCH_KEEP_BYTES {
                *buf = Vec::new();
            }
            result
        }
        Err(_) => {
            let mut buf = Vec::new();
            encode(value, &mut buf).map(|()| f(&buf))
        }
    })
}

/// A payload buffer as the CBOR encoder writes into it: most of what it writes are pieces of
/// a few bytes (a head, a key, a number), each copied here as an array of its size, which
/// compiles to plain stores. `Vec`'s own `write_all` made a `memcpy` call of each (nine per
/// event of a two-field struct, a twentieth of a publisher's instructions).
struct Pieces<'a>(&'a mut Vec<u8>);

impl minicbor::encode::Write for Pieces<'_> {
    type Error = std::convert::Infallible;

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        fn put<const N: usize>(v: &mut Vec<u8>, b: &[u8]) {
            match <&[u8; N]>::try_from(b) {
                Ok(a) => v.extend_from_slice(a),
                Err(_) => v.extend_from_slice(b),
            }
        }
        let v = &mut *self.0;
        match buf.len() {
            1 => put::<1>(v, buf),
            2 => put::<2>(v, buf),
            3 => put::<3>(v, buf),
            4 => put::<4>(v, buf),
            5 => put::<5>(v, buf),
            8 => put::<8>(v, buf),
            9 => put::<9>(v, buf),
            _ => v.extend_from_slice(buf),
        }
        Ok(())
    }
}

/// Decode an application payload into its typed form; exactly one CBOR item is accepted.
/// Numbers are taken by value: an `f32` field accepts a double or an integer.
///
/// Nesting deeper than 64 arrays, maps or tags is refused before decoding (a recursive type
/// would otherwise recurse without bound).
///
/// # Errors
/// [`WireError::Malformed`] if the bytes are not one CBOR item of the expected shape, or nest
/// too deep.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    // Typed decoding recurses once per level with no limit of its own.
    super::depth::check_depth(bytes, super::lenient::MAX_DEPTH)?;
    // Numbers in another width than the type's (a double for an `f32`, from Python or JSON)
    // get a second, slower chance; the first error is the one reported.
    decode_one(bytes).or_else(|first| super::lenient::decode(bytes).map_err(|_| first))
}

fn decode_one<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, WireError> {
    let mut de = minicbor_serde::Deserializer::new(bytes);
    let value = T::deserialize(&mut de).map_err(|e| WireError::Malformed(e.to_string()))?;
    let used = de.decoder().position();
    if used != bytes.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the CBOR item",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// The frame codec of one link direction pair: 4-byte big-endian length, one CBOR item.
///
/// It numbers outgoing frames and checks the numbering of incoming ones.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    lengths: LengthDelimitedCodec,
    max_frame_bytes: usize,
    /// True while `lengths` has consumed a frame's prefix and waits for its body: the prefix
    /// is then no longer at the front of the read buffer and must not be read from there.
    awaiting_body: bool,
    next_in_seq: u64,
    next_out_seq: u64,
    /// On a resumable link, the stream seq of the next stream frame written with
    /// [`FrameCodec::encode_frame`]: the session sets it where its replay starts.
    next_stream_seq: u64,
    /// How frames are numbered: per connection, or as a resumable link's streams.
    numbering: Numbering,
    /// The last frame decoded was skipped (an unknown kind): look for the next one.
    skipped_one: bool,
    /// The last topic and origin decoded: a link's events mostly repeat them.
    recent: RecentText,
    /// Frames and bytes read, for the link's counters (none on a handshake's codec).
    received: Option<Arc<ReadCounters>>,
}

/// What a link's reader took off the wire: frames, and their bytes with length prefixes.
#[derive(Debug, Default)]
pub struct ReadCounters {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
}

/// The two meanings of a frame's `seq` (docs/PROTOCOL.md §3, §7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// Every frame counts, from 0, per connection: handshakes, plain links, service links.
    PerConnection,
    /// After the handshake of a resumable link: stream frames carry their stream seq (1, 2,
    /// …, checked by the link's stream), every other frame 0.
    Stream,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        let lengths = LengthDelimitedCodec::builder()
            .length_field_type::<u32>()
            .big_endian()
            .max_frame_length(max_frame_bytes)
            .new_codec();
        FrameCodec {
            lengths,
            max_frame_bytes,
            awaiting_body: false,
            next_in_seq: 0,
            next_out_seq: 0,
            next_stream_seq: 1,
            numbering: Numbering::PerConnection,
            skipped_one: false,
            recent: RecentText::default(),
            received: None,
        }
    }

    /// Count every frame this codec decodes (and its bytes) into `counters`.
    /// Whether a frame's prefix was taken off the read buffer and its body is still awaited
    /// (its room reserved): the buffer must then be kept, however empty.
    pub fn mid_frame(&self) -> bool {
        self.awaiting_body
    }

    pub fn count_reads(&mut self, counters: Arc<ReadCounters>) {
        self.received = Some(counters);
    }

    fn counted(&self, bytes: usize) {
        if let Some(c) = &self.received {
            c.frames.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Number frames as a resumable link does from now on (after its handshake): frames
    /// written with [`FrameCodec::encode_frame`] carry seq 0, stream frames are written with
    /// [`FrameCodec::encode_frame_at`], and decoded frames carry the sender's seq unchecked
    /// but for its rule (non-zero exactly on stream frames): the link's stream checks it.
    pub fn set_resumable(&mut self) {
        self.numbering = Numbering::Stream;
    }

    /// Number the stream frames written with [`FrameCodec::encode_frame`] from `first` on,
    /// in the order they are written (the first frame of a replay, or the next new one).
    pub fn set_next_stream_seq(&mut self, first: u64) {
        self.next_stream_seq = first;
    }

    /// Whether [`FrameCodec::set_resumable`] was called.
    pub fn is_resumable(&self) -> bool {
        self.numbering == Numbering::Stream
    }

    /// Raise (or lower) the limit, as a link does once the peer is authenticated.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max;
        self.lengths.set_max_frame_length(max);
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The seq of the next frame that is not a stream frame, counted as written.
    fn take_out_seq(&mut self) -> u64 {
        match self.numbering {
            Numbering::PerConnection => {
                self.next_out_seq += 1;
                self.next_out_seq - 1
            }
            Numbering::Stream => 0,
        }
    }

    /// Give back the seq [`FrameCodec::take_out_seq`] took for a frame that was not written.
    fn untake_out_seq(&mut self) {
        if self.numbering == Numbering::PerConnection {
            self.next_out_seq -= 1;
        }
    }

    /// The sequence number the next outgoing frame will carry.
    pub fn next_out_seq(&self) -> u64 {
        self.next_out_seq
    }

    /// Append one frame `[seq, message]` to `dst`, numbering it (on a resumable link: seq 0
    /// for every frame that is not a stream frame, and the next stream seq for one).
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] if the frame would exceed this link's maximum: the peer would
    /// refuse it, so it is never sent.
    pub fn encode_frame(
        &mut self,
        msg: &EncodedMessage,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.numbering {
            Numbering::PerConnection => {
                self.put_frame(self.next_out_seq, msg, dst)?;
                self.next_out_seq += 1;
                Ok(())
            }
            Numbering::Stream if msg.is_stream() => {
                self.put_frame(self.next_stream_seq, msg, dst)?;
                self.next_stream_seq += 1;
                Ok(())
            }
            Numbering::Stream => self.put_frame(0, msg, dst),
        }
    }

    /// Append a stream frame of a resumable link, with its stream `seq` (1, 2, …; a replay
    /// repeats the seq a frame had).
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] as for [`FrameCodec::encode_frame`].
    pub fn encode_frame_at(
        &mut self,
        msg: &EncodedMessage,
        seq: u64,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        self.put_frame(seq, msg, dst)
    }

    /// Check that a frame numbered `seq` around a message of `message_len` bytes fits this
    /// link, and append its length prefix, array head and sequence number (copies of fixed
    /// size: plain stores, where a copy of their variable length was a `memcpy` call each).
    /// The message itself is appended by the caller.
    fn begin_frame(
        &self,
        seq: u64,
        message_len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        let body_len = 1 + head_len(seq) + message_len;
        if body_len > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge {
                len: body_len as u64,
                max: self.max_frame_bytes,
            });
        }
        dst.reserve(LENGTH_PREFIX_BYTES + body_len);
        let [a, b, c, d] = (body_len as u32).to_be_bytes();
        dst.extend_from_slice(&[a, b, c, d, (MAJOR_ARRAY << 5) | 2]);
        put_head(dst, MAJOR_UINT, seq);
        Ok(())
    }

    fn put_frame(
        &self,
        seq: u64,
        msg: &EncodedMessage,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        self.begin_frame(seq, msg.len(), dst)?;
        dst.extend_from_slice(msg.bytes());
        Ok(())
    }
}

impl FrameCodec {
    /// Check the sender's numbering of a decoded frame (by reference: a frame is moved as
    /// few times as possible on the read path).
    fn check_sequence(&mut self, frame: &Frame) -> Result<(), WireError> {
        match self.numbering {
            Numbering::PerConnection => {
                if frame.seq() != self.next_in_seq {
                    return Err(WireError::OutOfSequence {
                        expected: self.next_in_seq,
                        got: frame.seq(),
                    });
                }
                self.next_in_seq += 1;
            }
            Numbering::Stream => {
                // An `error` is taken whatever its seq (docs/PROTOCOL.md §3): a dialler whose
                // handshake deadline passed just as the acceptor sent `welcome` sends it as a
                // handshake frame (per connection: seq 2), and the acceptor, numbering as a
                // stream by then, reads it after the handshake. It ends the link either way.
                if matches!(frame.1, Message::Error(_)) {
                    return Ok(());
                }
                // An unknown kind is a stream frame exactly when its seq is not 0.
                let stream = match &frame.1 {
                    Message::Unknown(_) => frame.seq() != 0,
                    msg => msg.is_stream(),
                };
                if stream != (frame.seq() != 0) {
                    return Err(WireError::StreamNumbering {
                        kind: frame.1.kind(),
                        seq: frame.seq(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Decode a whole body that the event fast path declined. `None`: a message of an unknown
    /// kind that is to be skipped (its seq was counted).
    fn decode_body(&mut self, body: &[u8]) -> Result<Option<Frame>, WireError> {
        check_body(body)?;
        let frame = match decode_one::<Frame>(body) {
            Ok(frame) => frame,
            Err(err) => match unknown_kind(body) {
                Some((seq, kind)) => Frame(seq, Message::Unknown(kind)),
                None => return Err(err),
            },
        };
        self.check_sequence(&frame)?;
        // Only a resumable link's stream needs to count an unknown stream frame.
        let skip = matches!(frame.1, Message::Unknown(_))
            && (frame.seq() == 0 || self.numbering == Numbering::PerConnection);
        Ok((!skip).then_some(frame))
    }
}

/// `[seq, {kind: anything}]` where `kind` is not a kind this build knows: its seq and name
/// (cut to 64 bytes, for logs).
fn unknown_kind(body: &[u8]) -> Option<(u64, String)> {
    let (seq, msg): (
        u64,
        std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    ) = decode_one(body).ok()?;
    let mut kinds = msg.into_keys();
    let kind = kinds.next()?;
    if kinds.next().is_some() || KNOWN_KINDS.contains(&kind.as_str()) {
        return None;
    }
    Some((seq, kind.chars().take(64).collect()))
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        // A skipped frame (an unknown kind) is followed by the next one, if it is buffered.
        loop {
            if let Some(frame) = self.decode_next(src)? {
                return Ok(Some(frame));
            }
            if self.skipped_one {
                self.skipped_one = false;
                continue;
            }
            return Ok(None);
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.awaiting_body => Ok(None),
            None => {
                // A consumed prefix counts: the peer sent it and then stopped.
                let prefix = usize::from(self.awaiting_body) * LENGTH_PREFIX_BYTES;
                Err(WireError::Truncated {
                    have: prefix + src.len(),
                })
            }
        }
    }
}

impl FrameCodec {
    /// One frame off `src`: `None` if it is not all buffered yet, or if it was skipped (then
    /// `skipped_one` is set).
    fn decode_next(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        // Check the announced length ourselves so the error says how large it claimed to be;
        // LengthDelimitedCodec would refuse it too, before reserving anything.
        let prefix_buffered = !self.awaiting_body && src.len() >= LENGTH_PREFIX_BYTES;
        if prefix_buffered {
            let len = u64::from((&src[..LENGTH_PREFIX_BYTES]).get_u32());
            if len > self.max_frame_bytes as u64 {
                return Err(WireError::FrameTooLarge {
                    len,
                    max: self.max_frame_bytes,
                });
            }
            // An event whose whole frame is buffered (the usual case when reading in bulk) is
            // decoded where it lies, without `lengths` splitting it into a buffer of its own.
            let end = LENGTH_PREFIX_BYTES + len as usize;
            let recent = &mut self.recent;
            if let Some((mut frame, payload)) = src
                .get(LENGTH_PREFIX_BYTES..end)
                .and_then(|body| decode_fast(body, recent))
            {
                match payload {
                    // The payload stays where it was read: the frame's bytes are split off
                    // the read buffer and the payload is a slice of them.
                    Some(at) => {
                        let bytes = src.split_to(end).freeze();
                        frame.set_payload(
                            bytes.slice(
                                LENGTH_PREFIX_BYTES + at.start..LENGTH_PREFIX_BYTES + at.end,
                            ),
                        );
                    }
                    None => src.advance(end),
                }
                self.counted(end);
                self.check_sequence(&frame)?;
                return Ok(Some(frame));
            }
        }
        let Some(body) = self.lengths.decode(src)? else {
            // With a whole prefix buffered, `lengths` consumed it and now waits for the body.
            self.awaiting_body |= prefix_buffered;
            return Ok(None);
        };
        self.awaiting_body = false;
        self.counted(LENGTH_PREFIX_BYTES + body.len());
        if let Some((mut frame, payload)) = decode_fast(&body, &mut self.recent) {
            if let Some(at) = payload {
                frame.set_payload(body.freeze().slice(at));
            }
            self.check_sequence(&frame)?;
            return Ok(Some(frame));
        }
        let frame = self.decode_body(&body)?;
        self.skipped_one = frame.is_none();
        Ok(frame)
    }
}

/// The messages that come one per event, decoded without serde when they have the shape
/// this crate writes: `event` (peer links), `publish` and `deliver` (service links). With a
/// range, the frame's payload is still empty and is that range of `body`: the caller slices
/// it off the bytes it read instead of copying it.
fn decode_fast(body: &[u8], recent: &mut RecentText) -> Option<(Frame, Option<Range<usize>>)> {
    // `[seq, {key: …}]`: the key's first bytes, past the seq's head, tell which it may be.
    let seq_bytes = match body.get(1)? & 0x1f {
        0..=23 => 1,
        24 => 2,
        25 => 3,
        26 => 5,
        _ => 9,
    };
    match body.get(1 + seq_bytes..3 + seq_bytes)? {
        [0xa1, 0x65] => decode_event_fast(body, recent).map(|f| (f, None)),
        [0xa1, 0x67] => match body.get(3 + seq_bytes)? {
            b'p' => decode_publish_fast(body, recent),
            b'd' => service::decode_deliver_fast(body, recent),
            _ => None,
        },
        _ => None,
    }
}

impl Frame {
    /// Set the payload of a message that carries one (what [`decode_fast`] left empty).
    fn set_payload(&mut self, bytes: Bytes) {
        match &mut self.1 {
            Message::Publish(p) => p.payload = bytes,
            Message::Deliver(d) => d.payload = bytes,
            Message::Event(e) => e.payload = bytes,
            _ => {}
        }
    }
}

/// An application's `publish` as the clients write it, `[seq, {"publish": {"topic": text,
/// "target": null or text, "payload": bytes}}]` in that order (or without `target`), decoded
/// without serde. The receiver rules need no walk of their own here: what this shape accepts
/// breaks none of them (definite lengths, no tag, distinct text keys, UTF-8 texts, three
/// levels). Anything else is `None`, and the rules check and the serde decoder decide as
/// always: this path only accepts frames whose serde decoding is exactly what it returns.
fn decode_publish_fast(
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
    r.key(KEY_PUBLISH)?;
    let fields = r.head(MAJOR_MAP)?;
    if fields != 2 && fields != 3 {
        return None;
    }
    r.key(KEY_TOPIC)?;
    let topic = recent_text(r.text_bytes()?, &mut recent.topic)?;
    let target = if fields == 3 {
        r.key(KEY_TARGET)?;
        if r.peek()? == CBOR_NULL {
            r.at += 1;
            None
        } else {
            Some(r.text()?.to_owned())
        }
    } else {
        None
    };
    r.key(KEY_PAYLOAD)?;
    let len = usize::try_from(r.head(MAJOR_BYTES)?).ok()?;
    let start = r.at;
    r.take(len)?;
    if r.at != body.len() {
        return None;
    }
    let frame = Frame(
        seq,
        Message::Publish(Publish {
            topic,
            target,
            payload: Bytes::new(),
        }),
    );
    Some((frame, Some(start..start + len)))
}

/// The event frame as this crate writes it, `[seq, {"event": {8 fields in declaration
/// order}}]`, decoded without serde.
/// Returns `None` for anything else: other messages, another field order, omitted or unknown
/// fields, non-UTF-8 text, trailing bytes... The serde decoder then takes the frame and gives
/// the same result or the same error as always, so this path only ever accepts frames whose
/// serde decoding is exactly what it returns.
fn decode_event_fast(body: &[u8], recent: &mut RecentText) -> Option<Frame> {
    let mut r = Reader { b: body, at: 0 };
    if r.head(MAJOR_ARRAY)? != 2 {
        return None;
    }
    let seq = r.head(MAJOR_UINT)?;
    // The constant runs between the values are compared as the encoder writes them (keys
    // with the heads beside them), each as one comparison of fixed size.
    r.run(ENC_EVENT_TO_ID)?;
    let id = r.head(MAJOR_UINT)?;
    r.run(ENC_SEQ)?;
    let event_seq = r.head(MAJOR_UINT)?;
    r.run(ENC_TOPIC)?;
    let topic = recent_text(r.text_bytes()?, &mut recent.topic)?;
    r.run(ENC_ORIGIN)?;
    let origin = recent_text(r.text_bytes()?, &mut recent.origin)?;
    r.run(ENC_INCARNATION)?;
    let origin_incarnation = Uuid::from_bytes(*r.fixed::<UUID_BYTES>()?);
    r.run(ENC_TARGET)?;
    let target = if r.peek()? == CBOR_NULL {
        r.at += 1;
        None
    } else {
        Some(r.text()?.to_owned())
    };
    r.run(ENC_TTL)?;
    let ttl = u8::try_from(r.head(MAJOR_UINT)?).ok()?;
    r.run(ENC_PAYLOAD)?;
    let len = usize::try_from(r.head(MAJOR_BYTES)?).ok()?;
    let start = r.at;
    r.take(len)?;
    if r.at != body.len() {
        return None;
    }
    let env = Envelope {
        id,
        seq: event_seq,
        topic,
        origin,
        origin_incarnation,
        target,
        ttl,
        // Copied, not sliced: a slice would keep the whole read buffer shared, and the reader
        // would then allocate a fresh buffer for every read instead of reusing its own.
        payload: Bytes::copy_from_slice(&body[start..start + len]),
    };
    Some(Frame(seq, Message::Event(env)))
}

/// Texts that repeat from one event to the next on a link, shared with the envelopes decoded
/// from it: an event whose topic and origin repeat costs no allocation for either.
#[derive(Debug, Clone)]
struct RecentText {
    topic: Arc<str>,
    origin: Arc<str>,
}

impl Default for RecentText {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        RecentText {
            topic: empty.clone(),
            origin: empty,
        }
    }
}

/// Longer texts are not remembered (a link's memory stays small whatever a peer sends).
const RECENT_TEXT_MAX_BYTES: usize = 256;

/// `bytes` as shared text: validated as UTF-8 unless they are the `last` text seen here, which
/// then becomes this one.
fn recent_text(bytes: &[u8], last: &mut Arc<str>) -> Option<Arc<str>> {
    if last.as_bytes() == bytes {
        return Some(last.clone());
    }
    let text: Arc<str> = Arc::from(std::str::from_utf8(bytes).ok()?);
    if text.len() <= RECENT_TEXT_MAX_BYTES {
        *last = text.clone();
    }
    Some(text)
}

/// A cursor over one frame body for [`decode_event_fast`]; every method returns `None` when
/// the bytes are not what the fast path expects.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let bytes = self.b.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    /// A definite head of `major`; its argument.
    #[inline(always)]
    fn head(&mut self, major: u8) -> Option<u64> {
        let initial = self.peek()?;
        if initial >> 5 != major {
            return None;
        }
        self.at += 1;
        let n = match initial & 0x1f {
            info @ 0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        Some(n)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.text_bytes()?).ok()
    }

    /// A text string's bytes, not yet validated as UTF-8.
    #[inline(always)]
    fn text_bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.head(MAJOR_TEXT)?).ok()?;
        self.take(len)
    }

    /// The next `N` bytes.
    #[inline(always)]
    fn fixed<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// The constant run `run` next (keys and the heads beside them, as the encoder writes
    /// them): one comparison of fixed size.
    #[inline(always)]
    fn run<const N: usize>(&mut self, run: &[u8; N]) -> Option<()> {
        (self.fixed::<N>()? == run).then_some(())
    }

    /// The text `key`, compared as bytes (no UTF-8 validation needed to recognise it). Keys
    /// are shorter than 24 bytes, so their head is the one byte `0x60 | len`.
    #[inline(always)]
    fn key(&mut self, key: &str) -> Option<()> {
        let len = key.len();
        debug_assert!(len < 24);
        let got = self.take(1 + len)?;
        (got[0] == (MAJOR_TEXT << 5) | len as u8 && &got[1..] == key.as_bytes()).then_some(())
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let encoded = encode_message(msg)?;
        self.encode_frame(&encoded, dst)
    }
}

mod delta;
mod service;
pub use delta::{encode_delta_frame, EncodedRecord};
pub use service::DeliverRef;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fast_path_tests {
    //! The hand-written event encoder and decoder against serde's, byte for byte.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn envelopes() -> Vec<Envelope> {
        let mut v = Vec::new();
        for (id, payload_len, target, ttl) in [
            (0u64, 0usize, None, 0u8),
            (23, 1, Some("master"), 23),
            (24, 23, None, 24),
            (255, 24, Some(""), 255),
            (256, 255, None, 2),
            (65_535, 256, Some("worker-12"), 7),
            (65_536, 65_535, None, 1),
            (u64::from(u32::MAX), 65_536, Some("n"), 3),
            (u64::from(u32::MAX) + 1, 100, None, 4),
            (u64::MAX, 64, Some("x".repeat(300).leak()), 5),
        ] {
            v.push(Envelope {
                id,
                seq: id.wrapping_add(1),
                topic: "bench.data".repeat(1 + id as usize % 3).into(),
                origin: "worker-1".into(),
                origin_incarnation: Uuid::from_bytes([id as u8; 16]),
                target: target.map(str::to_owned),
                ttl,
                payload: Bytes::from(vec![0xa5; payload_len]),
            });
        }
        v
    }

    #[test]
    fn hand_encoded_events_are_byte_identical_to_serde() {
        for env in envelopes() {
            let serde = minicbor_serde::to_vec(Message::Event(env.clone())).unwrap();
            assert_eq!(&encode_event(&env).unwrap().0[..], &serde[..], "{env:?}");
        }
    }

    #[test]
    fn fast_decoding_equals_serde_decoding() {
        for (seq, env) in envelopes().into_iter().enumerate() {
            let frame = Frame(seq as u64 * 1000, Message::Event(env));
            let body = Bytes::from(minicbor_serde::to_vec(&frame).unwrap());
            assert_eq!(
                decode_event_fast(&body, &mut RecentText::default()).unwrap(),
                frame
            );
            assert_eq!(decode_one::<Frame>(&body).unwrap(), frame);
        }
    }

    #[test]
    fn remembered_topics_and_origins_never_change_what_is_decoded() {
        let mut recent = RecentText::default();
        let mut envs = envelopes();
        envs[3].origin = "n\u{e9}ud".into();
        for (seq, env) in envs.iter().chain(envs.iter().rev()).cloned().enumerate() {
            let frame = Frame(seq as u64, Message::Event(env));
            let body = minicbor_serde::to_vec(&frame).unwrap();
            assert_eq!(decode_event_fast(&body, &mut recent).unwrap(), frame);
        }
        // A topic that is not UTF-8 is refused even right after a valid one was remembered.
        let good = minicbor_serde::to_vec(Frame(0, Message::Event(envs.remove(1)))).unwrap();
        assert!(decode_event_fast(&good, &mut recent).is_some());
        let mut bad = good.clone();
        let at = good.windows(10).position(|w| w == b"bench.data").unwrap();
        bad[at + 9] = 0xff;
        assert!(decode_event_fast(&bad, &mut recent).is_none());
    }

    #[test]
    fn fast_decoding_declines_what_it_does_not_recognise() {
        let env = envelopes().remove(1);
        let good = minicbor_serde::to_vec(Frame(0, Message::Event(env))).unwrap();
        // Trailing byte, truncation, another message, non-UTF-8 topic.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_event_fast(&Bytes::from(trailing), &mut RecentText::default()).is_none());
        assert!(decode_event_fast(&good[..good.len() - 1], &mut RecentText::default()).is_none());
        let ping =
            minicbor_serde::to_vec(Frame(0, Message::Ping(crate::wire::Ping { n: 1 }))).unwrap();
        assert!(decode_event_fast(&ping, &mut RecentText::default()).is_none());
        let mut bad_utf8 = good.clone();
        let at = good.windows(10).position(|w| w == b"bench.data").unwrap();
        bad_utf8[at] = 0xff;
        assert!(decode_event_fast(&bad_utf8, &mut RecentText::default()).is_none());
        assert!(decode_one::<Frame>(&bad_utf8).is_err());
        // A non-shortest head is still the same value to serde and to the fast path.
        let mut long_seq = vec![0x82, 0x18, 0x00];
        long_seq.extend_from_slice(&good[2..]);
        let fast = decode_event_fast(&long_seq, &mut RecentText::default()).unwrap();
        assert_eq!(fast, decode_one::<Frame>(&long_seq).unwrap());
        // One inside the constant runs (the envelope's map as `b8 08`) is left to serde.
        let at = good.windows(3).position(|w| w == b"\xa8\x62i").unwrap();
        let mut long_map = good[..at].to_vec();
        long_map.extend_from_slice(&[0xb8, 0x08]);
        long_map.extend_from_slice(&good[at + 1..]);
        assert!(decode_event_fast(&long_map, &mut RecentText::default()).is_none());
        assert_eq!(
            decode_one::<Frame>(&long_map).unwrap(),
            decode_one::<Frame>(&good).unwrap()
        );
    }

    fn publishes() -> Vec<Publish> {
        let mut v = Vec::new();
        for (topic, target, len) in [
            ("bench.data", None, 64usize),
            ("t", Some("worker-1"), 0),
            ("sensor.temp", Some(""), 24),
            ("x", None, 70_000),
        ] {
            v.push(Publish {
                topic: topic.into(),
                target: target.map(str::to_owned),
                payload: Bytes::from(vec![0x5a; len]),
            });
        }
        v
    }

    /// The frame a fast decoder returned, its payload sliced from `body` as the codec does.
    fn sliced(decoded: Option<(Frame, Option<Range<usize>>)>, body: &[u8]) -> Frame {
        let (mut frame, at) = decoded.unwrap();
        if let Some(at) = at {
            frame.set_payload(Bytes::copy_from_slice(&body[at]));
        }
        frame
    }

    #[test]
    fn fast_publish_decoding_equals_serde_decoding() {
        let mut recent = RecentText::default();
        for (seq, p) in publishes().into_iter().enumerate() {
            let frame = Frame(seq as u64 * 300, Message::Publish(p));
            let body = minicbor_serde::to_vec(&frame).unwrap();
            check_body(&body).unwrap();
            assert_eq!(
                sliced(decode_publish_fast(&body, &mut recent), &body),
                frame
            );
            assert_eq!(decode_one::<Frame>(&body).unwrap(), frame);
        }
    }

    /// `[7, {"publish": {fields…}}]` from its fields' encoded pairs.
    fn publish_body(map_head: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![0x82, 0x07, 0xa1, 0x67];
        b.extend_from_slice(b"publish");
        b.push(map_head);
        for f in fields {
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn fast_publish_decoding_takes_an_absent_target_as_serde_does_and_declines_the_rest() {
        let topic: &[u8] = b"\x65topic\x61t";
        let target: &[u8] = b"\x66target\x61w";
        let payload: &[u8] = b"\x67payload\x42\x01\x02";
        let without_target = publish_body(0xa2, &[topic, payload]);
        let fast = sliced(
            decode_publish_fast(&without_target, &mut RecentText::default()),
            &without_target,
        );
        assert_eq!(fast, decode_one::<Frame>(&without_target).unwrap());
        // Another order, an unknown field, a text payload, trailing bytes, bad UTF-8: serde's.
        for body in [
            publish_body(0xa3, &[target, topic, payload]),
            publish_body(0xa3, &[topic, payload, target]),
            publish_body(0xa4, &[topic, target, payload, b"\x61z\x00"]),
            publish_body(0xa2, &[topic, b"\x67payload\x62ab"]),
            [publish_body(0xa2, &[topic, payload]), vec![0x00]].concat(),
            publish_body(0xa2, &[b"\x65topic\x61\xff", payload]),
        ] {
            assert!(
                decode_publish_fast(&body, &mut RecentText::default()).is_none(),
                "{body:x?}"
            );
        }
    }

    #[test]
    fn payload_scratch_survives_nested_and_failing_encodes() {
        struct Nested;
        impl Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = encode_payload(&7u8).map_err(serde::ser::Error::custom)?;
                s.serialize_bytes(&inner)
            }
        }
        let outer = with_encoded_payload(&Nested, <[u8]>::to_vec).unwrap();
        assert_eq!(outer, vec![0x41, 0x07]);
        let map: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let _ = with_encoded_payload(&map, <[u8]>::to_vec);
        assert_eq!(encode_payload(&1u8).unwrap(), Bytes::from_static(&[1]));
    }
}
