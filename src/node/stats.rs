//! Stats: samples this process (pid, version, uptime, RSS, CPUs, load, memory) every heartbeat
//! interval into the shared snapshot that Membership replicates. Supervised by NodeSupervisor.
//!
//! Reads Linux `/proc`; elsewhere the fields it cannot read stay zero. The process's and the
//! machine's figures are read once per [`SYSTEM_SAMPLE_TTL`] however many nodes the process
//! runs (a thousand nodes of one process read the same files).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::shared::NodeShared;
use super::supervision::guard;
use crate::wire::{NodeStats, StatValue};

/// Custom stats an application may add: bounded so a runaway caller cannot grow every status.
pub const MAX_EXTRA_STATS: usize = 32;

pub struct Stats {
    shared: Arc<NodeShared>,
    extra: BTreeMap<String, StatValue>,
}

impl Stats {
    pub fn new(shared: Arc<NodeShared>) -> Self {
        Stats {
            shared,
            extra: BTreeMap::new(),
        }
    }

    fn sample(&self) {
        let mut s = NodeStats {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.shared.started.elapsed().as_secs(),
            extra: self.extra.clone(),
            ..NodeStats::default()
        };
        let system = System::now();
        s.rss_bytes = system.rss_bytes;
        s.total_mem_bytes = system.total_mem_bytes;
        s.free_mem_bytes = system.free_mem_bytes;
        s.load_avg = system.load_avg;
        s.cpus = system.cpus;
        self.shared.stats.store(Arc::new(s));
    }
}

/// How old a reading of the process and the machine may be when another node of the same
/// process samples: well under the shortest heartbeat interval worth having.
const SYSTEM_SAMPLE_TTL: Duration = Duration::from_millis(200);

/// What every node of this process reads alike.
#[derive(Debug, Clone, Copy, Default)]
struct System {
    rss_bytes: u64,
    total_mem_bytes: u64,
    free_mem_bytes: u64,
    load_avg: [f64; 3],
    /// Read with the rest: the standard library reads the cgroup's files for it.
    cpus: u32,
}

static LAST_SYSTEM: Mutex<Option<(Instant, System)>> = Mutex::new(None);

impl System {
    /// The last reading if it is recent, else a new one.
    fn now() -> System {
        let mut last = LAST_SYSTEM
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *last {
            Some((at, system)) if at.elapsed() < SYSTEM_SAMPLE_TTL => system,
            _ => {
                let system = System::read();
                *last = Some((Instant::now(), system));
                system
            }
        }
    }

    fn read() -> System {
        let mut s = System {
            cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            ..System::default()
        };
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            s.rss_bytes = kib_field(&status, "VmRSS:");
        }
        if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
            s.total_mem_bytes = kib_field(&meminfo, "MemTotal:");
            s.free_mem_bytes = kib_field(&meminfo, "MemAvailable:");
        }
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            for (slot, v) in s.load_avg.iter_mut().zip(load.split_whitespace()) {
                *slot = v.parse().unwrap_or(0.0);
            }
        }
        s
    }
}

/// `Key:   1234 kB` → bytes.
fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

impl Actor for Stats {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sample();
        ctx.run_interval(self.shared.heartbeat_interval(), |act, ctx| {
            guard("stats", ctx, |_| act.sample());
        });
    }
}

impl Supervised for Stats {}

/// Set (or with `None`, remove) a custom stat replicated with this node's state (sent within a coalescing window).
#[derive(Message)]
#[rtype(result = "Result<(), StatsError>")]
pub struct SetStat {
    pub key: String,
    pub value: Option<StatValue>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("at most {MAX_EXTRA_STATS} custom stats may be set")]
    TooMany,
    #[error("stat names are 1..=64 characters")]
    BadKey,
    #[error("the stats actor failed and is restarting; set the stat again")]
    Restarting,
}

impl Handler<SetStat> for Stats {
    type Result = Result<(), StatsError>;

    fn handle(&mut self, msg: SetStat, ctx: &mut Context<Self>) -> Self::Result {
        // A panic here restarts the actor; the caller learns nothing was set.
        guard("stats", ctx, |_| self.set(msg)).unwrap_or(Err(StatsError::Restarting))
    }
}

impl Stats {
    fn set(&mut self, msg: SetStat) -> Result<(), StatsError> {
        if msg.key.is_empty() || msg.key.len() > 64 {
            return Err(StatsError::BadKey);
        }
        match msg.value {
            None => {
                self.extra.remove(&msg.key);
            }
            Some(v) => {
                if self.extra.len() >= MAX_EXTRA_STATS && !self.extra.contains_key(&msg.key) {
                    return Err(StatsError::TooMany);
                }
                self.extra.insert(msg.key, v);
            }
        }
        self.sample();
        Ok(())
    }
}
