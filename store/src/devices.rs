//! Devices of a tenant: create, read, list with filters, rename, labels, group, revocation,
//! presence.
//!
//! Reads and changes made for a caller take a [`GroupScope`]: a device outside it does not
//! exist for that caller (not found, not counted). Every change writes its audit event.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;
use sqlx::types::Json;
use time::OffsetDateTime;

use crate::audit::{self, Action, Actor, Target};
use crate::device_groups::{self, GroupScope};
use crate::enrollment_tokens::{Admission, EnrollmentToken};
use crate::text::{check_labels, check_text};
use crate::{revocations, DeviceGroupId, DeviceId, StoreError, TenantId, TenantTx};

/// Longest device name, label key or label value, in bytes.
pub use crate::text::MAX_TEXT_LEN;

/// Most labels a device may carry.
pub use crate::text::MAX_LABELS;

/// Whether a device may connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    /// May connect and send data.
    Active,
    /// Refused at the handshake and by ingest, for good.
    Revoked,
}

impl DeviceStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    /// The status with this name.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(DeviceStatus::Active),
            "revoked" => Ok(DeviceStatus::Revoked),
            other => Err(StoreError::Invalid {
                field: "device status",
                reason: format!("unknown value {other:?}"),
            }),
        }
    }
}

/// What is needed to create a device.
#[derive(Clone, Debug)]
pub struct NewDevice {
    /// Display name.
    pub name: String,
    /// The group it belongs to.
    pub group: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// A device as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its identifier.
    pub id: DeviceId,
    /// Display name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it may connect.
    pub status: DeviceStatus,
    /// Whether it is connected now.
    pub online: bool,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was last connected or heard from.
    pub last_seen_at: Option<OffsetDateTime>,
    /// Its newest patch inventory at a glance; `None` before its first inventory.
    pub patch: Option<PatchGlance>,
}

/// What the fleet list shows of a device's newest patch inventory (`device_patch_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGlance {
    /// Security updates pending.
    pub pending_security_updates: i32,
    /// Whether the device said it needs a reboot.
    pub reboot_required: bool,
    /// When the device took the inventory, by its own clock.
    pub inventory_at: OffsetDateTime,
}

/// A `devices` row as selected: the macros' target, turned into a [`Device`].
struct DeviceRow {
    tenant_id: TenantId,
    device_id: DeviceId,
    name: String,
    device_group: String,
    labels: Json<BTreeMap<String, String>>,
    status: String,
    online: bool,
    created_at: OffsetDateTime,
    last_seen_at: Option<OffsetDateTime>,
    // From the LEFT JOIN of device_patch_status: all NULL or none.
    pending_security_updates: Option<i32>,
    reboot_required: Option<bool>,
    inventory_at: Option<OffsetDateTime>,
}

impl TryFrom<DeviceRow> for Device {
    type Error = StoreError;
    fn try_from(row: DeviceRow) -> Result<Self, StoreError> {
        Ok(Device {
            tenant_id: row.tenant_id,
            id: row.device_id,
            name: row.name,
            group: row.device_group,
            labels: row.labels.0,
            status: DeviceStatus::parse(&row.status)?,
            online: row.online,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            patch: match (
                row.pending_security_updates,
                row.reboot_required,
                row.inventory_at,
            ) {
                (Some(pending), Some(reboot), Some(at)) => Some(PatchGlance {
                    pending_security_updates: pending,
                    reboot_required: reboot,
                    inventory_at: at,
                }),
                _ => None,
            },
        })
    }
}

/// Creates a device in the transaction's tenant with a fresh id, outside enrollment (imports,
/// tests); audited as `device.create`. The group must exist.
pub async fn create(
    tx: &mut TenantTx,
    new: &NewDevice,
    actor: &Actor,
) -> Result<Device, StoreError> {
    let device = insert(tx, DeviceId::new_random(), new).await?;
    audit::append(
        tx,
        actor,
        Action::DeviceCreate,
        &Target::Device(device.id),
        &json!({ "name": device.name, "device_group": device.group }),
    )
    .await?;
    Ok(device)
}

