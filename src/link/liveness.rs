//! Liveness of one link, as plain state the owning session ticks every heartbeat interval:
//! any inbound frame is proof of life; a link silent for one interval is probed with a ping;
//! a link silent for the failure timeout is dead.
//!
//! Silence is counted only while this node runs: a tick that comes more than an interval late
//! means this node was paused (SIGSTOP, a suspended VM), and the pause is not the peer's
//! silence (see [`super::pause`]); what the peer sent meanwhile is read before it is judged.
//!
//! A ping goes out only on a link that received nothing during the last interval, so a link
//! carrying deltas or events carries no pings (a 64-node mesh would otherwise send 8064 pings
//! and pongs per interval on top of them).
//!
//! One side of an idle link pings; the other answers. The side that accepted a peer link
//! ticks half an interval after the dialler and pings only after 1.75 intervals of silence
//! ([`Liveness::answering`]): an idle dialler's pings arrive every other tick, so it pings
//! only when one is late, or when the link carries traffic one way only (a hub's ticks to a
//! worker). With both sides ticking at the same instant and pinging after one interval, both
//! pinged and both answered: twice the frames for the same proof of life.
//!
//! Ticks fall on whole multiples of the interval of the system clock ([`first_tick`]), as
//! Linux's `round_jiffies` rounds timers to whole seconds: a node's links all tick at once,
//! and nodes whose clocks agree ping each other at about the same instant, so an idle node
//! wakes a few times per interval instead of once or more per link (each wake-up is a context
//! switch, most of an idle cluster's CPU).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::pause::{self, PauseClock};

/// What a tick asks the session to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Heard from recently: nothing to do.
    Alive,
    /// Quiet for an interval: send `ping` with this number.
    Ping(u64),
    /// Silent for the failure timeout: close the link (`timeout`), after this long.
    Dead(Duration),
}

#[derive(Debug)]
pub struct Liveness {
    interval: Duration,
    /// Silence after which a tick pings.
    quiet_after: Duration,
    /// Where in each interval of the system clock this side ticks.
    phase: Duration,
    failure_timeout: Duration,
    last_inbound: Instant,
    pings_sent: u64,
    /// The highest ping number a pong answered.
    answered: u64,
    pause: PauseClock,
    /// The pause measured at the last tick, if any (for the session's log and bookkeeping).
    excused: Option<Duration>,
}

impl Liveness {
    /// Liveness of a link this side pings once it has been quiet for an interval.
    pub fn new(interval: Duration, failure_timeout: Duration) -> Self {
        Liveness::with(interval, interval, Duration::ZERO, failure_timeout)
    }

    /// Liveness of a link whose other side pings it (an accepted peer link): ticks half an
    /// interval after the other side and pings after `1.75 × interval` of silence (at most
    /// half the failure timeout, at least an interval). Half an interval of timer lateness
    /// separates that from the dialler's regular pings either way.
    pub fn answering(interval: Duration, failure_timeout: Duration) -> Self {
        let quiet_after = (interval * 7 / 4).min(failure_timeout / 2).max(interval);
        Liveness::with(interval, quiet_after, interval / 2, failure_timeout)
    }

    fn with(
        interval: Duration,
        quiet_after: Duration,
        phase: Duration,
        failure_timeout: Duration,
    ) -> Self {
        Liveness {
            interval,
            quiet_after,
            phase,
            failure_timeout,
            last_inbound: Instant::now(),
            pings_sent: 0,
            answered: 0,
            pause: PauseClock::new(interval),
            excused: None,
        }
    }

    /// When this link's timer should first tick (then every interval).
    pub fn first_tick(&self) -> tokio::time::Instant {
        first_tick(self.interval, self.phase)
    }

    /// When a frame last arrived (moved forward past this node's own pauses).
    pub fn last_inbound(&self) -> Instant {
        self.last_inbound
    }

    /// The pause of this node measured at the last tick, once.
    pub fn take_excused(&mut self) -> Option<Duration> {
        self.excused.take()
    }

    /// The number of a ping sent outside a quiet tick (a probe, see the session).
    pub fn next_ping(&mut self) -> u64 {
        self.pings_sent += 1;
        self.pings_sent
    }

    /// A pong answered ping `n` (a number never sent answers nothing).
    pub fn pong(&mut self, n: u64) {
        if n <= self.pings_sent {
            self.answered = self.answered.max(n);
        }
    }

    /// Whether ping `n` (or a later one) was answered.
    pub fn is_answered(&self, n: u64) -> bool {
        self.answered >= n
    }

    /// A frame arrived.
    pub fn heard(&mut self) {
        self.last_inbound = Instant::now();
    }

    /// Call every heartbeat interval.
    pub fn tick(&mut self) -> Tick {
        let paused = self.pause.tick();
        if !paused.is_zero() {
            self.last_inbound = pause::excuse(self.last_inbound, paused, Instant::now());
            self.excused = Some(paused);
        }
        let silent = self.last_inbound.elapsed();
        if silent > self.failure_timeout {
            return Tick::Dead(silent);
        }
        if silent < self.quiet_after {
            return Tick::Alive;
        }
        self.pings_sent += 1;
        Tick::Ping(self.pings_sent)
    }
}

