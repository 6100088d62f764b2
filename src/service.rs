//! The Rust client applications attach to a node with: the service protocol of
//! docs/PROTOCOL.md §12 over TCP (optionally inside TLS: [`Client::connect_tls`]) or a Unix
//! socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nodecloud::service::ClientError> {
//! use nodecloud::service::{Client, Endpoint, Incoming};
//! let mut app = Client::connect(
//!     &Endpoint::Tcp("127.0.0.1:7501".parse().unwrap()),
//!     "demo", b"an example secret, 16+ bytes", "my-app",
//! ).await?;
//! app.subscribe("sensor.temperature").await?;
//! app.publish("sensor.temperature", &serde_json::json!({"celsius": 21.5}), None).await?;
//! while let Some(incoming) = app.next().await {
//!     if let Incoming::Event { topic, from, payload, .. } = incoming {
//!         println!("{topic} from {from}: {} bytes", payload.len());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! One reader task answers the node's pings, resolves calls and queues everything else
//! ([`Incoming`]) in a bounded queue of [`INCOMING_QUEUE`] items; when the application does
//! not take them, the reader stops reading and the node's queue toward it fills; once it is
//! full the node closes it as a slow consumer, unless [`Client::set_overflow`] asked for
//! [`Overflow::DropOldest`] or [`Overflow::Wait`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use uuid::Uuid;

use crate::call::{CallError, CallTarget, Request};
use crate::config::Config;
use crate::wire::{
    self, Bye, Call, ClusterQuery, ClusterView, EncodedMessage, Failure, Frame, FrameCodec,
    HandshakeError, Identity, Message, Method, Options, Outcome, Ping, Reply, Topic, WireError,
    MAX_HANDSHAKE_FRAME_BYTES,
};

/// Resolves `host` and connects to the first address that answers.
async fn connect_host(host: &str) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(host).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        )
    }))
}

/// Items the reader queues for the application before it stops reading.
pub const INCOMING_QUEUE: usize = 4096;
/// Items (frames, or batches of publishes) queued toward the node before senders wait.
const OUTGOING_QUEUE: usize = 4096;
/// Bytes the writer gathers before a write: it writes once the queue is empty or past this.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A write buffer that grew past this (a large frame) is released afterwards.
const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;
/// The frame limit after the handshake when no configuration says otherwise (the default
/// `max_frame_bytes`).
const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Where a node listens for applications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    /// `HOST:PORT` with a host name, resolved on each connect; every address it resolves to
    /// is tried in order.
    Host(String),
    Unix(PathBuf),
}

