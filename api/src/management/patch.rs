//! `/v1/devices/{id}/patch-status` and `/v1/patch-summary`: what the devices' newest package
//! inventories say, for one device and for the caller's part of the fleet.
//!
//! Both answer only about devices in the caller's group scope: a device outside it is not found,
//! and the summary neither counts nor names groups outside it.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Serialize;
use store::patch_inventory::{
    self, CurrentPatchStatus, GroupPatchSummary, PackageRow, PendingPackage,
};
use store::{devices, DeviceId};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{rfc3339, rfc3339_opt};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{invalid, NoQuery, PathId, Query, Resource};
use crate::Ctx;

/// How many packages `most_pending_packages` lists.
const MOST_PENDING_PACKAGES: i64 = 20;

/// `stale_after` when the request does not say.
const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// One installed package.
#[derive(Debug, Serialize, ToSchema)]
pub struct PackageView {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub installed: String,
    /// The version an upgrade would install; `null`: up to date.
    pub candidate: Option<String>,
    /// Whether the candidate is a security update.
    pub security: bool,
}

impl From<PackageRow> for PackageView {
    fn from(p: PackageRow) -> Self {
        Self {
            name: p.name,
            installed: p.installed,
            candidate: p.candidate,
            security: p.security,
        }
    }
}

/// A device's current patch status: its newest inventory report.
#[derive(Debug, Serialize, ToSchema)]
pub struct PatchStatusView {
    /// The device.
    #[schema(value_type = String, format = Uuid)]
    pub device_id: DeviceId,
    /// When the device took the inventory, by its own clock (RFC 3339).
    pub recorded_at: String,
    /// Seconds from `recorded_at` to now; negative when the device's clock is ahead.
    pub inventory_age_secs: i64,
    /// OS id, e.g. `debian`.
    pub os_id: String,
    /// OS version, e.g. `12`.
    pub os_version: String,
    /// Package manager, e.g. `apt`.
    pub package_manager: String,
    /// Whether a reboot is pending.
    pub reboot_required: bool,
    /// When the device last refreshed its package lists; `null`: it did not say.
    pub lists_refreshed_at: Option<String>,
    /// Installed packages.
    pub package_count: i32,
    /// Packages with a candidate version.
    pub upgradable_count: i32,
    /// Packages whose candidate is a security update.
    pub security_upgradable_count: i32,
    /// Every installed package, by name (at most 10,000, what one report may hold).
    pub packages: Vec<PackageView>,
}

impl PatchStatusView {
    fn new(device_id: DeviceId, status: CurrentPatchStatus, now: OffsetDateTime) -> Self {
        Self {
            device_id,
            recorded_at: rfc3339(status.recorded_at),
            inventory_age_secs: (now - status.recorded_at).whole_seconds(),
            os_id: status.os_id,
            os_version: status.os_version,
            package_manager: status.package_manager,
            reboot_required: status.reboot_required,
            lists_refreshed_at: rfc3339_opt(status.lists_refreshed_at),
            package_count: status.package_count,
            upgradable_count: status.upgradable_count,
            security_upgradable_count: status.security_upgradable_count,
            packages: status.packages.into_iter().map(PackageView::from).collect(),
        }
    }
}

/// The patch posture of a set of devices.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct PatchCounts {
    /// Devices.
    pub devices: i64,
    /// Devices with at least one security update pending.
    pub pending_security_updates: i64,
    /// Devices waiting for a reboot.
    pub reboot_required: i64,
    /// Devices whose newest inventory is older than `stale_after`.
    pub stale_inventories: i64,
    /// Devices that never reported an inventory.
    pub never_reported: i64,
}

impl PatchCounts {
    fn add(&mut self, other: &PatchCounts) {
        self.devices = self.devices.saturating_add(other.devices);
        self.pending_security_updates = self
            .pending_security_updates
            .saturating_add(other.pending_security_updates);
        self.reboot_required = self.reboot_required.saturating_add(other.reboot_required);
        self.stale_inventories = self
            .stale_inventories
            .saturating_add(other.stale_inventories);
        self.never_reported = self.never_reported.saturating_add(other.never_reported);
    }
}

/// The patch posture of one device group.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupPatchSummaryView {
    /// The group's name.
    pub group: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: PatchCounts,
}

impl From<GroupPatchSummary> for GroupPatchSummaryView {
    fn from(g: GroupPatchSummary) -> Self {
        Self {
            group: g.group,
            counts: PatchCounts {
                devices: g.devices,
                pending_security_updates: g.pending_security_updates,
                reboot_required: g.reboot_required,
                stale_inventories: g.stale_inventories,
                never_reported: g.never_reported,
            },
        }
    }
}

/// A package with an update pending on some of the caller's devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingPackageView {
    /// Package name.
    pub name: String,
    /// Devices whose newest inventory has an update of it pending.
    pub devices: i64,
    /// Of those, the devices on which the update is a security update.
    pub security_devices: i64,
}

