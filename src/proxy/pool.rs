//! One proxy thread's connections to the backends, and the bodies that travel on them.
//!
//! Each proxy thread owns a [`Pool`] per backend (behind an `Rc`: never shared, never
//! locked). A connection is hyper's HTTP/1 client connection (`hyper::client::conn::http1`);
//! its connection future runs as a local task of the thread that made it, so a request, the
//! client connection it came on and the backend connection it goes out on are all driven by
//! one thread, with no hand-off to another thread or runtime. A connection goes back to its
//! pool when the response body it carried has ended ([`DownBody`]), and is taken again only
//! once hyper says it is open and ready for the next request.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Idle connections kept per backend and per proxy thread; one more is closed when its
/// response ends.
pub const MAX_IDLE_PER_BACKEND: usize = 32;
/// Idle pooled connections to a backend are closed after this (by the thread's sweep, or
/// when they are next looked at).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to a backend, ready to send one request at a time.
pub type Sender = SendRequest<UpBody>;

/// The idle connections of one thread to one backend, most recently used last.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<Vec<(Sender, Instant)>>,
}

impl Pool {
    /// An open pooled connection ready for a request, if there is one. A connection given
    /// back as its response ended may not be ready yet (its connection task has not seen the
    /// end): that is waited for, a moment; one that closed meanwhile (the backend died or
    /// timed it out) is dropped, never used.
    pub async fn take(&self) -> Option<Sender> {
        loop {
            // The borrow ends with the statement: nothing is borrowed across the await.
            let (mut sender, since) = self.idle.borrow_mut().pop()?;
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keep `sender` for a later request, unless it closed or the pool is full.
    pub fn give_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((sender, Instant::now()));
        }
    }

    /// Drop the connections that closed or stayed idle too long.
    pub fn prune(&self) {
        let now = Instant::now();
        self.idle
            .borrow_mut()
            .retain(|(s, since)| !s.is_closed() && now.duration_since(*since) <= IDLE_TIMEOUT);
    }
}

/// Why no connection to a backend was made; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Open a connection to `addr` (`HOST:PORT`) within `timeout` (an `io::ErrorKind::TimedOut`
/// past it), its connection task spawned on this thread; `upgrades` lets it hand its socket
/// over after a `101 Switching Protocols`.
///
/// # Errors
/// [`ConnectError`] when the backend cannot be reached.
pub async fn connect(
    addr: &str,
    timeout: Duration,
    upgrades: bool,
) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} ms", timeout.as_millis()),
            )
        })??;
    // Small requests and responses go out at once, not after the peer's delayed ACK.
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    // The connection ends with its last sender (after its exchange) or when the backend
    // closes it; its errors reach the request that was on it.
    if upgrades {
        tokio::task::spawn_local(async move {
            let _ = conn.with_upgrades().await;
        });
    } else {
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
    }
    Ok(sender)
}

/// A request body on its way to a backend: read whole first (an idempotent request, which
/// may be sent twice), or streamed from the client within the size bound.
pub enum UpBody {
    Full(Option<Bytes>),
    Stream(Limited<Incoming>),
}

impl UpBody {
    /// A body read whole; an empty one sends no body at all.
    pub fn full(bytes: Bytes) -> UpBody {
        UpBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(s) => s.size_hint(),
        }
    }
}

/// A response body on its way to the client: the proxy's own (an error), or a backend's,
/// whose connection returns to its pool once the body has ended.
pub enum DownBody {
    Full(Option<Bytes>),
    Backend(BackendBody),
}

/// A backend's response body and, until it ends, the connection it came on.
pub struct BackendBody {
    inner: Incoming,
    back: Option<(Sender, Rc<Pool>)>,
}

impl BackendBody {
    /// `back`: the connection and its pool, when the connection may serve again (not after
    /// an upgrade).
    pub fn new(inner: Incoming, back: Option<(Sender, Rc<Pool>)>) -> BackendBody {
        BackendBody { inner, back }
    }

    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.give_back(sender);
        }
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        // hyper may drop a body it saw end (an empty one, never polled) without polling it;
        // a body dropped half-read leaves its connection mid-response, which then closes.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl DownBody {
    pub fn text(s: String) -> DownBody {
        DownBody::Full(Some(Bytes::from(s)))
    }

    pub fn empty() -> DownBody {
        DownBody::Full(None)
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            DownBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            DownBody::Backend(body) => match Pin::new(&mut body.inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    body.give_back();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if body.inner.is_end_stream() {
                        body.give_back();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    // The connection broke mid-body: it is not reused.
                    body.back = None;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownBody::Full(b) => b.is_none(),
            DownBody::Backend(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            DownBody::Backend(body) => body.inner.size_hint(),
        }
    }
}
