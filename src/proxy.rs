//! The HTTP proxy a node serves when its configuration says `proxy = "ADDR"`: one entry point
//! that forwards each request to an HTTP backend advertised by an `up` node (the "proxy
//! bounce"). hyper parses and writes every message (an HTTP/1.1 server with keep-alive,
//! chunked bodies and upgrades; HTTP/1 client connections to the backends, pooled in
//! `pool`); this module chooses the backend and rewrites the headers.
//!
//! Like the HTTP API, it is not part of the actor tree: it reads the membership watch (who is
//! up, which backends each advertises, each node's load) on every request, so a node declared
//! `down` gets no request from the next one on. [`start`] runs it on threads of its own, one
//! per core (up to [`MAX_THREADS`]), as nginx runs one worker per core: on the node's single
//! arbiter thread it was held to one core while the others idled. Each thread has its own
//! runtime, accept loop and pool of backend connections, and drives every connection it
//! makes as a local task, so a request, its connection and the backend connection it uses
//! stay on one thread (no hand-off between threads, no lock per request) The accepted
//! connections are dealt to the threads in turn (`Spread`), whichever thread accepted them. A task of the node
//! holds their stop signal, so the proxy and every connection it serves stop when the node
//! stops.
//!
//! Policy (see `choice`): least outstanding requests from this proxy, then least replicated
//! load per CPU, then in turn; `X-Nodecloud-Node: NAME` pins a request to node NAME. A backend
//! whose connection is refused (or times out) is skipped for [`BACKOFF`] even before its node is
//! declared down, and an idempotent request that met such a failure, which sent nothing, is
//! tried once more on another node; a POST or PATCH never is.
//!
//! Bounds: request headers [`MAX_HEADER_BYTES`] in all (431, and the connection goes on);
//! bodies `proxy_max_body_bytes` (413); requests forwarded at once `proxy_max_requests` (503
//! with `Retry-After`); connections at once [`MAX_CONNECTIONS`] (more wait in the backlog);
//! idle backend connections [`MAX_IDLE_PER_BACKEND`] per backend and thread; a connect
//! timeout and a response timeout (504: the backend took too long to answer).

mod choice;
mod headers;
mod pool;

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

pub use choice::{pick, Candidate};
pub use headers::{MAX_HEADER_BYTES, PIN_HEADER};
pub use pool::{IDLE_TIMEOUT as POOL_IDLE_TIMEOUT, MAX_IDLE_PER_BACKEND};

use crate::config::ProxyConfig;
use crate::node::{BackendCounters, BackendStats, MembershipView, NodeHandle};
use pool::{BackendBody, BoxError, DownBody, Pool, Sender, UpBody};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// Threads of the proxy's runtime: one per core, at most this many.
pub const MAX_THREADS: usize = 8;
/// How long a backend that refused a connection is skipped.
pub const BACKOFF: Duration = Duration::from_secs(2);
/// What hyper buffers of a request head. Larger than [`MAX_HEADER_BYTES`], so that a request
/// whose headers are too large is still read whole and answered 431 on a connection that goes
/// on; past this, hyper answers 431 itself and closes.
const MAX_HEAD_BUFFER_BYTES: usize = 4 * MAX_HEADER_BYTES;
/// Header lines in a request head; past it hyper answers 431 itself and closes. hyper's
/// default, and not more: hyper allocates and fills room for this many headers (twice) on
/// every request it parses, on the stack up to 100 and on the heap beyond. At 4096 that was
/// 256 KiB written per request, a third of the proxy's instructions under load.
const MAX_HEADERS: usize = 100;
/// A client that sends no complete request head for this long is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often each thread closes the idle backend connections past [`POOL_IDLE_TIMEOUT`].
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The response header naming the node whose backend answered.
static SERVED_BY_HEADER: HeaderName = HeaderName::from_static("x-nodecloud-node");

