//! Device groups of a tenant: create, rename, delete (only when empty), list.
//!
//! Every tenant starts with the group `default`. Devices and enrollment tokens name their group;
//! the schema's foreign keys carry a rename to them and refuse to delete a group that still has
//! devices or tokens. Group-scoped API keys hold group ids ([`DeviceGroupId`]), so a rename
//! changes nothing about what a key may see.

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{self, Action, Actor, Target};
use crate::{DeviceGroupId, StoreError, TenantId, TenantTx};

/// The group every tenant starts with, and where devices go when nothing else is said.
pub const DEFAULT_GROUP: &str = "default";

/// Longest group name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// A device group as stored, with counts of its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceGroup {
    /// Its id.
    pub id: DeviceGroupId,
    /// Its name, unique in the tenant.
    pub name: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Devices in it now.
    pub device_count: i64,
    /// Of them, connected now.
    pub online_count: i64,
    /// Of them, whose newest inventory has security updates pending.
    pub pending_security_count: i64,
}

/// Which groups a caller may see: all of them, or only some.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupScope {
    /// Every group of the tenant.
    All,
    /// Only these.
    Only(Vec<DeviceGroupId>),
}

impl GroupScope {
    /// The scope of a key whose stored scope is `groups`.
    pub fn from_key(groups: Option<&[DeviceGroupId]>) -> Self {
        match groups {
            None => GroupScope::All,
            Some(ids) => GroupScope::Only(ids.to_vec()),
        }
    }

    /// The ids to bind as `$n::uuid[]` in a filter `($n IS NULL OR group_id = ANY($n))`.
    pub(crate) fn bind_value(&self) -> Option<&[DeviceGroupId]> {
        match self {
            GroupScope::All => None,
            GroupScope::Only(ids) => Some(ids),
        }
    }
}

/// Creates a tenant's `default` group (tenant creation calls it; not audited on its own).
pub(crate) async fn create_default(tx: &mut TenantTx) -> Result<(), StoreError> {
    insert(tx, DeviceGroupId::new_random(), DEFAULT_GROUP).await
}

