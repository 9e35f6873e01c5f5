//! Device telemetry as the API shows it: named metrics, readable JSON views of a sample and of
//! an agent event, and bucketed aggregation for charts. Pure code, independent of HTTP.
//!
//! # Metric names
//!
//! [`metric_values`] flattens a [`wire::Telemetry`] sample into named numbers. The names are part
//! of the API (chart series and metric filters use them) and never change meaning. A metric of
//! one component (a disk, a thermal zone, an interface, a custom metric) carries the component's
//! name, as the device sent it, after a `:`; the part before the first `:` never contains one.
//!
//! | name                                              | unit                 | from the sample                  |
//! |---------------------------------------------------|----------------------|----------------------------------|
//! | `cpu_usage_percent`                               | percent, 0 to 100    | CPU busy time                    |
//! | `memory_total_bytes`                              | bytes                | memory, total                    |
//! | `memory_available_bytes`                          | bytes                | memory, available                |
//! | `memory_used_percent`                             | percent              | (total − available) / total      |
//! | `uptime_secs`                                     | seconds              | time since boot                  |
//! | `load_1`, `load_5`, `load_15`                     | run-queue length     | load averages                    |
//! | `disk_total_bytes:<mount>`                        | bytes                | size of the filesystem           |
//! | `disk_free_bytes:<mount>`                         | bytes                | free space                       |
//! | `disk_used_percent:<mount>`                       | percent              | (total − free) / total           |
//! | `temperature_celsius:<zone>`                      | degrees Celsius      | thermal zone                     |
//! | `net_rx_bytes:<iface>`, `net_tx_bytes:<iface>`    | bytes since boot     | interface counters               |
//! | `net_rx_packets:<iface>`, `net_tx_packets:<iface>`| packets since boot   | interface counters               |
//! | `net_rx_errors:<iface>`, `net_tx_errors:<iface>`  | errors since boot    | interface counters               |
//! | `custom:<name>`                                   | the application's    | custom metrics                   |
//!
//! Absent parts give no metric; nor do readings that are not finite numbers (NaN, infinities),
//! nor the used percentages of a total of zero. A used percentage is clamped at 0 when a device
//! reports more free than total. Byte counters become `f64`, exact up to 2⁵³ (8 PiB).
//!
//! # Aggregation
//!
//! An [`Aggregator`] folds samples, in any order, into per-metric [`BucketPoint`]s (count, min,
//! average, max) over a [`Window`]. Its memory is bounded whatever it is fed: at most
//! [`MAX_METRICS`] series of at most [`MAX_BUCKETS`] points each.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasher, RandomState};

use serde::Serialize;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

/// The most buckets one aggregation may have: more points than any chart is wide.
pub const MAX_BUCKETS: u64 = 1_000;

/// The most distinct metrics one aggregation keeps. Further metrics are counted in
/// [`Aggregation::dropped_metrics`] and otherwise ignored.
pub const MAX_METRICS: usize = 256;

/// The count in [`Aggregation::dropped_metrics`] stops here, so that counting distinct metrics
/// stays bounded in memory too.
pub const MAX_DROPPED_COUNTED: u64 = 16_384;

// --- metric names -----------------------------------------------------------------------------

/// The sample's metrics as `(name, value)` pairs, named as the [module documentation](self)
/// lists, in that order.
///
/// Each name appears at most once: if a device reports two disks (zones, interfaces) of the same
/// name, the first one counts. Non-finite readings are left out.
pub fn metric_values(t: &wire::Telemetry) -> Vec<(String, f64)> {
    let mut metrics = Metrics::default();
    metrics.push_system(t);
    for disk in first_of_each(&t.disks, |disk| &disk.mount) {
        metrics.push_disk(disk);
    }
    for zone in first_of_each(&t.temperatures, |zone| &zone.zone) {
        metrics.push(
            format!("temperature_celsius:{}", zone.zone),
            reading(zone.celsius),
        );
    }
    for interface in first_of_each(&t.network, |interface| &interface.name) {
        metrics.push_interface(interface);
    }
    for (name, value) in &t.custom {
        metrics.push(format!("custom:{name}"), finite(*value));
    }
    metrics.0
}

/// The metrics being collected from one sample.
#[derive(Default)]
struct Metrics(Vec<(String, f64)>);

impl Metrics {
    /// Adds a metric if it has a value.
    fn push(&mut self, name: String, value: Option<f64>) {
        if let Some(value) = value {
            self.0.push((name, value));
        }
    }

    /// CPU, memory, uptime and load.
    fn push_system(&mut self, t: &wire::Telemetry) {
        self.push(
            "cpu_usage_percent".into(),
            t.cpu_usage_percent.and_then(reading),
        );
        if let Some(memory) = &t.memory {
            self.push("memory_total_bytes".into(), Some(count(memory.total_bytes)));
            let available = count(memory.available_bytes);
            self.push("memory_available_bytes".into(), Some(available));
            let used = used_percent(memory.total_bytes, memory.available_bytes);
            self.push("memory_used_percent".into(), used);
        }
        self.push("uptime_secs".into(), t.uptime_secs.map(count));
        if let Some(load) = &t.load {
            self.push("load_1".into(), reading(load.one));
            self.push("load_5".into(), reading(load.five));
            self.push("load_15".into(), reading(load.fifteen));
        }
    }

    fn push_disk(&mut self, disk: &wire::Disk) {
        let mount = &disk.mount;
        self.push(
            format!("disk_free_bytes:{mount}"),
            Some(count(disk.free_bytes)),
        );
        self.push(
            format!("disk_total_bytes:{mount}"),
            Some(count(disk.total_bytes)),
        );
        let used = used_percent(disk.total_bytes, disk.free_bytes);
        self.push(format!("disk_used_percent:{mount}"), used);
    }

