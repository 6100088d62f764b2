//! Admission of connections that have not authenticated yet: the one policy shared by the
//! peer listener and the service listener. Plain state owned by each listener actor (which
//! NodeSupervisor supervises); no actor of its own.
//!
//! A connection is *pending* from its accept until its handshake ends. The policy, built so
//! that a flood of half-open connections cannot keep a legitimate peer out:
//!
//! - **First bytes.** A pending connection must send its first bytes within
//!   [`first_bytes_deadline`] (at most [`FIRST_BYTES_MAX`]), or it is closed. Every honest
//!   dialler speaks first (`hello`), at once, so only idle connections wait.
//! - **Global cap.** At most a bound of connections are pending at once: [`PENDING`], or on a
//!   peer listener as many as the cluster has members if that is more (see
//!   [`peer_pending_bound`]), since every member may dial a hub at once. When the table is
//!   full, the oldest connection that has not sent a byte yet is dropped to make room for the
//!   newcomer: an idle flood only ever evicts itself, and a honest dialler, which speaks at
//!   once, is never the oldest silent one. "Silent" is asked of the socket itself at that
//!   moment (a [`Probe`]: a non-blocking peek), not only of the first-bytes wait: under a
//!   burst of accepts, a dialler's `hello` may wait unread while newer connections pile up
//!   behind it, and closing a socket with unread bytes resets the dialler. Only when every
//!   pending connection is talking is the newcomer refused.
//! - **Per-source cap.** While the table is at least half full, a source address that
//!   already holds [`MAX_PENDING_PER_SOURCE`] pending connections gets no more. Below that
//!   pressure there is no per-source cap, so many nodes of one host (a one-process cluster,
//!   all on 127.0.0.1) still start at full speed.
//! - **Logging.** Refusals are counted by reason and logged as one summary line per
//!   [`REFUSAL_LOG_INTERVAL`], never one line per connection.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

/// Connections pending (accepted, handshake not finished) per listener: the bound of the
/// service listener, and the least of a peer listener's.
pub const PENDING: usize = 64;
/// The most a peer listener's bound grows to with the size of its cluster.
pub const PENDING_MAX: usize = 4096;
/// Pending connections one source address may hold while the listener is at least half full.
pub const MAX_PENDING_PER_SOURCE: usize = 8;
/// The longest a connection may stay silent after it is accepted.
pub const FIRST_BYTES_MAX: Duration = Duration::from_millis(500);
/// Refusals are summed up in one log line this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// How many connections a peer listener holds pending at once in a cluster of at most
/// `member_bound` members: [`PENDING`], or one per member if that is more (at most
/// [`PENDING_MAX`]).
///
/// A hub is dialled by every member at once when a cluster starts, or when the hub restarts
/// and they all come back. Refused, they retry with backoff: at a fixed 64, a thousand
/// workers starting together were refused 3,458 times in their first 5 s, and their links
/// took 11 to 18 s to come up instead of about 4. A pending connection costs a socket and a
/// handshake buffer of at most 1 KiB, and an idle flood still only evicts itself.
pub fn peer_pending_bound(member_bound: usize) -> usize {
    member_bound.clamp(PENDING, PENDING_MAX)
}

/// How long a new connection may take to send its first bytes: the handshake timeout, but
/// at most [`FIRST_BYTES_MAX`].
pub fn first_bytes_deadline(handshake_timeout: Duration) -> Duration {
    handshake_timeout.min(FIRST_BYTES_MAX)
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{MAX_PENDING_PER_SOURCE} handshakes from this address already in progress")]
    PerSource,
    #[error("as many handshakes as this listener takes are already in progress")]
    Full,
    #[error("no bytes sent within the first-bytes deadline")]
    FirstBytesLate,
    #[error("dropped while silent to make room for a newer connection")]
    Evicted,
}

impl Refusal {
    /// The reason as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_source",
            Refusal::Full => "full",
            Refusal::FirstBytesLate => "first_bytes_late",
            Refusal::Evicted => "evicted",
        }
    }
}

/// One pending connection's place in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

