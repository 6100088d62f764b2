//! How large a link's read and write buffers are: each follows its traffic, as NATS sizes a
//! client's read buffer. A buffer starts at [`FIRST_BYTES`], doubles (up to its maximum) each
//! time one read or one write batch fills it, and after [`SHORT_USES_TO_SHRINK`] uses in a row
//! that needed less than half of it, shrinks to what the largest of them needed. An idle link
//! (most of a large cluster's) holds a few KiB instead of what its busiest moment needed: a
//! hub with a thousand links kept 64 KiB of read buffer and up to 256 KiB of write buffer on
//! each before (a write batch's size).
//!
//! Owned by one link's reader ([`super::reader`]) or writer ([`super::writer`]); it only
//! advises, and they allocate.

/// A new link's buffers: pings, acknowledgements and small deltas fit many times over.
pub const FIRST_BYTES: usize = 4 * 1024;

/// Uses in a row that needed less than half of the buffer before it shrinks: a busy link's
/// occasional short read does not shrink it, a link gone quiet shrinks within a few pings.
pub const SHORT_USES_TO_SHRINK: u8 = 8;

/// The size a buffer should have now.
#[derive(Debug, Clone)]
pub struct BufferSizing {
    target: usize,
    max: usize,
    short_uses: u8,
    /// The most bytes one of the current run of short uses needed.
    largest_short: usize,
}

impl BufferSizing {
    /// Starts at [`FIRST_BYTES`] (or `max` if smaller) and grows up to `max`.
    pub fn new(max: usize) -> Self {
        BufferSizing {
            target: FIRST_BYTES.min(max),
            max,
            short_uses: 0,
            largest_short: 0,
        }
    }

    /// The size to allocate now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// One read or one write batch used `used` bytes of the room it had (`room`). A use
    /// larger than the target, or one that filled room of at least half the target, doubles
    /// it (or more, to fit the use); a run of short ones shrinks it to the power of two the
    /// largest of them fits in.
    pub fn used(&mut self, used: usize, room: usize) {
        if used > self.target || (used >= room && room >= self.target / 2) {
            self.target = (self.target * 2)
                .max(used.next_power_of_two())
                .min(self.max);
            self.short_uses = 0;
            self.largest_short = 0;
        } else if used < self.target / 2 {
            self.short_uses += 1;
            self.largest_short = self.largest_short.max(used);
            if self.short_uses >= SHORT_USES_TO_SHRINK {
                self.target = self
                    .largest_short
                    .next_power_of_two()
                    .clamp(FIRST_BYTES.min(self.max), self.max);
                self.short_uses = 0;
                self.largest_short = 0;
            }
        } else {
            self.short_uses = 0;
            self.largest_short = 0;
        }
    }

    /// Whether a buffer of `capacity` bytes is more than twice the target: worth giving back
    /// once it holds nothing.
    pub fn oversized(&self, capacity: usize) -> bool {
        capacity > self.target * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uses_double_the_buffer_up_to_its_maximum() {
        let mut s = BufferSizing::new(64 * 1024);
        assert_eq!(s.target(), FIRST_BYTES);
        let mut sizes = vec![];
        for _ in 0..6 {
            let room = s.target();
            s.used(room, room);
            sizes.push(s.target() / 1024);
        }
        assert_eq!(sizes, [8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn a_run_of_short_uses_shrinks_it_to_their_largest_and_one_busy_use_restarts_the_run() {
        let mut s = BufferSizing::new(64 * 1024);
        for _ in 0..4 {
            let room = s.target();
            s.used(room, room);
        }
        assert_eq!(s.target(), 64 * 1024);
        for _ in 0..SHORT_USES_TO_SHRINK - 1 {
            s.used(100, 64 * 1024);
        }
        // Between half and all of it: neither short nor full.
        s.used(40 * 1024, 64 * 1024);
        for _ in 0..SHORT_USES_TO_SHRINK - 1 {
            s.used(100, 64 * 1024);
        }
        assert_eq!(s.target(), 64 * 1024, "no run of short uses yet");
        s.used(9 * 1024, 64 * 1024);
        assert_eq!(
            s.target(),
            16 * 1024,
            "9 KiB, the largest of the run, fits in 16"
        );
        for _ in 0..SHORT_USES_TO_SHRINK {
            s.used(20, s.target());
        }
        assert_eq!(s.target(), FIRST_BYTES, "never below the first size");
        assert!(s.oversized(64 * 1024) && !s.oversized(FIRST_BYTES * 2));
    }

    #[test]
    fn a_use_larger_than_the_target_grows_it_to_fit_at_once() {
        let mut s = BufferSizing::new(256 * 1024);
        s.used(100 * 1024, 128 * 1024);
        assert_eq!(s.target(), 128 * 1024);
        s.used(1 << 20, 1 << 20);
        assert_eq!(s.target(), 256 * 1024, "never past the maximum");
    }

    #[test]
    fn filling_a_small_remainder_is_no_reason_to_grow() {
        let mut s = BufferSizing::new(64 * 1024);
        s.used(100, 100);
        assert_eq!(s.target(), FIRST_BYTES);
    }
}
