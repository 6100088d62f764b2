//! The link core both protocols share: peer links (node ↔ node, `node::session`) and service
//! links (application ↔ node, `node::service_session`) run on it, and keep only their protocol
//! logic. It owns, for one connection:
//!
//! * [`transport`]: the byte stream, TCP or Unix (TLS joins as another variant), split into a
//!   read half for the session actor and a write half for the writer task;
//! * reading: [`FrameReader`] (length prefix + CBOR with its maximum, checked before
//!   allocating, in a read buffer that follows the traffic, see [`sizing`]) and
//!   [`ReadyBatches`] (the frames ready now, as one batch per wake-up);
//! * [`queue`]: the write queue, bounded in frames and in bytes, with a reserved slot for the
//!   last word;
//! * [`writer`]: the task that drains the queue in batches, one syscall per batch, and ends a
//!   close with the last word written whole;
//! * [`liveness`]: ping on a quiet interval, dead after the failure timeout of silence;
//! * [`stream`]: the per-peer stream of a resumable peer link (protocol version 2): sequence
//!   numbers, cumulative acknowledgements and the replay buffer, which outlive one connection.
//!
//! Close-with-reason is [`LinkQueue::close`] with the `error` (a fault) or `bye` (a graceful
//! end) frame as last word: it never waits for room, and no stream ends inside a frame.
//!
//! Seams: every outbound frame of a link passes [`writer`]'s `encode_frame` in order, and
//! every inbound frame reaches its session as a numbered [`crate::wire::Frame`], so per-link
//! acknowledgements and replay can be added here without touching the protocol logic. The
//! sessions start their link and supervise it: the writer tells its session when a write
//! fails, and ends on its own once the session closed the queue.

pub mod liveness;
pub mod pause;
pub mod queue;
pub mod reader;
pub mod sizing;
pub mod stream;
pub mod transport;
pub mod writer;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix::Recipient;
use futures_util::stream::Stream;
use tokio::io::{AsyncRead, AsyncWrite};

pub use liveness::{Liveness, Tick};
pub use queue::{LinkQueue, QueueBounds, QueueError, QueueTraffic};
pub use reader::FrameReader;
pub use transport::{Transport, TransportRead, TransportWrite};
pub use writer::WriterFailed;

use crate::wire::{Frame, FrameCodec, WireError};

/// Start the writer task of a link on the current arbiter; returns the queue producers push
/// to. `codec` carries the handshake's outbound sequence number.
pub fn spawn_writer<W: AsyncWrite + Unpin + 'static>(
    io: W,
    codec: FrameCodec,
    bounds: QueueBounds,
    on_fail: Recipient<WriterFailed>,
    last_word_timeout: Duration,
) -> Arc<LinkQueue> {
    let queue = Arc::new(LinkQueue::new(bounds));
    actix_rt::spawn(writer::write_loop(
        io,
        queue.clone(),
        codec,
        on_fail,
        last_word_timeout,
    ));
    queue
}

/// One read batch: the frames (or the error that ends the stream) ready at one wake-up.
/// Room a link's first read batch is given: an idle link (most of a large cluster's) never
/// needs more, and a busy one grows its batch to the maximum once and keeps it (the batch
/// comes back as the spare).
const FIRST_BATCH_FRAMES: usize = 16;

pub type ReadBatch = Vec<Result<Frame, WireError>>;

/// The read batch vector a session gives back to its reader once handled.
pub type SpareBatch = Rc<RefCell<Option<ReadBatch>>>;

/// The frames ready at each wake-up as one batch (`ready_chunks(max)` over a
/// [`FrameReader`]), in a vector the session handed back after the previous batch. Without
/// the reuse every batch is a fresh allocation of tens of KiB.
pub struct ReadyBatches<R> {
    frames: FrameReader<R>,
    spare: SpareBatch,
    max: usize,
}

impl<R> ReadyBatches<R> {
    pub fn new(frames: FrameReader<R>, spare: SpareBatch, max: usize) -> Self {
        ReadyBatches { frames, spare, max }
    }
}

impl<R: AsyncRead + Unpin> Stream for ReadyBatches<R> {
    type Item = ReadBatch;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<ReadBatch>> {
        let max = self.max;
        let mut batch = self
            .spare
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Vec::with_capacity(max.min(FIRST_BATCH_FRAMES)));
        let this = &mut *self;
        // The reader yields nothing more once it ended: every later poll is `None` too.
        let polled = this.frames.poll_frames(cx, &mut batch, max);
        if batch.is_empty() {
            *this.spare.borrow_mut() = Some(batch);
            return polled.map(|()| None);
        }
        Poll::Ready(Some(batch))
    }
}