/// A certificate just signed for a device, as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCertificate {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of its validity.
    pub not_before: OffsetDateTime,
    /// End of its validity.
    pub not_after: OffsetDateTime,
}

/// Enrollment's writes, in the transaction that admitted the token: creates the device `id` in
/// the token's group with its labels, records its first certificate and appends the
/// `device.enroll` event, with the token as actor.
pub async fn enroll(
    tx: &mut TenantTx,
    id: DeviceId,
    token: &EnrollmentToken,
    admission: &Admission,
    cert: &SignedCertificate,
    source: IpAddr,
) -> Result<Device, StoreError> {
    let new = NewDevice {
        name: id.to_string(),
        group: token.device_group.clone(),
        labels: token.device_labels.clone(),
    };
    let device = insert(tx, id, &new).await?;
    crate::device_certificates::record(tx, id, cert, Some(token.id)).await?;
    audit::append(
        tx,
        &Actor::EnrollmentToken(token.id),
        Action::DeviceEnroll,
        &Target::Device(id),
        &json!({
            "source_ip": source.to_string(),
            "certificate_serial": cert.serial,
            "not_after": cert.not_after.unix_timestamp(),
            "device_group": token.device_group,
            "token_uses": admission.uses,
        }),
    )
    .await?;
    Ok(device)
}

async fn insert(tx: &mut TenantTx, id: DeviceId, new: &NewDevice) -> Result<Device, StoreError> {
    check_text("name", &new.name)?;
    check_labels("labels", &new.labels)?;
    require_group(tx, &new.group).await?;
    let tenant = tx.tenant();
    sqlx::query_as!(
        DeviceRow,
        r#"INSERT INTO devices AS d (tenant_id, device_id, name, device_group, labels)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING d.tenant_id AS "tenant_id: TenantId", d.device_id AS "device_id: DeviceId",
                     d.name, d.device_group, d.labels AS "labels: Json<BTreeMap<String, String>>",
                     d.status, d.online, d.created_at, d.last_seen_at,
                     NULL::int AS pending_security_updates, NULL::bool AS reboot_required,
                     NULL::timestamptz AS inventory_at"#,
        tenant as TenantId,
        id as DeviceId,
        new.name,
        new.group,
        Json(&new.labels) as _,
    )
    .fetch_one(tx.conn())
    .await?
    .try_into()
}

async fn require_group(tx: &mut TenantTx, name: &str) -> Result<(), StoreError> {
    match device_groups::id_by_name(tx, name).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::Invalid {
            field: "group",
            reason: format!("no device group named {name:?}"),
        }),
    }
}

/// One device of the transaction's tenant, if it exists there (any group: for the device
/// itself, ingest and the broker).
pub async fn get(tx: &mut TenantTx, id: DeviceId) -> Result<Option<Device>, StoreError> {
    get_scoped(tx, id, &GroupScope::All).await
}

/// One device, if it exists in a group of `scope`.
pub async fn get_scoped(
    tx: &mut TenantTx,
    id: DeviceId,
    scope: &GroupScope,
) -> Result<Option<Device>, StoreError> {
    sqlx::query_as!(
        DeviceRow,
        r#"SELECT d.tenant_id AS "tenant_id: TenantId", d.device_id AS "device_id: DeviceId",
                  d.name, d.device_group, d.labels AS "labels: Json<BTreeMap<String, String>>",
                  d.status, d.online, d.created_at, d.last_seen_at,
                  p.security_upgradable_count AS "pending_security_updates?",
                  p.reboot_required AS "reboot_required?", p.recorded_at AS "inventory_at?"
             FROM devices d
             LEFT JOIN device_patch_status p ON p.tenant_id = d.tenant_id AND p.device_id = d.device_id
            WHERE d.device_id = $1
              AND ($2::uuid[] IS NULL OR d.device_group IN
                   (SELECT g.name FROM device_groups g WHERE g.group_id = ANY($2)))"#,
        id as DeviceId,
        scope.bind_value() as Option<&[DeviceGroupId]>,
    )
    .fetch_optional(tx.conn())
    .await?
    .map(Device::try_from)
    .transpose()
}

