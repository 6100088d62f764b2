//! The handshake that opens every link: version and cluster check, then mutual
//! HMAC-SHA256 authentication over both sides' random nonces.
//!
//! ```text
//! dialler                                   acceptor
//!   hello {version, cluster, node, incarnation, nonce_d, [session]}  ->
//!         <-  hello_ack {version, cluster, node, incarnation, nonce_a, proof_a, [session]}
//!   auth {proof_d}                                                    ->
//!                 <-  welcome {limits}
//! ```
//! `hello.version` is the highest version the dialler speaks; the acceptor answers with the
//! version both speak from then on (the lower of the two highest), or refuses one below
//! [`MIN_PROTOCOL_VERSION`]. In version 2 a peer dialler may ask for a resumable link with a
//! `session`; the acceptor's `admit` decides whether it gets one (and which), and states its
//! limits in `welcome`.
//! `proof_x = HMAC-SHA256(secret, transcript(label_x))`, where the transcript binds the cluster,
//! both names, both incarnations and both nonces, and the label differs per direction so one
//! side's proof can never be replayed as the other's. Proofs are compared in constant time; the
//! secret never crosses the wire. Either side that refuses sends an `error` frame and closes.
//! A side may refuse an authenticated peer too (the `check` of `accept_with` / `dial_with`): the
//! acceptor sends `error` in place of `welcome`, the dialler in place of `auth`; that is where
//! a second process claiming a node that is up gets `duplicate_node`.
//! The whole exchange runs under one deadline with frames of at most
//! [`MAX_HANDSHAKE_FRAME_BYTES`](super::MAX_HANDSHAKE_FRAME_BYTES). The deadline counts the
//! time this side ran (see [`within_running_time`]): a side whose thread was starved does not
//! blame the peer for the answer it had not read yet.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use uuid::Uuid;

use super::codec::{FrameCodec, WireError};
use super::frame::{Auth, ErrorFrame, Frame, Hello, HelloAck, Message, Session, Welcome};
use super::{valid_name, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

const LABEL_DIALLER: &[u8] = b"nodecloud/1 dialler";
const LABEL_ACCEPTOR: &[u8] = b"nodecloud/1 acceptor";

/// Who this side is, the key it proves it holds, and the limits it states when it accepts.
#[derive(Clone)]
pub struct Identity {
    pub cluster: String,
    pub node: String,
    pub incarnation: Uuid,
    pub secret: Vec<u8>,
    /// Sent as `welcome` on a version 2 link this side accepts (version 1: the empty map).
    pub welcome: Welcome,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// The authenticated peer, and what the handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node: String,
    pub incarnation: Uuid,
    /// The version both sides speak on this link.
    pub version: u32,
    /// `Some` on a resumable link: the peer's `session` (for the dialler, the acceptor's
    /// answer; for the acceptor, the dialler's offer). The link then numbers frames as
    /// streams ([`FrameCodec::set_resumable`] has been called).
    pub session: Option<Session>,
    /// The limits the acceptor stated (what the dialler received; empty for the acceptor).
    pub welcome: Welcome,
}

/// Why a handshake failed. Every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("expected {expected} during the handshake, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error(
        "protocol version {theirs} is not supported (this node speaks {MIN_PROTOCOL_VERSION} to {ours})"
    )]
    Version { ours: u32, theirs: u32 },
    #[error("the acceptor answered with a session the dialler did not ask for")]
    UnaskedSession,
    #[error("peer belongs to cluster {theirs:?}, not {ours:?}")]
    Cluster { ours: String, theirs: String },
    #[error("invalid node name {0:?}")]
    BadName(String),
    #[error("authentication failed: the peer does not hold the cluster secret")]
    AuthFailed,
    #[error("peer refused the link: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("{0}")]
    NotAdmitted(String),
    #[error("no randomness available for a nonce: {0}")]
    Rng(String),
    /// The peer claims a node name that another process holds on a live link here
    /// (see `node::identity`); sent as `duplicate_node`.
    #[error("{0}")]
    Duplicate(String),
}

