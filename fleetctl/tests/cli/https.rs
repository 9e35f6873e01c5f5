//! fleetctl's HTTPS commands against a real fleetd (started in the test on ephemeral ports, its
//! development PKI, a test database), as api/CONTRACT.md describes the API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleet_tests::audit_export::python_verify;
use fleet_tests::TestDb;
use store::api_keys::{KeyEnv, Role};
use store::audit::Actor;
use store::devices::{self, NewDevice};
use store::{tenants, DeviceId, TenantId};

use super::{fleetctl, is_display_time, rows, run, Run};

/// A running fleetd with a tenant `acme` and its owner key.
pub(super) struct Fleet {
    pub(super) running: fleetd::Running,
    pub(super) tenant: TenantId,
    pub(super) key: String,
    ca: PathBuf,
    pub(super) _data_dir: tempfile::TempDir,
    pub(super) _db: TestDb,
}

impl Fleet {
    pub(super) async fn start() -> Self {
        let db = TestDb::new().await;
        let data_dir = fleet_tests::data_dir();
        let config = fleetd::Config::on_ephemeral_loopback_ports(
            data_dir.path(),
            db.url().parse().expect("a postgres:// URL"),
        );
        let running = fleetd::start(config).await.expect("fleetd starts");
        let (tenant, key) = tenants::create_with_owner_key(
            &running.database().app,
            "acme",
            &KeyEnv::live(),
            &Actor::System,
        )
        .await
        .unwrap();
        Self {
            ca: data_dir.path().join("pki").join("root-ca.pem"),
            tenant: tenant.id,
            key: key.secret.expose().to_owned(),
            running,
            _data_dir: data_dir,
            _db: db,
        }
    }

    pub(super) fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.api_addr().port())
    }

    /// fleetctl pointed at this fleetd, trusting its root, with `key`.
    pub(super) fn ctl_with_key(&self, key: &str) -> tokio::process::Command {
        let mut command = fleetctl();
        command
            .env("FLEETCTL_SERVER", self.server())
            .env("FLEETCTL_CA", &self.ca)
            .env("FLEETCTL_API_KEY", key);
        command
    }

    /// Runs fleetctl with the owner key.
    pub(super) async fn ctl(&self, args: &[&str]) -> Run {
        run(self.ctl_with_key(&self.key), args).await
    }

    /// A key of `role` made in the store.
    pub(super) async fn key_with_role(&self, role: Role) -> String {
        let app = &self.running.database().app;
        let issued = fleet_tests::tenancy::api_key(app, self.tenant, role, None).await;
        issued.secret.expose().to_owned()
    }

    /// A device made in the store, in `group` (created if needed).
    pub(super) async fn device(
        &self,
        name: &str,
        group: &str,
        labels: &[(&str, &str)],
    ) -> DeviceId {
        let mut tx = self
            .running
            .database()
            .app
            .begin(self.tenant)
            .await
            .unwrap();
        fleet_tests::ensure_group(&mut tx, group).await;
        let new = NewDevice {
            name: name.into(),
            group: group.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        };
        let device = devices::create(&mut tx, &new, &Actor::System)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        device.id
    }

    pub(super) async fn stop(self) {
        self.running.shutdown().await.unwrap();
    }
}

