//! The store's Prometheus series: the application pool, its waiters and acquire time,
//! transaction latency, audit appends and chain verifications. Labels are fixed and
//! low-cardinality: a pool name, an outcome, an audit action name, a verification scope and
//! result; never a tenant or device id.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `fleet_store_pool_connections` | gauge | `pool` (`app`), `state` (`in_use`, `idle`): read from the pool at scrape time |
//! | `fleet_store_pool_max_connections` | gauge | `pool`: the configured `database.max_connections` |
//! | `fleet_store_pool_waiters` | gauge | `pool`: callers of [`AppDb::begin`](crate::AppDb::begin) waiting for a connection now |
//! | `fleet_store_pool_acquire_duration_seconds` | histogram | `pool`: how long [`AppDb::begin`](crate::AppDb::begin) waited for a connection |
//! | `fleet_store_transaction_duration_seconds` | histogram | `outcome` (`commit`, `rollback`, `failed`): a [`TenantTx`](crate::TenantTx) from `BEGIN` to its end |
//! | `fleet_audit_appends_total` | counter | `action` (`device.enroll`, `api_key.create`, ...): events made durable, counted at commit |
//! | `fleet_audit_chain_verifications_total` | counter | `scope` (`full`, `tail`), `result` (`intact`, `broken`, `error`) |
//! | `fleet_audit_chains_broken` | gauge | none: tenants whose chain the start-up tail check found broken |
//! | `fleet_audit_checkpoints_total` | counter | `result` (`written`, `refused`: chain broken, not signed; `error`; `push_failed`: stored but not written to the checkpoint directory) |
//!
//! sqlx exposes no count of tasks waiting for a pooled connection, so the store counts its own:
//! every [`AppDb::begin`](crate::AppDb::begin) is a waiter from its call until the pool hands it
//! a connection. Other users of the pool (the readiness ping, the revocation listener's
//! connection) are not counted; they take one connection each, rarely.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::audit::ChainVerdict;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    scope: &'static str,
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The store's series; clones share them. [`Default`] makes series registered nowhere (tools,
/// tests); [`StoreMetrics::register`] makes fleetd's.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    waiters: Family<PoolLabels, Gauge>,
    acquire_seconds: HistogramFamily<PoolLabels>,
    transaction_seconds: HistogramFamily<OutcomeLabels>,
    audit_appends: Family<ActionLabels, Counter>,
    verifications: Family<VerificationLabels, Counter>,
    chains_broken: Gauge,
    checkpoints: Family<ResultLabels, Counter>,
}

fn acquire_histogram() -> Histogram {
    // 50 µs to about 6.5 s (connect_timeout's default is 5 s).
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

fn transaction_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            waiters: Family::default(),
            acquire_seconds: Family::new_with_constructor(acquire_histogram),
            transaction_seconds: Family::new_with_constructor(transaction_histogram),
            audit_appends: Family::default(),
            verifications: Family::default(),
            chains_broken: Gauge::default(),
            checkpoints: Family::default(),
        }
    }
}

/// The `result` label values of `fleet_audit_checkpoints_total`.
pub const CHECKPOINT_RESULTS: [&str; 4] = ["written", "refused", "error", "push_failed"];

/// The application pool's name in the `pool` label.
pub(crate) const APP_POOL: &str = "app";