impl HandshakeError {
    /// The code of the `error` frame sent before closing (none if the peer already left).
    fn code(&self) -> Option<&'static str> {
        Some(match self {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Closed | HandshakeError::Refused { .. } | HandshakeError::Rng(_) => {
                return None
            }
            HandshakeError::Wire(WireError::Io(_)) => return None,
            HandshakeError::Wire(e) => e.code(),
            HandshakeError::Unexpected { .. } | HandshakeError::UnaskedSession => {
                "unexpected_message"
            }
            HandshakeError::Duplicate(_) => "duplicate_node",
            HandshakeError::Version { .. } => "version",
            HandshakeError::Cluster { .. } => "cluster",
            HandshakeError::BadName(_) => "bad_name",
            HandshakeError::AuthFailed => "auth_failed",
            HandshakeError::NotAdmitted(_) => "not_admitted",
        })
    }
}

/// Run the dialler's side of a plain link (no resume). On success the codec in `framed` is
/// ready for the session.
///
/// # Errors
/// Any [`HandshakeError`]; the peer has been told why when it is still there.
pub async fn dial<T>(
    framed: &mut Framed<T, FrameCodec>,
    me: &Identity,
    deadline: Duration,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    dial_with(framed, me, deadline, None, |_| Ok(())).await
}

