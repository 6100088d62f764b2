//! Handshake tests over in-memory duplex pipes: both real sides, or one real side against a
//! scripted peer that misbehaves. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, DuplexStream};

use super::*;
use crate::wire::frame::{Ping, Session};
use crate::wire::MAX_HANDSHAKE_FRAME_BYTES;

const SECRET: &[u8] = b"test-secret-0123456789";
/// Generous: only the timeout tests rely on a deadline actually expiring.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long a scripted peer waits for the real side's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

type Link = Framed<DuplexStream, FrameCodec>;

fn identity(node: &str) -> Identity {
    Identity {
        cluster: "test".into(),
        node: node.into(),
        incarnation: Uuid::new_v4(),
        secret: SECRET.to_vec(),
        welcome: Welcome {
            max_frame_bytes: Some(1 << 20),
            ..Welcome::default()
        },
    }
}

fn pipe() -> (Link, Link) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Framed::new(a, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES)),
        Framed::new(b, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES)),
    )
}

fn admit_all(_: &Hello) -> Result<(), String> {
    Ok(())
}

/// `admit_all` for [`accept_with`]: admitted, without a session.
fn admit_plain(_: &Hello) -> Result<Option<Session>, String> {
    Ok(None)
}

/// A check that passes every peer.
fn pass(_: &PeerInfo) -> Result<(), HandshakeError> {
    Ok(())
}

fn hello_from(me: &Identity, nonce: [u8; 32]) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: me.cluster.clone(),
        node: me.node.clone(),
        incarnation: me.incarnation,
        nonce,
        session: None,
    })
}

/// The next frame a scripted peer receives (bounded).
async fn recv(link: &mut Link) -> Option<Frame> {
    match tokio::time::timeout(ANSWER_WITHIN, link.next()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(Some(Err(e))) => panic!("scripted peer could not decode: {e}"),
        Ok(None) => None,
        Err(_) => panic!("no frame within {ANSWER_WITHIN:?}"),
    }
}

