//! SIEM forwarding state: which tenants opted in (`tenants.siem_forwarding`, a tenant setting
//! changed through [`crate::tenants::update_settings`]) and, per tenant, the durable cursor of
//! the forwarder in fleetd (`siem_cursors`, migration 0016).
//!
//! The cursor is the highest `seq` of the tenant's audit chain known to be delivered: the
//! forwarder advances it after a successful flush and moves it back when a connection fails, to
//! resend what that connection may have lost ([`set_cursor`] takes any value, not only larger
//! ones).

use crate::{AppDb, StoreError, TenantId, TenantTx};

/// The tenants that opted in to SIEM forwarding, in a stable order.
pub async fn forwarding_tenants(app: &AppDb) -> Result<Vec<TenantId>, StoreError> {
    let mut tx = crate::device_directory::begin_without_tenant(app).await?;
    let ids = sqlx::query_scalar!(r#"SELECT t AS "id!: TenantId" FROM fleet_siem_tenants() t"#)
        .fetch_all(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(ids)
}

/// The transaction's tenant's cursor: 0 before anything was forwarded.
pub async fn cursor(tx: &mut TenantTx) -> Result<i64, StoreError> {
    let tenant = tx.tenant();
    let seq = sqlx::query_scalar!(
        "SELECT last_forwarded_seq FROM siem_cursors WHERE tenant_id = $1",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(seq.unwrap_or(0))
}

/// Sets the transaction's tenant's cursor to `seq` (0 or more).
pub async fn set_cursor(tx: &mut TenantTx, seq: i64) -> Result<(), StoreError> {
    if seq < 0 {
        return Err(StoreError::Invalid {
            field: "last_forwarded_seq",
            reason: format!("{seq} is negative"),
        });
    }
    let tenant = tx.tenant();
    sqlx::query!(
        "INSERT INTO siem_cursors (tenant_id, last_forwarded_seq) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE
            SET last_forwarded_seq = EXCLUDED.last_forwarded_seq, updated_at = now()",
        tenant as TenantId,
        seq,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Whether the transaction's tenant opted in.
pub async fn enabled(tx: &mut TenantTx) -> Result<bool, StoreError> {
    let tenant = tx.tenant();
    sqlx::query_scalar!(
        "SELECT siem_forwarding FROM tenants WHERE tenant_id = $1",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("tenant"))
}

pub(crate) async fn set_enabled(tx: &mut TenantTx, on: bool) -> Result<(), StoreError> {
    let tenant = tx.tenant();
    sqlx::query!(
        "UPDATE tenants SET siem_forwarding = $2 WHERE tenant_id = $1",
        tenant as TenantId,
        on,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}