/// The value of field `name` in a `field  value` listing.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            (rest.starts_with("  ") || rest.is_empty()).then(|| rest.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no field {name:?} in:\n{out}"))
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_any_answer_have_their_own_exit_codes() {
    let fleet = Fleet::start().await;

    // No key, a malformed key, an unreadable key file: nothing is sent.
    let mut command = fleet.ctl_with_key("");
    command.env_remove("FLEETCTL_API_KEY");
    run(command, &["device", "list"])
        .await
        .fails(4, "no-api-key");
    let truncated = &fleet.key[..fleet.key.len() - 1];
    let line = run(fleet.ctl_with_key(truncated), &["device", "list"])
        .await
        .fails(4, "invalid-api-key");
    assert!(
        !line.contains(truncated),
        "the key is never printed: {line}"
    );
    let mut command = fleet.ctl_with_key("");
    command.env_remove("FLEETCTL_API_KEY");
    run(
        command,
        &["--api-key-file", "/nonexistent/key", "device", "list"],
    )
    .await
    .fails(2, "usage");

    // The fleet root is not among the system's roots: TLS refuses, and says how to fix it.
    let mut command = fleet.ctl_with_key(&fleet.key);
    command.env_remove("FLEETCTL_CA");
    let line = run(command, &["device", "list"]).await.fails(5, "tls");
    assert!(line.contains("--ca"), "{line}");

    // Nobody listening.
    let line = run(
        fleet.ctl_with_key(&fleet.key),
        &["--server", "https://127.0.0.1:1", "device", "list"],
    )
    .await
    .fails(5, "unreachable");
    assert!(line.contains("127.0.0.1:1"), "{line}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_revoked_and_underprivileged_keys_exit_4() {
    let fleet = Fleet::start().await;
    fleet.ctl(&["tenant", "show"]).await.ok();

    // Well formed, but for nothing.
    let other_db = TestDb::new().await;
    let other = other_db.open().await;
    let (_, stranger) =
        tenants::create_with_owner_key(&other.app, "x", &KeyEnv::live(), &Actor::System)
            .await
            .unwrap();
    other.close().await.unwrap();
    run(
        fleet.ctl_with_key(stranger.secret.expose()),
        &["tenant", "show"],
    )
    .await
    .fails(4, "invalid-api-key");

    // An auditor reads but changes nothing.
    let auditor = fleet.key_with_role(Role::Auditor).await;
    run(fleet.ctl_with_key(&auditor), &["group", "list"])
        .await
        .ok();
    run(fleet.ctl_with_key(&auditor), &["group", "create", "x"])
        .await
        .fails(4, "forbidden");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_show_and_set_and_tenant_is_checked_against_the_key() {
    let fleet = Fleet::start().await;
    let out = fleet.ctl(&["tenant", "show"]).await.ok();
    assert_eq!(field(&out, "id"), fleet.tenant.to_string());
    assert_eq!(field(&out, "name"), "acme");
    assert!(is_display_time(&field(&out, "created")), "{out}");
    assert!(field(&out, "record retention").ends_with(" days"), "{out}");

    let out = fleet
        .ctl(&[
            "tenant",
            "set",
            "--name",
            "acme corp",
            "--record-retention-days",
            "30",
        ])
        .await
        .ok();
    assert_eq!(field(&out, "name"), "acme corp");
    assert_eq!(field(&out, "record retention"), "30 days");
    // The key from a file (as a secret store mounts it, newline and all) instead of the
    // environment.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{}\n", fleet.key)).unwrap();
    let mut command = fleet.ctl_with_key("");
    command.env_remove("FLEETCTL_API_KEY");
    let json = run(
        command,
        &[
            "--api-key-file",
            key_file.to_str().unwrap(),
            "--json",
            "tenant",
            "show",
        ],
    )
    .await
    .json();
    assert_eq!(json["name"], "acme corp");
    let json = fleet.ctl(&["--json", "tenant", "show"]).await.json();
    assert_eq!(json["record_retention_days"], 30);
    assert_eq!(
        fleet.ctl(&["tenant", "set"]).await.code,
        2,
        "a change is required"
    );

    // --tenant over HTTPS: the key's own tenant passes, any other is not found (exit 3), the
    // same as an unknown --tenant on the database.
    let own = fleet.tenant.to_string();
    for name in [own.as_str(), "acme corp", "ACME CORP"] {
        fleet.ctl(&["--tenant", name, "device", "list"]).await.ok();
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    for name in [unknown.as_str(), "nope"] {
        fleet
            .ctl(&["--tenant", name, "device", "list"])
            .await
            .fails(3, "not-found");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_once_listed_shown_and_revoked() {
    let fleet = Fleet::start().await;
    let created = fleet
        .ctl(&[
            "api-key",
            "create",
            "--name",
            "ci",
            "--role",
            "operator",
            "--expires-in",
            "30d",
            "--cidr",
            "127.0.0.0/8",
            "--group",
            "default",
        ])
        .await;
    let out = created.ok_shown_once();
    let key = field(&out, "key");
    let id = field(&out, "id");
    assert!(key.starts_with(&format!("fpk_live_{id}_")), "{out}");
    assert_eq!(field(&out, "role"), "operator");
    assert_eq!(field(&out, "state"), "active");
    assert_eq!(field(&out, "allowed from"), "127.0.0.0/8");
    assert!(is_display_time(&field(&out, "expires")), "{out}");

    let listed = fleet.ctl(&["api-key", "list"]).await.ok();
    assert_eq!(
        header(&listed),
        [
            "ID",
            "NAME",
            "ROLE",
            "STATE",
            "GROUPS",
            "EXPIRES",
            "LAST USED"
        ]
    );
    let row = rows(&listed)
        .into_iter()
        .find(|r| r[0] == id)
        .expect("listed");
    assert_eq!(row[1..5], ["ci", "operator", "active", "1"]);
    assert!(
        !listed.contains(&key[key.len() - 20..]),
        "a listing shows no secret"
    );

    // The new key works, until it is revoked.
    run(fleet.ctl_with_key(&key), &["device", "list"])
        .await
        .ok();
    let shown = fleet.ctl(&["api-key", "show", &id]).await.ok();
    assert!(is_display_time(&field(&shown, "last used")), "{shown}");
    let revoked = fleet.ctl(&["api-key", "revoke", &id]).await.ok();
    assert_eq!(revoked.trim(), format!("api key {id} revoked"));
    let shown = fleet.ctl(&["api-key", "show", &id]).await.ok();
    assert_eq!(field(&shown, "state"), "revoked");
    assert!(is_display_time(&field(&shown, "revoked")), "{shown}");
    run(fleet.ctl_with_key(&key), &["device", "list"])
        .await
        .fails(4, "invalid-api-key");

    fleet
        .ctl(&["api-key", "show", "AAAAAAAAAAAA"])
        .await
        .fails(3, "not-found");
    let json = fleet
        .ctl(&[
            "--json", "api-key", "create", "--name", "script", "--role", "auditor",
        ])
        .await
        .json();
    assert!(
        json["key"].as_str().unwrap().starts_with("fpk_live_"),
        "{json}"
    );
    // Over HTTPS the name is required (it is how a key is recognised later).
    fleet
        .ctl(&["api-key", "create", "--role", "auditor"])
        .await
        .fails(2, "usage");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_show_their_state_including_used_up() {
    let fleet = Fleet::start().await;
    let created = fleet
        .ctl(&[
            "enrollment-token",
            "create",
            "--name",
            "line 3",
            "--cidr",
            "127.0.0.0/8",
            "--daily-limit",
            "5",
            "--expires-in",
            "7d",
            "--max-uses",
            "1",
            "--label",
            "site=berlin",
        ])
        .await;
    let out = created.ok_shown_once();
    let token = field(&out, "token");
    let id = field(&out, "id");
    assert!(token.starts_with("fpe_"), "{out}");
    assert_eq!(field(&out, "device labels"), "site=berlin");

    let listed = fleet.ctl(&["enrollment-token", "list"]).await.ok();
    assert_eq!(
        header(&listed),
        ["ID", "NAME", "STATE", "TODAY", "USES", "EXPIRES", "GROUP", "CIDRS"]
    );
    let row = rows(&listed)
        .into_iter()
        .find(|r| r[0] == id)
        .expect("listed");
    assert_eq!(row[1..5], ["line 3", "active", "0/5", "0/1"]);
    assert!(is_display_time(&row[5]), "{listed}");
    assert_eq!(row[6..], ["default", "127.0.0.0/8"]);
    assert!(!listed.contains("fpe_"), "a listing shows no secret");

    // One enrollment spends the token's only use: it is used up, not active.
    let (_key, csr) = fleet_tests::device::key_and_csr();
    let body = serde_json::json!({ "token": token, "csr": csr }).to_string();
    let enrolled = fleet_tests::https::https_request(
        fleet.running.api_addr(),
        &fleet.running.pki().issuing_ca,
        "POST",
        "/v1/enroll",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        enrolled.status,
        201,
        "{}",
        String::from_utf8_lossy(&enrolled.body)
    );
    let listed = fleet.ctl(&["enrollment-token", "list"]).await.ok();
    let row = rows(&listed).into_iter().find(|r| r[0] == id).unwrap();
    assert_eq!(row[2..5], ["used_up", "1/5", "1/1"], "{listed}");

    let shown = fleet.ctl(&["enrollment-token", "show", &id]).await.ok();
    assert_eq!(field(&shown, "state"), "used_up");
    assert!(is_display_time(&field(&shown, "last used")), "{shown}");
    let revoked = fleet.ctl(&["enrollment-token", "revoke", &id]).await.ok();
    assert_eq!(revoked.trim(), format!("enrollment token {id} revoked"));
    let shown = fleet.ctl(&["enrollment-token", "show", &id]).await.ok();
    assert_eq!(field(&shown, "state"), "revoked");
    let unknown = uuid::Uuid::new_v4().to_string();
    fleet
        .ctl(&["enrollment-token", "show", &unknown])
        .await
        .fails(3, "not-found");
    // "Anywhere" must be said.
    let refused = fleet
        .ctl(&[
            "enrollment-token",
            "create",
            "--name",
            "x",
            "--daily-limit",
            "1",
            "--expires-in",
            "1d",
        ])
        .await;
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("--cidr"), "{}", refused.stderr);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_listed_renamed_and_deleted_when_empty() {
    let fleet = Fleet::start().await;
    let out = fleet.ctl(&["group", "create", "line-3"]).await.ok();
    assert_eq!(field(&out, "name"), "line-3");
    let id = field(&out, "id");
    fleet.device("d", "busy", &[]).await;

    let listed = fleet.ctl(&["group", "list"]).await.ok();
    assert_eq!(header(&listed), ["ID", "NAME", "DEVICES", "CREATED"]);
    let names: BTreeMap<String, String> = rows(&listed)
        .into_iter()
        .map(|r| (r[1].clone(), r[2].clone()))
        .collect();
    assert_eq!(names.get("busy").map(String::as_str), Some("1"), "{listed}");
    assert_eq!(
        names.get("line-3").map(String::as_str),
        Some("0"),
        "{listed}"
    );

    let out = fleet
        .ctl(&["group", "rename", "line-3", "line-4"])
        .await
        .ok();
    assert_eq!(field(&out, "name"), "line-4");
    assert_eq!(field(&out, "id"), id);
    let out = fleet.ctl(&["group", "delete", &id]).await.ok();
    assert!(out.contains("line-4") && out.contains("deleted"), "{out}");
    fleet
        .ctl(&["group", "delete", "busy"])
        .await
        .fails(1, "conflict");
    fleet
        .ctl(&["group", "delete", "nope"])
        .await
        .fails(3, "not-found");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_filtered_shown_changed_and_revoked() {
    let fleet = Fleet::start().await;
    let gw = fleet
        .device("gw-berlin", "default", &[("site", "berlin")])
        .await
        .to_string();
    let pi = fleet
        .device("pi-paris", "lab", &[("site", "paris")])
        .await
        .to_string();

    let listed = fleet.ctl(&["device", "list"]).await.ok();
    assert_eq!(
        header(&listed),
        [
            "ID",
            "NAME",
            "GROUP",
            "STATUS",
            "ONLINE",
            "LAST SEEN",
            "LABELS"
        ]
    );
    let all = rows(&listed);
    assert_eq!(all.len(), 2, "{listed}");
    let row = all.iter().find(|r| r[0] == gw).unwrap();
    assert_eq!(
        row[1..],
        ["gw-berlin", "default", "active", "no", "-", "site=berlin"]
    );
    assert!(
        !listed.contains("Active"),
        "statuses are words, not Rust Debug: {listed}"
    );

    for (filter, expected) in [
        (&["--group", "lab"][..], vec![pi.clone()]),
        (&["--label", "site=berlin"], vec![gw.clone()]),
        (&["--name-prefix", "pi-"], vec![pi.clone()]),
        (&["--status", "revoked"], vec![]),
        (&["--online", "false", "--last-seen-after", "1h"], vec![]),
        (&["--online", "false", "--status", "active"], {
            let mut both = vec![gw.clone(), pi.clone()];
            both.sort();
            both
        }),
        (&["--pending-security-updates", "true"], vec![]),
    ] {
        let mut args = vec!["device", "list"];
        args.extend_from_slice(filter);
        let out = fleet.ctl(&args).await.ok();
        let mut ids: Vec<String> = rows(&out).into_iter().map(|r| r[0].clone()).collect();
        ids.sort();
        assert_eq!(ids, expected, "{filter:?}: {out}");
    }

    // Paging: a limit, the cursor to go on with.
    let first = fleet.ctl(&["device", "list", "--limit", "1"]).await;
    assert!(
        first.stderr.contains("(more: --cursor "),
        "{}",
        first.stderr
    );
    assert_eq!(rows(&first.ok()).len(), 1);
    let page = fleet
        .ctl(&["--json", "device", "list", "--limit", "1"])
        .await
        .json();
    let cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
    let rest = fleet
        .ctl(&["--json", "device", "list", "--cursor", &cursor])
        .await
        .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_ne!(rest["items"][0]["id"], page["items"][0]["id"]);

    let shown = fleet.ctl(&["device", "show", &gw]).await.ok();
    assert_eq!(field(&shown, "status"), "active");
    assert!(is_display_time(&field(&shown, "created")), "{shown}");
    assert!(shown.contains("certificates:\nSERIAL"), "{shown}");

    let out = fleet
        .ctl(&["device", "rename", &gw, "gw-berlin-2"])
        .await
        .ok();
    assert_eq!(field(&out, "name"), "gw-berlin-2");
    let out = fleet
        .ctl(&["device", "label", &gw, "site=berlin", "rack=4"])
        .await
        .ok();
    assert_eq!(field(&out, "labels"), "rack=4,site=berlin");
    let out = fleet.ctl(&["device", "label", &gw, "--clear"]).await.ok();
    assert_eq!(field(&out, "labels"), "-");
    let out = fleet.ctl(&["device", "move", &gw, "lab"]).await.ok();
    assert_eq!(field(&out, "group"), "lab");

    let out = fleet.ctl(&["device", "revoke", &gw]).await.ok();
    assert!(out.starts_with(&format!("device {gw} revoked")), "{out}");
    let listed = fleet
        .ctl(&["device", "list", "--status", "revoked"])
        .await
        .ok();
    let revoked = rows(&listed);
    assert_eq!(revoked.len(), 1, "{listed}");
    assert_eq!(revoked[0][3], "revoked");

    let unknown = uuid::Uuid::new_v4().to_string();
    fleet
        .ctl(&["device", "show", &unknown])
        .await
        .fails(3, "not-found");
    let json = fleet.ctl(&["--json", "device", "show", &pi]).await.json();
    assert_eq!(json["status"], "active");
    assert!(json["certificates"].is_array(), "{json}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_health_telemetry_metrics_and_patch_status() {
    let fleet = Fleet::start().await;
    let device = fleet.device("gw", "default", &[]).await;
    let id = device.to_string();

    let health = fleet.ctl(&["device", "health", &id]).await.ok();
    assert_eq!(field(&health, "device"), id);
    assert_eq!(field(&health, "online"), "no");

    // Three samples, as ingest stores them.
    let now = time::OffsetDateTime::now_utc();
    let mut rows_in = store::records::NewRecords::with_capacity(3);
    for seq in 1..=3i64 {
        let sample = wire::Telemetry {
            cpu_usage_percent: Some(12.5),
            uptime_secs: Some(3_600),
            ..wire::Telemetry::default()
        };
        rows_in.push(
            device,
            seq,
            now - time::Duration::minutes(10 - seq),
            now,
            store::records::RecordKind::Telemetry,
            wire::encode_body(&wire::Body::Telemetry(sample)),
        );
    }
    let mut tx = fleet
        .running
        .database()
        .app
        .begin(fleet.tenant)
        .await
        .unwrap();
    store::records::insert(&mut tx, &rows_in).await.unwrap();
    tx.commit().await.unwrap();

    let out = fleet
        .ctl(&["device", "telemetry", &id, "--from", "1h"])
        .await
        .ok();
    assert_eq!(
        header(&out),
        [
            "SEQ",
            "RECORDED",
            "CPU",
            "MEMORY USED",
            "LOAD",
            "DISK USED",
            "TEMPERATURE",
            "UPTIME"
        ]
    );
    let samples = rows(&out);
    assert_eq!(samples.len(), 3, "{out}");
    assert_eq!(samples[0][0], "1");
    assert!(is_display_time(&samples[0][1]), "{out}");
    assert_eq!(samples[0][2], "12.5%");
    assert_eq!(samples[0][7], "1h");

    let out = fleet
        .ctl(&[
            "device",
            "metrics",
            &id,
            "--from",
            "1h",
            "--bucket",
            "1h",
            "--metric",
            "cpu_usage_percent",
        ])
        .await
        .ok();
    assert_eq!(
        header(&out),
        ["METRIC", "START", "COUNT", "MIN", "AVG", "MAX"]
    );
    let points = rows(&out);
    assert!(!points.is_empty(), "{out}");
    assert_eq!(points[0][0], "cpu_usage_percent");
    assert_eq!(points[0][3..], ["12.5", "12.5", "12.5"]);

    // No inventory yet: not found.
    fleet
        .ctl(&["device", "patch", &id])
        .await
        .fails(3, "not-found");
    let mut tx = fleet
        .running
        .database()
        .app
        .begin(fleet.tenant)
        .await
        .unwrap();
    store::patch_inventory::apply(
        &mut tx,
        device,
        store::patch_inventory::PatchReport {
            seq: 4,
            recorded_at: now,
            received_at: now,
            os_id: "debian".into(),
            os_version: "12".into(),
            package_manager: "apt".into(),
            reboot_required: true,
            lists_refreshed_at: Some(now),
            packages: vec![
                store::patch_inventory::PackageRow {
                    name: "openssl".into(),
                    installed: "3.0.11".into(),
                    candidate: Some("3.0.13".into()),
                    security: true,
                },
                store::patch_inventory::PackageRow {
                    name: "bash".into(),
                    installed: "5.2".into(),
                    candidate: None,
                    security: false,
                },
            ],
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let out = fleet.ctl(&["device", "patch", &id]).await.ok();
    assert_eq!(field(&out, "os"), "debian 12");
    assert_eq!(field(&out, "reboot required"), "yes");
    assert_eq!(field(&out, "security upgradable"), "1");
    assert!(out.contains("upgradable packages:\nPACKAGE"), "{out}");
    assert!(out.contains("openssl") && !out.contains("bash"), "{out}");

    let out = fleet.ctl(&["patch-summary"]).await.ok();
    assert_eq!(field(&out, "devices"), "1");
    assert_eq!(field(&out, "pending security updates"), "1");
    assert_eq!(field(&out, "reboot required"), "1");
    let by_group = out.split("\n\n").nth(1).expect("a table after the totals");
    assert_eq!(
        header(by_group),
        [
            "GROUP",
            "DEVICES",
            "SECURITY UPDATES",
            "REBOOT",
            "STALE",
            "NEVER REPORTED"
        ]
    );
    assert_eq!(
        rows(by_group),
        [["default", "1", "1", "1", "0", "0"]],
        "{out}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_are_listed_verified_and_exported() {
    let fleet = Fleet::start().await;
    fleet.ctl(&["group", "create", "line-3"]).await.ok();

    let out = fleet.ctl(&["audit", "list"]).await.ok();
    assert_eq!(
        header(&out),
        ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"]
    );
    let events = rows(&out);
    assert!(events.len() >= 3, "{out}");
    assert_eq!(events[0][0], "1");
    assert!(is_display_time(&events[0][1]), "{out}");
    assert_eq!(events[0][3], "tenant.create");
    let out = fleet
        .ctl(&[
            "audit",
            "list",
            "--action",
            "device_group.create",
            "--since",
            "1h",
        ])
        .await
        .ok();
    let created: Vec<Vec<String>> = rows(&out);
    assert!(
        created.iter().all(|r| r[3] == "device_group.create"),
        "{out}"
    );
    assert!(created.iter().any(|r| r[5].contains("line-3")), "{out}");

    let out = fleet.ctl(&["audit", "verify"]).await.ok();
    assert_eq!(header(&out), ["CHAIN", "EVENTS", "BROKEN AT", "REASON"]);
    assert_eq!(rows(&out)[0][0], "intact");

    let csv = fleet.ctl(&["audit", "export"]).await.ok();
    assert_eq!(
        csv.lines().next(),
        Some("tenant_id,seq,occurred_at,occurred_at_micros,actor,action,target,details,prev_hash,hash,canonical_version,erased_by")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.csv");
    let out = fleet
        .ctl(&[
            "audit",
            "export",
            "--since",
            "1d",
            "--output",
            file.to_str().unwrap(),
        ])
        .await
        .ok();
    assert_eq!(out, "", "the CSV goes to the file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv);
    fleet
        .ctl(&["--json", "audit", "export"])
        .await
        .fails(2, "usage");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_verify_the_chain_and_a_jsonl_export_re_verifies_with_python() {
    let fleet = Fleet::start().await;
    fleet.ctl(&["group", "create", "line-3"]).await.ok();
    let data_dir = fleet._data_dir.path().to_owned();
    let checkpoints = data_dir.join("audit-checkpoints");
    let work = tempfile::tempdir().unwrap();

    let written = fleet.ctl(&["--json", "audit", "checkpoint"]).await.json();
    assert_eq!(written["first_seq"], 1);
    let covered = written["seq"].as_i64().unwrap();
    assert!(covered >= 2, "{written}");
    let file = checkpoints
        .join(fleet.tenant.to_string())
        .join(format!("{covered}.json"));
    assert!(file.exists(), "{} was not pushed", file.display());
    // The second covers the first's own audit event.
    let second = fleet.ctl(&["--json", "audit", "checkpoint"]).await.json();
    assert_eq!(second["first_seq"].as_i64(), Some(covered + 1));
    let out = fleet
        .ctl(&["audit", "list", "--action", "audit.checkpoint"])
        .await
        .ok();
    assert_eq!(rows(&out).len(), 2, "each request is audited: {out}");
    // An auditor may not sign.
    let auditor = fleet.key_with_role(Role::Auditor).await;
    run(fleet.ctl_with_key(&auditor), &["audit", "checkpoint"])
        .await
        .fails(4, "forbidden");

    let key_file = data_dir.join("audit-checkpoint.key");
    let pem = fleet
        .ctl(&["audit", "public-key", "--key", key_file.to_str().unwrap()])
        .await
        .ok();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let pem_file = work.path().join("checkpoint.pem");
    std::fs::write(&pem_file, &pem).unwrap();

    let verify = [
        "audit",
        "verify",
        "--checkpoints",
        checkpoints.to_str().unwrap(),
        "--public-key",
        pem_file.to_str().unwrap(),
    ];
    let out = fleet.ctl(&verify).await.ok();
    assert_eq!(rows(&out)[0][2], "intact", "{out}");

    let export = work.path().join("audit.jsonl");
    fleet
        .ctl(&[
            "audit",
            "export",
            "--format",
            "jsonl",
            "--output",
            export.to_str().unwrap(),
        ])
        .await
        .ok();
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains(r#""record":"checkpoint""#),
        "{text}"
    );
    let (code, out) = python_verify(&export, &pem_file);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact: "), "{out}");
    // One changed byte in an event, then in the signature.
    let changed = work.path().join("changed.jsonl");
    std::fs::write(&changed, text.replacen("tenant.create", "tenant.creatf", 1)).unwrap();
    assert_eq!(
        python_verify(&changed, &pem_file),
        (1, "broken at seq 1: content_changed\n".into())
    );
    let signature = text.rfind(r#""signature":""#).unwrap() + r#""signature":""#.len();
    let mut forged = text.clone().into_bytes();
    forged[signature] = if forged[signature] == b'0' {
        b'1'
    } else {
        b'0'
    };
    std::fs::write(&changed, forged).unwrap();
    let (code, out) = python_verify(&changed, &pem_file);
    assert_eq!(code, 1, "{out}");
    assert!(out.ends_with(": checkpoint_signature_invalid\n"), "{out}");
    // Another key is not the pinned one.
    let other = store::audit_checkpoints::CheckpointKey::from_seed(&[9; 32])
        .unwrap()
        .public_key();
    let other_pem = work.path().join("other.pem");
    std::fs::write(&other_pem, other.to_pem()).unwrap();
    assert_eq!(python_verify(&export, &other_pem).0, 1);
    let line = fleet
        .ctl(&[
            "audit",
            "verify",
            "--checkpoints",
            checkpoints.to_str().unwrap(),
            "--public-key",
            other_pem.to_str().unwrap(),
        ])
        .await
        .fails(1, "audit-chain-broken");
    assert!(line.contains("checkpoint_signature_invalid"), "{line}");

    // The database's copy, through the API, checked under the pinned key all the same.
    let url = format!("{}/v1/audit-checkpoints", fleet.server());
    let by_url = [
        "audit",
        "verify",
        "--checkpoints",
        url.as_str(),
        "--public-key",
        pem_file.to_str().unwrap(),
    ];
    let out = fleet.ctl(&by_url).await.ok();
    assert_eq!(rows(&out)[0][2], "intact", "{out}");
    let line = fleet
        .ctl(&[
            "audit",
            "verify",
            "--checkpoints",
            "https://elsewhere.example/v1/audit-checkpoints",
            "--public-key",
            pem_file.to_str().unwrap(),
        ])
        .await
        .fails(2, "usage");
    assert!(line.contains("of --server"), "{line}");

    // Rewritten behind the application's back: named over HTTPS from the checkpoints.
    let mut owner = fleet._db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET hash = decode(repeat('ab', 32), 'hex') WHERE tenant_id = $1 AND seq = 2")
        .bind(fleet.tenant)
        .execute(&mut owner)
        .await
        .unwrap();
    let line = fleet.ctl(&verify).await.fails(1, "audit-chain-broken");
    assert!(line.contains("at seq 2"), "{line}");
    let line = fleet.ctl(&by_url).await.fails(1, "audit-chain-broken");
    assert!(line.contains("at seq 2"), "{line}");
    fleet.stop().await;
}