/// Why a request got no backend's answer; each maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request headers take more than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("{0} requests are being forwarded already; retry later")]
    Busy(usize),
    #[error("no up node advertises an HTTP backend")]
    NoBackend,
    #[error("node {0:?} is not up or advertises no HTTP backend")]
    PinnedUnavailable(String),
    #[error("backend {addr} of node {node} could not be reached: {source}")]
    Connect {
        node: String,
        addr: String,
        source: BoxError,
    },
    #[error("backend {addr} of node {node} did not answer in time")]
    Timeout { node: String, addr: String },
    #[error("backend {addr} of node {node} failed: {source}")]
    Upstream {
        node: String,
        addr: String,
        source: BoxError,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Busy(_) | ProxyError::NoBackend | ProxyError::PinnedUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn into_response(self) -> Response<DownBody> {
        let status = self.status();
        let mut resp = Response::new(DownBody::text(format!("{self}\n")));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// One backend as a proxy thread knows it: made when the thread first sees it advertised,
/// shared (`Rc`) by the requests on it, dropped with its idle connections when no longer
/// advertised.
struct Backend {
    node: String,
    addr: String,
    /// The `X-Nodecloud-Node` value of its responses, made once.
    served_by: Option<HeaderValue>,
    /// Its counters, shared with the other threads and `/metrics`; `in_flight` is its
    /// outstanding requests from this proxy, which the choice reads.
    stats: Arc<BackendStats>,
    pool: Rc<Pool>,
}

/// What one proxy thread keeps between requests; owned by that thread (an `Rc`), so it is
/// read and changed without a lock.
struct Local {
    proxy: Arc<Proxy>,
    /// The membership view `backends` was made from; a different one re-makes it.
    view: RefCell<Option<Arc<MembershipView>>>,
    /// Every backend advertised in `view`, with its node's load per CPU. A handful: scanned,
    /// not hashed.
    backends: RefCell<Vec<(Rc<Backend>, f64)>>,
    /// Breaks full ties in turn.
    turn: Cell<usize>,
}

/// What every thread of one proxy shares.
struct Proxy {
    node: NodeHandle,
    view: watch::Receiver<Arc<MembershipView>>,
    config: ProxyConfig,
    permits: Semaphore,
    /// Backend addresses skipped until the instant given; a few at most, and looked at only
    /// while `backing_off` says there are any (so not at all on most requests).
    backoff: Mutex<Vec<(String, Instant)>>,
    backing_off: AtomicUsize,
}

/// The backend chosen for one attempt; its in-flight count drops with it.
struct Chosen(Rc<Backend>);

impl Drop for Chosen {
    fn drop(&mut self) {
        self.0.stats.finished();
    }
}

/// How one attempt on a backend failed.
// The request travels back by value, as in hyper's `TrySendError`: the enum crosses one
// call only, and the retry it serves needs no allocation.
#[allow(clippy::large_enum_variant)]
enum AttemptError {
    /// Nothing of the request reached the backend (refused, unreachable, a connection that
    /// closed before the request was written): the request comes back, to be sent elsewhere.
    NothingSent {
        req: Request<UpBody>,
        source: BoxError,
    },
    /// The exchange broke after the request was (at least partly) sent.
    Failed(hyper::Error),
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Whether `e`, or an error it was caused by, is `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

impl Proxy {
    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, Vec<(String, Instant)>> {
        // Every update leaves the list consistent: a poisoned lock is still usable.
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn back_off(&self, addr: &str) {
        let until = Instant::now() + BACKOFF;
        let mut list = self.lock_backoff();
        match list.iter_mut().find(|(a, _)| a == addr) {
            Some((_, u)) => *u = until,
            None => list.push((addr.to_owned(), until)),
        }
        self.backing_off.store(list.len(), Ordering::Relaxed);
    }

    /// Addresses in back-off now (mostly none, without a lock).
    fn backed_off(&self) -> Vec<String> {
        if self.backing_off.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut list = self.lock_backoff();
        list.retain(|(_, until)| *until > now);
        self.backing_off.store(list.len(), Ordering::Relaxed);
        list.iter().map(|(a, _)| a.clone()).collect()
    }
}

impl Local {
    /// Re-make the backends from the membership view if it changed since the last request.
    fn sync(&self) {
        let proxy = &self.proxy;
        let view = {
            let current = proxy.view.borrow();
            let seen = self.view.borrow();
            if seen.as_ref().is_some_and(|v| Arc::ptr_eq(v, &current)) {
                return;
            }
            current.clone()
        };
        let mut backends = self.backends.borrow_mut();
        let mut next = Vec::with_capacity(backends.len());
        for m in view.members.values() {
            let load = m.stats.load_avg[0] / f64::from(m.stats.cpus.max(1));
            for addr in &m.http {
                let known = backends
                    .iter()
                    .find(|(b, _)| b.node == m.name && b.addr == *addr && !b.stats.is_retired());
                let backend = match known {
                    Some((b, _)) => b.clone(),
                    None => Rc::new(Backend {
                        node: m.name.clone(),
                        addr: addr.clone(),
                        served_by: HeaderValue::from_str(&m.name).ok(),
                        stats: proxy.node.proxy_counters_mut().stats(&m.name, addr),
                        pool: Rc::new(Pool::default()),
                    }),
                };
                next.push((backend, load));
            }
        }
        *backends = next;
        *self.view.borrow_mut() = Some(view);
    }

    /// Choose a backend on an up node, not on node `tried`, `pinned` to a node if given;
    /// backends in back-off only when there is no other.
    fn choose(&self, pinned: Option<&str>, tried: Option<&str>) -> Result<Chosen, ProxyError> {
        self.sync();
        let backed_off = self.proxy.backed_off();
        let backends = self.backends.borrow();
        let eligible =
            |b: &Backend| pinned.is_none_or(|p| p == b.node) && tried.is_none_or(|t| t != b.node);
        let mut fresh = Vec::with_capacity(backends.len());
        let mut stale = Vec::new();
        for (i, (b, load)) in backends.iter().enumerate() {
            if !eligible(b) {
                continue;
            }
            let c = Candidate {
                outstanding: usize::try_from(b.stats.in_flight()).unwrap_or(usize::MAX),
                node: &b.node,
                addr: &b.addr,
                load_per_cpu: *load,
            };
            if backed_off.iter().any(|a| *a == b.addr) {
                stale.push((i, c));
            } else {
                fresh.push((i, c));
            }
        }
        let candidates = if fresh.is_empty() { stale } else { fresh };
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        let only: Vec<Candidate<'_>> = candidates.iter().map(|(_, c)| c.clone()).collect();
        let Some(&(i, _)) = pick(&only, turn).and_then(|n| candidates.get(n)) else {
            return Err(match pinned {
                Some(p) => ProxyError::PinnedUnavailable(p.to_owned()),
                None => ProxyError::NoBackend,
            });
        };
        let backend = backends
            .get(i)
            .map(|(b, _)| b.clone())
            .ok_or(ProxyError::NoBackend)?;
        backend.stats.started();
        Ok(Chosen(backend))
    }

    async fn handle(
        self: Rc<Self>,
        req: Request<Incoming>,
        client: IpAddr,
    ) -> Result<Response<DownBody>, Infallible> {
        Ok(match self.forward(req, client).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(node = %self.proxy.node.name(), "proxy: {e}");
                e.into_response()
            }
        })
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: IpAddr,
    ) -> Result<Response<DownBody>, ProxyError> {
        let proxy = &*self.proxy;
        if headers::size(req.headers()) > MAX_HEADER_BYTES {
            return Err(ProxyError::HeadersTooLarge);
        }
        let max_body = proxy.config.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::BodyTooLarge(max_body));
        }
        // Held until the backend's response head came (or the request failed).
        let _permit = proxy
            .permits
            .try_acquire()
            .map_err(|_| ProxyError::Busy(proxy.config.max_requests))?;
        let pinned = req
            .headers()
            .get(PIN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::add_forwarded(&mut parts.headers, client);
        // The backend gets the origin form (`/path?query`), as a client sends it to a server.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let origin = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = origin
                .parse::<Uri>()
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        }
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let idempotent = is_idempotent(&parts.method);
        // An idempotent request may be sent twice, so its body (usually none) is read first;
        // any other streams through once.
        let body = if body.is_end_stream() {
            // No body (a GET, mostly): nothing to read, nor to time.
            UpBody::full(Bytes::new())
        } else if idempotent {
            // A client that trickles its body would hold a permit for ever: it gets as long as
            // a backend gets for its answer.
            let read = tokio::time::timeout(
                proxy.config.response_timeout,
                Limited::new(body, limit).collect(),
            );
            let bytes = read
                .await
                .map_err(|_| ProxyError::BodyTimeout)?
                .map_err(|e| {
                    if caused_by::<LengthLimitError>(&*e) {
                        ProxyError::BodyTooLarge(max_body)
                    } else {
                        ProxyError::BadRequest(e.to_string())
                    }
                })?
                .to_bytes();
            UpBody::full(bytes)
        } else {
            UpBody::Stream(Limited::new(body, limit))
        };
        let mut up = Request::from_parts(parts, body);
        let mut tried: Option<Rc<Backend>> = None;
        loop {
            let chosen = self.choose(pinned.as_deref(), tried.as_ref().map(|b| b.node.as_str()))?;
            let b = &chosen.0;
            if !up.headers().contains_key(HOST) {
                // An HTTP/1.0 client may send none; HTTP/1.1 needs one.
                if let Ok(v) = HeaderValue::from_str(&b.addr) {
                    up.headers_mut().insert(HOST, v);
                }
            }
            let started = Instant::now();
            let attempt =
                tokio::time::timeout(proxy.config.response_timeout, self.attempt(b, up, upgrade));
            match attempt.await {
                Err(_) => {
                    b.stats.failed();
                    return Err(ProxyError::Timeout {
                        node: b.node.clone(),
                        addr: b.addr.clone(),
                    });
                }
                Ok(Ok((resp, sender))) => {
                    b.stats.answered(started.elapsed());
                    return Ok(respond(resp, sender, b, client_upgrade));
                }
                Ok(Err(AttemptError::NothingSent { req, source })) => {
                    // Nothing was sent: the backend is skipped for a while, and an idempotent
                    // request goes to another node once.
                    b.stats.failed();
                    proxy.back_off(&b.addr);
                    tracing::info!(node = %proxy.node.name(), "proxy: backend {} of {} refused a connection; skipped for {} s", b.addr, b.node, BACKOFF.as_secs());
                    if idempotent && tried.is_none() && pinned.is_none() {
                        tried = Some(b.clone());
                        up = req;
                        continue;
                    }
                    if timed_out(&*source) {
                        return Err(ProxyError::Timeout {
                            node: b.node.clone(),
                            addr: b.addr.clone(),
                        });
                    }
                    return Err(ProxyError::Connect {
                        node: b.node.clone(),
                        addr: b.addr.clone(),
                        source,
                    });
                }
                Ok(Err(AttemptError::Failed(e))) => {
                    b.stats.failed();
                    if caused_by::<LengthLimitError>(&e) {
                        return Err(ProxyError::BodyTooLarge(max_body));
                    }
                    // The connection broke (a backend dying resets its connections): the next
                    // requests go elsewhere until the back-off ends.
                    proxy.back_off(&b.addr);
                    return Err(ProxyError::Upstream {
                        node: b.node.clone(),
                        addr: b.addr.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    /// Send `req` to `b` on a pooled connection if one is open, else on a new one (always a
    /// new one for an upgrade, whose connection is handed over afterwards). A pooled
    /// connection that closed before taking the request gives it back, and the next one is
    /// tried: that failure says nothing of the backend.
    async fn attempt(
        &self,
        b: &Backend,
        mut req: Request<UpBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Sender), AttemptError> {
        loop {
            let pooled = if upgrade { None } else { b.pool.take().await };
            let (mut sender, was_pooled) = match pooled {
                Some(s) => (s, true),
                None => {
                    match pool::connect(&b.addr, self.proxy.config.connect_timeout, upgrade).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            return Err(AttemptError::NothingSent {
                                req,
                                source: Box::new(e),
                            })
                        }
                    }
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(back) if was_pooled => req = back,
                    Some(back) => {
                        return Err(AttemptError::NothingSent {
                            req: back,
                            source: Box::new(e.into_error()),
                        })
                    }
                    None => return Err(AttemptError::Failed(e.into_error())),
                },
            }
        }
    }
}

/// The backend's response as the client gets it: hop-by-hop headers stripped, the serving
/// node named, its connection back to the pool when the body ends; a `101 Switching
/// Protocols` joins the two upgraded connections.
fn respond(
    mut resp: Response<Incoming>,
    sender: Sender,
    b: &Backend,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<DownBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    if let Some(v) = &b.served_by {
        resp.headers_mut()
            .insert(SERVED_BY_HEADER.clone(), v.clone());
    }
    let upgrading = client_upgrade.is_some();
    if let (true, Some(client_side)) = (switching, client_upgrade) {
        let backend_side = hyper::upgrade::on(&mut resp);
        tokio::task::spawn_local(async move {
            let (Ok(c), Ok(b)) = tokio::join!(client_side, backend_side) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(b)).await;
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, DownBody::empty());
    }
    // A connection made for an upgrade the backend declined is not pooled: it was made
    // to be handed over.
    let back = (!upgrading).then(|| (sender, b.pool.clone()));
    resp.map(|inner| DownBody::Backend(BackendBody::new(inner, back)))
}

/// A running proxy. Dropping it leaves the proxy running: it stops with its node.
#[derive(Clone)]
pub struct ProxyServer {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
}

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ProxyServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters of every backend still advertised, by node and address (as
    /// `NodeHandle::proxy_counters`, which `/metrics` reads).
    pub fn counters(&self) -> Vec<(String, String, BackendCounters)> {
        self.proxy.node.proxy_counters()
    }
}

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyStartError {
    #[error("cannot serve the HTTP proxy on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the node stopped before the HTTP proxy started")]
    ArbiterGone,
    #[error("cannot start the HTTP proxy's threads: {0}")]
    Threads(std::io::Error),
}

/// Serve the proxy of `node` on `listener` (already bound), on threads of its own; it stops
/// when the node stops.
///
/// # Errors
/// [`ProxyStartError`] when the listener cannot be served or the node is gone.
pub async fn start(
    node: &NodeHandle,
    listener: TcpListener,
) -> Result<ProxyServer, ProxyStartError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ProxyStartError::Listen {
            addr: "?".into(),
            source,
        })?;
    let listen_error = |source| ProxyStartError::Listen {
        addr: addr.to_string(),
        source,
    };
    listener.set_nonblocking(true).map_err(listen_error)?;
    let config = node.config().cluster.proxy.clone();
    let proxy = Arc::new(Proxy {
        node: node.clone(),
        view: node.membership(),
        permits: Semaphore::new(config.max_requests),
        config,
        backoff: Mutex::new(Vec::new()),
        backing_off: AtomicUsize::new(0),
    });
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_THREADS);
    // A task of the node holds `stop`: it is dropped when the node stops,
    // and that ends every thread of the proxy.
    let (stop, stopped) = watch::channel(());
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (inboxes, mut inbox_rx): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| tokio::sync::mpsc::channel(HANDOVER_QUEUE))
        .unzip();
    let spread = Arc::new(Spread {
        inboxes,
        next: AtomicUsize::new(0),
    });
    let mut ready = Vec::with_capacity(threads);
    for i in 0..threads {
        let inbox = inbox_rx.remove(0);
        let spread = spread.clone();
        let listener = listener.try_clone().map_err(listen_error)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (proxy, connections) = (proxy.clone(), connections.clone());
        let mut stopped = stopped.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{}-{i}", node.name()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(ProxyStartError::Threads(e)));
                        return;
                    }
                };
                // Every connection of this thread, client or backend, is a local task of it.
                let tasks = tokio::task::LocalSet::new();
                tasks.block_on(&runtime, async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = tx.send(Err(ProxyStartError::Listen {
                                addr: addr.to_string(),
                                source,
                            }));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    let local = Rc::new(Local {
                        proxy,
                        view: RefCell::new(None),
                        backends: RefCell::new(Vec::new()),
                        turn: Cell::new(0),
                    });
                    tokio::select! {
                        () = accept(local.clone(), connections, listener, spread, i, inbox) => {}
                        () = sweep(&local) => {}
                        _ = stopped.changed() => {}
                    }
                });
                // Dropping the tasks and the runtime drops every connection this thread served.
            })
            .map_err(ProxyStartError::Threads)?;
        ready.push(rx);
    }
    for rx in ready {
        rx.await.map_err(|_| {
            ProxyStartError::Threads(std::io::Error::other("a proxy thread ended at start"))
        })??;
    }
    let spawned = node.spawn(async move {
        let _stop = stop;
        std::future::pending::<()>().await;
    });
    if !spawned {
        return Err(ProxyStartError::ArbiterGone);
    }
    tracing::info!(node = %node.name(), proxy = %addr, threads, "HTTP proxy serving");
    Ok(ProxyServer { addr, proxy })
}

