//! Record retention and partition upkeep: a background job.
//!
//! Each run: create the weekly partitions ahead, drop whole partitions older than every tenant's
//! retention, then delete the records older than their own tenant's retention (default 30 days,
//! `tenant_ingest_settings`) in bounded steps, each its own short transaction. Everything goes
//! through the application role's narrow definer functions: the job holds no owner connection.

use std::time::Duration;

use store::{records, AppDb, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Metrics;

/// How the retention job runs.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// Time between runs.
    pub interval: Duration,
    /// Rows deleted per transaction (1 to 100,000).
    pub step_rows: i64,
    /// Pause between steps, to leave the database to ingest.
    pub step_pause: Duration,
    /// Weekly partitions kept ready ahead of now.
    pub weeks_ahead: i32,
    /// Most partitions dropped per run.
    pub max_partition_drops: i32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(3600),
            step_rows: 5000,
            step_pause: Duration::from_millis(50),
            weeks_ahead: 4,
            max_partition_drops: 4,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Partitions created ahead.
    pub partitions_created: i32,
    /// Whole partitions dropped.
    pub partitions_dropped: i32,
    /// Rows deleted, all tenants.
    pub records_deleted: u64,
}

/// The retention job, as the application role.
#[derive(Clone)]
pub struct Retention {
    app: AppDb,
    config: RetentionConfig,
    metrics: Metrics,
}

impl Retention {
    /// A job over this database.
    pub fn new(app: AppDb, config: RetentionConfig, metrics: Metrics) -> Self {
        Self {
            app,
            config,
            metrics,
        }
    }

    /// One run over every tenant.
    pub async fn run_once(&self) -> Result<RetentionReport, StoreError> {
        Ok(RetentionReport {
            partitions_created: records::ensure_partitions(&self.app, self.config.weeks_ahead)
                .await?,
            partitions_dropped: records::drop_expired_partitions(
                &self.app,
                self.config.max_partition_drops,
            )
            .await?,
            records_deleted: self.delete_expired().await?,
        })
    }

    /// Deletes every tenant's expired records, step by step; returns how many.
    pub async fn delete_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = records::delete_expired(&self.app, self.config.step_rows).await?;
            total += deleted;
            self.metrics.retention_deleted.inc_by(deleted);
            if deleted < self.config.step_rows.max(0) as u64 {
                return Ok(total);
            }
            tokio::time::sleep(self.config.step_pause).await;
        }
    }

    /// Runs every `interval` until `shutdown` turns true; failures are logged and retried at the
    /// next run.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.run_once().await {
                    Ok(report) => tracing::info!(?report, "retention run"),
                    Err(e) => tracing::warn!(error = %e, "retention run failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.config.interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}
