//! The stream of a resumable peer link (docs/PROTOCOL.md §7.6): per-peer state that outlives
//! one TCP connection.
//!
//! A **session** joins two node incarnations. Each direction of it is a stream of *stream
//! frames* (`event`, `peer_call`, `peer_reply`) numbered 1, 2, 3, … by their sender. The
//! receiver acknowledges cumulatively (`ack {seq}`); the sender keeps every frame it sent
//! until it is acknowledged, in a replay buffer. When a connection breaks and the next one
//! opens, each side states in its handshake the last seq it received, and the other side
//! replays what follows: nothing lost, nothing duplicated, order kept.
//!
//! This module is the pure state machine: no actix, no I/O, no clock (callers pass
//! [`Instant`]s), no randomness (callers pass fresh session ids). The peer's session owner
//! keeps one [`PeerStream`] per peer, across its connections, and feeds it:
//!
//! * [`OutStream::on_send`] for every stream frame it sends (→ its seq),
//!   [`OutStream::on_ack`] for every `ack` received;
//! * [`InStream::on_receive`] for every stream frame received (→ accept, duplicate or gap),
//!   [`InStream::ack_due`] / [`InStream::ack_deadline`] to schedule `ack`s;
//! * [`PeerStream::offer`] for its `hello`; as the acceptor [`answer_hello`] (before the
//!   dialler is authenticated: it changes nothing) then [`accept_session`] (after), as the
//!   dialler [`resume_dialled`]; then [`OutStream::unacked`] is the replay.
//!
//! Policies:
//!
//! * **Bounded in frames and bytes.** The replay buffer holds at most
//!   [`StreamLimits::max_frames`] frames and [`StreamLimits::max_bytes`] bytes. When a frame
//!   does not fit, [`OutStream::on_send`] gives it back ([`Full`]) and the producer waits
//!   (stops reading what feeds it) until an `ack` frees room: while the peer is alive nothing
//!   is dropped. A frame larger than the byte bound is admitted alone, into an empty buffer,
//!   so it cannot block the stream forever.
//! * **Dropped only when the session ends**: when the peer is declared down (failure timeout,
//!   or a new incarnation), or when a handshake shows that the other side no longer holds the
//!   session. What was buffered is then released and counted ([`Dropped`]) for one log line.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::wire::{EncodedMessage, Session};

/// A stream frame's sequence number: 1, 2, 3, … per direction of a session; 0 means none.
pub type Seq = u64;

/// Frames held for a replay, at most (the count bound).
pub const REPLAY_MAX_FRAMES: usize = 16_384;
/// Bytes held for a replay, at most (the byte bound), counted as encoded messages.
pub const REPLAY_MAX_BYTES: usize = 32 * 1024 * 1024;
/// A receiver acknowledges at the latest after this many stream frames…
pub const ACK_EVERY_FRAMES: u64 = 64;
/// …or this long after the oldest frame it has not acknowledged yet.
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// The bounds of one stream; the defaults are the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
    pub ack_every_frames: u64,
    pub ack_delay: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_frames: REPLAY_MAX_FRAMES,
            max_bytes: REPLAY_MAX_BYTES,
            ack_every_frames: ACK_EVERY_FRAMES,
            ack_delay: ACK_DELAY,
        }
    }
}

/// How many bytes a buffered frame counts for.
pub trait WireSize {
    fn wire_bytes(&self) -> usize;
}

impl WireSize for EncodedMessage {
    fn wire_bytes(&self) -> usize {
        self.len()
    }
}

/// What a session held for its peer when it ended: logged once, with the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    pub frames: usize,
    pub bytes: usize,
}

/// The replay buffer is full: the frame comes back, and the producer waits for an `ack`.
#[derive(Debug, PartialEq, Eq)]
pub struct Full<F>(pub F);

/// A peer broke the stream's rules; the link is closed with `error out_of_sequence`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("acknowledgement of seq {acked}, beyond the last frame sent ({last_sent})")]
    AckBeyondSent { acked: Seq, last_sent: Seq },
    #[error("peer resumes after seq {received}, beyond the last frame sent ({last_sent})")]
    ResumeBeyondSent { received: Seq, last_sent: Seq },
    #[error("peer starts a new session {id:#x} at seq {received} instead of 0")]
    NewSessionNotAtZero { id: u64, received: Seq },
    #[error("session {id:#x} ended while the handshake resuming it ran")]
    SessionChanged { id: u64 },
}

impl StreamError {
    /// The `error` code sent before closing: the peer broke the stream's rules, except for
    /// [`StreamError::SessionChanged`], which is this side's own state moving on.
    pub fn code(&self) -> &'static str {
        match self {
            StreamError::SessionChanged { .. } => "internal",
            _ => "out_of_sequence",
        }
    }
}

