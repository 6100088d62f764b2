//! A hostile peer against a real node: raw TCP connections to the master's peer listener that
//! misbehave in one way each. In every case the node must (a) close the connection itself,
//! telling the peer why when it can, (b) keep serving its real peers (a worker's publish still
//! reaches a subscriber on the master), and (c) log what happened exactly once, naming the
//! peer's address (a silent connection, the stuff of floods, is instead counted in the
//! listener's periodic summary line).
//!
//! Nodes run on their own arbiters (threads), so logs are captured by one global subscriber
//! for the whole test binary; each test finds its own lines by the local address of its raw
//! socket, which no other test can hold at the same time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use nodecloud::config::Config;
use nodecloud::wire::{
    self, Auth, Envelope, FrameCodec, HandshakeError, Hello, Identity, Message, Ping,
    MAX_HANDSHAKE_FRAME_BYTES, PROTOCOL_VERSION,
};
use nodecloud::{testing, Delivery, Event, NodeHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{Encoder, Framed};
use tracing::{info, Level};
use uuid::Uuid;

/// Membership, deliveries, and log lines: generous, for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(10);
/// The cluster's handshake deadline in these tests.
const HANDSHAKE_DEADLINE: Duration = Duration::from_millis(300);
/// How long the node may take to close a connection it refused.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Log capture: one global subscriber, lines kept in memory, a watch counter to await them.

struct LogBuffer {
    lines: Mutex<Vec<String>>,
    written: watch::Sender<u64>,
}

/// One event's output, appended to the buffer as whole lines when the formatter drops it.
struct LogEntry {
    buffer: &'static LogBuffer,
    bytes: Vec<u8>,
}

impl Write for LogEntry {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogEntry {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.bytes);
        let added = {
            let mut lines = self.buffer.lines.lock().unwrap_or_else(|e| e.into_inner());
            let before = lines.len();
            lines.extend(text.lines().map(str::to_owned));
            lines.len() - before
        };
        // The lines lock is released first: a test waiting on `written` may take it.
        if added > 0 {
            self.buffer.written.send_modify(|n| *n += added as u64);
        }
    }
}

fn log() -> &'static LogBuffer {
    static LOG: OnceLock<&'static LogBuffer> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer: &'static LogBuffer = Box::leak(Box::new(LogBuffer {
            lines: Mutex::new(Vec::new()),
            written: watch::channel(0).0,
        }));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogEntry {
                buffer,
                bytes: Vec::new(),
            })
            .with_ansi(false)
            .with_max_level(Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        buffer
    })
}

/// Where the log is now: a test counts only the lines after its mark.
fn log_mark() -> usize {
    log().lines.lock().unwrap().len()
}

