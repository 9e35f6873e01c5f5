//! Patch status: one device's (`fleetctl device patch`) and the fleet's (`fleetctl
//! patch-summary`), over HTTPS.

use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use store::DeviceId;
use time::OffsetDateTime;

use super::{show, Ctx};
use crate::error::Failure;
use crate::http;
use crate::output::{self, Fields, Table};
use crate::parse;

/// `fleetctl patch-summary`.
#[derive(Args)]
pub struct SummaryArgs {
    /// An inventory older than this counts as stale (default: the server's, 7d).
    #[arg(long, value_parser = parse::duration)]
    stale_after: Option<Duration>,
}

#[derive(Deserialize)]
struct PatchStatusView {
    device_id: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    recorded_at: Option<OffsetDateTime>,
    inventory_age_secs: Option<u64>,
    os_id: Option<String>,
    os_version: Option<String>,
    package_manager: Option<String>,
    reboot_required: Option<bool>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    lists_refreshed_at: Option<OffsetDateTime>,
    package_count: Option<u64>,
    upgradable_count: Option<u64>,
    security_upgradable_count: Option<u64>,
    #[serde(default)]
    packages: Vec<PackageView>,
}

#[derive(Deserialize)]
struct PackageView {
    name: String,
    installed: Option<String>,
    candidate: Option<String>,
    #[serde(default)]
    security: bool,
}

#[derive(Deserialize)]
struct SummaryView {
    devices: u64,
    pending_security_updates: u64,
    reboot_required: u64,
    stale_inventories: u64,
    never_reported: u64,
    #[serde(default)]
    by_group: Vec<GroupSummaryView>,
}

#[derive(Deserialize)]
struct GroupSummaryView {
    group: String,
    devices: u64,
    pending_security_updates: u64,
    reboot_required: u64,
    stale_inventories: u64,
    never_reported: u64,
}

/// `fleetctl device patch ID`: the device's current inventory, with the packages that have an
/// upgrade (`--json` has every package).
pub async fn device(ctx: &Ctx, id: DeviceId) -> Result<(), Failure> {
    let api = ctx.api("device patch").await?;
    let value = api
        .get(&format!("v1/devices/{id}/patch-status"), &[])
        .await?;
    show(ctx, &value.clone(), || {
        let p: PatchStatusView = http::decode(value)?;
        let os = match (&p.os_id, &p.os_version) {
            (Some(id), Some(version)) => format!("{id} {version}"),
            (Some(id), None) => id.clone(),
            _ => "-".to_owned(),
        };
        let mut fields = Fields::new();
        fields
            .field("device", p.device_id)
            .field("recorded", output::opt_time(p.recorded_at))
            .field(
                "inventory age",
                output::opt(
                    p.inventory_age_secs
                        .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string()),
                ),
            )
            .field("os", os)
            .field("package manager", output::opt(p.package_manager))
            .field(
                "reboot required",
                output::opt(p.reboot_required.map(output::yes_no)),
            )
            .field("lists refreshed", output::opt_time(p.lists_refreshed_at))
            .field("packages", output::opt(p.package_count))
            .field("upgradable", output::opt(p.upgradable_count))
            .field(
                "security upgradable",
                output::opt(p.security_upgradable_count),
            );
        let mut text = fields.render();
        let mut table = Table::new(&["PACKAGE", "INSTALLED", "CANDIDATE", "SECURITY"]);
        for package in p.packages.into_iter().filter(|p| p.candidate.is_some()) {
            table.row(vec![
                package.name,
                output::opt(package.installed),
                output::opt(package.candidate),
                output::yes_no(package.security),
            ]);
        }
        text.push_str("\nupgradable packages:\n");
        text.push_str(&table.render());
        Ok(text)
    })
}

/// `fleetctl patch-summary`.
pub async fn summary(ctx: &Ctx, args: SummaryArgs) -> Result<(), Failure> {
    let api = ctx.api("patch-summary").await?;
    let query: Vec<(&str, String)> = args
        .stale_after
        .map(|d| ("stale_after", humantime::format_duration(d).to_string()))
        .into_iter()
        .collect();
    let value = api.get("v1/patch-summary", &query).await?;
    show(ctx, &value.clone(), || {
        let s: SummaryView = http::decode(value)?;
        let mut fields = Fields::new();
        fields
            .field("devices", s.devices.to_string())
            .field(
                "pending security updates",
                s.pending_security_updates.to_string(),
            )
            .field("reboot required", s.reboot_required.to_string())
            .field("stale inventories", s.stale_inventories.to_string())
            .field("never reported", s.never_reported.to_string());
        let mut table = Table::new(&[
            "GROUP",
            "DEVICES",
            "SECURITY UPDATES",
            "REBOOT",
            "STALE",
            "NEVER REPORTED",
        ]);
        for g in s.by_group {
            table.row(vec![
                g.group,
                g.devices.to_string(),
                g.pending_security_updates.to_string(),
                g.reboot_required.to_string(),
                g.stale_inventories.to_string(),
                g.never_reported.to_string(),
            ]);
        }
        let mut text = fields.render();
        text.push('\n');
        text.push_str(&table.render());
        Ok(text)
    })
}
