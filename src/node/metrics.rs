//! [`Metrics`]: the node's counters that no actor keeps for itself, in one place that the HTTP
//! API's `/metrics` reads (per-link counters live on each link: `session::LinkCounters`).
//! Plain relaxed atomics, bumped where the thing happens; nothing is formatted or locked on a
//! hot path. Owned by `NodeShared`, so it lives as long as the node.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Call outcomes, in the order of [`Metrics::calls`]: `ok`, then every `CallError` code.
pub const CALL_OUTCOMES: [&str; 11] = [
    "ok",
    "no_implementer",
    "timeout",
    "target_down",
    "unknown_node",
    "remote_error",
    "bad_payload",
    "implementer_gone",
    "busy",
    "stopped",
    "too_large",
];

/// Upper bounds of the call latency histogram, in seconds.
pub const CALL_LATENCY_BUCKETS_S: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Reasons a connection is refused before it becomes a peer link or an application session.
pub const REFUSALS: [&str; 7] = [
    "per_source",
    "full",
    "first_bytes_late",
    "evicted",
    "tls",
    "handshake",
    "duplicate_node",
];

/// Membership replication counters, in the order of [`Metrics::replication`]: what the
/// anti-entropy costs, so an idle cluster that keeps sending can be told apart by kind.
pub const REPLICATION: [&str; 12] = [
    "digests_sent",
    "digests_received",
    "delta_frames_sent",
    "delta_records_sent",
    "delta_entries_sent",
    "delta_records_received",
    "records_new",
    "records_stale",
    "records_gap",
    "own_stats_set",
    "ticks_forwarded",
    "graph_recomputes",
];

