//! Tenants: creation (with the head of their audit chain and the `default` device group),
//! reading, and their settings.

use serde_json::json;
use time::OffsetDateTime;

use crate::api_keys::{self, IssuedKey, KeyEnv};
use crate::audit::{self, Action, Actor, Target};
use crate::{device_groups, AppDb, StoreError, TenantId, TenantTx};

/// A tenant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Its identifier.
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// Longest accepted tenant name, in bytes (the schema enforces the same).
pub const MAX_NAME_LEN: usize = 200;

/// Creates a tenant, the head of its audit chain and the chain's first event, in one transaction.
/// [`StoreError::Conflict`] when another tenant has the same name (ignoring case).
pub async fn create(app: &AppDb, name: &str, actor: &Actor) -> Result<Tenant, StoreError> {
    let (tenant, tx) = create_in_tx(app, name, actor).await?;
    tx.commit().await?;
    Ok(tenant)
}

/// [`create`], and the tenant's first owner key in the same transaction (bootstrap: `fleetctl
/// tenant create`). The key text is the only copy.
pub async fn create_with_owner_key(
    app: &AppDb,
    name: &str,
    env: &KeyEnv,
    actor: &Actor,
) -> Result<(Tenant, IssuedKey), StoreError> {
    let (tenant, mut tx) = create_in_tx(app, name, actor).await?;
    let key = api_keys::create_break_glass(&mut tx, "first owner key", env, actor).await?;
    tx.commit().await?;
    Ok((tenant, key))
}

async fn create_in_tx(
    app: &AppDb,
    name: &str,
    actor: &Actor,
) -> Result<(Tenant, TenantTx), StoreError> {
    check_name(name)?;
    if name_taken(app, name).await? {
        return Err(StoreError::Conflict("a tenant with this name exists"));
    }
    let id = TenantId::new_random();
    let mut tx = app.begin(id).await?;
    let tenant = sqlx::query_as!(
        Tenant,
        r#"INSERT INTO tenants (tenant_id, name) VALUES ($1, $2)
           RETURNING tenant_id AS "id: TenantId", name, created_at"#,
        id as TenantId,
        name,
    )
    .fetch_one(tx.conn())
    .await?;
    audit::create_chain_head(&mut tx).await?;
    device_groups::create_default(&mut tx).await?;
    audit::append(
        &mut tx,
        actor,
        Action::TenantCreate,
        &Target::Tenant(id),
        &json!({ "name": name }),
    )
    .await?;
    Ok((tenant, tx))
}

/// Whether a tenant of this name (ignoring case) exists. Names are an installation-wide
/// namespace chosen at bootstrap, so `fleetctl --tenant NAME` is unambiguous.
async fn name_taken(app: &AppDb, name: &str) -> Result<bool, StoreError> {
    let mut tx = crate::device_directory::begin_without_tenant(app).await?;
    let taken = sqlx::query_scalar!(r#"SELECT fleet_tenant_name_taken($1) AS "taken!""#, name)
        .fetch_one(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(taken)
}

/// A tenant's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSettings {
    /// The tenant.
    pub tenant: Tenant,
    /// How long telemetry and other records are kept, in days.
    pub record_retention_days: i32,
    /// The most device sessions the tenant may hold on one gateway.
    pub max_device_connections: i32,
    /// Whether fleetd forwards the tenant's audit trail to the SIEM collector ([`crate::siem`]).
    pub siem_forwarding: bool,
    /// How long audit events are kept before `audit::prune` may remove them (behind a signed
    /// checkpoint), in days.
    pub audit_retention_days: i32,
}

/// What a settings change asks for; `None` keeps the current value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// A new display name.
    pub name: Option<String>,
    /// A new record retention, 1 to 3650 days.
    pub record_retention_days: Option<i32>,
    /// A new connection quota, 1 to [`MAX_DEVICE_CONNECTIONS`].
    pub max_device_connections: Option<i32>,
    /// Turn SIEM forwarding of the audit trail on or off.
    pub siem_forwarding: Option<bool>,
    pub audit_retention_days: Option<i32>,
}

/// The transaction's tenant and its settings.
pub async fn settings(tx: &mut TenantTx) -> Result<TenantSettings, StoreError> {
    let tenant = get(tx).await?;
    let record_retention_days = crate::records::retention_days(tx).await?;
    let max_device_connections = max_device_connections(tx).await?;
    let siem_forwarding = crate::siem::enabled(tx).await?;
    let audit_retention_days = audit_retention_days(tx).await?;
    Ok(TenantSettings {
        tenant,
        record_retention_days,
        max_device_connections,
        siem_forwarding,
        audit_retention_days,
    })
}

