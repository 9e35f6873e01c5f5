//! The API the web console reads (issue 14) against a real fleetd (real Postgres, real TLS,
//! real devices over MQTT): the telemetry chart as SVG with gaps where records are missing, the
//! fleet list's patch fields and filters, counts per group within a group scope, presence
//! history from a real connect and disconnect, the audit trail of one device, and the CSV export
//! with a session cookie.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_tests::fleet::Fleet;
use fleet_tests::https::Response;
use fleet_tests::mqtt::{connect_subscribed, wait_for_ack, DeviceCredentials};
use rumqttc::{AsyncClient, EventLoop, QoS};
use serde_json::{json, Value};
use store::audit::Actor;
use store::devices::{self, NewDevice};
use store::patch_inventory;
use store::TenantId;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use wire::{Body, Record, Telemetry, UnixMillis};

const TIMEOUT: Duration = Duration::from_secs(15);

async fn tenant_of(fleet: &Fleet) -> TenantId {
    let shown = fleet.as_owner_key("GET", "/v1/tenant", None).await;
    shown.assert_status(200);
    shown.json()["id"].as_str().unwrap().parse().unwrap()
}

/// The group `name`, made by the owner key; its id.
async fn group(fleet: &Fleet, name: &str) -> String {
    let created = fleet
        .as_owner_key("POST", "/v1/device-groups", Some(json!({ "name": name })))
        .await;
    created.assert_status(201);
    created.json()["id"].as_str().unwrap().to_owned()
}