/// Whether `line` names `addr` (and not a longer port that starts with the same digits).
fn mentions(line: &str, addr: &str) -> bool {
    line.match_indices(addr).any(|(i, _)| {
        !line[i + addr.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn lines_about(addr: SocketAddr, since: usize) -> Vec<String> {
    let addr = addr.to_string();
    let lines = log().lines.lock().unwrap();
    lines[since.min(lines.len())..]
        .iter()
        .filter(|l| mentions(l, &addr))
        .cloned()
        .collect()
}

/// Wait until the log has a line about `addr`; returns the lines about it.
async fn await_log_about(addr: SocketAddr, since: usize) -> Vec<String> {
    let mut written = log().written.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        written.borrow_and_update();
        let lines = lines_about(addr, since);
        if !lines.is_empty() {
            return lines;
        }
        if tokio::time::timeout_at(deadline, written.changed())
            .await
            .is_err()
        {
            panic!("no log line about {addr} within {WAIT:?}");
        }
    }
}

/// Wait until the log has a line, after `since`, containing every one of `parts`.
async fn await_log_containing(parts: &[&str], since: usize) -> String {
    let mut written = log().written.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        written.borrow_and_update();
        let found = {
            let lines = log().lines.lock().unwrap();
            lines[since.min(lines.len())..]
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .cloned()
        };
        if let Some(line) = found {
            return line;
        }
        if tokio::time::timeout_at(deadline, written.changed())
            .await
            .is_err()
        {
            panic!("no log line with {parts:?} within {WAIT:?}");
        }
    }
}

/// (c): exactly one line names the peer, and it gives the reason.
fn assert_logged_once(addr: SocketAddr, since: usize, reasons: &[&str]) {
    let lines = lines_about(addr, since);
    assert_eq!(
        lines.len(),
        1,
        "expected one log line about {addr}, got {lines:#?}"
    );
    assert!(
        reasons.iter().any(|r| lines[0].contains(r)),
        "the line about {addr} gives none of the reasons {reasons:?}: {}",
        lines[0]
    );
}

// ---------------------------------------------------------------------------------------
// The cluster under attack

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Probe {
    n: u64,
}
impl Event for Probe {
    const TOPIC: &'static str = "test.hostile.probe";
}

/// Forwards every probe delivered to it into a channel the test awaits.
struct Forwarder {
    tx: mpsc::UnboundedSender<Probe>,
}
impl Actor for Forwarder {
    type Context = Context<Self>;
}
impl Handler<Delivery<Probe>> for Forwarder {
    type Result = ();
    fn handle(&mut self, d: Delivery<Probe>, _: &mut Context<Self>) {
        let _ = self.tx.send(d.event);
    }
}

struct Cluster {
    config: Arc<Config>,
    master: NodeHandle,
    worker: NodeHandle,
    probes: mpsc::UnboundedReceiver<Probe>,
}

impl Cluster {
    /// A star of `workers` configured workers, of which only master and worker-1 run.
    async fn start(workers: usize) -> Cluster {
        log();
        let mut c = testing::star(workers);
        c.config.cluster.handshake_timeout = HANDSHAKE_DEADLINE;
        let master = c.start_node("master").await.unwrap();
        let worker = c.start_node("worker-1").await.unwrap();
        let config = c.config();
        testing::wait_converged(&[master.clone(), worker.clone()], WAIT)
            .await
            .unwrap();
        let (tx, probes) = mpsc::unbounded_channel();
        master.subscribe::<Probe>(Forwarder { tx }.start().recipient());
        Cluster {
            config,
            master,
            worker,
            probes,
        }
    }

    fn listen(&self) -> SocketAddr {
        self.config.node("master").unwrap().listen
    }

    fn identity(&self, node: &str) -> Identity {
        Identity {
            cluster: self.config.cluster.name.clone(),
            node: node.to_owned(),
            incarnation: Uuid::new_v4(),
            secret: self.config.cluster.secret.as_bytes().to_vec(),
            welcome: Default::default(),
        }
    }

    /// A raw connection to the master's peer listener, and its local address.
    async fn connect(&self) -> (TcpStream, SocketAddr) {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(self.listen()))
            .await
            .expect("connect within the deadline")
            .unwrap();
        let local = stream.local_addr().unwrap();
        (stream, local)
    }

    /// (b): the master still serves worker-1: both still see each other, and a publish from
    /// the worker reaches the master's subscriber. Republished each second until the deadline
    /// in case a link was being re-established on a loaded machine.
    async fn assert_still_serving(&mut self) {
        info!("--- the master still serves worker-1");
        testing::wait_converged(&[self.master.clone(), self.worker.clone()], WAIT)
            .await
            .unwrap();
        let n = rand_u64();
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "worker-1's probe {n} did not reach the master within {WAIT:?}"
            );
            let _ = self.worker.publish(&Probe { n });
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some(p)) = tokio::time::timeout_at(until, self.probes.recv()).await {
                if p.n == n {
                    return;
                }
            }
        }
    }

    async fn stop(self) {
        tokio::join!(self.master.shutdown(), self.worker.shutdown());
    }
}

