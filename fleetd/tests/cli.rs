//! The fleetd binary as users and scripts run it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FLEETD: &str = env!("CARGO_BIN_EXE_fleetd");

#[test]
fn configfile_prints_a_template_that_fleetd_accepts() {
    let out = Command::new(FLEETD).arg("configfile").output().unwrap();
    assert!(out.status.success());
    let template = String::from_utf8(out.stdout).unwrap();
    assert!(
        template.contains("api_listen = \"127.0.0.1:8443\""),
        "{template}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetd.toml");
    std::fs::write(&path, &template).unwrap();
    // A bad database URL stops start-up after the configuration was accepted.
    let out = Command::new(FLEETD)
        .args([
            "--config",
            path.to_str().unwrap(),
            "--database-url",
            "postgres://nobody@127.0.0.1:1/x",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .env("FLEETD_DATABASE__CONNECT_TIMEOUT", "1s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("opening the database"), "{stderr}");
}

#[test]
fn a_bad_environment_value_is_refused_naming_the_field() {
    let out = Command::new(FLEETD)
        .env("FLEETD_API_LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("api_listen") && stderr.contains("FLEETD_"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_fleetd_and_its_private_cluster_cleanly() {
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        data_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut fleetd = Command::new(FLEETD)
        .args([
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
        ])
        .env("FLEETD_METRICS_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = data_dir.path().join("postgres/postmaster.pid");
    let mut log = BufReader::new(fleetd.stderr.take().unwrap());
    let mut stderr = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stderr.contains("fleetd ready") {
        assert!(
            Instant::now() < deadline,
            "fleetd did not become ready: {stderr}"
        );
        assert!(
            log.read_line(&mut stderr).unwrap() > 0,
            "fleetd exited early: {stderr}"
        );
    }
    assert!(pid_file.exists());
    let pid = nix::unistd::Pid::from_raw(fleetd.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    log.read_to_string(&mut stderr).unwrap();
    let status = fleetd.wait().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("fleetd stopped"), "{stderr}");
    assert!(!pid_file.exists(), "postgres still running: {stderr}");
}
