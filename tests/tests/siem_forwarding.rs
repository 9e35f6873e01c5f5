//! SIEM forwarding (issue 15, item 3) against Debian's rsyslog, which each test starts itself as
//! a TLS collector on loopback: opted-in tenants' events arrive as RFC 5424 with tenant, seq and
//! hash in the structured data; other tenants send nothing; a restart of fleetd or of the
//! collector loses no seq; an untrusted collector gets nothing and is counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certs::{IssuingCa, Pki, PkiParams};
use fleet_tests::rsyslog::{Received, Rsyslog};
use fleet_tests::TestDb;
use fleetd::config::SiemSettings;
use fleetd::siem::{Forwarder, SiemMetrics};
use serde_json::json;
use store::audit::{self, Actor, AuditEvent};
use store::tenants::{self, SettingsChange};
use store::{AppDb, TenantId};
use tokio::sync::watch;

/// Bound of every wait for messages to arrive.
const ARRIVAL: Duration = Duration::from_secs(30);

fn new_ca(dir: &Path) -> Arc<IssuingCa> {
    Pki::generate(&dir.join("pki"), &PkiParams::default()).unwrap();
    Arc::new(IssuingCa::load(&dir.join("pki")).unwrap())
}

/// `[siem]` for `collector`, trusting `ca`'s root.
fn siem_settings(dir: &Path, ca: &IssuingCa, port: u16) -> SiemSettings {
    let ca_file = dir.join("siem-ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).unwrap();
    SiemSettings {
        collector: Some(format!("127.0.0.1:{port}")),
        ca_file: Some(ca_file),
        server_name: Some("localhost".into()),
        hostname: Some("fleetd-test".into()),
        batch: 7,
        poll_interval: Duration::from_millis(100),
        ..SiemSettings::default()
    }
}

async fn tenant(app: &AppDb, name: &str, forwarding: bool) -> TenantId {
    let tenant = tenants::create(app, name, &Actor::System).await.unwrap();
    if forwarding {
        let mut tx = app.begin(tenant.id).await.unwrap();
        let change = SettingsChange {
            siem_forwarding: Some(true),
            ..SettingsChange::default()
        };
        let settings = tenants::update_settings(&mut tx, &change, app, &Actor::System)
            .await
            .unwrap();
        assert!(settings.siem_forwarding);
        tx.commit().await.unwrap();
    }
    tenant.id
}

/// Appends `count` events with details that need escaping nowhere but in JSON.
async fn append(app: &AppDb, tenant: TenantId, count: usize) {
    for i in 0..count {
        let mut tx = app.begin(tenant).await.unwrap();
        audit::append_for_tests(
            &mut tx,
            r#"operator:"quoted]\back"#,
            "test.event",
            "device:d1",
            &json!({ "i": i, "text": "a \"b\" ]" }),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}

async fn events(app: &AppDb, tenant: TenantId) -> Vec<AuditEvent> {
    let mut tx = app.begin(tenant).await.unwrap();
    let events = audit::list_after(&mut tx, 0, 100_000).await.unwrap();
    tx.commit().await.unwrap();
    events
}

async fn cursor(app: &AppDb, tenant: TenantId) -> i64 {
    let mut tx = app.begin(tenant).await.unwrap();
    let seq = store::siem::cursor(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    seq
}

/// Received messages of `tenant` by seq (how many times each arrived, and the last copy).
fn by_seq(received: &[Received], tenant: TenantId) -> BTreeMap<i64, (usize, Received)> {
    let mut out: BTreeMap<i64, (usize, Received)> = BTreeMap::new();
    for message in received {
        if message.params.get("tenant") != Some(&tenant.to_string()) {
            continue;
        }
        let seq: i64 = message.params["seq"].parse().unwrap();
        let entry = out.entry(seq).or_insert((0, message.clone()));
        entry.0 += 1;
        entry.1 = message.clone();
    }
    out
}

/// Every seq 1..=last of `tenant` arrived at least once.
fn complete(received: &[Received], tenant: TenantId, last: i64) -> bool {
    let seen = by_seq(received, tenant);
    (1..=last).all(|seq| seen.contains_key(&seq))
}

/// Each of `events` arrived exactly as stored: RFC 5424 as rsyslog parsed it, the chain's
/// fields in the structured data, the details as MSG. Returns how many arrived more than once.
fn check_arrived(received: &[Received], expected: &[AuditEvent]) -> usize {
    let tenant = expected[0].tenant_id;
    let seen = by_seq(received, tenant);
    let mut duplicates = 0;
    for event in expected {
        let (copies, message) = seen
            .get(&event.seq)
            .unwrap_or_else(|| panic!("seq {} did not arrive", event.seq));
        duplicates += copies - 1;
        assert_eq!(message.protocol_version, "1", "parsed as RFC 5424");
        assert_eq!(message.app_name, "fleetplane");
        assert_eq!(message.msgid, event.action);
        assert_eq!(message.sd_id, fleetd::siem::SD_ID);
        assert_eq!(message.params["hash"], hex::encode(event.hash));
        assert_eq!(message.params["prev_hash"], hex::encode(event.prev_hash));
        assert_eq!(message.params["actor"], event.actor);
        assert_eq!(message.params["target"], event.target);
        let details: serde_json::Value = serde_json::from_str(&message.msg).unwrap();
        assert_eq!(
            details,
            serde_json::from_str::<serde_json::Value>(&event.details).unwrap()
        );
    }
    duplicates
}

fn start_forwarder(
    app: &AppDb,
    settings: &SiemSettings,
) -> (
    SiemMetrics,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let metrics = SiemMetrics::default();
    let forwarder = Forwarder::new(app.clone(), settings, metrics.clone())
        .unwrap()
        .expect("a collector is configured");
    let (stop, stopped) = watch::channel(false);
    (metrics, stop, forwarder.spawn(stopped))
}

async fn stop_forwarder(stop: watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the forwarder stops")
        .unwrap();
}

#[tokio::test]
async fn fleetd_forwards_only_opted_in_tenants_and_resumes_after_a_restart() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let rsyslog = Rsyslog::start(dir.path(), &ca).await;
    let data_dir = fleet_tests::data_dir();
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    config.siem = siem_settings(dir.path(), &ca, rsyslog.port);

    let running = fleetd::start(config.clone()).await.unwrap();
    let app = running.database().app.clone();
    let forwarded = tenant(&app, "forwarded", true).await;
    let quiet = tenant(&app, "quiet", false).await;
    append(&app, forwarded, 20).await;
    append(&app, quiet, 5).await;
    let received = rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 22))
        .await;
    let stored = events(&app, forwarded).await;
    assert_eq!(
        stored.len(),
        22,
        "tenant.create, tenant.settings_update, 20 more"
    );
    check_arrived(&received, &stored);
    // Restart mid-stream: events appended while fleetd is down arrive after it is back.
    append(&app, forwarded, 3).await;
    running.shutdown().await.unwrap();
    let db_only = db.open().await;
    append(&db_only.app, forwarded, 10).await;
    db_only.close().await.unwrap();
    let running = fleetd::start(config).await.unwrap();
    let app = running.database().app.clone();
    append(&app, forwarded, 4).await;
    let received = rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 39))
        .await;
    let stored = events(&app, forwarded).await;
    assert_eq!(stored.len(), 39);
    let duplicates = check_arrived(&received, &stored);
    println!("fleetd restart: 39 events, {duplicates} duplicates");
    // Durable: the cursor is the last event; nothing of the tenant that did not opt in left.
    assert_eq!(cursor(&app, forwarded).await, 39);
    assert_eq!(cursor(&app, quiet).await, 0);
    assert!(by_seq(&received, quiet).is_empty(), "quiet sent nothing");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_collector_crash_loses_no_seq_and_duplicates_are_told_by_seq() {
    let db = TestDb::new().await;
    let database = db.open().await;
    let app = database.app.clone();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let mut rsyslog = Rsyslog::start(dir.path(), &ca).await;
    let forwarded = tenant(&app, "forwarded", true).await;
    let settings = siem_settings(dir.path(), &ca, rsyslog.port);
    let (metrics, stop, task) = start_forwarder(&app, &settings);
    append(&app, forwarded, 10).await;
    rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 12))
        .await;

    // The collector stops reading: what the forwarder writes now is accepted by the kernel
    // (TCP, and the flush, succeed; the cursor moves) but never read, and the crash loses it.
    rsyslog.pause();
    append(&app, forwarded, 8).await;
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while cursor(&app, forwarded).await < 20 {
        assert!(tokio::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rsyslog.kill();
    append(&app, forwarded, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rsyslog.restart().await;
    append(&app, forwarded, 5).await;
    let received = rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 30))
        .await;
    let stored = events(&app, forwarded).await;
    assert_eq!(stored.len(), 30);
    let duplicates = check_arrived(&received, &stored);
    println!(
        "collector crash: 30 events, {duplicates} duplicates, {} rewound, {} io failures",
        metrics.forwarded("rewound"),
        metrics.connection_failures("io"),
    );
    assert!(
        metrics.connection_failures("io") >= 1,
        "the crash was noticed"
    );
    assert!(
        metrics.forwarded("rewound") >= 8,
        "the unread events were resent"
    );
    stop_forwarder(stop, task).await;
    assert_eq!(cursor(&app, forwarded).await, 30);
    database.close().await.unwrap();
}