fn rand_u64() -> u64 {
    u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------
// The hostile side

#[derive(Debug, PartialEq)]
enum Closed {
    /// An orderly close (FIN).
    Eof,
    /// The node reset the connection.
    Reset,
}

/// (a): read until the node closes the connection; the frames it sent before that.
async fn read_until_closed<T>(framed: &mut Framed<T, FrameCodec>) -> (Vec<Message>, Closed)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = Vec::new();
    let read = async {
        loop {
            match framed.next().await {
                None => return Closed::Eof,
                Some(Ok(frame)) => messages.push(frame.1),
                Some(Err(wire::WireError::Io(e)))
                    if e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Closed::Reset
                }
                Some(Err(e)) => panic!("the node sent bytes that do not decode: {e}"),
            }
        }
    };
    let closed = tokio::time::timeout(CLOSE_WITHIN, read)
        .await
        .unwrap_or_else(|_| {
            panic!("the node did not close the connection within {CLOSE_WITHIN:?}")
        });
    (messages, closed)
}

/// A raw stream read through the frame codec, from the node's first frame on.
fn framed(stream: TcpStream) -> Framed<TcpStream, FrameCodec> {
    Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES))
}

/// The only frame the node sent is an `error` frame with `code`, and then it closed.
fn assert_refused_with(messages: &[Message], closed: &Closed, code: &str) {
    assert_eq!(
        *closed,
        Closed::Eof,
        "the node closes in order after an error frame"
    );
    match messages {
        [Message::Error(e)] => assert_eq!(e.code, code, "{e:?}"),
        other => panic!("expected one error frame {code:?}, got {other:?}"),
    }
}

/// One frame `[seq, msg]`, as bytes.
fn frame_bytes(seq_from: &mut FrameCodec, msg: &Message) -> BytesMut {
    let mut buf = BytesMut::new();
    seq_from.encode(msg, &mut buf).unwrap();
    buf
}

fn hello(id: &Identity) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: id.cluster.clone(),
        node: id.node.clone(),
        incarnation: id.incarnation,
        nonce: [0x42; 32],
        session: None,
    })
}

/// Poll `cond` until it holds (bounded): for state with no event to await.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn has_link(node: &NodeHandle, peer: &str) -> bool {
    node.link_stats().iter().any(|l| l.peer == peer)
}

// ---------------------------------------------------------------------------------------
// Before authentication

#[actix_rt::test]
async fn garbage_bytes_close_the_connection() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (mut stream, me) = c.connect().await;
    info!("--- a raw peer sends a valid length and a body that is not CBOR");
    stream
        .write_all(b"\x00\x00\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff")
        .await
        .unwrap();
    let (messages, closed) = read_until_closed(&mut framed(stream)).await;
    assert_refused_with(&messages, &closed, "malformed_frame");
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(me, since, &["handshake failed: malformed frame"]);
    c.stop().await;
}

#[actix_rt::test]
async fn oversized_length_is_rejected_before_allocation() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (mut stream, me) = c.connect().await;
    info!("--- a raw peer announces a frame of 0xFFFF_FFF0 bytes and sends nothing else");
    stream
        .write_all(&0xFFFF_FFF0u32.to_be_bytes())
        .await
        .unwrap();
    // The answer comes from the prefix alone: waiting for the body would end in `timeout`.
    let (messages, closed) = read_until_closed(&mut framed(stream)).await;
    assert_refused_with(&messages, &closed, "frame_too_large");
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(me, since, &["exceeds the maximum of 1024"]);
    c.stop().await;
}