    fn push_interface(&mut self, interface: &wire::NetworkInterface) {
        let counters = [
            ("net_rx_bytes", interface.rx_bytes),
            ("net_tx_bytes", interface.tx_bytes),
            ("net_rx_packets", interface.rx_packets),
            ("net_tx_packets", interface.tx_packets),
            ("net_rx_errors", interface.rx_errors),
            ("net_tx_errors", interface.tx_errors),
        ];
        for (metric, value) in counters {
            self.push(format!("{metric}:{}", interface.name), Some(count(value)));
        }
    }
}

/// The items whose name has not appeared before, in order.
fn first_of_each<'a, T>(
    items: &'a [T],
    name: impl Fn(&'a T) -> &'a String,
) -> impl Iterator<Item = &'a T> {
    let mut seen = HashSet::new();
    items.iter().filter(move |item| seen.insert(name(*item)))
}

/// A device reading widened to `f64` through its shortest decimal form, so that 48.3 °C stays
/// 48.3 rather than becoming 48.29999923706055; `None` if it is not a finite number.
fn reading(value: f32) -> Option<f64> {
    value
        .is_finite()
        .then(|| value.to_string().parse().unwrap_or(f64::from(value)))
}

/// The value if it is a finite number.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// A counter as a metric value (exact up to 2⁵³).
fn count(value: u64) -> f64 {
    value as f64
}

/// The used share of `total` in percent, `None` for a total of zero, 0 if `free` exceeds `total`.
fn used_percent(total: u64, free: u64) -> Option<f64> {
    (total > 0).then(|| count(total.saturating_sub(free)) / count(total) * 100.0)
}

// --- JSON views -------------------------------------------------------------------------------

/// One telemetry sample with readable field names (on the wire they are one or two letters).
///
/// Absent parts are `null` or empty. Readings are widened to `f64` as [`metric_values`] widens
/// them (48.3 stays 48.3). JSON cannot write NaN or infinities, so a reading that is not a
/// finite number is shown as absent: `cpu_usage_percent` becomes `null`, and so does `load` if
/// any of its averages is one; such a thermal zone or custom metric is left out.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TelemetrySample {
    /// CPU busy time over the last sampling interval, 0 to 100, averaged over all cores.
    pub cpu_usage_percent: Option<f64>,
    /// Physical memory.
    pub memory: Option<MemoryView>,
    /// One entry per mounted filesystem the device reports.
    pub disks: Vec<DiskView>,
    /// One entry per thermal zone.
    pub temperatures: Vec<TemperatureView>,
    /// Seconds since boot.
    pub uptime_secs: Option<u64>,
    /// Run-queue load averages.
    pub load: Option<LoadAverageView>,
    /// One entry per network interface; counters are cumulative since boot.
    pub network: Vec<NetworkInterfaceView>,
    /// Application-defined metrics by name.
    pub custom: BTreeMap<String, f64>,
}

/// Physical memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct MemoryView {
    /// Installed memory usable by the kernel.
    pub total_bytes: u64,
    /// Memory available for new work without swapping.
    pub available_bytes: u64,
}

/// Space on one mounted filesystem, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DiskView {
    /// Mount point, such as `/` or `/data`.
    pub mount: String,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Space still free.
    pub free_bytes: u64,
}

/// The temperature of one thermal zone.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TemperatureView {
    /// Zone name, as the kernel types it (`cpu-thermal`, `x86_pkg_temp`).
    pub zone: String,
    /// Degrees Celsius.
    pub celsius: f64,
}

/// Run-queue load averages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct LoadAverageView {
    /// Over the last minute.
    pub one_minute: f64,
    /// Over the last five minutes.
    pub five_minutes: f64,
    /// Over the last fifteen minutes.
    pub fifteen_minutes: f64,
}

/// Counters of one network interface, cumulative since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NetworkInterfaceView {
    /// Interface name, such as `eth0`.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

impl From<&wire::Telemetry> for TelemetrySample {
    fn from(t: &wire::Telemetry) -> Self {
        Self {
            cpu_usage_percent: t.cpu_usage_percent.and_then(reading),
            memory: t.memory.map(|memory| MemoryView {
                total_bytes: memory.total_bytes,
                available_bytes: memory.available_bytes,
            }),
            disks: t.disks.iter().map(DiskView::from).collect(),
            temperatures: t
                .temperatures
                .iter()
                .filter_map(TemperatureView::finite)
                .collect(),
            uptime_secs: t.uptime_secs,
            load: t.load.and_then(LoadAverageView::finite),
            network: t.network.iter().map(NetworkInterfaceView::from).collect(),
            custom: t
                .custom
                .iter()
                .filter(|(_, value)| value.is_finite())
                .map(|(name, value)| (name.clone(), *value))
                .collect(),
        }
    }
}

impl From<&wire::Disk> for DiskView {
    fn from(disk: &wire::Disk) -> Self {
        Self {
            mount: disk.mount.clone(),
            total_bytes: disk.total_bytes,
            free_bytes: disk.free_bytes,
        }
    }
}

impl TemperatureView {
    /// The view of `zone`, or `None` if its reading is not a finite number.
    fn finite(zone: &wire::Temperature) -> Option<Self> {
        Some(Self {
            zone: zone.zone.clone(),
            celsius: reading(zone.celsius)?,
        })
    }
}

impl LoadAverageView {
    /// The view of `load`, or `None` if any average is not a finite number.
    fn finite(load: wire::LoadAverage) -> Option<Self> {
        Some(Self {
            one_minute: reading(load.one)?,
            five_minutes: reading(load.five)?,
            fifteen_minutes: reading(load.fifteen)?,
        })
    }
}

impl From<&wire::NetworkInterface> for NetworkInterfaceView {
    fn from(interface: &wire::NetworkInterface) -> Self {
        Self {
            name: interface.name.clone(),
            rx_bytes: interface.rx_bytes,
            tx_bytes: interface.tx_bytes,
            rx_packets: interface.rx_packets,
            tx_packets: interface.tx_packets,
            rx_errors: interface.rx_errors,
            tx_errors: interface.tx_errors,
        }
    }
}

