//! The stream state machine: unit tests of each rule, and simulations of two nodes whose
//! connection is cut at random points, checking that every frame arrives once and in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::*;

/// A frame that counts for `1` byte per unit of its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    value: u64,
    size: usize,
}

impl WireSize for Item {
    fn wire_bytes(&self) -> usize {
        self.size
    }
}

fn item(value: u64) -> Item {
    Item { value, size: 10 }
}

fn limits(max_frames: usize, max_bytes: usize) -> StreamLimits {
    StreamLimits {
        max_frames,
        max_bytes,
        ack_every_frames: 4,
        ack_delay: Duration::from_millis(20),
    }
}

fn inc(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn stream(id: u64) -> PeerStream<Item> {
    PeerStream::new(id, inc(2), limits(8, 1000))
}

// ---------------------------------------------------------------------------------------
// Sending, acknowledging, bounds

#[test]
fn frames_are_numbered_from_one_and_released_by_cumulative_acks() {
    let mut s = stream(1);
    let seqs: Vec<Seq> = (0..5)
        .map(|v| s.out_mut().on_send(item(v)).unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!((s.out().len(), s.out().bytes()), (5, 50));
    assert_eq!(s.out_mut().on_ack(3).unwrap(), 3);
    assert_eq!(
        s.out_mut().on_ack(2).unwrap(),
        0,
        "an old ack releases nothing"
    );
    let left: Vec<Seq> = s.out().unacked().map(|(seq, _)| seq).collect();
    assert_eq!(left, vec![4, 5]);
    assert_eq!((s.out().acked(), s.out().bytes()), (3, 20));
}

#[test]
fn an_ack_beyond_what_was_sent_is_an_error() {
    let mut s = stream(1);
    s.out_mut().on_send(item(0)).unwrap();
    assert_eq!(
        s.out_mut().on_ack(2),
        Err(StreamError::AckBeyondSent {
            acked: 2,
            last_sent: 1
        })
    );
    assert_eq!(
        StreamError::AckBeyondSent {
            acked: 0,
            last_sent: 0
        }
        .code(),
        "out_of_sequence"
    );
}

#[test]
fn a_full_buffer_gives_the_frame_back_until_an_ack_frees_room() {
    // Count bound.
    let mut s = PeerStream::new(1, inc(2), limits(3, 1000));
    for v in 0..3 {
        s.out_mut().on_send(item(v)).unwrap();
    }
    assert_eq!(s.out_mut().on_send(item(3)), Err(Full(item(3))));
    s.out_mut().on_ack(1).unwrap();
    assert_eq!(s.out_mut().on_send(item(3)), Ok(4));

    // Byte bound.
    let mut s = PeerStream::new(1, inc(2), limits(100, 25));
    s.out_mut().on_send(item(0)).unwrap();
    s.out_mut().on_send(item(1)).unwrap();
    assert!(!s.out().has_room(10));
    assert!(s.out().has_room(5));
    assert_eq!(s.out_mut().on_send(item(2)), Err(Full(item(2))));
    s.out_mut().on_ack(2).unwrap();
    assert_eq!(s.out_mut().on_send(item(2)), Ok(3));
}

#[test]
fn a_frame_larger_than_the_byte_bound_is_admitted_alone() {
    let mut s = PeerStream::new(1, inc(2), limits(100, 25));
    let big = Item {
        value: 0,
        size: 100,
    };
    assert_eq!(s.out_mut().on_send(big), Ok(1));
    assert_eq!(s.out_mut().on_send(item(1)), Err(Full(item(1))));
    s.out_mut().on_ack(1).unwrap();
    assert_eq!(s.out_mut().on_send(item(1)), Ok(2));
}

#[test]
fn dropping_a_session_counts_what_it_held() {
    let mut s = stream(1);
    for v in 0..4 {
        s.out_mut().on_send(item(v)).unwrap();
    }
    s.out_mut().on_ack(1).unwrap();
    assert_eq!(
        s.into_dropped(),
        Dropped {
            frames: 3,
            bytes: 30
        }
    );
}

// ---------------------------------------------------------------------------------------
// Receiving and ack scheduling

#[test]
fn receiving_accepts_the_next_seq_drops_repeats_and_reports_gaps() {
    let now = Instant::now();
    let mut s = stream(1);
    let r = s.inbound_mut();
    assert_eq!(r.on_receive(1, now), Receive::Accept);
    assert_eq!(r.on_receive(2, now), Receive::Accept);
    assert_eq!(r.on_receive(2, now), Receive::Duplicate);
    assert_eq!(r.on_receive(1, now), Receive::Duplicate);
    assert_eq!(r.on_receive(4, now), Receive::Gap { expected: 3 });
    assert_eq!(r.received(), 2, "a gap changes nothing");
    assert_eq!(r.on_receive(3, now), Receive::Accept);
}

#[test]
fn an_ack_falls_due_after_enough_frames_or_after_the_delay() {
    let t0 = Instant::now();
    let mut s = stream(1);
    let r = s.inbound_mut();
    assert_eq!(r.ack_due(t0), None);
    assert_eq!(r.ack_deadline(), None);
    r.on_receive(1, t0);
    assert_eq!(r.ack_due(t0), None, "one frame, no time passed");
    assert_eq!(r.ack_deadline(), Some(t0 + Duration::from_millis(20)));
    assert_eq!(r.ack_due(t0 + Duration::from_millis(20)), Some(1));
    for seq in 2..=4 {
        r.on_receive(seq, t0 + Duration::from_millis(1));
    }
    assert_eq!(r.ack_due(t0), Some(4), "four frames: ack_every_frames");
    r.on_ack_sent(4);
    assert_eq!(r.ack_due(t0 + Duration::from_secs(1)), None);
    assert_eq!(r.ack_deadline(), None);
    // The delay counts from the oldest frame not acknowledged, not from the last one.
    r.on_receive(5, t0 + Duration::from_millis(100));
    r.on_receive(6, t0 + Duration::from_millis(115));
    assert_eq!(r.ack_due(t0 + Duration::from_millis(119)), None);
    assert_eq!(r.ack_due(t0 + Duration::from_millis(120)), Some(6));
    r.on_ack_sent(5);
    assert_eq!(
        r.ack_due(t0 + Duration::from_millis(120)),
        Some(6),
        "6 still untold"
    );
}

// ---------------------------------------------------------------------------------------
// The handshake's decisions

#[test]
fn a_dialler_without_a_session_gets_a_new_one_and_the_acceptor_drops_what_it_held() {
    let mut held = stream(7);
    held.out_mut().on_send(item(0)).unwrap();
    let answer = answer_hello(Some(&held), inc(2), None, 99).unwrap();
    let acc = accept_session(Some(held), inc(2), None, answer, limits(8, 1000)).unwrap();
    assert!(!acc.resumed);
    assert_eq!(
        acc.dropped,
        Dropped {
            frames: 1,
            bytes: 10
        }
    );
    assert_eq!(
        answer,
        SessionOffer {
            id: 99,
            received: 0
        }
    );
    assert_eq!(acc.stream.out().last_sent(), 0);

    let dial: Resumed<Item> = resume_dialled(None, None, inc(3), answer, limits(8, 1000)).unwrap();
    assert!(!dial.resumed);
    assert_eq!(dial.stream.id(), 99);
    assert_eq!(dial.stream.peer_incarnation(), inc(3));
}

#[test]
fn a_new_incarnation_of_the_dialler_ends_the_session_held_for_the_old_one() {
    let mut held = PeerStream::new(7, inc(2), limits(8, 1000));
    held.out_mut().on_send(item(0)).unwrap();
    let offer = SessionOffer { id: 7, received: 0 };
    let answer = answer_hello(Some(&held), inc(4), Some(offer), 8).unwrap();
    let acc = accept_session(Some(held), inc(4), Some(offer), answer, limits(8, 1000)).unwrap();
    assert!(!acc.resumed);
    assert_eq!(acc.dropped.frames, 1);
    assert_eq!(answer.id, 8);
}

#[test]
fn a_fresh_id_equal_to_the_offered_one_is_changed() {
    let offer = SessionOffer { id: 5, received: 3 };
    let answer = answer_hello::<Item>(None, inc(2), Some(offer), 5).unwrap();
    assert_ne!(answer.id, 5);
    assert_eq!(answer.received, 0);
    let answer = answer_hello::<Item>(None, inc(2), None, 0).unwrap();
    assert_ne!(answer.id, 0, "0 means no session on the wire");
}

#[test]
fn a_dialler_whose_session_the_acceptor_no_longer_holds_drops_its_buffer() {
    let mut held = PeerStream::new(7, inc(2), limits(8, 1000));
    held.out_mut().on_send(item(0)).unwrap();
    held.out_mut().on_send(item(1)).unwrap();
    let offered = Some(held.offer());
    let answer = SessionOffer { id: 8, received: 0 };
    let r = resume_dialled(Some(held), offered, inc(2), answer, limits(8, 1000)).unwrap();
    assert!(!r.resumed);
    assert_eq!(r.dropped.frames, 2);
    assert_eq!(r.stream.out().last_sent(), 0);
    // A new session that does not start at 0 is refused.
    let bad = SessionOffer { id: 9, received: 1 };
    assert_eq!(
        resume_dialled::<Item>(None, None, inc(2), bad, limits(8, 1000)).unwrap_err(),
        StreamError::NewSessionNotAtZero { id: 9, received: 1 }
    );
}

#[test]
fn resuming_replays_exactly_what_the_peer_did_not_receive() {
    let mut held = stream(7);
    for v in 0..5 {
        held.out_mut().on_send(item(v)).unwrap();
    }
    held.out_mut().on_ack(1).unwrap();
    held.inbound_mut().on_receive(1, Instant::now());
    let offer = SessionOffer { id: 7, received: 3 };
    let answer = answer_hello(Some(&held), inc(2), Some(offer), 8).unwrap();
    let acc = accept_session(Some(held), inc(2), Some(offer), answer, limits(8, 1000)).unwrap();
    assert!(acc.resumed);
    assert_eq!(answer, SessionOffer { id: 7, received: 1 });
    let replay: Vec<(Seq, u64)> = acc
        .stream
        .out()
        .unacked()
        .map(|(s, f)| (s, f.value))
        .collect();
    assert_eq!(replay, vec![(4, 3), (5, 4)]);
    assert_eq!(
        acc.stream
            .inbound()
            .ack_due(Instant::now() + Duration::from_secs(1)),
        None,
        "the answer told the peer"
    );
}

#[test]
fn a_resume_behind_what_the_peer_acknowledged_replays_after_the_ack() {
    let mut held = stream(7);
    for v in 0..3 {
        held.out_mut().on_send(item(v)).unwrap();
    }
    held.out_mut().on_ack(2).unwrap();
    let replay: Vec<Seq> = held
        .out_mut()
        .resume_from(1)
        .unwrap()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(replay, vec![3]);
}

#[test]
fn resuming_from_an_impossible_seq_is_an_error() {
    let mut held = stream(7);
    for v in 0..3 {
        held.out_mut().on_send(item(v)).unwrap();
    }
    held.out_mut().on_ack(2).unwrap();
    assert_eq!(
        held.out_mut().resume_from(4).err(),
        Some(StreamError::ResumeBeyondSent {
            received: 4,
            last_sent: 3
        })
    );
    let offer = SessionOffer { id: 7, received: 9 };
    assert!(answer_hello(Some(&held), inc(2), Some(offer), 8).is_err());
}

// ---------------------------------------------------------------------------------------
// Simulation: two nodes, one connection at a time, cut at random points.

/// xorshift64*: deterministic, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What crosses a connection in one direction.
#[derive(Debug, Clone, Copy)]
enum Wire {
    Data(Seq, Item),
    Ack(Seq),
}

/// One node's side: its session with the other node, what it still has to send, and what it
/// received, in order.
struct Node {
    stream: Option<PeerStream<Item>>,
    next_value: u64,
    to_send: u64,
    received: Vec<u64>,
    dropped_frames: usize,
}

impl Node {
    fn new(to_send: u64) -> Self {
        Node {
            stream: None,
            next_value: 0,
            to_send,
            received: Vec::new(),
            dropped_frames: 0,
        }
    }
}

/// One connection: frames in flight each way (a → b, b → a).
#[derive(Default)]
struct Connection {
    ab: VecDeque<Wire>,
    ba: VecDeque<Wire>,
}

fn deliver(to: &mut Node, w: Wire, now: Instant) {
    let s = to.stream.as_mut().unwrap();
    match w {
        Wire::Data(seq, it) => match s.inbound_mut().on_receive(seq, now) {
            Receive::Accept => to.received.push(it.value),
            Receive::Duplicate => {}
            Receive::Gap { expected } => panic!("gap: expected {expected}, got {seq}"),
        },
        Wire::Ack(seq) => {
            s.out_mut().on_ack(seq).unwrap();
        }
    }
}

/// Send what the buffer admits; the rest waits (the producer is held back, nothing is lost).
fn produce(from: &mut Node, out: &mut VecDeque<Wire>, burst: u64) {
    let s = from.stream.as_mut().unwrap();
    for _ in 0..burst {
        if from.next_value == from.to_send {
            return;
        }
        let it = Item {
            value: from.next_value,
            size: 1 + (from.next_value % 7) as usize,
        };
        match s.out_mut().on_send(it) {
            Ok(seq) => {
                out.push_back(Wire::Data(seq, it));
                from.next_value += 1;
            }
            Err(Full(_)) => return,
        }
    }
}

fn maybe_ack(from: &mut Node, out: &mut VecDeque<Wire>, now: Instant) {
    let s = from.stream.as_mut().unwrap();
    if let Some(seq) = s.inbound().ack_due(now) {
        s.inbound_mut().on_ack_sent(seq);
        out.push_back(Wire::Ack(seq));
    }
}

/// The handshake of a new connection, a dialling: the resume decisions of both sides, then
/// each side's replay goes first on the new connection.
fn handshake(a: &mut Node, b: &mut Node, conn: &mut Connection, fresh_id: u64) {
    handshake_with(a, b, conn, fresh_id, |_, _| {});
}

/// [`handshake`], with `meanwhile` run after the hello and its answer and before either side
/// acts on them (an old connection still delivering, say).
fn handshake_with(
    a: &mut Node,
    b: &mut Node,
    conn: &mut Connection,
    fresh_id: u64,
    mut meanwhile: impl FnMut(&mut Node, &mut Node),
) {
    let lim = limits(16, 40);
    let offered = a.stream.as_ref().map(PeerStream::offer);
    let answer = answer_hello(b.stream.as_ref(), inc(1), offered, fresh_id).unwrap();
    meanwhile(a, b);
    let acc = accept_session(b.stream.take(), inc(1), offered, answer, lim).unwrap();
    b.dropped_frames += acc.dropped.frames;
    b.stream = Some(acc.stream);
    let dial = resume_dialled(a.stream.take(), offered, inc(2), answer, lim).unwrap();
    a.dropped_frames += dial.dropped.frames;
    a.stream = Some(dial.stream);
    for (from, out) in [(&*a, &mut conn.ab), (&*b, &mut conn.ba)] {
        for (seq, it) in from.stream.as_ref().unwrap().out().unacked() {
            out.push_back(Wire::Data(seq, *it));
        }
    }
}

/// Run one scenario; returns the number of cuts.
fn simulate(seed: u64, per_side: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let (mut a, mut b) = (Node::new(per_side), Node::new(per_side));
    let mut conn = Connection::default();
    // Frames a connection that was cut still delivers after the next handshake.
    let mut stale = Connection::default();
    let mut now = Instant::now();
    let mut cuts = 0;
    handshake(&mut a, &mut b, &mut conn, rng.next());
    let mut steps = 0u64;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "seed {seed}: no progress");
        now += Duration::from_millis(rng.below(8));
        match rng.below(10) {
            0..=2 => produce(&mut a, &mut conn.ab, 1 + rng.below(6)),
            3..=4 => produce(&mut b, &mut conn.ba, 1 + rng.below(6)),
            5..=7 => {
                // Deliver a few frames, in order, each way; sometimes from the stale
                // connection first.
                for _ in 0..rng.below(5) {
                    if rng.chance(30) {
                        if let Some(w) = stale.ab.pop_front() {
                            deliver(&mut b, w, now);
                        }
                        if let Some(w) = stale.ba.pop_front() {
                            deliver(&mut a, w, now);
                        }
                    }
                    if let Some(w) = conn.ab.pop_front() {
                        deliver(&mut b, w, now);
                    }
                    if let Some(w) = conn.ba.pop_front() {
                        deliver(&mut a, w, now);
                    }
                }
                maybe_ack(&mut a, &mut conn.ab, now);
                maybe_ack(&mut b, &mut conn.ba, now);
            }
            8 if rng.chance(20) => {
                // Cut: what is in flight is lost, or (sometimes) trickles in later.
                cuts += 1;
                let old = std::mem::take(&mut conn);
                if rng.chance(40) && stale.ab.is_empty() && stale.ba.is_empty() {
                    stale = old;
                    // Only data trickles in: acks of a dead connection are not trusted.
                    stale.ab.retain(|w| matches!(w, Wire::Data(..)));
                    stale.ba.retain(|w| matches!(w, Wire::Data(..)));
                }
                let fresh_id = rng.next();
                let early = rng.below(4);
                handshake_with(&mut a, &mut b, &mut conn, fresh_id, |a, b| {
                    for _ in 0..early {
                        if let Some(w) = stale.ab.pop_front() {
                            deliver(b, w, now);
                        }
                        if let Some(w) = stale.ba.pop_front() {
                            deliver(a, w, now);
                        }
                    }
                });
            }
            _ => {}
        }
        let done = a.next_value == per_side
            && b.next_value == per_side
            && a.received.len() as u64 == per_side
            && b.received.len() as u64 == per_side;
        if done {
            break;
        }
    }
    let expected: Vec<u64> = (0..per_side).collect();
    assert_eq!(a.received, expected, "seed {seed}: b → a");
    assert_eq!(b.received, expected, "seed {seed}: a → b");
    assert_eq!((a.dropped_frames, b.dropped_frames), (0, 0), "seed {seed}");
    cuts
}