/// The dialler's side, asking for a resumable link with `session` (`Some`: the session held
/// with that peer, or `{id: 0, received: 0}` for a new one; the link is resumable if
/// [`PeerInfo::session`] is `Some`). `check` sees the acceptor once it has proved who it is,
/// before this side proves itself: its error (such as [`HandshakeError::Duplicate`]) is sent
/// as the `error` frame in place of `auth`.
///
/// # Errors
/// Any [`HandshakeError`]; the peer has been told why when it is still there.
pub async fn dial_with<T, C>(
    framed: &mut Framed<T, FrameCodec>,
    me: &Identity,
    deadline: Duration,
    session: Option<Session>,
    check: C,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: FnOnce(&PeerInfo) -> Result<(), HandshakeError>,
{
    let result = within_running_time(deadline, dial_steps(framed, me, session, check))
        .await
        .unwrap_or(Err(HandshakeError::Timeout(deadline)));
    refuse_on_error(framed, result).await
}

/// Run the acceptor's side of a link that is never resumed. `admit` sees the dialler's (not
/// yet authenticated) hello and may refuse it, for example a node name the configuration does
/// not know.
///
/// # Errors
/// Any [`HandshakeError`]; the peer has been told why when it is still there.
pub async fn accept<T, F>(
    framed: &mut Framed<T, FrameCodec>,
    me: &Identity,
    deadline: Duration,
    admit: F,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Hello) -> Result<(), String>,
{
    accept_with(
        framed,
        me,
        deadline,
        |hello| admit(hello).map(|()| None),
        |_| Ok(()),
    )
    .await
}

/// The acceptor's side. `admit` sees the dialler's (not yet authenticated) hello and refuses
/// it, or admits it with the `session` to answer (`Some` only when the hello asked for one on
/// version 2; otherwise it is ignored and the link is plain); it must change nothing (see
/// [`answer_hello`](crate::link::stream::answer_hello)): the caller acts on the session once
/// this returns `Ok`. `check` sees the dialler once it has proved who it is, before
/// `welcome`: its error (such as [`HandshakeError::Duplicate`]) is sent as the `error` frame
/// in place of `welcome`. Checks that depend on who the peer really is belong in `check`, not
/// in `admit`.
///
/// # Errors
/// Any [`HandshakeError`]; the peer has been told why when it is still there.
pub async fn accept_with<T, F, C>(
    framed: &mut Framed<T, FrameCodec>,
    me: &Identity,
    deadline: Duration,
    admit: F,
    check: C,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Hello) -> Result<Option<Session>, String>,
    C: FnOnce(&PeerInfo) -> Result<(), HandshakeError>,
{
    let result = within_running_time(deadline, accept_steps(framed, me, admit, check))
        .await
        .unwrap_or(Err(HandshakeError::Timeout(deadline)));
    refuse_on_error(framed, result).await
}

/// `fut`'s output, or `None` once it has run for `deadline` of the time this side ran.
///
/// A check timer ticks every twentieth of the deadline (10 to 250 ms); lateness of a tick
/// beyond one step is time this thread did not run (other work on it, a stopped process) and
/// is not counted, as the links' silence clocks excuse such pauses. A thousand nodes in one
/// process on two cores left their handshakes' answers unread for seconds while their threads
/// caught up, timed out, and dialled again, each new link costing a catch-up more: most of a
/// forming 1,000-node star's links were lost that way. `fut` is polled before every check, so
/// an answer that arrived during a pause is read, not timed out.
async fn within_running_time<F: std::future::Future>(
    deadline: Duration,
    fut: F,
) -> Option<F::Output> {
    let step = (deadline / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut counted = Duration::ZERO;
    tokio::pin!(fut);
    while counted < deadline {
        let planned = step.min(deadline - counted);
        let due = tokio::time::Instant::now() + planned;
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = tokio::time::sleep_until(due) => {
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                counted += planned + late.min(step);
            }
        }
    }
    None
}

async fn dial_steps<T, C>(
    framed: &mut Framed<T, FrameCodec>,
    me: &Identity,
    session: Option<Session>,
    check: C,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: FnOnce(&PeerInfo) -> Result<(), HandshakeError>,
{
    let nonce = fresh_nonce()?;
    framed
        .send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            incarnation: me.incarnation,
            nonce,
            session,
        }))
        .await?;
    let ack = match next(framed).await? {
        Message::HelloAck(ack) => ack,
        other => return Err(unexpected("hello_ack", &other)),
    };
    // The acceptor chose; it may not choose above what was offered.
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&ack.version) {
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: ack.version,
        });
    }
    check_peer(me, &ack.cluster, &ack.node)?;
    if ack.session.is_some() && (session.is_none() || ack.version < 2) {
        return Err(HandshakeError::UnaskedSession);
    }
    let transcript = Transcript {
        cluster: &me.cluster,
        dialler: (&me.node, me.incarnation, &nonce),
        acceptor: (&ack.node, ack.incarnation, &ack.nonce),
    };
    transcript.verify(&me.secret, LABEL_ACCEPTOR, &ack.proof)?;
    let mut peer = PeerInfo {
        node: ack.node.clone(),
        incarnation: ack.incarnation,
        version: ack.version,
        session: ack.session,
        welcome: Welcome::default(),
    };
    check(&peer)?;
    let proof = transcript.prove(&me.secret, LABEL_DIALLER)?;
    framed.send(&Message::Auth(Auth { proof })).await?;
    match next(framed).await? {
        Message::Welcome(welcome) => {
            if ack.session.is_some() {
                framed.codec_mut().set_resumable();
            }
            peer.welcome = welcome;
            Ok(peer)
        }
        other => Err(unexpected("welcome", &other)),
    }
}

async fn accept_steps<T, F, C>(
    framed: &mut Framed<T, FrameCodec>,
    me: &Identity,
    admit: F,
    check: C,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Hello) -> Result<Option<Session>, String>,
    C: FnOnce(&PeerInfo) -> Result<(), HandshakeError>,
{
    let hello = match next(framed).await? {
        Message::Hello(hello) => hello,
        other => return Err(unexpected("hello", &other)),
    };
    if hello.version < MIN_PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        });
    }
    let version = hello.version.min(PROTOCOL_VERSION);
    check_peer(me, &hello.cluster, &hello.node)?;
    let answer = admit(&hello).map_err(HandshakeError::NotAdmitted)?;
    // A session only where the dialler asked for one, on version 2.
    let session = answer.filter(|_| hello.session.is_some() && version >= 2);
    let nonce = fresh_nonce()?;
    let transcript = Transcript {
        cluster: &me.cluster,
        dialler: (&hello.node, hello.incarnation, &hello.nonce),
        acceptor: (&me.node, me.incarnation, &nonce),
    };
    let proof = transcript.prove(&me.secret, LABEL_ACCEPTOR)?;
    framed
        .send(&Message::HelloAck(HelloAck {
            version,
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            incarnation: me.incarnation,
            nonce,
            proof,
            session,
        }))
        .await?;
    let auth = match next(framed).await? {
        Message::Auth(auth) => auth,
        other => return Err(unexpected("auth", &other)),
    };
    transcript.verify(&me.secret, LABEL_DIALLER, &auth.proof)?;
    let peer = PeerInfo {
        node: hello.node,
        incarnation: hello.incarnation,
        version,
        session: session.and(hello.session),
        welcome: Welcome::default(),
    };
    check(&peer)?;
    // Version 1 peers were promised the empty map.
    let welcome = if version >= 2 {
        me.welcome.clone()
    } else {
        Welcome::default()
    };
    framed.send(&Message::Welcome(welcome)).await?;
    if session.is_some() {
        framed.codec_mut().set_resumable();
    }
    Ok(peer)
}