/// When a timer ticking every `interval` should first tick: `phase` past the next whole
/// multiple of `interval` since the Unix epoch on the system clock (within one interval from
/// now), so that every timer of that period and phase, on this node and on nodes whose clocks
/// agree, ticks at the same instant. A clock set before 1970, or a zero interval, ticks one
/// interval from now.
fn first_tick(interval: Duration, phase: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let wait = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => until_phase(since, interval, phase),
        Err(_) => interval,
    };
    now + wait
}

/// From `since` to the next instant `phase` past a whole multiple of `interval`: in
/// `(0, interval]`. (Counted from `interval - phase` later, the multiples fall `phase` later.)
fn until_phase(since: Duration, interval: Duration, phase: Duration) -> Duration {
    until_multiple(since + interval.saturating_sub(phase), interval)
}

/// From `since` (a time since the epoch) to the next whole multiple of `interval`: in
/// `(0, interval]`, or zero for a zero interval.
fn until_multiple(since: Duration, interval: Duration) -> Duration {
    let period = interval.as_nanos();
    if period == 0 {
        return Duration::ZERO;
    }
    let into = since.as_nanos() % period;
    // `period - into` is at most `period`, which came from a Duration's nanoseconds.
    Duration::from_nanos(u64::try_from(period - into).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ticks_start_within_one_interval_on_a_whole_multiple_of_it() {
        let ms = Duration::from_millis;
        let second = Duration::from_secs(1);
        assert_eq!(until_multiple(ms(1_700_000_000_250), second), ms(750));
        assert_eq!(until_multiple(ms(1_700_000_000_999), second), ms(1));
        assert_eq!(
            until_multiple(ms(1_700_000_001_000), second),
            second,
            "on a multiple: the next one, a whole interval on"
        );
        assert_eq!(until_multiple(ms(1_000_100), ms(250)), ms(150));
        assert_eq!(until_multiple(ms(123), Duration::ZERO), Duration::ZERO);
        let wait = first_tick(ms(250), ms(100)) - tokio::time::Instant::now();
        assert!(wait <= ms(250), "{wait:?}");
    }

    #[test]
    fn a_phase_moves_the_ticks_that_far_past_each_multiple() {
        let ms = Duration::from_millis;
        let second = Duration::from_secs(1);
        let at = |t: u64, phase: u64| until_phase(ms(1_700_000_000_000 + t), second, ms(phase));
        assert_eq!(at(250, 500), ms(250), "to the half second");
        assert_eq!(at(750, 500), ms(750), "past it: the next one");
        assert_eq!(at(500, 500), second, "on it: a whole interval on");
        assert_eq!(at(250, 0), ms(750), "no phase: the whole second");
    }

    #[test]
    fn a_quiet_link_is_pinged_and_a_silent_one_is_dead() {
        let mut l = Liveness::new(Duration::ZERO, Duration::from_secs(3600));
        assert_eq!(l.tick(), Tick::Ping(1));
        assert_eq!(l.tick(), Tick::Ping(2));
        let mut l = Liveness::new(Duration::from_secs(3600), Duration::from_secs(7200));
        l.heard();
        assert_eq!(l.tick(), Tick::Alive);
        let mut l = Liveness::new(Duration::ZERO, Duration::ZERO);
        assert!(matches!(l.tick(), Tick::Dead(_)));
    }

    #[test]
    fn the_answering_side_ticks_half_an_interval_later_and_pings_when_a_ping_is_late() {
        let s = Duration::from_secs;
        let quiet = |l: Liveness| (l.quiet_after, l.phase);
        assert_eq!(quiet(Liveness::new(s(1), s(5))), (s(1), s(0)));
        let answering = Liveness::answering(s(2), s(10));
        assert_eq!(quiet(answering), (Duration::from_millis(3500), s(1)));
        let half = Liveness::answering(s(2), s(6));
        assert_eq!(quiet(half).0, s(3), "half the failure timeout");
        let least = Liveness::answering(s(2), s(2));
        assert_eq!(quiet(least).0, s(2), "an interval at least");
        let mut l = Liveness::answering(Duration::ZERO, s(3600));
        assert_eq!(
            l.tick(),
            Tick::Ping(1),
            "a zero interval pings at every tick"
        );
        let mut l = Liveness::answering(s(3600), s(7200));
        l.heard();
        assert_eq!(l.tick(), Tick::Alive);
    }

    #[test]
    fn only_a_pong_for_a_ping_sent_answers_it() {
        let mut l = Liveness::new(Duration::ZERO, Duration::from_secs(3600));
        assert_eq!(l.tick(), Tick::Ping(1));
        assert_eq!(l.next_ping(), 2, "probes and quiet ticks share the numbers");
        l.pong(9);
        assert!(
            !l.is_answered(1),
            "a pong for a ping never sent answers nothing"
        );
        l.pong(1);
        assert!(l.is_answered(1) && !l.is_answered(2));
        l.pong(2);
        assert!(l.is_answered(2));
    }
}
