//! What an operator reads: the fleetd binary runs as a child with stderr redirected to a file
//! (not a terminal), through a short scripted session — an enrollment accepted and one refused,
//! a device revoked through the API and then refused by the broker, a device that connects,
//! publishes, is acknowledged and disconnects cleanly — and is stopped. The log has no ANSI
//! escape, no ERROR line, never the token's secret, and one line per event at INFO. A second
//! run with `log.format = "json"` carries tenant and device ids as fields.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_tests::https::https_request;
use fleet_tests::mqtt::{connect_subscribed, wait_for_ack, DeviceCredentials};
use fleet_tests::records::telemetry_batch;
use fleet_tests::TestDb;
use rumqttc::{Event, Packet, QoS};
use store::api_keys::KeyEnv;
use store::audit::Actor;
use store::{tenants, TenantId};

const WAIT: Duration = Duration::from_secs(60);
/// Sessions of the well-behaved device in the plain-log run.
const SESSIONS: u64 = 5;

fn fleetd_binary() -> PathBuf {
    fleet_tests::workspace_binary("fleetd", "fleetd")
}

/// fleetd as a child, its stderr in `log`.
struct Fleetd {
    child: Child,
    log: PathBuf,
    api: std::net::SocketAddr,
    broker: std::net::SocketAddr,
}

