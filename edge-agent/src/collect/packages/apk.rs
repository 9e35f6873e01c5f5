//! apk output (Alpine Linux, postmarketOS).

use super::{InstalledPackage, SecurityUpdate, Upgrade};
use crate::collect::Parsed;

/// Arguments listing upgradable packages: `apk version -l '<'` (no shell: no quotes).
pub const APK_VERSION_ARGS: &[&str] = &["version", "-l", "<"];
/// Arguments listing installed packages as `name-version-rN`.
pub const APK_INFO_ARGS: &[&str] = &["info", "-v"];

/// Splits `name-version-rN` (`py3-foo-1.2.3-r0` → `py3-foo`, `1.2.3-r0`): apk versions
/// always end in `-r<release>` and start with a digit, names may contain `-`.
pub fn split_apk_name_version(text: &str) -> Option<(&str, &str)> {
    let mut parts = text.rsplitn(3, '-');
    let release = parts.next()?;
    let version = parts.next()?;
    let name = parts.next()?;
    let release_ok = release.len() > 1
        && release.starts_with('r')
        && release[1..].bytes().all(|b| b.is_ascii_digit());
    let version_ok = version.starts_with(|c: char| c.is_ascii_digit());
    (release_ok && version_ok && super::is_package_name(name))
        .then(|| (name, &text[name.len() + 1..]))
}

/// Parses `apk version` / `apk version -l '<'`: after the
/// `Installed: Available:` header, `name-version-rN  OP  available` where OP is `<`
/// (upgrade available), `=`, `>` or `?`. Only `<` lines become upgrades; `WARNING:` and
/// `fetch` lines are skipped.
pub fn parse_apk_version(text: &str) -> Parsed<Upgrade> {
    Parsed::from_lines(text, |line| {
        let trimmed = line.trim();
        if trimmed.is_empty()
            || trimmed.starts_with("Installed:")
            || trimmed.starts_with("WARNING:")
            || trimmed.starts_with("fetch ")
        {
            return Ok(None);
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let (installed, op, available) = match fields[..] {
            [installed, op, available] => (installed, op, available),
            // `?`: in no repository, so there is no available version to print.
            [installed, "?"] => (installed, "?", ""),
            _ => return Err(format!("{} fields, expected 3", fields.len())),
        };
        let (name, version) = split_apk_name_version(installed).ok_or("not name-version-rN")?;
        match op {
            "<" => Ok(Some(Upgrade {
                name: name.to_owned(),
                installed_version: Some(version.to_owned()),
                candidate_version: available.to_owned(),
                architecture: None,
                origins: Vec::new(),
                security: SecurityUpdate::Unknown,
            })),
            "=" | ">" | "?" => Ok(None),
            _ => Err(format!("unknown comparison {op:?}")),
        }
    })
}

/// Parses `apk info -v`: one `name-version-rN` per line.
pub fn parse_apk_info(text: &str) -> Parsed<InstalledPackage> {
    Parsed::from_lines(text, |line| {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("WARNING:") {
            return Ok(None);
        }
        let (name, version) = split_apk_name_version(trimmed).ok_or("not name-version-rN")?;
        Ok(Some(InstalledPackage {
            name: name.to_owned(),
            version: version.to_owned(),
        }))
    })
}