/// One [`REPLICATION`] counter.
#[derive(Debug, Clone, Copy)]
pub enum Repl {
    DigestsSent,
    DigestsReceived,
    DeltaFramesSent,
    DeltaRecordsSent,
    DeltaEntriesSent,
    DeltaRecordsReceived,
    RecordsNew,
    RecordsStale,
    RecordsGap,
    OwnStatsSet,
    TicksForwarded,
    GraphRecomputes,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events this node originated (publish and send_to, from Rust, applications, HTTP).
    pub events_published: AtomicU64,
    /// Events handed to a local subscriber (one per subscriber that took it).
    pub events_delivered: AtomicU64,
    /// Events that arrived on a link and were forwarded on another.
    pub events_relayed: AtomicU64,
    /// Calls made from this node, by outcome ([`CALL_OUTCOMES`]).
    calls: [AtomicU64; CALL_OUTCOMES.len()],
    /// Non-cumulative counts per [`CALL_LATENCY_BUCKETS_S`] bucket; the last one is +Inf.
    call_latency: [AtomicU64; CALL_LATENCY_BUCKETS_S.len() + 1],
    call_latency_sum_us: AtomicU64,
    /// Applications attached now.
    pub applications: AtomicI64,
    /// Connections refused, by [`REFUSALS`] reason.
    refused: [AtomicU64; REFUSALS.len()],
    /// Membership replication, by [`REPLICATION`] counter.
    replication: [AtomicU64; REPLICATION.len()],
    /// Links established after the first one to the same peer (re-dials and re-accepts).
    pub reconnects: AtomicU64,
    /// Links established, first ones included.
    pub links_established: AtomicU64,
    /// Application deliveries dropped to make room (`drop_oldest`), added when the
    /// application detaches.
    pub app_deliveries_dropped: AtomicU64,
    /// Events a local subscriber could not decode into its type (skipped for it).
    pub events_undecodable: AtomicU64,
    /// Applications closed for reading too slowly.
    pub apps_closed_slow: AtomicU64,
    /// Peers this node had a link to, so a later link counts as a reconnect. Bounded by the
    /// configured nodes; locked only when a link comes up.
    peers_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub events_published: u64,
    pub events_delivered: u64,
    pub events_relayed: u64,
    /// `(outcome, count)` in [`CALL_OUTCOMES`] order.
    pub calls: Vec<(&'static str, u64)>,
    /// `(upper bound s, cumulative count)`; the last bound is infinity.
    pub call_latency_buckets: Vec<(f64, u64)>,
    pub call_latency_sum_s: f64,
    pub call_latency_count: u64,
    pub applications: i64,
    /// `(reason, count)` in [`REFUSALS`] order.
    pub refused: Vec<(&'static str, u64)>,
    /// `(counter, count)` in [`REPLICATION`] order.
    pub replication: Vec<(&'static str, u64)>,
    pub reconnects: u64,
    pub links_established: u64,
    pub app_deliveries_dropped: u64,
    pub events_undecodable: u64,
    pub apps_closed_slow: u64,
}

impl Metrics {
    /// Count one call's outcome (`ok` or the `CallError` code) and how long it took.
    pub fn call_done(&self, code: &str, took: Duration) {
        // An unknown code (from a newer peer) counts with the closest thing, a remote error.
        let i = CALL_OUTCOMES.iter().position(|c| *c == code).unwrap_or(5);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        let s = took.as_secs_f64();
        let b = CALL_LATENCY_BUCKETS_S
            .iter()
            .position(|bound| s <= *bound)
            .unwrap_or(CALL_LATENCY_BUCKETS_S.len());
        self.call_latency[b].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.call_latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Count a link that came up (to a configured peer: names were checked in the handshake).
    pub fn link_up(&self, peer: &str) {
        self.links_established.fetch_add(1, Ordering::Relaxed);
        let mut seen = self
            .peers_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.insert(peer.to_owned()) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a refused connection; `reason` is one of [`REFUSALS`].
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Add `n` to a replication counter.
    pub fn repl(&self, which: Repl, n: u64) {
        self.replication[which as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let mut call_latency_buckets = Vec::with_capacity(self.call_latency.len());
        for (i, n) in self.call_latency.iter().enumerate() {
            cumulative += load(n);
            let bound = CALL_LATENCY_BUCKETS_S
                .get(i)
                .copied()
                .unwrap_or(f64::INFINITY);
            call_latency_buckets.push((bound, cumulative));
        }
        MetricsSnapshot {
            events_published: load(&self.events_published),
            events_delivered: load(&self.events_delivered),
            events_relayed: load(&self.events_relayed),
            calls: CALL_OUTCOMES
                .iter()
                .zip(&self.calls)
                .map(|(c, n)| (*c, load(n)))
                .collect(),
            call_latency_buckets,
            call_latency_sum_s: load(&self.call_latency_sum_us) as f64 / 1e6,
            call_latency_count: cumulative,
            applications: self.applications.load(Ordering::Relaxed),
            refused: REFUSALS
                .iter()
                .zip(&self.refused)
                .map(|(r, n)| (*r, load(n)))
                .collect(),
            replication: REPLICATION
                .iter()
                .zip(&self.replication)
                .map(|(r, n)| (*r, load(n)))
                .collect(),
            reconnects: load(&self.reconnects),
            links_established: load(&self.links_established),
            app_deliveries_dropped: load(&self.app_deliveries_dropped),
            events_undecodable: load(&self.events_undecodable),
            apps_closed_slow: load(&self.apps_closed_slow),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallError;

    #[test]
    fn call_latency_buckets_are_cumulative_and_end_in_infinity() {
        let m = Metrics::default();
        m.call_done("ok", Duration::from_micros(50));
        m.call_done("timeout", Duration::from_secs(5));
        let s = m.snapshot();
        assert_eq!(s.call_latency_buckets[0], (0.0001, 1));
        assert_eq!(s.call_latency_buckets.last(), Some(&(f64::INFINITY, 2)));
        assert_eq!(s.call_latency_count, 2);
        assert_eq!(s.calls[0], ("ok", 1));
        assert_eq!(s.calls[2], ("timeout", 1));
        assert!((s.call_latency_sum_s - 5.00005).abs() < 1e-9);
    }

    #[test]
    fn every_call_error_code_has_an_outcome_slot() {
        for e in [
            CallError::NoImplementer(String::new()),
            CallError::Timeout(Duration::ZERO),
            CallError::TargetDown(String::new()),
            CallError::UnknownNode(String::new()),
            CallError::Remote(String::new()),
            CallError::BadPayload(String::new()),
            CallError::ImplementerGone(String::new()),
            CallError::Busy(String::new()),
            CallError::Stopped,
            CallError::TooLarge(String::new()),
        ] {
            assert!(CALL_OUTCOMES.contains(&e.code()), "{}", e.code());
        }
    }
}

/// Upper bounds of the HTTP proxy's latency histogram (until a backend's response head), in
/// seconds.
pub const PROXY_LATENCY_BUCKETS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What the node's HTTP proxy counted for one backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendCounters {
    /// Requests sent to it (each attempt counts).
    pub requests: u64,
    /// Attempts that got no response from it (refused, broken, timed out).
    pub errors: u64,
    /// Requests waiting on it now.
    pub in_flight: u64,
    /// Responses by the time their head came, in [`PROXY_LATENCY_BUCKETS_S`] (not
    /// cumulative), then one bucket past the last bound.
    pub latency_buckets: [u64; PROXY_LATENCY_BUCKETS_S.len() + 1],
    pub latency_sum_s: f64,
}

/// One backend's live counters, bumped by every proxy thread without a lock: each thread
/// holds an `Arc` of the backends it forwards to and touches only these atomics per request.
/// `in_flight` is also the proxy's count of outstanding requests on the backend, which the
/// choice reads.
#[derive(Debug, Default)]
pub struct BackendStats {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    latency_buckets: [AtomicU64; PROXY_LATENCY_BUCKETS_S.len() + 1],
    latency_sum_ns: AtomicU64,
    /// Set when `/metrics` dropped this backend (no longer advertised): a thread that still
    /// holds it takes a fresh one when the backend is advertised again.
    retired: AtomicBool,
}

impl BackendStats {
    /// A request was sent to it (one attempt): one more request, one more in flight.
    pub fn started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt [`started`](Self::started) is over (answered or failed).
    pub fn finished(&self) {
        // Paired with `started` by the proxy's guard; saturating all the same.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Requests waiting on it now, from every proxy thread.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Its response head came `took` after the attempt began.
    pub fn answered(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = PROXY_LATENCY_BUCKETS_S
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PROXY_LATENCY_BUCKETS_S.len());
        if let Some(n) = self.latency_buckets.get(bucket) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// An attempt got no response from it.
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `/metrics` dropped it (see the field).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn counters(&self) -> BackendCounters {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut latency_buckets = [0; PROXY_LATENCY_BUCKETS_S.len() + 1];
        for (to, from) in latency_buckets.iter_mut().zip(&self.latency_buckets) {
            *to = load(from);
        }
        BackendCounters {
            requests: load(&self.requests),
            errors: load(&self.errors),
            in_flight: load(&self.in_flight),
            latency_buckets,
            latency_sum_s: load(&self.latency_sum_ns) as f64 / 1e9,
        }
    }
}

/// The HTTP proxy's counters per backend, by node then address: written by the proxy
/// (`crate::proxy`) per request through [`BackendStats`], read by `/metrics`. The lock is
/// taken when a proxy thread first meets a backend and at each read, never per request.
/// Bounded by what is advertised: entries of backends no longer advertised by an up node are
/// dropped at a read.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    by_backend: std::sync::Mutex<BackendMap>,
}

type BackendMap =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, Arc<BackendStats>>>;

impl ProxyCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, BackendMap> {
        // Every update leaves the map consistent: a poisoned lock is still usable.
        self.by_backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live counters of backend `addr` of `node`, made at the first call.
    pub fn stats(&self, node: &str, addr: &str) -> Arc<BackendStats> {
        let mut m = self.lock();
        if let Some(s) = m.get(node).and_then(|b| b.get(addr)) {
            return s.clone();
        }
        let s = Arc::new(BackendStats::default());
        m.entry(node.to_owned())
            .or_default()
            .insert(addr.to_owned(), s.clone());
        s
    }

    /// Every backend's counters, by node and address, after dropping those `advertised`
    /// says are gone (and that have nothing in flight).
    pub fn snapshot(
        &self,
        advertised: impl Fn(&str, &str) -> bool,
    ) -> Vec<(String, String, BackendCounters)> {
        let mut m = self.lock();
        m.retain(|node, backends| {
            backends.retain(|addr, s| {
                let keep = s.in_flight() > 0 || advertised(node, addr);
                if !keep {
                    s.retired.store(true, Ordering::Relaxed);
                }
                keep
            });
            !backends.is_empty()
        });
        m.iter()
            .flat_map(|(n, backends)| {
                backends
                    .iter()
                    .map(move |(a, s)| (n.clone(), a.clone(), s.counters()))
            })
            .collect()
    }
}
