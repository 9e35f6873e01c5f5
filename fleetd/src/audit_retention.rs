//! The audit retention task: at start and then every `audit.prune_interval`, prunes every tenant
//! whose oldest audit events are past its `audit_retention_days` (a tenant setting), behind the
//! newest signed checkpoint that covers them (`store::audit::prune`, which records the anchor
//! verification starts from and appends `audit.prune`). What `fleetctl audit prune` does by hand.
//! A failed tenant is logged and tried again at the next run.

use std::time::Duration;

use store::audit::{self, Actor};
use store::{AppDb, TenantId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What one [`prune_due`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneRun {
    /// Tenants that had events removed.
    pub pruned: usize,
    /// Events removed, across tenants.
    pub deleted: i64,
    /// Tenants that could not be pruned (logged).
    pub failed: usize,
}

/// Prunes every tenant due, each in its own transaction.
pub async fn prune_due(app: &AppDb) -> Result<PruneRun, store::StoreError> {
    let mut run = PruneRun::default();
    for tenant in audit::tenants_due_for_prune(app, 100_000).await? {
        match prune_one(app, tenant).await {
            Ok(outcome) if outcome.deleted > 0 => {
                tracing::info!(%tenant, deleted = outcome.deleted, anchor_seq = outcome.anchor_seq, "audit events past retention removed behind a signed checkpoint");
                run.pruned += 1;
                run.deleted += outcome.deleted;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(%tenant, error = %e, "audit events past retention not pruned");
                run.failed += 1;
            }
        }
    }
    Ok(run)
}

async fn prune_one(
    app: &AppDb,
    tenant: TenantId,
) -> Result<audit::PruneOutcome, store::StoreError> {
    let mut tx = app.begin(tenant).await?;
    let outcome = audit::prune(&mut tx, &Actor::System).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Runs [`prune_due`] now and every `interval` until `stopped`.
pub fn spawn(app: AppDb, interval: Duration, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match prune_due(&app).await {
                Ok(run) if run.pruned > 0 || run.failed > 0 => tracing::info!(
                    tenants = run.pruned,
                    deleted = run.deleted,
                    failed = run.failed,
                    "audit retention run"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "audit retention run failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    })
}