impl Endpoint {
    /// Reads `HOST:PORT`, `[IPv6]:PORT` or a Unix socket path (anything containing a `/`,
    /// or prefixed `unix:`).
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if text.contains('/') {
            return Ok(Endpoint::Unix(PathBuf::from(text)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint::Tcp(addr));
        }
        let expected = "expected HOST:PORT, [IPv6]:PORT or a Unix socket path";
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port; {expected}"))?;
        if host.is_empty() || host.contains([':', '[', ']']) || port.parse::<u16>().is_err() {
            return Err(format!("{text:?} is not an address; {expected}"));
        }
        Ok(Endpoint::Host(text.to_owned()))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Host(h) => f.write_str(h),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What went wrong talking to the node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("handshake with the node failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("cannot encode the payload: {0}")]
    Encode(#[from] WireError),
    #[error("the connection to the node is closed: {0}")]
    Closed(String),
    #[error(
        "node {node} has no service endpoint (`service` or `service_socket`) in the configuration"
    )]
    NoEndpoint { node: String },
    #[error("no node is named {0:?} in the configuration")]
    UnknownNode(String),
    /// The node refused a request (`code: message`).
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing was sent: the node would refuse the frame and close the connection.
    #[error("a message of {len} bytes exceeds the maximum frame of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The TLS handshake with the node failed (wrong CA, a name the certificate does not
    /// carry, or a node that does not speak TLS on this port).
    #[error("TLS with {endpoint}: {source}")]
    Tls {
        endpoint: String,
        source: crate::tls::TlsStreamError,
    },
    /// The configuration's TLS files are unusable.
    #[error(transparent)]
    TlsSetup(#[from] crate::tls::TlsError),
    /// TLS was asked for on a Unix socket (it never speaks TLS).
    #[error("TLS is for TCP endpoints; {0} is a Unix socket")]
    TlsOnUnix(String),
}

/// How long a TLS handshake with the node may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The policy of an application's queue at its node when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The node sends `error slow_consumer` and closes the link.
    #[default]
    Close,
    /// The node drops the oldest queued deliveries and counts them (`Incoming::Event::dropped`).
    DropOldest,
    /// The node's deliveries wait for room while the application reads: nothing is lost, and
    /// the node delivers to everyone at this application's pace (for pipelines that must see
    /// every event, and benchmarks). Once nothing could be written for 50 ms, `slow_consumer`.
    Wait,
}

/// What the node sends the application, besides replies to its calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An event of a subscribed topic or pattern; `topic` is the event's own (concrete)
    /// topic, and `payload` one CBOR item.
    ///
    /// `id` identifies the event among those of `from`'s incarnation; `seq` numbers it in its
    /// stream (the events `from` published on `topic` to every node, or to this node only when
    /// `targeted`), from 1, so a gap in `seq` is an event that did not arrive. `dropped` counts
    /// the deliveries the node dropped for this application to make room (only with
    /// [`Overflow::DropOldest`]).
    Event {
        topic: String,
        from: String,
        payload: Bytes,
        id: u64,
        seq: u64,
        targeted: bool,
        dropped: u64,
    },
    /// A call of an implemented method: answer it with [`Client::respond`].
    Request {
        id: u64,
        method: String,
        from: String,
        payload: Bytes,
    },
    /// An operation was refused; the connection stays open.
    Refused {
        op: String,
        code: String,
        message: String,
    },
    /// The node closed the connection (`bye` or `error`), or it broke.
    Closed(String),
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;
/// `cluster` requests by id; the node answers them in order, so a refusal is the oldest's.
type Views = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Result<ClusterView, String>>>>>;

/// What the client's writer task takes from its queue: messages encoded by their senders, so
/// that the writer only frames them.
enum Out {
    Frame(EncodedMessage),
    /// Publishes of one topic, framed by the writer straight into its buffer.
    Publishes {
        topic: String,
        target: Option<String>,
        payloads: Vec<Bytes>,
    },
    /// The last frame: written, then the connection is closed.
    Bye(EncodedMessage),
}

/// An application attached to a node.
pub struct Client {
    out: mpsc::Sender<Out>,
    incoming: mpsc::Receiver<Incoming>,
    calls: Waiting,
    pongs: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    views: Views,
    next_id: AtomicU64,
    node: String,
    /// The node's frame limit: a larger message is refused here, not sent.
    max_frame: usize,
    /// The reader and writer tasks: dropping the client stops them, which closes the socket.
    reader: tokio::task::JoinHandle<()>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

impl Client {
    /// Connect to the service endpoint of node `via` of a cluster configuration (TCP if the
    /// node has one, else its Unix socket), with the cluster's service key. A wildcard
    /// `service` (`0.0.0.0`, `[::]`) is dialled at the loopback address of its family.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn connect_via(
        config: &Config,
        via: &str,
        name: &str,
    ) -> Result<Client, ClientError> {
        let node = config
            .node(via)
            .ok_or_else(|| ClientError::UnknownNode(via.to_owned()))?;
        let endpoint = match (&node.service, &node.service_socket) {
            // A wildcard service is reached at loopback: `via` attaches from the node's machine.
            (Some(a), _) => Endpoint::Tcp(crate::config::local_dial(*a)),
            (None, Some(p)) => Endpoint::Unix(p.clone()),
            (None, None) => {
                return Err(ClientError::NoEndpoint {
                    node: via.to_owned(),
                })
            }
        };
        let key = config
            .cluster
            .service_key
            .as_ref()
            .unwrap_or(&config.cluster.secret);
        let (cluster, max) = (&config.cluster.name, config.cluster.max_frame_bytes);
        let tls = match (&config.cluster.tls, &endpoint) {
            (Some(t), Endpoint::Tcp(_)) if t.service_tls => {
                Some(crate::tls::ClientTls::from_ca_file(&t.ca)?)
            }
            _ => None,
        };
        Client::connect_tls(&endpoint, tls.as_ref(), cluster, key.as_bytes(), name, max).await
    }

