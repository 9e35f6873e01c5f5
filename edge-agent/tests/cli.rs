//! The `fleet-agent` binary as packaging, scripts and operators use it: the command-line
//! contract, the root refusal, `status`, enrollment against a fake API (happy path and every
//! refusal), a revoked device stopping, and the absence of any listening socket.
//!
//! No fleetd is needed: the fake API and the fake broker are small rustls servers in the
//! test, on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const AGENT: &str = env!("CARGO_BIN_EXE_fleet-agent");
const DEVICE_ID: &str = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94";
const TENANT_ID: &str = "11111111-2222-4333-8444-555555555555";

fn agent(state: &Path) -> Command {
    let mut command = Command::new(AGENT);
    command
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg(state.join("absent-agent.toml"))
        .env("FLEET_AGENT_ALLOW_ROOT", "1")
        .env_remove("FLEET_AGENT_TOKEN")
        .stdin(Stdio::null());
    command
}

fn stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("fleet-agent: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {text}");
    lines[0].to_owned()
}

// ----- a small PKI -----------------------------------------------------------------------

struct Pki {
    root_pem: String,
    root_key_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn pki() -> Pki {
    pki_named("test fleet root")
}

fn pki_named(name: &str) -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let root_key = key();
    let root = params.self_signed(&root_key).unwrap();
    let root_key_pem = root_key.serialize_pem();
    let issuer = rcgen::Issuer::new(params, root_key);
    let server_key = key();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    Pki {
        root_pem: root.pem(),
        server_chain: vec![server.der().clone()],
        server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        root_key_pem,
    }
}

impl Pki {
    fn issuer(&self) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let key = rcgen::KeyPair::from_pem(&self.root_key_pem).unwrap();
        rcgen::Issuer::from_ca_cert_pem(&self.root_pem, key).unwrap()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    pki: &Pki,
    client_roots: Option<rustls::RootCertStore>,
) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap(),
        ),
    };
    Arc::new(
        builder
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .unwrap(),
    )
}

// ----- a fake API --------------------------------------------------------------------------

/// Serves one HTTPS request with `answer(body) -> (status line, extra headers, body)`.
fn fake_api(
    pki: &Pki,
    answer: impl FnOnce(&str) -> (String, String, String) + Send + 'static,
) -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = server_config(pki, None);
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let connection = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        let request = read_request(&mut tls);
        let body = request.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        let (status, headers, response) = answer(&body);
        let reply = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{response}",
            response.len()
        );
        tls.write_all(reply.as_bytes()).unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
        request
    });
    (port, handle)
}

