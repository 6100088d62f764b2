//! Streams: the per-peer stream state of resumable peer links (docs/PROTOCOL.md §7.6), which
//! outlives one connection. Not an actor: one [`Slot`] per peer incarnation, held in
//! `NodeShared` behind a lock (one registry, one lock per slot), written by the peer's
//! sessions (attach, receive, acknowledge), by the handshakes of PeerListener and Upstream
//! (offer, answer, resume), by producers through [`PeerTx`], and ended by Membership when the
//! peer is declared down.
//!
//! Policy:
//! * Every stream frame sent to a peer is numbered and kept in the slot's replay buffer
//!   (bounded in frames and bytes, see `link::stream`) *before* it is queued on the current
//!   connection; a connection that breaks loses nothing, since the next one replays what was
//!   not acknowledged. Without a connection, frames wait in the replay buffer.
//! * A full replay buffer stops producers as a full link queue does: `try_push` says `Full`,
//!   `push` waits for an `ack` to free room. Nothing is dropped while the peer lives.
//! * The stream ends when the peer is declared down (failure timeout; if a connection still
//!   carries the stream then, when that connection ends, unless the peer is up again first),
//!   when a new incarnation of it links, or when it says goodbye on its current connection:
//!   what was buffered is dropped, counted, and logged once at WARN with the count.
//! * Frames received are handed on in stream order across connections. A session that
//!   accepted stream frames and waits for room where they go (a full link it relays to)
//!   *holds* the slot's inbound side ([`Slot::hold_inbound`]); a session of a fresher
//!   connection to the same peer hands nothing on until that is released
//!   ([`Slot::inbound_turn`]). Otherwise the fresh connection's replay of the frames after
//!   the held ones could overtake them (a re-dial while the old connection's reads were held
//!   back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::link::stream::{
    accept_session, answer_hello, resume_dialled, Dropped, PeerStream, Receive, Seq, SessionOffer,
    StreamError, StreamLimits,
};
use crate::link::{LinkQueue, QueueError};
use crate::wire::{EncodedMessage, FrameCodec, Session};

type Stream = PeerStream<EncodedMessage>;

/// The per-peer streams of this node.
#[derive(Default)]
pub struct Streams {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    limits: StreamLimits,
}

/// One peer's stream and the connection it currently rides on.
pub struct Slot {
    peer: String,
    state: Mutex<SlotState>,
    /// Wakes producers waiting for room in the replay buffer (an `ack`, or the end).
    room: Notify,
    producers_waiting: AtomicBool,
    /// Wakes sessions waiting for another connection's session to hand on what it accepted.
    inbound_free: Notify,
}