/// The `error` frame a scripted peer receives next: its code and message.
async fn recv_error(link: &mut Link) -> (String, String) {
    match recv(link).await {
        Some(Frame(_, Message::Error(e))) => (e.code, e.message),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

async fn recv_hello_ack(link: &mut Link) -> HelloAck {
    match recv(link).await {
        Some(Frame(_, Message::HelloAck(ack))) => ack,
        other => panic!("expected hello_ack, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Success

#[tokio::test]
async fn handshake_succeeds_and_each_side_learns_the_other() {
    let (mut d, mut a) = pipe();
    let (worker, master) = (identity("worker-1"), identity("master"));
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &worker, DEADLINE),
        accept(&mut a, &master, DEADLINE, admit_all)
    );
    assert_eq!(
        dialled.unwrap(),
        PeerInfo {
            node: "master".into(),
            incarnation: master.incarnation,
            version: PROTOCOL_VERSION,
            session: None,
            welcome: master.welcome.clone(),
        }
    );
    assert_eq!(
        accepted.unwrap(),
        PeerInfo {
            node: "worker-1".into(),
            incarnation: worker.incarnation,
            version: PROTOCOL_VERSION,
            session: None,
            welcome: Welcome::default(),
        }
    );

    // The link continues with the handshake's numbering: each side sent two frames.
    assert_eq!(d.codec().next_out_seq(), 2);
    assert_eq!(a.codec().next_out_seq(), 2);
    d.send(&Message::Ping(Ping { n: 7 })).await.unwrap();
    assert_eq!(
        recv(&mut a).await,
        Some(Frame(2, Message::Ping(Ping { n: 7 })))
    );
    a.send(&Message::Pong(Ping { n: 7 })).await.unwrap();
    assert_eq!(
        recv(&mut d).await,
        Some(Frame(2, Message::Pong(Ping { n: 7 })))
    );
}

/// A side whose thread did not run for longer than the deadline (a thousand nodes sharing two
/// cores; a stopped process) reads the answer that came meanwhile and goes on: the deadline
/// counts the time it ran. The dialler is blocked after sending `hello`, the acceptor answers
/// from a thread of its own, and the dialler's `auth` comes after its deadline has passed on
/// the clock (a plain timeout refused it: checked).
#[test]
fn a_dialler_whose_thread_did_not_run_past_its_deadline_still_completes_the_handshake() {
    let (mut d, mut a) = pipe();
    let (worker, master) = (identity("worker-1"), identity("master"));
    let acceptor = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(accept(&mut a, &master, DEADLINE, admit_all))
            .map(|p| p.node)
    });
    let deadline = Duration::from_millis(200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dialled = rt.block_on(async move {
        let dialling = tokio::spawn(async move { dial(&mut d, &worker, deadline).await });
        // The dial task sends `hello` and waits; then this thread does not run it.
        tokio::task::yield_now().await;
        std::thread::sleep(deadline * 3);
        dialling.await.unwrap()
    });
    let node = |r: Result<String, HandshakeError>| r.map_err(|e| e.to_string());
    assert_eq!(node(dialled.map(|p| p.node)), Ok("master".to_owned()));
    assert_eq!(node(acceptor.join().unwrap()), Ok("worker-1".to_owned()));
}

#[tokio::test]
async fn handshake_succeeds_whichever_side_dials() {
    let (a_id, b_id) = (identity("n1"), identity("n2"));
    for (dialler, acceptor) in [(&a_id, &b_id), (&b_id, &a_id)] {
        let (mut d, mut a) = pipe();
        let (dialled, accepted) = tokio::join!(
            dial(&mut d, dialler, DEADLINE),
            accept(&mut a, acceptor, DEADLINE, admit_all)
        );
        assert_eq!(dialled.unwrap().node, acceptor.node);
        assert_eq!(accepted.unwrap().node, dialler.node);
    }
}

#[tokio::test]
async fn a_message_of_an_unknown_kind_during_the_handshake_is_ignored() {
    // The dialler's first frame is {"future": {"x": 1}}, seq 0; its hello follows as seq 1.
    let master_id = identity("master");
    let (mut peer, mut a) = pipe();
    let me = identity("worker-1");
    let mut buf = bytes::BytesMut::new();
    let future = crate::wire::EncodedMessage::from_cbor(b"\xa1\x66future\xa1\x61x\x01");
    peer.codec_mut().encode_frame(&future, &mut buf).unwrap();
    peer.get_mut().write_all(&buf).await.unwrap();
    let (accepted, ack) = tokio::join!(accept(&mut a, &master_id, DEADLINE, admit_all), async {
        peer.send(&hello_from(&me, [3; 32])).await.unwrap();
        let ack = recv_hello_ack(&mut peer).await;
        drop(peer);
        ack
    });
    assert_eq!(ack.node, "master", "the hello was answered");
    assert!(
        matches!(accepted, Err(HandshakeError::Closed)),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn admit_sees_the_dialler_hello() {
    let master_id = identity("master");
    let (mut d, mut a) = pipe();
    let worker = identity("worker-1");
    let mut seen = None;
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &worker, DEADLINE),
        accept(&mut a, &master_id, DEADLINE, |h: &Hello| {
            seen = Some((h.node.clone(), h.incarnation, h.version));
            Ok(())
        })
    );
    dialled.unwrap();
    accepted.unwrap();
    assert_eq!(
        seen,
        Some(("worker-1".into(), worker.incarnation, PROTOCOL_VERSION))
    );
}

#[test]
fn nonces_are_fresh_each_time() {
    let (a, b) = (fresh_nonce().unwrap(), fresh_nonce().unwrap());
    assert_ne!(a, b);
    assert_ne!(a, [0; 32]);
}

// ---------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn dialler_with_the_wrong_secret_fails_and_tells_the_acceptor() {
    let master_id = identity("master");
    // The dialler checks the acceptor's proof first, so it is the one that finds out.
    let (mut d, mut a) = pipe();
    let mut intruder = identity("worker-1");
    intruder.secret = b"not-the-secret".to_vec();
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &intruder, DEADLINE),
        accept(&mut a, &master_id, DEADLINE, admit_all)
    );
    assert!(
        matches!(dialled, Err(HandshakeError::AuthFailed)),
        "{dialled:?}"
    );
    match accepted {
        Err(HandshakeError::Refused { code, .. }) => assert_eq!(code, "auth_failed"),
        other => panic!("expected Refused(auth_failed), got {other:?}"),
    }
}

