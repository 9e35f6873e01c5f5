//! apt output: pending upgrades with their origin, on Debian, Ubuntu, Raspberry Pi OS.
//!
//! A suite or origin whose name contains "security" (`bookworm-security`,
//! `oldstable-security`, `jammy-security`, `Debian-Security:12/...`) marks a security
//! update: that is how Debian and Ubuntu name their security archives.

use super::{is_package_name, SecurityUpdate, Upgrade};
use crate::collect::Parsed;

/// Arguments for the simulated upgrade whose `Inst` lines [`parse_apt_get_simulate`] reads.
/// `dist-upgrade` rather than `upgrade`, so packages held back for new dependencies are
/// listed too. Needs no root.
pub const APT_GET_SIMULATE_ARGS: &[&str] = &["-s", "dist-upgrade"];

/// The upgrade both parsers found: offered by `origins` (suites or archive origins; empty
/// ones skipped), a security update when one of them says so.
fn upgrade<'a>(
    name: &str,
    installed_version: Option<String>,
    candidate_version: &str,
    architecture: Option<String>,
    origins: impl Iterator<Item = &'a str>,
) -> Upgrade {
    let origins: Vec<String> = origins
        .filter(|origin| !origin.is_empty())
        .map(str::to_owned)
        .collect();
    Upgrade {
        name: name.to_owned(),
        installed_version,
        candidate_version: candidate_version.to_owned(),
        architecture,
        security: security_from(&origins),
        origins,
    }
}

fn security_from(names: &[String]) -> SecurityUpdate {
    if names
        .iter()
        .any(|name| name.to_ascii_lowercase().contains("security"))
    {
        SecurityUpdate::Yes
    } else {
        SecurityUpdate::No
    }
}

/// Parses `apt list --upgradable`:
/// `name/suite[,suite...] version arch [upgradable from: old]`. The `Listing...` header,
/// `WARNING:` and `N:` notes and blank lines are skipped.
pub fn parse_apt_list_upgradable(text: &str) -> Parsed<Upgrade> {
    Parsed::from_lines(text, |line| {
        let trimmed = line.trim();
        if trimmed.is_empty()
            || trimmed.starts_with("Listing...")
            || trimmed.starts_with("WARNING:")
            || trimmed.starts_with("N: ")
        {
            return Ok(None);
        }
        parse_apt_list_line(trimmed).map(Some)
    })
}

fn parse_apt_list_line(line: &str) -> Result<Upgrade, String> {
    let (fields, installed) = match line.split_once(" [") {
        Some((fields, bracket)) => {
            let inner = bracket.strip_suffix(']').ok_or("unclosed [")?;
            let from = inner
                .strip_prefix("upgradable from: ")
                .ok_or("bracket is not 'upgradable from: VERSION'")?;
            (fields, Some(from.to_owned()))
        }
        None => (line, None),
    };
    let parts: Vec<&str> = fields.split_whitespace().collect();
    let [name_suites, version, arch] = parts[..] else {
        return Err(format!("{} fields before '[', expected 3", parts.len()));
    };
    let (name, suites) = name_suites
        .split_once('/')
        .ok_or("no '/' between name and suite")?;
    if !is_package_name(name) {
        return Err("bad package name".to_owned());
    }
    Ok(upgrade(
        name,
        installed,
        version,
        Some(arch.to_owned()),
        suites.split(','),
    ))
}

/// Parses the `Inst` lines of `apt-get -s upgrade` / `dist-upgrade`:
/// `Inst name [old] (new Origin:version/suite[, ...] [arch])`, `[old]` absent for a new
/// package. Other lines (prose, `Conf`, `Remv`) carry nothing and are skipped; an `Inst`
/// line that does not match is a problem.
pub fn parse_apt_get_simulate(text: &str) -> Parsed<Upgrade> {
    Parsed::from_lines(text, |line| match line.strip_prefix("Inst ") {
        Some(rest) => parse_inst_line(rest).map(Some),
        None => Ok(None),
    })
}

fn parse_inst_line(rest: &str) -> Result<Upgrade, String> {
    let (name, rest) = rest.split_once(' ').ok_or("no version after the name")?;
    if !is_package_name(name) {
        return Err("bad package name".to_owned());
    }
    let (installed, rest) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (old, rest) = bracketed.split_once("] ").ok_or("unclosed [old version]")?;
            (Some(old.to_owned()), rest)
        }
        None => (None, rest),
    };
    let open = rest.strip_prefix('(').ok_or("no '(new version ...)'")?;
    let close = open.find(')').ok_or("unclosed (")?;
    let inner = &open[..close];
    let (version, origins_and_arch) = inner.split_once(' ').ok_or("no origin")?;
    let (origins, arch) = match origins_and_arch.rsplit_once(" [") {
        Some((origins, arch)) => (origins, arch.strip_suffix(']').map(str::to_owned)),
        None => (origins_and_arch, None),
    };
    Ok(upgrade(name, installed, version, arch, origins.split(", ")))
}