impl Fleetd {
    fn start(db: &TestDb, data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let log = data_dir.join("fleetd.log");
        let mut command = Command::new(fleetd_binary());
        command
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--database-url", db.url()])
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--broker-listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0"])
            // The log the operator reads is the default one: no RUST_LOG, no NO_COLOR.
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().unwrap();
        let mut fleetd = Self {
            child,
            log,
            api: "0.0.0.0:0".parse().unwrap(),
            broker: "0.0.0.0:0".parse().unwrap(),
        };
        let ready = fleetd.wait_for_line("fleetd ready");
        fleetd.api = address_after(&ready, "https://");
        fleetd.broker = address_after(&ready, "mqtts://");
        fleetd
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// The first line holding `needle`, waiting (bounded) for it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.text().lines().find(|line| line.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "fleetd exited: {}",
                self.text()
            );
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the whole log once fleetd has exited (successfully).
    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "fleetd did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = self.text();
        assert!(status.success(), "fleetd exited with {status}: {text}");
        text
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The `127.0.0.1:port` after `scheme` in the ready line.
fn address_after(line: &str, scheme: &str) -> std::net::SocketAddr {
    let rest = &line[line.find(scheme).expect(scheme) + scheme.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// Everything the session needs: fleetd, its database, a tenant with an owner key.
struct Session {
    fleetd: Fleetd,
    ca: certs::IssuingCa,
    app: store::Database,
    tenant: TenantId,
    owner_key: String,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

impl Session {
    async fn start(env: &[(&str, &str)]) -> Self {
        let db = TestDb::new().await;
        let dir = fleet_tests::data_dir();
        // The development PKI fleetd would create, made first so the test can use it.
        let (ca, _) = certs::Pki::load_or_generate_dev(&dir.path().join("pki")).unwrap();
        let fleetd = Fleetd::start(&db, dir.path(), env);
        let app = db.open().await;
        let (tenant, key) =
            tenants::create_with_owner_key(&app.app, "acme", &KeyEnv::live(), &Actor::System)
                .await
                .unwrap();
        Self {
            fleetd,
            ca,
            app,
            tenant: tenant.id,
            owner_key: key.secret.expose().to_owned(),
            _db: db,
            _dir: dir,
        }
    }

    async fn enroll(&self) -> DeviceCredentials {
        fleet_tests::enroll::enroll(self.fleetd.api, &self.ca, &self.app.app, self.tenant).await
    }

    /// Connects `device`, publishes telemetry record `seq`, waits for its ack and disconnects
    /// cleanly (DISCONNECT, then the socket closes).
    async fn publish_once_and_disconnect(&self, device: &DeviceCredentials, seq: u64) {
        let options = device.options(self.ca.root_der(), "localhost", self.fleetd.broker.port());
        let topic = wire::topic::ack(device.device_id);
        let (client, mut events) = connect_subscribed(options, topic, WAIT).await;
        client
            .publish(
                wire::topic::telemetry(device.device_id),
                QoS::AtLeastOnce,
                false,
                telemetry_batch([seq]),
            )
            .await
            .unwrap();
        wait_for_ack(&mut events, seq, WAIT).await;
        client.disconnect().await.unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the DISCONNECT goes out");
    }
}

#[tokio::test]
async fn a_redirected_log_is_plain_has_no_error_and_one_info_line_per_event() {
    let mut session = Session::start(&[]).await;
    let accepted = session.enroll().await;
    let revoked = session.enroll().await;

    // An enrollment with a made-up token: refused, and its text appears nowhere.
    let (_key, csr) = fleet_tests::device::key_and_csr();
    let secret = "fet_live_not-a-token_SECRET-PART-1234";
    let body = serde_json::json!({ "token": secret, "csr": csr }).to_string();
    let headers = [("content-type", "application/json")];
    let api = session.fleetd.api;
    https_request(
        api,
        &session.ca,
        "POST",
        "/v1/enroll",
        &headers,
        body.as_bytes(),
    )
    .await
    .assert_status(401);

    // An API call (the owner key's first use, from 127.0.0.1) that revokes a device.
    let auth = format!("Bearer {}", session.owner_key);
    let path = format!("/v1/devices/{}/revoke", revoked.device_id);
    https_request(
        api,
        &session.ca,
        "POST",
        &path,
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await
    .assert_status(200);

    // The same key again from the same address (no new line), then from another (one line).
    for source in ["127.0.0.1", "127.0.0.1", "127.0.0.2"] {
        fleet_tests::https::https_request_from(
            source.parse().unwrap(),
            api,
            &session.ca,
            "GET",
            "/v1/devices",
            &[("Authorization", auth.as_str())],
            b"",
        )
        .await
        .assert_status(200);
    }

    // The revoked device is refused at CONNECT.
    let options = revoked.options(
        session.ca.root_der(),
        "localhost",
        session.fleetd.broker.port(),
    );
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => return format!("{connack:?}"),
                Err(error) => return error.to_string(),
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(!refused.contains("Success"), "{refused}");

    // Several sessions: rumqttd's "already gone" ERROR on a clean disconnect was a race (about
    // every other session), not a certainty.
    for seq in 1..=SESSIONS {
        session.publish_once_and_disconnect(&accepted, seq).await;
    }
    let disconnected = session.fleetd.wait_for_line(" device disconnected tenant=");
    // rumqttd's ERROR came right after the DISCONNECT; give the router a moment to say it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let tenant = session.tenant.to_string();
    let log = session.fleetd.stop();
    println!("{log}");

    assert!(
        !log.contains("\x1b["),
        "ANSI escapes in a redirected log:\n{log}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
    assert!(!log.contains("SECRET-PART"), "a token's text was logged");
    assert!(!log.contains(&session.owner_key), "an API key was logged");

    // `needle` is the message, right after the target.
    let info = |needle: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains(" INFO ") && l.contains(&format!(": {needle} ")))
            .collect()
    };
    let ready = info("fleetd ready");
    assert_eq!(ready.len(), 1, "{log}");
    for listener in [
        "api=https://127.0.0.1:",
        "broker=mqtts://127.0.0.1:",
        "metrics=http://127.0.0.1:",
    ] {
        assert!(
            ready[0].contains(listener),
            "{listener} missing: {}",
            ready[0]
        );
    }
    let one = |needle: &str, fields: &[&str]| {
        let lines = info(needle);
        assert_eq!(lines.len(), 1, "{needle}: {lines:#?}\n{log}");
        for field in fields {
            assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
        }
    };
    let accepted_device = format!("device={}", accepted.device_id);
    let revoked_device = format!("device={}", revoked.device_id);
    let tenant_field = format!("tenant={tenant}");
    let connected = info("device connected");
    assert_eq!(connected.len(), SESSIONS as usize, "{log}");
    assert!(connected
        .iter()
        .all(|l| l.contains(&accepted_device) && l.contains(&tenant_field)));
    assert_eq!(
        info("device disconnected").len(),
        SESSIONS as usize,
        "{log}"
    );
    assert!(disconnected.contains(&accepted_device), "{disconnected}");
    assert!(
        disconnected.contains("reason=client_disconnect"),
        "{disconnected}"
    );
    one(
        "device refused",
        &[&revoked_device, &tenant_field, "reason=revoked"],
    );
    one("device revoked", &[&revoked_device, &tenant_field]);
    one(
        "enrollment refused",
        &["reason=invalid-token", "source=127.0.0.1"],
    );
    assert_eq!(info("enrollment accepted").len(), 2, "{log}");
    let new_address = info("API key used from a new address");
    assert_eq!(new_address.len(), 2, "{log}");
    assert!(new_address[0].contains(&tenant_field) && new_address[0].contains("source=127.0.0.1"));
    assert!(
        new_address[1].contains("source=127.0.0.2"),
        "{}",
        new_address[1]
    );
    // rumqttd's per-session lines are below INFO now.
    assert!(!log.contains("rumqttd"), "rumqttd lines at INFO:\n{log}");
}

#[tokio::test]
async fn json_logs_carry_tenant_and_device_as_fields() {
    let mut session = Session::start(&[("FLEETD_LOG__FORMAT", "json")]).await;
    let device = session.enroll().await;
    session.publish_once_and_disconnect(&device, 1).await;
    session.fleetd.wait_for_line("\"device disconnected\"");
    let tenant = session.tenant.to_string();
    let device_id = device.device_id.to_string();
    let log = session.fleetd.stop();
    println!("{log}");

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let event = |message: &str| {
        lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {log}"))
    };
    let ready = event("fleetd ready");
    for field in ["api", "broker", "metrics"] {
        assert!(ready[field].is_string(), "{field}: {ready}");
    }
    for message in [
        "enrollment accepted",
        "device connected",
        "device disconnected",
    ] {
        let line = event(message);
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["tenant"], tenant.as_str(), "{line}");
        assert_eq!(line["device"], device_id.as_str(), "{line}");
        assert!(
            !line["message"].as_str().unwrap().contains(&device_id),
            "the id is a field, not in the message: {line}"
        );
    }
    assert!(lines.iter().all(|line| line["level"] != "ERROR"), "{log}");
}
