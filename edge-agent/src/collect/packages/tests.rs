use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

/// Reads a fixture from `edge-agent/tests/fixtures/`.
fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path:?}: {err}"))
}

fn problem_lines<T>(parsed: &Parsed<T>) -> Vec<usize> {
    parsed
        .problems
        .iter()
        .map(|problem| problem.line_no)
        .collect()
}

// --- dpkg (recorded) ---

#[test]
fn dpkg_query_recording_parses_without_problems() {
    let parsed = parse_dpkg_query(&fixture("dpkg-query.debian12.txt"));
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.items.len(), 300);
    assert!(parsed.items.iter().any(|p| p.name == "apt"));
}

#[test]
fn dpkg_query_odd_lines_are_reported_and_the_rest_kept() {
    let parsed = parse_dpkg_query(&fixture("dpkg-query.debian12.odd.txt"));
    assert_eq!(parsed.items.len(), 301, "300 recorded + the held package");
    assert!(parsed
        .items
        .iter()
        .any(|p| p.name == "heldpkg" && p.version == "3.1-2"));
    assert!(
        !parsed.items.iter().any(|p| p.name == "oldpkg"),
        "config-files only"
    );
    assert_eq!(parsed.problems.len(), 4, "{:#?}", parsed.problems);
    assert!(parsed.problems.iter().any(|p| p.line.contains("ünïcode")));
    // CRLF lines parse: their versions carry no '\r'.
    assert!(parsed.items.iter().all(|p| !p.version.ends_with('\r')));
}

// --- apt (recorded) ---

#[test]
fn apt_list_upgradable_recording_flags_security_suites() {
    let parsed = parse_apt_list_upgradable(&fixture("apt-list-upgradable.debian12.txt"));
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.items.len(), 120);
    let apt = parsed.items.iter().find(|u| u.name == "apt").unwrap();
    assert_eq!(apt.candidate_version, "2.6.2");
    assert_eq!(apt.installed_version.as_deref(), Some("2.6.1"));
    assert_eq!(apt.origins, ["oldstable-security"]);
    assert_eq!(apt.security, SecurityUpdate::Yes);
    let base = parsed
        .items
        .iter()
        .find(|u| u.name == "base-files")
        .unwrap();
    assert_eq!(base.security, SecurityUpdate::No);
    let libcups = parsed.items.iter().find(|u| u.name == "libcups2").unwrap();
    assert_eq!(libcups.origins, ["oldstable", "oldstable-security"]);
    assert_eq!(libcups.security, SecurityUpdate::Yes);
}

#[test]
fn apt_list_upgradable_odd_lines_are_reported() {
    let parsed = parse_apt_list_upgradable(&fixture("apt-list-upgradable.debian12.odd.txt"));
    assert_eq!(parsed.items.len(), 120);
    assert_eq!(parsed.problems.len(), 4, "{:#?}", parsed.problems);
    assert!(parsed
        .items
        .iter()
        .all(|u| !u.installed_version.as_ref().unwrap().ends_with('\r')));
}

#[test]
fn apt_get_simulate_recording_reads_inst_lines() {
    let parsed = parse_apt_get_simulate(&fixture("apt-get-s-upgrade.debian12.txt"));
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.items.len(), 120);
    let lzma = parsed.items.iter().find(|u| u.name == "liblzma5").unwrap();
    assert_eq!(lzma.installed_version.as_deref(), Some("5.4.1-1"));
    assert_eq!(lzma.candidate_version, "5.4.1-1+deb12u2");
    assert_eq!(lzma.origins, ["Debian-Security:12/oldstable-security"]);
    assert_eq!(lzma.architecture.as_deref(), Some("amd64"));
    assert_eq!(lzma.security, SecurityUpdate::Yes);
    let gcrypt = parsed
        .items
        .iter()
        .find(|u| u.name == "libgcrypt20")
        .unwrap();
    assert_eq!(gcrypt.origins.len(), 2);
    assert_eq!(gcrypt.security, SecurityUpdate::Yes);
    let libcap = parsed.items.iter().find(|u| u.name == "libcap2").unwrap();
    assert_eq!(
        libcap.installed_version.as_deref(),
        Some("1:2.66-4+deb12u2+b2"),
        "epochs kept"
    );
    assert_eq!(libcap.security, SecurityUpdate::No);
}