#[actix_rt::test]
async fn frame_cut_in_the_middle_is_rejected() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (mut stream, me) = c.connect().await;
    info!("--- a raw peer sends half a hello, then ends its side of the stream");
    let whole = frame_bytes(&mut FrameCodec::new(1024), &hello(&c.identity("worker-1")));
    stream.write_all(&whole[..whole.len() / 2]).await.unwrap();
    stream.shutdown().await.unwrap();
    let (messages, closed) = read_until_closed(&mut framed(stream)).await;
    assert_refused_with(&messages, &closed, "malformed_frame");
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(me, since, &["stream ended in the middle of a frame"]);
    c.stop().await;
}

#[actix_rt::test]
async fn valid_frame_of_the_wrong_type_before_authentication_is_refused() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (mut stream, me) = c.connect().await;
    info!("--- a raw peer opens with an event instead of a hello");
    let event = Message::Event(Envelope {
        id: 0,
        seq: 1,
        topic: Probe::TOPIC.into(),
        origin: "worker-1".into(),
        origin_incarnation: Uuid::new_v4(),
        target: None,
        ttl: 2,
        payload: Bytes::from_static(b"\xa1\x61n\x01"),
    });
    stream
        .write_all(&frame_bytes(&mut FrameCodec::new(1024), &event))
        .await
        .unwrap();
    let (messages, closed) = read_until_closed(&mut framed(stream)).await;
    assert_refused_with(&messages, &closed, "unexpected_message");
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(
        me,
        since,
        &["expected hello during the handshake, got event"],
    );
    // The smuggled event was not delivered: only the worker's probe arrived.
    assert!(c.probes.try_recv().is_err(), "nothing else was delivered");
    c.stop().await;
}

#[actix_rt::test]
async fn wrong_secret_is_refused() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (stream, me) = c.connect().await;
    info!("--- a raw peer dials as worker-1 with another secret");
    let mut impostor = c.identity("worker-1");
    impostor.secret = b"not-the-cluster-secret".to_vec();
    let mut link = framed(stream);
    let dialled = wire::dial(&mut link, &impostor, WAIT).await;
    // The dialler checks the master's proof first, finds it wrong, says `auth_failed`.
    assert!(
        matches!(dialled, Err(HandshakeError::AuthFailed)),
        "{dialled:?}"
    );
    let (messages, closed) = read_until_closed(&mut link).await;
    assert!(
        messages.is_empty(),
        "nothing after the refusal: {messages:?}"
    );
    assert_eq!(closed, Closed::Eof);
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(me, since, &["auth_failed"]);
    c.stop().await;
}

#[actix_rt::test]
async fn forged_proof_is_refused_with_auth_failed() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (stream, me) = c.connect().await;
    info!("--- a raw peer says hello as worker-1, then sends a proof it cannot have computed");
    let mut link = framed(stream);
    link.send(&hello(&c.identity("worker-1"))).await.unwrap();
    let ack = tokio::time::timeout(WAIT, link.next()).await.unwrap();
    assert!(
        matches!(ack, Some(Ok(wire::Frame(0, Message::HelloAck(_))))),
        "{ack:?}"
    );
    link.send(&Message::Auth(Auth { proof: [0; 32] }))
        .await
        .unwrap();
    let (messages, closed) = read_until_closed(&mut link).await;
    assert_refused_with(&messages, &closed, "auth_failed");
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(me, since, &["authentication failed"]);
    c.stop().await;
}

#[actix_rt::test]
async fn silent_peer_is_dropped_at_the_first_bytes_deadline_and_counted_in_a_summary() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (stream, me) = c.connect().await;
    info!("--- a raw peer connects and says nothing");
    let started = Instant::now();
    let (messages, closed) = read_until_closed(&mut framed(stream)).await;
    let elapsed = started.elapsed();
    assert_refused_with(&messages, &closed, "timeout");
    // Timers fire at or after their deadline; the node's started after our connect.
    assert!(
        elapsed >= HANDSHAKE_DEADLINE - Duration::from_millis(50),
        "dropped early: {elapsed:?}"
    );
    // Silent connections are not logged one by one (a flood would fill the log): they are
    // counted in the listener's summary line.
    await_log_containing(&["peer listener refused", "first bytes too late"], since).await;
    c.assert_still_serving().await;
    assert!(
        lines_about(me, since).is_empty(),
        "a silent connection is logged only in the summary"
    );
    c.stop().await;
}

