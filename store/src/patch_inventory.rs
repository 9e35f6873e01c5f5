//! Each device's current patch state (OS, package manager, packages with candidate versions) and
//! the history of its changes.
//!
//! Every report is a full inventory. The newest report (by the device's clock, then seq) wins; a
//! report identical to the current state (same content hash) only moves the "as of" columns; a
//! different one rewrites the changed packages and appends one history row with the difference.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use time::OffsetDateTime;

use crate::device_groups::GroupScope;
use crate::{DeviceGroupId, DeviceId, StoreError, TenantId, TenantTx};

/// One package of a report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageRow {
    /// Package name (unique within a report; a repeated name keeps its last entry).
    pub name: String,
    /// Installed version.
    pub installed: String,
    /// Version an upgrade would install, if any.
    pub candidate: Option<String>,
    /// Whether the candidate is a security update.
    pub security: bool,
}

impl From<&wire::Package> for PackageRow {
    /// A package as a device reported it.
    fn from(package: &wire::Package) -> Self {
        Self {
            name: package.name.clone(),
            installed: package.installed.clone(),
            candidate: package.candidate.clone(),
            security: package.security,
        }
    }
}

/// A patch status report, as ingest hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchReport {
    /// The record's sequence number.
    pub seq: i64,
    /// The device's clock.
    pub recorded_at: OffsetDateTime,
    /// When ingest received it.
    pub received_at: OffsetDateTime,
    /// OS id (`debian`).
    pub os_id: String,
    /// OS version (`12`).
    pub os_version: String,
    /// Package manager name (`apt`).
    pub package_manager: String,
    /// Whether a reboot is pending.
    pub reboot_required: bool,
    /// When the package lists were last refreshed.
    pub lists_refreshed_at: Option<OffsetDateTime>,
    /// Every installed package.
    pub packages: Vec<PackageRow>,
}

/// What [`apply`] did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The device already has a newer report: nothing changed.
    Stale,
    /// Same inventory as the current one: only the "as of" columns moved.
    Unchanged,
    /// The inventory changed (or is the first): packages rewritten, one history row appended.
    Changed,
}

struct Current {
    seq: i64,
    recorded_at: OffsetDateTime,
    content_hash: Vec<u8>,
    os: Value,
}

/// Applies a newly stored report to the device's inventory.
pub async fn apply(
    tx: &mut TenantTx,
    device: DeviceId,
    mut report: PatchReport,
) -> Result<Applied, StoreError> {
    normalize(&mut report.packages);
    let current = current_summary(tx, device).await?;
    if let Some(current) = &current {
        if (current.recorded_at, current.seq) >= (report.recorded_at, report.seq) {
            return Ok(Applied::Stale);
        }
    }
    let hash = content_hash(&report);
    match current {
        Some(current) if current.content_hash == hash => {
            touch_status(tx, device, &report).await?;
            Ok(Applied::Unchanged)
        }
        Some(current) => {
            let old = packages(tx, device).await?;
            let mut changes = package_changes(&old, &report.packages);
            if current.os != os_summary(&report) {
                changes["os"] = json!({ "from": current.os, "to": os_summary(&report) });
            }
            rewrite_packages(tx, device, &old, &report.packages).await?;
            record_change(tx, device, &report, &hash, &changes).await?;
            Ok(Applied::Changed)
        }
        None => {
            rewrite_packages(tx, device, &[], &report.packages).await?;
            record_change(tx, device, &report, &hash, &json!({ "initial": true })).await?;
            Ok(Applied::Changed)
        }
    }
}

/// The device's history rows, oldest first: (seq, changes).
pub async fn history(tx: &mut TenantTx, device: DeviceId) -> Result<Vec<(i64, Value)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT seq, changes AS "changes: Json<Value>" FROM device_patch_history
            WHERE device_id = $1 ORDER BY recorded_at, seq"#,
        device as DeviceId,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.seq, row.changes.0))
        .collect())
}

