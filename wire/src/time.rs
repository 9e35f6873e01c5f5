//! Device timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time as milliseconds since the Unix epoch (UTC), read from the
/// device's clock.
///
/// Milliseconds in a `u64` encode in 5 to 9 bytes of CBOR, need no second field,
/// and are what both Postgres and the agent's clock can represent without
/// surprise. Device clocks are not trusted: ingest stores this next to its own
/// receive time. A device that booted without a real-time clock may report times
/// near 1970 until it syncs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The Unix epoch itself.
    pub const EPOCH: Self = Self(0);

    /// The current time of this machine's clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a [`SystemTime`]; times before the epoch become the epoch and
    /// times past the year 584 million saturate.
    pub fn from_system_time(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl From<SystemTime> for UnixMillis {
    fn from(time: SystemTime) -> Self {
        Self::from_system_time(time)
    }
}
