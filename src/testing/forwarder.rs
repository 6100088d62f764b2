//! A user-space TCP forwarder that injects network faults, for tests and the chaos benchmark
//! (the kernel's `tc netem` is not available everywhere). Nodes never use it: it sits between
//! two of them, as a faulty network would.
//!
//! It accepts on one address and, for every connection, dials the target and forwards bytes
//! both ways. Faults, changeable while it runs:
//!
//! - **Delay**: every chunk is held `delay` before it is written on (one way; a round trip
//!   pays it twice).
//! - **Loss, as TCP shows it.** TCP never loses bytes: a lost segment shows as a stall until
//!   it is retransmitted, and everything behind it waits. With probability `stall_probability`
//!   per chunk read, the chunk (and so everything after it) is held `stall` longer.
//! - **Blackhole**: nothing is read or written while it lasts, and the sockets stay open: what
//!   a cut cable looks like to TCP (the senders' data waits in their socket buffers). A
//!   connection accepted meanwhile is dialled on to the target only once it is lifted.
//! - **Cut**: [`ForwarderHandle::drop_connections`] closes every forwarded connection at once.
//!
//! Bounded: each direction of a connection reads chunks of at most [`CHUNK_BYTES`] and holds at
//! most [`HELD_CHUNKS`] of them; past that it stops reading, so a slow or blackholed far side
//! pushes back on the sender as a network would.
//!
//! The forwarder is a tokio task tree owned by its [`ForwarderHandle`]: the accept loop owns
//! one task per connection, and dropping the handle (or [`ForwarderHandle::shutdown`]) aborts
//! them all, closing their sockets. Randomness is a seeded xorshift, so a run is repeatable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The largest chunk one read takes.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks one direction of a connection holds (delayed or stalled) before it stops reading.
pub const HELD_CHUNKS: usize = 256;

/// The faults applied to what is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Added to every chunk, one way.
    pub delay: Duration,
    /// Probability (0..=1) that a chunk stalls as a lost segment would.
    pub stall_probability: f64,
    /// How long a stalled chunk is held on top of `delay` (a retransmission timeout).
    pub stall: Duration,
    /// Forward nothing, keep the sockets open.
    pub blackhole: bool,
    /// Seed of the random stalls.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            delay: Duration::ZERO,
            stall_probability: 0.0,
            // Linux's minimum retransmission timeout.
            stall: Duration::from_millis(200),
            blackhole: false,
            seed: 0x5eed,
        }
    }
}

/// What went wrong starting a forwarder.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("the forwarder cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the forwarder's listener has no local address: {0}")]
    LocalAddr(std::io::Error),
}

/// Counters of a running forwarder.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    bytes: AtomicU64,
}

/// A running forwarder. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct ForwarderHandle {
    local: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped by `drop_connections`: every connection older than the new value closes.
    cuts: watch::Sender<u64>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl ForwarderHandle {
    /// Listen on `listen` and forward to `to`. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`ForwarderError`] if the address cannot be bound.
    pub async fn bind(
        listen: SocketAddr,
        to: SocketAddr,
        faults: Faults,
    ) -> Result<ForwarderHandle, ForwarderError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ForwarderError::Bind {
                addr: listen,
                source,
            })?;
        ForwarderHandle::start(listener, to, faults)
    }

    /// Forward what `listener` accepts to `to`. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`ForwarderError::LocalAddr`].
    pub fn start(
        listener: TcpListener,
        to: SocketAddr,
        faults: Faults,
    ) -> Result<ForwarderHandle, ForwarderError> {
        let local = listener.local_addr().map_err(ForwarderError::LocalAddr)?;
        let (faults, faults_rx) = watch::channel(faults);
        let (cuts, cuts_rx) = watch::channel(0);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            to,
            faults_rx,
            cuts_rx,
            Arc::clone(&counters),
        ));
        Ok(ForwarderHandle {
            local,
            faults,
            cuts,
            counters,
            accept,
        })
    }

    /// Where it accepts.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The faults now applied.
    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Apply new faults, to open connections too.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Start or lift a blackhole.
    pub fn blackhole(&self, on: bool) {
        self.faults.send_modify(|f| f.blackhole = on);
    }

    /// Close every connection forwarded so far (new ones are accepted as before).
    pub fn drop_connections(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Bytes written on so far, both directions together.
    pub fn bytes_forwarded(&self) -> u64 {
        self.counters.bytes.load(Ordering::Relaxed)
    }

    /// Stop accepting and close every connection.
    pub fn shutdown(self) {
        // Drop does it.
    }
}

