//! Transport: the byte stream under one link, TCP, Unix or TLS over TCP, split into a read
//! half and a write half that the link's reader (the session actor) and writer task own
//! separately.
//!
//! An enum rather than a trait object: the hot path (one `poll_read` per read batch, one
//! `poll_write` per write batch) stays a match instead of a virtual call. A TLS stream is
//! split with `tokio::io::split` (its state is shared by both directions, behind a lock the
//! halves take per poll); plain TCP and Unix keep their lock-free owned halves, so a
//! plaintext link pays nothing for TLS. The TLS stream is boxed: it is large, and the enum
//! is moved around while a connection is set up.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// One connected stream a link runs over.
pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over TCP, accepted or dialled (see `crate::tls`).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// The two halves, each owned by one side of the link (no lock between them).
    pub fn split(self) -> (TransportRead, TransportWrite) {
        match self {
            Transport::Tcp(s) => {
                let (r, w) = s.into_split();
                (TransportRead::Tcp(r), TransportWrite::Tcp(w))
            }
            Transport::Unix(s) => {
                let (r, w) = s.into_split();
                (TransportRead::Unix(r), TransportWrite::Unix(w))
            }
            Transport::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (TransportRead::Tls(r), TransportWrite::Tls(w))
            }
        }
    }
}

impl From<TcpStream> for Transport {
    fn from(s: TcpStream) -> Self {
        Transport::Tcp(s)
    }
}

impl From<UnixStream> for Transport {
    fn from(s: UnixStream) -> Self {
        Transport::Unix(s)
    }
}

/// The read half of a [`Transport`].
pub enum TransportRead {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a [`Transport`]; `shutdown` sends FIN (TCP) or shuts the write side.
pub enum TransportWrite {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Tcp($s) => $e,
            Self::Unix($s) => $e,
            Self::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => eof_without_close_notify(Pin::new(s).poll_read(cx, buf)),
        }
    }
}

/// A TLS peer that closes without `close_notify` (a process killed, or one that just drops
/// the socket) reads as end of stream, as the same close does over plain TCP: frames carry
/// their own lengths, so a cut-off frame is still detected by the codec, and the orderly
/// close of a link is `bye`, not the TLS alert.
fn eof_without_close_notify(read: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match read {
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
        other => other,
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for TransportRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => eof_without_close_notify(Pin::new(s).poll_read(cx, buf)),
        }
    }
}

impl AsyncWrite for TransportWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_close_without_close_notify_reads_as_end_of_stream_and_other_errors_stay() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "no close_notify");
        assert!(matches!(
            eof_without_close_notify(Poll::Ready(Err(eof))),
            Poll::Ready(Ok(()))
        ));
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            eof_without_close_notify(Poll::Ready(Err(reset))),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset
        ));
        assert!(eof_without_close_notify(Poll::Pending).is_pending());
    }
}