#[test]
fn apt_list_and_apt_get_agree_on_the_security_flag() {
    let listed = parse_apt_list_upgradable(&fixture("apt-list-upgradable.debian12.txt")).items;
    let simulated = parse_apt_get_simulate(&fixture("apt-get-s-upgrade.debian12.txt")).items;
    for upgrade in &simulated {
        let same = listed.iter().find(|u| u.name == upgrade.name).unwrap();
        assert_eq!(same.security, upgrade.security, "{}", upgrade.name);
        assert_eq!(same.candidate_version, upgrade.candidate_version);
    }
}

#[test]
fn apt_get_simulate_odd_lines_are_reported() {
    let parsed = parse_apt_get_simulate(&fixture("apt-get-s-upgrade.debian12.odd.txt"));
    assert_eq!(parsed.items.len(), 121);
    let new = parsed.items.iter().find(|u| u.name == "newpkg").unwrap();
    assert_eq!(new.installed_version, None);
    assert_eq!(parsed.problems.len(), 3, "{:#?}", parsed.problems);
}

// --- apk (written from the documented format, not recorded) ---

#[test]
fn apk_name_version_split_handles_dashes_in_names() {
    assert_eq!(
        split_apk_name_version("py3-setuptools-pyc-70.3.0-r0"),
        Some(("py3-setuptools-pyc", "70.3.0-r0"))
    );
    assert_eq!(
        split_apk_name_version("musl-1.2.5-r0"),
        Some(("musl", "1.2.5-r0"))
    );
    assert_eq!(split_apk_name_version("nover-pkg"), None);
    assert_eq!(split_apk_name_version("pkg-1.0-rc1"), None);
}

#[test]
fn apk_version_lists_upgrades() {
    let parsed = parse_apk_version(&fixture("apk-version-l.alpine320.txt"));
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.items.len(), 9);
    let libssl = parsed.items.iter().find(|u| u.name == "libssl3").unwrap();
    assert_eq!(libssl.installed_version.as_deref(), Some("3.3.1-r3"));
    assert_eq!(libssl.candidate_version, "3.3.2-r0");
    assert_eq!(libssl.security, SecurityUpdate::Unknown);
}

#[test]
fn apk_version_keeps_only_older_installed_and_reports_odd_lines() {
    let parsed = parse_apk_version(&fixture("apk-version.alpine320.txt"));
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let names: Vec<&str> = parsed.items.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["busybox", "libcrypto3"]);
    let odd = parse_apk_version(&fixture("apk-version.alpine320.odd.txt"));
    assert_eq!(odd.items.len(), 2);
    assert_eq!(odd.problems.len(), 5, "{:#?}", odd.problems);
}

#[test]
fn apk_info_lists_installed() {
    let parsed = parse_apk_info(&fixture("apk-info-v.alpine320.txt"));
    assert!(parsed.problems.is_empty());
    assert_eq!(parsed.items.len(), 15);
    assert!(parsed.items.contains(&InstalledPackage {
        name: "alpine-baselayout-data".into(),
        version: "3.6.5-r0".into()
    }));
}

// --- opkg (written from the documented format, not recorded) ---

#[test]
fn opkg_list_upgradable_parses_and_reports_odd_lines() {
    let parsed = parse_opkg_list_upgradable(&fixture("opkg-list-upgradable.openwrt2305.txt"));
    assert!(parsed.problems.is_empty());
    assert_eq!(parsed.items.len(), 5);
    let core = parsed
        .items
        .iter()
        .find(|u| u.name == "kmod-usb-core")
        .unwrap();
    assert_eq!(core.installed_version.as_deref(), Some("5.15.150-1"));
    assert_eq!(core.candidate_version, "5.15.162-1");
    let odd = parse_opkg_list_upgradable(&fixture("opkg-list-upgradable.openwrt2305.odd.txt"));
    assert_eq!(odd.items.len(), 5);
    assert_eq!(odd.problems.len(), 4, "{:#?}", odd.problems);
}

#[test]
fn opkg_list_installed_parses_and_reports_odd_lines() {
    let parsed = parse_opkg_list_installed(&fixture("opkg-list-installed.openwrt2305.txt"));
    assert!(parsed.problems.is_empty());
    assert_eq!(parsed.items.len(), 13);
    let odd = parse_opkg_list_installed(&fixture("opkg-list-installed.openwrt2305.odd.txt"));
    assert_eq!(odd.items.len(), 13);
    assert_eq!(odd.problems.len(), 3, "{:#?}", odd.problems);
}