/// An agent event as JSON: an object whose `kind` says which event it is (the same names as on
/// the wire), with that event's fields beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEventView {
    /// The agent started.
    Started {
        /// The agent's version, such as `0.3.1`.
        agent_version: String,
    },
    /// The agent's outbox was full and it dropped records `first_seq..=last_seq` (they will never
    /// arrive).
    OutboxOverflow {
        /// How many records were dropped.
        dropped: u64,
        /// The lowest dropped sequence number.
        first_seq: u64,
        /// The highest dropped sequence number.
        last_seq: u64,
    },
    /// The agent renewed its device certificate.
    CertificateRenewed {
        /// The expiry of the new certificate, by the device's clock (clamped to the year 9999).
        #[serde(with = "time::serde::rfc3339")]
        not_after: OffsetDateTime,
    },
    /// A metric or inventory collector failed.
    CollectorError {
        /// Which collector, such as `thermal` or `apt`.
        collector: String,
        /// What went wrong, as the agent wrote it.
        message: String,
    },
    /// The agent started a new sequence space: the server had acknowledged sequence numbers
    /// its outbox never assigned, or held other records under numbers it used (its outbox was
    /// restored from an older copy, or something else published with its identity). Records of
    /// the new epoch are stored as new records, never taken for duplicates of the old epoch's.
    EpochStarted {
        /// The epoch left behind, as a decimal string (a 64-bit id).
        previous_epoch: String,
        /// The new epoch, as a decimal string.
        epoch: String,
        /// The first sequence number of the new epoch.
        first_seq: u64,
        /// The watermark the server had acknowledged in the previous epoch.
        server_watermark: u64,
        /// The last sequence number the agent had assigned then.
        last_appended: u64,
    },
    /// An event kind this server does not know yet (from a newer agent).
    Other {
        /// The kind as the agent named it.
        wire_kind: String,
    },
}

impl From<&wire::AgentEvent> for AgentEventView {
    fn from(event: &wire::AgentEvent) -> Self {
        use wire::AgentEvent as E;
        match event {
            E::Started(started) => Self::Started {
                agent_version: started.agent_version.clone(),
            },
            E::OutboxOverflow(lost) => Self::OutboxOverflow {
                dropped: lost.dropped,
                first_seq: lost.first_seq,
                last_seq: lost.last_seq,
            },
            E::CertificateRenewed(renewed) => Self::CertificateRenewed {
                not_after: device_time(renewed.not_after),
            },
            E::CollectorError(error) => Self::CollectorError {
                collector: error.collector.clone(),
                message: error.message.clone(),
            },
            E::EpochStarted(started) => Self::EpochStarted {
                previous_epoch: started.previous.to_string(),
                epoch: started.epoch.to_string(),
                first_seq: started.first_seq,
                server_watermark: started.server_watermark,
                last_appended: started.last_appended,
            },
            E::Other { kind } => Self::Other {
                wire_kind: kind.clone(),
            },
        }
    }
}

/// A device timestamp, clamped to the end of the year 9999 (the most RFC 3339 can write), as
/// ingest clamps `recorded_at`.
fn device_time(at: wire::UnixMillis) -> OffsetDateTime {
    /// 9999-12-31T23:59:59.999Z.
    const LATEST_MILLIS: u64 = 253_402_300_799_999;
    let nanos = i128::from(at.as_millis().min(LATEST_MILLIS)) * 1_000_000;
    // In range after the clamp; the fallback is never taken.
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

// --- aggregation ------------------------------------------------------------------------------

/// Why an aggregation was refused before it started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// `from` is not before `to`.
    #[error("the window is empty: `from` must be before `to`")]
    EmptyWindow,
    /// The bucket width is zero or negative.
    #[error("the bucket width must be positive")]
    NonPositiveBucket,
    /// The window divides into more than [`MAX_BUCKETS`] buckets.
    #[error("the window holds {buckets} buckets, the maximum is {max}")]
    TooManyBuckets {
        /// How many buckets the window would hold.
        buckets: u128,
        /// [`MAX_BUCKETS`].
        max: u64,
    },
    /// The metric filter names more than [`MAX_METRICS`] metrics.
    #[error("the filter names {names} metrics, the maximum is {max}")]
    TooManyMetrics {
        /// How many names the filter holds.
        names: usize,
        /// [`MAX_METRICS`].
        max: usize,
    },
}

/// The time range `[from, to)` of an aggregation, cut into buckets of one width starting at
/// `from`; the last bucket ends at `to` and may be shorter.
///
/// Checked on creation, so a handler can refuse a bad query before reading any data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: OffsetDateTime,
    to: OffsetDateTime,
    bucket: Duration,
    bucket_nanos: i128,
    buckets: u32,
}

impl Window {
    /// The window `[from, to)` in buckets of `bucket`. Refused if it is empty, if `bucket` is
    /// not positive, or if it needs more than [`MAX_BUCKETS`] buckets (a partial last bucket
    /// counts).
    pub fn new(
        from: OffsetDateTime,
        to: OffsetDateTime,
        bucket: Duration,
    ) -> Result<Self, AggregateError> {
        if from >= to {
            return Err(AggregateError::EmptyWindow);
        }
        let bucket_nanos = bucket.whole_nanoseconds();
        if bucket_nanos <= 0 {
            return Err(AggregateError::NonPositiveBucket);
        }
        let buckets = bucket_count((to - from).whole_nanoseconds(), bucket_nanos);
        let too_many = AggregateError::TooManyBuckets {
            buckets,
            max: MAX_BUCKETS,
        };
        if buckets > u128::from(MAX_BUCKETS) {
            return Err(too_many);
        }
        Ok(Self {
            from,
            to,
            bucket,
            bucket_nanos,
            buckets: u32::try_from(buckets).map_err(|_| too_many)?,
        })
    }

    /// The start of the window (inclusive).
    pub fn from(&self) -> OffsetDateTime {
        self.from
    }

    /// The end of the window (exclusive).
    pub fn to(&self) -> OffsetDateTime {
        self.to
    }

    /// The width of a bucket.
    pub fn bucket(&self) -> Duration {
        self.bucket
    }

