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

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Append the frames ready now to `out`, at most `max`: those buffered, then those of
    /// further reads while the socket has more. An error (or the end of the stream) ends the
    /// frames; an error is appended last. `Pending` only when nothing was appended and the
    /// stream goes on; `Ready` with nothing appended is the end.
    ///
    /// Each frame is pushed onto `out` where it is decoded: a frame handed on through a
    /// stream's `poll_next` and a batching adapter was copied whole at each of those steps
    /// too (some 170 bytes, by a `memcpy` call: five copies between the decoder and the
    /// session, counted with a debugger, now three).
    pub fn poll_frames(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Result<Frame, WireError>>,
        max: usize,
    ) -> Poll<()> {
        let start = out.len();
        while out.len() - start < max {
            match self.step(cx) {
                Poll::Ready(Some(item)) => out.push(item),
                Poll::Ready(None) => break,
                Poll::Pending if out.len() == start => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(())
    }

    /// The next frame: decoded from the buffer, reading the socket when it holds no whole
    /// frame. Inlined into its two callers so a frame is written once, where it is kept.
    #[inline(always)]
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame, WireError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let decoded = if self.eof {
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            match decoded {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if self.eof => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            self.make_room();
            let room = self.buf.capacity() - self.buf.len();
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.buf
            )) {
                Ok(0) => self.eof = true,
                Ok(n) => self.sizing.used(n, room),
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, WireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().step(cx)
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
    async fn frames_come_in_batches_of_what_is_ready_and_an_error_ends_the_last_one() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(rx, FrameCodec::new(1 << 20), &[]);
        let mut sender = FrameCodec::new(1 << 20);
        tx.write_all(&pings(&mut sender, 0..10)).await.unwrap();
        let mut batch = Vec::new();
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 10 {
            batch.clear();
            std::future::poll_fn(|cx| reader.poll_frames(cx, &mut batch, 4)).await;
            sizes.push(batch.len());
        }
        assert_eq!(
            sizes,
            [4, 4, 2],
            "at most 4 at a time, and only what was ready"
        );
        let n: Vec<u64> = batch
            .iter()
            .map(|f| match f {
                Ok(Frame(_, crate::wire::Message::Ping(Ping { n }))) => *n,
                other => panic!("not a ping: {other:?}"),
            })
            .collect();
        assert_eq!(n, [8, 9]);
        // A frame, then one announcing more than the maximum: the frame, then the error.
        tx.write_all(&pings(&mut sender, [10])).await.unwrap();
        tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        batch.clear();
        std::future::poll_fn(|cx| reader.poll_frames(cx, &mut batch, 4)).await;
        assert_eq!(batch.len(), 2);
        assert!(matches!(batch[1], Err(WireError::FrameTooLarge { .. })));
        batch.clear();
        std::future::poll_fn(|cx| reader.poll_frames(cx, &mut batch, 4)).await;
        assert!(batch.is_empty(), "nothing after the error: the end");
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