/// The sending half: numbering and the replay buffer.
#[derive(Debug)]
pub struct OutStream<F> {
    limits: StreamLimits,
    /// The highest seq the peer acknowledged (0: none yet).
    acked: Seq,
    /// Frames `acked + 1 ..= acked + buf.len()`, oldest first, with the bytes they count for.
    buf: VecDeque<(F, usize)>,
    bytes: usize,
}

impl<F: WireSize> OutStream<F> {
    fn new(limits: StreamLimits) -> Self {
        OutStream {
            limits,
            acked: 0,
            buf: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Whether a frame of `bytes` would be admitted now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.buf.is_empty()
            || (self.buf.len() < self.limits.max_frames
                && self.bytes.saturating_add(bytes) <= self.limits.max_bytes)
    }

    /// Number and keep a frame about to be sent.
    ///
    /// # Errors
    /// [`Full`] with the frame, when the buffer has no room for it: wait for an `ack`.
    pub fn on_send(&mut self, frame: F) -> Result<Seq, Full<F>> {
        let bytes = frame.wire_bytes();
        if !self.has_room(bytes) {
            return Err(Full(frame));
        }
        self.buf.push_back((frame, bytes));
        self.bytes += bytes;
        Ok(self.last_sent())
    }

    /// Number and keep a frame whatever the bounds: a producer that saw room (with
    /// [`OutStream::has_room`]) and lost it to another one meanwhile overshoots by one frame
    /// rather than losing it.
    pub fn force_send(&mut self, frame: F) -> Seq {
        let bytes = frame.wire_bytes();
        self.buf.push_back((frame, bytes));
        self.bytes += bytes;
        self.last_sent()
    }

    /// The peer received everything up to `seq`: release it. Returns the frames released (an
    /// old or repeated `ack` releases none).
    ///
    /// # Errors
    /// [`StreamError::AckBeyondSent`] when `seq` was never sent.
    pub fn on_ack(&mut self, seq: Seq) -> Result<usize, StreamError> {
        if seq > self.last_sent() {
            return Err(StreamError::AckBeyondSent {
                acked: seq,
                last_sent: self.last_sent(),
            });
        }
        let mut released = 0;
        while self.acked < seq {
            if let Some((_, bytes)) = self.buf.pop_front() {
                self.bytes -= bytes;
            }
            self.acked += 1;
            released += 1;
        }
        Ok(released)
    }

    /// A new connection: the peer received everything up to `peer_received`. Releases that,
    /// and returns what is to be replayed, in order.
    ///
    /// # Errors
    /// [`StreamError::ResumeBeyondSent`] if the peer claims more than was sent. A claim below
    /// what it acknowledged resumes after the acknowledged seq.
    pub fn resume_from(
        &mut self,
        peer_received: Seq,
    ) -> Result<impl Iterator<Item = (Seq, &F)>, StreamError> {
        self.release_for_resume(peer_received)?;
        Ok(self.unacked())
    }

    /// [`OutStream::resume_from`] without the replay.
    fn release_for_resume(&mut self, peer_received: Seq) -> Result<(), StreamError> {
        self.check_resume(peer_received)?;
        self.on_ack(peer_received).map(drop)
    }

    /// Whether the peer may resume after `peer_received`.
    fn check_resume(&self, peer_received: Seq) -> Result<(), StreamError> {
        // Below what the peer acknowledged is fine: it wrote its handshake while the old
        // connection still delivered (and it acknowledged) later frames. The replay starts
        // after the acknowledged seq, and the peer drops any repeat.
        if peer_received > self.last_sent() {
            return Err(StreamError::ResumeBeyondSent {
                received: peer_received,
                last_sent: self.last_sent(),
            });
        }
        Ok(())
    }

    /// The frames not acknowledged yet, oldest first, with their seq: after a resume, the
    /// replay.
    pub fn unacked(&self) -> impl Iterator<Item = (Seq, &F)> {
        let first = self.acked + 1;
        self.buf
            .iter()
            .enumerate()
            .map(move |(i, (f, _))| (first + i as u64, f))
    }

    /// The seq of the last frame sent (0: none).
    pub fn last_sent(&self) -> Seq {
        self.acked + self.buf.len() as u64
    }

    /// The highest seq acknowledged.
    pub fn acked(&self) -> Seq {
        self.acked
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn into_dropped(self) -> Dropped {
        Dropped {
            frames: self.buf.len(),
            bytes: self.bytes,
        }
    }
}

/// What to do with a stream frame received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// The next one: handle it.
    Accept,
    /// Already received (a replay overlapping what a stale connection delivered): drop it.
    Duplicate,
    /// Frames are missing before it: a broken peer; close with `out_of_sequence`.
    Gap { expected: Seq },
}

/// The receiving half: what was received, and when to acknowledge it.
#[derive(Debug, Clone)]
pub struct InStream {
    limits: StreamLimits,
    /// The last seq received in order (0: none).
    received: Seq,
    /// The last seq the peer was told of (by an `ack` or this side's handshake).
    told: Seq,
    /// When the oldest frame not yet acknowledged arrived.
    untold_since: Option<Instant>,
}

impl InStream {
    fn new(limits: StreamLimits) -> Self {
        InStream {
            limits,
            received: 0,
            told: 0,
            untold_since: None,
        }
    }