struct Entry<H> {
    source: Option<IpAddr>,
    /// While the connection has sent nothing: the handle that cancels its wait (`H` is the
    /// listener's, e.g. an actix `SpawnHandle`), and a probe of its socket. `None` once it
    /// talks.
    silent: Option<(H, Option<Probe>)>,
}

/// A second descriptor of a pending connection's socket, to ask without waiting whether
/// bytes have come (the first-bytes wait owns the connection itself).
pub struct Probe(socket2::Socket);

impl Probe {
    /// A probe of `socket` (`None` if the descriptor cannot be duplicated: the connection is
    /// then judged by its first-bytes wait alone).
    pub fn of(socket: &impl std::os::fd::AsFd) -> Option<Probe> {
        socket2::SockRef::from(socket).try_clone().ok().map(Probe)
    }

    /// A probe of an accepted connection (`None` once wrapped in TLS: it spoke already).
    pub fn of_transport(io: &crate::link::Transport) -> Option<Probe> {
        match io {
            crate::link::Transport::Tcp(s) => Probe::of(s),
            crate::link::Transport::Unix(s) => Probe::of(s),
            crate::link::Transport::Tls(_) => None,
        }
    }

    /// Whether bytes wait unread. The socket is non-blocking (tokio's), so this never waits.
    fn has_bytes(&self) -> bool {
        let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(self.0.peek(&mut one), Ok(n) if n > 0)
    }
}

/// Refusals since the last summary line.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct RefusalCounts {
    pub per_source: u64,
    pub full: u64,
    pub first_bytes_late: u64,
    pub evicted: u64,
}

impl RefusalCounts {
    fn total(&self) -> u64 {
        self.per_source + self.full + self.first_bytes_late + self.evicted
    }
}

/// The pending connections of one listener, and its refusal counts.
pub struct Admission<H> {
    /// The most connections pending at once.
    bound: usize,
    next: u64,
    /// By ticket: tickets grow, so the first entry is the oldest.
    pending: BTreeMap<Ticket, Entry<H>>,
    per_source: HashMap<IpAddr, usize>,
    refused: RefusalCounts,
}

impl<H> Admission<H> {
    /// A table of at most `bound` pending connections (at least 2, so that half of it is a
    /// table's worth for the per-source cap).
    pub fn new(bound: usize) -> Self {
        Admission {
            bound: bound.max(2),
            next: 0,
            pending: BTreeMap::new(),
            per_source: HashMap::new(),
            refused: RefusalCounts::default(),
        }
    }

    /// Connections pending now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Admit a connection from `source` (`None`: a Unix socket, which has no address). On
    /// success, a silent connection may have been evicted to make room: its handle is
    /// returned so that the caller cancels it (its ticket is already released). A refusal is
    /// counted.
    ///
    /// # Errors
    /// [`Refusal::PerSource`] or [`Refusal::Full`].
    pub fn admit(&mut self, source: Option<IpAddr>) -> Result<(Ticket, Option<H>), Refusal> {
        let from_source = source.map_or(0, |s| self.per_source.get(&s).copied().unwrap_or(0));
        if self.pending.len() * 2 >= self.bound && from_source >= MAX_PENDING_PER_SOURCE {
            self.count(Refusal::PerSource);
            return Err(Refusal::PerSource);
        }
        let mut evicted = None;
        if self.pending.len() >= self.bound {
            // The oldest connection still silent when asked now: one whose bytes came but
            // wait unread is talking (its wait will say so) and stays.
            let mut oldest_silent = None;
            for (t, e) in &mut self.pending {
                match &e.silent {
                    Some((_, Some(probe))) if probe.has_bytes() => e.silent = None,
                    Some(_) => {
                        oldest_silent = Some(*t);
                        break;
                    }
                    None => {}
                }
            }
            let Some(victim) = oldest_silent else {
                self.count(Refusal::Full);
                return Err(Refusal::Full);
            };
            evicted = self.remove(victim).and_then(|e| e.silent).map(|(h, _)| h);
            self.count(Refusal::Evicted);
        }
        let ticket = Ticket(self.next);
        self.next += 1;
        if let Some(s) = source {
            *self.per_source.entry(s).or_default() += 1;
        }
        self.pending.insert(
            ticket,
            Entry {
                source,
                silent: None,
            },
        );
        Ok((ticket, evicted))
    }