    /// How many buckets the window holds.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The bucket `at` falls in, if it is inside the window.
    fn index_of(&self, at: OffsetDateTime) -> Option<u32> {
        if at < self.from || at >= self.to {
            return None;
        }
        let index = (at - self.from).whole_nanoseconds() / self.bucket_nanos;
        u32::try_from(index).ok()
    }

    /// The start of bucket `index`.
    fn start_of(&self, index: u32) -> OffsetDateTime {
        // index < buckets, so the start lies in [from, to): neither step overflows, and the
        // fallback is never taken.
        i32::try_from(index)
            .ok()
            .and_then(|index| self.bucket.checked_mul(index))
            .and_then(|offset| self.from.checked_add(offset))
            .unwrap_or(self.to)
    }
}

/// How many buckets of `bucket` nanoseconds cover `span` nanoseconds (both positive).
fn bucket_count(span: i128, bucket: i128) -> u128 {
    span.unsigned_abs().div_ceil(bucket.unsigned_abs())
}

/// The result of an aggregation: one series per metric, by metric name.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Aggregation {
    /// The series, sorted by metric name; a metric without data in the window has none.
    pub series: Vec<MetricSeries>,
    /// How many distinct metrics were left out because [`MAX_METRICS`] were already kept (the
    /// count stops at [`MAX_DROPPED_COUNTED`]). Name metrics explicitly to choose which appear.
    pub dropped_metrics: u64,
}

/// The points of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MetricSeries {
    /// The metric's name, as [`metric_values`] names it.
    pub metric: String,
    /// One point per bucket that holds data, in time order.
    pub points: Vec<BucketPoint>,
}

/// The values of one metric within one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct BucketPoint {
    /// The start of the bucket (inclusive); it ends one bucket width later, or at the end of the
    /// window.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// How many values fell in the bucket.
    pub count: u64,
    /// The smallest value.
    pub min: f64,
    /// The mean of the values.
    pub avg: f64,
    /// The largest value.
    pub max: f64,
}

/// Folds telemetry samples into per-metric, per-bucket statistics for charts.
///
/// Samples may come in any order; those outside the window are ignored. At most
/// [`MAX_METRICS`] metrics are kept: the first ones met, in the order samples arrive and
/// [`metric_values`] names them. Memory stays within [`MAX_METRICS`] × [`MAX_BUCKETS`] points.
#[derive(Debug)]
pub struct Aggregator {
    window: Window,
    filter: Option<BTreeSet<String>>,
    series: BTreeMap<String, BTreeMap<u32, Stats>>,
    dropped: HashSet<u64>,
    dropped_hasher: RandomState,
}

impl Aggregator {
    /// An aggregator over `window`, of the metrics named in `metrics`, or of every metric if
    /// `None`. Refuses a filter of more than [`MAX_METRICS`] names, which no result could hold.
    pub fn new(window: Window, metrics: Option<BTreeSet<String>>) -> Result<Self, AggregateError> {
        if let Some(names) = &metrics {
            if names.len() > MAX_METRICS {
                return Err(AggregateError::TooManyMetrics {
                    names: names.len(),
                    max: MAX_METRICS,
                });
            }
        }
        Ok(Self {
            window,
            filter: metrics,
            series: BTreeMap::new(),
            dropped: HashSet::new(),
            dropped_hasher: RandomState::new(),
        })
    }

    /// The window it aggregates over.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Adds one sample, recorded at `recorded_at`. Ignored if outside the window.
    pub fn add(&mut self, recorded_at: OffsetDateTime, sample: &wire::Telemetry) {
        let Some(index) = self.window.index_of(recorded_at) else {
            return;
        };
        for (metric, value) in metric_values(sample) {
            if self.wants(&metric) {
                self.record(metric, index, value);
            }
        }
    }

    /// The series collected so far.
    pub fn finish(self) -> Aggregation {
        let window = self.window;
        let series = self
            .series
            .into_iter()
            .map(|(metric, buckets)| MetricSeries {
                metric,
                points: buckets
                    .into_iter()
                    .map(|(index, stats)| stats.point(window.start_of(index)))
                    .collect(),
            })
            .collect();
        Aggregation {
            series,
            dropped_metrics: self.dropped.len() as u64,
        }
    }

    fn wants(&self, metric: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|names| names.contains(metric))
    }

    fn record(&mut self, metric: String, index: u32, value: f64) {
        if let Some(buckets) = self.series.get_mut(&metric) {
            buckets
                .entry(index)
                .and_modify(|stats| stats.add(value))
                .or_insert_with(|| Stats::new(value));
        } else if self.series.len() < MAX_METRICS {
            let buckets = BTreeMap::from([(index, Stats::new(value))]);
            self.series.insert(metric, buckets);
        } else if (self.dropped.len() as u64) < MAX_DROPPED_COUNTED {
            // A hash, not the name: counting must not keep what it refused to keep. The key is
            // random per aggregator, so a device cannot make its names collide.
            self.dropped.insert(self.dropped_hasher.hash_one(&metric));
        }
    }
}

/// Count, min, max and mean of the values in one bucket.
#[derive(Debug, Clone, Copy)]
struct Stats {
    count: u64,
    min: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn new(value: f64) -> Self {
        Self {
            count: 1,
            min: value,
            max: value,
            mean: value,
        }
    }

    fn add(&mut self, value: f64) {
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        // A running mean rather than a sum: a sum of values near f64::MAX would overflow to
        // infinity, which JSON cannot write. Each term is at most |value| or |mean|, and the
        // clamp absorbs rounding at the extremes.
        let n = self.count as f64;
        self.mean = (self.mean + (value / n - self.mean / n)).clamp(self.min, self.max);
    }

