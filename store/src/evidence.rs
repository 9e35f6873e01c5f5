//! What the compliance evidence report (issue 15) reads that no other module lists: the
//! tenant's devices revoked in a period, row-level security of the tenant tables from the
//! catalog, the last backup verification as the application role may see it, and the audit
//! event that records an export of the report.

use time::OffsetDateTime;

use crate::audit::{self, Action, Actor, Target};
use crate::{DeviceId, StoreError, TenantTx};

/// A device of the tenant revoked in the period.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RevokedDevice {
    /// The device.
    pub device_id: DeviceId,
    /// Its name.
    pub name: String,
    /// Its group.
    pub device_group: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

/// The transaction's tenant's devices revoked in `[from, to)`, oldest first.
pub async fn revoked_devices(
    tx: &mut TenantTx,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<RevokedDevice>, StoreError> {
    Ok(sqlx::query_as::<_, RevokedDevice>(
        "SELECT device_id, name, device_group, revoked_at FROM devices
          WHERE status = 'revoked' AND revoked_at >= $1 AND revoked_at < $2
          ORDER BY revoked_at, device_id",
    )
    .bind(from)
    .bind(to)
    .fetch_all(tx.conn())
    .await?)
}

/// Row-level security of one table that holds tenant rows (it has a `tenant_id` column).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TableIsolation {
    /// The table, schema-qualified.
    pub table: String,
    /// `ENABLE ROW LEVEL SECURITY`.
    pub rls_enabled: bool,
    /// `FORCE ROW LEVEL SECURITY`: the owner is bound by the policies too.
    pub rls_forced: bool,
    /// Policies on it.
    pub policies: i64,
}

/// Every table of schema `public` with a `tenant_id` column, and its row-level security, from
/// `pg_catalog` (readable by any role).
pub async fn tenant_table_isolation(tx: &mut TenantTx) -> Result<Vec<TableIsolation>, StoreError> {
    Ok(sqlx::query_as::<_, TableIsolation>(
        "SELECT 'public.' || c.relname AS table, c.relrowsecurity AS rls_enabled,
                c.relforcerowsecurity AS rls_forced,
                (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS policies
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                           AND NOT a.attisdropped)
          ORDER BY c.relname",
    )
    .fetch_all(tx.conn())
    .await?)
}

/// The newest backup verification, without its per-tenant checks (they name every tenant).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct BackupVerificationSummary {
    /// When it ran.
    pub verified_at: OffsetDateTime,
    /// The backup file's name.
    pub file_name: String,
    /// When the backup was made (unknown when the file could not be read).
    pub backup_created_at: Option<OffsetDateTime>,
    /// The dump's SHA-256.
    pub dump_sha256: Option<String>,
    /// Whether it was intact and verified.
    pub verified: bool,
}

/// The newest backup verification recorded by `fleetctl backup verify`
/// ([`crate::backup::record_verification`]), through `fleet_last_backup_verification()`
/// (migration 0018), which the application role may call.
pub async fn last_backup_verification(
    tx: &mut TenantTx,
) -> Result<Option<BackupVerificationSummary>, StoreError> {
    Ok(sqlx::query_as::<_, BackupVerificationSummary>(
        "SELECT verified_at, file_name, backup_created_at, dump_sha256, verified
           FROM public.fleet_last_backup_verification()",
    )
    .fetch_optional(tx.conn())
    .await?)
}

/// Records in the tenant's audit trail that `actor` exported the evidence report for
/// `[from, to)`.
pub async fn record_export(
    tx: &mut TenantTx,
    actor: &Actor,
    from: OffsetDateTime,
    to: OffsetDateTime,
    format: &str,
) -> Result<(), StoreError> {
    let details = serde_json::json!({
        "from": audit::rfc3339_micros(from),
        "to": audit::rfc3339_micros(to),
        "format": format,
    });
    let target = Target::Tenant(tx.tenant());
    audit::append(tx, actor, Action::ReportEvidenceExport, &target, &details).await?;
    Ok(())
}
