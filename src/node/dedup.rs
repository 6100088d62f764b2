//! Duplicate suppression for broadcasts: the safety net under tree routing, never the
//! mechanism. While every node shares the same live graph no duplicate ever arrives; during a
//! route change one may, and this drops it.
//!
//! Per origin incarnation, a sliding window over event ids (origins number their events
//! 0, 1, 2, ...): `WINDOW` ids below the highest seen are remembered in a bitmap, older ones
//! count as seen. Memory is bounded: at most `max_origins` incarnations are tracked, and the
//! least recently active is forgotten first.
//!
//! Hostile ids: the arithmetic never overflows (an id near 2⁶⁴−1 is an ordinary id), and an
//! id more than [`MAX_JUMP`] above the highest seen is refused (counted as seen, and logged
//! at most once per [`JUMP_LOG_INTERVAL`] with a count): accepting it would push every real
//! id of that origin out of the window.

use std::collections::HashMap;

use uuid::Uuid;

pub const WINDOW: u64 = 4096;
/// No origin publishes 2³² events between two that one node sees: a larger jump is forged.
pub const MAX_JUMP: u64 = 1 << 32;
/// Refused jumps are logged at most this often.
pub const JUMP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const WORDS: usize = (WINDOW / 64) as usize;

struct Window {
    highest: u64,
    /// Bit `id % WINDOW` set when `id` (within the window) was seen.
    bits: Box<[u64; WORDS]>,
    last_used: u64,
}

/// What one origin's window says of an id.
enum Sighting {
    Fresh,
    Seen,
    /// Too far ahead of the highest id seen: refused.
    Jump,
}

impl Window {
    fn sight(&mut self, id: u64) -> Sighting {
        if self
            .highest
            .checked_sub(id)
            .is_some_and(|behind| behind >= WINDOW)
        {
            return Sighting::Seen; // too old to tell: treat as seen
        }
        if id
            .checked_sub(self.highest)
            .is_some_and(|ahead| ahead > MAX_JUMP)
        {
            return Sighting::Jump;
        }
        if id > self.highest {
            // Clear the slots the window slides over.
            let advance = (id - self.highest).min(WINDOW);
            for k in 1..=advance {
                let slot = (self.highest + k) % WINDOW;
                self.bits[(slot / 64) as usize] &= !(1 << (slot % 64));
            }
            self.highest = id;
        }
        let slot = id % WINDOW;
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        let fresh = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        if fresh {
            Sighting::Fresh
        } else {
            Sighting::Seen
        }
    }
}

pub struct Dedup {
    /// Every tracked origin's window, in no order; `index` finds one by its origin.
    windows: Vec<(Uuid, Window)>,
    index: HashMap<Uuid, usize>,
    /// Where the origin looked up last sits in `windows`: a run of events from one origin
    /// (what a link mostly carries) costs no hashing.
    last: usize,
    max_origins: usize,
    clock: u64,
    /// Ids refused for jumping too far, since the last log line.
    jumps_refused: u64,
    last_jump_log: Option<std::time::Instant>,
}

impl Dedup {
    /// Track up to twice the configured node count, so restarted nodes' old incarnations fit.
    pub fn new(nodes: usize) -> Self {
        Dedup {
            windows: Vec::new(),
            index: HashMap::new(),
            last: 0,
            max_origins: (nodes * 2).max(8),
            clock: 0,
            jumps_refused: 0,
            last_jump_log: None,
        }
    }

    /// True the first time `(origin, id)` is offered, false for a duplicate.
    pub fn first_sighting(&mut self, origin: Uuid, id: u64) -> bool {
        self.clock += 1;
        let at = match self.windows.get(self.last) {
            Some((o, _)) if *o == origin => self.last,
            _ => self.find_or_track(origin, id),
        };
        self.last = at;
        let sighting = match self.windows.get_mut(at) {
            Some((_, w)) => {
                w.last_used = self.clock;
                w.sight(id)
            }
            None => Sighting::Seen, // not reached: `at` was just found or made
        };
        match sighting {
            Sighting::Fresh => true,
            Sighting::Seen => false,
            Sighting::Jump => {
                self.refused_jump(origin, id);
                false
            }
        }
    }

    /// Where `origin`'s window is, a new one made for it (first id `id`) if it has none. The
    /// least recently active origin is forgotten first if the new one would be one too many.
    fn find_or_track(&mut self, origin: Uuid, id: u64) -> usize {
        if let Some(&at) = self.index.get(&origin) {
            return at;
        }
        if self.windows.len() >= self.max_origins {
            self.forget_oldest();
        }
        let window = Window {
            highest: id,
            bits: Box::new([0; WORDS]),
            last_used: self.clock,
        };
        self.windows.push((origin, window));
        let at = self.windows.len() - 1;
        self.index.insert(origin, at);
        at
    }

    /// Origins tracked and the most that may be (for the fuzz targets' invariants).
    #[cfg(feature = "fuzzing")]
    pub fn origins_tracked(&self) -> (usize, usize) {
        (self.windows.len(), self.max_origins)
    }