#[test]
fn problems_carry_line_numbers_and_text() {
    let parsed = parse_opkg_list_installed("a - 1\nbroken\r\nb - 2\n");
    assert_eq!(problem_lines(&parsed), [2]);
    assert_eq!(parsed.problems[0].line, "broken");
}

// --- os-release and reboot-required ---

#[test]
fn os_release_recording_parses() {
    let (os, problems) = parse_os_release(&fixture("os-release.debian12.txt"));
    assert!(problems.is_empty());
    assert_eq!(os.id.as_deref(), Some("debian"));
    assert_eq!(os.version_id.as_deref(), Some("12"));
    assert_eq!(os.version_codename.as_deref(), Some("bookworm"));
    assert_eq!(
        os.pretty_name.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
}

#[test]
fn os_release_quoting_and_odd_lines() {
    let text = "# comment\nID=raspbian\nID_LIKE='debian ubuntu'\nPRETTY_NAME=\"Pi \\\"OS\\\"\"\nVERSION_ID=\"12\nbroken line\nlower=x\n";
    let (os, problems) = parse_os_release(text);
    assert_eq!(os.id.as_deref(), Some("raspbian"));
    assert_eq!(os.id_like, ["debian", "ubuntu"]);
    assert_eq!(os.pretty_name.as_deref(), Some("Pi \"OS\""));
    assert_eq!(os.version_id, None);
    assert_eq!(
        problems.iter().map(|p| p.line_no).collect::<Vec<_>>(),
        [5, 6, 7]
    );
}

#[test]
fn reboot_required_reads_flag_and_packages() {
    let dir = tempfile::tempdir().unwrap();
    let root = FsRoot::new(dir.path());
    assert_eq!(
        read_reboot_required(&root).unwrap(),
        RebootRequired::default()
    );
    fs::create_dir_all(dir.path().join("var/run")).unwrap();
    fs::write(
        dir.path().join("var/run/reboot-required"),
        "*** System restart required ***\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("var/run/reboot-required.pkgs"),
        "linux-image-6.1.0-27-arm64\nlibc6\nlibc6\n\n",
    )
    .unwrap();
    let reboot = read_reboot_required(&root).unwrap();
    assert!(reboot.required);
    assert_eq!(reboot.packages, ["linux-image-6.1.0-27-arm64", "libc6"]);
}

// --- detection and running ---

/// Writes an executable shell script at `path` under the root that prints `output`.
fn fake_binary(root: &Path, path: &str, output: &str) {
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let fixture_copy = file.with_extension("out");
    fs::write(&fixture_copy, output).unwrap();
    fs::write(
        &file,
        format!("#!/bin/sh\ncat '{}'\n", fixture_copy.display()),
    )
    .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn detects_the_manager_by_its_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let root = FsRoot::new(dir.path());
    assert_eq!(detect_package_manager(&root), None);
    fake_binary(dir.path(), "/bin/opkg", "");
    assert_eq!(detect_package_manager(&root), Some(PackageManager::Opkg));
    fake_binary(dir.path(), "/sbin/apk", "");
    assert_eq!(detect_package_manager(&root), Some(PackageManager::Apk));
    fake_binary(dir.path(), "/usr/bin/dpkg-query", "");
    assert_eq!(detect_package_manager(&root), Some(PackageManager::Apt));
}

#[test]
fn binaries_under_usr_local_are_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let root = FsRoot::new(dir.path());
    fake_binary(dir.path(), "/usr/local/bin/dpkg-query", "");
    fake_binary(dir.path(), "/usr/local/sbin/apk", "");
    assert_eq!(detect_package_manager(&root), None);
    fake_binary(dir.path(), "/usr/bin/dpkg-query", "");
    assert_eq!(
        find_binary(&root, "dpkg-query"),
        Some(dir.path().join("usr/bin/dpkg-query"))
    );
}