#[tokio::test]
async fn acceptor_with_the_wrong_secret_is_detected_by_the_dialler() {
    let worker_id = identity("worker-1");
    let (mut d, mut a) = pipe();
    let mut impostor = identity("master");
    impostor.secret = b"not-the-secret".to_vec();
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &worker_id, DEADLINE),
        accept(&mut a, &impostor, DEADLINE, admit_all)
    );
    assert!(
        matches!(dialled, Err(HandshakeError::AuthFailed)),
        "{dialled:?}"
    );
    assert!(
        matches!(accepted, Err(HandshakeError::Refused { ref code, .. }) if code == "auth_failed"),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn forged_dialler_proof_is_refused_with_auth_failed() {
    let (mut peer, mut a) = pipe();
    let master = identity("master");
    let me = identity("worker-1");
    let (accepted, (code, message)) =
        tokio::join!(accept(&mut a, &master, DEADLINE, admit_all), async {
            peer.send(&hello_from(&me, [1; 32])).await.unwrap();
            let _ack = recv_hello_ack(&mut peer).await;
            peer.send(&Message::Auth(Auth { proof: [0xee; 32] }))
                .await
                .unwrap();
            recv_error(&mut peer).await
        });
    assert!(
        matches!(accepted, Err(HandshakeError::AuthFailed)),
        "{accepted:?}"
    );
    assert_eq!(code, "auth_failed");
    assert!(message.contains("authentication failed"), "{message}");
}

#[tokio::test]
async fn acceptor_proof_replayed_as_the_dialler_proof_is_refused() {
    // A peer without the secret echoes the acceptor's own proof back: the direction label
    // differs, so it cannot verify as the dialler's.
    let (mut peer, mut a) = pipe();
    let master = identity("master");
    let me = identity("worker-1");
    let (accepted, (code, _)) = tokio::join!(accept(&mut a, &master, DEADLINE, admit_all), async {
        peer.send(&hello_from(&me, [2; 32])).await.unwrap();
        let ack = recv_hello_ack(&mut peer).await;
        peer.send(&Message::Auth(Auth { proof: ack.proof }))
            .await
            .unwrap();
        recv_error(&mut peer).await
    });
    assert!(
        matches!(accepted, Err(HandshakeError::AuthFailed)),
        "{accepted:?}"
    );
    assert_eq!(code, "auth_failed");
}

#[test]
fn a_proof_verifies_only_in_its_own_direction_and_transcript() {
    let (nd, na) = ([3u8; 32], [4u8; 32]);
    let (id, ia) = (Uuid::from_bytes([5; 16]), Uuid::from_bytes([6; 16]));
    let t = Transcript {
        cluster: "test",
        dialler: ("worker-1", id, &nd),
        acceptor: ("master", ia, &na),
    };
    let proof_a = t.prove(SECRET, LABEL_ACCEPTOR).unwrap();
    let proof_d = t.prove(SECRET, LABEL_DIALLER).unwrap();
    assert_ne!(proof_a, proof_d);
    t.verify(SECRET, LABEL_ACCEPTOR, &proof_a).unwrap();
    t.verify(SECRET, LABEL_DIALLER, &proof_d).unwrap();
    assert!(matches!(
        t.verify(SECRET, LABEL_DIALLER, &proof_a),
        Err(HandshakeError::AuthFailed)
    ));
    // Swapping the roles (a reflection of the same connection) changes the transcript.
    let reflected = Transcript {
        cluster: "test",
        dialler: ("master", ia, &na),
        acceptor: ("worker-1", id, &nd),
    };
    assert!(reflected.verify(SECRET, LABEL_DIALLER, &proof_d).is_err());
    // Another secret, another proof.
    assert!(t.verify(b"other", LABEL_ACCEPTOR, &proof_a).is_err());
}

#[test]
fn transcript_is_the_documented_byte_layout() {
    // label 0x00 cluster 0x00 dialler 0x00 acceptor 0x00 inc_d inc_a nonce_d nonce_a
    let (nd, na) = ([0x0d; 32], [0x0a; 32]);
    let (id, ia) = (Uuid::from_bytes([0xd1; 16]), Uuid::from_bytes([0xa1; 16]));
    let t = Transcript {
        cluster: "test",
        dialler: ("worker-1", id, &nd),
        acceptor: ("master", ia, &na),
    };
    for label in [LABEL_DIALLER, LABEL_ACCEPTOR] {
        let mut msg = Vec::new();
        for part in [label, b"test", b"worker-1", b"master"] {
            msg.extend_from_slice(part);
            msg.push(0);
        }
        msg.extend_from_slice(&[0xd1; 16]);
        msg.extend_from_slice(&[0xa1; 16]);
        msg.extend_from_slice(&nd);
        msg.extend_from_slice(&na);
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(&msg);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(t.prove(SECRET, label).unwrap(), expected);
    }
    assert_eq!(LABEL_DIALLER, b"nodecloud/1 dialler");
    assert_eq!(LABEL_ACCEPTOR, b"nodecloud/1 acceptor");
}

// ---------------------------------------------------------------------------------------
// Refusals before authentication

#[tokio::test]
async fn wrong_cluster_is_refused() {
    let master_id = identity("master");
    let (mut d, mut a) = pipe();
    let mut stranger = identity("worker-1");
    stranger.cluster = "other".into();
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &stranger, DEADLINE),
        accept(&mut a, &master_id, DEADLINE, admit_all)
    );
    match accepted {
        Err(HandshakeError::Cluster { ours, theirs }) => {
            assert_eq!((ours.as_str(), theirs.as_str()), ("test", "other"))
        }
        other => panic!("expected Cluster, got {other:?}"),
    }
    assert!(
        matches!(dialled, Err(HandshakeError::Refused { ref code, .. }) if code == "cluster"),
        "{dialled:?}"
    );
}

