//! The real `fleet-agent` binary against a real fleetd: enrollment over HTTPS with a token,
//! one round of telemetry and patch status over mutual-TLS MQTT acknowledged after commit, the
//! records in Postgres; then a revoked agent stops and says why.
//!
//! By default the native debug build runs. CI also runs this test with an ARM release build
//! under qemu-user: `FLEET_AGENT_BIN` names the binary and `FLEET_AGENT_RUNNER` the command line
//! that runs it, e.g. `cross/qemu-run aarch64-unknown-linux-musl` (split on spaces; relative
//! paths are taken from the workspace root).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleet_tests::tenancy::tenant;
use fleet_tests::TestDb;
use store::enrollment_tokens::{self, NewEnrollmentToken};
use store::{devices, DeviceId, TenantId};
use tempfile::TempDir;
use uuid::Uuid;

/// `FLEET_AGENT_BIN`, or the agent built from this checkout (always built first: a binary
/// left from an older build would test older code).
fn agent_binary() -> PathBuf {
    if let Ok(binary) = std::env::var("FLEET_AGENT_BIN") {
        return workspace_root().join(binary);
    }
    fleet_tests::workspace_binary("edge-agent", "fleet-agent")
}

/// Runs the agent on the blocking pool: fleetd serves from this test's runtime meanwhile.
async fn agent(state: &Path, args: &[&str]) -> Output {
    let state = state.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || run_agent(&state, &args))
        .await
        .unwrap()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The agent binary, behind `FLEET_AGENT_RUNNER` when set (an emulator).
fn agent_command() -> Command {
    let runner = std::env::var("FLEET_AGENT_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        None => Command::new(agent_binary()),
        Some(program) => {
            let mut command = Command::new(workspace_root().join(program));
            command.args(words).arg(agent_binary());
            command
        }
    }
}

fn run_agent(state: &Path, args: &[String]) -> Output {
    agent_command()
        .arg("--state-dir")
        .arg(state.join("state"))
        .arg("--config")
        .arg(state.join("agent.toml"))
        .args(args)
        .env("FLEET_AGENT_ALLOW_ROOT", "1")
        .output()
        .unwrap()
}

/// `agent enroll` in `state` with fleetd's API at `server` (trusting the root in `root`) and
/// the enrollment token `token`.
async fn enroll(state: &Path, server: &str, root: &Path, token: &str) -> Output {
    let root = root.to_str().unwrap();
    agent(
        state,
        &["enroll", "--server", server, "--ca", root, "--token", token],
    )
    .await
}

/// The key files in the agent's state directory under `state`.
fn key_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("state"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".key"))
        .collect()
}

/// fleetd's configuration for a test: `db`, its data in `data_dir`, every listener on an
/// ephemeral loopback port.
fn fleetd_config(db: &TestDb, data_dir: &TempDir) -> fleetd::Config {
    fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn loopback_token() -> NewEnrollmentToken {
    NewEnrollmentToken {
        name: "agents".into(),
        allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        daily_limit: 10,
        max_uses: None,
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        device_group: "agents".into(),
        device_labels: BTreeMap::new(),
    }
}

async fn token_for(running: &fleetd::Running, tenant: TenantId) -> String {
    issue_token(running, tenant, loopback_token()).await
}

async fn issue_token(
    running: &fleetd::Running,
    tenant: TenantId,
    new: NewEnrollmentToken,
) -> String {
    let mut tx = running.database().app.begin(tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, &new.device_group).await;
    let issued = enrollment_tokens::create(&mut tx, &new, &store::audit::Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    issued.secret.expose().to_owned()
}

#[tokio::test]
async fn the_agent_enrolls_reports_once_and_stops_when_revoked() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let config = fleetd_config(&db, &data_dir);
    let running = fleetd::start(config).await.unwrap();
    let tenant = tenant(&running.database().app, "agents").await;
    let device_dir = tempfile::tempdir().unwrap();
    // The agent's own commented template is a working configuration.
    let template = agent(device_dir.path(), &["configfile"]).await;
    assert!(template.status.success(), "{}", text(&template));
    let template = String::from_utf8(template.stdout).unwrap();
    let device = enrolled_agent(&running, tenant, device_dir.path(), &template).await;

    // One round: telemetry and patch status, acknowledged after commit, then exit 0.
    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(once.status.success(), "{}", text(&once));
    let mut owner = db.connect_as_owner().await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT kind::text FROM device_records WHERE device_id = $1 ORDER BY 1",
    )
    .bind(device)
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert!(
        kinds.iter().any(|k| k.contains("telemetry")),
        "records of kinds {kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k.contains("patch")),
        "records of kinds {kinds:?}"
    );

    // Revoked: the next run is refused at the broker and the agent says so.
    let mut tx = running.database().app.begin(tenant).await.unwrap();
    devices::revoke(
        &mut tx,
        DeviceId(device),
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let refused = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused));
    assert!(
        text(&refused).to_lowercase().contains("revoked"),
        "{}",
        text(&refused)
    );
    running.shutdown().await.unwrap();
}