#[test]
fn random_cuts_lose_nothing_duplicate_nothing_and_keep_order() {
    let mut cuts = 0;
    for seed in 1..=300u64 {
        cuts += simulate(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 400);
    }
    assert!(cuts > 1000, "the simulation must actually cut: {cuts}");
}

#[test]
fn a_session_ended_by_a_down_peer_starts_again_from_one() {
    let mut a = Node::new(0);
    let mut b = Node::new(0);
    let mut conn = Connection::default();
    handshake(&mut a, &mut b, &mut conn, 40);
    a.to_send = 5;
    produce(&mut a, &mut conn.ab, 5);
    // b declares a down: its session ends; a's frames are never acknowledged.
    let dropped = b.stream.take().unwrap().into_dropped();
    assert_eq!(dropped, Dropped::default(), "b held nothing of its own");
    let mut conn = Connection::default();
    handshake(&mut a, &mut b, &mut conn, 41);
    assert_eq!(
        a.dropped_frames, 5,
        "a counts what it held for the old session"
    );
    assert!(conn.ab.is_empty(), "nothing is replayed into a new session");
    assert_eq!(a.stream.as_ref().unwrap().id(), 41);
    a.to_send = 6;
    produce(&mut a, &mut conn.ab, 1);
    assert!(matches!(conn.ab.front(), Some(Wire::Data(1, _))));
}