#[tokio::test]
async fn version_below_the_lowest_spoken_is_refused() {
    let master_id = identity("master");
    let (mut peer, mut a) = pipe();
    let me = identity("worker-1");
    let mut hello = hello_from(&me, [7; 32]);
    if let Message::Hello(h) = &mut hello {
        h.version = 0;
    }
    let (accepted, (code, message)) =
        tokio::join!(accept(&mut a, &master_id, DEADLINE, admit_all), async {
            peer.send(&hello).await.unwrap();
            recv_error(&mut peer).await
        });
    assert!(
        matches!(
            accepted,
            Err(HandshakeError::Version {
                ours: PROTOCOL_VERSION,
                theirs: 0
            })
        ),
        "{accepted:?}"
    );
    assert_eq!(code, "version");
    assert!(message.contains("version 0"), "{message}");
}

/// A scripted dialler offering `version`: the acceptor's hello_ack version, and its welcome.
async fn negotiate(version: u32) -> (u32, Welcome, PeerInfo) {
    let master_id = identity("master");
    let (mut peer, mut a) = pipe();
    let me = identity("worker-1");
    let nonce_d = [7; 32];
    let mut hello = hello_from(&me, nonce_d);
    if let Message::Hello(h) = &mut hello {
        h.version = version;
    }
    let (accepted, (chosen, welcome)) =
        tokio::join!(accept(&mut a, &master_id, DEADLINE, admit_all), async {
            peer.send(&hello).await.unwrap();
            let ack = recv_hello_ack(&mut peer).await;
            let proof = Transcript {
                cluster: &me.cluster,
                dialler: (&me.node, me.incarnation, &nonce_d),
                acceptor: (&ack.node, ack.incarnation, &ack.nonce),
            }
            .prove(SECRET, LABEL_DIALLER)
            .unwrap();
            peer.send(&Message::Auth(Auth { proof })).await.unwrap();
            match recv(&mut peer).await {
                Some(Frame(1, Message::Welcome(w))) => (ack.version, w),
                other => panic!("expected welcome, got {other:?}"),
            }
        });
    (chosen, welcome, accepted.unwrap())
}

#[tokio::test]
async fn the_acceptor_answers_with_the_lower_of_the_two_highest_versions() {
    let (chosen, welcome, info) = negotiate(1).await;
    assert_eq!((chosen, info.version), (1, 1));
    assert_eq!(
        welcome,
        Welcome::default(),
        "version 1 was promised the empty map"
    );
    let (chosen, welcome, info) = negotiate(PROTOCOL_VERSION).await;
    assert_eq!((chosen, info.version), (PROTOCOL_VERSION, PROTOCOL_VERSION));
    assert_eq!(
        welcome.max_frame_bytes,
        Some(1 << 20),
        "version 2 states limits"
    );
    let (chosen, _, _) = negotiate(99).await;
    assert_eq!(
        chosen, PROTOCOL_VERSION,
        "a later dialler is answered with ours"
    );
}

