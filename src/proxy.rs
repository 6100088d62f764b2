//! The HTTP proxy a node serves when its configuration says `proxy = "ADDR"`: one entry point
//! that forwards each request to an HTTP backend advertised by an `up` node (the "proxy
//! bounce"). hyper parses and writes every message (an HTTP/1.1 server with keep-alive,
//! chunked bodies and upgrades; a pooled client to the backends); this module chooses the
//! backend and rewrites the headers.
//!
//! Like the HTTP API, it is not part of the actor tree: it reads the membership watch (who is
//! up, which backends each advertises, each node's load) on every request, so a node declared
//! `down` gets no request from the next one on. [`start`] runs it on threads of its own, one
//! per core (up to [`MAX_THREADS`]), as nginx runs one worker per core: on the node's single
//! arbiter thread it was held to one core while the others idled. Each thread has its own
//! runtime, accept loop and pool of backend connections, so a request, its connection and the
//! backend connection it uses stay on one thread (no hand-off between threads on the way).
//! The node's arbiter holds their stop signal, so the proxy and every connection it serves
//! stop when the node stops.
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
//! a connect timeout and a response timeout (504: the backend took too long to answer).

mod choice;
mod headers;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

pub use choice::{pick, Candidate};
pub use headers::{MAX_HEADER_BYTES, PIN_HEADER};

use crate::config::ProxyConfig;
use crate::node::{BackendCounters, MembershipView, NodeHandle, PROXY_LATENCY_BUCKETS_S};

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
/// Idle pooled connections to a backend are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The response header naming the node whose backend answered.
static SERVED_BY_HEADER: HeaderName = HeaderName::from_static("x-nodecloud-node");

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;
/// The client to the backends; one per proxy thread, each with its own pool.
type BackendClient = Client<HttpConnector, Body>;

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

    fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut resp = Response::new(text(format!("{self}\n")));
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

fn text(s: String) -> Body {
    Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// One backend: the node advertising it and its address.
type BackendKey = (String, String);

#[derive(Default)]
struct State {
    /// Requests waiting on each backend, by node then address (removed at zero); nested so
    /// that the choice looks them up by `&str`, without allocating.
    outstanding: HashMap<String, HashMap<String, usize>>,
    /// Backends skipped until the instant given, by address.
    backoff: HashMap<String, Instant>,
}

/// What every request of one proxy reads.
struct Proxy {
    node: NodeHandle,
    view: watch::Receiver<Arc<MembershipView>>,
    config: ProxyConfig,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    turn: AtomicUsize,
}

/// The backend chosen for one attempt; its outstanding count drops with it.
struct Chosen<'a> {
    proxy: &'a Proxy,
    key: BackendKey,
}