struct SlotState {
    /// `None` on a plain (version 1) link: frames go straight to the queue.
    stream: Option<Stream>,
    resumable: bool,
    ended: bool,
    /// The current connection: its link id and write queue.
    queue: Option<(u64, Arc<LinkQueue>)>,
    /// The peer was declared down while a connection still carried the stream: the stream
    /// ends when that connection does (unless a fresh one attached meanwhile).
    down: bool,
    /// The connection whose session accepted stream frames it has not handed on yet (it
    /// waits for room where they go): no other connection's session hands any on meanwhile.
    inbound_held: Option<u64>,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Streams {
            slots: Mutex::default(),
            limits,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live_slot(&self, peer: &str) -> Option<Arc<Slot>> {
        self.slots().get(peer).filter(|s| !s.state().ended).cloned()
    }

    /// What a `hello` to `peer` offers: the session held with it, if any.
    pub fn offer(&self, peer: &str) -> Session {
        let offer = self
            .live_slot(peer)
            .and_then(|s| s.state().stream.as_ref().map(PeerStream::offer));
        SessionOffer::to_hello(offer)
    }

    /// The acceptor's answer to a `hello` (changes nothing: the dialler is not authenticated).
    ///
    /// # Errors
    /// [`StreamError`] when the hello names the held session with a seq it cannot have.
    pub fn answer(
        &self,
        peer: &str,
        incarnation: Uuid,
        hello: Session,
    ) -> Result<Session, StreamError> {
        let slot = self.live_slot(peer);
        let st = slot.as_ref().map(|s| s.state());
        let held = st.as_ref().and_then(|st| st.stream.as_ref());
        let fresh = Uuid::new_v4().as_u64_pair().0;
        answer_hello(held, incarnation, SessionOffer::from_hello(hello), fresh).map(Session::from)
    }

    /// The acceptor, once the dialler is authenticated: resume or start the session.
    ///
    /// # Errors
    /// [`StreamError`] (the link is closed with its code).
    pub fn accepted(
        &self,
        peer: &str,
        incarnation: Uuid,
        hello: Session,
        answered: Session,
    ) -> Result<Arc<Slot>, StreamError> {
        let limits = self.limits;
        self.settle(peer, |held| {
            accept_session(
                held,
                incarnation,
                SessionOffer::from_hello(hello),
                answered.into(),
                limits,
            )
        })
    }

    /// The dialler, on the acceptor's answer: resume or start the session.
    ///
    /// # Errors
    /// [`StreamError`] (the link is closed with its code).
    pub fn dialled(
        &self,
        peer: &str,
        incarnation: Uuid,
        offered: Session,
        answer: Session,
    ) -> Result<Arc<Slot>, StreamError> {
        let limits = self.limits;
        self.settle(peer, |held| {
            resume_dialled(
                held,
                SessionOffer::from_hello(offered),
                incarnation,
                answer.into(),
                limits,
            )
        })
    }

    /// Run a handshake's decision on the stream held with `peer`: the same slot goes on when
    /// the session resumes; otherwise the old one ends (counted) and a new slot starts.
    fn settle(
        &self,
        peer: &str,
        decide: impl FnOnce(
            Option<Stream>,
        )
            -> Result<crate::link::stream::Resumed<EncodedMessage>, StreamError>,
    ) -> Result<Arc<Slot>, StreamError> {
        let mut slots = self.slots();
        let slot = slots.get(peer).filter(|s| !s.state().ended).cloned();
        let (held, before) = match &slot {
            Some(s) => {
                let mut st = s.state();
                let held = st.stream.take();
                let before = held.as_ref().map(|h| Dropped {
                    frames: h.out().len(),
                    bytes: h.out().bytes(),
                });
                (held, before.unwrap_or_default())
            }
            None => (None, Dropped::default()),
        };
        match decide(held) {
            Ok(r) if r.resumed => {
                let slot = slot.unwrap_or_else(|| Slot::new(peer, true));
                slot.state().stream = Some(r.stream);
                slots.insert(peer.to_owned(), slot.clone());
                Ok(slot)
            }
            Ok(r) => {
                if let Some(old) = slot {
                    old.end(r.dropped, "a new session with it started");
                }
                let fresh = Slot::new(peer, true);
                fresh.state().stream = Some(r.stream);
                slots.insert(peer.to_owned(), fresh.clone());
                Ok(fresh)
            }
            Err(e) => {
                if let Some(old) = slots.remove(peer) {
                    old.end(before, "its handshake broke the stream's rules");
                }
                Err(e)
            }
        }
    }

    /// The peer was declared down: end its stream unless a connection carries it (a live
    /// connection is the peer's own proof of life; its session ends it if it breaks).
    pub fn end_if_cut(&self, peer: &str, why: &str) {
        let cut = self.slots().get(peer).is_some_and(|s| {
            let mut st = s.state();
            // Otherwise the stream ends with the connection that carries it.
            st.down = st.queue.is_some();
            !st.down
        });
        if cut {
            self.end(peer, why);
        }
    }

    /// The peer is up again: a connection that still carries its stream no longer ends it.
    pub fn up_again(&self, peer: &str) {
        if let Some(slot) = self.slots().get(peer) {
            slot.state().down = false;
        }
    }

    /// End the stream with `peer` (logged once, with what it held).
    pub fn end(&self, peer: &str, why: &str) {
        let slot = self.slots().remove(peer);
        if let Some(slot) = slot {
            let dropped = slot.state().stream.take().map(Stream::into_dropped);
            slot.end(dropped.unwrap_or_default(), why);
        }
    }
}

impl Slot {
    fn new(peer: &str, resumable: bool) -> Arc<Slot> {
        Arc::new(Slot {
            peer: peer.to_owned(),
            state: Mutex::new(SlotState {
                stream: None,
                resumable,
                ended: false,
                queue: None,
                down: false,
                inbound_held: None,
            }),
            room: Notify::new(),
            producers_waiting: AtomicBool::new(false),
            inbound_free: Notify::new(),
        })
    }