    /// Check a received stream frame's seq and count it if it is the next one.
    pub fn on_receive(&mut self, seq: Seq, now: Instant) -> Receive {
        if seq <= self.received {
            return Receive::Duplicate;
        }
        if seq != self.received + 1 {
            return Receive::Gap {
                expected: self.received + 1,
            };
        }
        self.received = seq;
        self.untold_since.get_or_insert(now);
        Receive::Accept
    }

    /// The `ack` to send now, if one is due: after [`StreamLimits::ack_every_frames`] frames,
    /// or [`StreamLimits::ack_delay`] after the oldest unacknowledged one.
    pub fn ack_due(&self, now: Instant) -> Option<Seq> {
        let since = self.untold_since?;
        let enough = self.received - self.told >= self.limits.ack_every_frames;
        let late = now.saturating_duration_since(since) >= self.limits.ack_delay;
        (enough || late).then_some(self.received)
    }

    /// When an `ack` falls due if no more frames come (for the caller's timer).
    pub fn ack_deadline(&self) -> Option<Instant> {
        self.untold_since.map(|t| t + self.limits.ack_delay)
    }

    /// The peer has been told `seq` (an `ack` sent, or this side's handshake).
    pub fn on_ack_sent(&mut self, seq: Seq) {
        self.told = self.told.max(seq.min(self.received));
        if self.told == self.received {
            self.untold_since = None;
        }
    }

    /// The last seq received in order.
    pub fn received(&self) -> Seq {
        self.received
    }
}

/// The `session` a handshake message carries: the session id, and the last seq its sender
/// received in it. On the wire, a dialler holding no session sends `{id: 0, received: 0}`;
/// session ids drawn by an acceptor are never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOffer {
    pub id: u64,
    pub received: Seq,
}

impl SessionOffer {
    /// The `session` of a `hello`: `None` (no session held) is `{id: 0, received: 0}`.
    pub fn to_hello(offer: Option<SessionOffer>) -> Session {
        offer.map_or(Session { id: 0, received: 0 }, Session::from)
    }

    /// A hello's `session` as an offer: `{id: 0, …}` asks for a new session.
    pub fn from_hello(session: Session) -> Option<SessionOffer> {
        (session.id != 0).then_some(SessionOffer::from(session))
    }
}

impl From<Session> for SessionOffer {
    fn from(s: Session) -> Self {
        SessionOffer {
            id: s.id,
            received: s.received,
        }
    }
}

impl From<SessionOffer> for Session {
    fn from(o: SessionOffer) -> Self {
        Session {
            id: o.id,
            received: o.received,
        }
    }
}

/// Both directions of one session with one peer incarnation.
#[derive(Debug)]
pub struct PeerStream<F> {
    id: u64,
    peer_incarnation: Uuid,
    out: OutStream<F>,
    inbound: InStream,
}

