//! The write queue of one link: frames waiting for the link's writer task, bounded in count
//! AND in bytes, plus one reserved slot for the last word (the `error` or `bye` frame a close
//! sends). Shared by the link's producers (publishers, relaying sessions, the event bus's
//! application subscribers, Membership) and its writer; owned by no actor.
//!
//! Policy:
//! * A frame is admitted when fewer than `frames` are queued and its bytes fit under `bytes`
//!   (counting the frames the writer took but has not finished writing, so the writer's
//!   buffer is inside the bound). A frame larger than the byte bound is admitted only into an
//!   empty queue, so one maximum-size frame always gets through.
//! * A full queue refuses (`try_push`) or makes the producer wait ([`LinkQueue::push`]); a
//!   producer that waits keeps its own order, and nothing is ever reordered in the queue.
//! * [`LinkQueue::push_dropping_oldest`] (applications that asked for it) makes room by
//!   discarding the oldest droppable frames (event deliveries) and counts them.
//! * [`LinkQueue::close`] stores the last word outside the bounds, so it never waits for room
//!   in a full queue; after a close nothing more is admitted.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::wire::EncodedMessage;

/// The bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub frames: usize,
    pub bytes: usize,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the link's write queue is full")]
    Full,
    #[error("the link is closed")]
    Closed,
}

/// How the writer should end, once asked to.
#[derive(Debug)]
pub(crate) struct Ending {
    /// Write what is queued before the last word (a graceful close); otherwise it is dropped.
    pub flush: bool,
    pub last_word: Option<EncodedMessage>,
}

struct Entry {
    frame: EncodedMessage,
    /// May be discarded by `push_dropping_oldest` (an event delivery, not a reply).
    droppable: bool,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Entry>,
    /// Bytes of the queued frames plus those the writer is writing.
    bytes: usize,
    closing: Option<Ending>,
    /// The writer ended: nothing will be written any more.
    closed: bool,
    dropped: u64,
    /// Frames and bytes handed to the writer so far (for `/metrics`; counted per batch,
    /// under the lock `look` holds anyway).
    frames_out: u64,
    bytes_out: u64,
    /// The writer found nothing to do and waits to be woken: only then does a producer pay
    /// for a wake-up.
    writer_idle: bool,
    /// A producer waits for room: only then does the writer pay for waking producers.
    producers_waiting: bool,
}

/// A queue's counters at one moment (see [`LinkQueue::traffic`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTraffic {
    /// Frames waiting for the writer.
    pub queued_frames: u64,
    /// Bytes not yet written (waiting, or in the write under way).
    pub queued_bytes: u64,
    /// Frames handed to the writer since the queue was made.
    pub frames_out: u64,
    /// Their bytes (the length prefixes not included).
    pub bytes_out: u64,
}

/// See the module docs.
pub struct LinkQueue {
    bounds: QueueBounds,
    inner: Mutex<Inner>,
    /// Wakes the writer: a frame was queued, or a close was asked for.
    wake_writer: Notify,
    /// Wakes the writer in the middle of a write: a close was asked for.
    close_signal: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Writes that took bytes: a peer that reads anything at all moves it.
    progress: std::sync::atomic::AtomicU64,
}

/// What the writer takes next.
pub(crate) enum Next {
    /// Frames to write, and their bytes (hand them back with `written` once written).
    Frames(usize),
    End(Ending),
}