/// Sorts by name and keeps the last entry of a repeated name.
fn normalize(packages: &mut Vec<PackageRow>) {
    let by_name: BTreeMap<String, PackageRow> = packages
        .drain(..)
        .map(|package| (package.name.clone(), package))
        .collect();
    packages.extend(by_name.into_values());
}

/// SHA-256 over a length-prefixed encoding of everything but the timestamps.
fn content_hash(report: &PatchReport) -> Vec<u8> {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(report.os_id.as_bytes());
    field(report.os_version.as_bytes());
    field(report.package_manager.as_bytes());
    field(&[u8::from(report.reboot_required)]);
    for package in &report.packages {
        field(package.name.as_bytes());
        field(package.installed.as_bytes());
        field(
            package
                .candidate
                .as_deref()
                .unwrap_or("\u{0}none")
                .as_bytes(),
        );
        field(&[u8::from(package.security)]);
    }
    hasher.finalize().to_vec()
}

fn os_summary(report: &PatchReport) -> Value {
    json!({
        "os_id": report.os_id,
        "os_version": report.os_version,
        "package_manager": report.package_manager,
        "reboot_required": report.reboot_required,
    })
}

fn package_json(package: &PackageRow) -> Value {
    json!({
        "installed": package.installed,
        "candidate": package.candidate,
        "security": package.security,
    })
}

/// `{"added": [...], "removed": [...], "changed": [...]}` between two sorted package lists.
fn package_changes(old: &[PackageRow], new: &[PackageRow]) -> Value {
    let old_by_name: BTreeMap<&str, &PackageRow> =
        old.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_by_name: BTreeMap<&str, &PackageRow> =
        new.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (name, package) in &new_by_name {
        match old_by_name.get(name) {
            None => added.push(json!({ "name": name, "to": package_json(package) })),
            Some(before) if *before != *package => changed.push(json!({
                "name": name,
                "from": package_json(before),
                "to": package_json(package),
            })),
            Some(_) => {}
        }
    }
    let removed: Vec<&str> = old_by_name
        .keys()
        .filter(|name| !new_by_name.contains_key(*name))
        .copied()
        .collect();
    json!({ "added": added, "removed": removed, "changed": changed })
}

async fn current_summary(
    tx: &mut TenantTx,
    device: DeviceId,
) -> Result<Option<Current>, StoreError> {
    let row = sqlx::query!(
        "SELECT seq, recorded_at, content_hash, os_id, os_version, package_manager, reboot_required
           FROM device_patch_status WHERE device_id = $1",
        device as DeviceId,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(|row| Current {
        seq: row.seq,
        recorded_at: row.recorded_at,
        content_hash: row.content_hash,
        os: json!({
            "os_id": row.os_id,
            "os_version": row.os_version,
            "package_manager": row.package_manager,
            "reboot_required": row.reboot_required,
        }),
    }))
}

async fn packages(tx: &mut TenantTx, device: DeviceId) -> Result<Vec<PackageRow>, StoreError> {
    Ok(sqlx::query_as!(
        PackageRow,
        "SELECT name, installed, candidate, security FROM device_packages
          WHERE device_id = $1 ORDER BY name",
        device as DeviceId,
    )
    .fetch_all(tx.conn())
    .await?)
}