/// Tell the peer why (best effort, bounded) before the caller drops the connection.
async fn refuse_on_error<T>(
    framed: &mut Framed<T, FrameCodec>,
    result: Result<PeerInfo, HandshakeError>,
) -> Result<PeerInfo, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(err) = &result {
        if let Some(code) = err.code() {
            let frame = Message::Error(ErrorFrame {
                code: code.to_owned(),
                message: err.to_string(),
            });
            let _ = tokio::time::timeout(Duration::from_millis(200), framed.send(&frame)).await;
        }
    }
    result
}

async fn next<T>(framed: &mut Framed<T, FrameCodec>) -> Result<Message, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match framed.next().await {
        None => Err(HandshakeError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Frame(_, Message::Error(e)))) => Err(HandshakeError::Refused {
            code: e.code,
            message: e.message,
        }),
        Some(Ok(Frame(_, msg))) => Ok(msg),
    }
}

fn unexpected(expected: &'static str, got: &Message) -> HandshakeError {
    HandshakeError::Unexpected {
        expected,
        got: got.kind(),
    }
}

fn check_peer(me: &Identity, cluster: &str, node: &str) -> Result<(), HandshakeError> {
    if cluster != me.cluster {
        return Err(HandshakeError::Cluster {
            ours: me.cluster.clone(),
            theirs: cluster.to_owned(),
        });
    }
    if !valid_name(node) {
        return Err(HandshakeError::BadName(node.chars().take(80).collect()));
    }
    Ok(())
}

fn fresh_nonce() -> Result<[u8; 32], HandshakeError> {
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).map_err(|e| HandshakeError::Rng(e.to_string()))?;
    Ok(nonce)
}

/// Everything both proofs cover. Names cannot contain NUL (see [`valid_name`]), so the
/// NUL-separated encoding is unambiguous.
struct Transcript<'a> {
    cluster: &'a str,
    dialler: (&'a str, Uuid, &'a [u8; 32]),
    acceptor: (&'a str, Uuid, &'a [u8; 32]),
}

impl Transcript<'_> {
    fn mac(&self, secret: &[u8], label: &[u8]) -> Result<HmacSha256, HandshakeError> {
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| HandshakeError::AuthFailed)?;
        for part in [
            label,
            self.cluster.as_bytes(),
            self.dialler.0.as_bytes(),
            self.acceptor.0.as_bytes(),
        ] {
            mac.update(part);
            mac.update(&[0]);
        }
        mac.update(self.dialler.1.as_bytes());
        mac.update(self.acceptor.1.as_bytes());
        mac.update(self.dialler.2);
        mac.update(self.acceptor.2);
        Ok(mac)
    }

    fn prove(&self, secret: &[u8], label: &[u8]) -> Result<[u8; 32], HandshakeError> {
        Ok(self.mac(secret, label)?.finalize().into_bytes().into())
    }

    /// Constant-time comparison (`verify_slice`).
    fn verify(&self, secret: &[u8], label: &[u8], proof: &[u8; 32]) -> Result<(), HandshakeError> {
        self.mac(secret, label)?
            .verify_slice(proof)
            .map_err(|_| HandshakeError::AuthFailed)
    }
}

#[cfg(test)]
mod tests;