impl<F: WireSize> PeerStream<F> {
    /// A new session, numbering from 1 in both directions.
    pub fn new(id: u64, peer_incarnation: Uuid, limits: StreamLimits) -> Self {
        PeerStream {
            id,
            peer_incarnation,
            out: OutStream::new(limits),
            inbound: InStream::new(limits),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn peer_incarnation(&self) -> Uuid {
        self.peer_incarnation
    }

    /// What this side's handshake message carries for this session.
    pub fn offer(&self) -> SessionOffer {
        SessionOffer {
            id: self.id,
            received: self.inbound.received,
        }
    }

    pub fn out(&self) -> &OutStream<F> {
        &self.out
    }

    pub fn out_mut(&mut self) -> &mut OutStream<F> {
        &mut self.out
    }

    pub fn inbound(&self) -> &InStream {
        &self.inbound
    }

    pub fn inbound_mut(&mut self) -> &mut InStream {
        &mut self.inbound
    }

    /// End the session (the peer was declared down): what was buffered, counted.
    pub fn into_dropped(self) -> Dropped {
        self.out.into_dropped()
    }
}

/// The outcome of a handshake for the session with that peer.
#[derive(Debug)]
pub struct Resumed<F> {
    /// The session from now on; its [`OutStream::unacked`] frames are to be replayed first.
    pub stream: PeerStream<F>,
    /// True if the session held before goes on; false if a new one starts.
    pub resumed: bool,
    /// What a session that ended here held (nothing when it was resumed).
    pub dropped: Dropped,
}

/// The acceptor's answer to a `hello` from `peer_incarnation` offering `offer` (`None` when
/// the hello carried `{id: 0, received: 0}`): the `session` of its `hello_ack`. It resumes
/// the session `held` with that peer if the offer names it, and otherwise names a new session
/// `fresh_id` (random; never 0, never the offered id).
///
/// This changes nothing: the dialler is not authenticated yet. Once it is (its `auth`
/// verified), [`accept_session`] carries the decision out.
///
/// # Errors
/// [`StreamError`] when the offer names the held session but a seq it cannot have.
pub fn answer_hello<F: WireSize>(
    held: Option<&PeerStream<F>>,
    peer_incarnation: Uuid,
    offer: Option<SessionOffer>,
    fresh_id: u64,
) -> Result<SessionOffer, StreamError> {
    match (held, offer) {
        (Some(stream), Some(offer)) if resumes(stream, peer_incarnation, offer.id) => {
            stream.out.check_resume(offer.received)?;
            Ok(stream.offer())
        }
        _ => {
            let mut id = fresh_id.max(1);
            if offer.is_some_and(|o| o.id == id) {
                id = id.wrapping_add(1).max(1);
            }
            Ok(SessionOffer { id, received: 0 })
        }
    }
}

fn resumes<F>(stream: &PeerStream<F>, peer_incarnation: Uuid, id: u64) -> bool {
    stream.peer_incarnation == peer_incarnation && stream.id == id
}

/// The acceptor carries out its `answered` (from [`answer_hello`]) once the dialler is
/// authenticated: the held session goes on, or it ends and the answered one starts.
///
/// # Errors
/// [`StreamError::SessionChanged`] if the answer resumed a session that ended meanwhile (the
/// connection is closed; the dialler's next hello starts a new one), or a [`StreamError`] of
/// the offer's seq.
pub fn accept_session<F: WireSize>(
    held: Option<PeerStream<F>>,
    peer_incarnation: Uuid,
    offer: Option<SessionOffer>,
    answered: SessionOffer,
    limits: StreamLimits,
) -> Result<Resumed<F>, StreamError> {
    match (held, offer) {
        (Some(mut stream), Some(offer))
            if resumes(&stream, peer_incarnation, offer.id) && answered.id == offer.id =>
        {
            stream.out.release_for_resume(offer.received)?;
            // The peer knows what the hello_ack said; frames an old connection delivered
            // since are acknowledged by the next `ack`.
            stream.inbound.on_ack_sent(answered.received);
            Ok(Resumed {
                stream,
                resumed: true,
                dropped: Dropped::default(),
            })
        }
        (held, offer) => {
            if answered.received != 0 || offer.is_some_and(|o| o.id == answered.id) {
                return Err(StreamError::SessionChanged { id: answered.id });
            }
            Ok(Resumed {
                stream: PeerStream::new(answered.id, peer_incarnation, limits),
                resumed: false,
                dropped: held.map(PeerStream::into_dropped).unwrap_or_default(),
            })
        }
    }
}

/// The dialler's decision, on the `hello_ack` of `peer_incarnation` answering `answer`. Its
/// `hello` carried `offered`: [`PeerStream::offer`] of the session it `held` with that peer
/// (the peer's incarnation was not known yet), or nothing.
///
/// # Errors
/// [`StreamError`] when the answer resumes with a seq this side cannot have, or starts a new
/// session anywhere but at 0.
pub fn resume_dialled<F: WireSize>(
    held: Option<PeerStream<F>>,
    offered: Option<SessionOffer>,
    peer_incarnation: Uuid,
    answer: SessionOffer,
    limits: StreamLimits,
) -> Result<Resumed<F>, StreamError> {
    match (held, offered) {
        (Some(mut stream), Some(offered))
            if stream.peer_incarnation == peer_incarnation
                && stream.id == offered.id
                && answer.id == offered.id =>
        {
            stream.out.release_for_resume(answer.received)?;
            // The peer knows what the hello said; frames a stale connection delivered since
            // are acknowledged by the next `ack`.
            stream.inbound.on_ack_sent(offered.received);
            Ok(Resumed {
                stream,
                resumed: true,
                dropped: Dropped::default(),
            })
        }
        (held, _) => {
            if answer.received != 0 {
                return Err(StreamError::NewSessionNotAtZero {
                    id: answer.id,
                    received: answer.received,
                });
            }
            Ok(Resumed {
                stream: PeerStream::new(answer.id, peer_incarnation, limits),
                resumed: false,
                dropped: held.map(PeerStream::into_dropped).unwrap_or_default(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