impl StoreMetrics {
    /// Creates the series and registers them (`fleet_store_*`, `fleet_audit_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let store = registry.sub_registry_with_prefix("fleet_store");
        store.register(
            "pool_waiters",
            "Callers waiting for a pooled connection to open a tenant transaction",
            metrics.waiters.clone(),
        );
        store.register(
            "pool_acquire_duration_seconds",
            "Time a tenant transaction waited for a pooled connection",
            metrics.acquire_seconds.clone(),
        );
        store.register(
            "transaction_duration_seconds",
            "Tenant transactions from BEGIN to commit, rollback or failure",
            metrics.transaction_seconds.clone(),
        );
        let audit = registry.sub_registry_with_prefix("fleet_audit");
        audit.register(
            "appends",
            "Audit events made durable (counted at commit), by action",
            metrics.audit_appends.clone(),
        );
        audit.register(
            "chain_verifications",
            "Audit chain verifications by scope (full, tail) and result (intact, broken, error)",
            metrics.verifications.clone(),
        );
        audit.register(
            "chains_broken",
            "Tenants whose audit chain the start-up tail check found broken",
            metrics.chains_broken.clone(),
        );
        audit.register(
            "checkpoints",
            "Signed audit checkpoints by result (written, refused, error, push_failed)",
            metrics.checkpoints.clone(),
        );
        for result in CHECKPOINT_RESULTS {
            drop(metrics.checkpoints.get_or_create(&ResultLabels { result }));
        }
        // Present from the first scrape: an alert on rate() needs the zero before the first one.
        drop(
            metrics
                .waiters
                .get_or_create(&PoolLabels { pool: APP_POOL }),
        );
        for result in ["intact", "broken", "error"] {
            for scope in ["full", "tail"] {
                drop(
                    metrics
                        .verifications
                        .get_or_create(&VerificationLabels { scope, result }),
                );
            }
        }
        metrics
    }

    /// Counts a waiter until the guard drops; the guard observes the wait when it is told the
    /// connection came.
    pub(crate) fn waiting(&self, pool: &'static str) -> Waiting {
        let waiters = self.waiters.get_or_create(&PoolLabels { pool }).clone();
        waiters.inc();
        Waiting {
            waiters,
            since: Instant::now(),
        }
    }

    pub(crate) fn acquired(&self, pool: &'static str, waiting: Waiting) {
        self.acquire_seconds
            .get_or_create(&PoolLabels { pool })
            .observe(waiting.since.elapsed().as_secs_f64());
    }

    pub(crate) fn transaction_ended(&self, outcome: &'static str, seconds: f64) {
        self.transaction_seconds
            .get_or_create(&OutcomeLabels { outcome })
            .observe(seconds);
    }

    pub(crate) fn audit_appended(&self, action: &str, count: u64) {
        self.audit_appends
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .inc_by(count);
    }

    /// Counts one verification of `scope` (`full` or `tail`) with its outcome.
    pub(crate) fn verified(
        &self,
        scope: &'static str,
        outcome: &Result<ChainVerdict, crate::StoreError>,
    ) {
        let result = match outcome {
            Ok(ChainVerdict::Intact { .. }) => "intact",
            Ok(ChainVerdict::Broken { .. }) => "broken",
            Err(_) => "error",
        };
        self.verifications
            .get_or_create(&VerificationLabels { scope, result })
            .inc();
    }

    /// Counts one checkpoint attempt in `fleet_audit_checkpoints_total`; `result` is one of
    /// [`CHECKPOINT_RESULTS`].
    pub fn checkpoint(&self, result: &'static str) {
        debug_assert!(CHECKPOINT_RESULTS.contains(&result));
        self.checkpoints
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Sets `fleet_audit_chains_broken`.
    pub fn set_chains_broken(&self, tenants: usize) {
        self.chains_broken
            .set(i64::try_from(tenants).unwrap_or(i64::MAX));
    }
}

/// A caller waiting for a pooled connection, counted in `fleet_store_pool_waiters`.
pub(crate) struct Waiting {
    waiters: Gauge,
    since: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.dec();
    }
}

/// The pools' sizes, read at scrape time: `fleet_store_pool_connections{pool,state}` and
/// `fleet_store_pool_max_connections{pool}`. Register it with
/// [`Registry::register_collector`]; it keeps a handle on the pool, which closing the
/// [`Database`](crate::Database) still closes.
#[derive(Debug)]
pub struct PoolCollector {
    pools: Vec<(&'static str, PgPool)>,
}

impl PoolCollector {
    pub(crate) fn new(pools: Vec<(&'static str, PgPool)>) -> Self {
        Self { pools }
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(0i64);
        let mut connections = encoder.encode_descriptor(
            "fleet_store_pool_connections",
            "Pooled database connections by state (in_use, idle)",
            None,
            gauge.metric_type(),
        )?;
        for (pool, handle) in &self.pools {
            let size = i64::from(handle.size());
            let idle = i64::try_from(handle.num_idle()).unwrap_or(i64::MAX);
            for (state, value) in [("in_use", (size - idle).max(0)), ("idle", idle)] {
                let labels = [("pool", *pool), ("state", state)];
                ConstGauge::new(value).encode(connections.encode_family(&labels)?)?;
            }
        }
        let mut max = encoder.encode_descriptor(
            "fleet_store_pool_max_connections",
            "The most connections a pool opens (database.max_connections for app)",
            None,
            gauge.metric_type(),
        )?;
        for (pool, handle) in &self.pools {
            let value = i64::from(handle.options().get_max_connections());
            ConstGauge::new(value).encode(max.encode_family(&[("pool", *pool)])?)?;
        }
        Ok(())
    }
}