    /// The connection of `ticket` waits for its first bytes; `handle` cancels that wait, and
    /// `probe` asks its socket whether they came. Returns false if the ticket is no longer
    /// pending.
    pub fn silent(&mut self, ticket: Ticket, handle: H, probe: Option<Probe>) -> bool {
        match self.pending.get_mut(&ticket) {
            Some(e) => {
                e.silent = Some((handle, probe));
                true
            }
            None => false,
        }
    }

    /// The connection of `ticket` sent its first bytes: it can no longer be evicted. False if
    /// it is no longer pending (it was evicted meanwhile: drop it).
    pub fn talking(&mut self, ticket: Ticket) -> bool {
        match self.pending.get_mut(&ticket) {
            Some(e) => {
                e.silent = None;
                true
            }
            None => false,
        }
    }

    /// The connection of `ticket` sent nothing in time: released and counted.
    pub fn too_late(&mut self, ticket: Ticket) {
        if self.remove(ticket).is_some() {
            self.count(Refusal::FirstBytesLate);
        }
    }

    /// The handshake of `ticket` ended (either way).
    pub fn release(&mut self, ticket: Ticket) {
        self.remove(ticket);
    }

    fn remove(&mut self, ticket: Ticket) -> Option<Entry<H>> {
        let entry = self.pending.remove(&ticket)?;
        if let Some(s) = entry.source {
            if let Some(n) = self.per_source.get_mut(&s) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_source.remove(&s);
                }
            }
        }
        Some(entry)
    }

    fn count(&mut self, why: Refusal) {
        let c = &mut self.refused;
        let n = match why {
            Refusal::PerSource => &mut c.per_source,
            Refusal::Full => &mut c.full,
            Refusal::FirstBytesLate => &mut c.first_bytes_late,
            Refusal::Evicted => &mut c.evicted,
        };
        *n = n.saturating_add(1);
    }

    /// The refusals counted since the last call, reset.
    pub fn take_counts(&mut self) -> RefusalCounts {
        std::mem::take(&mut self.refused)
    }

    /// The summary line for the refusals since the last call (`None` if there were none),
    /// over an interval of `interval`.
    pub fn take_summary(&mut self, interval: Duration) -> Option<String> {
        let c = self.take_counts();
        summary(&c, interval)
    }
}

/// `refused N connections in the last Xs: …`, or `None` for no refusal.
pub fn summary(c: &RefusalCounts, interval: Duration) -> Option<String> {
    if c.total() == 0 {
        return None;
    }
    let mut line = format!(
        "refused {} connections in the last {}s:",
        c.total(),
        interval.as_secs()
    );
    let parts = [
        (c.per_source, "over the per-source cap"),
        (c.full, "with every handshake slot busy"),
        (c.first_bytes_late, "first bytes too late"),
        (c.evicted, "silent, dropped for newer connections"),
    ];
    let mut first = true;
    for (n, what) in parts.into_iter().filter(|(n, _)| *n > 0) {
        let sep = if first { " " } else { ", " };
        first = false;
        let _ = write!(line, "{sep}{n} {what}");
    }
    Some(line)
}

/// Tell a connection refused before its handshake why (`error {code, message}`, given at most
/// [`REFUSAL_SEND_WITHIN`]), then close it. Best effort, on a task of its own.
pub fn refuse<S>(io: S, code: &'static str, message: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    use futures_util::SinkExt;
    actix_rt::spawn(async move {
        let codec = crate::wire::FrameCodec::new(crate::wire::MAX_HANDSHAKE_FRAME_BYTES);
        let mut framed = tokio_util::codec::Framed::new(io, codec);
        let refusal = crate::wire::Message::Error(crate::wire::ErrorFrame {
            code: code.into(),
            message,
        });
        let _ = tokio::time::timeout(REFUSAL_SEND_WITHIN, framed.send(&refusal)).await;
    });
}

/// The most time a refusal's `error` frame is given.
pub const REFUSAL_SEND_WITHIN: Duration = Duration::from_millis(200);

