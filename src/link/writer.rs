//! The writer task of one link: takes batches of frames from the link's [`LinkQueue`], numbers
//! and frames them into one buffer, and writes the buffer with as few syscalls as the socket
//! allows. Spawned by [`crate::link::spawn_writer`] for a session (peer or application); it
//! ends on its own when the queue is closed and drained, or when a write fails (it then tells
//! the session with [`WriterFailed`]).
//!
//! Whole frames only: once a close is asked for, the writer finishes the frames already in its
//! buffer (never a part of one), writes the last word, and shuts the write side down, all
//! within `last_word_timeout`; a peer that reads nothing for that long gets its socket closed
//! as it stands (the only way a stream can end inside a frame, and only towards a peer that
//! stopped reading).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::queue::{LinkQueue, Next};
use super::sizing::BufferSizing;
use crate::wire::{EncodedMessage, FrameCodec};

/// The writer could not write: the connection is dead.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed(pub String);

/// Frames per write: enough to amortise the syscall, few enough to keep latency low.
const WRITE_BATCH_FRAMES: usize = 512;
/// Bytes per write batch past its first frame: the writer's buffer stays small next to the
/// queue's byte bound, and a close waits for at most this much before its last word.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// The most a link's write buffer keeps between batches while its traffic needs it: a batch
/// with a larger frame allocates for it and gives it back.
const WRITE_BUFFER_MAX_BYTES: usize = 1 << 20;

pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    queue: Arc<LinkQueue>,
    mut codec: FrameCodec,
    on_fail: Recipient<WriterFailed>,
    last_word_timeout: Duration,
) {
    // The frame list grows with the traffic and keeps what it grew to (at most a batch of
    // handles); the buffer follows the traffic both ways (see `sizing`): an idle link's is a
    // few KiB, whatever a burst once needed.
    let mut frames: Vec<EncodedMessage> = Vec::new();
    let mut sizing = BufferSizing::new(WRITE_BUFFER_MAX_BYTES);
    let mut buf = BytesMut::with_capacity(sizing.target());
    // Set once a close is asked for: everything left must be written by then.
    let mut deadline: Option<Instant> = None;
    let ending = loop {
        match queue
            .next(&mut frames, WRITE_BATCH_FRAMES, WRITE_BATCH_BYTES)
            .await
        {
            Next::Frames(bytes) => {
                for frame in frames.drain(..) {
                    if let Err(e) = codec.encode_frame(&frame, &mut buf) {
                        tracing::warn!("frame not sent: {e}");
                    }
                }
                let written =
                    write_watching(&mut io, &buf, &queue, &mut deadline, last_word_timeout).await;
                queue.written(bytes);
                sizing.used(buf.len(), buf.capacity());
                buf.clear();
                if sizing.oversized(buf.capacity()) {
                    buf = BytesMut::with_capacity(sizing.target());
                }
                if let Err(e) = written {
                    queue.shut();
                    on_fail.do_send(WriterFailed(e.to_string()));
                    return;
                }
            }
            Next::End(ending) => break ending,
        }
    };
    let deadline = deadline.unwrap_or_else(|| Instant::now() + last_word_timeout);
    if let Some(word) = ending.last_word {
        match codec.encode_frame(&word, &mut buf) {
            Ok(()) => {
                if let Ok(Err(e)) = tokio::time::timeout_at(deadline, io.write_all(&buf)).await {
                    tracing::debug!("last word not written: {e}");
                }
            }
            Err(e) => tracing::warn!("last word not sent: {e}"),
        }
    }
    let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
    queue.shut();
}

/// Write all of `buf`, noticing a close asked for meanwhile: from then on the rest must be
/// written within `timeout`.
async fn write_watching<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &[u8],
    queue: &LinkQueue,
    deadline: &mut Option<Instant>,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let n = match *deadline {
            None => {
                tokio::select! {
                    biased;
                    () = queue.close_asked() => {
                        *deadline = Some(Instant::now() + timeout);
                        continue;
                    }
                    n = io.write(&buf[pos..]) => n?,
                }
            }
            Some(at) => tokio::time::timeout_at(at, io.write(&buf[pos..]))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer read nothing while the link closed",
                    )
                })??,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        queue.wrote_some();
        pos += n;
    }
    // A TLS stream may keep the tail of the batch in its own buffer when the socket was full
    // (its `write` accepted the bytes): flush pushes it out, or the tail would wait for the
    // next batch. On TCP and Unix sockets this is a no-op, without a syscall.
    loop {
        return match *deadline {
            None => tokio::select! {
                biased;
                () = queue.close_asked() => {
                    *deadline = Some(Instant::now() + timeout);
                    continue;
                }
                flushed = io.flush() => flushed,
            },
            Some(at) => tokio::time::timeout_at(at, io.flush()).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer read nothing while the link closed",
                )
            })?,
        };
    }
}
