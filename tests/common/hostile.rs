//! Tools for hostile tests against node processes: an RSS sampler reading /proc, and a flood
//! of idle connections from many loopback source addresses. Each runs on its own thread with
//! its own runtime, so the test's blocking waits on process logs never stall it; each stops
//! when its handle is dropped or stopped.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// The resident set size of process `pid` in bytes (`VmRSS` of /proc/PID/status), or `None`
/// if the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Samples a process's RSS every 50 ms and keeps the largest value.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50)); // the sampling period
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The largest RSS seen so far, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stop sampling; the largest RSS seen, in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a flood saw.
#[derive(Default)]
pub struct FloodCounts {
    /// Connections established.
    pub connected: AtomicU64,
    /// Connections the node closed (end of stream or reset), with or without an `error`.
    pub closed_by_node: AtomicU64,
    /// Connections that could not be established.
    pub failed: AtomicU64,
}

/// `per_target` idle connections to each target, kept open: each one that the node closes is
/// opened again after `reopen_after`. Sources are 127.0.0.2, 127.0.0.3, … (`sources` of
/// them, round robin), so the test's own peers on 127.0.0.1 are a different source.
pub struct Flood {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub counts: Arc<FloodCounts>,
    thread: Option<JoinHandle<()>>,
}

/// The n-th flood source address: 127.0.0.2 upwards, then 127.0.1.2, …
pub fn source(n: usize) -> IpAddr {
    let (hi, lo) = (n / 250, n % 250);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        u8::try_from(hi).unwrap_or(255),
        u8::try_from(lo + 2).unwrap_or(255),
    ))
}

impl Flood {
    pub fn start(
        targets: Vec<SocketAddr>,
        per_target: usize,
        sources: usize,
        reopen_after: Duration,
    ) -> Flood {
        let counts = Arc::new(FloodCounts::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = counts.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                let mut n = 0;
                for target in targets {
                    for _ in 0..per_target {
                        let src = source(n % sources.max(1));
                        n += 1;
                        tasks.spawn(idle_connection(target, src, reopen_after, c.clone()));
                    }
                }
                let _ = stopped.await;
                tasks.abort_all();
            });
        });
        Flood {
            stop: Some(stop),
            counts,
            thread: Some(thread),
        }
    }

    pub fn connected(&self) -> u64 {
        self.counts.connected.load(Ordering::Relaxed)
    }

    pub fn closed_by_node(&self) -> u64 {
        self.counts.closed_by_node.load(Ordering::Relaxed)
    }

    /// Close every connection and stop.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Connect from `src`, send nothing, wait for the node to close; again after a pause.
async fn idle_connection(
    target: SocketAddr,
    src: IpAddr,
    reopen_after: Duration,
    counts: Arc<FloodCounts>,
) {
    loop {
        let attempt = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(src, 0))?;
            socket.connect(target).await
        };
        match attempt.await {
            Ok(mut stream) => {
                counts.connected.fetch_add(1, Ordering::Relaxed);
                let mut sink = [0u8; 256];
                // Whatever the node says (a `busy` frame, or nothing), until it closes.
                loop {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                counts.closed_by_node.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(reopen_after).await; // the flood's pace, not synchronisation
    }
}
