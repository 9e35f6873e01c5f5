//! Tenants: creation (with the head of their audit chain) and reading.

use serde_json::json;
use sqlx::Row;
use time::OffsetDateTime;

use crate::{audit, AppDb, StoreError, TenantId, TenantTx};

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
pub async fn create(app: &AppDb, name: &str, actor: &str) -> Result<Tenant, StoreError> {
    check_name(name)?;
    let id = TenantId::new_random();
    let mut tx = app.begin(id).await?;
    let row = sqlx::query(
        "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) RETURNING tenant_id, name, created_at",
    )
    .bind(id)
    .bind(name)
    .fetch_one(tx.conn())
    .await?;
    let tenant = tenant_from_row(&row)?;
    audit::create_chain_head(&mut tx).await?;
    audit::append(
        &mut tx,
        actor,
        "tenant.create",
        &format!("tenant:{id}"),
        &json!({ "name": name }),
    )
    .await?;
    tx.commit().await?;
    Ok(tenant)
}

/// The transaction's own tenant.
pub async fn get(tx: &mut TenantTx) -> Result<Tenant, StoreError> {
    let tenant = tx.tenant();
    let row = sqlx::query("SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    tenant_from_row(&row)
}

pub(crate) fn tenant_from_row(row: &sqlx::postgres::PgRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::Invalid {
        field: "tenant name",
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