/// Close, now and then, the idle backend connections of this thread that closed or stayed
/// idle past [`POOL_IDLE_TIMEOUT`].
async fn sweep(local: &Local) {
    let mut every = tokio::time::interval(POOL_SWEEP_INTERVAL);
    loop {
        every.tick().await;
        for (b, _) in local.backends.borrow().iter() {
            b.pool.prune();
        }
    }
}

/// A connection accepted by one proxy thread for another: its socket (out of the accepting
/// thread's reactor), its peer, and its place under [`MAX_CONNECTIONS`].
type HandedOver = (
    std::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// Connections handed over to a thread and not yet taken; past it the accepting thread
/// serves the connection itself.
const HANDOVER_QUEUE: usize = 64;

/// How the proxy's threads share out the connections they accept: in turn, whichever thread
/// accepted. Left to the accept loops alone, the thread that woke first took most of a burst
/// of new connections (wrk opens its 64 at once) and ran hot while the other idled, which
/// showed in the p99.
struct Spread {
    /// One inbox per thread.
    inboxes: Vec<tokio::sync::mpsc::Sender<HandedOver>>,
    next: AtomicUsize,
}

/// Accept connections while the node runs, and serve those this thread is given (accepted
/// here or handed over by another thread), each by hyper in a local task of this thread;
/// `connections` bounds those served at once by all threads.
async fn accept(
    local: Rc<Local>,
    connections: Arc<Semaphore>,
    listener: tokio::net::TcpListener,
    spread: Arc<Spread>,
    me: usize,
    mut inbox: tokio::sync::mpsc::Receiver<HandedOver>,
) {
    let accept_one = || async {
        // At the bound, wait for a connection to end before accepting the next.
        let permit = connections.clone().acquire_owned().await.ok()?;
        match listener.accept().await {
            Ok((stream, peer)) => Some(Some((stream, peer, permit))),
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: wait
                // a little rather than spin, and go on.
                tracing::warn!(node = %local.proxy.node.name(), "proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some(None)
            }
        }
    };
    loop {
        tokio::select! {
            accepted = accept_one() => {
                let Some(accepted) = accepted else { return };
                let Some((stream, peer, permit)) = accepted else { continue };
                let to = spread.next.fetch_add(1, Ordering::Relaxed) % spread.inboxes.len();
                if to == me {
                    serve(&local, stream, peer, permit);
                    continue;
                }
                let Ok(std_stream) = stream.into_std() else { continue };
                // Never wait on another thread's inbox (two threads waiting on each other's
                // would stall both): when it is full, this thread serves the connection.
                match spread.inboxes.get(to).map(|tx| tx.try_send((std_stream, peer, permit))) {
                    None | Some(Ok(())) => {}
                    Some(Err(e)) => {
                        let (std_stream, peer, permit) = e.into_inner();
                        if let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) {
                            serve(&local, stream, peer, permit);
                        }
                    }
                }
            }
            Some((std_stream, peer, permit)) = inbox.recv() => {
                if let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) {
                    serve(&local, stream, peer, permit);
                }
            }
        }
    }
}