/// A device named `name` in `group`, made in the store, with its certificate.
async fn device(fleet: &Fleet, tenant: TenantId, group: &str, name: &str) -> DeviceCredentials {
    let app = &fleet.running.database().app;
    let mut tx = app.begin(tenant).await.unwrap();
    let new = NewDevice {
        name: name.into(),
        group: group.into(),
        labels: BTreeMap::new(),
    };
    let made = devices::create(&mut tx, &new, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    DeviceCredentials::issued(&fleet.running.pki().issuing_ca, tenant, made.id)
}

/// A key of `role` made by the owner, limited to `groups` when given; its text.
async fn key(fleet: &Fleet, role: &str, groups: Option<&[&str]>) -> String {
    let mut body = json!({ "name": format!("{role} key"), "role": role });
    if let Some(groups) = groups {
        body["group_ids"] = json!(groups);
    }
    let created = fleet.as_owner_key("POST", "/v1/api-keys", Some(body)).await;
    created.assert_status(201);
    created.json()["key"].as_str().unwrap().to_owned()
}

async fn with_key(fleet: &Fleet, key: &str, path: &str) -> Response {
    let auth = format!("Bearer {key}");
    fleet
        .send("GET", path, &[("Authorization", &auth)], None)
        .await
}

/// `device` connected to the embedded broker, subscribed to its acks.
async fn connect(fleet: &Fleet, device: &DeviceCredentials) -> (AsyncClient, EventLoop) {
    let addr = fleet.running.broker_addr().expect("the embedded broker");
    let options = device.options(
        fleet.running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    );
    connect_subscribed(options, wire::topic::ack(device.device_id), TIMEOUT).await
}

/// Publishes `records` on `topic` through a connected device and waits for the ack of the last.
async fn publish(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: String,
    records: Vec<Record>,
) {
    let last = records.last().map(|r| r.seq).unwrap();
    let batch = wire::encode_batch(&wire::Batch::new(records));
    client
        .publish(topic, QoS::AtLeastOnce, false, batch)
        .await
        .unwrap();
    wait_for_ack(events, last, TIMEOUT).await;
}

fn cpu_at(seq: u64, at: OffsetDateTime, percent: f32) -> Record {
    Record {
        seq,
        recorded_at: UnixMillis((at.unix_timestamp_nanos() / 1_000_000) as u64),
        body: Body::Telemetry(Telemetry {
            cpu_usage_percent: Some(percent),
            ..Telemetry::default()
        }),
    }
}

/// A Debian inventory with `security` security updates pending out of three packages.
fn inventory(seq: u64, security: usize, reboot_required: bool) -> Record {
    let packages = (0..3)
        .map(|i| wire::Package {
            name: format!("pkg{i}"),
            installed: "1.0".into(),
            candidate: Some("1.1".into()),
            security: i < security,
        })
        .collect();
    Record {
        seq,
        recorded_at: UnixMillis::now(),
        body: Body::PatchStatus(wire::PatchStatus {
            os_id: "debian".into(),
            os_version: "12".into(),
            package_manager: wire::PackageManager::Apt,
            packages,
            reboot_required,
            lists_refreshed_at: None,
        }),
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// Polls `path` as the owner until `done` holds for its JSON.
async fn until(fleet: &Fleet, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let answer = fleet.as_owner_key("GET", path, None).await;
        answer.assert_status(200);
        let json = answer.json();
        if done(&json) {
            return json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(page: &Value) -> Vec<String> {
    let mut names: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_chart_breaks_its_line_where_records_are_missing_and_shows_only_visible_devices() {
    let fleet = Fleet::start().await;
    let tenant = tenant_of(&fleet).await;
    group(&fleet, "lab").await;
    let other = group(&fleet, "other").await;
    let lab_1 = device(&fleet, tenant, "lab", "lab-1").await;
    // An hour in 5-minute buckets: two samples in each of buckets 0-2 and 8-9 (a band between
    // them), nothing between.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let from = now - time::Duration::hours(1);
    let minutes = |m: i64| from + time::Duration::minutes(m);
    let samples = [
        (1, 15.0),
        (3, 25.0),
        (6, 25.0),
        (8, 35.0),
        (11, 35.0),
        (13, 45.0),
        (41, 50.0),
        (43, 60.0),
        (46, 60.0),
        (48, 70.0),
    ];
    let records = samples
        .into_iter()
        .zip(1..)
        .map(|((m, cpu), seq)| cpu_at(seq, minutes(m), cpu))
        .collect();
    let (client, mut events) = connect(&fleet, &lab_1).await;
    publish(
        &client,
        &mut events,
        wire::topic::telemetry(lab_1.device_id),
        records,
    )
    .await;
    client.disconnect().await.ok();

    let viewer = fleet.person("viewer@acme.example", "auditor").await;
    let range = format!(
        "from={}&to={}&bucket=5m",
        rfc3339(from).replace('+', "%2B"),
        rfc3339(now).replace('+', "%2B")
    );
    let chart_path = format!(
        "/v1/devices/{}/telemetry/chart.svg?metric=cpu_usage_percent&{range}&tz_offset_minutes=60",
        lab_1.device_id
    );
    let chart = fleet
        .as_session(&viewer.session, false, "GET", &chart_path, None)
        .await;
    chart.assert_status(200);
    assert_eq!(chart.header("content-type"), Some("image/svg+xml"));
    let csp = chart.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let svg = chart.text();
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console_api_chart.svg"),
        &svg,
    )
    .unwrap();
    assert_eq!(svg.matches(r#"class="mean""#).count(), 2, "two runs: {svg}");
    assert!(svg.contains("Time (UTC+01:00)"), "{svg}");
    assert!(svg.contains("CPU usage (lab-1)"), "{svg}");
    assert!(svg.contains("5 of 12 buckets hold data"), "{svg}");
    assert_eq!(svg.matches(r#"<path class="band""#).count(), 2, "{svg}");
    for forbidden in ["<style", "style=", "<script"] {
        assert!(!svg.contains(forbidden), "{forbidden}: {svg}");
    }

    // The same buckets as the aggregate route's, from the same records.
    let aggregate = fleet
        .as_session(
            &viewer.session,
            false,
            "GET",
            &format!(
                "/v1/devices/{}/telemetry/aggregate?metric=cpu_usage_percent&{range}",
                lab_1.device_id
            ),
            None,
        )
        .await;
    aggregate.assert_status(200);
    let points = aggregate.json()["series"][0]["points"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(points, 5);

    // Before the records: a chart that says there is nothing.
    let earlier = format!(
        "/v1/devices/{}/telemetry/chart.svg?metric=cpu_usage_percent&to={}",
        lab_1.device_id,
        rfc3339(from - time::Duration::hours(2)).replace('+', "%2B")
    );
    let empty = fleet
        .as_session(&viewer.session, false, "GET", &earlier, None)
        .await;
    empty.assert_status(200);
    assert!(
        empty.text().contains("No data in this range"),
        "{}",
        empty.text()
    );

    // A caller of another group does not learn that the device exists.
    let outsider = key(&fleet, "auditor", Some(&[other.as_str()])).await;
    with_key(&fleet, &outsider, &chart_path)
        .await
        .assert_problem(404, "not-found");
    // A chart names its metric.
    let unnamed = format!("/v1/devices/{}/telemetry/chart.svg", lab_1.device_id);
    let refused = with_key(&fleet, &fleet.owner_key, &unnamed).await;
    assert_eq!(
        refused.assert_problem(422, "invalid-field")["field"],
        "metric"
    );
    let far_east = chart_path.replace("tz_offset_minutes=60", "tz_offset_minutes=900");
    let refused = with_key(&fleet, &fleet.owner_key, &far_east).await;
    assert_eq!(
        refused.assert_problem(422, "invalid-field")["field"],
        "tz_offset_minutes"
    );
    fleet.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_fleet_list_shows_patch_posture_filters_by_it_and_counts_per_group_in_scope() {
    let fleet = Fleet::start().await;
    let tenant = tenant_of(&fleet).await;
    let lab = group(&fleet, "lab").await;
    group(&fleet, "other").await;
    let alpha = device(&fleet, tenant, "lab", "Lab-Alpha").await;
    let beta = device(&fleet, tenant, "lab", "lab-beta").await;
    let gamma = device(&fleet, tenant, "other", "gamma_50%").await;
    // Alpha: two security updates and a reboot due, and stays connected; beta: none.
    let (alpha_client, mut alpha_events) = connect(&fleet, &alpha).await;
    publish(
        &alpha_client,
        &mut alpha_events,
        wire::topic::patch_status(alpha.device_id),
        vec![inventory(1, 2, true)],
    )
    .await;
    let (beta_client, mut beta_events) = connect(&fleet, &beta).await;
    publish(
        &beta_client,
        &mut beta_events,
        wire::topic::patch_status(beta.device_id),
        vec![inventory(1, 0, false)],
    )
    .await;
    beta_client.disconnect().await.ok();
    while beta_events.poll().await.is_ok() {}
    let beta_id = beta.device_id.to_string();
    until(&fleet, &format!("/v1/devices/{beta_id}"), |d| {
        d["online"] == false && d["last_seen_at"].is_string()
    })
    .await;

    let all = fleet.as_owner_key("GET", "/v1/devices", None).await.json();
    let by_name: BTreeMap<&str, &Value> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d))
        .collect();
    assert_eq!(by_name["Lab-Alpha"]["pending_security_updates"], 2);
    assert_eq!(by_name["Lab-Alpha"]["reboot_required"], true);
    assert!(by_name["Lab-Alpha"]["inventory_at"].is_string());
    assert_eq!(by_name["lab-beta"]["pending_security_updates"], 0);
    assert_eq!(by_name["lab-beta"]["reboot_required"], false);
    for field in [
        "pending_security_updates",
        "reboot_required",
        "inventory_at",
    ] {
        assert!(by_name["gamma_50%"][field].is_null(), "{field}: {all}");
    }
    let shown = fleet
        .as_owner_key("GET", &format!("/v1/devices/{beta_id}"), None)
        .await
        .json();
    assert_eq!(shown["reboot_required"], false, "{shown}");
    assert_eq!(shown["pending_security_updates"], 0, "{shown}");

    let owner = &fleet;
    let list = |query: String| async move {
        let answer = owner
            .as_owner_key("GET", &format!("/v1/devices?{query}"), None)
            .await;
        answer.assert_status(200);
        names(&answer.json())
    };
    assert_eq!(list("reboot_required=true".into()).await, ["Lab-Alpha"]);
    assert_eq!(list("reboot_required=false".into()).await, ["lab-beta"]);
    assert_eq!(list("search=LAB-".into()).await, ["Lab-Alpha", "lab-beta"]);
    assert_eq!(list("search=alpha".into()).await, ["Lab-Alpha"]);
    // LIKE's wildcards are letters like any other.
    assert_eq!(list("search=%25".into()).await, ["gamma_50%"]);
    assert_eq!(list("search=_".into()).await, ["gamma_50%"]);
    assert_eq!(list(format!("search={beta_id}")).await, ["lab-beta"]);
    assert!(list(format!("search={}", &beta_id[..8])).await.is_empty());
    assert_eq!(
        list("search=lab&reboot_required=false".into()).await,
        ["lab-beta"]
    );
    let too_long = fleet
        .as_owner_key(
            "GET",
            &format!("/v1/devices?search={}", "a".repeat(201)),
            None,
        )
        .await;
    assert_eq!(
        too_long.assert_problem(422, "invalid-field")["field"],
        "search"
    );

    // Counts per group: the whole tenant for the owner, only `lab` for a key scoped to it.
    let counts = |page: &Value| -> BTreeMap<String, (i64, i64, i64)> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let n = |f: &str| g[f].as_i64().unwrap();
                (
                    g["name"].as_str().unwrap().to_owned(),
                    (
                        n("device_count"),
                        n("online_count"),
                        n("pending_security_count"),
                    ),
                )
            })
            .collect()
    };
    let everything = until(&fleet, "/v1/device-groups", |page| {
        counts(page)["lab"].1 == 1
    })
    .await;
    assert_eq!(
        counts(&everything),
        BTreeMap::from([
            ("default".to_owned(), (0, 0, 0)),
            ("lab".to_owned(), (2, 1, 1)),
            ("other".to_owned(), (1, 0, 0)),
        ])
    );
    let scoped = key(&fleet, "auditor", Some(&[lab.as_str()])).await;
    let seen = with_key(&fleet, &scoped, "/v1/device-groups").await;
    seen.assert_status(200);
    assert_eq!(
        counts(&seen.json()),
        BTreeMap::from([("lab".to_owned(), (2, 1, 1))])
    );
    // Nor does its search find another group's device, by name or by id.
    let gamma_id = gamma.device_id.to_string();
    for search in ["gamma", gamma_id.as_str()] {
        let found = with_key(&fleet, &scoped, &format!("/v1/devices?search={search}")).await;
        found.assert_status(200);
        assert!(names(&found.json()).is_empty(), "{search}");
    }
    drop(alpha_client);
    fleet.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn presence_history_audit_of_one_device_and_csv_for_a_signed_in_auditor() {
    let fleet = Fleet::start().await;
    let tenant = tenant_of(&fleet).await;
    group(&fleet, "lab").await;
    let lab_1 = device(&fleet, tenant, "lab", "lab-1").await;
    let lab_2 = device(&fleet, tenant, "lab", "lab-2").await;
    let id = lab_1.device_id;

    let (client, mut events) = connect(&fleet, &lab_1).await;
    let device_path = format!("/v1/devices/{id}");
    until(&fleet, &device_path, |d| d["online"] == true).await;
    client.disconnect().await.ok();
    while events.poll().await.is_ok() {}
    until(&fleet, &device_path, |d| d["online"] == false).await;

    let presence = fleet
        .as_owner_key("GET", &format!("{device_path}/presence"), None)
        .await;
    presence.assert_status(200);
    let items = presence.json()["items"].clone();
    let online: Vec<bool> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["online"].as_bool().unwrap())
        .collect();
    assert_eq!(online, [false, true], "newest first: {items}");
    // Pages of one: the same events, in the same order.
    let first = fleet
        .as_owner_key("GET", &format!("{device_path}/presence?limit=1"), None)
        .await
        .json();
    assert_eq!(first["items"][0], items[0]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = fleet
        .as_owner_key(
            "GET",
            &format!("{device_path}/presence?limit=1&cursor={cursor}"),
            None,
        )
        .await
        .json();
    assert_eq!(second["items"][0], items[1], "{second}");
    // Another device's history is its own.
    let none = fleet
        .as_owner_key(
            "GET",
            &format!("/v1/devices/{}/presence", lab_2.device_id),
            None,
        )
        .await
        .json();
    assert_eq!(none["items"], json!([]));

    // The device's audit events, and only its.
    fleet
        .as_owner_key("POST", &format!("{device_path}/revoke"), None)
        .await
        .assert_status(200);
    let trail = fleet
        .as_owner_key("GET", &format!("/v1/audit-events?device={id}"), None)
        .await;
    trail.assert_status(200);
    let actions: Vec<String> = trail.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["target"], format!("device:{id}"));
            e["action"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(actions, ["device.create", "device.revoke"]);
    let not_an_id = fleet
        .as_owner_key("GET", "/v1/audit-events?device=lab-1", None)
        .await;
    assert_eq!(
        not_an_id.assert_problem(422, "invalid-field")["field"],
        "device"
    );
    let both = fleet
        .as_owner_key(
            "GET",
            &format!("/v1/audit-events?device={id}&target=device:{id}"),
            None,
        )
        .await;
    both.assert_problem(422, "invalid-field");

    // The CSV export with a session cookie, as the console's download link fetches it.
    let auditor = fleet.person("auditor@acme.example", "auditor").await;
    let csv = fleet
        .as_session(&auditor.session, false, "GET", "/v1/audit-events.csv", None)
        .await;
    csv.assert_status(200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(csv
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment")));
    let text = csv.text();
    assert!(text.starts_with("tenant_id,seq,occurred_at"), "{text}");
    assert!(
        text.contains(&format!("device.revoke,device:{id}")),
        "{text}"
    );
    // Still the table's roles: an operator's session may not export.
    let operator = fleet.person("operator@acme.example", "operator").await;
    fleet
        .as_session(
            &operator.session,
            false,
            "GET",
            "/v1/audit-events.csv",
            None,
        )
        .await
        .assert_problem(403, "forbidden");
    // And a signed-out session is refused.
    fleet
        .as_session(&auditor.session, true, "DELETE", "/v1/session", None)
        .await
        .assert_status(204);
    let after = fleet
        .as_session(&auditor.session, false, "GET", "/v1/audit-events.csv", None)
        .await;
    assert_eq!(after.status, 401, "{}", after.text());
    fleet.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn presence_history_keeps_the_newest_events_of_each_device_only() {
    let db = fleet_tests::TestDb::new().await;
    let database = db.open().await;
    let (tenant, ids) = fleet_tests::tenancy::tenant_with_devices(&database.app, "t", 2).await;
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let kept = devices::PRESENCE_HISTORY_KEPT;
    let mut tx = database.app.begin(tenant).await.unwrap();
    for n in 0..kept + 5 {
        let at = start + time::Duration::seconds(n);
        assert!(devices::record_presence(&mut tx, ids[0], n % 2 == 0, at)
            .await
            .unwrap());
    }
    assert!(devices::record_presence(&mut tx, ids[1], true, start)
        .await
        .unwrap());
    let unknown = store::DeviceId::new_random();
    assert!(!devices::record_presence(&mut tx, unknown, true, start)
        .await
        .unwrap());
    let history = devices::presence_history(&mut tx, ids[0], None, 2 * kept)
        .await
        .unwrap();
    assert_eq!(history.len() as i64, kept);
    assert_eq!(history[0].at, start + time::Duration::seconds(kept + 4));
    assert_eq!(
        history.last().unwrap().at,
        start + time::Duration::seconds(5),
        "the oldest five are gone"
    );
    let other = devices::presence_history(&mut tx, ids[1], None, 10)
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "another device's history is its own");
    // The device's current state is the newest event's.
    let device = devices::get(&mut tx, ids[0]).await.unwrap().unwrap();
    assert_eq!(device.online, history[0].online);
    tx.commit().await.unwrap();
}

/// `name` at version 1, with version 2 pending (a security update when `security`), or
/// up to date when `pending` is false.
fn package(name: &str, pending: bool, security: bool) -> patch_inventory::PackageRow {
    patch_inventory::PackageRow {
        name: name.into(),
        installed: "1".into(),
        candidate: pending.then(|| "2".into()),
        security,
    }
}

/// Stores `packages` as `device`'s inventory number `seq`, as ingest would.
async fn store_inventory(
    fleet: &Fleet,
    tenant: TenantId,
    device: &DeviceCredentials,
    seq: i64,
    packages: Vec<patch_inventory::PackageRow>,
) {
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(seq);
    let report = patch_inventory::PatchReport {
        seq,
        recorded_at: at,
        received_at: at,
        os_id: "debian".into(),
        os_version: "12".into(),
        package_manager: "apt".into(),
        reboot_required: false,
        lists_refreshed_at: None,
        packages,
    };
    let mut tx = fleet.running.database().app.begin(tenant).await.unwrap();
    let applied = patch_inventory::apply(&mut tx, device.device_id, report)
        .await
        .unwrap();
    assert_eq!(applied, patch_inventory::Applied::Changed);
    tx.commit().await.unwrap();
}

/// `most_pending_packages` of a patch summary as `(name, devices, security_devices)`, in order.
fn most_pending(summary: &Value) -> Vec<(String, i64, i64)> {
    summary["most_pending_packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no most_pending_packages: {summary}"))
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["devices"].as_i64().unwrap(),
                p["security_devices"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_packages_most_often_pending_count_newest_inventories_security_first_in_scope() {
    let fleet = Fleet::start().await;
    let tenant = tenant_of(&fleet).await;
    let north = group(&fleet, "north").await;
    group(&fleet, "south").await;
    let n1 = device(&fleet, tenant, "north", "n1").await;
    let s1 = device(&fleet, tenant, "south", "s1").await;
    let s2 = device(&fleet, tenant, "south", "s2").await;
    let vim_pending = vec![
        package("openssl", true, true),
        package("curl", true, false),
        package("vim", true, false),
    ];
    store_inventory(&fleet, tenant, &n1, 1, vim_pending).await;
    // n1's newest inventory has vim up to date: only that one counts.
    let newest = vec![
        package("openssl", true, true),
        package("curl", true, false),
        package("vim", false, false),
        package("bash", false, false),
    ];
    store_inventory(&fleet, tenant, &n1, 2, newest).await;
    let s1_packages = vec![
        package("openssl", true, true),
        package("curl", true, false),
        package("zlib", true, true),
        package("vim", true, false),
    ];
    store_inventory(&fleet, tenant, &s1, 1, s1_packages).await;
    let s2_packages = vec![package("curl", true, false), package("vim", true, false)];
    store_inventory(&fleet, tenant, &s2, 1, s2_packages).await;

    let owner = fleet.as_owner_key("GET", "/v1/patch-summary", None).await;
    owner.assert_status(200);
    let row = |name: &str, devices, security| (name.to_owned(), devices, security);
    // Security first: zlib (1 device) before curl (3), then by devices, ties by name.
    assert_eq!(
        most_pending(&owner.json()),
        [
            row("openssl", 2, 2),
            row("zlib", 1, 1),
            row("curl", 3, 0),
            row("vim", 2, 0),
        ]
    );
    let scoped = key(&fleet, "auditor", Some(&[north.as_str()])).await;
    let seen = with_key(&fleet, &scoped, "/v1/patch-summary").await;
    seen.assert_status(200);
    assert_eq!(
        most_pending(&seen.json()),
        [row("openssl", 1, 1), row("curl", 1, 0)],
        "a key scoped to north counts north's devices only"
    );
    fleet.running.shutdown().await.unwrap();
}