#[test]
fn a_hello_without_a_session_says_id_zero_and_is_read_back_as_none() {
    use crate::wire::Session;
    assert_eq!(SessionOffer::to_hello(None), Session { id: 0, received: 0 });
    assert_eq!(
        SessionOffer::from_hello(Session { id: 0, received: 0 }),
        None
    );
    let offer = SessionOffer { id: 9, received: 4 };
    assert_eq!(
        SessionOffer::from_hello(SessionOffer::to_hello(Some(offer))),
        Some(offer)
    );
}

#[test]
fn answering_a_hello_changes_nothing_until_the_dialler_is_authenticated() {
    let mut held = stream(7);
    held.out_mut().on_send(item(0)).unwrap();
    // An unauthenticated hello naming no session: the answer is a new session…
    let answer = answer_hello(Some(&held), inc(2), None, 30).unwrap();
    assert_eq!(
        answer,
        SessionOffer {
            id: 30,
            received: 0
        }
    );
    // …and the session held is intact until accept_session is called.
    assert_eq!((held.id(), held.out().len()), (7, 1));
}

#[test]
fn a_session_that_ended_between_answer_and_authentication_is_an_error() {
    let held = stream(7);
    let offer = SessionOffer { id: 7, received: 0 };
    let answer = answer_hello(Some(&held), inc(2), Some(offer), 30).unwrap();
    assert_eq!(answer.id, 7, "resumes");
    // The peer was declared down meanwhile: the session is gone.
    let _ = held.into_dropped();
    let err =
        accept_session::<Item>(None, inc(2), Some(offer), answer, limits(8, 1000)).unwrap_err();
    assert_eq!(err, StreamError::SessionChanged { id: 7 });
    assert_eq!(err.code(), "internal");
}

