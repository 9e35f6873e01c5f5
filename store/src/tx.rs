//! The tenant-scoped transaction: the only way to reach tenant rows.

use sqlx::{PgConnection, Postgres, Transaction};

use crate::{StoreError, TenantId};

/// A database transaction bound to exactly one tenant.
///
/// Opening it sets `app.tenant_id` with `set_config(..., true)`, which is transaction-local:
/// the setting ends with the transaction, so a pooled connection never carries a tenant into
/// the next use. Row-level security policies compare every row's `tenant_id` with it.
/// Dropping a `TenantTx` without [`TenantTx::commit`] rolls it back.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
}

impl TenantTx {
    pub(crate) async fn begin(
        mut tx: Transaction<'static, Postgres>,
        tenant: TenantId,
    ) -> Result<Self, StoreError> {
        sqlx::query!(
            "SELECT set_config('app.tenant_id', $1, true)",
            tenant.to_string()
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(Self { tx, tenant })
    }

    /// The tenant this transaction works for.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Makes everything done in this transaction durable.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
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
}