    /// The slot of a plain (not resumable) link: frames go straight to its queue.
    pub fn plain(peer: &str) -> Arc<Slot> {
        Slot::new(peer, false)
    }

    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_resumable(&self) -> bool {
        self.state().resumable
    }

    pub fn is_ended(&self) -> bool {
        self.state().ended
    }

    fn end(&self, dropped: Dropped, why: &str) {
        let mut st = self.state();
        if std::mem::replace(&mut st.ended, true) {
            return;
        }
        st.stream = None;
        let queue = st.queue.take();
        drop(st);
        if dropped.frames > 0 {
            tracing::warn!(peer = %self.peer,
                "stream to {} ended ({why}): {} frames ({} bytes) not acknowledged by it were dropped",
                self.peer, dropped.frames, dropped.bytes);
        } else {
            tracing::debug!(peer = %self.peer, "stream to {} ended ({why}); nothing was pending", self.peer);
        }
        if let Some((_, q)) = queue {
            q.close(None, false);
        }
        self.room.notify_waiters();
        self.inbound_free.notify_waiters();
    }

    /// The session of connection `link_id` accepted stream frames it cannot hand on yet:
    /// until it releases them, other connections' sessions wait (see the module docs).
    pub fn hold_inbound(&self, link_id: u64) {
        self.state().inbound_held = Some(link_id);
    }

    /// The session of connection `link_id` handed on what it held (or ended).
    pub fn release_inbound(&self, link_id: u64) {
        let mut st = self.state();
        if st.inbound_held == Some(link_id) {
            st.inbound_held = None;
            drop(st);
            self.inbound_free.notify_waiters();
        }
    }

    /// Whether another connection's session holds frames it accepted: the session of
    /// `link_id` must wait for [`Slot::inbound_turn`] before it hands any on.
    pub fn inbound_held_by_other(&self, link_id: u64) -> bool {
        let st = self.state();
        !st.ended && st.inbound_held.is_some_and(|held| held != link_id)
    }

    /// Resolves once no other connection's session than `link_id`'s holds frames it
    /// accepted (or the stream ended).
    pub fn inbound_turn(
        self: &Arc<Self>,
        link_id: u64,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let slot = self.clone();
        async move {
            loop {
                let free = slot.inbound_free.notified();
                tokio::pin!(free);
                free.as_mut().enable();
                if !slot.inbound_held_by_other(link_id) {
                    return;
                }
                free.await;
            }
        }
    }

    /// A connection starts on this slot: `spawn` starts its writer with `codec` (numbered
    /// where the replay starts); the frames not acknowledged are queued first, in order.
    pub fn attach(
        &self,
        link_id: u64,
        mut codec: FrameCodec,
        spawn: impl FnOnce(FrameCodec) -> Arc<LinkQueue>,
    ) -> Arc<LinkQueue> {
        let mut st = self.state();
        let first = st.stream.as_ref().map_or(1, |s| s.out().acked() + 1);
        codec.set_next_stream_seq(first);
        let queue = spawn(codec);
        if let Some(stream) = &st.stream {
            for (_, frame) in stream.out().unacked() {
                queue.push_checked(frame.clone());
            }
        }
        if !st.ended {
            st.queue = Some((link_id, queue.clone()));
            st.down = false;
        }
        queue
    }