#[tokio::test]
async fn a_collector_with_an_untrusted_certificate_gets_nothing() {
    let db = TestDb::new().await;
    let database = db.open().await;
    let app = database.app.clone();
    let dir = tempfile::tempdir().unwrap();
    let trusted = new_ca(&dir.path().join("trusted"));
    let collector_dir = dir.path().join("collector");
    std::fs::create_dir_all(&collector_dir).unwrap();
    let other = new_ca(&collector_dir);
    let rsyslog = Rsyslog::start(&collector_dir, &other).await;
    let forwarded = tenant(&app, "forwarded", true).await;
    append(&app, forwarded, 3).await;
    let (metrics, stop, task) =
        start_forwarder(&app, &siem_settings(dir.path(), &trusted, rsyslog.port));
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while metrics.connection_failures("tls") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refused handshake"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_forwarder(stop, task).await;
    assert_eq!(metrics.forwarded("sent"), 0);
    assert_eq!(cursor(&app, forwarded).await, 0, "nothing marked forwarded");
    assert!(rsyslog.received().is_empty());
    database.close().await.unwrap();
}

#[tokio::test]
async fn a_siem_setting_without_its_trust_anchor_is_refused_at_start() {
    let db = TestDb::new().await;
    let database = db.open().await;
    let settings = SiemSettings {
        collector: Some("127.0.0.1:6514".into()),
        ca_file: Some("/nonexistent/siem-ca.pem".into()),
        ..SiemSettings::default()
    };
    let err = Forwarder::new(database.app.clone(), &settings, SiemMetrics::default())
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("siem.ca_file"), "{err:#}");
    let off = SiemSettings::default();
    assert!(
        Forwarder::new(database.app.clone(), &off, SiemMetrics::default())
            .unwrap()
            .is_none()
    );
    database.close().await.unwrap();
}