fn read_request(stream: &mut impl Read) -> String {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = value.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

fn enroll(state: &Path, ca: &Path, port: u16) -> Output {
    agent(state)
        .args([
            "enroll",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--ca",
        ])
        .arg(ca)
        .env("FLEET_AGENT_TOKEN", "fpe_test_token")
        .output()
        .unwrap()
}

fn write_root(dir: &Path, pki: &Pki) -> PathBuf {
    let path = dir.join("root.pem");
    std::fs::write(&path, &pki.root_pem).unwrap();
    path
}

#[test]
fn enrollment_happy_path_stores_a_private_key_and_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let pki = pki();
    let ca = write_root(tmp.path(), &pki);
    let issuer = pki.issuer();
    let root_pem = pki.root_pem.clone();
    let (port, server) = fake_api(&pki, move |body| {
        let request: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(request["token"], "fpe_test_token");
        let csr =
            rcgen::CertificateSigningRequestParams::from_pem(request["csr"].as_str().unwrap())
                .unwrap();
        let cert = csr.signed_by(&issuer).unwrap();
        let answer = serde_json::json!({
            "device_id": DEVICE_ID, "tenant_id": TENANT_ID,
            "certificate_chain": format!("{}{}", cert.pem(), root_pem),
            "ca_certificate": root_pem, "broker_url": "mqtts://127.0.0.1:8883",
            "expires_at": "2030-01-01T00:00:00Z"
        });
        (
            "201 Created".into(),
            "Content-Type: application/json\r\n".into(),
            answer.to_string(),
        )
    });
    let output = enroll(&state, &ca, port);
    let request = server.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        request.starts_with("POST /v1/enroll HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        !request.contains("PRIVATE KEY"),
        "the key left the device: {request}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(DEVICE_ID), "{stdout}");

    let mode = std::fs::metadata(state.join("device-1.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let device: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("device.json")).unwrap()).unwrap();
    assert_eq!(device["device_id"], DEVICE_ID);
    assert_eq!(device["broker_url"], "mqtts://127.0.0.1:8883");
    assert_eq!(
        std::fs::read_to_string(state.join("root-ca.pem")).unwrap(),
        pki.root_pem
    );

    let status = agent(&state).args(["status", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["enrolled"], true);
    assert_eq!(report["device_id"], DEVICE_ID);
    assert_eq!(report["certificate"]["expired"], false);

    // A second enrollment is refused locally.
    let again = agent(&state)
        .args([
            "enroll",
            "--server",
            "https://127.0.0.1:1",
            "--token",
            "t",
            "--ca",
        ])
        .arg(&ca)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr_line(&again).contains("already enrolled"));
}

#[test]
fn every_enrollment_refusal_is_one_clear_line_and_exit_3() {
    let cases = [
        ("401 Unauthorized", "", "the enrollment token is not valid"),
        ("403 Forbidden", "", "network address is not allowed"),
        (
            "429 Too Many Requests",
            "Retry-After: 7200\r\n",
            "daily limit is reached; retry in 2h 0m",
        ),
        ("410 Gone", "", "has expired, was revoked or is used up"),
        ("400 Bad Request", "", "rejected the certificate request"),
        ("413 Payload Too Large", "", "too large"),
    ];
    let pki = pki();
    for (status, headers, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let ca = write_root(tmp.path(), &pki);
        let code: u16 = status[..3].parse().unwrap();
        let (port, server) = fake_api(&pki, move |_| {
            let problem = format!(
                r#"{{"type":"urn:fleetplane:problem:x","title":"t","status":{code},"detail":"server says no"}}"#
            );
            (
                status.into(),
                format!("Content-Type: application/problem+json\r\n{headers}"),
                problem,
            )
        });
        let output = enroll(&state, &ca, port);
        server.join().unwrap();
        assert_eq!(output.status.code(), Some(3), "{status}");
        let line = stderr_line(&output);
        assert!(line.contains(expected), "{status}: {line}");
        assert!(
            line.contains(&format!("HTTP {code}: server says no")),
            "{line}"
        );
        assert!(!state.join("device.json").exists());
    }
}

#[test]
fn enrollment_trusts_only_the_given_root() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let server_pki = pki();
    let other = pki();
    let ca = write_root(tmp.path(), &other);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = server_config(&server_pki, None);
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut connection = rustls::ServerConnection::new(config).unwrap();
        let mut tcp = tcp;
        // The handshake fails on the client's side; just drive it until it gives up.
        while connection.complete_io(&mut tcp).is_ok() && connection.is_handshaking() {}
    });
    let output = enroll(&state, &ca, port);
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = stderr_line(&output);
    assert!(line.contains("TLS handshake"), "{line}");
}

// ----- fake identity, for run -------------------------------------------------------------

