//! Ingest's tuning. Every field has a default that works on a laptop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How ingest batches, bounds memory and retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// A tenant's batch is committed when it holds this many records (messages count as at least
    /// one each). 500 to 1,000 rows per transaction is where batching stops paying here.
    pub batch_max_records: usize,
    /// ... or when its oldest message has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// Transactions committing at once (each holds one pooled connection). Each writer owns a
    /// fixed share of the devices (by id), so writers never wait on each other's row locks.
    pub writers: usize,
    /// Messages waiting in the input queue before senders wait.
    pub queue_capacity: usize,
    /// The memory bound: payload bytes held by ingest at once (queued, batched, committing or
    /// retrying). A sender waits when it is reached. Decoded records cost about three times
    /// their payload, so ingest's data stays within roughly 4x this figure.
    pub max_buffered_bytes: usize,
    /// Largest accepted message, in bytes; larger ones are refused as `oversize`. Keep it equal
    /// to the broker's maximum packet size.
    pub max_message_bytes: usize,
    /// How long a device -> tenant answer is reused. The tenant of a device never changes;
    /// revocation is checked in every batch transaction, so this does not delay it.
    #[serde(with = "humantime_serde")]
    pub directory_ttl: Duration,
    /// How long "no such device" is remembered (short: a device may be enrolled meanwhile).
    #[serde(with = "humantime_serde")]
    pub directory_negative_ttl: Duration,
    /// Most devices the directory cache remembers.
    pub directory_capacity: usize,
    /// Most disjoint handled ranges kept above a device's watermark; a record that would open
    /// one more is refused as `too_many_gaps` (not acknowledged, so the device sends it again).
    pub max_pending_ranges: usize,
    /// First wait before retrying a failed commit; doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between commit retries.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_max_records: 1000,
            batch_window: Duration::from_millis(10),
            writers: 4,
            queue_capacity: 4096,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_message_bytes: wire::limits::DEFAULT_MAX_MESSAGE_BYTES,
            directory_ttl: Duration::from_secs(300),
            directory_negative_ttl: Duration::from_secs(5),
            directory_capacity: 100_000,
            max_pending_ranges: 1024,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl IngestConfig {
    /// Refuses settings that cannot work, with a message naming the field.
    pub fn validate(&self) -> Result<(), crate::IngestError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(crate::IngestError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.batch_max_records == 0 {
            return invalid("batch_max_records", "must be at least 1");
        }
        if self.writers == 0 {
            return invalid("writers", "must be at least 1");
        }
        if self.queue_capacity == 0 {
            return invalid("queue_capacity", "must be at least 1");
        }
        if self.max_buffered_bytes < self.max_message_bytes {
            return invalid(
                "max_buffered_bytes",
                "must be at least max_message_bytes, or the largest message could never enter",
            );
        }
        if self.max_buffered_bytes > u32::MAX as usize {
            return invalid("max_buffered_bytes", "must be below 4 GiB");
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return invalid("retry_initial", "must be above zero and at most retry_max");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        IngestConfig::default().validate().unwrap();
    }

    #[test]
    fn impossible_settings_are_refused_by_name() {
        type BreakIt = fn(&mut IngestConfig);
        let cases: [(&str, BreakIt); 5] = [
            ("batch_max_records", |c| c.batch_max_records = 0),
            ("writers", |c| c.writers = 0),
            ("queue_capacity", |c| c.queue_capacity = 0),
            ("max_buffered_bytes", |c| c.max_buffered_bytes = 10),
            ("retry_initial", |c| c.retry_initial = Duration::ZERO),
        ];
        for (field, break_it) in cases {
            let mut config = IngestConfig::default();
            break_it(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
