//! The reboot-required flag Debian and Ubuntu packages leave after an update that needs a
//! reboot (a new kernel, libc): `/var/run/reboot-required`, and the packages that asked
//! for it in `/var/run/reboot-required.pkgs`.

use crate::collect::FsRoot;

/// Whether the device waits for a reboot to finish its updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebootRequired {
    /// The flag file exists.
    pub required: bool,
    /// The packages that asked for the reboot (each once, in file order).
    pub packages: Vec<String>,
}

/// Parses `reboot-required.pkgs`: one package name per line, repeats allowed.
pub fn parse_reboot_required_pkgs(text: &str) -> Vec<String> {
    let mut packages: Vec<String> = Vec::new();
    for name in text.lines().map(str::trim).filter(|name| !name.is_empty()) {
        if !packages.iter().any(|known| known == name) {
            packages.push(name.to_owned());
        }
    }
    packages
}

/// Looks for the flag under `root`, in `/run` and `/var/run` (one links to the other on a
/// live system, but not in every image or test tree).
pub fn read_reboot_required(root: &FsRoot) -> std::io::Result<RebootRequired> {
    for dir in ["/run", "/var/run"] {
        let flag = format!("{dir}/reboot-required");
        if root.join(&flag).exists() {
            let packages = root
                .read_optional(format!("{flag}.pkgs"))?
                .map(|text| parse_reboot_required_pkgs(&text))
                .unwrap_or_default();
            return Ok(RebootRequired {
                required: true,
                packages,
            });
        }
    }
    Ok(RebootRequired::default())
}