    /// The connection `link_id` ended; frames wait in the replay buffer for the next one.
    pub fn detach(&self, link_id: u64) {
        let mut st = self.state();
        if st.queue.as_ref().is_some_and(|(id, _)| *id == link_id) {
            st.queue = None;
            if st.down {
                let dropped = st.stream.take().map(Stream::into_dropped);
                drop(st);
                self.end(
                    dropped.unwrap_or_default(),
                    "it was declared down, and its last connection ended",
                );
            }
        }
    }

    /// Whether `link_id` is the connection this slot rides on now.
    pub fn is_current(&self, link_id: u64) -> bool {
        self.state()
            .queue
            .as_ref()
            .is_some_and(|(id, _)| *id == link_id)
    }

    /// A stream frame with `seq` arrived.
    pub fn on_receive(&self, seq: Seq, now: Instant) -> Receive {
        match self.state().stream.as_mut() {
            Some(s) => s.inbound_mut().on_receive(seq, now),
            None => Receive::Duplicate,
        }
    }

    /// The `ack` due now, if any.
    pub fn ack_due(&self, now: Instant) -> Option<Seq> {
        self.state()
            .stream
            .as_ref()
            .and_then(|s| s.inbound().ack_due(now))
    }

    /// When an `ack` falls due if no more frames come, if one is owed.
    pub fn ack_deadline(&self) -> Option<Instant> {
        self.state()
            .stream
            .as_ref()
            .and_then(|s| s.inbound().ack_deadline())
    }

    pub fn ack_sent(&self, seq: Seq) {
        if let Some(s) = self.state().stream.as_mut() {
            s.inbound_mut().on_ack_sent(seq);
        }
    }

    /// The peer acknowledged up to `seq`.
    ///
    /// # Errors
    /// [`StreamError::AckBeyondSent`].
    pub fn on_ack(&self, seq: Seq) -> Result<(), StreamError> {
        let released = match self.state().stream.as_mut() {
            Some(s) => s.out_mut().on_ack(seq)?,
            None => 0,
        };
        if released > 0 && self.producers_waiting.swap(false, Ordering::AcqRel) {
            self.room.notify_waiters();
        }
        Ok(())
    }
}

/// How producers send to a peer: through its stream on a resumable link, straight to the
/// connection's queue otherwise. Outlives the connection on a resumable link.
#[derive(Clone)]
pub struct PeerTx(pub Arc<Slot>);

impl PeerTx {
    /// Queue `frame` if there is room.
    ///
    /// # Errors
    /// `Full` or `Closed`, with the frame handed back.
    pub fn try_push(&self, frame: EncodedMessage) -> Result<(), (QueueError, EncodedMessage)> {
        let mut st = self.0.state();
        if st.ended {
            return Err((QueueError::Closed, frame));
        }
        let SlotState { stream, queue, .. } = &mut *st;
        match stream {
            Some(stream) if frame.is_stream() => {
                if !stream.out().has_room(frame.len()) {
                    return Err((QueueError::Full, frame));
                }
                stream.out_mut().force_send(frame.clone());
                if let Some((_, q)) = queue {
                    q.push_checked(frame);
                }
                Ok(())
            }
            _ => match queue {
                Some((_, q)) => q.try_push(frame),
                None => Err((QueueError::Closed, frame)),
            },
        }
    }

    /// Whether a frame of `len` bytes would be admitted now.
    ///
    /// # Errors
    /// `Full` or `Closed`.
    pub fn has_room(&self, len: usize) -> Result<(), QueueError> {
        let st = self.0.state();
        if st.ended {
            return Err(QueueError::Closed);
        }
        match (&st.stream, &st.queue) {
            (Some(s), _) => {
                if s.out().has_room(len) {
                    Ok(())
                } else {
                    Err(QueueError::Full)
                }
            }
            (None, Some((_, q))) => q.has_room(len),
            (None, None) => Err(QueueError::Closed),
        }
    }