#[actix_rt::test]
async fn unknown_node_name_is_refused() {
    let mut c = Cluster::start(1).await;
    let since = log_mark();
    let (stream, me) = c.connect().await;
    info!("--- a raw peer dials as a node the configuration does not know");
    let mut link = framed(stream);
    let dialled = wire::dial(&mut link, &c.identity("intruder"), WAIT).await;
    match dialled {
        Err(HandshakeError::Refused { code, message }) => {
            assert_eq!(code, "not_admitted");
            assert!(message.contains("intruder"), "{message}");
        }
        other => panic!("expected Refused(not_admitted), got {other:?}"),
    }
    let (messages, closed) = read_until_closed(&mut link).await;
    assert!(
        messages.is_empty(),
        "nothing after the refusal: {messages:?}"
    );
    assert_eq!(closed, Closed::Eof);
    await_log_about(me, since).await;
    c.assert_still_serving().await;
    assert_logged_once(
        me,
        since,
        &["node \"intruder\" is not in this cluster's configuration"],
    );
    c.stop().await;
}

// ---------------------------------------------------------------------------------------
// After authentication

/// Authenticate as worker-2 (configured, allowed to link to the master, not running).
async fn authenticated_as_worker_2(c: &Cluster) -> (Framed<TcpStream, FrameCodec>, SocketAddr) {
    let (stream, me) = c.connect().await;
    let mut link = framed(stream);
    let peer = wire::dial(&mut link, &c.identity("worker-2"), WAIT)
        .await
        .unwrap();
    assert_eq!(peer.node, "master");
    assert_eq!(peer.incarnation, c.master.incarnation());
    let master = c.master.clone();
    eventually("the master has a link to worker-2", || {
        has_link(&master, "worker-2")
    })
    .await;
    (link, me)
}

/// Half of the next frame this side would send (a ping), so the node waits for the rest.
fn half_a_frame(link: &mut Framed<TcpStream, FrameCodec>) -> BytesMut {
    let mut whole = frame_bytes(link.codec_mut(), &Message::Ping(Ping { n: 1 }));
    whole.truncate(whole.len() / 2);
    whole
}

#[actix_rt::test]
async fn peer_vanishing_mid_stream_is_survived() {
    let mut c = Cluster::start(2).await;
    let since = log_mark();
    let (mut link, me) = authenticated_as_worker_2(&c).await;
    info!("--- worker-2 sends half a frame and vanishes");
    let half = half_a_frame(&mut link);
    link.get_mut().write_all(&half).await.unwrap();
    drop(link);
    // Unread frames from the master make the kernel reset the connection rather than close
    // it; either way the master must notice, and say so once.
    let lines = await_log_about(me, since).await;
    let master = c.master.clone();
    eventually("the master dropped its link to worker-2", || {
        !has_link(&master, "worker-2")
    })
    .await;
    c.assert_still_serving().await;
    assert_logged_once(
        me,
        since,
        &[
            "stream ended in the middle of a frame",
            "link read failed",
            "link write failed",
        ],
    );
    assert!(lines[0].contains("peer=worker-2"), "{}", lines[0]);
    c.stop().await;
}