impl Drop for ForwarderHandle {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops them all.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    to: SocketAddr,
    faults: watch::Receiver<Faults>,
    cuts: watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    let mut conn_no: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else {
                    // Out of descriptors, say: wait a little instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                conn_no += 1;
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                connections.spawn(connection(
                    inbound,
                    to,
                    conn_no,
                    faults.clone(),
                    cuts.clone(),
                    Arc::clone(&counters),
                ));
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One forwarded connection: both directions, until either side closes or a cut.
async fn connection(
    inbound: TcpStream,
    to: SocketAddr,
    conn_no: u64,
    mut faults: watch::Receiver<Faults>,
    mut cuts: watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    let born = *cuts.borrow_and_update();
    // A connection attempt cannot cross a blackhole either: the far side hears of it only
    // once it is lifted (our listener's kernel has accepted it meanwhile, as a backlog would).
    if wait_open(&mut faults).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(to).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let seed = faults.borrow().seed ^ conn_no.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut up = JoinSet::new();
    up.spawn(direction(
        in_r,
        out_w,
        Rng::new(seed),
        faults.clone(),
        Arc::clone(&counters),
    ));
    up.spawn(direction(
        out_r,
        in_w,
        Rng::new(seed.rotate_left(17) ^ 1),
        faults,
        counters,
    ));
    let mut open = 2;
    loop {
        tokio::select! {
            done = up.join_next() => match done {
                // One direction ended cleanly (EOF passed on): the other may go on.
                Some(Ok(true)) => {
                    open -= 1;
                    if open == 0 { return; }
                }
                // An error on either side: close both, as a broken connection does.
                _ => return,
            },
            changed = cuts.changed() => {
                if changed.is_err() || *cuts.borrow() != born {
                    return;
                }
            }
        }
    }
}

/// A chunk and when it may be written on.
struct Held {
    due: Instant,
    bytes: Vec<u8>,
}

/// Forward one direction. `true` when the reader's end of stream was passed on, `false`
/// on an error (the connection is then closed).
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rng: Rng,
    faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
) -> bool {
    let (tx, mut rx) = mpsc::channel::<Held>(HELD_CHUNKS);
    let mut read_faults = faults.clone();
    let reader = async move {
        let mut last_due = Instant::now();
        loop {
            if wait_open(&mut read_faults).await.is_err() {
                return false;
            }
            let mut buf = vec![0; CHUNK_BYTES];
            let n = match from.read(&mut buf).await {
                Ok(0) => return true,
                Ok(n) => n,
                Err(_) => return false,
            };
            buf.truncate(n);
            let f = read_faults.borrow().clone();
            let mut due = Instant::now() + f.delay;
            if f.stall_probability > 0.0 && rng.chance(f.stall_probability) {
                due += f.stall;
            }
            // Head-of-line: nothing overtakes a stalled chunk.
            due = due.max(last_due);
            last_due = due;
            if tx.send(Held { due, bytes: buf }).await.is_err() {
                return false;
            }
        }
    };
    let mut write_faults = faults;
    let writer = async move {
        while let Some(held) = rx.recv().await {
            tokio::time::sleep_until(held.due).await;
            if wait_open(&mut write_faults).await.is_err() {
                return false;
            }
            if to.write_all(&held.bytes).await.is_err() {
                return false;
            }
            counters
                .bytes
                .fetch_add(held.bytes.len() as u64, Ordering::Relaxed);
        }
        // The reader ended: pass its end of stream on after everything held.
        to.shutdown().await.is_ok()
    };
    let (read_ok, write_ok) = tokio::join!(reader, writer);
    read_ok && write_ok
}

/// Wait while a blackhole lasts. Err if the handle is gone.
async fn wait_open(faults: &mut watch::Receiver<Faults>) -> Result<(), watch::error::RecvError> {
    faults.wait_for(|f| !f.blackhole).await.map(|_| ())
}

/// xorshift64*: enough for fault injection, and repeatable from a seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Zero is xorshift's fixed point.
        Rng(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        // The top 53 bits as a float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// An echo server on loopback: everything read is written back.
    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn forwarder_to_echo(faults: Faults) -> (ForwarderHandle, JoinHandle<()>) {
        let (echo, task) = echo_server().await;
        let fwd = ForwarderHandle::bind("127.0.0.1:0".parse().unwrap(), echo, faults)
            .await
            .unwrap();
        (fwd, task)
    }

    /// Write `data` and read as many bytes back, in a bounded time.
    async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = stream.split();
        let write = async {
            w.write_all(data).await.unwrap();
        };
        let mut back = vec![0; data.len()];
        let read = async {
            r.read_exact(&mut back).await.unwrap();
        };
        tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
            .await
            .expect("the echo came back in time");
        back
    }

