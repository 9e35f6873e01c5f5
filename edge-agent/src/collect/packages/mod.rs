//! Patch status: installed packages, pending upgrades, reboot-required, OS release.
//!
//! Parsing and running are separate: each `parse_*` function takes captured command
//! output (tested against recordings in `tests/fixtures/`); [`detect_package_manager`]
//! finds which manager a device has, and [`collect_patch_status`] runs its commands with a
//! [`CommandRunner`] and parses them. An unparsable line never fails a collection: it is
//! skipped and reported in [`PatchStatus::problems`].

mod apk;
mod apt;
mod dpkg;
mod opkg;
mod os_release;
mod reboot;
mod run;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use self::apk::{
    parse_apk_info, parse_apk_version, split_apk_name_version, APK_INFO_ARGS, APK_VERSION_ARGS,
};
pub use self::apt::{parse_apt_get_simulate, parse_apt_list_upgradable, APT_GET_SIMULATE_ARGS};
pub use self::dpkg::{parse_dpkg_query, DPKG_QUERY_ARGS};
pub use self::opkg::{
    parse_opkg_list_installed, parse_opkg_list_upgradable, OPKG_LIST_INSTALLED_ARGS,
    OPKG_LIST_UPGRADABLE_ARGS,
};
pub use self::os_release::{parse_os_release, read_os_release, OsRelease};
pub use self::reboot::{parse_reboot_required_pkgs, read_reboot_required, RebootRequired};
pub use self::run::{CommandOutput, CommandRunner, RunError};
use super::{FsRoot, ParseProblem, Parsed};

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    /// Package name.
    pub name: String,
    /// Installed version, as the package manager writes it.
    pub version: String,
}

/// Whether an upgrade fixes security issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityUpdate {
    /// It comes from a security archive.
    Yes,
    /// It comes only from regular archives.
    No,
    /// The package manager does not say (apk, opkg).
    Unknown,
}

/// A package with a newer version available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Package name.
    pub name: String,
    /// Installed version (`None` for a package the upgrade would newly install).
    pub installed_version: Option<String>,
    /// The version the upgrade would install.
    pub candidate_version: String,
    /// Architecture, where the output says (`amd64`, `arm64`, `all`).
    pub architecture: Option<String>,
    /// Suites or origins that offer the candidate (`bookworm-security`,
    /// `Debian-Security:12/stable-security`); empty where the output does not say.
    pub origins: Vec<String>,
    /// Whether it is a security update.
    pub security: SecurityUpdate,
}

/// Whether `name` looks like a package name: ASCII letters, digits and `+ - . _`, starting
/// with a letter or digit (Debian policy allows a subset; apk and opkg a bit more). Anything
/// else means the line was not what the parser thought it was.
pub(crate) fn is_package_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_'))
}

/// The package managers the agent understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    /// dpkg, with apt for upgrades (Debian, Ubuntu, Raspberry Pi OS).
    Apt,
    /// apk (Alpine).
    Apk,
    /// opkg (OpenWrt, Yocto).
    Opkg,
}

impl PackageManager {
    /// Files and directories whose modification time says the package database (or the
    /// package lists) changed.
    pub fn database_files(self) -> &'static [&'static str] {
        match self {
            Self::Apt => &["/var/lib/dpkg/status", "/var/lib/apt/lists"],
            Self::Apk => &["/lib/apk/db/installed", "/var/cache/apk"],
            Self::Opkg => &[
                "/usr/lib/opkg/status",
                "/var/lib/opkg/status",
                "/var/opkg-lists",
            ],
        }
    }

    /// Where the package lists live (their modification time is the last refresh).
    pub fn lists_dir(self) -> &'static str {
        match self {
            Self::Apt => "/var/lib/apt/lists",
            Self::Apk => "/var/cache/apk",
            Self::Opkg => "/var/opkg-lists",
        }
    }
}

/// The modification times of `manager`'s [database files](PackageManager::database_files)
/// under `root` (`None` for one that is absent): two stamps differ when the database or
/// the lists changed in between.
pub fn database_stamp(root: &FsRoot, manager: PackageManager) -> Vec<Option<SystemTime>> {
    manager
        .database_files()
        .iter()
        .map(|path| modified(root, path))
        .collect()
}

/// When `manager`'s package lists under `root` were last refreshed, if they exist.
pub fn lists_refreshed_at(root: &FsRoot, manager: PackageManager) -> Option<SystemTime> {
    modified(root, manager.lists_dir())
}

fn modified(root: &FsRoot, path: &str) -> Option<SystemTime> {
    std::fs::metadata(root.join(path))
        .and_then(|metadata| metadata.modified())
        .ok()
}

/// Directories searched for package-manager binaries: the distributions' own, never
/// `/usr/local` (where anything an installer or a user put would win over the real tool).
const BINARY_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The path under `root` of the executable `name` in [`BINARY_DIRS`], if one exists there and
/// only root could have put it there ([`root_owned_all_the_way`]).
pub fn find_binary(root: &FsRoot, name: &str) -> Option<PathBuf> {
    BINARY_DIRS
        .iter()
        .map(|dir| root.join(dir).join(name))
        .find(|path| path.is_file() && root_owned_all_the_way(root, path))
}

/// Whether `path` (symbolic links resolved) and every directory above it, up to `root`, are
/// owned by root and writable by no group or other user: else whoever could write there could
/// make the agent run their program.
fn root_owned_all_the_way(root: &FsRoot, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(resolved), Ok(top)) = (path.canonicalize(), root.path().canonicalize()) else {
        return false;
    };
    if !resolved.starts_with(&top) {
        return false;
    }
    resolved
        .ancestors()
        .take_while(|dir| dir.starts_with(&top))
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