#[tokio::test]
async fn the_opt_in_is_a_tenant_setting_off_by_default_and_audited() {
    let fleet = fleet_tests::fleet::Fleet::start().await;
    let shown = fleet.as_owner_key("GET", "/v1/tenant", None).await;
    shown.assert_status(200);
    assert_eq!(shown.json()["siem_forwarding"], false, "off by default");
    let refused = fleet
        .as_owner_key(
            "PATCH",
            "/v1/tenant",
            Some(json!({ "siem_forwarding": "yes" })),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let changed = fleet
        .as_owner_key(
            "PATCH",
            "/v1/tenant",
            Some(json!({ "siem_forwarding": true })),
        )
        .await;
    changed.assert_status(200);
    assert_eq!(changed.json()["siem_forwarding"], true);
    let app = &fleet.running.database().app;
    assert_eq!(
        store::siem::forwarding_tenants(app).await.unwrap(),
        [fleet.tenant]
    );
    let events = fleet
        .as_owner_key(
            "GET",
            "/v1/audit-events?action=tenant.settings_update",
            None,
        )
        .await
        .json();
    let change = &events["items"][0]["details"]["siem_forwarding"];
    assert_eq!(change, &json!({ "from": false, "to": true }), "{events}");
    fleet.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_collector_requiring_mutual_tls_gets_events_only_with_the_client_certificate() {
    let db = TestDb::new().await;
    let database = db.open().await;
    let app = database.app.clone();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let rsyslog = Rsyslog::start_requiring_client_certificates(dir.path(), &ca).await;
    let forwarded = tenant(&app, "forwarded", true).await;
    append(&app, forwarded, 3).await;

    // Without a client certificate: refused, nothing received.
    let anonymous = siem_settings(dir.path(), &ca, rsyslog.port);
    let (metrics, stop, task) = start_forwarder(&app, &anonymous);
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while metrics.connection_failures("tls") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_forwarder(stop, task).await;
    assert!(rsyslog.received().is_empty());
    assert_eq!(cursor(&app, forwarded).await, 0, "nothing marked forwarded");
    println!(
        "without a client certificate: {} tls, {} io failures, {} rewound",
        metrics.connection_failures("tls"),
        metrics.connection_failures("io"),
        metrics.forwarded("rewound"),
    );

    // With one issued by the collector's CA: everything arrives.
    let client = ca.issue_service_client_cert("fleetd-siem").unwrap();
    let mut mutual = anonymous.clone();
    mutual.client_cert_file = Some(dir.path().join("siem-client.pem"));
    mutual.client_key_file = Some(dir.path().join("siem-client.key"));
    std::fs::write(
        mutual.client_cert_file.as_ref().unwrap(),
        client.chain_pem(),
    )
    .unwrap();
    std::fs::write(
        mutual.client_key_file.as_ref().unwrap(),
        client.key().to_pkcs8_pem().as_bytes(),
    )
    .unwrap();
    let (_metrics, stop, task) = start_forwarder(&app, &mutual);
    let received = rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 5))
        .await;
    check_arrived(&received, &events(&app, forwarded).await);
    stop_forwarder(stop, task).await;
    assert_eq!(cursor(&app, forwarded).await, 5);

    // A certificate without its key is refused at start, naming the setting.
    let mut half = mutual.clone();
    half.client_key_file = None;
    let err = Forwarder::new(app.clone(), &half, SiemMetrics::default())
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("go together"), "{err:#}");
    database.close().await.unwrap();
}