#[tokio::test]
async fn a_resumable_link_exchanges_sessions_and_numbers_frames_as_streams() {
    let (mut d, mut a) = pipe();
    let (worker, master) = (identity("worker-1"), identity("master"));
    let asked = Session { id: 0, received: 0 };
    let answer = Session {
        id: 42,
        received: 0,
    };
    let mut offered = None;
    let (dialled, accepted) = tokio::join!(
        dial_with(&mut d, &worker, DEADLINE, Some(asked), pass),
        accept_with(
            &mut a,
            &master,
            DEADLINE,
            |h: &Hello| {
                offered = h.session;
                Ok(Some(answer))
            },
            pass
        )
    );
    assert_eq!(offered, Some(asked));
    assert_eq!(dialled.unwrap().session, Some(answer));
    assert_eq!(accepted.unwrap().session, Some(asked));
    assert!(d.codec().is_resumable() && a.codec().is_resumable());

    // A ping carries seq 0, a stream frame its stream seq.
    d.send(&Message::Ping(Ping { n: 1 })).await.unwrap();
    assert_eq!(
        recv(&mut a).await,
        Some(Frame(0, Message::Ping(Ping { n: 1 })))
    );
    let reply = crate::wire::frame::PeerReply {
        id: 1,
        target: "worker-1".into(),
        target_incarnation: worker.incarnation,
        ttl: 2,
        outcome: crate::wire::frame::Outcome::Ok(bytes::Bytes::new()),
    };
    let msg = crate::wire::encode_message(&Message::PeerReply(reply.clone())).unwrap();
    let mut buf = bytes::BytesMut::new();
    a.codec_mut().encode_frame_at(&msg, 1, &mut buf).unwrap();
    a.get_mut().write_all(&buf).await.unwrap();
    assert_eq!(
        recv(&mut d).await,
        Some(Frame(1, Message::PeerReply(reply)))
    );
}

/// The dialler's deadline passes after its `auth`, just as the acceptor sends `welcome`: its
/// `error` goes out as a handshake frame (seq 2), and the acceptor, numbering the resumable
/// link as streams by then, reads it as the `error` it is (not as a numbering fault).
#[tokio::test]
async fn a_dialler_error_crossing_the_welcome_of_a_resumable_link_is_read_as_an_error() {
    let (mut peer, mut a) = pipe();
    let master = identity("master");
    let me = identity("worker-1");
    let answer = Session { id: 9, received: 0 };
    let nonce = [3; 32];
    let (accepted, ()) = tokio::join!(
        accept_with(
            &mut a,
            &master,
            DEADLINE,
            |_: &Hello| Ok(Some(answer)),
            pass
        ),
        async {
            let mut hello = hello_from(&me, nonce);
            if let Message::Hello(h) = &mut hello {
                h.session = Some(Session { id: 0, received: 0 });
            }
            peer.send(&hello).await.unwrap();
            let ack = recv_hello_ack(&mut peer).await;
            let transcript = Transcript {
                cluster: &me.cluster,
                dialler: (&me.node, me.incarnation, &nonce),
                acceptor: (&ack.node, ack.incarnation, &ack.nonce),
            };
            let proof = transcript.prove(SECRET, LABEL_DIALLER).unwrap();
            peer.send(&Message::Auth(Auth { proof })).await.unwrap();
            // Still in its handshake: numbered per connection, after hello (0) and auth (1).
            peer.send(&Message::Error(ErrorFrame {
                code: "timeout".into(),
                message: "handshake not completed within 5s".into(),
            }))
            .await
            .unwrap();
        }
    );
    assert!(accepted.unwrap().session.is_some());
    assert!(a.codec().is_resumable());
    match tokio::time::timeout(ANSWER_WITHIN, a.next()).await {
        Ok(Some(Ok(Frame(2, Message::Error(e))))) => assert_eq!(e.code, "timeout"),
        other => panic!("expected the dialler's error with seq 2, got {other:?}"),
    }
}

#[tokio::test]
async fn an_acceptor_that_does_not_resume_makes_a_plain_link() {
    let (mut d, mut a) = pipe();
    let (worker, master) = (identity("worker-1"), identity("master"));
    let (dialled, accepted) = tokio::join!(
        dial_with(
            &mut d,
            &worker,
            DEADLINE,
            Some(Session { id: 0, received: 0 }),
            pass
        ),
        accept(&mut a, &master, DEADLINE, admit_all)
    );
    assert_eq!(dialled.unwrap().session, None);
    assert_eq!(accepted.unwrap().session, None);
    assert!(!d.codec().is_resumable() && !a.codec().is_resumable());
    assert_eq!(d.codec().next_out_seq(), 2, "numbered per connection");
}