#[actix_rt::test]
async fn authenticated_peer_that_stops_mid_frame_is_told_and_closed() {
    let mut c = Cluster::start(2).await;
    let since = log_mark();
    let (mut link, me) = authenticated_as_worker_2(&c).await;
    info!("--- worker-2 sends half a frame and ends its side of the stream");
    let half = half_a_frame(&mut link);
    link.get_mut().write_all(&half).await.unwrap();
    link.get_mut().shutdown().await.unwrap();
    let (messages, closed) = read_until_closed(&mut link).await;
    assert_eq!(closed, Closed::Eof);
    // Status, heartbeat and ping frames may come first; the last word is the error.
    match messages.last() {
        Some(Message::Error(e)) => assert_eq!(e.code, "malformed_frame", "{e:?}"),
        other => panic!("expected an error frame last, got {other:?} in {messages:?}"),
    }
    await_log_about(me, since).await;
    let master = c.master.clone();
    eventually("the master dropped its link to worker-2", || {
        !has_link(&master, "worker-2")
    })
    .await;
    c.assert_still_serving().await;
    assert_logged_once(
        me,
        since,
        &["closing link: stream ended in the middle of a frame"],
    );
    c.stop().await;
}

#[actix_rt::test]
async fn a_forged_status_from_the_future_cannot_mark_a_live_node_down() {
    let mut c = Cluster::start(2).await;
    let (mut link, _me) = authenticated_as_worker_2(&c).await;
    info!("--- worker-2 claims worker-1 rebooted at the end of time, with no links");
    let forged = Message::Status(Box::new(wire::Status {
        node: "worker-1".into(),
        incarnation: Uuid::new_v4(),
        boot_ms: u64::MAX,
        version: u64::MAX,
        role: "worker".into(),
        links: vec![],
        stats: wire::NodeStats::default(),
        methods: vec![],
        http: vec![],
    }));
    link.send(&forged).await.unwrap();
    // The master reads its link in order: once it answers a later ping, the forged status
    // has reached Membership's mailbox; a few heartbeats later it would have taken effect.
    link.send(&Message::Ping(Ping { n: 7 })).await.unwrap();
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = link.next().await {
            if frame.1 == Message::Pong(Ping { n: 7 }) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the master answered the ping");
    let real = c.worker.incarnation();
    let mut view = c.master.membership();
    let heartbeats = c.config.cluster.heartbeat_interval * 3;
    let changed = tokio::time::timeout(
        heartbeats,
        view.wait_for(|v| v.members.get("worker-1").map(|m| m.incarnation) != Some(real)),
    )
    .await;
    assert!(
        changed.is_err(),
        "the forged status replaced worker-1 in the master's view"
    );
    c.assert_still_serving().await;
    c.stop().await;
}

#[actix_rt::test]
async fn a_relayed_status_with_a_new_incarnation_cannot_replace_a_live_directly_linked_node() {
    let mut c = Cluster::start(2).await;
    let (mut link, _me) = authenticated_as_worker_2(&c).await;
    info!("--- worker-2 relays a plausible restart of worker-1: booted just now, no links");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged = Message::Status(Box::new(wire::Status {
        node: "worker-1".into(),
        incarnation: Uuid::new_v4(),
        boot_ms: now_ms + 1000,
        version: 1,
        role: "worker".into(),
        links: vec![],
        stats: wire::NodeStats::default(),
        methods: vec![],
        http: vec![],
    }));
    link.send(&forged).await.unwrap();
    // Read in order: once the master answers a later ping, the forged status has reached
    // Membership's mailbox; a few heartbeats later it would have taken effect.
    link.send(&Message::Ping(Ping { n: 8 })).await.unwrap();
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = link.next().await {
            if frame.1 == Message::Pong(Ping { n: 8 }) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the master answered the ping");
    let real = c.worker.incarnation();
    let mut view = c.master.membership();
    let heartbeats = c.config.cluster.heartbeat_interval * 5;
    let changed = tokio::time::timeout(
        heartbeats,
        view.wait_for(|v| v.members.get("worker-1").map(|m| m.incarnation) != Some(real)),
    )
    .await;
    assert!(
        changed.is_err(),
        "the relayed forgery replaced (or downed) worker-1 in the master's view"
    );
    c.assert_still_serving().await;
    c.stop().await;
}
