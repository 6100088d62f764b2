//! Length prefix + CBOR: frames in, frames out, and the checks that keep hostile bytes out.
//!
//! Decoding checks, in this order: the announced length against the link's maximum (before any
//! body byte is buffered), the CBOR item (exactly one, nothing after it), and the sender's
//! sequence number. Encoding writes `[seq, message]` around a message encoded once, so a
//! broadcast is serialized once however many links it leaves on.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::frame::{Envelope, Frame, Message};

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
            WireError::OutOfSequence { .. } => "out_of_sequence",
            WireError::Encode(_) | WireError::Io(_) => "internal",
        }
    }
}

/// A message already encoded as CBOR, ready to be framed on any number of links.
#[derive(Debug, Clone)]
pub struct EncodedMessage(Bytes);

impl EncodedMessage {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Encode a message once, to be framed with [`FrameCodec::encode_frame`] per link.
///
/// # Errors
/// [`WireError::Encode`] if serde refuses the value (for example a map with non-string keys).
pub fn encode_message(msg: &Message) -> Result<EncodedMessage, WireError> {
    minicbor_serde::to_vec(msg)
        .map(|v| EncodedMessage(Bytes::from(v)))
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Encode `{"event": envelope}` from a borrowed envelope (relays and publishers keep theirs).
///
/// # Errors
/// [`WireError::Encode`] if serde refuses the value.
pub fn encode_event(env: &Envelope) -> Result<EncodedMessage, WireError> {
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum MessageRef<'a> {
        Event(&'a Envelope),
    }
    minicbor_serde::to_vec(MessageRef::Event(env))
        .map(|v| EncodedMessage(Bytes::from(v)))
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Encode an application value as the CBOR payload of an event or call.
///
/// # Errors
/// [`WireError::Encode`] if serde refuses the value.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Bytes, WireError> {
    minicbor_serde::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Decode an application payload into its typed form; exactly one CBOR item is accepted.
///
/// # Errors
/// [`WireError::Malformed`] if the bytes are not one CBOR item of the expected shape.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    decode_one(bytes)
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
        }
    }

    /// Raise (or lower) the limit, as a link does once the peer is authenticated.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max;
        self.lengths.set_max_frame_length(max);
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The sequence number the next outgoing frame will carry.
    pub fn next_out_seq(&self) -> u64 {
        self.next_out_seq
    }

    /// Append one frame `[seq, message]` to `dst`, numbering it.
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] if the frame would exceed this link's maximum: the peer would
    /// refuse it, so it is never sent.
    pub fn encode_frame(
        &mut self,
        msg: &EncodedMessage,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        let mut seq_buf = [0u8; 9];
        let seq_len = cbor_uint(self.next_out_seq, &mut seq_buf);
        let body_len = 1 + seq_len + msg.0.len();
        if body_len > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge {
                len: body_len as u64,
                max: self.max_frame_bytes,
            });
        }
        dst.reserve(LENGTH_PREFIX_BYTES + body_len);
        dst.put_u32(body_len as u32);
        dst.put_u8(0x82); // CBOR array of two items
        dst.put_slice(&seq_buf[..seq_len]);
        dst.put_slice(&msg.0);
        self.next_out_seq += 1;
        Ok(())
    }
}

/// CBOR unsigned integer (major type 0) in its shortest form; returns the bytes written.
fn cbor_uint(n: u64, out: &mut [u8; 9]) -> usize {
    match n {
        0..=23 => {
            out[0] = n as u8;
            1
        }
        24..=0xff => {
            out[0] = 0x18;
            out[1] = n as u8;
            2
        }
        0x100..=0xffff => {
            out[0] = 0x19;
            out[1..3].copy_from_slice(&(n as u16).to_be_bytes());
            3
        }
        0x1_0000..=0xffff_ffff => {
            out[0] = 0x1a;
            out[1..5].copy_from_slice(&(n as u32).to_be_bytes());
            5
        }
        _ => {
            out[0] = 0x1b;
            out[1..9].copy_from_slice(&n.to_be_bytes());
            9
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
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
        }
        let Some(body) = self.lengths.decode(src)? else {
            // With a whole prefix buffered, `lengths` consumed it and now waits for the body.
            self.awaiting_body |= prefix_buffered;
            return Ok(None);
        };
        self.awaiting_body = false;
        let frame: Frame = decode_one(&body)?;
        if frame.seq() != self.next_in_seq {
            return Err(WireError::OutOfSequence {
                expected: self.next_in_seq,
                got: frame.seq(),
            });
        }
        self.next_in_seq += 1;
        Ok(Some(frame))
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

impl Encoder<&Message> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let encoded = encode_message(msg)?;
        self.encode_frame(&encoded, dst)
    }
}

#[cfg(test)]
mod tests;