/// Which package manager the system under `root` uses, by the binaries present; dpkg is
/// checked first, since some Debian images also carry opkg or apk for other purposes.
pub fn detect_package_manager(root: &FsRoot) -> Option<PackageManager> {
    [
        ("dpkg-query", PackageManager::Apt),
        ("apk", PackageManager::Apk),
        ("opkg", PackageManager::Opkg),
    ]
    .into_iter()
    .find(|(binary, _)| find_binary(root, binary).is_some())
    .map(|(_, manager)| manager)
}

/// A problem met while collecting patch status, tagged with the command or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchProblem {
    /// A line of output was skipped.
    Line {
        /// Command or file whose output it was (`dpkg-query`, `/etc/os-release`).
        source: String,
        /// The line and the reason.
        problem: ParseProblem,
    },
    /// A command or file could not be used at all (not found, timed out, non-zero exit).
    Source {
        /// Command or file.
        source: String,
        /// What went wrong.
        reason: String,
    },
}

/// Everything the agent reports about patches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchStatus {
    /// The package manager used.
    pub manager: PackageManager,
    /// The operating system, if os-release exists.
    pub os: Option<OsRelease>,
    /// Installed packages.
    pub installed: Vec<InstalledPackage>,
    /// Pending upgrades.
    pub upgrades: Vec<Upgrade>,
    /// Reboot-required flag (only Debian-family systems set it).
    pub reboot: RebootRequired,
    /// What was skipped or failed; the rest of the status is still valid.
    pub problems: Vec<PatchProblem>,
}

/// Runs the commands of `manager` (binaries found under `root`) and parses their output,
/// plus os-release and reboot-required. Never fails: what cannot be collected is left
/// empty and described in [`PatchStatus::problems`].
pub fn collect_patch_status(
    root: &FsRoot,
    manager: PackageManager,
    runner: &CommandRunner,
) -> PatchStatus {
    let mut status = PatchStatus {
        manager,
        os: None,
        installed: Vec::new(),
        upgrades: Vec::new(),
        reboot: RebootRequired::default(),
        problems: Vec::new(),
    };
    let (installed, upgrades) = manager.commands();
    status.installed = run_and_parse(root, runner, installed, &mut status.problems);
    status.upgrades = run_and_parse(root, runner, upgrades, &mut status.problems);
    status.os = read_os(root, &mut status.problems);
    status.reboot = read_reboot_required(root).unwrap_or_else(|err| {
        status.problems.push(PatchProblem::Source {
            source: "reboot-required".to_owned(),
            reason: err.to_string(),
        });
        RebootRequired::default()
    });
    status
}

/// A command: the binary, its arguments, the parser of its output.
type CommandSpec<T> = (&'static str, &'static [&'static str], fn(&str) -> Parsed<T>);
type Installed = CommandSpec<InstalledPackage>;
type Pending = CommandSpec<Upgrade>;

const DPKG_INSTALLED: Installed = ("dpkg-query", DPKG_QUERY_ARGS, parse_dpkg_query);
const APT_UPGRADES: Pending = ("apt-get", APT_GET_SIMULATE_ARGS, parse_apt_get_simulate);
const APK_INSTALLED: Installed = ("apk", APK_INFO_ARGS, parse_apk_info);
const APK_UPGRADES: Pending = ("apk", APK_VERSION_ARGS, parse_apk_version);
const OPKG_INSTALLED: Installed = ("opkg", OPKG_LIST_INSTALLED_ARGS, parse_opkg_list_installed);
const OPKG_UPGRADES: Pending = (
    "opkg",
    OPKG_LIST_UPGRADABLE_ARGS,
    parse_opkg_list_upgradable,
);

impl PackageManager {
    /// The commands that list the installed packages and the pending upgrades.
    fn commands(self) -> (Installed, Pending) {
        match self {
            Self::Apt => (DPKG_INSTALLED, APT_UPGRADES),
            Self::Apk => (APK_INSTALLED, APK_UPGRADES),
            Self::Opkg => (OPKG_INSTALLED, OPKG_UPGRADES),
        }
    }
}

fn run_and_parse<T>(
    root: &FsRoot,
    runner: &CommandRunner,
    (binary, args, parse): CommandSpec<T>,
    problems: &mut Vec<PatchProblem>,
) -> Vec<T> {
    let command = format!("{binary} {}", args.join(" "));
    let source_problem = |reason: String| PatchProblem::Source {
        source: command.clone(),
        reason,
    };
    let Some(program) = find_binary(root, binary) else {
        problems.push(source_problem("not installed".to_owned()));
        return Vec::new();
    };
    let output = match runner.run(&program, args) {
        Ok(output) => output,
        Err(err) => {
            problems.push(source_problem(err.to_string()));
            return Vec::new();
        }
    };
    if !output.status.success() {
        let stderr = output.stderr.lines().next().unwrap_or("").to_owned();
        problems.push(source_problem(format!("{}: {stderr}", output.status)));
    }
    if output.truncated {
        problems.push(source_problem("output truncated".to_owned()));
    }
    let parsed = parse(&output.stdout);
    problems.extend(
        parsed
            .problems
            .into_iter()
            .map(|problem| PatchProblem::Line {
                source: command.clone(),
                problem,
            }),
    );
    parsed.items
}

fn read_os(root: &FsRoot, problems: &mut Vec<PatchProblem>) -> Option<OsRelease> {
    match read_os_release(root) {
        Ok(Some((os, line_problems))) => {
            problems.extend(line_problems.into_iter().map(|problem| PatchProblem::Line {
                source: "os-release".to_owned(),
                problem,
            }));
            Some(os)
        }
        Ok(None) => None,
        Err(err) => {
            problems.push(PatchProblem::Source {
                source: "os-release".to_owned(),
                reason: err.to_string(),
            });
            None
        }
    }
}
