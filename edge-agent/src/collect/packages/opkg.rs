//! opkg output (OpenWrt, Yocto/Poky images, many appliances).

use super::{is_package_name, InstalledPackage, SecurityUpdate, Upgrade};
use crate::collect::Parsed;

/// Arguments listing upgradable packages.
pub const OPKG_LIST_UPGRADABLE_ARGS: &[&str] = &["list-upgradable"];
/// Arguments listing installed packages.
pub const OPKG_LIST_INSTALLED_ARGS: &[&str] = &["list-installed"];

/// Splits on the ` - ` separator opkg puts between columns (names and versions may
/// contain `-`, never ` - `).
fn columns(line: &str) -> Vec<&str> {
    line.split(" - ").map(str::trim).collect()
}

fn is_version(text: &str) -> bool {
    !text.is_empty() && !text.contains(char::is_whitespace)
}

/// Parses `opkg list-upgradable`: `name - installed - available`.
pub fn parse_opkg_list_upgradable(text: &str) -> Parsed<Upgrade> {
    Parsed::from_lines(text, |line| {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let [name, installed, available] = columns(line)[..] else {
            return Err("expected 'name - installed - available'".to_owned());
        };
        if !is_package_name(name) || !is_version(installed) || !is_version(available) {
            return Err("bad name or version".to_owned());
        }
        Ok(Some(Upgrade {
            name: name.to_owned(),
            installed_version: Some(installed.to_owned()),
            candidate_version: available.to_owned(),
            architecture: None,
            origins: Vec::new(),
            security: SecurityUpdate::Unknown,
        }))
    })
}

/// Parses `opkg list-installed`: `name - version`.
pub fn parse_opkg_list_installed(text: &str) -> Parsed<InstalledPackage> {
    Parsed::from_lines(text, |line| {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let [name, version] = columns(line)[..] else {
            return Err("expected 'name - version'".to_owned());
        };
        if !is_package_name(name) || !is_version(version) {
            return Err("bad name or version".to_owned());
        }
        Ok(Some(InstalledPackage {
            name: name.to_owned(),
            version: version.to_owned(),
        }))
    })
}
