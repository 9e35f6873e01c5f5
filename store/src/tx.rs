//! The tenant-scoped transaction: the only way to reach tenant rows.

use std::time::Instant;

use sqlx::{PgConnection, Postgres, Transaction};

use crate::metrics::StoreMetrics;
use crate::{StoreError, TenantId};

/// A database transaction bound to exactly one tenant.
///
/// Opening it sets `app.tenant_id` with `set_config(..., true)` (in the same round trip as
/// `BEGIN`), which is transaction-local:
/// the setting ends with the transaction, so a pooled connection never carries a tenant into
/// the next use. Row-level security policies compare every row's `tenant_id` with it.
/// Dropping a `TenantTx` without [`TenantTx::commit`] rolls it back.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
    observed: Observed,
}

/// What the metrics learn of a transaction when it ends: its duration and outcome, and the
/// audit events it made durable (only if it committed).
struct Observed {
    metrics: StoreMetrics,
    started: Instant,
    outcome: &'static str,
    /// Audit actions appended, with their count.
    appends: Vec<(String, u64)>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.metrics
            .transaction_ended(self.outcome, self.started.elapsed().as_secs_f64());
        if self.outcome == "commit" {
            for (action, count) in &self.appends {
                self.metrics.audit_appended(action, *count);
            }
        }
    }
}

impl TenantTx {
    /// What opens a tenant transaction: `BEGIN` and the tenant setting, one simple query of two
    /// statements, so one round trip. The id is inlined: a UUID's text is hex digits and dashes.
    pub(crate) fn begin_statement(tenant: TenantId) -> String {
        format!("BEGIN; SELECT set_config('app.tenant_id', '{tenant}', true)")
    }

    /// Wraps `tx`, opened with [`Self::begin_statement`] of `tenant`.
    pub(crate) fn opened(
        tx: Transaction<'static, Postgres>,
        tenant: TenantId,
        metrics: StoreMetrics,
    ) -> Self {
        let observed = Observed {
            metrics,
            started: Instant::now(),
            outcome: "rollback",
            appends: Vec::new(),
        };
        Self {
            tx,
            tenant,
            observed,
        }
    }

    /// The tenant this transaction works for.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Makes everything done in this transaction durable.
    pub async fn commit(self) -> Result<(), StoreError> {
        let Self {
            tx, mut observed, ..
        } = self;
        observed.outcome = "failed";
        tx.commit().await?;
        observed.outcome = "commit";
        Ok(())
    }

    /// Abandons everything done in this transaction.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// The connection, for the repository functions of this crate only.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The metrics of the pool this transaction came from.
    pub(crate) fn metrics(&self) -> &StoreMetrics {
        &self.observed.metrics
    }

    /// Notes an audit event appended in this transaction, counted if it commits.
    pub(crate) fn audit_appended(&mut self, action: &str) {
        match self
            .observed
            .appends
            .iter_mut()
            .find(|(seen, _)| seen == action)
        {
            Some((_, count)) => *count += 1,
            None => self.observed.appends.push((action.to_owned(), 1)),
        }
    }
}