    /// Queue `frame` after `has_room` said yes (an overshoot of one frame at most per
    /// concurrent producer).
    pub fn push_checked(&self, frame: EncodedMessage) {
        let mut st = self.0.state();
        if st.ended {
            return;
        }
        let SlotState { stream, queue, .. } = &mut *st;
        if let Some(stream) = stream {
            if frame.is_stream() {
                stream.out_mut().force_send(frame.clone());
            }
        }
        if let Some((_, q)) = queue {
            q.push_checked(frame);
        }
    }

    /// Queue `frame`, waiting for room (backpressure), in the order producers queue.
    ///
    /// # Errors
    /// The link (or stream) closed; the frame is handed back.
    pub async fn push(&self, mut frame: EncodedMessage) -> Result<(), EncodedMessage> {
        loop {
            if !self.0.is_resumable() {
                let queue = self.0.state().queue.as_ref().map(|(_, q)| q.clone());
                return match queue {
                    Some(q) => q.push(frame).await,
                    None => Err(frame),
                };
            }
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(frame) {
                Err((QueueError::Full, f)) => frame = f,
                Err((QueueError::Closed, f)) => return Err(f),
                Ok(()) => return Ok(()),
            }
            self.0.producers_waiting.store(true, Ordering::Release);
            match self.try_push(frame) {
                Err((QueueError::Full, f)) => frame = f,
                Err((QueueError::Closed, f)) => return Err(f),
                Ok(()) => return Ok(()),
            }
            room.await;
        }
    }

    /// The current connection's write queue: what waits in it and what it sent (zeros between
    /// connections). For `/metrics`: takes two locks, never on a hot path.
    pub fn traffic(&self) -> crate::link::QueueTraffic {
        let queue = self.0.state().queue.as_ref().map(|(_, q)| q.clone());
        queue.map(|q| q.traffic()).unwrap_or_default()
    }

