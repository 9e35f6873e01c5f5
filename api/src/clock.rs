//! The API's clock: the system's, plus an offset that only tests move ([`Clock::advance`]), so
//! that session expiry is tested on a real fleetd without editing rows or waiting hours.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

/// Wall-clock time as the API decides with it (session idle and absolute expiry, sign-in
/// windows, invitation expiry). Cheap to clone; clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Seconds added to the system clock.
    offset_secs: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// Now.
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
            + time::Duration::seconds(self.offset_secs.load(Ordering::Relaxed))
    }

    /// Moves this clock (and its clones) forward by `by`. For tests: nothing in fleetd calls it.
    pub fn advance(&self, by: std::time::Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.offset_secs.fetch_add(secs, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::system();
        let clone = clock.clone();
        let before = clone.now();
        clock.advance(std::time::Duration::from_secs(3600));
        assert!(clone.now() - before >= time::Duration::seconds(3600));
    }
}