impl From<PendingPackage> for PendingPackageView {
    fn from(p: PendingPackage) -> Self {
        Self {
            name: p.name,
            devices: p.devices,
            security_devices: p.security_devices,
        }
    }
}

/// The patch posture of the caller's devices: totals, per group, and the packages most often
/// pending.
#[derive(Debug, Serialize, ToSchema)]
pub struct PatchSummaryView {
    /// Totals over every device the caller may see.
    #[serde(flatten)]
    pub totals: PatchCounts,
    /// Per group the caller may see that has devices, by name.
    pub by_group: Vec<GroupPatchSummaryView>,
    /// The 20 packages pending on the most of the caller's devices: security updates first
    /// (by `security_devices`), then by `devices`, then by name.
    pub most_pending_packages: Vec<PendingPackageView>,
}

/// Shows a device's current patch status.
///
/// From its newest inventory report. 404 when the device is not visible to the caller, or has
/// not reported an inventory yet.
#[utoipa::path(get, path = "/v1/devices/{id}/patch-status", tag = "patch",
    params(("id" = String, Path, format = Uuid, description = "the device's id")),
    responses((status = 200, body = PatchStatusView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn device(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceId>,
) -> Result<Json<PatchStatusView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    devices::get_scoped(&mut tx, id, caller.scope())
        .await?
        .ok_or_else(DeviceId::not_found)?;
    let status = patch_inventory::current(&mut tx, id)
        .await?
        .ok_or(ApiError::ResourceNotFound("patch status"))?;
    tx.commit().await?;
    Ok(Json(PatchStatusView::new(
        id,
        status,
        OffsetDateTime::now_utc(),
    )))
}

/// Summarizes the patch posture of the caller's devices.
///
/// In total and per group, over the devices the caller may see only: a group-scoped key learns
/// nothing, not even a count, about other groups.
#[utoipa::path(get, path = "/v1/patch-summary", tag = "patch",
    params(("stale_after" = Option<String>, Query,
            description = "an inventory recorded longer ago than this is stale (humantime, e.g. 36h; default 7d)")),
    responses((status = 200, body = PatchSummaryView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn summary(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<PatchSummaryView>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let stale_after = query
        .duration("stale_after")?
        .unwrap_or(DEFAULT_STALE_AFTER);
    query.finish()?;
    let stale_before = stale_before(OffsetDateTime::now_utc(), stale_after)?;
    let mut tx = caller.begin(&ctx).await?;
    let groups = patch_inventory::summary(&mut tx, caller.scope(), stale_before).await?;
    let packages =
        patch_inventory::most_pending_packages(&mut tx, caller.scope(), MOST_PENDING_PACKAGES)
            .await?;
    tx.commit().await?;
    Ok(Json(summarize(groups, packages)))
}

/// The instant before which an inventory is stale.
fn stale_before(now: OffsetDateTime, stale_after: Duration) -> Result<OffsetDateTime, ApiError> {
    time::Duration::try_from(stale_after)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .ok_or_else(|| invalid("stale_after", "is too long"))
}

fn summarize(groups: Vec<GroupPatchSummary>, packages: Vec<PendingPackage>) -> PatchSummaryView {
    let by_group: Vec<GroupPatchSummaryView> = groups.into_iter().map(Into::into).collect();
    let mut totals = PatchCounts::default();
    for group in &by_group {
        totals.add(&group.counts);
    }
    PatchSummaryView {
        totals,
        by_group,
        most_pending_packages: packages.into_iter().map(Into::into).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, devices: i64, never_reported: i64) -> GroupPatchSummary {
        GroupPatchSummary {
            group: name.into(),
            devices,
            pending_security_updates: 1,
            reboot_required: 0,
            stale_inventories: 2,
            never_reported,
        }
    }

    #[test]
    fn totals_add_up_the_groups_and_serialize_flat() {
        let pending = PendingPackage {
            name: "openssl".into(),
            devices: 2,
            security_devices: 1,
        };
        let view = summarize(
            vec![group("default", 5, 1), group("edge", 3, 0)],
            vec![pending],
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["devices"], 8);
        assert_eq!(json["pending_security_updates"], 2);
        assert_eq!(json["stale_inventories"], 4);
        assert_eq!(json["never_reported"], 1);
        assert_eq!(json["by_group"][1]["group"], "edge");
        assert_eq!(json["by_group"][1]["devices"], 3);
        assert_eq!(json["most_pending_packages"][0]["name"], "openssl");
        assert_eq!(json["most_pending_packages"][0]["security_devices"], 1);
        let empty = serde_json::to_value(summarize(Vec::new(), Vec::new())).unwrap();
        assert_eq!(empty["devices"], 0);
        assert_eq!(empty["by_group"], serde_json::json!([]));
    }

    #[test]
    fn stale_after_is_counted_back_from_now_and_bounded() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(
            stale_before(now, Duration::from_secs(60)).unwrap(),
            now - time::Duration::minutes(1)
        );
        assert!(stale_before(now, Duration::from_secs(u64::MAX)).is_err());
    }
}
