//! fleetctl's enrollment-token and device commands, run as the binary against a real database.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use fleet_tests::TestDb;
use store::devices::{self, NewDevice};
use store::TenantId;

fn fleetctl(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .arg("--database-url")
        .arg(db.url())
        .args(args)
        .env("USER", "alice")
        .env_remove("SUDO_USER")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "fleetctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn tokens_are_created_once_listed_without_secrets_and_revoked() {
    let db = TestDb::new().await;
    let tenant = ok(fleetctl(&db, &["tenant", "create", "acme"]));
    let tenant = tenant.trim();

    let created = fleetctl(
        &db,
        &[
            "enrollment-token",
            "create",
            "--tenant",
            tenant,
            "--name",
            "line 3",
            "--cidr",
            "10.0.0.0/8",
            "--cidr",
            "::/0",
            "--daily-limit",
            "3",
            "--expires-in",
            "7d",
            "--max-uses",
            "10",
            "--group",
            "line-3",
            "--label",
            "site=berlin",
        ],
    );
    let notice = String::from_utf8_lossy(&created.stderr).into_owned();
    let secret = ok(created);
    // stdout is the token and nothing else, so it can be captured by a script.
    let secret = secret.strip_suffix('\n').unwrap();
    assert!(secret.starts_with(&format!("fpe_{}_", tenant.replace('-', ""))));
    assert!(!secret.contains(char::is_whitespace));
    assert!(notice.contains("shown once"), "{notice}");
    let token_id = uuid::Uuid::parse_str(&secret[37..69]).unwrap().to_string();

    let listed = ok(fleetctl(
        &db,
        &["enrollment-token", "list", "--tenant", tenant],
    ));
    assert!(listed.contains(&token_id), "{listed}");
    assert!(listed.contains("active") && listed.contains("0/3") && listed.contains("0/10"));
    assert!(listed.contains("10.0.0.0/8,::/0") && listed.contains("line-3"));
    assert!(!listed.contains(&secret[70..]), "list shows the secret");

    let revoked = ok(fleetctl(
        &db,
        &["enrollment-token", "revoke", "--tenant", tenant, &token_id],
    ));
    assert!(revoked.contains("revoked"));
    let listed = ok(fleetctl(
        &db,
        &["enrollment-token", "list", "--tenant", tenant],
    ));
    assert!(listed.contains("revoked"), "{listed}");

    // The CIDR list is required; "anywhere" must be said.
    let refused = fleetctl(
        &db,
        &[
            "enrollment-token",
            "create",
            "--tenant",
            tenant,
            "--name",
            "x",
            "--daily-limit",
            "3",
            "--expires-in",
            "7d",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--cidr"));

    let audit = ok(fleetctl(&db, &["audit", "verify", "--tenant", tenant]));
    assert!(audit.contains("intact, 3 events"), "{audit}");
}

#[tokio::test]
async fn a_device_is_revoked_from_the_command_line() {
    let test_db = TestDb::new().await;
    let tenant = ok(fleetctl(&test_db, &["tenant", "create", "acme"]));
    let tenant: TenantId = tenant.trim().parse().unwrap();
    let db = test_db.open().await;
    let mut tx = db.app.begin(tenant).await.unwrap();
    let device = devices::create(
        &mut tx,
        &NewDevice {
            name: "d".into(),
            group: "default".into(),
            labels: BTreeMap::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    db.close().await.unwrap();
    let (tenant, id) = (tenant.to_string(), device.id.to_string());

    let out = ok(fleetctl(
        &test_db,
        &["device", "revoke", "--tenant", &tenant, &id],
    ));
    assert_eq!(out.trim(), format!("device {id} revoked"));
    let out = ok(fleetctl(
        &test_db,
        &["device", "revoke", "--tenant", &tenant, &id],
    ));
    assert!(out.contains("already revoked"), "{out}");
    let listed = ok(fleetctl(&test_db, &["device", "list", "--tenant", &tenant]));
    assert!(
        listed.contains(&id) && listed.contains("Revoked"),
        "{listed}"
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    let out = fleetctl(
        &test_db,
        &["device", "revoke", "--tenant", &tenant, &unknown],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("device not found"));

    let audit = ok(fleetctl(
        &test_db,
        &["audit", "verify", "--tenant", &tenant],
    ));
    assert!(audit.contains("intact, 2 events"), "{audit}");
}