#[tokio::test]
async fn a_session_the_dialler_did_not_ask_for_is_refused() {
    let worker_id = identity("worker-1");
    let (mut d, mut peer) = pipe();
    let master = identity("master");
    let (dialled, (code, _)) = tokio::join!(dial(&mut d, &worker_id, DEADLINE), async {
        let _hello = recv(&mut peer).await;
        peer.send(&Message::HelloAck(HelloAck {
            version: PROTOCOL_VERSION,
            cluster: master.cluster.clone(),
            node: master.node.clone(),
            incarnation: master.incarnation,
            nonce: [8; 32],
            proof: [9; 32],
            session: Some(Session { id: 5, received: 0 }),
        }))
        .await
        .unwrap();
        recv_error(&mut peer).await
    });
    assert!(
        matches!(dialled, Err(HandshakeError::UnaskedSession)),
        "{dialled:?}"
    );
    assert_eq!(code, "unexpected_message");
}

#[tokio::test]
async fn wrong_version_in_hello_ack_is_refused_by_the_dialler() {
    let worker_id = identity("worker-1");
    let (mut d, mut peer) = pipe();
    let master = identity("master");
    let (dialled, (code, _)) = tokio::join!(dial(&mut d, &worker_id, DEADLINE), async {
        let Some(Frame(0, Message::Hello(_))) = recv(&mut peer).await else {
            panic!("expected hello")
        };
        peer.send(&Message::HelloAck(HelloAck {
            version: 99,
            cluster: master.cluster.clone(),
            node: master.node.clone(),
            incarnation: master.incarnation,
            nonce: [8; 32],
            proof: [9; 32],
            session: None,
        }))
        .await
        .unwrap();
        recv_error(&mut peer).await
    });
    assert!(
        matches!(dialled, Err(HandshakeError::Version { theirs: 99, .. })),
        "{dialled:?}"
    );
    assert_eq!(code, "version");
}