/// What a new connection did within its first-bytes deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// Bytes are waiting to be read (nothing is consumed).
    Spoke,
    /// Nothing came in time.
    Silent,
    /// It closed (or failed) before sending anything: nothing to answer, nothing to log.
    Closed,
}

/// Wait at most `deadline` for `stream`'s first bytes.
pub async fn first_bytes<S: Readable>(stream: &S, deadline: Duration) -> FirstBytes {
    match tokio::time::timeout(deadline, stream.peek_one()).await {
        Err(_) => FirstBytes::Silent,
        Ok(Ok(0) | Err(_)) => FirstBytes::Closed,
        Ok(Ok(_)) => FirstBytes::Spoke,
    }
}

/// A stream whose first byte can be awaited without consuming it.
pub trait Readable {
    /// Wait for at least one byte; 0 at end of stream.
    fn peek_one(&self) -> impl std::future::Future<Output = std::io::Result<usize>>;
}

impl Readable for tokio::net::TcpStream {
    async fn peek_one(&self) -> std::io::Result<usize> {
        let mut one = [0u8; 1];
        self.peek(&mut one).await
    }
}

impl Readable for tokio::net::UnixStream {
    /// No peek on a Unix stream: readable (data or end of stream) counts as a byte, and a
    /// closed socket fails in the handshake at once.
    async fn peek_one(&self) -> std::io::Result<usize> {
        self.readable().await.map(|()| 1)
    }
}