    /// Connect and authenticate as application `name` with the cluster's service `key`.
    ///
    /// # Errors
    /// [`ClientError`]: the connection, or the handshake (a wrong key is `auth_failed`).
    pub async fn connect(
        endpoint: &Endpoint,
        cluster: &str,
        key: &[u8],
        name: &str,
    ) -> Result<Client, ClientError> {
        Client::connect_limited(endpoint, cluster, key, name, DEFAULT_MAX_FRAME).await
    }

    /// Like [`Client::connect`], with the node's `max_frame_bytes` when it is not the default.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn connect_limited(
        endpoint: &Endpoint,
        cluster: &str,
        key: &[u8],
        name: &str,
        max_frame: usize,
    ) -> Result<Client, ClientError> {
        Client::connect_tls(endpoint, None, cluster, key, name, max_frame).await
    }

    /// Like [`Client::connect_limited`], inside TLS when `tls` is given (a TCP endpoint
    /// only): the node's certificate is verified against the CA and the host of `endpoint`
    /// (the IP of `Endpoint::Tcp`, the name of `Endpoint::Host`). No client certificate is
    /// presented: the service key authenticates the application.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Tls`] when the TLS handshake fails.
    pub async fn connect_tls(
        endpoint: &Endpoint,
        tls: Option<&crate::tls::ClientTls>,
        cluster: &str,
        key: &[u8],
        name: &str,
        max_frame: usize,
    ) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let (stream, host) = match endpoint {
            Endpoint::Unix(path) => {
                if tls.is_some() {
                    return Err(ClientError::TlsOnUnix(endpoint.to_string()));
                }
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                return Client::start(s, cluster, key, name, max_frame).await;
            }
            Endpoint::Tcp(addr) => (
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_err)?,
                crate::config::Host::Ip(addr.ip()),
            ),
            Endpoint::Host(host) => {
                let dialled = crate::config::HostPort::parse(host).map_err(|e| {
                    connect_err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        e.to_string(),
                    ))
                })?;
                (connect_host(host).await.map_err(connect_err)?, dialled.host)
            }
        };
        let _ = stream.set_nodelay(true);
        let io: crate::link::Transport = match tls {
            None => stream.into(),
            Some(tls) => tls
                .connect(&host, stream, TLS_HANDSHAKE_TIMEOUT)
                .await
                .map_err(|source| ClientError::Tls {
                    endpoint: endpoint.to_string(),
                    source,
                })?,
        };
        Client::start(io, cluster, key, name, max_frame).await
    }

    async fn start<T>(
        io: T,
        cluster: &str,
        key: &[u8],
        name: &str,
        max_frame: usize,
    ) -> Result<Client, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let me = Identity {
            cluster: cluster.to_owned(),
            node: name.to_owned(),
            incarnation: Uuid::new_v4(),
            secret: key.to_vec(),
            welcome: wire::Welcome::default(),
        };
        let mut framed =
            tokio_util::codec::Framed::new(io, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
        let peer = wire::dial(&mut framed, &me, Duration::from_secs(5)).await?;
        let parts = framed.into_parts();
        let mut codec = parts.codec;
        // A version 2 node states its limit in `welcome`; a version 1 node does not.
        let max_frame = match peer.welcome.max_frame_bytes.map(usize::try_from) {
            Some(Ok(stated)) => stated,
            _ => max_frame,
        };
        codec.set_max_frame_bytes(max_frame);
        let (read, write) = tokio::io::split(parts.io);
        let mut reader = FramedRead::with_capacity(read, codec.clone(), 64 * 1024);
        reader.read_buffer_mut().extend_from_slice(&parts.read_buf);

        let (out, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (in_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let calls: Waiting = Arc::default();
        let pongs: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
        let views: Views = Arc::default();
        let writer = tokio::spawn(write_loop(write, codec, out_rx));
        let reader = tokio::spawn(read_loop(
            reader,
            out.clone(),
            in_tx,
            calls.clone(),
            pongs.clone(),
            views.clone(),
        ));
        Ok(Client {
            out,
            incoming,
            calls,
            pongs,
            views,
            next_id: AtomicU64::new(1),
            node: peer.node,
            max_frame,
            reader,
            writer: Some(writer),
        })
    }

    /// The node this application is attached to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Check that a message carrying `payload` plus `names` bytes of text fits in a frame.
    /// Small ones are taken on a bound (no encoding); only near the limit is the message
    /// encoded to measure it exactly.
    fn fits(&self, msg: &Message, payload: usize, names: usize) -> Result<(), ClientError> {
        /// More than the CBOR heads, keys, ids and the sequence number of any message.
        const OVERHEAD_BYTES: usize = 128;
        if payload + names + OVERHEAD_BYTES <= self.max_frame {
            return Ok(());
        }
        // `[seq, message]` adds at most 10 bytes to the message.
        let len = wire::encode_message(msg)?.len() + 10;
        if len > self.max_frame {
            return Err(ClientError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    async fn send(&self, msg: Message) -> Result<(), ClientError> {
        self.send_out(Out::Frame(wire::encode_message(&msg)?)).await
    }

    async fn send_out(&self, out: Out) -> Result<(), ClientError> {
        self.out
            .send(out)
            .await
            .map_err(|_| ClientError::Closed("the writer stopped".into()))
    }

    /// Refuse what would not fit in a frame: `[seq, message]` adds at most 10 bytes.
    fn check_len(&self, len: usize) -> Result<(), ClientError> {
        if len + 10 > self.max_frame {
            return Err(ClientError::TooLarge {
                len: len + 10,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    /// What the node does when this application's queue is full (send it right after
    /// attaching): close it with `slow_consumer` (the default), drop the oldest deliveries, or
    /// wait for room (lossless, holding up the node's other deliveries meanwhile).
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the connection is gone.
    pub async fn set_overflow(&self, overflow: Overflow) -> Result<(), ClientError> {
        let policy = match overflow {
            Overflow::Close => "close",
            Overflow::DropOldest => "drop_oldest",
            Overflow::Wait => "wait",
        };
        self.send(Message::Options(Options {
            overflow: Some(policy.to_owned()),
        }))
        .await
    }

    /// Receive events of `topic` (published anywhere in the cluster). `topic` may be a
    /// pattern (`sensor.*`, `sensor.>`, `>`: see [`crate::topic`]); events then arrive with
    /// their concrete topic, once however many of this client's subscriptions match.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn subscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.send(Message::Subscribe(Topic {
            topic: topic.to_owned(),
        }))
        .await
    }

    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.send(Message::Unsubscribe(Topic {
            topic: topic.to_owned(),
        }))
        .await
    }

    /// Publish `value` (any serde value, sent as CBOR) on `topic`, to every node or to `target`.
    ///
    /// # Errors
    /// [`ClientError`]: the value does not encode, or the connection is closed.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        target: Option<&str>,
    ) -> Result<(), ClientError> {
        let payload = wire::encode_payload(value)?;
        self.publish_raw(topic, payload, target).await
    }

    /// Publish an already CBOR-encoded payload.
    ///
    /// # Errors
    /// [`ClientError::TooLarge`] (nothing was sent), [`ClientError::Closed`].
    pub async fn publish_raw(
        &self,
        topic: &str,
        payload: Bytes,
        target: Option<&str>,
    ) -> Result<(), ClientError> {
        let msg = EncodedMessage::publish(topic, target, &payload);
        self.check_len(msg.len())?;
        self.send_out(Out::Frame(msg)).await
    }

    /// Publish many already CBOR-encoded payloads on `topic`, in order, to every node or to
    /// `target`. On the wire this is one `publish` frame per payload, exactly as
    /// [`Client::publish_raw`] sends them; the batch only saves work in this process (one
    /// queue hand-off to the writer, the frames written into its buffer in place) and lets
    /// the frames leave in as few writes as possible. The node handles each frame on its own:
    /// a refusal (`Incoming::Refused`) is per publish.
    ///
    /// # Errors
    /// [`ClientError::TooLarge`] if any payload would not fit in a frame (then nothing was
    /// sent), [`ClientError::Closed`].
    pub async fn publish_batch(
        &self,
        topic: &str,
        payloads: Vec<Bytes>,
        target: Option<&str>,
    ) -> Result<(), ClientError> {
        // `{"publish": {"topic": t, "target": t|null, "payload": bytes(n)}}`: the keys and
        // heads take at most 45 bytes besides the texts and the payload.
        const PUBLISH_OVERHEAD_BYTES: usize = 45;
        let names = topic.len() + target.map_or(0, str::len);
        if let Some(largest) = payloads.iter().map(Bytes::len).max() {
            self.check_len(largest + names + PUBLISH_OVERHEAD_BYTES)
                .or_else(|_| {
                    let exact = EncodedMessage::publish(topic, target, &vec![0; largest]);
                    self.check_len(exact.len())
                })?;
        } else {
            return Ok(());
        }
        self.send_out(Out::Publishes {
            topic: topic.to_owned(),
            target: target.map(str::to_owned),
            payloads,
        })
        .await
    }

    /// Serve calls of `method`: they arrive as [`Incoming::Request`].
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn implement(&self, method: &str) -> Result<(), ClientError> {
        self.send(Message::Implement(Method {
            method: method.to_owned(),
        }))
        .await
    }

    /// Advertise this application's HTTP server at `address` (`HOST:PORT`) as an HTTP
    /// backend of its node, until it detaches: proxies then forward requests to it. A bad
    /// address or one past the node's bounds comes back as a `refused` frame.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn http_backend(&self, address: &str) -> Result<(), ClientError> {
        self.send(Message::HttpBackend(crate::wire::HttpBackend {
            address: address.to_owned(),
        }))
        .await
    }

    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn unimplement(&self, method: &str) -> Result<(), ClientError> {
        self.send(Message::Unimplement(Method {
            method: method.to_owned(),
        }))
        .await
    }

    /// Answer request `id`: `Ok(cbor)` or `Err((code, message))`.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn respond(
        &self,
        id: u64,
        result: Result<Bytes, (String, String)>,
    ) -> Result<(), ClientError> {
        let (len, names) = match &result {
            Ok(b) => (b.len(), 0),
            Err((code, message)) => (0, code.len() + message.len()),
        };
        let outcome = match result {
            Ok(b) => Outcome::Ok(b),
            Err((code, message)) => Outcome::Error(Failure { code, message }),
        };
        let msg = Message::Respond(Reply { id, outcome });
        self.fits(&msg, len, names)?;
        self.send(msg).await
    }

    /// Call a method with a typed request.
    ///
    /// # Errors
    /// [`CallError`]; a broken connection is [`CallError::Stopped`].
    pub async fn call<R: Request>(
        &self,
        target: impl Into<CallTarget>,
        request: &R,
        timeout: Option<Duration>,
    ) -> Result<R::Response, CallError> {
        let payload = wire::encode_payload(request)
            .map_err(|e| CallError::BadPayload(format!("request does not encode: {e}")))?;
        let target = match target.into() {
            CallTarget::Any => None,
            CallTarget::Node(n) => Some(n),
        };
        let bytes = self
            .call_raw(R::METHOD, target.as_deref(), timeout, payload)
            .await?;
        wire::decode_payload(&bytes).map_err(|e| {
            CallError::BadPayload(format!("response of {} does not decode: {e}", R::METHOD))
        })
    }

    /// Call `method` with a CBOR payload; `None` target: any implementer; `None` timeout: the
    /// node's default.
    ///
    /// # Errors
    /// [`CallError`]; a broken connection is [`CallError::Stopped`].
    pub async fn call_raw(
        &self,
        method: &str,
        target: Option<&str>,
        timeout: Option<Duration>,
        payload: Bytes,
    ) -> Result<Bytes, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (len, names) = (payload.len(), method.len() + target.map_or(0, str::len));
        let call = Message::Call(Call {
            id,
            method: method.to_owned(),
            target: target.map(str::to_owned),
            timeout_ms: timeout.map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
            payload,
        });
        if let Err(e) = self.fits(&call, len, names) {
            return Err(CallError::BadPayload(format!("request not sent: {e}")));
        }
        let (tx, rx) = oneshot::channel();
        if let Ok(mut calls) = self.calls.lock() {
            calls.insert(id, tx);
        }
        if self.send(call).await.is_err() {
            return Err(CallError::Stopped);
        }
        match rx.await {
            Ok(Outcome::Ok(b)) => Ok(b),
            Ok(Outcome::Error(f)) => Err(CallError::from_failure(f)),
            Err(_) => Err(CallError::Stopped),
        }
    }

    /// Wait until the node has handled everything sent before (a `ping` round trip): any
    /// refusal of it is then already queued in [`next`](Self::next).
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn sync(&self) -> Result<(), ClientError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pongs.lock() {
            p.insert(n, tx);
        }
        self.send(Message::Ping(Ping { n })).await?;
        rx.await
            .map_err(|_| ClientError::Closed("closed before the node answered".into()))
    }

    /// The cluster as the attached node sees it: every declared node, up or down, with the
    /// replicated state of those up.
    ///
    /// # Errors
    /// [`ClientError::Closed`]; [`ClientError::Refused`] if the node refused (a member list
    /// too large for one frame).
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut v) = self.views.lock() {
            v.insert(id, tx);
        }
        self.send(Message::Cluster(ClusterQuery { id })).await?;
        match rx.await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(why)) => Err(ClientError::Refused(why)),
            Err(_) => Err(ClientError::Closed(
                "closed before the node answered".into(),
            )),
        }
    }

    /// The next event, request or refusal; `None` once the connection is closed and
    /// everything was taken.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Wait for the next item, then take it and everything queued behind it, up to `limit`
    /// items in all, into `buf`: one wake-up for a burst of events. Returns how many were
    /// added; 0 once the connection is closed and everything was taken (or `limit` is 0).
    pub async fn next_many(&mut self, buf: &mut Vec<Incoming>, limit: usize) -> usize {
        self.incoming.recv_many(buf, limit).await
    }

    /// What is already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Incoming> {
        self.incoming.try_recv().ok()
    }

    /// Leave: tell the node (`bye`, after everything queued before it), and close. Dropping
    /// the client closes the connection without the `bye`.
    pub async fn close(mut self) {
        let bye = wire::encode_message(&Message::Bye(Bye {
            reason: "application leaves".into(),
        }));
        let Ok(bye) = bye else { return };
        if self.out.send(Out::Bye(bye)).await.is_ok() {
            if let Some(writer) = self.writer.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
            }
        }
    }
}