    /// The highest id taken from `origin`, if it is tracked.
    #[cfg(feature = "fuzzing")]
    pub fn highest(&self, origin: Uuid) -> Option<u64> {
        let at = *self.index.get(&origin)?;
        self.windows.get(at).map(|(_, w)| w.highest)
    }

    fn refused_jump(&mut self, origin: Uuid, id: u64) {
        self.jumps_refused += 1;
        let now = std::time::Instant::now();
        if self
            .last_jump_log
            .is_none_or(|t| now.duration_since(t) >= JUMP_LOG_INTERVAL)
        {
            tracing::warn!(%origin, id, refused = self.jumps_refused,
                "event ids jumping more than {MAX_JUMP} ahead refused (forged or corrupt)");
            self.jumps_refused = 0;
            self.last_jump_log = Some(now);
        }
    }

    fn forget_oldest(&mut self) {
        let Some(oldest) = self
            .windows
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, w))| w.last_used)
            .map(|(at, _)| at)
        else {
            return;
        };
        let (gone, _) = self.windows.swap_remove(oldest);
        self.index.remove(&gone);
        // The last window moved into the freed place.
        if let Some((moved, _)) = self.windows.get(oldest) {
            self.index.insert(*moved, oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_fresh_once() {
        let mut d = Dedup::new(4);
        let o = Uuid::new_v4();
        for id in 0..10_000 {
            assert!(d.first_sighting(o, id));
        }
        assert!(!d.first_sighting(o, 9_999));
        assert!(!d.first_sighting(o, 9_000));
        assert!(
            !d.first_sighting(o, 1),
            "ids older than the window count as seen"
        );
    }

    #[test]
    fn out_of_order_ids_within_the_window_are_each_fresh_once() {
        let mut d = Dedup::new(4);
        let o = Uuid::new_v4();
        assert!(d.first_sighting(o, 100));
        assert!(d.first_sighting(o, 50));
        assert!(!d.first_sighting(o, 50));
        assert!(d.first_sighting(o, 4_000));
        assert!(d.first_sighting(o, 99));
    }

    #[test]
    fn ids_near_the_top_of_the_range_neither_overflow_nor_poison_the_window() {
        let mut d = Dedup::new(4);
        let o = Uuid::new_v4();
        assert!(d.first_sighting(o, u64::MAX - 1));
        assert!(d.first_sighting(o, u64::MAX));
        assert!(!d.first_sighting(o, u64::MAX));
        assert!(d.first_sighting(o, u64::MAX - 2));
        // An origin whose first id is tiny, then a forged one near the top: refused, and the
        // real ids that follow are still fresh.
        let p = Uuid::new_v4();
        assert!(d.first_sighting(p, 1));
        assert!(
            !d.first_sighting(p, u64::MAX - 5),
            "a jump of ~2^64 is refused"
        );
        assert!(d.first_sighting(p, 2));
        assert!(
            d.first_sighting(p, 3 + MAX_JUMP - 10),
            "a large but plausible jump is taken"
        );
    }

    #[test]
    fn a_stream_of_forged_jumps_is_refused_every_time_and_logged_once_per_interval() {
        let mut d = Dedup::new(4);
        let o = Uuid::new_v4();
        assert!(d.first_sighting(o, 10));
        for k in 0..1000 {
            assert!(!d.first_sighting(o, u64::MAX - k), "forged id {k} refused");
        }
        // The first refusal was logged; the other 999 wait, counted, for the next line.
        assert!(d.last_jump_log.is_some());
        assert_eq!(d.jumps_refused, 999);
        assert!(d.first_sighting(o, 11), "the real ids go on");
    }

    #[test]
    fn a_window_moved_by_forgetting_another_is_still_found_and_the_forgotten_origin_starts_afresh()
    {
        let mut d = Dedup::new(1); // at most 8 origins
        let o: Vec<Uuid> = (0..9).map(|k| Uuid::from_u128(k + 1)).collect();
        for origin in &o[..8] {
            assert!(d.first_sighting(*origin, 0));
        }
        // o[0] is used again, so o[1] is the least recently active when o[8] arrives.
        assert!(d.first_sighting(o[0], 1));
        assert!(d.first_sighting(o[8], 0));
        assert_eq!(d.windows.len(), 8);
        for (at, (origin, _)) in d.windows.iter().enumerate() {
            assert_eq!(d.index.get(origin), Some(&at), "index of {origin}");
        }
        assert!(!d.index.contains_key(&o[1]));
        assert!(
            !d.first_sighting(o[7], 0),
            "o[7]'s window moved and still holds id 0"
        );
        assert!(!d.first_sighting(o[8], 0));
        assert!(!d.first_sighting(o[0], 1));
        assert!(
            d.first_sighting(o[1], 0),
            "o[1] was forgotten: its id 0 is new again"
        );
    }

    #[test]
    fn origins_are_bounded() {
        let mut d = Dedup::new(1);
        for _ in 0..100 {
            d.first_sighting(Uuid::new_v4(), 0);
        }
        assert!(d.windows.len() <= 8);
        assert_eq!(d.index.len(), d.windows.len());
    }
}