impl Readable for crate::link::Transport {
    async fn peek_one(&self) -> std::io::Result<usize> {
        match self {
            crate::link::Transport::Tcp(s) => s.peek_one().await,
            crate::link::Transport::Unix(s) => s.peek_one().await,
            // Wrapped into TLS only after admission: it has spoken already.
            crate::link::Transport::Tls(_) => Ok(1),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_full_table_evicts_its_oldest_silent_connection_for_a_newcomer() {
        let mut a: Admission<u64> = Admission::new(PENDING);
        let mut tickets = Vec::new();
        for i in 0..PENDING {
            let (t, evicted) = a.admit(ip((i % 200) as u8 + 2)).unwrap();
            assert!(evicted.is_none());
            assert!(a.silent(t, i as u64, None));
            tickets.push(t);
        }
        // The first one talks: it is not evictable; the second is the oldest silent one.
        assert!(a.talking(tickets[0]));
        let (_, evicted) = a.admit(ip(1)).unwrap();
        assert_eq!(evicted, Some(1));
        assert_eq!(a.pending(), PENDING);
        assert!(!a.talking(tickets[1]), "an evicted ticket is gone");
        assert_eq!(a.take_counts().evicted, 1);
    }

    /// The bytes of a dialler that spoke wait unread while newer connections fill the table:
    /// asked at eviction time, its socket says it spoke, so a silent one behind it goes.
    #[test]
    fn a_connection_whose_first_bytes_wait_unread_is_not_evicted() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut honest = std::net::TcpStream::connect(addr).unwrap();
        let (honest_here, _) = listener.accept().unwrap();
        honest_here.set_nonblocking(true).unwrap();
        let idle = std::net::TcpStream::connect(addr).unwrap();
        let (idle_here, _) = listener.accept().unwrap();
        idle_here.set_nonblocking(true).unwrap();
        honest.write_all(b"hello").unwrap();
        // Wait (bounded) until the bytes are in the node's receive buffer.
        let probe = Probe::of(&honest_here).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !probe.has_bytes() {
            assert!(
                std::time::Instant::now() < deadline,
                "the bytes never arrived"
            );
            std::thread::yield_now();
        }

        let mut a: Admission<&str> = Admission::new(PENDING);
        let (t, _) = a.admit(ip(1)).unwrap();
        assert!(a.silent(t, "honest", Some(probe)));
        let (t, _) = a.admit(ip(2)).unwrap();
        assert!(a.silent(t, "idle", Probe::of(&idle_here)));
        for i in 2..PENDING {
            let (t, _) = a.admit(ip(i as u8 + 2)).unwrap();
            assert!(a.silent(t, "filler", None));
        }
        let (_, evicted) = a.admit(ip(250)).unwrap();
        assert_eq!(evicted, Some("idle"), "the honest dialler stays");
        drop(idle);
    }

    #[test]
    fn a_peer_listener_holds_one_pending_handshake_per_member_within_its_bounds() {
        assert_eq!(peer_pending_bound(3), PENDING);
        assert_eq!(peer_pending_bound(1000), 1000);
        assert_eq!(peer_pending_bound(1_000_000), PENDING_MAX);
        let mut a: Admission<()> = Admission::new(peer_pending_bound(1000));
        let source = |i: u32| Some(IpAddr::from((0x7f00_0000 + i).to_be_bytes()));
        for i in 0..1000 {
            let (t, evicted) = a.admit(source(i)).unwrap();
            assert!(evicted.is_none());
            assert!(a.talking(t));
        }
        assert_eq!(a.admit(source(1000)).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn a_full_table_of_talking_connections_refuses_the_newcomer() {
        let mut a: Admission<()> = Admission::new(PENDING);
        for i in 0..PENDING {
            let (t, _) = a.admit(ip(i as u8 + 2)).unwrap();
            assert!(a.talking(t));
        }
        assert_eq!(a.admit(ip(1)).unwrap_err(), Refusal::Full);
        assert_eq!(a.take_counts().full, 1);
    }

    #[test]
    fn one_source_is_capped_only_once_the_table_is_half_full() {
        let mut a: Admission<()> = Admission::new(PENDING);
        // Alone, one address may open more than its cap (a one-host cluster starting).
        for _ in 0..PENDING / 2 {
            a.admit(ip(1)).unwrap();
        }
        assert_eq!(a.admit(ip(1)).unwrap_err(), Refusal::PerSource);
        // Another address still gets in, up to its own cap.
        for _ in 0..MAX_PENDING_PER_SOURCE {
            a.admit(ip(2)).unwrap();
        }
        assert_eq!(a.admit(ip(2)).unwrap_err(), Refusal::PerSource);
        assert!(a.admit(ip(3)).is_ok());
        assert!(a.admit(None).is_ok(), "a Unix socket has no source to cap");
        assert_eq!(a.take_counts().per_source, 2);
    }

    #[test]
    fn releasing_a_ticket_frees_its_sources_share() {
        let mut a: Admission<()> = Admission::new(PENDING);
        let mut mine = Vec::new();
        for i in 0..PENDING / 2 {
            a.admit(ip(i as u8 + 10)).unwrap();
        }
        for _ in 0..MAX_PENDING_PER_SOURCE {
            mine.push(a.admit(ip(1)).unwrap().0);
        }
        assert!(a.admit(ip(1)).is_err());
        a.release(mine[0]);
        a.too_late(mine[1]);
        assert!(a.admit(ip(1)).is_ok());
        assert!(a.admit(ip(1)).is_ok());
        assert!(a.admit(ip(1)).is_err());
        let c = a.take_counts();
        assert_eq!((c.per_source, c.first_bytes_late), (2, 1));
    }

    #[test]
    fn the_summary_counts_refusals_by_reason_and_resets() {
        let mut a: Admission<()> = Admission::new(PENDING);
        assert_eq!(a.take_summary(REFUSAL_LOG_INTERVAL), None);
        let (t, _) = a.admit(ip(1)).unwrap();
        a.too_late(t);
        a.too_late(t); // already released: not counted twice
        a.count(Refusal::PerSource);
        a.count(Refusal::PerSource);
        let line = a.take_summary(Duration::from_secs(5)).unwrap();
        assert_eq!(
            line,
            "refused 3 connections in the last 5s: 2 over the per-source cap, 1 first bytes too late"
        );
        assert_eq!(a.take_summary(REFUSAL_LOG_INTERVAL), None);
    }

    #[test]
    fn the_first_bytes_deadline_is_short_but_never_longer_than_the_handshake() {
        assert_eq!(
            first_bytes_deadline(Duration::from_secs(5)),
            FIRST_BYTES_MAX
        );
        assert_eq!(
            first_bytes_deadline(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
