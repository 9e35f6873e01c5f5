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

/// Runs fleetd with `args` and `env` to its exit (it must fail at start, within 60 s) and
/// returns its exit code and everything it wrote.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(FLEETD);
    command
        .args(args)
        .env("FLEETD_METRICS_LISTEN", "127.0.0.1:0")
        .env("FLEETD_DATABASE__CONNECT_TIMEOUT", "1s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let out = match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("fleetd {args:?} did not exit within 60 s");
        }
    };
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), output)
}

/// A private (0700) temporary directory, as an operator's would be.
fn private_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn production_mode_refuses_the_development_pki_before_creating_anything() {
    let data_dir = private_dir();
    let data = data_dir.path().to_str().unwrap();
    let unreachable = "postgres://nobody@127.0.0.1:1/x";
    let base = [
        "--data-dir",
        data,
        "--database-url",
        unreachable,
        "--api-listen",
        "127.0.0.1:0",
        "--broker-listen",
        "127.0.0.1:0",
    ];

    let (code, output) = run_to_exit(&[&base[..], &["--production"]].concat(), &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("production mode refuses to start"),
        "{output}"
    );
    assert!(output.contains("pki.dir is unset"), "{output}");
    assert!(
        std::fs::read_dir(data_dir.path()).unwrap().next().is_none(),
        "nothing was created in data_dir: {output}"
    );

    // The config file's switch, and listeners beyond loopback named.
    let config = data_dir.path().join("fleetd.toml");
    std::fs::write(&config, "production = true\napi_listen = \"0.0.0.0:0\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap(), "--data-dir", data];
    let (code, output) = run_to_exit(
        &args,
        &[
            ("FLEETD_DATABASE_URL", unreachable),
            ("FLEETD_BROKER_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("pki.dir is unset"), "{output}");
    assert!(
        output.contains("api_listen 0.0.0.0:0 listen beyond loopback"),
        "{output}"
    );
    assert!(!data_dir.path().join("pki").exists(), "{output}");

    // A configured PKI with its root key still on this host.
    let pki = data_dir.path().join("fleet-pki");
    certs::Pki::generate(&pki, &certs::PkiParams::default()).unwrap();
    let pki_flag = format!("FLEETD_PKI__DIR={}", pki.display());
    let (name, value) = pki_flag.split_once('=').unwrap();
    let (code, output) = run_to_exit(&[&base[..], &["--production"]].concat(), &[(name, value)]);
    assert_eq!(code, Some(1), "{output}");
    let root_key = pki.join("root-ca.key");
    assert!(
        output.contains(&format!(
            "the root CA key {} is on this host",
            root_key.display()
        )),
        "{output}"
    );

    // Root key offline: production mode lets start-up go on (to the unreachable database).
    std::fs::remove_file(&root_key).unwrap();
    let (code, output) = run_to_exit(&[&base[..], &["--production"]].concat(), &[(name, value)]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("production mode on"), "{output}");
    assert!(output.contains("opening the database"), "{output}");

    // Without the switch the development defaults are allowed, and the log says so.
    let (code, output) = run_to_exit(&base, &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("production mode off"), "{output}");
    assert!(data_dir.path().join("pki/root-ca.pem").exists(), "{output}");
}

/// A fresh database on the test server, dropped when the guard goes.
struct ScratchDatabase {
    admin_url: String,
    name: String,
}

impl ScratchDatabase {
    fn create() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("fleet_cli_{}", std::process::id());
        psql(&admin_url, &format!("DROP DATABASE IF EXISTS {name}"));
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        Self { admin_url, name }
    }

    /// The database's URL with `password` for its user (the test server trusts and ignores it).
    fn url_with_password(&self, password: &str) -> String {
        let (scheme, rest) = self.admin_url.split_once("://").unwrap();
        let (authority, _) = rest.split_once('/').unwrap();
        let (user, host) = authority.split_once('@').unwrap();
        let user = user.split(':').next().unwrap();
        format!("{scheme}://{user}:{password}@{host}/{}", self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_database_password_appears_in_the_output_of_a_run() {
    const PASSWORD: &str = "pw-7f3a9c-never-logged";
    let db = ScratchDatabase::create();
    let url = db.url_with_password(PASSWORD);
    let data_dir = private_dir();
    let url_file = data_dir.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();

    // A whole run, at debug level, with the URL from the file: start, ready, stop.
    let mut fleetd = Command::new(FLEETD)
        .args([
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "--database-url-file",
            url_file.to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
        ])
        .env("FLEETD_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = fleetd.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut log = BufReader::new(fleetd.stderr.take().unwrap());
    let mut output = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !output.contains("fleetd ready") {
        assert!(Instant::now() < deadline, "fleetd did not become ready");
        assert!(
            log.read_line(&mut output).unwrap() > 0,
            "fleetd exited early: {}",
            output.replace(PASSWORD, "<PASSWORD>")
        );
    }
    let pid = nix::unistd::Pid::from_raw(fleetd.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    log.read_to_string(&mut output).unwrap();
    assert!(fleetd.wait().unwrap().success());
    output.push_str(&stdout_reader.join().unwrap());
    assert!(output.contains("fleetd stopped"));
    assert!(
        !output.contains(PASSWORD),
        "the password is in the output of a run: {}",
        output.replace(PASSWORD, "<PASSWORD>")
    );

    // Failing runs: the URL on argv (unreachable), in the environment, and not a postgres URL.
    let unreachable = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/x");
    let not_postgres = format!("mysql://root:{PASSWORD}@db/x");
    let data = data_dir.path().to_str().unwrap();
    for (args, env, expected_code) in [
        (vec!["--database-url", unreachable.as_str()], vec![], 1),
        (
            vec![],
            vec![("FLEETD_DATABASE_URL", unreachable.as_str())],
            1,
        ),
        (vec!["--database-url", not_postgres.as_str()], vec![], 2),
        (
            vec![],
            vec![("FLEETD_DATABASE_URL", not_postgres.as_str())],
            2,
        ),
    ] {
        let args = [
            &["--data-dir", data, "--api-listen", "127.0.0.1:0"],
            &args[..],
        ]
        .concat();
        let (code, output) = run_to_exit(&args, &env);
        assert_eq!(code, Some(expected_code), "{args:?} {env:?}");
        assert!(
            !output.contains(PASSWORD),
            "{args:?} {env:?}: {}",
            output.replace(PASSWORD, "<PASSWORD>")
        );
    }
}

/// The configuration file the Debian package installs as /etc/fleetd/fleetd.toml.
const PACKAGED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/fleetd.toml");

#[test]
fn the_packaged_configuration_refuses_the_development_pki_beyond_loopback() {
    let data_dir = private_dir();
    let data = data_dir.path().to_str().unwrap();
    let unreachable = "postgres://nobody@127.0.0.1:1/x";
    let args = [
        "--config",
        PACKAGED_CONFIG,
        "--data-dir",
        data,
        "--database-url",
        unreachable,
    ];
    let ephemeral = [
        ("FLEETD_API_LISTEN", "127.0.0.1:0"),
        ("FLEETD_BROKER_LISTEN", "127.0.0.1:0"),
    ];

    // As installed (loopback only, development PKI): accepted, start-up goes on to the database.
    let (code, output) = run_to_exit(&args, &ephemeral);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("production mode off"), "{output}");
    assert!(output.contains("opening the database"), "{output}");
    assert!(data_dir.path().join("pki/root-ca.pem").exists(), "{output}");

    // Any one listener beyond loopback, production mode off: refused before anything else.
    let fresh = private_dir();
    let fresh_data = fresh.path().to_str().unwrap();
    let args = [&args[..2], &["--data-dir", fresh_data], &args[4..]].concat();
    for (listener, exposed) in [
        ("FLEETD_API_LISTEN", "0.0.0.0:0"),
        ("FLEETD_BROKER_LISTEN", "[::]:0"),
        ("FLEETD_METRICS_LISTEN", "0.0.0.0:0"),
    ] {
        let env: Vec<_> = ephemeral
            .iter()
            .copied()
            .filter(|(name, _)| *name != listener)
            .chain([(listener, exposed)])
            .collect();
        let (code, output) = run_to_exit(&args, &env);
        assert_eq!(code, Some(1), "{listener}: {output}");
        assert!(
            output.contains("the development PKI (pki.dir is unset, its root key is on this host) behind a listener beyond loopback"),
            "{listener}: {output}"
        );
        let field = listener.trim_start_matches("FLEETD_").to_lowercase();
        assert!(output.contains(&format!("{field} {exposed}")), "{output}");
        assert!(!output.contains("opening the database"), "{output}");
        assert!(
            std::fs::read_dir(fresh.path()).unwrap().next().is_none(),
            "{listener}: nothing was created in data_dir: {output}"
        );
    }
}

/// `fleetd check-config FILE` with `env`: exit code, stdout, stderr.
fn check_config(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetd.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(FLEETD);
    command
        .args(["check-config", path.to_str().unwrap()])
        .args(["--data-dir", dir.path().to_str().unwrap()]);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    let created: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(created, ["fleetd.toml"], "check-config made something");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_accepts_the_template_and_summarises_it_without_starting() {
    let template = Command::new(FLEETD)
        .arg("configfile")
        .output()
        .unwrap()
        .stdout;
    let template = String::from_utf8(template).unwrap();
    let (code, stdout, stderr) = check_config(&template, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": ok\n"), "{stdout}");
    for line in [
        "api        https://127.0.0.1:8443",
        "broker     mqtts://127.0.0.1:8883 (embedded)",
        "metrics    http://127.0.0.1:9464/metrics",
        "database   private cluster in ",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    // A URL is not tried (nothing starts), and its password is not shown.
    let (code, stdout, _) = check_config(
        "database_url = \"postgres://owner:hunter2@db.example/fleet\"\n",
        &[("FLEETD_METRICS_LISTEN", "127.0.0.1:19464")],
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("database   postgres://owner:<redacted>@db.example/fleet"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:19464/metrics"),
        "the environment applies: {stdout}"
    );
}

#[test]
fn check_config_names_the_field_and_its_line() {
    let text =
        "api_listen = \"127.0.0.1:8443\"\n\n[broker]\nmax_connections = 100\npublish_rate = 0\n";
    let (code, stdout, stderr) = check_config(text, &[]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stderr.contains("fleetd.toml:5: invalid configuration: broker.publish_rate: must be"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config("[broker]\nmax_conections = 1\n", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("fleetd.toml:2:"), "{stderr}");
    assert!(stderr.contains("max_conections"), "{stderr}");
    let (code, _, stderr) = check_config("[connections]\n\nbroker_max_connect_size = 100\n", &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("fleetd.toml:3: invalid configuration: connections.broker_max_connect_size is now broker.max_connect_size"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config("# production\nproduction = true\n", &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("fleetd.toml:2: production mode refuses to start: pki.dir is unset"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config("", &[("FLEETD_BROKER__PUBLISH_BURST", "0")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("broker.publish_burst: must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn every_listener_has_a_flag() {
    let help = Command::new(FLEETD).arg("--help").output().unwrap().stdout;
    let help = String::from_utf8(help).unwrap();
    for flag in ["--api-listen", "--broker-listen", "--metrics-listen"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    let (code, stdout, stderr) = check_config("", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("http://127.0.0.1:9464/metrics"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetd.toml");
    std::fs::write(&path, "metrics_listen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(FLEETD)
        .args([
            "check-config",
            path.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:29464",
        ])
        .env("FLEETD_METRICS_LISTEN", "127.0.0.1:2")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("http://127.0.0.1:29464/metrics"),
        "the flag wins: {stdout}"
    );
}