/// Changes the transaction's tenant's settings and records what changed.
pub async fn update_settings(
    tx: &mut TenantTx,
    change: &SettingsChange,
    app: &AppDb,
    actor: &Actor,
) -> Result<TenantSettings, StoreError> {
    let before = settings(tx).await?;
    if let Some(name) = &change.name {
        check_name(name)?;
        if !name.eq_ignore_ascii_case(&before.tenant.name) && name_taken(app, name).await? {
            return Err(StoreError::Conflict("a tenant with this name exists"));
        }
        sqlx::query!(
            "UPDATE tenants SET name = $2 WHERE tenant_id = $1",
            tx.tenant() as TenantId,
            name,
        )
        .execute(tx.conn())
        .await?;
    }
    if let Some(days) = change.record_retention_days {
        set_retention_days(tx, days).await?;
    }
    if let Some(quota) = change.max_device_connections {
        set_max_device_connections(tx, quota).await?;
    }
    if let Some(on) = change.siem_forwarding {
        crate::siem::set_enabled(tx, on).await?;
    }
    if let Some(days) = change.audit_retention_days {
        set_audit_retention_days(tx, days).await?;
    }
    let after = settings(tx).await?;
    audit::append(
        tx,
        actor,
        Action::TenantSettingsUpdate,
        &Target::Tenant(tx.tenant()),
        &json!({
            "name": { "from": before.tenant.name, "to": after.tenant.name },
            "record_retention_days": {
                "from": before.record_retention_days,
                "to": after.record_retention_days,
            },
            "max_device_connections": {
                "from": before.max_device_connections,
                "to": after.max_device_connections,
            },
            "siem_forwarding": {
                "from": before.siem_forwarding,
                "to": after.siem_forwarding,
            },
            "audit_retention_days": {
                "from": before.audit_retention_days,
                "to": after.audit_retention_days,
            },
        }),
    )
    .await?;
    Ok(after)
}

/// Most days of record retention.
pub const MAX_RETENTION_DAYS: i32 = 3650;

async fn set_retention_days(tx: &mut TenantTx, days: i32) -> Result<(), StoreError> {
    if !(1..=MAX_RETENTION_DAYS).contains(&days) {
        return Err(StoreError::Invalid {
            field: "record_retention_days",
            reason: format!("{days} days is outside 1 to 3650"),
        });
    }
    let tenant = tx.tenant();
    sqlx::query!(
        "INSERT INTO tenant_ingest_settings (tenant_id, record_retention_days) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE
            SET record_retention_days = EXCLUDED.record_retention_days, updated_at = now()",
        tenant as TenantId,
        days,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Most device sessions a tenant may be given on one gateway (the schema enforces the same).
/// The bounds of `audit_retention_days` (migration 0017): at least a month, so a slip of the
/// finger cannot prune a tenant's recent history; at most a century.
pub const MIN_AUDIT_RETENTION_DAYS: i32 = 30;
pub const MAX_AUDIT_RETENTION_DAYS: i32 = 36_500;

/// The tenant's audit retention in days (default 365).
pub async fn audit_retention_days(tx: &mut TenantTx) -> Result<i32, StoreError> {
    sqlx::query_scalar("SELECT audit_retention_days FROM tenants WHERE tenant_id = $1")
        .bind(tx.tenant().0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(StoreError::NotFound("tenant"))
}

async fn set_audit_retention_days(tx: &mut TenantTx, days: i32) -> Result<(), StoreError> {
    if !(MIN_AUDIT_RETENTION_DAYS..=MAX_AUDIT_RETENTION_DAYS).contains(&days) {
        return Err(StoreError::Invalid {
            field: "audit_retention_days",
            reason: format!(
                "{days} days is outside {MIN_AUDIT_RETENTION_DAYS} to {MAX_AUDIT_RETENTION_DAYS}"
            ),
        });
    }
    sqlx::query("UPDATE tenants SET audit_retention_days = $2 WHERE tenant_id = $1")
        .bind(tx.tenant().0)
        .bind(days)
        .execute(tx.conn())
        .await?;
    Ok(())
}

pub const MAX_DEVICE_CONNECTIONS: i32 = 10_000_000;

/// The most device sessions the transaction's tenant may hold on one gateway: read at every
/// admission, so a change applies to the next CONNECT.
pub async fn max_device_connections(tx: &mut TenantTx) -> Result<i32, StoreError> {
    let tenant = tx.tenant();
    sqlx::query_scalar!(
        "SELECT max_device_connections FROM tenants WHERE tenant_id = $1",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("tenant"))
}

async fn set_max_device_connections(tx: &mut TenantTx, quota: i32) -> Result<(), StoreError> {
    if !(1..=MAX_DEVICE_CONNECTIONS).contains(&quota) {
        return Err(StoreError::Invalid {
            field: "max_device_connections",
            reason: format!("{quota} is outside 1 to {MAX_DEVICE_CONNECTIONS}"),
        });
    }
    let tenant = tx.tenant();
    sqlx::query!(
        "UPDATE tenants SET max_device_connections = $2 WHERE tenant_id = $1",
        tenant as TenantId,
        quota,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The transaction's own tenant.
pub async fn get(tx: &mut TenantTx) -> Result<Tenant, StoreError> {
    let tenant = tx.tenant();
    sqlx::query_as!(
        Tenant,
        r#"SELECT tenant_id AS "id: TenantId", name, created_at FROM tenants WHERE tenant_id = $1"#,
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("tenant"))
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::Invalid {
        field: "name",
        reason: reason.into(),
    };
    if name.trim().is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("must be at most 200 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_database() {
        assert!(check_name("acme").is_ok());
        assert!(check_name("  ").is_err());
        assert!(check_name(&"x".repeat(201)).is_err());
        assert!(check_name("a\nb").is_err());
    }
}
