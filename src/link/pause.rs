//! Noticing this node's own pauses: the process stopped (SIGSTOP), its VM suspended, the
//! machine asleep, or its thread starved. Not an actor: each link's [`Liveness`](super::Liveness) and Membership
//! keep a [`PauseClock`] on their heartbeat timer.
//!
//! Why: while this node does not run, its peers' and applications' frames wait unread in the
//! socket buffers, and on waking the silence clocks would show the whole pause. Judged as is,
//! a node resumed after SIGSTOP closed its own healthy applications for a silence that was
//! its own. So a timer tick that comes more than one interval late measures the pause, and the
//! silence clocks are moved forward by it ([`excuse`]): what the peer is judged on is the time
//! this node was running, and the frames that arrived meanwhile are read before the peer could
//! have been silent for the failure timeout in that time.
//!
//! A node that is merely slow (its ticks late under load) excuses only the lateness beyond
//! one interval, so silence still grows by at least an interval per tick and a dead peer is
//! still detected, later.

use std::time::{Duration, Instant};

/// The time between ticks of one periodic timer, to tell a pause from a tick on time.
#[derive(Debug, Clone)]
pub struct PauseClock {
    interval: Duration,
    last: Instant,
}

impl PauseClock {
    /// A clock for a timer of `interval`, started now.
    pub fn new(interval: Duration) -> Self {
        PauseClock {
            interval,
            last: Instant::now(),
        }
    }

    /// Call at every tick: how long this node did not run since the previous tick (zero when
    /// the tick came less than one interval late).
    pub fn tick(&mut self) -> Duration {
        self.tick_at(Instant::now())
    }

    fn tick_at(&mut self, now: Instant) -> Duration {
        let late = now
            .saturating_duration_since(self.last)
            .saturating_sub(self.interval);
        self.last = now;
        if late > self.interval {
            late
        } else {
            Duration::ZERO
        }
    }
}

/// `since` (when something was last heard) moved forward by `pause`, no later than `now`:
/// the silence during this node's own pause is not the peer's.
pub fn excuse(since: Instant, pause: Duration, now: Instant) -> Instant {
    since.checked_add(pause).map_or(now, |t| t.min(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    #[test]
    fn ticks_on_time_or_a_little_late_are_no_pause() {
        let mut c = PauseClock::new(INTERVAL);
        let t0 = c.last;
        assert_eq!(c.tick_at(t0 + INTERVAL), Duration::ZERO);
        assert_eq!(c.tick_at(t0 + INTERVAL * 2 + INTERVAL / 2), Duration::ZERO);
        assert_eq!(c.tick_at(t0 + INTERVAL * 4 + INTERVAL / 2), Duration::ZERO);
    }

    #[test]
    fn a_tick_more_than_an_interval_late_measures_the_pause() {
        let mut c = PauseClock::new(INTERVAL);
        let t0 = c.last;
        let woke = t0 + Duration::from_secs(3);
        assert_eq!(c.tick_at(woke), Duration::from_secs(3) - INTERVAL);
        // The next tick, on time again, is no pause.
        assert_eq!(c.tick_at(woke + INTERVAL), Duration::ZERO);
    }

    #[test]
    fn an_excused_silence_leaves_only_the_time_the_node_was_running() {
        let now = Instant::now();
        let heard = now.checked_sub(Duration::from_millis(3050)).unwrap_or(now);
        let excused = excuse(heard, Duration::from_millis(2900), now);
        assert_eq!(now.duration_since(excused), Duration::from_millis(150));
        // Never later than now (a frame read after waking already reset the clock).
        assert_eq!(excuse(now, Duration::from_secs(5), now), now);
    }
}