/// Which devices a listing wants; every field narrows, `None` does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// In this group (by name).
    pub group: Option<String>,
    /// Carrying this label with this value.
    pub label: Option<(String, String)>,
    /// With this status.
    pub status: Option<DeviceStatus>,
    /// Connected now, or not.
    pub online: Option<bool>,
    /// Whose current patch status has security updates pending (or not).
    pub pending_security_updates: Option<bool>,
    /// Last seen before this instant (devices never seen do not match).
    pub last_seen_before: Option<OffsetDateTime>,
    /// Last seen at or after this instant.
    pub last_seen_after: Option<OffsetDateTime>,
    /// Whose name starts with this.
    pub name_prefix: Option<String>,
    /// Whose newest inventory says a reboot is required (or not); devices without an inventory
    /// match neither.
    pub reboot_required: Option<bool>,
    /// Whose name contains this, ignoring case, or whose id is exactly this. At most
    /// [`MAX_SEARCH_LEN`] bytes; `%`, `_` and `\` match themselves.
    pub search: Option<String>,
}

/// Longest [`DeviceFilter::search`], in bytes.
pub const MAX_SEARCH_LEN: usize = 200;

/// An `ILIKE … ESCAPE '\'` pattern matching names that contain `text` literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Devices of the transaction's tenant in `scope` matching `filter`, ordered by id, after
/// `after`, at most `limit`.
pub async fn list(
    tx: &mut TenantTx,
    scope: &GroupScope,
    filter: &DeviceFilter,
    after: Option<DeviceId>,
    limit: i64,
) -> Result<Vec<Device>, StoreError> {
    let label = filter
        .label
        .as_ref()
        .map(|(k, v)| Json(BTreeMap::from([(k.clone(), v.clone())])));
    if let Some(search) = &filter.search {
        if search.len() > MAX_SEARCH_LEN {
            return Err(StoreError::Invalid {
                field: "search",
                reason: format!("longer than {MAX_SEARCH_LEN} bytes"),
            });
        }
    }
    let search_pattern = filter.search.as_deref().map(contains_pattern);
    let search_id = filter
        .search
        .as_deref()
        .and_then(|s| s.parse::<DeviceId>().ok());
    let rows = sqlx::query_as!(
        DeviceRow,
        r#"SELECT d.tenant_id AS "tenant_id: TenantId", d.device_id AS "device_id: DeviceId",
                  d.name, d.device_group, d.labels AS "labels: Json<BTreeMap<String, String>>",
                  d.status, d.online, d.created_at, d.last_seen_at,
                  p.security_upgradable_count AS "pending_security_updates?",
                  p.reboot_required AS "reboot_required?", p.recorded_at AS "inventory_at?"
             FROM devices d
             LEFT JOIN device_patch_status p ON p.tenant_id = d.tenant_id AND p.device_id = d.device_id
          WHERE ($2::uuid[] IS NULL OR d.device_group IN
                 (SELECT g.name FROM device_groups g WHERE g.group_id = ANY($2)))
            AND ($1::uuid IS NULL OR d.device_id > $1)
            AND ($3::text IS NULL OR d.device_group = $3)
            AND ($4::jsonb IS NULL OR d.labels @> $4)
            AND ($5::text IS NULL OR d.status = $5)
            AND ($6::bool IS NULL OR d.online = $6)
            AND ($7::bool IS NULL OR (coalesce(p.security_upgradable_count, 0) > 0) = $7)
            AND ($8::timestamptz IS NULL OR d.last_seen_at < $8)
            AND ($9::timestamptz IS NULL OR d.last_seen_at >= $9)
            AND ($10::text IS NULL OR starts_with(d.name, $10))
            AND ($12::bool IS NULL OR p.reboot_required = $12)
            AND ($13::text IS NULL OR d.name ILIKE $13 ESCAPE '\' OR d.device_id = $14)
          ORDER BY d.device_id LIMIT $11"#,
        after as Option<DeviceId>,
        scope.bind_value() as Option<&[DeviceGroupId]>,
        filter.group.as_deref(),
        label as _,
        filter.status.map(DeviceStatus::as_str),
        filter.online,
        filter.pending_security_updates,
        filter.last_seen_before,
        filter.last_seen_after,
        filter.name_prefix.as_deref(),
        limit,
        filter.reboot_required,
        search_pattern.as_deref(),
        search_id as Option<DeviceId>,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(Device::try_from).collect()
}

/// Renames a device in `scope`.
pub async fn rename(
    tx: &mut TenantTx,
    id: DeviceId,
    name: &str,
    scope: &GroupScope,
    actor: &Actor,
) -> Result<Device, StoreError> {
    check_text("name", name)?;
    let before = get_scoped(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device"))?;
    sqlx::query!(
        "UPDATE devices SET name = $2 WHERE device_id = $1",
        id as DeviceId,
        name,
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::DeviceRename,
        &Target::Device(id),
        &json!({ "from": before.name, "to": name }),
    )
    .await?;
    reread(tx, id).await
}

/// Replaces a device's labels.
pub async fn set_labels(
    tx: &mut TenantTx,
    id: DeviceId,
    labels: &BTreeMap<String, String>,
    scope: &GroupScope,
    actor: &Actor,
) -> Result<Device, StoreError> {
    check_labels("labels", labels)?;
    let before = get_scoped(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device"))?;
    sqlx::query!(
        "UPDATE devices SET labels = $2 WHERE device_id = $1",
        id as DeviceId,
        Json(labels) as _,
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::DeviceLabelsSet,
        &Target::Device(id),
        &json!({ "from": before.labels, "to": labels }),
    )
    .await?;
    reread(tx, id).await
}

/// Moves a device to another group; both must be in `scope`.
pub async fn move_to_group(
    tx: &mut TenantTx,
    id: DeviceId,
    group: &str,
    scope: &GroupScope,
    actor: &Actor,
) -> Result<Device, StoreError> {
    let before = get_scoped(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device"))?;
    let target = device_groups::id_by_name(tx, group).await?;
    let target_in_scope = match (&target, scope) {
        (Some(_), GroupScope::All) => true,
        (Some(id), GroupScope::Only(ids)) => ids.contains(id),
        (None, _) => false,
    };
    if !target_in_scope {
        return Err(StoreError::Invalid {
            field: "group",
            reason: format!("no device group named {group:?}"),
        });
    }
    sqlx::query!(
        "UPDATE devices SET device_group = $2 WHERE device_id = $1",
        id as DeviceId,
        group,
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::DeviceMove,
        &Target::Device(id),
        &json!({ "from": before.group, "to": group }),
    )
    .await?;
    reread(tx, id).await
}

async fn reread(tx: &mut TenantTx, id: DeviceId) -> Result<Device, StoreError> {
    get(tx, id).await?.ok_or(StoreError::NotFound("device"))
}

/// What [`revoke`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRevocation {
    /// The device was active and is now revoked.
    Revoked,
    /// The device had been revoked before; nothing changed but the notification was sent again.
    AlreadyRevoked,
}

/// Revokes a device of the transaction's tenant: sets its status, appends the audit event and
/// queues a notification on [`revocations::CHANNEL`] with `pg_notify`, all in the caller's
/// transaction. Postgres delivers the notification at commit, to every listening fleetd
/// ([`revocations::RevocationListener`]), and not at all on rollback.
/// [`StoreError::NotFound`] when the tenant has no such device.
pub async fn revoke(
    tx: &mut TenantTx,
    id: DeviceId,
    scope: &GroupScope,
    actor: &Actor,
) -> Result<DeviceRevocation, StoreError> {
    let device = get_scoped(tx, id, scope)
        .await?
        .ok_or(StoreError::NotFound("device"))?;
    let outcome = if device.status == DeviceStatus::Revoked {
        DeviceRevocation::AlreadyRevoked
    } else {
        sqlx::query!(
            "UPDATE devices SET status = 'revoked', revoked_at = now() WHERE device_id = $1",
            id as DeviceId
        )
        .execute(tx.conn())
        .await?;
        DeviceRevocation::Revoked
    };
    if outcome == DeviceRevocation::Revoked {
        audit::append(
            tx,
            actor,
            Action::DeviceRevoke,
            &Target::Device(id),
            &json!({}),
        )
        .await?;
    }
    // Sent again for an already revoked device: harmless, and it repairs a missed delivery.
    revocations::notify(tx, id).await?;
    Ok(outcome)
}

/// Whether the device exists in the transaction's tenant and may connect. The broker asks this
/// at every handshake.
pub async fn is_active(tx: &mut TenantTx, id: DeviceId) -> Result<bool, StoreError> {
    let active = sqlx::query_scalar!(
        r#"SELECT status = 'active' AS "active!" FROM devices WHERE device_id = $1"#,
        id as DeviceId
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(active.unwrap_or(false))
}

/// How many presence events [`record_presence`] keeps per device: the newest, the rest trimmed.
/// At a reconnect a minute that is more than half a day of a flapping device, and years of a
/// healthy one.
pub const PRESENCE_HISTORY_KEPT: i64 = 1_000;

/// Records a connect or disconnect: the device's current state and its presence history, in one
/// statement, then trims the history to [`PRESENCE_HISTORY_KEPT`] events. False when the tenant
/// has no such device.
pub async fn record_presence(
    tx: &mut TenantTx,
    id: DeviceId,
    online: bool,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "WITH updated AS (
             UPDATE devices SET online = $2, last_seen_at = $3 WHERE device_id = $1
             RETURNING tenant_id, device_id)
         INSERT INTO device_presence_events (tenant_id, device_id, at, online)
         SELECT tenant_id, device_id, $3, $2 FROM updated",
        id as DeviceId,
        online,
        at,
    )
    .execute(tx.conn())
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query!(
        "DELETE FROM device_presence_events e
          WHERE e.device_id = $1
            AND (e.at, e.event_id) <= (
                SELECT k.at, k.event_id FROM device_presence_events k
                 WHERE k.device_id = $1
                 ORDER BY k.at DESC, k.event_id DESC OFFSET $2 LIMIT 1)",
        id as DeviceId,
        PRESENCE_HISTORY_KEPT,
    )
    .execute(tx.conn())
    .await?;
    Ok(true)
}

/// One connect or disconnect of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    /// Its position among the tenant's presence events (ties of `at` are ordered by it).
    pub event_id: i64,
    /// When the broker saw it.
    pub at: OffsetDateTime,
    /// Connected (true) or disconnected.
    pub online: bool,
}

/// A device's presence events, newest first, before `before` (an event's `(at, event_id)`), at
/// most `limit`. The caller checks that the device is in its scope.
pub async fn presence_history(
    tx: &mut TenantTx,
    id: DeviceId,
    before: Option<(OffsetDateTime, i64)>,
    limit: i64,
) -> Result<Vec<PresenceEvent>, StoreError> {
    let (before_at, before_id) = before.unzip();
    Ok(sqlx::query_as!(
        PresenceEvent,
        "SELECT e.event_id, e.at, e.online FROM device_presence_events e
          WHERE e.device_id = $1
            AND ($2::timestamptz IS NULL OR (e.at, e.event_id) < ($2, $3))
          ORDER BY e.at DESC, e.event_id DESC LIMIT $4",
        id as DeviceId,
        before_at,
        before_id,
        limit,
    )
    .fetch_all(tx.conn())
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_matches_like_metacharacters_literally() {
        assert_eq!(contains_pattern("lab-1"), "%lab-1%");
        assert_eq!(contains_pattern("50%_x\\y"), "%50\\%\\_x\\\\y%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