#[test]
fn frames_an_old_connection_delivers_after_the_answer_are_acknowledged_later() {
    let t0 = Instant::now();
    let mut held = stream(7);
    held.inbound_mut().on_receive(1, t0);
    let offer = SessionOffer { id: 7, received: 0 };
    let answer = answer_hello(Some(&held), inc(2), Some(offer), 30).unwrap();
    assert_eq!(answer.received, 1);
    // The old connection delivers frame 2 before the dialler authenticates.
    held.inbound_mut().on_receive(2, t0);
    let acc = accept_session(Some(held), inc(2), Some(offer), answer, limits(8, 1000)).unwrap();
    assert_eq!(
        acc.stream.inbound().ack_due(t0 + Duration::from_secs(1)),
        Some(2),
        "the hello_ack said 1: an ack of 2 is still due"
    );
}

// ---------------------------------------------------------------------------------------
// The stream over real frames: the codec's stream numbering, `ack` messages, connections cut
// at any byte (inside a frame too).

mod over_the_wire {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::{Decoder, Encoder};

    use super::*;
    use crate::wire::{encode_message, Ack, EncodedMessage, Frame, FrameCodec, Message, PeerReply};

    const MAX: usize = 1 << 16;

    /// A stream frame whose `id` carries the value sent.
    fn reply(value: u64) -> EncodedMessage {
        encode_message(&Message::PeerReply(PeerReply {
            id: value,
            target: "n".into(),
            target_incarnation: inc(9),
            ttl: 2,
            outcome: crate::wire::Outcome::Ok(Bytes::from(vec![0u8; (value % 50) as usize])),
        }))
        .unwrap()
    }