/// The writer task: frames everything queued into one buffer, and writes the buffer once the
/// queue is empty (or the buffer holds [`WRITE_BATCH_BYTES`]): one syscall for as many frames
/// as the application queued meanwhile.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut codec: FrameCodec,
    mut rx: mpsc::Receiver<Out>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut bye = false;
    while let Some(mut item) = rx.recv().await {
        loop {
            let framed = match &item {
                Out::Frame(msg) => codec.encode_frame(msg, &mut buf),
                Out::Bye(msg) => {
                    bye = true;
                    codec.encode_frame(msg, &mut buf)
                }
                Out::Publishes {
                    topic,
                    target,
                    payloads,
                } => payloads.iter().try_for_each(|p| {
                    codec.encode_publish_frame(topic, target.as_deref(), p, &mut buf)
                }),
            };
            if let Err(e) = framed {
                // Checked against the node's limit before it was queued: not sent.
                tracing::warn!("frame not sent: {e}");
            }
            if bye || buf.len() >= WRITE_BATCH_BYTES {
                break;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        // Flushed: a TLS stream may hold the batch's tail in its own buffer (a no-op on TCP
        // and Unix sockets).
        if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            buf = BytesMut::with_capacity(64 * 1024);
        }
        if bye {
            break;
        }
    }
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FramedRead<R, FrameCodec>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Incoming>,
    calls: Waiting,
    pongs: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    views: Views,
) {
    let closed = loop {
        let msg = match reader.next().await {
            None => break "the node closed the connection".to_owned(),
            Some(Err(e)) => break format!("bad frame from the node: {e}"),
            Some(Ok(Frame(_, msg))) => msg,
        };
        let item = match msg {
            Message::Deliver(d) => Incoming::Event {
                topic: d.topic,
                from: d.from,
                payload: d.payload,
                id: d.id,
                seq: d.seq,
                targeted: d.targeted,
                dropped: d.dropped,
            },
            Message::Request(r) => Incoming::Request {
                id: r.id,
                method: r.method,
                from: r.from,
                payload: r.payload,
            },
            Message::Refused(r) if r.op == "cluster" => {
                let oldest = views.lock().ok().and_then(|mut v| v.pop_first());
                if let Some((_, tx)) = oldest {
                    let _ = tx.send(Err(format!("{}: {}", r.code, r.message)));
                }
                continue;
            }
            Message::Refused(r) => Incoming::Refused {
                op: r.op,
                code: r.code,
                message: r.message,
            },
            Message::ClusterView(v) => {
                let waiting = views.lock().ok().and_then(|mut w| w.remove(&v.id));
                if let Some(tx) = waiting {
                    let _ = tx.send(Ok(v));
                }
                continue;
            }
            Message::Reply(r) => {
                let waiting = calls.lock().ok().and_then(|mut c| c.remove(&r.id));
                if let Some(tx) = waiting {
                    let _ = tx.send(r.outcome);
                }
                continue;
            }
            Message::Ping(p) => {
                if let Ok(pong) = wire::encode_message(&Message::Pong(p)) {
                    let _ = out.send(Out::Frame(pong)).await;
                }
                continue;
            }
            Message::Pong(p) => {
                let waiting = pongs.lock().ok().and_then(|mut w| w.remove(&p.n));
                if let Some(tx) = waiting {
                    let _ = tx.send(());
                }
                continue;
            }
            Message::Bye(b) => break format!("the node said bye: {}", b.reason),
            Message::Error(e) => {
                break format!("the node refused the connection: {}: {}", e.code, e.message)
            }
            other => break format!("unexpected {} from the node", other.kind()),
        };
        // Handed over without a future while the queue has room (most of the time): an
        // awaited send polls a semaphore acquisition per event.
        let full = match incoming.try_send(item) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Full(item)) => item,
            // The application dropped its client.
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        };
        if incoming.send(full).await.is_err() {
            return;
        }
    };
    if let Ok(mut c) = calls.lock() {
        c.clear();
    }
    if let Ok(mut p) = pongs.lock() {
        p.clear();
    }
    if let Ok(mut v) = views.lock() {
        v.clear();
    }
    let _ = incoming.send(Incoming::Closed(closed)).await;
}