impl Drop for Chosen<'_> {
    fn drop(&mut self) {
        let mut s = self.proxy.lock();
        let (node, addr) = (&self.key.0, &self.key.1);
        if let Some(by_addr) = s.outstanding.get_mut(node) {
            if let Some(n) = by_addr.get_mut(addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_addr.remove(addr);
                }
            }
            if by_addr.is_empty() {
                s.outstanding.remove(node);
            }
        }
        drop(s);
        self.proxy
            .node
            .proxy_counters_mut()
            .update(&self.key.0, &self.key.1, |c| {
                c.in_flight = c.in_flight.saturating_sub(1);
            });
    }
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
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Choose a backend on an up node, not on the nodes in `tried`, `pinned` to a node if
    /// given; backends in back-off only when there is no other.
    fn choose(&self, pinned: Option<&str>, tried: &[String]) -> Result<Chosen<'_>, ProxyError> {
        let view = self.view.borrow().clone();
        let now = Instant::now();
        let mut s = self.lock();
        s.backoff.retain(|_, until| *until > now);
        let mut fresh = Vec::new();
        let mut backed_off = Vec::new();
        for m in view.members.values() {
            if pinned.is_some_and(|p| p != m.name) || tried.contains(&m.name) {
                continue;
            }
            let load = m.stats.load_avg[0] / f64::from(m.stats.cpus.max(1));
            let by_addr = s.outstanding.get(&m.name);
            for addr in &m.http {
                let c = Candidate {
                    outstanding: by_addr.and_then(|b| b.get(addr)).copied().unwrap_or(0),
                    node: &m.name,
                    addr,
                    load_per_cpu: load,
                };
                if s.backoff.contains_key(addr) {
                    backed_off.push(c);
                } else {
                    fresh.push(c);
                }
            }
        }
        let candidates = if fresh.is_empty() { backed_off } else { fresh };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let Some(c) = pick(&candidates, turn).and_then(|i| candidates.into_iter().nth(i)) else {
            return Err(match pinned {
                Some(p) => ProxyError::PinnedUnavailable(p.to_owned()),
                None => ProxyError::NoBackend,
            });
        };
        let key = (c.node.to_owned(), c.addr.to_owned());
        match s
            .outstanding
            .get_mut(c.node)
            .and_then(|b| b.get_mut(c.addr))
        {
            Some(n) => *n += 1,
            None => {
                s.outstanding
                    .entry(key.0.clone())
                    .or_default()
                    .insert(key.1.clone(), 1);
            }
        }
        drop(s);
        self.node.proxy_counters_mut().update(&key.0, &key.1, |c| {
            c.requests += 1;
            c.in_flight += 1;
        });
        Ok(Chosen { proxy: self, key })
    }

    fn record(&self, key: &BackendKey, started: Instant, ok: bool) {
        let secs = started.elapsed().as_secs_f64();
        self.node.proxy_counters_mut().update(&key.0, &key.1, |c| {
            if ok {
                let bucket = PROXY_LATENCY_BUCKETS_S
                    .iter()
                    .position(|b| secs <= *b)
                    .unwrap_or(PROXY_LATENCY_BUCKETS_S.len());
                if let Some(n) = c.latency_buckets.get_mut(bucket) {
                    *n += 1;
                }
                c.latency_sum_s += secs;
            } else {
                c.errors += 1;
            }
        });
    }

    fn back_off(&self, addr: &str) {
        self.lock()
            .backoff
            .insert(addr.to_owned(), Instant::now() + BACKOFF);
    }

    async fn handle(
        self: Arc<Self>,
        backends: BackendClient,
        req: Request<Incoming>,
        client: IpAddr,
    ) -> Result<Response<Body>, Infallible> {
        Ok(match self.forward(&backends, req, client).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(node = %self.node.name(), "proxy: {e}");
                e.into_response()
            }
        })
    }

    async fn forward(
        &self,
        backends: &BackendClient,
        mut req: Request<Incoming>,
        client: IpAddr,
    ) -> Result<Response<Body>, ProxyError> {
        if headers::size(req.headers()) > MAX_HEADER_BYTES {
            return Err(ProxyError::HeadersTooLarge);
        }
        let max_body = self.config.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::BodyTooLarge(max_body));
        }
        // Held until the backend's response head came (or the request failed).
        let _permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::Busy(self.config.max_requests))?;
        let pinned = req
            .headers()
            .get(PIN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut head = parts.headers;
        headers::strip_hop_by_hop(&mut head, upgrade);
        headers::add_forwarded(&mut head, client);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let idempotent = is_idempotent(&parts.method);
        // An idempotent request may be sent twice, so its body (usually none) is read first;
        // any other streams through once.
        let (buffered, mut streamed) = if idempotent {
            // A client that trickles its body would hold a permit for ever: it gets as long as
            // a backend gets for its answer.
            let read = tokio::time::timeout(
                self.config.response_timeout,
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
            (Some(bytes), None)
        } else {
            (None, Some(Limited::new(body, limit).boxed()))
        };
        let mut tried: Vec<String> = Vec::new();
        loop {
            let chosen = self.choose(pinned.as_deref(), &tried)?;
            let (node, addr) = (&chosen.key.0, &chosen.key.1);
            let body = match (&buffered, streamed.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|e| match e {}).boxed(),
                (None, Some(s)) => s,
                (None, None) => empty(),
            };
            let mut up = Request::builder()
                .method(parts.method.clone())
                .uri(format!("http://{addr}{path}"))
                .body(body)
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            *up.headers_mut() = head.clone();
            let started = Instant::now();
            let sent = tokio::time::timeout(self.config.response_timeout, backends.request(up));
            match sent.await {
                Err(_) => {
                    self.record(&chosen.key, started, false);
                    return Err(ProxyError::Timeout {
                        node: node.clone(),
                        addr: addr.clone(),
                    });
                }
                Ok(Ok(resp)) => {
                    self.record(&chosen.key, started, true);
                    return Ok(self.respond(resp, node, client_upgrade));
                }
                Ok(Err(e)) if e.is_connect() => {
                    // Nothing was sent: the backend is skipped for a while, and an idempotent
                    // request goes to another node once.
                    self.record(&chosen.key, started, false);
                    self.back_off(addr);
                    tracing::info!(node = %self.node.name(), "proxy: backend {addr} of {node} refused a connection; skipped for {} s", BACKOFF.as_secs());
                    if idempotent && tried.is_empty() && pinned.is_none() {
                        tried.push(node.clone());
                        continue;
                    }
                    if timed_out(&e) {
                        return Err(ProxyError::Timeout {
                            node: node.clone(),
                            addr: addr.clone(),
                        });
                    }
                    return Err(ProxyError::Connect {
                        node: node.clone(),
                        addr: addr.clone(),
                        source: Box::new(e),
                    });
                }
                Ok(Err(e)) => {
                    self.record(&chosen.key, started, false);
                    if caused_by::<LengthLimitError>(&e) {
                        return Err(ProxyError::BodyTooLarge(max_body));
                    }
                    // The connection broke (a backend dying resets its connections): the next
                    // requests go elsewhere until the back-off ends.
                    self.back_off(addr);
                    return Err(ProxyError::Upstream {
                        node: node.clone(),
                        addr: addr.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    /// The backend's response as the client gets it: hop-by-hop headers stripped, the
    /// serving node named; a `101 Switching Protocols` joins the two upgraded connections.
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        node: &str,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching);
        if let Ok(v) = HeaderValue::from_str(node) {
            resp.headers_mut().insert(SERVED_BY_HEADER.clone(), v);
        }
        if let (true, Some(client_side)) = (switching, client_upgrade) {
            let backend_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(c), Ok(b)) = tokio::join!(client_side, backend_side) else {
                    return;
                };
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(b)).await;
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())
    }
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
    #[error("the node's arbiter stopped before the HTTP proxy started")]
    ArbiterGone,
    #[error("cannot start the HTTP proxy's threads: {0}")]
    Threads(std::io::Error),
}

/// Serve the proxy of `node` on `listener` (already bound), on a runtime of its own; it stops
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
        permits: Arc::new(Semaphore::new(config.max_requests)),
        config,
        state: Mutex::new(State::default()),
        turn: AtomicUsize::new(0),
    });
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_THREADS);
    // A future on the node's arbiter holds `stop`: the arbiter drops it when the node stops,
    // and that ends every thread of the proxy.
    let (stop, stopped) = watch::channel(());
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut ready = Vec::with_capacity(threads);
    for i in 0..threads {
        let listener = listener.try_clone().map_err(listen_error)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serving = Serving {
            proxy: proxy.clone(),
            backends: backend_client(&proxy.config),
            connections: connections.clone(),
        };
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
                runtime.block_on(async move {
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
                    tokio::select! {
                        () = serving.accept(listener) => {}
                        _ = stopped.changed() => {}
                    }
                });
                // Dropping the runtime drops every connection this thread served.
            })
            .map_err(ProxyStartError::Threads)?;
        ready.push(rx);
    }
    for rx in ready {
        rx.await.map_err(|_| {
            ProxyStartError::Threads(std::io::Error::other("a proxy thread ended at start"))
        })??;
    }
    let spawned = node.arbiter().spawn(async move {
        let _stop = stop;
        std::future::pending::<()>().await;
    });
    if !spawned {
        return Err(ProxyStartError::ArbiterGone);
    }
    tracing::info!(node = %node.name(), proxy = %addr, threads, "HTTP proxy serving");
    Ok(ProxyServer { addr, proxy })
}

fn backend_client(config: &ProxyConfig) -> BackendClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// What one proxy thread serves with.
struct Serving {
    proxy: Arc<Proxy>,
    /// This thread's client, so that its pooled connections are used from this thread only.
    backends: BackendClient,
    /// Connections served at once, by all threads.
    connections: Arc<Semaphore>,
}

impl Serving {
    /// Accept connections while the node runs, each served by hyper in a task of its own on
    /// this thread.
    async fn accept(self, listener: tokio::net::TcpListener) {
        loop {
            // At the bound, wait for a connection to end before accepting the next.
            let Ok(permit) = self.connections.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait
                    // a little rather than spin, and go on.
                    tracing::warn!(node = %self.proxy.node.name(), "proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (proxy, backends) = (self.proxy.clone(), self.backends.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    proxy.clone().handle(backends.clone(), req, peer.ip())
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
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
    }
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