async fn rewrite_packages(
    tx: &mut TenantTx,
    device: DeviceId,
    old: &[PackageRow],
    new: &[PackageRow],
) -> Result<(), StoreError> {
    let new_names: std::collections::BTreeSet<&str> = new.iter().map(|p| p.name.as_str()).collect();
    let removed: Vec<&str> = old
        .iter()
        .map(|p| p.name.as_str())
        .filter(|name| !new_names.contains(name))
        .collect();
    if !removed.is_empty() {
        sqlx::query!(
            "DELETE FROM device_packages WHERE device_id = $1 AND name = ANY ($2::text[])",
            device as DeviceId,
            &removed as &[&str],
        )
        .execute(tx.conn())
        .await?;
    }
    let old_set: std::collections::BTreeSet<&PackageRow> = old.iter().collect();
    let upserts: Vec<&PackageRow> = new.iter().filter(|p| !old_set.contains(p)).collect();
    if upserts.is_empty() {
        return Ok(());
    }
    let tenant = tx.tenant();
    let names: Vec<&str> = upserts.iter().map(|p| p.name.as_str()).collect();
    let installed: Vec<&str> = upserts.iter().map(|p| p.installed.as_str()).collect();
    let candidates: Vec<Option<&str>> = upserts.iter().map(|p| p.candidate.as_deref()).collect();
    let security: Vec<bool> = upserts.iter().map(|p| p.security).collect();
    sqlx::query!(
        "INSERT INTO device_packages (tenant_id, device_id, name, installed, candidate, security)
         SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[], $6::bool[])
         ON CONFLICT (tenant_id, device_id, name) DO UPDATE
            SET installed = EXCLUDED.installed, candidate = EXCLUDED.candidate,
                security = EXCLUDED.security",
        tenant as TenantId,
        device as DeviceId,
        &names as &[&str],
        &installed as &[&str],
        &candidates as &[Option<&str>],
        &security,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

struct Counts {
    packages: i32,
    upgradable: i32,
    security: i32,
}

fn counts(report: &PatchReport) -> Counts {
    let upgradable = report
        .packages
        .iter()
        .filter(|p| p.candidate.is_some())
        .count();
    let security = report
        .packages
        .iter()
        .filter(|p| p.candidate.is_some() && p.security)
        .count();
    // Reports hold at most 10,000 packages (wire's limit): these fit an i32.
    let as_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    Counts {
        packages: as_i32(report.packages.len()),
        upgradable: as_i32(upgradable),
        security: as_i32(security),
    }
}

/// Records a changed (or first) inventory: the device's status row and one history row with
/// `changes`, in one statement.
async fn record_change(
    tx: &mut TenantTx,
    device: DeviceId,
    report: &PatchReport,
    hash: &[u8],
    changes: &Value,
) -> Result<(), StoreError> {
    let tenant = tx.tenant();
    let counts = counts(report);
    sqlx::query!(
        "WITH status AS (
             INSERT INTO device_patch_status (tenant_id, device_id, seq, recorded_at, received_at,
                    os_id, os_version, package_manager, reboot_required, lists_refreshed_at,
                    package_count, upgradable_count, security_upgradable_count, content_hash,
                    changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $4)
             ON CONFLICT (tenant_id, device_id) DO UPDATE SET
                    seq = EXCLUDED.seq, recorded_at = EXCLUDED.recorded_at,
                    received_at = EXCLUDED.received_at, os_id = EXCLUDED.os_id,
                    os_version = EXCLUDED.os_version, package_manager = EXCLUDED.package_manager,
                    reboot_required = EXCLUDED.reboot_required,
                    lists_refreshed_at = EXCLUDED.lists_refreshed_at,
                    package_count = EXCLUDED.package_count,
                    upgradable_count = EXCLUDED.upgradable_count,
                    security_upgradable_count = EXCLUDED.security_upgradable_count,
                    content_hash = EXCLUDED.content_hash, changed_at = EXCLUDED.changed_at
         )
         INSERT INTO device_patch_history (tenant_id, device_id, seq, recorded_at, received_at,
                os_id, os_version, package_manager, reboot_required, package_count,
                upgradable_count, security_upgradable_count, changes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12, $13, $15)
         ON CONFLICT DO NOTHING",
        tenant as TenantId,
        device as DeviceId,
        report.seq,
        report.recorded_at,
        report.received_at,
        report.os_id,
        report.os_version,
        report.package_manager,
        report.reboot_required,
        report.lists_refreshed_at,
        counts.packages,
        counts.upgradable,
        counts.security,
        hash,
        Json(changes) as _,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

async fn touch_status(
    tx: &mut TenantTx,
    device: DeviceId,
    report: &PatchReport,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE device_patch_status
            SET seq = $2, recorded_at = $3, received_at = $4, lists_refreshed_at = $5
          WHERE device_id = $1",
        device as DeviceId,
        report.seq,
        report.recorded_at,
        report.received_at,
        report.lists_refreshed_at,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A device's current patch status as the management API shows it: the newest report's
/// inventory with its counts and times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentPatchStatus {
    /// Seq of the report it comes from.
    pub seq: i64,
    /// Its device clock.
    pub recorded_at: OffsetDateTime,
    /// When ingest received it.
    pub received_at: OffsetDateTime,
    /// OS id.
    pub os_id: String,
    /// OS version.
    pub os_version: String,
    /// Package manager.
    pub package_manager: String,
    /// Whether a reboot is pending.
    pub reboot_required: bool,
    /// When the device last refreshed its package lists, if it said.
    pub lists_refreshed_at: Option<OffsetDateTime>,
    /// Installed packages.
    pub package_count: i32,
    /// Packages with a candidate version.
    pub upgradable_count: i32,
    /// Packages whose candidate is a security update.
    pub security_upgradable_count: i32,
    /// When the inventory last changed (device clock of that report).
    pub changed_at: OffsetDateTime,
    /// Packages, by name: at most wire's `MAX_PACKAGES` (10,000), what one report may hold.
    pub packages: Vec<PackageRow>,
}

/// The device's current patch status with counts and times, if it ever reported one. The
/// caller checks first that the device is visible to it ([`crate::devices::get_scoped`]).
pub async fn current(
    tx: &mut TenantTx,
    device: DeviceId,
) -> Result<Option<CurrentPatchStatus>, StoreError> {
    let row = sqlx::query!(
        "SELECT seq, recorded_at, received_at, os_id, os_version, package_manager,
                reboot_required, lists_refreshed_at, package_count, upgradable_count,
                security_upgradable_count, changed_at
           FROM device_patch_status WHERE device_id = $1",
        device as DeviceId,
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(CurrentPatchStatus {
        seq: row.seq,
        recorded_at: row.recorded_at,
        received_at: row.received_at,
        os_id: row.os_id,
        os_version: row.os_version,
        package_manager: row.package_manager,
        reboot_required: row.reboot_required,
        lists_refreshed_at: row.lists_refreshed_at,
        package_count: row.package_count,
        upgradable_count: row.upgradable_count,
        security_upgradable_count: row.security_upgradable_count,
        changed_at: row.changed_at,
        packages: packages(tx, device).await?,
    }))
}

/// Patch posture of the devices of one group, as counted by [`summary`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupPatchSummary {
    /// The group's name.
    pub group: String,
    /// Devices in the group.
    pub devices: i64,
    /// Devices whose current inventory has at least one security update pending.
    pub pending_security_updates: i64,
    /// Devices whose current inventory says a reboot is pending.
    pub reboot_required: i64,
    /// Devices whose current inventory was recorded before `stale_before`.
    pub stale_inventories: i64,
    /// Devices that never reported an inventory.
    pub never_reported: i64,
}

/// Per group, by name, the patch posture of the devices in `scope`: one query, one row per
/// group that has devices. Nothing about devices outside `scope` is read or counted.
/// Revoked devices count like any other.
pub async fn summary(
    tx: &mut TenantTx,
    scope: &GroupScope,
    stale_before: OffsetDateTime,
) -> Result<Vec<GroupPatchSummary>, StoreError> {
    // The scope condition is the one of devices::list, with the scope bound as $2.
    Ok(sqlx::query_as!(
        GroupPatchSummary,
        r#"SELECT d.device_group AS "group",
                count(*) AS "devices!",
                count(*) FILTER (WHERE p.security_upgradable_count > 0)
                    AS "pending_security_updates!",
                count(*) FILTER (WHERE p.reboot_required) AS "reboot_required!",
                count(*) FILTER (WHERE p.recorded_at < $1) AS "stale_inventories!",
                count(*) FILTER (WHERE p.device_id IS NULL) AS "never_reported!"
           FROM devices d
           LEFT JOIN device_patch_status p
                  ON p.tenant_id = d.tenant_id AND p.device_id = d.device_id
          WHERE ($2::uuid[] IS NULL OR d.device_group IN
                (SELECT g.name FROM device_groups g WHERE g.group_id = ANY($2)))
          GROUP BY d.device_group
          ORDER BY d.device_group"#,
        stale_before,
        scope.bind_value() as Option<&[DeviceGroupId]>,
    )
    .fetch_all(tx.conn())
    .await?)
}

/// A package with an update pending on some devices, as counted by [`most_pending_packages`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPackage {
    /// The package's name.
    pub name: String,
    /// Devices whose current inventory has an update of it pending.
    pub devices: i64,
    /// Of those, the devices on which that update is a security update.
    pub security_devices: i64,
}

