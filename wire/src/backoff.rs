//! The retry policy both ends share: exponential backoff with an optional jitter.
//!
//! The device agent uses it between attempts to reach the broker (1 s doubling to 300 s,
//! [`Jitter::Equal`], reset on CONNACK); ingest uses it between attempts to reach the
//! database (100 ms doubling to 5 s, [`Jitter::None`], a fresh one per batch). The policy
//! lives here because `wire` is the one crate both depend on; it is plain arithmetic on
//! [`Duration`]s and does no waiting itself (each caller sleeps the way its runtime does).
//!
//! The ceiling starts at `initial` and doubles after every failure up to `max`. Without
//! jitter each delay is the ceiling. With [`Jitter::Equal`] each delay is drawn uniformly
//! between half the ceiling and the ceiling, so that a fleet cut off by the same outage
//! does not come back in one wave, and no delay is ever near zero.
//!
//! ```
//! use std::time::Duration;
//! use wire::backoff::{Backoff, Jitter};
//!
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
//! assert_eq!(backoff.next_delay(), Duration::from_millis(100));
//! assert_eq!(backoff.next_delay(), Duration::from_millis(200));
//!
//! let mut jittered = Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
//!     .with_jitter(Jitter::Equal);
//! let delay = jittered.next_delay();
//! assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1));
//! jittered.reset();
//! ```

use std::time::Duration;

/// How a delay is drawn below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Every delay is the ceiling itself.
    #[default]
    None,
    /// Uniform in `[ceiling / 2, ceiling]` ("equal jitter").
    Equal,
}

impl Jitter {
    /// The delay for `ceiling` given `unit`, a number in `[0, 1]` (clamped): the ceiling
    /// for [`Jitter::None`], `ceiling / 2 + unit * ceiling / 2` for [`Jitter::Equal`].
    pub fn apply(self, ceiling: Duration, unit: f64) -> Duration {
        match self {
            Self::None => ceiling,
            Self::Equal => {
                let half = ceiling / 2;
                // `ceiling - half` rather than `half`: an odd number of nanoseconds still
                // reaches the ceiling at unit = 1.
                half + (ceiling - half).mul_f64(unit.clamp(0.0, 1.0))
            }
        }
    }
}

/// Backoff state: the policy and the number of failures since the last success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    failures: u32,
}

impl Backoff {
    /// Backoff from `initial` doubling up to `max` (raised to `initial` if lower), without
    /// jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            jitter: Jitter::None,
            failures: 0,
        }
    }

    /// The same policy with `jitter`.
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// The ceiling for the current number of failures: `initial * 2^failures`, at most
    /// `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let unit = match self.jitter {
            Jitter::None => 1.0,
            Jitter::Equal => fastrand::f64(),
        };
        self.next_delay_with(unit)
    }

    /// [`next_delay`](Self::next_delay) with the random number given (`[0, 1]`): for
    /// tests, and for callers that bring their own randomness.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        self.jitter.apply(ceiling, unit)
    }

    /// An attempt succeeded: start again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn agent() -> Backoff {
        Backoff::new(SECOND, 300 * SECOND).with_jitter(Jitter::Equal)
    }

    /// The agent's backoff after `failures` failed attempts.
    fn agent_after(failures: usize) -> Backoff {
        let mut backoff = agent();
        for _ in 0..failures {
            backoff.next_delay();
        }
        backoff
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_stays_there() {
        let mut backoff = agent();
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn equal_jitter_stays_between_half_the_ceiling_and_the_ceiling() {
        let mut backoff = agent();
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        let ceiling = Duration::from_nanos(1_000_000_001);
        assert_eq!(Jitter::Equal.apply(ceiling, 0.0), ceiling / 2);
        assert_eq!(Jitter::Equal.apply(ceiling, 1.0), ceiling);
        assert_eq!(Jitter::Equal.apply(ceiling, 7.0), ceiling, "clamped");
        assert_eq!(Jitter::Equal.apply(ceiling, -1.0), ceiling / 2, "clamped");
    }

    #[test]
    fn equal_jitter_actually_varies() {
        let mut delays = std::collections::BTreeSet::new();
        for _ in 0..50 {
            delays.insert(agent_after(8).next_delay());
        }
        assert!(delays.len() > 1, "{delays:?}");
    }

    #[test]
    fn without_jitter_every_delay_is_the_ceiling() {
        // Ingest's database retries: 100 ms doubling to 5 s.
        let mut backoff = Backoff::new(Duration::from_millis(100), 5 * SECOND);
        let delays: Vec<u128> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(Jitter::None.apply(SECOND, 0.0), SECOND);
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let mut backoff = agent_after(5);
        assert_eq!(backoff.ceiling(), 32 * SECOND);
        backoff.reset();
        assert_eq!(backoff.ceiling(), SECOND);
        assert_eq!(backoff.next_delay_with(1.0), SECOND);
        assert_eq!(backoff.next_delay_with(0.0), SECOND);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        assert_eq!(agent_after(10_000).ceiling(), 300 * SECOND);
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        for _ in 0..64 {
            assert!(huge.next_delay() >= Duration::MAX / 2);
        }
    }

    #[test]
    fn a_max_below_initial_is_raised_to_initial() {
        let mut backoff = Backoff::new(10 * SECOND, SECOND);
        assert_eq!(backoff.next_delay(), 10 * SECOND);
        assert_eq!(backoff.next_delay(), 10 * SECOND);
    }
}