    #[tokio::test]
    async fn bytes_arrive_intact_and_in_order_through_stalls() {
        let faults = Faults {
            stall_probability: 0.2,
            stall: Duration::from_millis(5),
            ..Faults::default()
        };
        let (fwd, _echo) = forwarder_to_echo(faults).await;
        let mut s = TcpStream::connect(fwd.local_addr()).await.unwrap();
        // 1 MiB of a pattern that shows any reordering or loss of a chunk.
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let back = round_trip(&mut s, &data).await;
        assert!(back == data, "the echo differs from what was sent");
        assert_eq!(fwd.bytes_forwarded(), 2 * data.len() as u64);
    }

    #[tokio::test]
    async fn the_delay_is_added_each_way() {
        let delay = Duration::from_millis(60);
        let faults = Faults {
            delay,
            ..Faults::default()
        };
        let (fwd, _echo) = forwarder_to_echo(faults).await;
        let mut s = TcpStream::connect(fwd.local_addr()).await.unwrap();
        let started = Instant::now();
        assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
        let rtt = started.elapsed();
        assert!(rtt >= 2 * delay, "round trip {rtt:?} under twice {delay:?}");
        assert!(
            rtt < 2 * delay + Duration::from_secs(2),
            "round trip {rtt:?}"
        );
    }

    #[tokio::test]
    async fn a_blackhole_forwards_nothing_until_it_is_lifted() {
        let (fwd, _echo) = forwarder_to_echo(Faults::default()).await;
        let mut s = TcpStream::connect(fwd.local_addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"before").await, b"before");
        let before = fwd.bytes_forwarded();
        fwd.blackhole(true);
        s.write_all(b"during").await.unwrap();
        let mut back = [0u8; 6];
        let early = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut back)).await;
        assert!(early.is_err(), "data crossed a blackhole");
        assert_eq!(fwd.bytes_forwarded(), before);
        fwd.blackhole(false);
        tokio::time::timeout(WAIT, s.read_exact(&mut back))
            .await
            .expect("the data came through once the blackhole was lifted")
            .unwrap();
        assert_eq!(&back, b"during");
    }

    #[tokio::test]
    async fn a_connection_made_during_a_blackhole_reaches_the_target_only_once_it_is_lifted() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fwd = ForwarderHandle::bind(
            "127.0.0.1:0".parse().unwrap(),
            target.local_addr().unwrap(),
            Faults::default(),
        )
        .await
        .unwrap();
        fwd.blackhole(true);
        let _client = TcpStream::connect(fwd.local_addr()).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), target.accept()).await;
        assert!(early.is_err(), "a connection crossed a blackhole");
        fwd.blackhole(false);
        tokio::time::timeout(WAIT, target.accept())
            .await
            .expect("the connection arrives once the blackhole is lifted")
            .unwrap();
    }

    #[tokio::test]
    async fn dropping_connections_closes_open_ones_and_accepts_new_ones() {
        let (fwd, _echo) = forwarder_to_echo(Faults::default()).await;
        let mut old = TcpStream::connect(fwd.local_addr()).await.unwrap();
        assert_eq!(round_trip(&mut old, b"x").await, b"x");
        fwd.drop_connections();
        let mut buf = [0u8; 1];
        let end = tokio::time::timeout(WAIT, old.read(&mut buf))
            .await
            .expect("the cut connection ends");
        assert!(matches!(end, Ok(0) | Err(_)), "read {end:?} after a cut");
        let mut new = TcpStream::connect(fwd.local_addr()).await.unwrap();
        assert_eq!(round_trip(&mut new, b"y").await, b"y");
        assert_eq!(fwd.accepted(), 2);
    }

    #[test]
    fn stalls_happen_at_about_the_requested_rate() {
        let mut rng = Rng::new(42);
        let hits = (0..100_000).filter(|_| rng.chance(0.05)).count();
        assert!((4_000..6_000).contains(&hits), "{hits} of 100000 at p=0.05");
    }
}