/// Enrolls an agent with fleetd's API, with `config` as its configuration file (every value
/// left out keeps its default); returns the device id.
async fn enrolled_agent(
    running: &fleetd::Running,
    tenant: TenantId,
    dir: &Path,
    config: &str,
) -> Uuid {
    let token = token_for(running, tenant).await;
    let root = dir.join("root-ca.pem");
    std::fs::write(&root, running.pki().issuing_ca.root_pem()).unwrap();
    std::fs::write(dir.join("agent.toml"), config).unwrap();
    let server = format!("https://localhost:{}", running.api_addr().port());
    let enrolled = enroll(dir, &server, &root, &token).await;
    assert!(enrolled.status.success(), "{}", text(&enrolled));
    let status = agent(dir, &["status", "--json"]).await;
    assert!(status.status.success(), "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    status["device_id"]
        .as_str()
        .expect("status names the device")
        .parse()
        .unwrap()
}

/// (rows, distinct seqs, lowest seq, highest seq) of the device's records.
async fn ledger(db: &TestDb, device: Uuid) -> (i64, i64, i64, i64) {
    let mut owner = db.connect_as_owner().await;
    sqlx::query_as("SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM device_records WHERE device_id = $1")
        .bind(device)
        .fetch_one(&mut owner)
        .await
        .unwrap()
}

#[tokio::test]
async fn records_made_while_the_broker_is_down_arrive_exactly_once_after_it_returns() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = fleetd_config(&db, &data_dir);
    let first = fleetd::start(config.clone()).await.unwrap();
    let broker_addr = first.broker_addr().unwrap();
    let tenant = tenant(&first.database().app, "outage").await;
    let device_dir = tempfile::tempdir().unwrap();
    let fast = "[telemetry]\ninterval_secs = 1\n[mqtt]\nbackoff_max_secs = 1\n";
    let device = enrolled_agent(&first, tenant, device_dir.path(), fast).await;
    first.shutdown().await.unwrap();

    // The agent runs while nothing listens: its records wait in the outbox.
    let log = std::fs::File::create(device_dir.path().join("agent.log")).unwrap();
    let mut running_agent = agent_command()
        .arg("--state-dir")
        .arg(device_dir.path().join("state"))
        .arg("--config")
        .arg(device_dir.path().join("agent.toml"))
        .arg("run")
        .env("FLEET_AGENT_ALLOW_ROOT", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(
        ledger(&db, device).await.0,
        0,
        "nothing can have arrived yet"
    );

    // The broker returns on the same address.
    config.broker_listen = broker_addr;
    let second = fleetd::start(config).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, distinct, _, _) = ledger(&db, device).await;
        if distinct >= 6 {
            break;
        }
        let log = std::fs::read_to_string(device_dir.path().join("agent.log")).unwrap_or_default();
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox did not drain; agent log:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running_agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = tokio::task::spawn_blocking(move || running_agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped.success(), "agent exit: {stopped}");
    let (rows, distinct, lowest, highest) = ledger(&db, device).await;
    assert_eq!(rows, distinct, "no record twice");
    assert_eq!(
        (lowest, highest - lowest + 1),
        (1, rows),
        "no gap: every record from the outage arrived"
    );
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_enrollment_refusal_from_fleetd_is_one_clear_line_and_exit_3() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let config = fleetd_config(&db, &data_dir);
    let running = fleetd::start(config).await.unwrap();
    let tenant = tenant(&running.database().app, "refusals").await;
    let elsewhere = NewEnrollmentToken {
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        ..loopback_token()
    };
    let once_a_day = NewEnrollmentToken {
        daily_limit: 1,
        ..loopback_token()
    };
    let used_daily = issue_token(&running, tenant, once_a_day).await;
    let revoked = {
        let mut tx = running.database().app.begin(tenant).await.unwrap();
        let issued =
            enrollment_tokens::create(&mut tx, &loopback_token(), &store::audit::Actor::System)
                .await
                .unwrap();
        enrollment_tokens::revoke(&mut tx, issued.token.id, &store::audit::Actor::System)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        issued.secret.expose().to_owned()
    };
    let cases = [
        ("fpe_not-a-token", "not valid"),
        (
            issue_token(&running, tenant, elsewhere).await.as_str(),
            "address is not allowed",
        ),
        (revoked.as_str(), "was revoked"),
        (used_daily.as_str(), "daily limit"),
    ]
    .map(|(token, says)| (token.to_owned(), says));
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("root-ca.pem");
    std::fs::write(&root, running.pki().issuing_ca.root_pem()).unwrap();
    let server = format!("https://localhost:{}", running.api_addr().port());
    // The daily token's one use, so that its next use is refused.
    let first = tempfile::tempdir().unwrap();
    let ok = enroll(first.path(), &server, &root, &used_daily).await;
    assert!(ok.status.success(), "{}", text(&ok));
    for (token, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let refused = enroll(dir.path(), &server, &root, &token).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{says}: {}", text(&refused));
        assert!(stderr.contains(says), "expected {says:?} in {stderr:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(
            !dir.path().join("state/device.json").exists(),
            "no identity after a refusal"
        );
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_agent_renews_its_certificate_with_a_new_key_without_an_operator() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = fleetd_config(&db, &data_dir);
    // With 5 minutes of clock-skew allowance before "now", a 2-minute certificate is already in
    // the last third of its life when issued: the agent renews it at its first check.
    config.pki.device_cert_lifetime = std::time::Duration::from_secs(120);
    let running = fleetd::start(config).await.unwrap();
    let tenant = tenant(&running.database().app, "renewal").await;
    let device_dir = tempfile::tempdir().unwrap();
    let device = enrolled_agent(&running, tenant, device_dir.path(), "").await;
    let key_before = key_files(device_dir.path());

    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(once.status.success(), "{}", text(&once));

    let mut owner = db.connect_as_owner().await;
    let certificates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM device_certificates WHERE device_id = $1")
            .bind(device)
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert!(
        certificates >= 2,
        "enrollment and at least one renewal, got {certificates}"
    );
    let renewals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND action = 'device.certificate_renewed'")
        .bind(tenant)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert!(renewals >= 1, "the renewal is audited");
    let key_after = key_files(device_dir.path());
    assert_ne!(
        key_before, key_after,
        "a new key was generated on the device"
    );
    let kinds: i64 = sqlx::query_scalar("SELECT count(*) FROM device_records WHERE device_id = $1")
        .bind(device)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert!(
        kinds > 0,
        "records still arrive with the renewed certificate"
    );
    running.shutdown().await.unwrap();
}

/// A server whose TLS certificate chains to the `--ca` root but which answers with another root
/// (and a device certificate from that other PKI): the agent must not pin the root it is sent.
#[tokio::test]
async fn enroll_refuses_a_root_that_is_not_the_ca_it_was_given() {
    let db = TestDb::new().await;
    let database = db.open().await;
    let tenant = tenant(&database.app, "agents").await;
    let pki_dir = tempfile::tempdir().unwrap();
    let generate = |name: &str| {
        certs::Pki::generate(&pki_dir.path().join(name), &certs::PkiParams::default())
            .unwrap()
            .into_issuing_ca()
    };
    let trusted = generate("trusted");
    let other = std::sync::Arc::new(generate("other"));
    let server_cert = trusted
        .issue_server_cert(&certs::ServerCertParams::new(
            vec!["localhost".into()],
            vec![std::net::IpAddr::from([127, 0, 0, 1])],
        ))
        .unwrap();
    let tls = api::tls_server_config_for(&server_cert, trusted.root_der().clone()).unwrap();
    let state = api::ApiState::new(
        database.app.clone(),
        other,
        "mqtts://broker.test:8883".into(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(api::serve_tls(listener, tls, api::router(state), async {
        let _ = stopped.await;
    }));

    let mut tx = database.app.begin(tenant).await.unwrap();
    let new = loopback_token();
    fleet_tests::ensure_group(&mut tx, &new.device_group).await;
    let token = enrollment_tokens::create(&mut tx, &new, &store::audit::Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let device_dir = tempfile::tempdir().unwrap();
    let root = device_dir.path().join("trusted-root.pem");
    std::fs::write(&root, trusted.root_pem()).unwrap();
    std::fs::write(device_dir.path().join("agent.toml"), "").unwrap();
    let out = enroll(device_dir.path(), &server, &root, token.secret.expose()).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not the --ca root"), "{}", text(&out));
    let state = device_dir.path().join("state");
    assert!(!state.join("device.json").exists(), "nothing is installed");
    assert!(!state.join("root-ca.pem").exists(), "nothing is pinned");

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    database.close().await.unwrap();
}

/// A record message lost on purpose between the broker and ingest (the broker has PUBACKed it,
/// so MQTT will not resend it) is healed by the agent's own resend while it stays connected:
/// every record committed exactly once, one session.
#[tokio::test]
async fn a_loss_between_broker_and_ingest_heals_by_resend_without_a_reconnect() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(fleetd_config(&db, &data_dir)).await.unwrap();
    let tenant = tenant(&running.database().app, "resend").await;
    let device_dir = tempfile::tempdir().unwrap();
    let config = "[mqtt]\nresend_after = \"2s\"\nresend_max = \"4s\"\n";
    let device = enrolled_agent(&running, tenant, device_dir.path(), config).await;
    let sessions_before = running.broker_stats().unwrap().sessions_started;
    // The first two record messages never reach ingest.
    let loss = running.inject_ingest_loss(2);

    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(once.status.success(), "{}", text(&once));
    assert_eq!(loss.dropped(), 2, "the loss was injected");
    assert!(
        text(&once).contains("publishing them again"),
        "{}",
        text(&once)
    );
    let sessions = running.broker_stats().unwrap().sessions_started - sessions_before;
    assert_eq!(sessions, 1, "healed without a reconnect: {}", text(&once));
    let (rows, distinct, lowest, highest) = ledger(&db, device).await;
    assert!(rows >= 3, "start event, telemetry and patch status: {rows}");
    assert_eq!(rows, distinct, "no record twice");
    assert_eq!((lowest, highest), (1, rows), "no gap");
    running.shutdown().await.unwrap();
}

/// The sequence space of the agent's outbox under `dir` (its `outbox.meta` line).
fn outbox_epoch(dir: &Path) -> wire::Epoch {
    let meta = std::fs::read_to_string(dir.join("state/outbox/outbox.meta")).unwrap();
    let line = meta
        .lines()
        .find_map(|line| line.strip_prefix("epoch "))
        .unwrap_or_else(|| panic!("no epoch in {meta}"));
    let (id, first_seq) = line.split_once(' ').unwrap();
    wire::Epoch {
        id: id.parse().unwrap(),
        first_seq: first_seq.parse().unwrap(),
    }
}

/// The agent events of `device` in the ledger.
async fn agent_events(db: &TestDb, device: Uuid) -> Vec<wire::AgentEvent> {
    let mut owner = db.connect_as_owner().await;
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM device_records WHERE device_id = $1 AND kind = 'event' ORDER BY received_at, seq",
    )
    .bind(device)
    .fetch_all(&mut owner)
    .await
    .unwrap();
    bodies
        .iter()
        .filter_map(|body| match wire::decode_body(body).unwrap() {
            wire::Body::Event(event) => Some(event),
            _ => None,
        })
        .collect()
}

/// Publishes `seqs` as telemetry of `device` in `epoch`, with a certificate of its own identity
/// (not through the agent); waits for their ack.
async fn publish_as_the_device(
    running: &fleetd::Running,
    tenant: TenantId,
    device: Uuid,
    epoch: wire::Epoch,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let ca = &running.pki().issuing_ca;
    let credentials = fleet_tests::mqtt::DeviceCredentials::issued(ca, tenant, DeviceId(device));
    let port = running.broker_addr().unwrap().port();
    let (client, mut events) = fleet_tests::mqtt::connect_subscribed(
        credentials.options(ca.root_der(), "localhost", port),
        wire::topic::ack(DeviceId(device)),
        std::time::Duration::from_secs(10),
    )
    .await;
    let last = *seqs.end();
    let batch = wire::Batch::in_epoch(seqs.map(fleet_tests::records::telemetry).collect(), epoch);
    client
        .publish(
            wire::topic::telemetry(DeviceId(device)),
            rumqttc::QoS::AtLeastOnce,
            false,
            wire::encode_batch(&batch),
        )
        .await
        .unwrap();
    fleet_tests::mqtt::wait_for_ack(&mut events, last, std::time::Duration::from_secs(10)).await;
    client.disconnect().await.unwrap();
}

/// The server's watermark is above everything the agent ever appended (records were published
/// with the device's identity from elsewhere): its ack cannot be the agent's, so the agent
/// starts a new sequence space, says so in an event, and its new records are stored.
#[tokio::test]
async fn an_ack_above_what_the_agent_sent_starts_a_new_epoch_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(fleetd_config(&db, &data_dir)).await.unwrap();
    let tenant = tenant(&running.database().app, "epoch").await;
    let device_dir = tempfile::tempdir().unwrap();
    let device = enrolled_agent(&running, tenant, device_dir.path(), "").await;
    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(once.status.success(), "{}", text(&once));
    let (first_rows, _, _, first_last) = ledger(&db, device).await;
    assert_eq!(first_rows, first_last, "seq 1..={first_last}");

    let epoch = outbox_epoch(device_dir.path());
    assert_ne!(epoch.id, 0, "a new outbox starts an epoch of its own");
    publish_as_the_device(
        &running,
        tenant,
        device,
        epoch,
        first_last as u64 + 1..=first_last as u64 + 8,
    )
    .await;
    let (rows_before, ..) = ledger(&db, device).await;
    assert_eq!(rows_before, first_last + 8);

    // The agent numbers its next records from first_last + 1: the server has those numbers.
    let again = agent(device_dir.path(), &["run", "--once", "--timeout", "20"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("starting a new epoch"),
        "{}",
        text(&again)
    );
    let (rows, ..) = ledger(&db, device).await;
    assert!(
        rows >= rows_before + 4,
        "the second run's start event, telemetry, patch status and epoch event are stored: {rows} rows after {rows_before}"
    );
    let new_epoch = outbox_epoch(device_dir.path());
    assert_ne!(new_epoch.id, epoch.id);
    assert_eq!(new_epoch.first_seq, first_last as u64 + 1);
    let started: Vec<wire::EpochStarted> = agent_events(&db, device)
        .await
        .into_iter()
        .filter_map(|event| match event {
            wire::AgentEvent::EpochStarted(started) => Some(started),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        [wire::EpochStarted {
            previous: epoch.id,
            epoch: new_epoch.id,
            first_seq: first_last as u64 + 1,
            server_watermark: first_last as u64 + 8,
            last_appended: started.first().map_or(0, |s| s.last_appended),
        }],
        "one event says so"
    );
    assert!(started[0].last_appended < started[0].server_watermark);
    running.shutdown().await.unwrap();
}

/// The agent's state directory is wiped and recreated under the same identity: its new outbox
/// numbers from 1 again, and those records are stored, not taken for the old ones.
#[tokio::test]
async fn a_wiped_state_directory_gets_its_new_records_stored() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(fleetd_config(&db, &data_dir)).await.unwrap();
    let tenant = tenant(&running.database().app, "wiped").await;
    let device_dir = tempfile::tempdir().unwrap();
    let device = enrolled_agent(&running, tenant, device_dir.path(), "").await;
    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(once.status.success(), "{}", text(&once));
    let (first_rows, ..) = ledger(&db, device).await;
    let first_epoch = outbox_epoch(device_dir.path());

    std::fs::remove_dir_all(device_dir.path().join("state/outbox")).unwrap();
    let again = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(again.status.success(), "{}", text(&again));
    let second_epoch = outbox_epoch(device_dir.path());
    assert_ne!(second_epoch.id, first_epoch.id);
    assert_eq!(second_epoch.first_seq, 1);
    let (rows, _, lowest, _) = ledger(&db, device).await;
    assert_eq!(lowest, 1);
    assert!(
        rows >= 2 * first_rows,
        "the second run's records (from seq 1 again) are stored: {rows} rows, {first_rows} after the first run"
    );
    let starts = agent_events(&db, device)
        .await
        .into_iter()
        .filter(|event| matches!(event, wire::AgentEvent::Started(_)))
        .count();
    assert_eq!(starts, 2, "both runs' start events");
    running.shutdown().await.unwrap();
}

/// Copies the files of directory `from` into `to` (created), without subdirectories.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The agent's outbox is restored from an older copy: it numbers new records with sequence
/// numbers the server already holds other records under (as many as the server has, so no ack
/// is above what it appended). The server sees the reuse, asks for a new epoch, and the new
/// records are stored.
#[tokio::test]
async fn an_outbox_restored_from_an_older_copy_gets_its_new_records_stored() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(fleetd_config(&db, &data_dir)).await.unwrap();
    let tenant = tenant(&running.database().app, "restored").await;
    let device_dir = tempfile::tempdir().unwrap();
    let device = enrolled_agent(&running, tenant, device_dir.path(), "").await;
    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(once.status.success(), "{}", text(&once));
    let outbox = device_dir.path().join("state/outbox");
    let snapshot = device_dir.path().join("outbox-snapshot");
    copy_dir(&outbox, &snapshot);
    let again = agent(device_dir.path(), &["run", "--once", "--timeout", "60"]).await;
    assert!(again.status.success(), "{}", text(&again));
    let (rows_before, ..) = ledger(&db, device).await;

    std::fs::remove_dir_all(&outbox).unwrap();
    copy_dir(&snapshot, &outbox);
    let restored = agent(device_dir.path(), &["run", "--once", "--timeout", "30"]).await;
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(
        text(&restored).contains("starting a new epoch"),
        "{}",
        text(&restored)
    );
    let (rows, ..) = ledger(&db, device).await;
    let runs = rows_before / 2;
    assert!(
        rows > rows_before + runs,
        "the restored run's records and its epoch event are stored: {rows} rows, {rows_before} before"
    );
    let starts = agent_events(&db, device)
        .await
        .into_iter()
        .filter(|event| matches!(event, wire::AgentEvent::Started(_)))
        .count();
    assert_eq!(starts, 3, "every run's start event");
    let mut owner = db.connect_as_owner().await;
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT last_error_reason FROM device_ingest_state WHERE device_id = $1",
    )
    .bind(device)
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("seq_reused"));
    running.shutdown().await.unwrap();
}