#[tokio::test]
async fn refused_admission_is_not_admitted() {
    let master_id = identity("master");
    let stranger_id = identity("stranger");
    let (mut d, mut a) = pipe();
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &stranger_id, DEADLINE),
        accept(&mut a, &master_id, DEADLINE, |h: &Hello| {
            Err(format!("node {:?} is not in this cluster", h.node))
        })
    );
    match accepted {
        Err(HandshakeError::NotAdmitted(why)) => assert!(why.contains("stranger"), "{why}"),
        other => panic!("expected NotAdmitted, got {other:?}"),
    }
    match dialled {
        Err(HandshakeError::Refused { code, message }) => {
            assert_eq!(code, "not_admitted");
            assert!(message.contains("stranger"), "{message}");
        }
        other => panic!("expected Refused(not_admitted), got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_node_names_are_refused() {
    let master_id = identity("master");
    for name in ["", "has space", "nul\0byte", &"x".repeat(65)] {
        let (mut peer, mut a) = pipe();
        let mut me = identity("placeholder");
        me.node = name.to_owned();
        let (accepted, (code, _)) =
            tokio::join!(accept(&mut a, &master_id, DEADLINE, admit_all), async {
                peer.send(&hello_from(&me, [1; 32])).await.unwrap();
                recv_error(&mut peer).await
            });
        assert!(
            matches!(accepted, Err(HandshakeError::BadName(_))),
            "{name:?}: {accepted:?}"
        );
        assert_eq!(code, "bad_name", "{name:?}");
    }
}

#[tokio::test]
async fn first_frame_other_than_hello_is_unexpected() {
    let master_id = identity("master");
    let (mut peer, mut a) = pipe();
    let (accepted, (code, _)) =
        tokio::join!(accept(&mut a, &master_id, DEADLINE, admit_all), async {
            peer.send(&Message::Ping(Ping { n: 1 })).await.unwrap();
            recv_error(&mut peer).await
        });
    assert!(
        matches!(
            accepted,
            Err(HandshakeError::Unexpected {
                expected: "hello",
                got: "ping"
            })
        ),
        "{accepted:?}"
    );
    assert_eq!(code, "unexpected_message");
}

#[tokio::test]
async fn dialler_answered_out_of_order_reports_unexpected() {
    let worker_id = identity("worker-1");
    let (mut d, mut peer) = pipe();
    let (dialled, (code, _)) = tokio::join!(dial(&mut d, &worker_id, DEADLINE), async {
        let _hello = recv(&mut peer).await;
        peer.send(&Message::Welcome(Welcome::default()))
            .await
            .unwrap();
        recv_error(&mut peer).await
    });
    assert!(
        matches!(
            dialled,
            Err(HandshakeError::Unexpected {
                expected: "hello_ack",
                got: "welcome"
            })
        ),
        "{dialled:?}"
    );
    assert_eq!(code, "unexpected_message");
}

#[tokio::test]
async fn oversized_handshake_frame_is_refused() {
    let master_id = identity("master");
    let (mut peer, mut a) = pipe();
    let (accepted, (code, _)) =
        tokio::join!(accept(&mut a, &master_id, DEADLINE, admit_all), async {
            let announced = (MAX_HANDSHAKE_FRAME_BYTES as u32 + 1).to_be_bytes();
            peer.get_mut().write_all(&announced).await.unwrap();
            recv_error(&mut peer).await
        });
    assert!(
        matches!(
            accepted,
            Err(HandshakeError::Wire(WireError::FrameTooLarge { .. }))
        ),
        "{accepted:?}"
    );
    assert_eq!(code, "frame_too_large");
}

#[tokio::test]
async fn peer_that_closes_during_the_handshake_is_closed() {
    let master_id = identity("master");
    let (peer, mut a) = pipe();
    drop(peer);
    let accepted = accept(&mut a, &master_id, DEADLINE, admit_all).await;
    assert!(
        matches!(accepted, Err(HandshakeError::Closed)),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn silent_dialler_times_out_at_the_deadline() {
    let master_id = identity("master");
    let (mut peer, mut a) = pipe();
    let deadline = Duration::from_millis(100);
    let started = Instant::now();
    let accepted = accept(&mut a, &master_id, deadline, admit_all).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(accepted, Err(HandshakeError::Timeout(d)) if d == deadline),
        "{accepted:?}"
    );
    assert!(elapsed >= deadline, "gave up early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    // The silent peer is told why.
    assert_eq!(recv_error(&mut peer).await.0, "timeout");
}

#[tokio::test]
async fn silent_acceptor_times_out_at_the_deadline() {
    let worker_id = identity("worker-1");
    let (mut d, _peer) = pipe();
    let deadline = Duration::from_millis(100);
    let started = Instant::now();
    let dialled = dial(&mut d, &worker_id, deadline).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(dialled, Err(HandshakeError::Timeout(_))),
        "{dialled:?}"
    );
    assert!(
        elapsed >= deadline && elapsed < Duration::from_secs(1),
        "took {elapsed:?}"
    );
}

#[test]
fn error_codes_are_the_documented_ones() {
    let cases: Vec<(HandshakeError, Option<&str>)> = vec![
        (HandshakeError::Timeout(DEADLINE), Some("timeout")),
        (HandshakeError::Closed, None),
        (
            HandshakeError::Refused {
                code: "x".into(),
                message: "y".into(),
            },
            None,
        ),
        (HandshakeError::Rng("none".into()), None),
        (
            HandshakeError::Wire(WireError::Io(std::io::ErrorKind::BrokenPipe.into())),
            None,
        ),
        (
            HandshakeError::Wire(WireError::FrameTooLarge { len: 2, max: 1 }),
            Some("frame_too_large"),
        ),
        (
            HandshakeError::Wire(WireError::Malformed("x".into())),
            Some("malformed_frame"),
        ),
        (
            HandshakeError::Wire(WireError::Truncated { have: 1 }),
            Some("malformed_frame"),
        ),
        (
            HandshakeError::Wire(WireError::OutOfSequence {
                expected: 0,
                got: 1,
            }),
            Some("out_of_sequence"),
        ),
        (
            HandshakeError::Unexpected {
                expected: "hello",
                got: "ping",
            },
            Some("unexpected_message"),
        ),
        (
            HandshakeError::Version { ours: 1, theirs: 2 },
            Some("version"),
        ),
        (
            HandshakeError::Cluster {
                ours: "a".into(),
                theirs: "b".into(),
            },
            Some("cluster"),
        ),
        (HandshakeError::BadName("x y".into()), Some("bad_name")),
        (HandshakeError::AuthFailed, Some("auth_failed")),
        (
            HandshakeError::NotAdmitted("no".into()),
            Some("not_admitted"),
        ),
        (
            HandshakeError::Duplicate("up".into()),
            Some("duplicate_node"),
        ),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------
// docs/PROTOCOL.md §6.3: the test vector is what this implementation computes.

const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

/// The fenced block that follows `<!-- check: name -->` in docs/PROTOCOL.md, as bytes
/// (hex digits; `#` starts a comment).
fn doc_hex(name: &str) -> Vec<u8> {
    let marker = format!("<!-- check: {name} -->");
    let at = PROTOCOL_MD
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {marker}"));
    let rest = &PROTOCOL_MD[at + marker.len()..];
    let open = rest.find("```").unwrap();
    let start = open + rest[open..].find('\n').unwrap() + 1;
    let end = start + rest[start..].find("```").unwrap();
    let digits: String = rest[start..end]
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn protocol_md_hmac_test_vector_is_what_the_handshake_computes() {
    let secret = b"demo-secret-0123456789";
    let inc_d = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
    let inc_a = Uuid::parse_str("ffeeddcc-bbaa-9988-7766-554433221100").unwrap();
    let mut nonce_d = [0u8; 32];
    let mut nonce_a = [0u8; 32];
    for i in 0..32 {
        nonce_d[i] = i as u8;
        nonce_a[i] = 0x20 + i as u8;
    }
    let t = Transcript {
        cluster: "demo",
        dialler: ("worker-1", inc_d, &nonce_d),
        acceptor: ("master", inc_a, &nonce_a),
    };

    // The documented transcript bytes are what the MAC covers.
    let transcript = doc_hex("transcript-dialler-hex");
    assert_eq!(transcript.len(), 137);
    let mut mac = HmacSha256::new_from_slice(secret).unwrap();
    mac.update(&transcript);
    let over_doc_bytes: [u8; 32] = mac.finalize().into_bytes().into();
    let proof_d = t.prove(secret, LABEL_DIALLER).unwrap();
    assert_eq!(over_doc_bytes, proof_d);

    assert_eq!(doc_hex("proof-dialler-hex"), proof_d.to_vec());
    assert_eq!(
        doc_hex("proof-acceptor-hex"),
        t.prove(secret, LABEL_ACCEPTOR).unwrap().to_vec()
    );
}

// ---------------------------------------------------------------------------------------
// Refusing an authenticated peer (duplicate_node)

fn duplicate(peer: &PeerInfo) -> Result<(), HandshakeError> {
    Err(HandshakeError::Duplicate(format!(
        "node {:?} is already up",
        peer.node
    )))
}

#[tokio::test]
async fn an_acceptor_check_refuses_the_authenticated_dialler_with_duplicate_node() {
    let (mut d, mut a) = pipe();
    let (worker, master) = (identity("worker-1"), identity("master"));
    let mut seen = None;
    let (dialled, accepted) = tokio::join!(
        dial(&mut d, &worker, DEADLINE),
        accept_with(&mut a, &master, DEADLINE, admit_plain, |p: &PeerInfo| {
            seen = Some(p.clone());
            duplicate(p)
        })
    );
    let seen = seen.expect("the check ran");
    assert_eq!(
        (seen.node.as_str(), seen.incarnation),
        ("worker-1", worker.incarnation)
    );
    assert!(matches!(accepted, Err(HandshakeError::Duplicate(_))));
    match dialled {
        Err(HandshakeError::Refused { code, message }) => {
            assert_eq!(code, "duplicate_node");
            assert!(message.contains("worker-1"), "{message}");
        }
        other => panic!("expected a duplicate_node refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dialler_check_refuses_the_authenticated_acceptor_with_duplicate_node() {
    let (mut d, mut a) = pipe();
    let (master, worker) = (identity("master"), identity("worker-1"));
    let mut seen = None;
    let (dialled, accepted) = tokio::join!(
        dial_with(&mut d, &master, DEADLINE, None, |p: &PeerInfo| {
            seen = Some(p.clone());
            duplicate(p)
        }),
        accept(&mut a, &worker, DEADLINE, admit_all)
    );
    assert_eq!(seen.map(|p| p.incarnation), Some(worker.incarnation));
    assert!(matches!(dialled, Err(HandshakeError::Duplicate(_))));
    match accepted {
        Err(HandshakeError::Refused { code, .. }) => assert_eq!(code, "duplicate_node"),
        other => panic!("expected a duplicate_node refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_check_is_not_consulted_for_a_dialler_that_fails_authentication() {
    let (mut d, mut a) = pipe();
    let master = identity("master");
    let mut intruder = identity("worker-1");
    intruder.secret = b"not-the-cluster-secret".to_vec();
    let mut consulted = false;
    let (_, accepted) = tokio::join!(
        dial(&mut d, &intruder, DEADLINE),
        accept_with(&mut a, &master, DEADLINE, admit_plain, |p: &PeerInfo| {
            consulted = true;
            duplicate(p)
        })
    );
    assert!(!consulted, "a check runs only for an authenticated peer");
    assert!(accepted.is_err());
}