    fn point(self, start: OffsetDateTime) -> BucketPoint {
        BucketPoint {
            start,
            count: self.count,
            min: self.min,
            avg: self.mean,
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;
    use wire::{
        CertificateRenewed, CollectorError, Disk, LoadAverage, Memory, NetworkInterface,
        OutboxOverflow, Started, Telemetry, Temperature, UnixMillis,
    };

    /// A sample with every part filled.
    fn full() -> Telemetry {
        Telemetry {
            cpu_usage_percent: Some(12.5),
            memory: Some(Memory {
                total_bytes: 4 << 30,
                available_bytes: 3 << 30,
            }),
            disks: vec![Disk {
                mount: "/".into(),
                total_bytes: 200,
                free_bytes: 50,
            }],
            temperatures: vec![Temperature {
                zone: "cpu-thermal".into(),
                celsius: 48.3,
            }],
            uptime_secs: Some(86_400),
            load: Some(LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.1,
            }),
            network: vec![NetworkInterface {
                name: "eth0".into(),
                rx_bytes: 1,
                tx_bytes: 2,
                rx_packets: 3,
                tx_packets: 4,
                rx_errors: 5,
                tx_errors: 6,
            }],
            custom: BTreeMap::from([("queue_depth".to_owned(), 7.0)]),
        }
    }

    fn with_cpu(cpu: f32) -> Telemetry {
        Telemetry {
            cpu_usage_percent: Some(cpu),
            ..Telemetry::default()
        }
    }

    fn named(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect()
    }

    fn names(t: &Telemetry) -> Vec<String> {
        metric_values(t).into_iter().map(|(name, _)| name).collect()
    }

    /// 2024-01-01T00:00:00Z plus `secs`.
    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_704_067_200 + secs).unwrap()
    }

    fn window(from: i64, to: i64, bucket_secs: i64) -> Window {
        Window::new(at(from), at(to), Duration::seconds(bucket_secs)).unwrap()
    }

    fn aggregate(window: Window, samples: &[(OffsetDateTime, Telemetry)]) -> Aggregation {
        let mut aggregator = Aggregator::new(window, None).unwrap();
        for (recorded_at, sample) in samples {
            aggregator.add(*recorded_at, sample);
        }
        aggregator.finish()
    }

    fn point(start: OffsetDateTime, values: (u64, f64, f64, f64)) -> BucketPoint {
        let (count, min, avg, max) = values;
        BucketPoint {
            start,
            count,
            min,
            avg,
            max,
        }
    }

    // --- metric names -----------------------------------------------------------------------

    #[test]
    fn every_wire_field_has_its_documented_name_in_order() {
        let expected = named(&[
            ("cpu_usage_percent", 12.5),
            ("memory_total_bytes", (4u64 << 30) as f64),
            ("memory_available_bytes", (3u64 << 30) as f64),
            ("memory_used_percent", 25.0),
            ("uptime_secs", 86_400.0),
            ("load_1", 0.5),
            ("load_5", 0.25),
            ("load_15", 0.1),
            ("disk_free_bytes:/", 50.0),
            ("disk_total_bytes:/", 200.0),
            ("disk_used_percent:/", 75.0),
            ("temperature_celsius:cpu-thermal", 48.3),
            ("net_rx_bytes:eth0", 1.0),
            ("net_tx_bytes:eth0", 2.0),
            ("net_rx_packets:eth0", 3.0),
            ("net_tx_packets:eth0", 4.0),
            ("net_rx_errors:eth0", 5.0),
            ("net_tx_errors:eth0", 6.0),
            ("custom:queue_depth", 7.0),
        ]);
        assert_eq!(metric_values(&full()), expected);
    }

    #[test]
    fn an_empty_sample_has_no_metrics() {
        assert!(metric_values(&Telemetry::default()).is_empty());
    }

    #[test]
    fn device_readings_keep_their_decimal_value() {
        // 48.3f32 as f64 is 48.29999923706055; a chart should say 48.3.
        let values = metric_values(&full());
        assert!(values.contains(&("temperature_celsius:cpu-thermal".into(), 48.3)));
        assert!(values.contains(&("load_15".into(), 0.1)));
    }

    #[test]
    fn non_finite_readings_are_left_out() {
        let mut t = full();
        t.cpu_usage_percent = Some(f32::NAN);
        t.load = Some(LoadAverage {
            one: f32::INFINITY,
            five: 1.0,
            fifteen: f32::NEG_INFINITY,
        });
        t.temperatures[0].celsius = f32::NAN;
        t.custom.insert("nan".into(), f64::NAN);
        t.custom.insert("inf".into(), f64::INFINITY);
        let names = names(&t);
        for gone in [
            "cpu_usage_percent",
            "load_1",
            "load_15",
            "temperature_celsius:cpu-thermal",
            "custom:nan",
            "custom:inf",
        ] {
            assert!(!names.iter().any(|name| name == gone), "{gone} kept");
        }
        assert!(names.iter().any(|name| name == "load_5"));
        assert!(names.iter().any(|name| name == "custom:queue_depth"));
        assert!(metric_values(&t).iter().all(|(_, value)| value.is_finite()));
    }

    #[test]
    fn used_percentages_need_a_total_and_never_go_negative() {
        let t = Telemetry {
            memory: Some(Memory {
                total_bytes: 0,
                available_bytes: 0,
            }),
            disks: vec![
                Disk {
                    mount: "/empty".into(),
                    total_bytes: 0,
                    free_bytes: 0,
                },
                Disk {
                    mount: "/odd".into(),
                    total_bytes: 10,
                    free_bytes: 20,
                },
            ],
            ..Telemetry::default()
        };
        let expected = named(&[
            ("memory_total_bytes", 0.0),
            ("memory_available_bytes", 0.0),
            ("disk_free_bytes:/empty", 0.0),
            ("disk_total_bytes:/empty", 0.0),
            ("disk_free_bytes:/odd", 20.0),
            ("disk_total_bytes:/odd", 10.0),
            ("disk_used_percent:/odd", 0.0),
        ]);
        assert_eq!(metric_values(&t), expected);
    }

    #[test]
    fn a_repeated_component_name_counts_once_the_first() {
        let mut t = full();
        t.disks.push(Disk {
            mount: "/".into(),
            total_bytes: 1,
            free_bytes: 1,
        });
        t.temperatures.push(Temperature {
            zone: "cpu-thermal".into(),
            celsius: 99.0,
        });
        let mut second = t.network[0].clone();
        second.rx_bytes = 1000;
        t.network.push(second);
        assert_eq!(metric_values(&t), metric_values(&full()));
    }

    #[test]
    fn component_names_follow_the_first_colon() {
        let t = Telemetry {
            disks: vec![Disk {
                mount: "/mnt/a:b".into(),
                total_bytes: 1,
                free_bytes: 1,
            }],
            custom: BTreeMap::from([("a:b".to_owned(), 1.0)]),
            ..Telemetry::default()
        };
        for name in names(&t) {
            let (metric, component) = name.split_once(':').unwrap();
            assert!(!metric.is_empty());
            assert!(component == "/mnt/a:b" || component == "a:b", "{name}");
        }
    }

    #[test]
    fn large_counters_become_the_nearest_f64() {
        let t = Telemetry {
            uptime_secs: Some(u64::MAX),
            ..Telemetry::default()
        };
        assert_eq!(metric_values(&t), named(&[("uptime_secs", 2f64.powi(64))]));
    }

    // --- JSON views ---------------------------------------------------------------------------

    #[test]
    fn a_sample_has_readable_field_names() {
        let json = serde_json::to_value(TelemetrySample::from(&full())).unwrap();
        let expected = json!({
            "cpu_usage_percent": 12.5,
            "memory": { "total_bytes": 4u64 << 30, "available_bytes": 3u64 << 30 },
            "disks": [{ "mount": "/", "total_bytes": 200, "free_bytes": 50 }],
            "temperatures": [{ "zone": "cpu-thermal", "celsius": 48.3 }],
            "uptime_secs": 86_400,
            "load": { "one_minute": 0.5, "five_minutes": 0.25, "fifteen_minutes": 0.1 },
            "network": [{
                "name": "eth0",
                "rx_bytes": 1, "tx_bytes": 2,
                "rx_packets": 3, "tx_packets": 4,
                "rx_errors": 5, "tx_errors": 6,
            }],
            "custom": { "queue_depth": 7.0 },
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn an_empty_sample_has_nulls_and_empty_lists() {
        let json = serde_json::to_value(TelemetrySample::from(&Telemetry::default())).unwrap();
        let expected = json!({
            "cpu_usage_percent": null,
            "memory": null,
            "disks": [],
            "temperatures": [],
            "uptime_secs": null,
            "load": null,
            "network": [],
            "custom": {},
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn non_finite_readings_are_absent_from_the_sample_view() {
        let mut t = full();
        t.cpu_usage_percent = Some(f32::NAN);
        t.load = Some(LoadAverage {
            one: 1.0,
            five: f32::INFINITY,
            fifteen: 1.0,
        });
        t.temperatures.push(Temperature {
            zone: "broken".into(),
            celsius: f32::NAN,
        });
        t.custom.insert("nan".into(), f64::NAN);
        let sample = TelemetrySample::from(&t);
        assert_eq!(sample.cpu_usage_percent, None);
        assert_eq!(sample.load, None);
        assert_eq!(sample.temperatures.len(), 1);
        assert_eq!(sample.custom.len(), 1);
    }

    #[test]
    fn every_agent_event_has_a_kind_and_its_fields() {
        let cases = [
            (
                wire::AgentEvent::Started(Started {
                    agent_version: "0.3.1".into(),
                }),
                json!({ "kind": "started", "agent_version": "0.3.1" }),
            ),
            (
                wire::AgentEvent::OutboxOverflow(OutboxOverflow {
                    dropped: 3,
                    first_seq: 10,
                    last_seq: 12,
                }),
                json!({ "kind": "outbox_overflow", "dropped": 3, "first_seq": 10, "last_seq": 12 }),
            ),
            (
                wire::AgentEvent::CertificateRenewed(CertificateRenewed {
                    not_after: UnixMillis(1_704_067_200_123),
                }),
                json!({ "kind": "certificate_renewed", "not_after": "2024-01-01T00:00:00.123Z" }),
            ),
            (
                wire::AgentEvent::CollectorError(CollectorError {
                    collector: "thermal".into(),
                    message: "no zones".into(),
                }),
                json!({ "kind": "collector_error", "collector": "thermal", "message": "no zones" }),
            ),
            (
                wire::AgentEvent::EpochStarted(wire::EpochStarted {
                    previous: 0,
                    epoch: u64::MAX,
                    first_seq: 4,
                    server_watermark: 11,
                    last_appended: 6,
                }),
                json!({
                    "kind": "epoch_started", "previous_epoch": "0",
                    "epoch": "18446744073709551615", "first_seq": 4,
                    "server_watermark": 11, "last_appended": 6,
                }),
            ),
            (
                wire::AgentEvent::Other {
                    kind: "firmware_flashed".into(),
                },
                json!({ "kind": "other", "wire_kind": "firmware_flashed" }),
            ),
        ];
        for (event, expected) in cases {
            let view = AgentEventView::from(&event);
            assert_eq!(serde_json::to_value(&view).unwrap(), expected);
            // The view's kinds are wire's kinds, except for the unknown ones.
            if !matches!(event, wire::AgentEvent::Other { .. }) {
                assert_eq!(expected["kind"], event.kind());
            }
        }
    }

    #[test]
    fn a_far_future_certificate_expiry_is_clamped_to_the_year_9999() {
        let event = wire::AgentEvent::CertificateRenewed(CertificateRenewed {
            not_after: UnixMillis(u64::MAX),
        });
        let json = serde_json::to_value(AgentEventView::from(&event)).unwrap();
        assert_eq!(json["not_after"], "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_views_have_openapi_schemas() {
        let schema = |schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>| {
            serde_json::to_value(schema).unwrap()
        };
        let sample = schema(<TelemetrySample as utoipa::PartialSchema>::schema());
        assert!(
            sample["properties"]["cpu_usage_percent"].is_object(),
            "{sample}"
        );
        let point = schema(<BucketPoint as utoipa::PartialSchema>::schema());
        assert_eq!(
            point["properties"]["start"]["format"], "date-time",
            "{point}"
        );
        let event = schema(<AgentEventView as utoipa::PartialSchema>::schema());
        assert!(
            event["oneOf"]
                .as_array()
                .is_some_and(|kinds| kinds.len() == 6),
            "{event}"
        );
    }

    // --- windows ------------------------------------------------------------------------------

    #[test]
    fn an_empty_or_reversed_window_is_refused() {
        let minute = Duration::minutes(1);
        assert_eq!(
            Window::new(at(0), at(0), minute),
            Err(AggregateError::EmptyWindow)
        );
        assert_eq!(
            Window::new(at(60), at(0), minute),
            Err(AggregateError::EmptyWindow)
        );
    }

    #[test]
    fn a_bucket_must_be_positive() {
        for bucket in [Duration::ZERO, Duration::seconds(-60), Duration::MIN] {
            assert_eq!(
                Window::new(at(0), at(60), bucket),
                Err(AggregateError::NonPositiveBucket)
            );
        }
    }

    #[test]
    fn at_most_max_buckets_counting_a_partial_last_one() {
        assert_eq!(window(0, 1_000, 1).buckets(), 1_000);
        assert_eq!(
            Window::new(at(0), at(1_001), Duration::seconds(1)),
            Err(AggregateError::TooManyBuckets {
                buckets: 1_001,
                max: MAX_BUCKETS
            })
        );
        // 999.5 buckets of 2 s: the partial one makes 1,000.
        assert_eq!(window(0, 1_999, 2).buckets(), 1_000);
        assert!(matches!(
            Window::new(at(0), at(2_001), Duration::seconds(2)),
            Err(AggregateError::TooManyBuckets { buckets: 1_001, .. })
        ));
        assert_eq!(window(0, 10, 60).buckets(), 1);
    }

    #[test]
    fn a_huge_window_in_nanosecond_buckets_is_refused_without_overflow() {
        let from = OffsetDateTime::from_unix_timestamp(-62_000_000_000).unwrap();
        let to = OffsetDateTime::from_unix_timestamp(253_000_000_000).unwrap();
        assert!(matches!(
            Window::new(from, to, Duration::NANOSECOND),
            Err(AggregateError::TooManyBuckets { .. })
        ));
    }

    #[test]
    fn a_window_knows_its_bounds() {
        let w = window(0, 600, 60);
        assert_eq!(
            (w.from(), w.to(), w.bucket()),
            (at(0), at(600), Duration::minutes(1))
        );
    }

    // --- aggregation --------------------------------------------------------------------------

    #[test]
    fn bucket_boundaries_are_inclusive_at_the_start_and_exclusive_at_the_end() {
        let nano = Duration::NANOSECOND;
        let samples = [
            (at(0) - nano, with_cpu(1.0)),   // before the window
            (at(0), with_cpu(2.0)),          // first bucket
            (at(60) - nano, with_cpu(3.0)),  // still the first
            (at(60), with_cpu(4.0)),         // second
            (at(180) - nano, with_cpu(5.0)), // third, the last
            (at(180), with_cpu(6.0)),        // the end of the window: outside
            (at(10_000), with_cpu(7.0)),     // far outside
        ];
        let result = aggregate(window(0, 180, 60), &samples);
        let expected = vec![
            point(at(0), (2, 2.0, 2.5, 3.0)),
            point(at(60), (1, 4.0, 4.0, 4.0)),
            point(at(120), (1, 5.0, 5.0, 5.0)),
        ];
        assert_eq!(result.series.len(), 1);
        assert_eq!(result.series[0].metric, "cpu_usage_percent");
        assert_eq!(result.series[0].points, expected);
        assert_eq!(result.dropped_metrics, 0);
    }

    #[test]
    fn a_partial_last_bucket_starts_on_the_grid() {
        let result = aggregate(window(0, 150, 60), &[(at(149), with_cpu(1.0))]);
        assert_eq!(
            result.series[0].points,
            vec![point(at(120), (1, 1.0, 1.0, 1.0))]
        );
    }

    #[test]
    fn min_avg_and_max_of_a_bucket() {
        let samples: Vec<_> = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
            .iter()
            .enumerate()
            .map(|(i, cpu)| (at(i as i64), with_cpu(*cpu)))
            .collect();
        let result = aggregate(window(0, 60, 60), &samples);
        let p = result.series[0].points[0];
        assert_eq!((p.count, p.min, p.max), (8, 1.0, 9.0));
        assert!((p.avg - 31.0 / 8.0).abs() < 1e-12, "{}", p.avg);
    }

    #[test]
    fn only_buckets_with_data_appear() {
        let samples = [(at(0), with_cpu(1.0)), (at(540), with_cpu(2.0))];
        let result = aggregate(window(0, 600, 60), &samples);
        let starts: Vec<_> = result.series[0].points.iter().map(|p| p.start).collect();
        assert_eq!(starts, vec![at(0), at(540)]);
        // Nothing at all in the window: no series.
        assert!(aggregate(window(0, 600, 60), &[(at(-1), full())])
            .series
            .is_empty());
    }

    #[test]
    fn the_order_of_samples_does_not_matter() {
        let samples: Vec<_> = (0..50)
            .map(|i| (at(i * 7), with_cpu((i * 13 % 17) as f32)))
            .collect();
        let mut reversed = samples.clone();
        reversed.reverse();
        let forward = aggregate(window(0, 350, 60), &samples);
        let backward = aggregate(window(0, 350, 60), &reversed);
        assert_eq!(forward.series.len(), backward.series.len());
        for (f, b) in forward.series[0]
            .points
            .iter()
            .zip(&backward.series[0].points)
        {
            assert_eq!(
                (f.start, f.count, f.min, f.max),
                (b.start, b.count, b.min, b.max)
            );
            assert!((f.avg - b.avg).abs() < 1e-9);
        }
    }

    #[test]
    fn every_metric_of_a_sample_gets_a_series_sorted_by_name() {
        let result = aggregate(window(0, 60, 60), &[(at(0), full())]);
        let mut expected = names(&full());
        expected.sort();
        let metrics: Vec<_> = result.series.iter().map(|s| s.metric.clone()).collect();
        assert_eq!(metrics, expected);
    }

    #[test]
    fn offsets_do_not_matter_only_instants() {
        let plus_two = time::UtcOffset::from_hms(2, 0, 0).unwrap();
        let w = Window::new(
            at(0).to_offset(plus_two),
            at(120).to_offset(plus_two),
            Duration::minutes(1),
        )
        .unwrap();
        let result = aggregate(w, &[(at(90), with_cpu(1.0))]);
        assert_eq!(result.series[0].points[0].start, at(60));
    }

    #[test]
    fn a_filter_keeps_only_the_named_metrics() {
        let filter = BTreeSet::from(["load_1".to_owned(), "disk_free_bytes:/".to_owned()]);
        let mut aggregator = Aggregator::new(window(0, 60, 60), Some(filter)).unwrap();
        aggregator.add(at(0), &full());
        let metrics: Vec<_> = aggregator
            .finish()
            .series
            .into_iter()
            .map(|s| s.metric)
            .collect();
        assert_eq!(metrics, ["disk_free_bytes:/", "load_1"]);

        let mut nothing = Aggregator::new(window(0, 60, 60), Some(BTreeSet::new())).unwrap();
        nothing.add(at(0), &full());
        assert!(nothing.finish().series.is_empty());
    }

    #[test]
    fn a_filter_of_more_names_than_a_result_holds_is_refused() {
        let filter: BTreeSet<_> = (0..=MAX_METRICS).map(|i| format!("custom:m{i}")).collect();
        assert_eq!(
            Aggregator::new(window(0, 60, 60), Some(filter)).unwrap_err(),
            AggregateError::TooManyMetrics {
                names: MAX_METRICS + 1,
                max: MAX_METRICS
            }
        );
        let at_limit: BTreeSet<_> = (0..MAX_METRICS).map(|i| format!("custom:m{i}")).collect();
        assert!(Aggregator::new(window(0, 60, 60), Some(at_limit)).is_ok());
    }

    fn with_custom(names: impl Iterator<Item = String>) -> Telemetry {
        Telemetry {
            custom: names.map(|name| (name, 1.0)).collect(),
            ..Telemetry::default()
        }
    }

    #[test]
    fn metrics_past_the_cap_are_dropped_and_counted_once_each() {
        let sample = with_custom((0..300).map(|i| format!("m{i:03}")));
        let mut aggregator = Aggregator::new(window(0, 120, 60), None).unwrap();
        aggregator.add(at(0), &sample);
        aggregator.add(at(1), &sample);
        aggregator.add(at(60), &sample);
        let result = aggregator.finish();
        assert_eq!(result.series.len(), MAX_METRICS);
        assert_eq!(result.dropped_metrics, 300 - MAX_METRICS as u64);
        // The first ones met are kept, and keep collecting after the cap.
        assert_eq!(result.series[0].metric, "custom:m000");
        assert_eq!(result.series[MAX_METRICS - 1].metric, "custom:m255");
        let counts: Vec<_> = result.series[0].points.iter().map(|p| p.count).collect();
        assert_eq!(counts, [2, 1]);
    }

    #[test]
    fn the_dropped_count_is_bounded_too() {
        let mut aggregator = Aggregator::new(window(0, 60, 60), None).unwrap();
        for batch in 0..70 {
            aggregator.add(
                at(0),
                &with_custom((0..300).map(|i| format!("b{batch}m{i}"))),
            );
        }
        let result = aggregator.finish();
        assert_eq!(result.series.len(), MAX_METRICS);
        assert_eq!(result.dropped_metrics, MAX_DROPPED_COUNTED);
    }

    #[test]
    fn memory_is_bounded_by_metrics_times_buckets() {
        let sample = with_custom((0..300).map(|i| format!("m{i}")));
        let w = window(0, 1_000, 1);
        let mut aggregator = Aggregator::new(w, None).unwrap();
        for second in 0..2_000 {
            aggregator.add(at(second), &sample);
        }
        let result = aggregator.finish();
        let points: usize = result.series.iter().map(|s| s.points.len()).sum();
        assert_eq!(points, MAX_METRICS * MAX_BUCKETS as usize);
    }

    #[test]
    fn extreme_values_keep_a_finite_average() {
        let big = |value: f64| with_custom(std::iter::once("x".to_owned())).custom_value(value);
        let samples = [
            (at(0), big(f64::MAX)),
            (at(1), big(f64::MAX)),
            (at(2), big(-f64::MAX)),
        ];
        let p = aggregate(window(0, 60, 60), &samples).series[0].points[0];
        assert_eq!((p.min, p.max), (-f64::MAX, f64::MAX));
        assert!(p.avg.is_finite() && p.avg > 0.0, "{}", p.avg);
        let both = [(at(0), big(f64::MAX)), (at(1), big(f64::MAX))];
        assert_eq!(
            aggregate(window(0, 60, 60), &both).series[0].points[0].avg,
            f64::MAX
        );
    }

    trait CustomValue {
        fn custom_value(self, value: f64) -> Self;
    }

    impl CustomValue for Telemetry {
        /// Sets every custom metric to `value`.
        fn custom_value(mut self, value: f64) -> Self {
            self.custom.values_mut().for_each(|v| *v = value);
            self
        }
    }

    #[test]
    fn an_aggregation_serializes_for_charts() {
        let result = aggregate(window(0, 120, 60), &[(at(61), with_cpu(50.0))]);
        let json = serde_json::to_value(&result).unwrap();
        let expected = json!({
            "series": [{
                "metric": "cpu_usage_percent",
                "points": [{
                    "start": "2024-01-01T00:01:00Z",
                    "count": 1, "min": 50.0, "avg": 50.0, "max": 50.0,
                }],
            }],
            "dropped_metrics": 0,
        });
        assert_eq!(json, expected);
    }
}
