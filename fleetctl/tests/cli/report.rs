//! `fleetctl report evidence` against a real fleetd: the compliance evidence report over HTTPS,
//! as HTML, JSON and PDF (printed by the installed headless Chromium).

use std::collections::BTreeMap;
use std::path::Path;

use store::api_keys::{PresentedKey, Role};
use store::audit::Actor;
use store::device_groups::GroupScope;
use store::enrollment_tokens::{self, NewEnrollmentToken};
use store::users::{self, Email, Password};
use store::{devices, tenants};
use time::{Duration, OffsetDateTime};

use super::backup::{on, path};
use super::https::Fleet;
use super::{fleetctl, run};

fn key_id(key: &str) -> String {
    PresentedKey::parse(key).unwrap().id().to_string()
}

/// The evidence report of tenant acme for `from..to` as JSON, written to `file` by fleetctl.
async fn json_report(fleet: &Fleet, from: &str, to: &str, file: &Path) -> serde_json::Value {
    fleet
        .ctl(&[
            "report",
            "evidence",
            "--tenant",
            "acme",
            "--from",
            from,
            "--to",
            to,
            "--format",
            "json",
            "-o",
            file.to_str().unwrap(),
        ])
        .await
        .ok();
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

/// Every row of every section of a JSON evidence report.
fn report_rows(report: &serde_json::Value) -> Vec<&serde_json::Value> {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["rows"].as_array().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evidence_report_maps_each_control_to_sourced_evidence_without_secrets() {
    let fleet = Fleet::start().await;
    let app = fleet.running.database().app.clone();
    let now = OffsetDateTime::now_utc();
    let work = tempfile::tempdir().unwrap();

    // Another tenant, whose token and revoked device must not show.
    let (other, other_key) = tenants::create_with_owner_key(
        &app,
        "globex",
        &store::api_keys::KeyEnv::live(),
        &Actor::System,
    )
    .await
    .unwrap();
    let mut tx = app.begin(other.id).await.unwrap();
    fleet_tests::ensure_group(&mut tx, "globex-group").await;
    let token = NewEnrollmentToken {
        name: "globex-token".into(),
        allowed_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
        daily_limit: 3,
        max_uses: None,
        expires_at: now + Duration::days(3),
        device_group: "globex-group".into(),
        device_labels: BTreeMap::new(),
    };
    enrollment_tokens::create(&mut tx, &token, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // acme: an owner with a password and no second factor, an SSO-only admin, a token, a
    // revoked device, keys of three roles, a checkpoint.
    let mut tx = app.begin(fleet.tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, "line-3").await;
    let root = users::create_owner_break_glass(
        &mut tx,
        &Email::parse("root@acme.example").unwrap(),
        &Password::new("a long enough passphrase 7".into()),
        &Actor::System,
        now,
    )
    .await
    .unwrap();
    users::find_or_create_verified(
        &mut tx,
        &Email::parse("sso@acme.example").unwrap(),
        Role::Admin,
        &Actor::System,
        now,
    )
    .await
    .unwrap();
    let token = NewEnrollmentToken {
        name: "factory-line-3".into(),
        allowed_cidrs: vec!["10.20.0.0/16".parse().unwrap()],
        daily_limit: 25,
        max_uses: Some(100),
        expires_at: now + Duration::days(7),
        device_group: "line-3".into(),
        device_labels: BTreeMap::new(),
    };
    let issued = enrollment_tokens::create(&mut tx, &token, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let device = fleet.device("press-7", "line-3", &[]).await;
    let mut tx = app.begin(fleet.tenant).await.unwrap();
    devices::revoke(&mut tx, device, &GroupScope::All, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let auditor = fleet.key_with_role(Role::Auditor).await;
    let operator = fleet.key_with_role(Role::Operator).await;
    let checkpoint = fleet.ctl(&["--json", "audit", "checkpoint"]).await.json();

    let from = (now - Duration::days(1)).date().to_string();
    let to = now.date().to_string();
    let json_file = work.path().join("evidence.json");
    let report = json_report(&fleet, &from, &to, &json_file).await;
    let rows = report_rows(&report);
    let row = |evidence: &str| {
        *rows
            .iter()
            .find(|r| r["evidence"] == evidence)
            .unwrap_or_else(|| panic!("no row {evidence:?} in {report:#}"))
    };
    // No verification recorded yet: a finding.
    let backup = row("last backup verification");
    assert_eq!(backup["value"], "none recorded");
    assert!(backup["finding"].is_string(), "{backup}");
    let owner = row("user root@acme.example");
    assert!(
        owner["value"].as_str().unwrap().contains("MFA off"),
        "{owner}"
    );
    assert!(
        owner["finding"]
            .as_str()
            .unwrap()
            .contains("no second factor"),
        "{owner}"
    );
    assert_eq!(owner["source"], "table users via store::users::list");
    // Single sign-on only: MFA is the provider's, not a finding here.
    assert!(row("user sso@acme.example")["finding"].is_null());
    let chain = row("audit chain verification");
    assert!(
        chain["value"].as_str().unwrap().starts_with("intact"),
        "{chain}"
    );
    assert!(chain["finding"].is_null());
    let signed = row(&format!("signed checkpoint seq {}", checkpoint["seq"]));
    assert!(signed["value"]
        .as_str()
        .unwrap()
        .contains(checkpoint["key_fingerprint"].as_str().unwrap()));
    let revoked = row(&format!("revoked device {device}"));
    assert_eq!(
        revoked["source"],
        "table devices via store::evidence::revoked_devices"
    );
    let token_row = row(&format!("enrollment token {}", issued.token.id));
    assert!(token_row["value"]
        .as_str()
        .unwrap()
        .contains("10.20.0.0/16"));
    assert!(token_row["value"].as_str().unwrap().contains("25 a day"));
    for key in [&fleet.key, &auditor, &operator] {
        row(&format!("API key {}", key_id(key)));
    }
    let devices_table = row("table public.devices");
    assert_eq!(
        devices_table["value"],
        "row-level security on, forced on, 1 policy"
    );
    assert!(rows
        .iter()
        .filter(|r| r["evidence"].as_str().unwrap().starts_with("table public."))
        .all(|r| r["finding"].is_null()));
    assert!(row("protocol versions")["value"]
        .as_str()
        .unwrap()
        .contains("TLSv1_3"));
    assert_eq!(
        report["findings"].as_u64(),
        Some(rows.iter().filter(|r| r["finding"].is_string()).count() as u64)
    );

    // A real backup of this database, verified by fleetctl (which records the result).
    let backup_key = work.path().join("backup.key");
    let backup_file = work.path().join("nightly-2026.fpbk");
    run(
        fleetctl(),
        &["backup", "keygen", "--out", path(&backup_key)],
    )
    .await
    .ok();
    let created = on(
        &fleet._db,
        &[
            "--json",
            "backup",
            "create",
            "--out",
            path(&backup_file),
            "--key-file",
            path(&backup_key),
        ],
    )
    .await
    .json();
    let digest = created["dump_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no dump_sha256 in {created}"))
        .to_owned();
    on(
        &fleet._db,
        &[
            "backup",
            "verify",
            path(&backup_file),
            "--key-file",
            path(&backup_key),
        ],
    )
    .await
    .ok();

    // The auditor reads it as HTML: every piece with its source, no secret, no other tenant.
    let html_file = work.path().join("evidence.html");
    run(
        fleet.ctl_with_key(&auditor),
        &[
            "report",
            "evidence",
            "--from",
            &from,
            "--to",
            &to,
            "-o",
            html_file.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    let html = std::fs::read_to_string(&html_file).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "no script in the report");
    for expected in [
        "root@acme.example",
        "FINDING: owner signs in with a password and no second factor",
        "nightly-2026.fpbk",
        digest.as_str(),
        "table backup_verifications via store::evidence::last_backup_verification",
        &device.to_string(),
        &issued.token.id.to_string(),
        &key_id(&fleet.key),
        "table audit_events via store::audit::verify_with_checkpoints",
        "fleetd TLS policy api::tls::policy",
        "Strict-Transport-Security: max-age=31536000",
        "@media print",
    ] {
        assert!(
            html.contains(expected),
            "{expected:?} missing from the report"
        );
    }
    assert!(!html.contains("none recorded"));
    for secret in [
        fleet.key.as_str(),
        auditor.as_str(),
        operator.as_str(),
        issued.secret.expose(),
        other_key.secret.expose(),
    ] {
        assert!(!html.contains(secret), "a secret is in the report");
    }
    assert!(
        !html.contains("globex"),
        "another tenant's data is in the report"
    );

    // The owner enrols a second factor: the finding goes, the row says so.
    let mut tx = app.begin(fleet.tenant).await.unwrap();
    users::set_pending_totp(&mut tx, root.id, b"sealed secret")
        .await
        .unwrap();
    let codes = [users::RecoveryCode::new_random()];
    users::confirm_totp(&mut tx, root.id, 1, &codes, &Actor::System, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let report = json_report(&fleet, &from, &to, &json_file).await;
    let owner = *report_rows(&report)
        .iter()
        .find(|r| r["evidence"] == "user root@acme.example")
        .unwrap();
    assert!(
        owner["value"].as_str().unwrap().contains("MFA on (TOTP)"),
        "{owner}"
    );
    assert!(owner["finding"].is_null(), "{owner}");

    // PDF through headless Chromium.
    let pdf_file = work.path().join("evidence.pdf");
    fleet
        .ctl(&[
            "report",
            "evidence",
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "pdf",
            "-o",
            pdf_file.to_str().unwrap(),
        ])
        .await
        .ok();
    let pdf = std::fs::read(&pdf_file).unwrap();
    assert!(pdf.starts_with(b"%PDF"), "not a PDF");

    // Who may not: an operator (the permission table), another tenant's name with this key,
    // a period that ends before it starts.
    run(
        fleet.ctl_with_key(&operator),
        &[
            "report",
            "evidence",
            "--from",
            &from,
            "--to",
            &to,
            "-o",
            html_file.to_str().unwrap(),
        ],
    )
    .await
    .fails(4, "forbidden");
    fleet
        .ctl(&[
            "report",
            "evidence",
            "--tenant",
            "globex",
            "--from",
            &from,
            "--to",
            &to,
            "-o",
            html_file.to_str().unwrap(),
        ])
        .await
        .fails(3, "not-found");
    fleet
        .ctl(&[
            "report",
            "evidence",
            "--from",
            &to,
            "--to",
            &from,
            "-o",
            html_file.to_str().unwrap(),
        ])
        .await
        .fails(2, "usage");
    // What was refused left the auditor's report in place.
    assert_eq!(std::fs::read_to_string(&html_file).unwrap(), html);

    // Each export is audited: json, html, json (after the TOTP enrolment), html (for the PDF).
    let exports = fleet
        .ctl(&[
            "--json",
            "audit",
            "list",
            "--action",
            "report.evidence_export",
        ])
        .await
        .json();
    let exports = exports["items"].as_array().unwrap();
    assert_eq!(exports.len(), 4, "{exports:?}");
    assert_eq!(exports[1]["actor"], format!("api_key:{}", key_id(&auditor)));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_without_chromium_on_path_is_refused_before_the_api_is_asked() {
    let fleet = Fleet::start().await;
    let work = tempfile::tempdir().unwrap();
    let pdf_file = work.path().join("evidence.pdf");
    let mut command = fleet.ctl_with_key(&fleet.key);
    command.env("PATH", work.path());
    let out = run(
        command,
        &[
            "report",
            "evidence",
            "--from",
            "7d",
            "--to",
            "now",
            "--format",
            "pdf",
            "-o",
            pdf_file.to_str().unwrap(),
        ],
    )
    .await
    .fails(1, "chromium-missing");
    assert!(out.contains("chromium"), "{out}");
    assert!(!pdf_file.exists());
    let exports = fleet
        .ctl(&[
            "--json",
            "audit",
            "list",
            "--action",
            "report.evidence_export",
        ])
        .await
        .json();
    assert_eq!(exports["items"].as_array().unwrap().len(), 0);
    fleet.stop().await;
}
