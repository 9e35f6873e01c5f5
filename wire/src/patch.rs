//! The device's operating system and package inventory.

use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::bounded;
use crate::limits::{self, MAX_PACKAGES};
use crate::{DecodeError, UnixMillis};

/// The patch state of a device: what is installed, what could be upgraded.
///
/// Each report is the full inventory, not a difference: ingest compares it with
/// the stored one and records history only when something changed. A lost or
/// duplicated report therefore never corrupts the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchStatus {
    /// Operating system id, `ID` from os-release (`debian`, `alpine`,
    /// `raspbian`). Key `os`.
    #[serde(rename = "os")]
    pub os_id: String,

    /// Operating system version, `VERSION_ID` from os-release (`12`, `3.20.1`).
    /// Key `ov`.
    #[serde(rename = "ov")]
    pub os_version: String,

    /// The package manager the inventory comes from. Key `pm`.
    #[serde(rename = "pm")]
    pub package_manager: PackageManager,

    /// Every installed package, at most
    /// [`MAX_PACKAGES`](crate::limits::MAX_PACKAGES). Key `p`.
    #[serde(
        rename = "p",
        default,
        deserialize_with = "bounded::vec::<_, _, MAX_PACKAGES>"
    )]
    pub packages: Vec<Package>,

    /// Whether an installed update waits for a reboot (Debian's
    /// `/run/reboot-required`, for example). Key `rr`.
    #[serde(rename = "rr")]
    pub reboot_required: bool,

    /// When the package lists were last refreshed from the repositories
    /// (`apt update`, `apk update`), if known. Candidate versions are only as
    /// fresh as this. Key `lr`.
    #[serde(rename = "lr", default, skip_serializing_if = "Option::is_none")]
    pub lists_refreshed_at: Option<UnixMillis>,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name, with the architecture suffix where the package manager
    /// distinguishes several (`libc6:armhf`). Key `n`.
    #[serde(rename = "n")]
    pub name: String,

    /// Installed version, as the package manager writes it. Key `i`.
    #[serde(rename = "i")]
    pub installed: String,

    /// The version an upgrade would install; absent when the package is up to
    /// date. Key `c`.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,

    /// Whether the candidate version comes from a security repository. Only
    /// meaningful with a candidate. Key `s`, written only when true.
    #[serde(rename = "s", default, skip_serializing_if = "is_false")]
    pub security: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The package manager of a device.
///
/// On the wire a lowercase string. A name this build does not know decodes as
/// [`Other`](Self::Other) with the name, so a newer agent can report a new
/// package manager without being refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PackageManager {
    /// Debian's apt and dpkg (Debian, Ubuntu, Raspberry Pi OS). Wire name `apt`.
    Apt,
    /// Alpine's apk. Wire name `apk`.
    Apk,
    /// opkg (OpenWrt, Yocto). Wire name `opkg`.
    Opkg,
    /// Any other package manager, by name.
    Other(String),
}

impl PackageManager {
    /// The name written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Apt => "apt",
            Self::Apk => "apk",
            Self::Opkg => "opkg",
            Self::Other(name) => name,
        }
    }

    pub(crate) fn from_name(name: &str) -> Self {
        match name {
            "apt" => Self::Apt,
            "apk" => Self::Apk,
            "opkg" => Self::Opkg,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PackageManager {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PackageManager {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(PackageManagerVisitor)
    }
}

struct PackageManagerVisitor;

impl Visitor<'_> for PackageManagerVisitor {
    type Value = PackageManager;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a package manager name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<PackageManager, E> {
        Ok(PackageManager::from_name(name))
    }
}

impl PatchStatus {
    /// Checks counts and string lengths against [`limits`](crate::limits).
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        self.validate_header()?;
        self.packages.iter().try_for_each(Package::validate)
    }

    /// The checks of [`validate`](Self::validate) before those of each package.
    pub(crate) fn validate_header(&self) -> Result<(), DecodeError> {
        limits::check_name("patch.os_id", &self.os_id)?;
        limits::check_name("patch.os_version", &self.os_version)?;
        limits::check_name("patch.package_manager", self.package_manager.as_str())?;
        limits::check_count("patch.packages", self.packages.len(), MAX_PACKAGES)
    }
}

impl Package {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        limits::check_name("package.name", &self.name)?;
        limits::check_name("package.installed", &self.installed)?;
        if let Some(candidate) = &self.candidate {
            limits::check_name("package.candidate", candidate)?;
        }
        Ok(())
    }
}