/// Serve one client connection in a local task of this thread.
fn serve(
    local: &Rc<Local>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let local = local.clone();
    tokio::task::spawn_local(async move {
        let _permit = permit;
        let service = hyper::service::service_fn(move |req| local.clone().handle(req, peer.ip()));
        let served = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .writev(false)
            .max_buf_size(MAX_HEAD_BUFFER_BYTES)
            .max_headers(MAX_HEADERS)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
        if let Err(e) = served {
            tracing::debug!("proxy: connection from {peer}: {e}");
        }
    });
}

/// Bind the configured `proxy` address of `node` (or take `listener`) and [`start`] there;
/// `None` when the node has no proxy.
///
/// # Errors
/// As [`start`], or when the address cannot be bound.
pub async fn start_configured(
    node: &NodeHandle,
    listener: Option<TcpListener>,
) -> Result<Option<ProxyServer>, ProxyStartError> {
    let Some(addr) = node.config().node(node.name()).and_then(|n| n.proxy) else {
        return Ok(None);
    };
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(addr).map_err(|source| ProxyStartError::Listen {
            addr: addr.to_string(),
            source,
        })?,
    };
    start(node, listener).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_unavailability_says_when_to_retry() {
        let cases = [
            (ProxyError::HeadersTooLarge, 431),
            (ProxyError::BodyTooLarge(8), 413),
            (ProxyError::Busy(4), 503),
            (ProxyError::NoBackend, 503),
            (ProxyError::PinnedUnavailable("w".into()), 503),
            (
                ProxyError::Timeout {
                    node: "w".into(),
                    addr: "a:1".into(),
                },
                504,
            ),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::BadRequest("x".into()), 400),
        ];
        for (e, code) in cases {
            let busy = code == 503;
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), code);
            assert_eq!(resp.headers().contains_key(RETRY_AFTER), busy);
        }
    }

    #[test]
    fn only_methods_that_may_be_repeated_are_retried() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