    struct Side {
        stream: Option<PeerStream<EncodedMessage>>,
        out: FrameCodec,
        inp: FrameCodec,
        next_value: u64,
        got: Vec<u64>,
    }

    impl Side {
        fn new() -> Self {
            Side {
                stream: None,
                out: FrameCodec::new(MAX),
                inp: FrameCodec::new(MAX),
                next_value: 0,
                got: Vec::new(),
            }
        }

        /// A new connection: fresh codecs, numbering as streams.
        fn connect(&mut self) {
            self.out = FrameCodec::new(MAX);
            self.out.set_resumable();
            self.inp = FrameCodec::new(MAX);
            self.inp.set_resumable();
        }

        fn replay(&mut self, wire: &mut BytesMut) {
            let s = self.stream.as_ref().unwrap();
            for (seq, m) in s.out().unacked() {
                self.out.encode_frame_at(m, seq, wire).unwrap();
            }
        }

        fn send(&mut self, wire: &mut BytesMut, n: u64, limit: u64) {
            for _ in 0..n {
                if self.next_value == limit {
                    return;
                }
                let msg = reply(self.next_value);
                let s = self.stream.as_mut().unwrap();
                let Ok(seq) = s.out_mut().on_send(msg.clone()) else {
                    return;
                };
                self.out.encode_frame_at(&msg, seq, wire).unwrap();
                self.next_value += 1;
            }
        }