impl LinkQueue {
    pub fn new(bounds: QueueBounds) -> Self {
        LinkQueue {
            bounds,
            inner: Mutex::new(Inner::default()),
            wake_writer: Notify::new(),
            close_signal: Notify::new(),
            room: Notify::new(),
            progress: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn fits(&self, inner: &Inner, len: usize) -> bool {
        inner.queue.len() < self.bounds.frames
            && (inner.bytes + len <= self.bounds.bytes || inner.bytes == 0)
    }

    /// Queue `frame` if there is room.
    ///
    /// # Errors
    /// `Full` or `Closed`, with the frame handed back.
    pub fn try_push(&self, frame: EncodedMessage) -> Result<(), (QueueError, EncodedMessage)> {
        self.try_push_entry(frame, true)
    }

    /// As [`try_push`](Self::try_push), for a frame `push_dropping_oldest` must never discard.
    ///
    /// # Errors
    /// `Full` or `Closed`, with the frame handed back.
    pub fn try_push_kept(&self, frame: EncodedMessage) -> Result<(), (QueueError, EncodedMessage)> {
        self.try_push_entry(frame, false)
    }

    fn try_push_entry(
        &self,
        frame: EncodedMessage,
        droppable: bool,
    ) -> Result<(), (QueueError, EncodedMessage)> {
        let Ok(mut inner) = self.inner.lock() else {
            return Err((QueueError::Closed, frame));
        };
        if inner.closing.is_some() || inner.closed {
            return Err((QueueError::Closed, frame));
        }
        if !self.fits(&inner, frame.len()) {
            return Err((QueueError::Full, frame));
        }
        inner.bytes += frame.len();
        inner.queue.push_back(Entry { frame, droppable });
        let wake = std::mem::take(&mut inner.writer_idle);
        drop(inner);
        if wake {
            self.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Whether a frame of `len` bytes would be admitted now (a publisher checks every link of
    /// an event before queueing it on any, so a full link means nothing was sent).
    pub fn has_room(&self, len: usize) -> Result<(), QueueError> {
        let inner = self.inner.lock().map_err(|_| QueueError::Closed)?;
        if inner.closing.is_some() || inner.closed {
            Err(QueueError::Closed)
        } else if self.fits(&inner, len) {
            Ok(())
        } else {
            Err(QueueError::Full)
        }
    }

    /// Queue `frame` after `has_room` said yes: admitted even if another producer took the room
    /// meanwhile (an overshoot of at most one frame per concurrent publisher).
    pub fn push_checked(&self, frame: EncodedMessage) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.closing.is_some() || inner.closed {
            return;
        }
        inner.bytes += frame.len();
        inner.queue.push_back(Entry {
            frame,
            droppable: true,
        });
        let wake = std::mem::take(&mut inner.writer_idle);
        drop(inner);
        if wake {
            self.wake_writer.notify_one();
        }
    }

    /// Queue `frame`, waiting for room (backpressure); resolves in the order producers
    /// queue, each producer's frames in its own order.
    ///
    /// # Errors
    /// The link closed; the frame is handed back.
    pub async fn push(&self, frame: EncodedMessage) -> Result<(), EncodedMessage> {
        self.push_while_writing(frame, None)
            .await
            .map_err(|(_, frame)| frame)
    }

    /// As [`push`](Self::push), but giving up (`Full`, with the frame) once the writer wrote
    /// nothing for `stall`: the peer stopped reading. A peer that reads, however slowly, keeps
    /// the wait going.
    ///
    /// # Errors
    /// `Full` after a stall, or `Closed`; the frame is handed back.
    pub async fn push_unless_stalled(
        &self,
        frame: EncodedMessage,
        stall: std::time::Duration,
    ) -> Result<(), (QueueError, EncodedMessage)> {
        self.push_while_writing(frame, Some(stall)).await
    }

    async fn push_while_writing(
        &self,
        mut frame: EncodedMessage,
        stall: Option<std::time::Duration>,
    ) -> Result<(), (QueueError, EncodedMessage)> {
        use std::sync::atomic::Ordering;
        let mut seen = self.progress.load(Ordering::Relaxed);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before trying, so a release between the try and the wait is not missed.
            room.as_mut().enable();
            match self.try_push(frame) {
                Err((QueueError::Full, f)) => frame = f,
                done => return done,
            }
            // Ask to be woken, then look once more: room freed before the flag was seen is
            // found by this second try.
            if let Ok(mut inner) = self.inner.lock() {
                inner.producers_waiting = true;
            }
            match self.try_push(frame) {
                Err((QueueError::Full, f)) => frame = f,
                done => return done,
            }
            match stall {
                None => room.await,
                Some(stall) => {
                    if tokio::time::timeout(stall, room).await.is_err() {
                        let now = self.progress.load(Ordering::Relaxed);
                        if now == seen {
                            return Err((QueueError::Full, frame));
                        }
                        seen = now;
                    }
                }
            }
        }
    }

    /// Queue `frame`, discarding the oldest droppable frames until it fits; returns how many
    /// frames were discarded so far on this link.
    ///
    /// # Errors
    /// `Full` when discarding every droppable frame does not make room (the writer holds the
    /// rest), or `Closed`; the frame is handed back.
    pub fn push_dropping_oldest(
        &self,
        frame: EncodedMessage,
        droppable: bool,
    ) -> Result<u64, (QueueError, EncodedMessage)> {
        let Ok(mut inner) = self.inner.lock() else {
            return Err((QueueError::Closed, frame));
        };
        if inner.closing.is_some() || inner.closed {
            return Err((QueueError::Closed, frame));
        }
        while !self.fits(&inner, frame.len()) {
            let Some(i) = inner.queue.iter().position(|e| e.droppable) else {
                return Err((QueueError::Full, frame));
            };
            if let Some(e) = inner.queue.remove(i) {
                inner.bytes -= e.frame.len();
                inner.dropped += 1;
            }
        }
        inner.bytes += frame.len();
        inner.queue.push_back(Entry { frame, droppable });
        let dropped = inner.dropped;
        let wake = std::mem::take(&mut inner.writer_idle);
        drop(inner);
        if wake {
            self.wake_writer.notify_one();
        }
        Ok(dropped)
    }

    /// Ask the writer to end: with `flush`, after what is queued; otherwise at the end of the
    /// frame it is writing, dropping the rest. `last_word` goes out last, whole, whatever the
    /// bounds. Only the first close counts; returns whether this was it.
    pub fn close(&self, last_word: Option<EncodedMessage>, flush: bool) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        if inner.closing.is_some() || inner.closed {
            return false;
        }
        if !flush {
            let dropped: usize = inner.queue.drain(..).map(|e| e.frame.len()).sum();
            inner.bytes -= dropped;
        }
        inner.closing = Some(Ending { flush, last_word });
        drop(inner);
        self.wake_writer.notify_one();
        self.close_signal.notify_one();
        self.room.notify_waiters();
        true
    }

    /// Whether the link is closing or closed (nothing more is admitted).
    pub fn is_closed(&self) -> bool {
        self.inner
            .lock()
            .map(|i| i.closing.is_some() || i.closed)
            .unwrap_or(true)
    }

    /// The writer's side: wait for frames (moved into `out`, at most `max_frames` and, past the
    /// first, `max_bytes`) or for the end. With a graceful close the queue is drained first.
    pub(crate) async fn next(
        &self,
        out: &mut Vec<EncodedMessage>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Next {
        let mut woken = std::pin::pin!(self.wake_writer.notified());
        // First without registering for a wake-up: under load there are frames waiting.
        let mut registered = false;
        loop {
            let wait = match self.look(out, max_frames, max_bytes, registered) {
                Ok(wait) => wait,
                Err(next) => return next,
            };
            if wait {
                woken.as_mut().await;
                woken.set(self.wake_writer.notified());
            }
            // Registered before the next look, so a frame queued after it wakes this writer.
            woken.as_mut().enable();
            registered = true;
        }
    }

    /// One look at the queue for `next`: `Err` with what to return, or `Ok(true)` when the
    /// writer must wait (it is then marked idle, so that the next frame wakes it).
    fn look(
        &self,
        out: &mut Vec<EncodedMessage>,
        max_frames: usize,
        max_bytes: usize,
        registered: bool,
    ) -> Result<bool, Next> {
        let Ok(mut inner) = self.inner.lock() else {
            return Err(Next::End(Ending {
                flush: false,
                last_word: None,
            }));
        };
        let flushing = inner.closing.as_ref().is_none_or(|e| e.flush);
        if flushing && !inner.queue.is_empty() {
            let mut taken = 0;
            while let Some(e) = inner.queue.front() {
                if out.len() >= max_frames || (taken > 0 && taken + e.frame.len() > max_bytes) {
                    break;
                }
                taken += e.frame.len();
                if let Some(e) = inner.queue.pop_front() {
                    out.push(e.frame);
                }
            }
            inner.frames_out += out.len() as u64;
            inner.bytes_out += taken as u64;
            inner.writer_idle = false;
            let wake = std::mem::take(&mut inner.producers_waiting);
            drop(inner);
            // Slots were freed (bytes are freed by `written`).
            if wake {
                self.room.notify_waiters();
            }
            return Err(Next::Frames(taken));
        }
        if let Some(ending) = inner.closing.take() {
            inner.closed = true;
            return Err(Next::End(ending));
        }
        if registered {
            inner.writer_idle = true;
        }
        Ok(registered)
    }

    /// What the queue holds now and what it handed to its writer so far.
    pub fn traffic(&self) -> QueueTraffic {
        self.inner
            .lock()
            .map_or(QueueTraffic::default(), |inner| QueueTraffic {
                queued_frames: inner.queue.len() as u64,
                queued_bytes: inner.bytes as u64,
                frames_out: inner.frames_out,
                bytes_out: inner.bytes_out,
            })
    }

    /// The writer wrote some bytes: the peer reads.
    pub(crate) fn wrote_some(&self) {
        self.progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The writer finished writing `bytes` taken by `next`: their room is free again.
    pub(crate) fn written(&self, bytes: usize) {
        let wake = match self.inner.lock() {
            Ok(mut inner) => {
                inner.bytes = inner.bytes.saturating_sub(bytes);
                std::mem::take(&mut inner.producers_waiting)
            }
            Err(_) => true,
        };
        if wake {
            self.room.notify_waiters();
        }
    }

    /// Resolves when a close was asked for (the writer watches it while a write blocks).
    pub(crate) async fn close_asked(&self) {
        self.close_signal.notified().await;
    }

    /// The writer ended (a write failed, or it wrote the last word): refuse everything from now.
    pub(crate) fn shut(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.closed = true;
            inner.queue.clear();
            inner.bytes = 0;
        }
        self.room.notify_waiters();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A frame of about `len` bytes (a ping carrying `len` as its number, padded by a
    /// delivery payload); tests compare lengths through `EncodedMessage::len`.
    fn frame(len: usize) -> EncodedMessage {
        use crate::wire::{encode_message, Deliver, Message};
        let msg = Message::Deliver(Deliver {
            topic: "t".into(),
            from: "n".into(),
            payload: bytes::Bytes::from(vec![0u8; len]),
            id: 0,
            seq: 0,
            targeted: false,
            dropped: 0,
        });
        encode_message(&msg).unwrap()
    }

    #[test]
    fn queue_refuses_past_its_byte_bound_but_admits_one_oversized_frame_alone() {
        let q = LinkQueue::new(QueueBounds {
            frames: 100,
            bytes: 1000,
        });
        assert!(q.try_push(frame(500)).is_ok());
        assert_eq!(
            q.try_push(frame(600)).map_err(|e| e.0),
            Err(QueueError::Full)
        );
        let q = LinkQueue::new(QueueBounds {
            frames: 100,
            bytes: 1000,
        });
        assert!(
            q.try_push(frame(5000)).is_ok(),
            "alone, an oversized frame fits"
        );
        assert_eq!(q.try_push(frame(1)).map_err(|e| e.0), Err(QueueError::Full));
    }

    #[test]
    fn queue_refuses_past_its_frame_bound() {
        let q = LinkQueue::new(QueueBounds {
            frames: 2,
            bytes: 1 << 20,
        });
        assert!(q.try_push(frame(1)).is_ok());
        assert!(q.try_push(frame(1)).is_ok());
        assert_eq!(q.try_push(frame(1)).map_err(|e| e.0), Err(QueueError::Full));
    }

    #[test]
    fn dropping_oldest_discards_only_droppable_frames_and_counts_them() {
        let q = LinkQueue::new(QueueBounds {
            frames: 3,
            bytes: 1 << 20,
        });
        assert!(q.try_push_kept(frame(1)).is_ok());
        assert!(q.try_push(frame(2)).is_ok());
        assert!(q.try_push(frame(3)).is_ok());
        assert_eq!(q.push_dropping_oldest(frame(4), true).ok(), Some(1));
        assert_eq!(q.push_dropping_oldest(frame(5), true).ok(), Some(2));
        assert_eq!(q.push_dropping_oldest(frame(6), false).ok(), Some(3));
        assert_eq!(q.push_dropping_oldest(frame(7), false).ok(), Some(4));
        // Only kept frames are left: nothing more to discard.
        assert_eq!(
            q.push_dropping_oldest(frame(8), false).map_err(|e| e.0),
            Err(QueueError::Full)
        );
    }

    #[test]
    fn close_refuses_new_frames_and_keeps_the_last_word_outside_the_bounds() {
        let q = LinkQueue::new(QueueBounds {
            frames: 1,
            bytes: 10,
        });
        assert!(q.try_push(frame(10)).is_ok());
        let last = frame(100);
        let last_len = last.len();
        assert!(q.close(Some(last), false));
        assert!(!q.close(None, true), "only the first close counts");
        assert_eq!(
            q.try_push(frame(1)).map_err(|e| e.0),
            Err(QueueError::Closed)
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        match rt.block_on(q.next(&mut out, 10, 1000)) {
            Next::End(e) => {
                assert!(!e.flush);
                assert_eq!(e.last_word.map(|f| f.len()), Some(last_len));
                assert!(
                    out.is_empty(),
                    "a close without flush drops what was queued"
                );
            }
            Next::Frames(_) => panic!("frames after a close without flush"),
        }
    }

    #[test]
    fn traffic_counts_what_waits_and_what_the_writer_took() {
        let q = LinkQueue::new(QueueBounds {
            frames: 10,
            bytes: 10_000,
        });
        let (a, b) = (frame(1), frame(2));
        let (a_len, b_len) = (a.len() as u64, b.len() as u64);
        assert!(q.try_push(a).is_ok());
        assert!(q.try_push(b).is_ok());
        let t = q.traffic();
        assert_eq!((t.queued_frames, t.queued_bytes), (2, a_len + b_len));
        assert_eq!((t.frames_out, t.bytes_out), (0, 0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        let Next::Frames(bytes) = rt.block_on(q.next(&mut out, 10, 10_000)) else {
            panic!("expected frames")
        };
        q.written(bytes);
        let t = q.traffic();
        assert_eq!((t.queued_frames, t.queued_bytes), (0, 0));
        assert_eq!((t.frames_out, t.bytes_out), (2, a_len + b_len));
    }

    #[test]
    fn a_waiting_producer_is_admitted_once_the_writer_frees_room() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let q = std::sync::Arc::new(LinkQueue::new(QueueBounds {
            frames: 1,
            bytes: 1000,
        }));
        rt.block_on(async {
            assert!(q.try_push(frame(1)).is_ok());
            let q2 = q.clone();
            let second = frame(2);
            let second_len = second.len();
            let waiter = tokio::spawn(async move { q2.push(second).await.is_ok() });
            tokio::task::yield_now().await;
            let mut out = Vec::new();
            let Next::Frames(bytes) = q.next(&mut out, 10, 1000).await else {
                panic!("expected frames")
            };
            q.written(bytes);
            let admitted = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
            assert!(matches!(admitted, Ok(Ok(true))));
            out.clear();
            let Next::Frames(bytes) = q.next(&mut out, 10, 1000).await else {
                panic!("expected the waiter's frame")
            };
            assert_eq!(bytes, second_len);
        });
    }
}