#[test]
fn binaries_someone_other_than_root_could_have_placed_are_refused() {
    use std::os::unix::fs::chown;
    let dir = tempfile::tempdir().unwrap();
    let root = FsRoot::new(dir.path());
    let binary = dir.path().join("usr/bin/dpkg-query");
    fake_binary(dir.path(), "/usr/bin/dpkg-query", "");
    assert_eq!(find_binary(&root, "dpkg-query"), Some(binary.clone()));
    // Owned by another user.
    chown(&binary, Some(1000), None).unwrap();
    assert_eq!(find_binary(&root, "dpkg-query"), None);
    chown(&binary, Some(0), None).unwrap();
    // Writable by its group.
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(find_binary(&root, "dpkg-query"), None);
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    // In a directory anyone may write to.
    let usr_bin = dir.path().join("usr/bin");
    fs::set_permissions(&usr_bin, fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(find_binary(&root, "dpkg-query"), None);
    fs::set_permissions(&usr_bin, fs::Permissions::from_mode(0o755)).unwrap();
    // A directory above it owned by another user.
    chown(dir.path().join("usr"), Some(1000), None).unwrap();
    assert_eq!(find_binary(&root, "dpkg-query"), None);
    chown(dir.path().join("usr"), Some(0), None).unwrap();
    // A link out of the root to a file someone else owns.
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = elsewhere.path().join("apk");
    fs::write(&foreign, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&foreign, dir.path().join("usr/bin/apk")).unwrap();
    assert_eq!(find_binary(&root, "apk"), None);
    assert_eq!(find_binary(&root, "dpkg-query"), Some(binary));
}

#[test]
fn database_stamps_change_when_the_package_database_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = FsRoot::new(dir.path());
    for manager in [
        PackageManager::Apt,
        PackageManager::Apk,
        PackageManager::Opkg,
    ] {
        assert!(manager.database_files().contains(&manager.lists_dir()));
        let stamp = database_stamp(&root, manager);
        assert_eq!(stamp.len(), manager.database_files().len());
        assert!(stamp.iter().all(Option::is_none), "nothing exists yet");
        assert_eq!(lists_refreshed_at(&root, manager), None);
    }
    let status = dir.path().join("var/lib/dpkg/status");
    fs::create_dir_all(status.parent().unwrap()).unwrap();
    fs::write(&status, "Package: a\n").unwrap();
    let first = database_stamp(&root, PackageManager::Apt);
    assert!(first[0].is_some());
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&status)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_ne!(database_stamp(&root, PackageManager::Apt), first);
    fs::create_dir_all(dir.path().join("var/lib/apt/lists")).unwrap();
    assert!(lists_refreshed_at(&root, PackageManager::Apt).is_some());
}

#[test]
fn this_debian_machine_is_detected_as_apt() {
    assert_eq!(
        detect_package_manager(&FsRoot::default()),
        Some(PackageManager::Apt)
    );
}

#[test]
fn collects_patch_status_through_fake_binaries() {
    let dir = tempfile::tempdir().unwrap();
    fake_binary(
        dir.path(),
        "/usr/bin/dpkg-query",
        &fixture("dpkg-query.debian12.odd.txt"),
    );
    fake_binary(
        dir.path(),
        "/usr/bin/apt-get",
        &fixture("apt-get-s-upgrade.debian12.txt"),
    );
    fs::create_dir_all(dir.path().join("etc")).unwrap();
    fs::write(
        dir.path().join("etc/os-release"),
        fixture("os-release.debian12.txt"),
    )
    .unwrap();
    let root = FsRoot::new(dir.path());

    let status = collect_patch_status(&root, PackageManager::Apt, &CommandRunner::default());
    assert_eq!(status.installed.len(), 301);
    assert_eq!(status.upgrades.len(), 120);
    assert_eq!(status.os.unwrap().id.as_deref(), Some("debian"));
    assert!(!status.reboot.required);
    let line_problems = status
        .problems
        .iter()
        .filter(
            |p| matches!(p, PatchProblem::Line { source, .. } if source.starts_with("dpkg-query")),
        )
        .count();
    assert_eq!(line_problems, 4, "{:#?}", status.problems);
    assert_eq!(status.problems.len(), 4);
}

#[test]
fn missing_commands_are_problems_not_failures() {
    let dir = tempfile::tempdir().unwrap();
    let status = collect_patch_status(
        &FsRoot::new(dir.path()),
        PackageManager::Opkg,
        &CommandRunner::default(),
    );
    assert!(status.installed.is_empty() && status.upgrades.is_empty());
    assert_eq!(status.problems.len(), 2);
    assert!(status.os.is_none());
}