        /// Read what arrived; answer with an `ack` when one is due.
        fn read(&mut self, from: &mut BytesMut, back: &mut BytesMut, now: Instant) {
            while let Some(Frame(seq, msg)) = self.inp.decode(from).unwrap() {
                let s = self.stream.as_mut().unwrap();
                match msg {
                    Message::PeerReply(r) => match s.inbound_mut().on_receive(seq, now) {
                        Receive::Accept => self.got.push(r.id),
                        Receive::Duplicate => {}
                        Receive::Gap { expected } => panic!("gap: {expected} then {seq}"),
                    },
                    Message::Ack(a) => {
                        s.out_mut().on_ack(a.seq).unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let s = self.stream.as_mut().unwrap();
            if let Some(seq) = s.inbound().ack_due(now) {
                s.inbound_mut().on_ack_sent(seq);
                self.out.encode(&Message::Ack(Ack { seq }), back).unwrap();
            }
        }
    }

    fn reconnect(a: &mut Side, b: &mut Side, ab: &mut BytesMut, ba: &mut BytesMut, id: u64) {
        ab.clear();
        ba.clear();
        let lim = StreamLimits {
            max_frames: 32,
            max_bytes: 2000,
            ack_every_frames: 8,
            ack_delay: Duration::from_millis(5),
        };
        let offered = a.stream.as_ref().map(PeerStream::offer);
        let answer = answer_hello(b.stream.as_ref(), inc(1), offered, id).unwrap();
        b.stream = Some(
            accept_session(b.stream.take(), inc(1), offered, answer, lim)
                .unwrap()
                .stream,
        );
        a.stream = Some(
            resume_dialled(a.stream.take(), offered, inc(2), answer, lim)
                .unwrap()
                .stream,
        );
        a.connect();
        b.connect();
        b.replay(ba);
        a.replay(ab);
    }

    /// Hand `to` up to `n` bytes of `wire`; what its codec does not consume yet stays in
    /// front. Its acks go on `back`.
    fn pump(wire: &mut BytesMut, to: &mut Side, back: &mut BytesMut, n: usize, now: Instant) {
        let mut piece = wire.split_to(n.min(wire.len()));
        to.read(&mut piece, back, now);
        piece.extend_from_slice(wire);
        *wire = piece;
    }

    #[test]
    fn connections_cut_at_any_byte_lose_and_repeat_nothing() {
        const N: u64 = 3000;
        let mut rng = Rng(0x5eed_1234_5678_9abd);
        let (mut a, mut b) = (Side::new(), Side::new());
        let (mut ab, mut ba) = (BytesMut::new(), BytesMut::new());
        let mut now = Instant::now();
        let mut cuts = 0;
        reconnect(&mut a, &mut b, &mut ab, &mut ba, 1);
        for step in 0..2_000_000u64 {
            if a.got.len() as u64 == N && b.got.len() as u64 == N {
                break;
            }
            assert!(step < 1_999_999, "no progress");
            now += Duration::from_millis(1);
            a.send(&mut ab, rng.below(4), N);
            b.send(&mut ba, rng.below(4), N);
            // Deliver a random number of bytes each way: frames arrive in pieces.
            let n = rng.below(600) as usize;
            pump(&mut ab, &mut b, &mut ba, n, now);
            let n = rng.below(600) as usize;
            pump(&mut ba, &mut a, &mut ab, n, now);
            if rng.chance(3) {
                // Cut: bytes in flight, whole frames or halves of them, are gone.
                cuts += 1;
                reconnect(&mut a, &mut b, &mut ab, &mut ba, rng.next());
            }
        }
        let expected: Vec<u64> = (0..N).collect();
        assert_eq!(a.got, expected);
        assert_eq!(b.got, expected);
        assert!(cuts > 20, "{cuts} cuts");
    }
}