async fn insert(tx: &mut TenantTx, id: DeviceGroupId, name: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO device_groups (tenant_id, group_id, name) VALUES ($1, $2, $3)",
        tx.tenant() as TenantId,
        id as DeviceGroupId,
        name,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Creates a group. [`StoreError::Conflict`] when the name is taken.
pub async fn create(
    tx: &mut TenantTx,
    name: &str,
    actor: &Actor,
) -> Result<DeviceGroup, StoreError> {
    check_name(name)?;
    if find_by_name(tx, name).await?.is_some() {
        return Err(StoreError::Conflict("a device group with this name exists"));
    }
    let id = DeviceGroupId::new_random();
    insert(tx, id, name).await?;
    audit::append(
        tx,
        actor,
        Action::DeviceGroupCreate,
        &Target::DeviceGroup(id),
        &json!({ "name": name }),
    )
    .await?;
    get(tx, id, &GroupScope::All)
        .await?
        .ok_or(StoreError::NotFound("device group"))
}

/// Renames a group; its devices and tokens follow. [`StoreError::NotFound`] outside `scope`.
pub async fn rename(
    tx: &mut TenantTx,
    id: DeviceGroupId,
    new_name: &str,
    scope: &GroupScope,
    actor: &Actor,
) -> Result<DeviceGroup, StoreError> {
    check_name(new_name)?;
    let current = get(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device group"))?;
    if current.name == new_name {
        return Ok(current);
    }
    if find_by_name(tx, new_name).await?.is_some() {
        return Err(StoreError::Conflict("a device group with this name exists"));
    }
    sqlx::query!(
        "UPDATE device_groups SET name = $2 WHERE group_id = $1",
        id as DeviceGroupId,
        new_name,
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::DeviceGroupRename,
        &Target::DeviceGroup(id),
        &json!({ "from": current.name, "to": new_name }),
    )
    .await?;
    get(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device group"))
}

/// Deletes a group that has no devices and no enrollment tokens.
pub async fn delete(
    tx: &mut TenantTx,
    id: DeviceGroupId,
    scope: &GroupScope,
    actor: &Actor,
) -> Result<(), StoreError> {
    let group = get(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device group"))?;
    if group.device_count > 0 {
        return Err(StoreError::Conflict(
            "the device group still has devices; move them first",
        ));
    }
    let tokens = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM enrollment_tokens WHERE device_group = $1"#,
        group.name,
    )
    .fetch_one(tx.conn())
    .await?;
    if tokens > 0 {
        return Err(StoreError::Conflict(
            "enrollment tokens still enroll into this device group",
        ));
    }
    sqlx::query!(
        "DELETE FROM device_groups WHERE group_id = $1",
        id as DeviceGroupId
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::DeviceGroupDelete,
        &Target::DeviceGroup(id),
        &json!({ "name": group.name }),
    )
    .await?;
    Ok(())
}

/// One group, if it exists and is in `scope`.
pub async fn get(
    tx: &mut TenantTx,
    id: DeviceGroupId,
    scope: &GroupScope,
) -> Result<Option<DeviceGroup>, StoreError> {
    let found = select(tx, Some(id), None, scope, None, 1).await?;
    Ok(found.into_iter().next())
}

/// The id of the group named `name`, if it exists (any scope): the lookup a reference makes (a
/// new device's group, a device's move, a token's group). One index probe; [`find_by_name`]
/// also counts the group's devices, which made every enrollment into a large group cost time
/// in proportion to the group's size.
pub async fn id_by_name(
    tx: &mut TenantTx,
    name: &str,
) -> Result<Option<DeviceGroupId>, StoreError> {
    Ok(
        sqlx::query_scalar::<_, DeviceGroupId>(
            "SELECT group_id FROM device_groups WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(tx.conn())
        .await?,
    )
}

/// The group with this name, if it exists (any scope: for uniqueness and references).
pub async fn find_by_name(
    tx: &mut TenantTx,
    name: &str,
) -> Result<Option<DeviceGroup>, StoreError> {
    let found = select(tx, None, Some(name), &GroupScope::All, None, 1).await?;
    Ok(found.into_iter().next())
}

/// Groups in `scope` ordered by name, after `after`, at most `limit`.
pub async fn list(
    tx: &mut TenantTx,
    scope: &GroupScope,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceGroup>, StoreError> {
    select(tx, None, None, scope, after, limit).await
}

/// The one query of groups with their counts, each `None` not narrowing: one round trip for a
/// whole page, counted per group by the index `devices_by_group`.
async fn select(
    tx: &mut TenantTx,
    id: Option<DeviceGroupId>,
    name: Option<&str>,
    scope: &GroupScope,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceGroup>, StoreError> {
    Ok(sqlx::query_as!(
        DeviceGroup,
        r#"SELECT g.group_id AS "id: DeviceGroupId", g.name, g.created_at,
                  c.devices AS "device_count!", c.online AS "online_count!",
                  c.pending AS "pending_security_count!"
             FROM device_groups g
             CROSS JOIN LATERAL (
                 SELECT count(*) AS devices, count(*) FILTER (WHERE d.online) AS online,
                        count(*) FILTER (WHERE p.security_upgradable_count > 0) AS pending
                   FROM devices d
                   LEFT JOIN device_patch_status p
                          ON p.tenant_id = d.tenant_id AND p.device_id = d.device_id
                  WHERE d.tenant_id = g.tenant_id AND d.device_group = g.name) c
            WHERE ($1::uuid IS NULL OR g.group_id = $1)
              AND ($2::text IS NULL OR g.name = $2)
              AND ($3::uuid[] IS NULL OR g.group_id = ANY($3))
              AND ($4::text IS NULL OR g.name > $4)
            ORDER BY g.name LIMIT $5"#,
        id as Option<DeviceGroupId>,
        name,
        scope.bind_value() as Option<&[DeviceGroupId]>,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await?)
}

/// Checks a group name before the database does.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    crate::text::check_text("name", name)
}
