//! fleetd started in-process: readiness, start-up refusals, and the private cluster's lifetime.

use fleet_tests::https::https_request;
use fleet_tests::TestDb;
use fleetd::Config;
use store::audit::{self, ChainVerdict};
use store::tenants;

/// `GET path` over HTTPS, trusting exactly the fleet root of `running`.
async fn get(running: &fleetd::Running, path: &str) -> (u16, String) {
    let response = https_request(
        running.api_addr(),
        &running.pki().issuing_ca,
        "GET",
        path,
        &[],
        b"",
    )
    .await;
    assert_eq!(
        response.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    (response.status, String::from_utf8(response.body).unwrap())
}

fn config_for(db: &TestDb, data_dir: &tempfile::TempDir) -> Config {
    fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap())
}

#[tokio::test]
async fn health_and_readiness_answer_over_https() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(config_for(&db, &data_dir)).await.unwrap();
    let (status, body) = get(&running, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = get(&running, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    let (status, _) = get(&running, "/nope").await;
    assert_eq!(status, 404);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn fleetd_refuses_to_start_when_a_tenant_lacks_its_chain_head() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(config_for(&db, &data_dir)).await.unwrap();
    let tenant = tenants::create(
        &running.database().app,
        "orphaned",
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    running.shutdown().await.unwrap();

    let mut owner = db.connect_as_owner().await;
    sqlx::query("DELETE FROM audit_chain_heads WHERE tenant_id = $1")
        .bind(tenant.id)
        .execute(&mut owner)
        .await
        .unwrap();

    let err = fleetd::start(config_for(&db, &data_dir))
        .await
        .err()
        .expect("fleetd must refuse to start");
    let message = format!("{err:#}");
    assert!(message.contains(&tenant.id.to_string()), "{message}");
    assert!(message.contains("no audit chain head"), "{message}");
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let mut config = Config {
        database_url: Some("postgres://fleet@127.0.0.1:1/fleet".parse().unwrap()),
        ..Config::default()
    };
    config.database.connect_timeout = std::time::Duration::from_secs(1);
    let err = fleetd::start(config).await.err().expect("must fail");
    let message = format!("{err:#}");
    assert!(
        message.starts_with("opening the database: database:"),
        "{message}"
    );
}

#[tokio::test]
async fn the_private_cluster_survives_a_restart_of_fleetd_with_its_data() {
    let data_dir = fleet_tests::data_dir();
    let config = Config {
        data_dir: data_dir.path().to_path_buf(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        broker_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };

    let first = fleetd::start(config.clone()).await.unwrap();
    assert!(
        first.database().cluster().is_some(),
        "no URL configured: a private cluster"
    );
    let tenant = tenants::create(&first.database().app, "kept", &store::audit::Actor::System)
        .await
        .unwrap();
    let (status, _) = get(&first, "/readyz").await;
    assert_eq!(status, 200);
    first.shutdown().await.unwrap();
    assert!(
        !data_dir.path().join("postgres/postmaster.pid").exists(),
        "postgres still running after shutdown"
    );

    let second = fleetd::start(config).await.unwrap();
    let mut tx = second.database().app.begin(tenant.id).await.unwrap();
    assert_eq!(store::tenants::get(&mut tx).await.unwrap(), tenant);
    assert_eq!(
        audit::verify(&mut tx).await.unwrap(),
        ChainVerdict::Intact { events: 1 }
    );
    tx.rollback().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_development_pki_is_created_once_and_reused() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let first = fleetd::start(config_for(&db, &data_dir)).await.unwrap();
    let root = first.pki().issuing_ca.root_der().clone();
    let server_chain = first.pki().server_cert.chain_der();
    assert_eq!(server_chain.len(), 2, "server certificate and issuing CA");
    first.shutdown().await.unwrap();
    let key = data_dir.path().join("pki/issuing-ca.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let second = fleetd::start(config_for(&db, &data_dir)).await.unwrap();
    assert_eq!(
        second.pki().issuing_ca.root_der(),
        &root,
        "the same PKI after a restart"
    );
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_configured_pki_directory_must_exist() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = config_for(&db, &data_dir);
    config.pki.dir = Some(data_dir.path().join("no-such-pki"));
    let err = fleetd::start(config).await.err().expect("must refuse");
    let message = format!("{err:#}");
    assert!(
        message.contains("pki.dir") && message.contains("no-such-pki"),
        "{message}"
    );
    assert!(
        !data_dir.path().join("no-such-pki").exists(),
        "a configured PKI is never generated"
    );
}

/// Log output written to a buffer (no ANSI colours), for the test thread only.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn a_tampered_chain_tail_is_logged_and_exported_at_start_and_fleetd_still_starts() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(config_for(&db, &data_dir)).await.unwrap();
    let app = &running.database().app;
    let tampered = tenants::create(app, "tampered", &store::audit::Actor::System)
        .await
        .unwrap();
    let intact = tenants::create(app, "intact", &store::audit::Actor::System)
        .await
        .unwrap();
    running.shutdown().await.unwrap();

    // As an attacker with database access would: triggers off, the newest event rewritten.
    let mut owner = db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    let changed = sqlx::query(
        "UPDATE audit_events SET actor = 'operator:mallory' WHERE tenant_id = $1 AND seq = 1",
    )
    .bind(tampered.id)
    .execute(&mut owner)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);

    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let running = fleetd::start(config_for(&db, &data_dir))
        .await
        .expect("fleetd starts on a broken chain");
    let text = logs.text();
    let broken_line = text
        .lines()
        .find(|line| line.contains("audit chain broken"))
        .unwrap_or_else(|| panic!("no 'audit chain broken' line in:\n{text}"));
    assert!(broken_line.contains("ERROR"), "{broken_line}");
    assert!(
        broken_line.contains(&tampered.id.to_string()),
        "{broken_line}"
    );
    assert!(broken_line.contains("content_changed"), "{broken_line}");
    assert!(
        !text.contains(&intact.id.to_string()),
        "only the broken tenant is named:\n{text}"
    );

    let body = fleet_tests::metrics::scrape_body(running.metrics_addr()).await;
    let value = |series: &str| {
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in:\n{body}"))
            .to_owned()
    };
    assert_eq!(value("fleet_audit_chains_broken"), "1");
    assert_eq!(
        value(r#"fleet_audit_chain_verifications_total{scope="tail",result="broken"}"#),
        "1"
    );
    assert_eq!(
        value(r#"fleet_audit_chain_verifications_total{scope="tail",result="intact"}"#),
        "1"
    );
    running.shutdown().await.unwrap();
}

/// Polls `/readyz` (bounded) until its answer is `expected`; returns the last answer.
async fn wait_for_readiness(running: &fleetd::Running, expected: (u16, &str)) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = get(running, "/readyz").await;
        if (answer.0, answer.1.as_str()) == expected || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

const NOT_READY_DATABASE: &str = r#"{"status":"not_ready","failing":["database"]}"#;

#[tokio::test]
async fn readiness_names_the_database_when_fleetd_cannot_reach_it() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(config_for(&db, &data_dir)).await.unwrap();
    assert_eq!(get(&running, "/readyz").await.0, 200);

    // The application role may no longer log in, and its connections are cut: the pool's
    // next connection is refused.
    let role = db.app_role().await;
    let mut owner = db.connect_as_owner().await;
    sqlx::query(&format!("ALTER ROLE {role} NOLOGIN"))
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&role)
        .execute(&mut owner)
        .await
        .unwrap();
    let (status, body) = wait_for_readiness(&running, (503, NOT_READY_DATABASE)).await;
    assert_eq!((status, body.as_str()), (503, NOT_READY_DATABASE));
    // Short names only: no error text, role, host or version for an unauthenticated caller.
    assert!(
        !body.contains(&role) && !body.contains("127.0.0.1"),
        "{body}"
    );

    sqlx::query(&format!("ALTER ROLE {role} LOGIN"))
        .execute(&mut owner)
        .await
        .unwrap();
    let (status, body) = wait_for_readiness(&running, (200, r#"{"status":"ready"}"#)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn readiness_names_ingest_when_its_writes_are_held_past_the_threshold() {
    use fleet_tests::mqtt::{connect_subscribed, wait_for_ack, DeviceCredentials};
    use rumqttc::QoS;

    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = config_for(&db, &data_dir);
    config.api.ready_max_ingest_lag = std::time::Duration::from_millis(300);
    let running = fleetd::start(config).await.unwrap();
    let (tenant, devices) =
        fleet_tests::tenancy::tenant_with_devices(&running.database().app, "acme", 1).await;
    let ca = &running.pki().issuing_ca;
    let device = DeviceCredentials::issued(ca, tenant, devices[0]);
    let port = running.broker_addr().unwrap().port();
    let options = device.options(ca.root_der(), "localhost", port);
    let within = std::time::Duration::from_secs(30);
    let (client, mut events) =
        connect_subscribed(options, wire::topic::ack(devices[0]), within).await;
    let ready = (200, r#"{"status":"ready"}"#);
    assert_eq!(
        wait_for_readiness(&running, ready).await.0,
        200,
        "idle ingest is ready"
    );

    // A held lock on the records table: ingest's writer waits, holding the message.
    let mut owner = db.connect_as_owner().await;
    sqlx::query("BEGIN").execute(&mut owner).await.unwrap();
    sqlx::query("LOCK TABLE device_records IN ACCESS EXCLUSIVE MODE")
        .execute(&mut owner)
        .await
        .unwrap();
    client
        .publish(
            wire::topic::telemetry(devices[0]),
            QoS::AtLeastOnce,
            false,
            fleet_tests::records::telemetry_batch([1]),
        )
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        wait_for_ack(&mut events, 1, within).await;
    });
    let lagging = (503, r#"{"status":"not_ready","failing":["ingest_lag"]}"#);
    let (status, body) = wait_for_readiness(&running, lagging).await;
    assert_eq!((status, body.as_str()), lagging);

    sqlx::query("ROLLBACK").execute(&mut owner).await.unwrap();
    driver
        .await
        .expect("the record is committed and acknowledged once the lock is gone");
    let (status, body) = wait_for_readiness(&running, ready).await;
    assert_eq!((status, body.as_str()), ready);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn readiness_names_the_broker_when_the_external_one_is_unreachable() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = config_for(&db, &data_dir);
    // Nothing listens on port 1.
    config.external_broker.url = Some("mqtts://127.0.0.1:1".parse().unwrap());
    config.external_broker.client_id = Some("fleetd-ready-test".into());
    let running = fleetd::start(config).await.unwrap();
    let expected = (503, r#"{"status":"not_ready","failing":["broker"]}"#);
    let (status, body) = wait_for_readiness(&running, expected).await;
    assert_eq!((status, body.as_str()), expected);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn fleetd_signs_new_events_every_interval() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = config_for(&db, &data_dir);
    config.audit.checkpoint_interval = std::time::Duration::from_secs(1);
    let dir = config.audit_checkpoint_dir();
    let running = fleetd::start(config).await.unwrap();
    let tenant = tenants::create(&running.database().app, "signed", &audit::Actor::System)
        .await
        .unwrap()
        .id;
    let first = dir.join(tenant.to_string()).join("1.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !first.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 20 s of an interval of 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
    let found = store::audit_checkpoints::read_dir(&dir, tenant).unwrap();
    assert_eq!(found.last().map(|c| c.seq), Some(1), "{found:?}");
    let key = std::fs::read(data_dir.path().join("audit-checkpoint.key")).unwrap();
    let key = store::audit_checkpoints::CheckpointKey::from_seed(&key.try_into().unwrap())
        .unwrap()
        .public_key();
    assert!(found.iter().all(|c| c.is_authentic(&key)));
}

#[tokio::test]
async fn the_shutdown_signs_what_no_interval_reached() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = config_for(&db, &data_dir);
    config.audit.checkpoint_interval = std::time::Duration::from_secs(3600);
    let dir = config.audit_checkpoint_dir();
    let running = fleetd::start(config).await.unwrap();
    let tenant = tenants::create(&running.database().app, "late", &audit::Actor::System)
        .await
        .unwrap()
        .id;
    assert!(store::audit_checkpoints::read_dir(&dir, tenant)
        .unwrap()
        .is_empty());
    running.shutdown().await.unwrap();
    let found = store::audit_checkpoints::read_dir(&dir, tenant).unwrap();
    assert_eq!(found.iter().map(|c| c.seq).collect::<Vec<_>>(), [1]);
}