/// With every record message lost, the agent keeps at most `max_unacked_records` out: one
/// record per round (the first publish and each resend), never the whole outbox.
#[tokio::test]
async fn what_the_agent_has_out_without_an_ack_is_capped() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(fleetd_config(&db, &data_dir)).await.unwrap();
    let tenant = tenant(&running.database().app, "capped").await;
    let device_dir = tempfile::tempdir().unwrap();
    let config = "[mqtt]\nmax_unacked_records = 1\nresend_after = \"1s\"\nresend_max = \"1s\"\n";
    let device = enrolled_agent(&running, tenant, device_dir.path(), config).await;
    let loss = running.inject_ingest_loss(u64::MAX);

    let once = agent(device_dir.path(), &["run", "--once", "--timeout", "5"]).await;
    assert!(
        !once.status.success(),
        "nothing can be acked: {}",
        text(&once)
    );
    let resends = text(&once).matches("publishing them again").count() as u64;
    assert!(resends >= 2, "{}", text(&once));
    // What the agent published last may still be on its way into ingest.
    let mut dropped = loss.dropped();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        dropped = loss.dropped();
        if dropped == 1 + resends {
            break;
        }
    }
    assert_eq!(
        dropped,
        1 + resends,
        "one single-record message per round: {}",
        text(&once)
    );
    assert_eq!(ledger(&db, device).await.0, 0);
    running.shutdown().await.unwrap();
}
