//! Duplicate suppression for broadcasts: the safety net under tree routing, never the
//! mechanism. While every node shares the same live graph no duplicate ever arrives; during a
//! route change one may, and this drops it.
//!
//! Per origin incarnation, a sliding window over event ids (origins number their events
//! 0, 1, 2, ...): `WINDOW` ids below the highest seen are remembered in a bitmap, older ones
//! count as seen. Memory is bounded: at most `max_origins` incarnations are tracked, and the
//! least recently active is forgotten first.

use std::collections::HashMap;

use uuid::Uuid;

const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

struct Window {
    highest: u64,
    /// Bit `id % WINDOW` set when `id` (within the window) was seen.
    bits: Box<[u64; WORDS]>,
    last_used: u64,
}

pub struct Dedup {
    origins: HashMap<Uuid, Window>,
    max_origins: usize,
    clock: u64,
}

impl Dedup {
    /// Track up to twice the configured node count, so restarted nodes' old incarnations fit.
    pub fn new(nodes: usize) -> Self {
        Dedup {
            origins: HashMap::new(),
            max_origins: (nodes * 2).max(8),
            clock: 0,
        }
    }

    /// True the first time `(origin, id)` is offered, false for a duplicate.
    pub fn first_sighting(&mut self, origin: Uuid, id: u64) -> bool {
        self.clock += 1;
        let clock = self.clock;
        if !self.origins.contains_key(&origin) && self.origins.len() >= self.max_origins {
            self.forget_oldest();
        }
        let w = self.origins.entry(origin).or_insert_with(|| Window {
            highest: id,
            bits: Box::new([0; WORDS]),
            last_used: clock,
        });
        w.last_used = clock;
        if id + WINDOW <= w.highest {
            return false; // too old to tell: treat as seen
        }
        if id > w.highest {
            // Clear the slots the window slides over.
            let advance = (id - w.highest).min(WINDOW);
            for k in 1..=advance {
                let slot = (w.highest + k) % WINDOW;
                w.bits[(slot / 64) as usize] &= !(1 << (slot % 64));
            }
            w.highest = id;
        }
        let slot = id % WINDOW;
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        let fresh = w.bits[word] & bit == 0;
        w.bits[word] |= bit;
        fresh
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .origins
            .iter()
            .min_by_key(|(_, w)| w.last_used)
            .map(|(k, _)| *k)
        {
            self.origins.remove(&oldest);
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
    fn origins_are_bounded() {
        let mut d = Dedup::new(1);
        for _ in 0..100 {
            d.first_sighting(Uuid::new_v4(), 0);
        }
        assert!(d.origins.len() <= 8);
    }
}
