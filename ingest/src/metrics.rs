//! Prometheus metrics. Labels are low-cardinality and fixed: topic kinds and reject reasons,
//! never a device or tenant id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `topic` label: `telemetry`, `patch`, `events`, `presence`, or `invalid`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic kind.
    pub topic: &'static str,
}

/// `reason` label: a stable reject reason (`malformed`, `oversize`, `wrong_topic`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Ingest's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) messages: Family<TopicLabel, Counter>,
    pub(crate) records_committed: Counter,
    pub(crate) records_duplicate: Counter,
    pub(crate) rejects: Family<ReasonLabel, Counter>,
    pub(crate) batch_seconds: Histogram,
    pub(crate) batch_records: Histogram,
    pub(crate) commit_lag_seconds: Histogram,
    pub(crate) commit_retries: Counter,
    pub(crate) acks_published: Counter,
    pub(crate) ack_failures: Counter,
    pub(crate) buffered_bytes: Gauge,
    pub(crate) retention_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            messages: Family::default(),
            records_committed: Counter::default(),
            records_duplicate: Counter::default(),
            rejects: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_lag_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            commit_retries: Counter::default(),
            acks_published: Counter::default(),
            ack_failures: Counter::default(),
            buffered_bytes: Gauge::default(),
            retention_deleted: Counter::default(),
        }
    }
}

impl Metrics {
    /// Creates ingest's metrics and registers them under `fleet_ingest_` in `registry` (the one
    /// fleetd serves at `/metrics`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("fleet_ingest");
        r.register(
            "messages",
            "MQTT messages received, by topic kind",
            metrics.messages.clone(),
        );
        r.register(
            "records_committed",
            "Records newly written to the ledger",
            metrics.records_committed.clone(),
        );
        r.register(
            "records_duplicate",
            "Records received again after they were handled (replays), not written",
            metrics.records_duplicate.clone(),
        );
        r.register(
            "rejects",
            "Messages or records refused, by reason",
            metrics.rejects.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "Time to write and commit one tenant batch",
            metrics.batch_seconds.clone(),
        );
        r.register(
            "batch_records",
            "Records per committed batch, as sent (duplicates and refused ones included)",
            metrics.batch_records.clone(),
        );
        r.register(
            "commit_lag_seconds",
            "From a message's arrival to the commit that handled it",
            metrics.commit_lag_seconds.clone(),
        );
        r.register(
            "commit_retries",
            "Batch commits retried after a database failure",
            metrics.commit_retries.clone(),
        );
        r.register(
            "acks_published",
            "Ack watermarks handed to the broker",
            metrics.acks_published.clone(),
        );
        r.register(
            "ack_failures",
            "Ack watermarks the broker did not take",
            metrics.ack_failures.clone(),
        );
        r.register(
            "buffered_bytes",
            "Payload bytes held by ingest (bounded by max_buffered_bytes)",
            metrics.buffered_bytes.clone(),
        );
        r.register(
            "retention_deleted_records",
            "Records deleted by the retention job",
            metrics.retention_deleted.clone(),
        );
        metrics
    }

    pub(crate) fn reject(&self, reason: &'static str, count: u64) {
        self.rejects
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count);
    }

    /// How many rejects with `reason` were counted (for tests and the benchmark).
    pub fn rejects_total(&self, reason: &'static str) -> u64 {
        self.rejects.get_or_create(&ReasonLabel { reason }).get()
    }

    /// Records newly committed so far.
    pub fn records_committed_total(&self) -> u64 {
        self.records_committed.get()
    }

    /// Replayed records recognised as already handled.
    pub fn records_duplicate_total(&self) -> u64 {
        self.records_duplicate.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_fleet_ingest_prefix_and_no_ids() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reject("malformed", 2);
        metrics
            .messages
            .get_or_create(&TopicLabel { topic: "telemetry" })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("fleet_ingest_rejects_total{reason=\"malformed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fleet_ingest_messages_total{topic=\"telemetry\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fleet_ingest_commit_lag_seconds_bucket"),
            "{text}"
        );
    }
}