/// Writes a device identity signed by `pki` (as enrollment would) with `broker_url`.
fn install_identity(state: &Path, pki: &Pki, broker_url: &str) {
    std::fs::create_dir_all(state).unwrap();
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let device_key = key();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, DEVICE_ID);
    let cert = params.signed_by(&device_key, &pki.issuer()).unwrap();
    std::fs::write(
        state.join("device-1.crt"),
        format!("{}{}", cert.pem(), pki.root_pem),
    )
    .unwrap();
    std::fs::write(state.join("device-1.key"), device_key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        state.join("device-1.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(state.join("root-ca.pem"), &pki.root_pem).unwrap();
    let device = serde_json::json!({
        "device_id": DEVICE_ID, "tenant_id": TENANT_ID,
        "server_url": "https://127.0.0.1:1", "broker_url": broker_url,
        "generation": 1, "enrolled_at": 1_700_000_000
    });
    std::fs::write(state.join("device.json"), device.to_string()).unwrap();
}

fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Socket inodes the process holds open.
fn socket_inodes(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let text = target.to_string_lossy().into_owned();
            text.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect()
}

/// Lines of /proc/<pid>/net/{tcp,tcp6,udp,udp6} in LISTEN state (TCP) or bound (UDP) that
/// belong to one of `inodes`.
fn listening(pid: u32, inodes: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (state, inode) = (fields[3], fields[9]);
            let listens = table.starts_with("udp") || state == "0A";
            if listens && inodes.iter().any(|i| i == inode) {
                found.push(format!("{table}: {line}"));
            }
        }
    }
    found
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn run_never_listens_on_any_port() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let pki = pki();
    install_identity(
        &state,
        &pki,
        &format!("mqtts://127.0.0.1:{}", closed_port()),
    );
    let mut child = agent(&state)
        .arg("run")
        .env("FLEET_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut sockets_seen = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let inodes = socket_inodes(pid);
        sockets_seen += inodes.len();
        let listeners = listening(pid, &inodes);
        assert!(listeners.is_empty(), "the agent listens: {listeners:?}");
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited early"
    );
    // `ss` agrees, where it exists.
    if let Ok(ss) = Command::new("ss").args(["-ltnupH"]).output() {
        let text = String::from_utf8_lossy(&ss.stdout);
        assert!(
            !text.contains(&format!("pid={pid},")),
            "ss shows a listener: {text}"
        );
    }
    // The agent was alive and doing its thing; the state file says it is retrying.
    let status = agent(&state).args(["status", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["agent_running"], true, "{report}");
    assert!(
        report["run"]["outbox_records"].as_u64().unwrap() >= 2,
        "{report}"
    );
    let _ = sockets_seen;
    // SIGTERM: a clean stop.
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let report: serde_json::Value = serde_json::from_slice(
        &agent(&state)
            .args(["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(report["run"]["connection"], "stopped");
}

#[test]
fn a_revoked_device_stops_with_exit_4_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let device_pki = pki();
    // The "broker" presents a certificate of the device's fleet root but accepts device
    // certificates of another CA only: every handshake refuses this device's certificate,
    // as the gateway does for a revoked device.
    let mut roots = rustls::RootCertStore::empty();
    let other_root =
        CertificateDer::from_pem_slice(pki_named("another CA").root_pem.as_bytes()).unwrap();
    roots.add(other_root).unwrap();
    let config = server_config(&device_pki, Some(roots));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(10) {
            let Ok(mut tcp) = tcp else { continue };
            let mut connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            while connection.complete_io(&mut tcp).is_ok() && connection.is_handshaking() {}
            let _ = connection.complete_io(&mut tcp);
        }
    });
    install_identity(&state, &device_pki, &format!("mqtts://127.0.0.1:{port}"));
    std::fs::write(
        state.join("agent.toml"),
        "[mqtt]\nbackoff_initial = \"1s\"\nbackoff_max = \"1s\"\n",
    )
    .unwrap();
    let mut child = agent(&state)
        .arg("--config")
        .arg(state.join("agent.toml"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    if status.is_none() {
        child.kill().unwrap();
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = status.unwrap_or_else(|| panic!("the agent did not stop by itself: {stderr}"));
    assert_eq!(status.code(), Some(4), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("fleet-agent: stopping: the broker refused the device certificate"),
        "{stderr}"
    );
    assert!(last.contains("revoked"), "{last}");
}

// ----- contract ---------------------------------------------------------------------------

#[test]
fn configfile_and_status_work_with_config_and_state_dir_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("empty");
    let output = Command::new(AGENT)
        .args(["configfile", "--config"])
        .arg(tmp.path().join("none.toml"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("[telemetry]"));
    let output = agent(&state).arg("status").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("not enrolled"), "{text}");
    let output = agent(&state).args(["status", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["enrolled"], false);
    assert!(
        !state.exists(),
        "status must not create the state directory"
    );
}

#[test]
fn run_without_identity_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let output = agent(tmp.path()).arg("run").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("not enrolled"));
}

#[test]
fn bad_config_file_fails_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "[telemetry]\ninterval = \"often\"\n").unwrap();
    let output = agent(tmp.path())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = stderr_line(&output);
    assert!(line.contains("agent.toml"), "{line}");
    assert!(line.contains("telemetry.interval"), "{line}");
}

#[test]
fn root_is_refused_without_the_override() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the refusal cannot be observed here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for args in ["run", "enroll --server https://x --ca c --token t"] {
        let output = agent(tmp.path())
            .env_remove("FLEET_AGENT_ALLOW_ROOT")
            .args(args.split(' '))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let line = stderr_line(&output);
        assert!(line.contains("refusing to run as root"), "{line}");
        assert!(line.contains("FLEET_AGENT_ALLOW_ROOT=1"), "{line}");
    }
    // status and configfile are read-only and allowed.
    let output = agent(tmp.path())
        .env_remove("FLEET_AGENT_ALLOW_ROOT")
        .arg("status")
        .output()
        .unwrap();
    assert!(output.status.success());
}

#[test]
fn version_is_printed() {
    let output = Command::new(AGENT).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("fleet-agent "));
}
