//! A link's frame reader: the length-prefixed frames of one connection's read half, as a
//! stream, in a read buffer sized by [`BufferSizing`] (a few KiB while the link is quiet, up
//! to [`READ_BUFFER_MAX_BYTES`] while it is busy). It reads as `tokio_util`'s `FramedRead`
//! does, and differs only in how much room each read gets.
//!
//! A frame's announced length is checked against the maximum before its body is waited for
//! (`FrameCodec`), so a peer cannot make the buffer grow past one frame of the maximum size.
//! After an error or the end of the stream it yields nothing more. Owned by the session that
//! reads the link, on its arbiter.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::AsyncRead;
use tokio_util::codec::Decoder;

use super::sizing::BufferSizing;
use crate::wire::{Frame, FrameCodec, WireError};

/// Bytes the reader asks the socket for at most per read while the link is busy: one read
/// takes in a few hundred small frames.
pub const READ_BUFFER_MAX_BYTES: usize = 64 * 1024;

pub struct FrameReader<R> {
    io: R,
    codec: FrameCodec,
    buf: BytesMut,
    /// The size of the allocation `buf` is a view of: its `capacity` is only the room from
    /// where the view starts, once frames were split off its front.
    allocated: usize,
    sizing: BufferSizing,
    /// The peer closed its side: what is buffered is decoded to the end.
    eof: bool,
    /// An error or the end was yielded.
    done: bool,
}

impl<R> FrameReader<R> {
    /// `leftover` holds bytes the handshake read past its last frame.
    pub fn new(io: R, codec: FrameCodec, leftover: &[u8]) -> Self {
        let sizing = BufferSizing::new(READ_BUFFER_MAX_BYTES);
        let mut buf = BytesMut::with_capacity(sizing.target().max(leftover.len()));
        buf.extend_from_slice(leftover);
        FrameReader {
            io,
            codec,
            allocated: buf.capacity(),
            buf,
            sizing,
            eof: false,
            done: false,
        }
    }

    /// Room for the next read: at least half the target. A buffer that holds nothing (not even
    /// a frame's prefix) is replaced when it has too little room left or is far larger than
    /// the target; one holding part of a frame grows (the codec reserved a large frame's
    /// whole body already).
    fn make_room(&mut self) {
        let target = self.sizing.target();
        // A reserve (the codec's for a large frame, or ours) that moved the buffer leaves the
        // view at the start of its new allocation.
        self.allocated = self.allocated.max(self.buf.capacity());
        let room = self.buf.capacity() - self.buf.len();
        if self.buf.is_empty() && !self.codec.mid_frame() {
            if room < target / 2 || self.sizing.oversized(self.allocated) {
                self.buf = BytesMut::with_capacity(target);
                self.allocated = target;
            }
        } else if room < target / 2 {
            self.buf.reserve(target);
            self.allocated = self.allocated.max(self.buf.capacity());
        }
    }

    /// The size of the read buffer's allocation (for tests).
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.allocated
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, WireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let decoded = if this.eof {
                this.codec.decode_eof(&mut this.buf)
            } else {
                this.codec.decode(&mut this.buf)
            };
            match decoded {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.eof => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            this.make_room();
            let room = this.buf.capacity() - this.buf.len();
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.buf
            )) {
                Ok(0) => this.eof = true,
                Ok(n) => this.sizing.used(n, room),
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::link::sizing::FIRST_BYTES;
    use crate::wire::{encode_message, Message, Ping};
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    /// Frames of pings numbered `ns`, as the writer of one connection (`codec`) puts them.
    fn pings(codec: &mut FrameCodec, ns: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut out = BytesMut::new();
        for n in ns {
            let frame = encode_message(&Message::Ping(Ping { n })).unwrap();
            codec.encode_frame(&frame, &mut out).unwrap();
        }
        out.to_vec()
    }

    #[tokio::test]
    async fn a_busy_link_reads_in_large_buffers_and_a_quiet_one_gives_them_back() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(rx, FrameCodec::new(1 << 20), &[]);
        assert_eq!(reader.allocated(), FIRST_BYTES);
        let mut sender = FrameCodec::new(1 << 20);
        // A burst far larger than the buffer, all written before the first read: each read
        // fills the buffer, which doubles up to its maximum.
        tx.write_all(&pings(&mut sender, 0..40_000)).await.unwrap();
        for n in 0..40_000u64 {
            let frame = reader.next().await.unwrap().unwrap();
            assert!(matches!(frame.1, Message::Ping(Ping { n: m }) if m == n));
        }
        assert!(
            reader.allocated() >= READ_BUFFER_MAX_BYTES / 2,
            "grown: {}",
            reader.allocated()
        );
        // Then one ping at a time: short reads, and the buffer is replaced by a small one.
        for n in 0..17u64 {
            tx.write_all(&pings(&mut sender, [n])).await.unwrap();
            let frame = reader.next().await.unwrap().unwrap();
            assert!(matches!(frame.1, Message::Ping(Ping { n: m }) if m == n));
        }
        assert!(
            reader.allocated() <= FIRST_BYTES,
            "given back: {}",
            reader.allocated()
        );
    }

    #[tokio::test]
    async fn a_frame_cut_at_any_byte_is_read_whole_and_the_end_inside_one_is_an_error() {
        let bytes = pings(&mut FrameCodec::new(1 << 20), [1, 2]);
        for cut in 1..bytes.len() {
            let (mut tx, rx) = tokio::io::duplex(64);
            let mut reader = FrameReader::new(rx, FrameCodec::new(1 << 20), &bytes[..cut]);
            tx.write_all(&bytes[cut..]).await.unwrap();
            drop(tx);
            let mut seen = vec![];
            while let Some(item) = reader.next().await {
                if let Message::Ping(p) = item.unwrap().1 {
                    seen.push(p.n);
                }
            }
            assert_eq!(seen, [1, 2], "cut at {cut}");
        }
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, FrameCodec::new(1 << 20), &[]);
        tx.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        drop(tx);
        assert!(reader.next().await.unwrap().is_ok());
        assert!(matches!(
            reader.next().await,
            Some(Err(WireError::Truncated { .. }))
        ));
        assert!(reader.next().await.is_none(), "nothing after an error");
    }

    #[tokio::test]
    async fn an_announced_length_past_the_maximum_is_refused_before_any_room_is_made() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, FrameCodec::new(1024), &[]);
        tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            reader.next().await,
            Some(Err(WireError::FrameTooLarge { .. }))
        ));
        assert!(reader.allocated() <= FIRST_BYTES);
    }
}