/// The `limit` packages pending on the most devices in `scope`, from each device's current
/// inventory: security updates first, then by devices, then by name. One query; nothing about
/// devices outside `scope` is read or counted.
pub async fn most_pending_packages(
    tx: &mut TenantTx,
    scope: &GroupScope,
    limit: i64,
) -> Result<Vec<PendingPackage>, StoreError> {
    // The scope condition is the one of `summary`, with the scope bound as $1.
    Ok(sqlx::query_as!(
        PendingPackage,
        r#"SELECT k.name,
                count(*) AS "devices!",
                count(*) FILTER (WHERE k.security) AS "security_devices!"
           FROM device_packages k
           JOIN devices d ON d.tenant_id = k.tenant_id AND d.device_id = k.device_id
          WHERE k.candidate IS NOT NULL
            AND ($1::uuid[] IS NULL OR d.device_group IN
                (SELECT g.name FROM device_groups g WHERE g.group_id = ANY($1)))
          GROUP BY k.name
          ORDER BY 3 DESC, 2 DESC, k.name
          LIMIT $2"#,
        scope.bind_value() as Option<&[DeviceGroupId]>,
        limit,
    )
    .fetch_all(tx.conn())
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, installed: &str, candidate: Option<&str>) -> PackageRow {
        PackageRow {
            name: name.into(),
            installed: installed.into(),
            candidate: candidate.map(Into::into),
            security: false,
        }
    }

    fn report(packages: Vec<PackageRow>) -> PatchReport {
        PatchReport {
            seq: 1,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            received_at: OffsetDateTime::UNIX_EPOCH,
            os_id: "debian".into(),
            os_version: "12".into(),
            package_manager: "apt".into(),
            reboot_required: false,
            lists_refreshed_at: None,
            packages,
        }
    }

    #[test]
    fn the_hash_ignores_order_and_timestamps_but_not_content() {
        let mut a = report(vec![package("b", "1", None), package("a", "1", Some("2"))]);
        let mut b = report(vec![package("a", "1", Some("2")), package("b", "1", None)]);
        normalize(&mut a.packages);
        normalize(&mut b.packages);
        b.recorded_at = OffsetDateTime::now_utc();
        b.seq = 7;
        assert_eq!(content_hash(&a), content_hash(&b));
        b.packages[0].candidate = None;
        assert_ne!(content_hash(&a), content_hash(&b));
    }

    #[test]
    fn a_repeated_package_name_keeps_the_last_entry() {
        let mut packages = vec![package("a", "1", None), package("a", "2", None)];
        normalize(&mut packages);
        assert_eq!(packages, vec![package("a", "2", None)]);
    }

    #[test]
    fn changes_list_added_removed_and_changed_packages() {
        let old = vec![package("a", "1", None), package("b", "1", Some("2"))];
        let new = vec![package("b", "2", None), package("c", "1", None)];
        let changes = package_changes(&old, &new);
        assert_eq!(changes["removed"], json!(["a"]));
        assert_eq!(changes["added"][0]["name"], "c");
        assert_eq!(changes["changed"][0]["name"], "b");
        assert_eq!(changes["changed"][0]["from"]["installed"], "1");
        assert_eq!(changes["changed"][0]["to"]["installed"], "2");
    }
}