/// The issue's case as one story: the collector is down for a while (it crashed holding bytes it
/// never read) and fleetd is restarted before it comes back; every event still arrives, and after
/// de-duplication by seq each exactly once, as stored.
#[tokio::test]
async fn a_collector_down_across_a_fleetd_restart_still_gets_every_event() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let mut rsyslog = Rsyslog::start(dir.path(), &ca).await;
    let data_dir = fleet_tests::data_dir();
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    config.siem = siem_settings(dir.path(), &ca, rsyslog.port);

    let running = fleetd::start(config.clone()).await.unwrap();
    let app = running.database().app.clone();
    let forwarded = tenant(&app, "forwarded", true).await;
    append(&app, forwarded, 10).await;
    rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 12))
        .await;
    // Written into the kernel's buffers but never read, then lost with the collector.
    rsyslog.pause();
    append(&app, forwarded, 8).await;
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while cursor(&app, forwarded).await < 20 {
        assert!(tokio::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rsyslog.kill();
    append(&app, forwarded, 5).await;
    // fleetd restarts while the collector is still down, and events keep coming.
    running.shutdown().await.unwrap();
    let running = fleetd::start(config).await.unwrap();
    let app = running.database().app.clone();
    append(&app, forwarded, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rsyslog.restart().await;
    append(&app, forwarded, 2).await;
    let received = rsyslog
        .wait_until(ARRIVAL, |r| complete(r, forwarded, 30))
        .await;
    let stored = events(&app, forwarded).await;
    assert_eq!(stored.len(), 30);
    let duplicates = check_arrived(&received, &stored);
    println!("collector down across a fleetd restart: 30 events, {duplicates} duplicates");
    assert_eq!(
        by_seq(&received, forwarded).len(),
        30,
        "each seq once after de-duplication"
    );
    running.shutdown().await.unwrap();
}