    /// Whether nothing more is admitted: the stream ended, or a plain link closed.
    pub fn is_closed(&self) -> bool {
        let st = self.0.state();
        st.ended || (!st.resumable && st.queue.as_ref().is_none_or(|(_, q)| q.is_closed()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::link::QueueBounds;
    use crate::wire::{encode_message, Message, Ping};
    use std::time::Duration;

    fn event_frame() -> EncodedMessage {
        let env = crate::wire::Envelope {
            origin: "a".into(),
            origin_incarnation: Uuid::nil(),
            id: 1,
            seq: 1,
            topic: "t".into(),
            target: None,
            ttl: 3,
            payload: bytes::Bytes::from_static(&[1, 2, 3]),
        };
        encode_message(&Message::Event(env)).unwrap()
    }

    fn connected(
        streams: &Streams,
        peer: &str,
        inc: Uuid,
        link_id: u64,
    ) -> (Arc<Slot>, Arc<LinkQueue>) {
        let answer = Session { id: 7, received: 0 };
        let slot = streams
            .dialled(peer, inc, Session { id: 0, received: 0 }, answer)
            .unwrap();
        let q = slot.attach(link_id, FrameCodec::new(1 << 20), |_| {
            Arc::new(LinkQueue::new(QueueBounds {
                frames: 4,
                bytes: 1 << 20,
            }))
        });
        (slot, q)
    }

    #[test]
    fn stream_frames_are_told_apart_from_control_frames_without_decoding() {
        assert!(event_frame().is_stream());
        assert!(!encode_message(&Message::Ping(Ping { n: 1 }))
            .unwrap()
            .is_stream());
    }

    #[test]
    fn frames_sent_while_cut_wait_in_the_stream_and_are_queued_first_on_the_next_connection() {
        let streams = Streams::new(StreamLimits::default());
        let inc = Uuid::new_v4();
        let (slot, _) = connected(&streams, "b", inc, 1);
        let tx = PeerTx(slot.clone());
        tx.try_push(event_frame()).unwrap();
        slot.detach(1);
        tx.try_push(event_frame()).unwrap();
        tx.try_push(event_frame()).unwrap();
        // The peer received the first frame; it resumes after it.
        let offered = streams.offer("b");
        assert_eq!(offered, Session { id: 7, received: 0 });
        let resumed = streams
            .dialled("b", inc, offered, Session { id: 7, received: 1 })
            .unwrap();
        assert!(Arc::ptr_eq(&resumed, &slot));
        let q = slot.attach(2, FrameCodec::new(1 << 20), |_| {
            Arc::new(LinkQueue::new(QueueBounds {
                frames: 4,
                bytes: 1 << 20,
            }))
        });
        assert!(!q.is_closed());
        assert_eq!(slot.state().stream.as_ref().unwrap().out().len(), 2);
    }

    #[test]
    fn a_new_incarnation_ends_the_stream_and_its_producers_see_it_closed() {
        let streams = Streams::new(StreamLimits::default());
        let (slot, _) = connected(&streams, "b", Uuid::new_v4(), 1);
        let tx = PeerTx(slot);
        tx.try_push(event_frame()).unwrap();
        let (_fresh, _) = connected(&streams, "b", Uuid::new_v4(), 2);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_push(event_frame()),
            Err((QueueError::Closed, _))
        ));
    }

    #[test]
    fn a_peer_declared_down_while_connected_loses_its_stream_when_that_connection_ends() {
        let streams = Streams::new(StreamLimits::default());
        let (slot, _) = connected(&streams, "b", Uuid::new_v4(), 1);
        let tx = PeerTx(slot.clone());
        tx.try_push(event_frame()).unwrap();
        streams.end_if_cut("b", "it was declared down");
        assert!(!slot.is_ended(), "a connection still carries the stream");
        slot.detach(1);
        assert!(slot.is_ended());
        assert!(tx.is_closed());
    }

    #[test]
    fn a_full_replay_buffer_refuses_until_an_ack_frees_room() {
        let limits = StreamLimits {
            max_frames: 2,
            ..StreamLimits::default()
        };
        let streams = Streams::new(limits);
        let (slot, _) = connected(&streams, "b", Uuid::new_v4(), 1);
        let tx = PeerTx(slot.clone());
        tx.try_push(event_frame()).unwrap();
        tx.try_push(event_frame()).unwrap();
        assert!(matches!(
            tx.try_push(event_frame()),
            Err((QueueError::Full, _))
        ));
        slot.on_ack(1).unwrap();
        tx.try_push(event_frame()).unwrap();
        assert!(slot.on_ack(9).is_err());
    }

    #[tokio::test]
    async fn a_fresh_connection_hands_nothing_on_while_an_older_one_holds_what_it_accepted() {
        use futures_util::FutureExt;
        let streams = Streams::new(StreamLimits::default());
        let (slot, _) = connected(&streams, "b", Uuid::new_v4(), 1);
        // Connection 1's session accepted frames and waits for room where they go.
        slot.hold_inbound(1);
        assert!(!slot.inbound_held_by_other(1), "the holder goes on");
        assert!(slot.inbound_held_by_other(2));
        let turn = slot.inbound_turn(2);
        tokio::pin!(turn);
        assert!((&mut turn).now_or_never().is_none());
        slot.release_inbound(2); // not the holder: changes nothing
        assert!((&mut turn).now_or_never().is_none());
        slot.release_inbound(1);
        tokio::time::timeout(Duration::from_secs(5), turn)
            .await
            .expect("connection 2 gets its turn once connection 1 handed its frames on");
        assert!(!slot.inbound_held_by_other(2));
        // A stream that ends frees whoever waits.
        slot.hold_inbound(1);
        let turn = slot.inbound_turn(2);
        streams.end("b", "test");
        tokio::time::timeout(Duration::from_secs(5), turn)
            .await
            .expect("an ended stream holds nobody back");
    }
}
