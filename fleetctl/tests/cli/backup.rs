//! `fleetctl backup`: create → verify → restore → fleetd starts on the restored database and a
//! device reconnects; a wrong key, a truncated file, an altered file, a loose key file and a
//! backup whose audit chain is broken are each refused with one clear line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fleet_tests::mqtt::{connect_subscribed, DeviceCredentials};
use fleet_tests::TestDb;
use sqlx::Connection;
use store::api_keys::KeyEnv;
use store::audit::Actor;
use store::tenants;

use super::{fleetctl, run, Run};

/// fleetctl on `db` (`--database-url`).
pub(super) async fn on(db: &TestDb, args: &[&str]) -> Run {
    let mut command = fleetctl();
    command.arg("--database-url").arg(db.url());
    run(command, args).await
}

pub(super) fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The recorded verifications of `db`: (file name, verified, detail), oldest first.
async fn verifications(db: &TestDb) -> Vec<(String, bool, String)> {
    let mut owner = db.connect_as_owner().await;
    let rows = sqlx::query_as(
        "SELECT file_name, verified, detail FROM backup_verifications ORDER BY verification_id",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    owner.close().await.ok();
    rows
}

/// The privileges on every table, sequence and function, with the application role's name
/// replaced by `APP` (each database has its own).
async fn privileges(db: &TestDb) -> Vec<String> {
    let role = db.app_role().await;
    let mut owner = db.connect_as_owner().await;
    // Each object's privileges as a sorted set (NULL ACLs as their defaults): the same rights
    // spelled in another order, or implicitly, are the same.
    let acls: Vec<String> = sqlx::query_scalar(
        "WITH objects AS (
             SELECT c.relname::text AS name,
                    coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\",
                                                  c.relowner)) AS acl
               FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
             UNION ALL
             SELECT p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner))
               FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace)
         SELECT name || ' ' || string_agg(privilege, ',' ORDER BY privilege)
           FROM (SELECT o.name, CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text
                                END || '=' || a.privilege_type AS privilege
                   FROM objects o, aclexplode(o.acl) a) p
          GROUP BY name
         UNION ALL
         SELECT 'connect ' || has_database_privilege($1, current_database(), 'CONNECT')::text
                || ' public ' || has_database_privilege('public', current_database(), 'CONNECT')::text
         ORDER BY 1",
    )
    .bind(&role)
    .fetch_all(&mut owner)
    .await
    .unwrap();
    owner.close().await.ok();
    acls.into_iter()
        .map(|acl| acl.replace(&role, "APP"))
        .collect()
}

/// Every row of every table but the verifications (recorded in the source after its backup).
async fn contents(db: &TestDb) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut rows = db.every_row_as_text().await;
    rows.remove("backup_verifications");
    rows
}

#[tokio::test]
async fn a_backup_is_verified_restored_and_fleetd_starts_on_it_where_its_devices_reconnect() {
    let source = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = fleetd::start(fleetd::Config::on_ephemeral_loopback_ports(
        data_dir.path(),
        source.url().parse().unwrap(),
    ))
    .await
    .expect("fleetd starts");
    let app = &running.database().app;
    let (acme, _) = tenants::create_with_owner_key(app, "acme", &KeyEnv::live(), &Actor::System)
        .await
        .unwrap();
    let (beta, _) = tenants::create_with_owner_key(app, "beta", &KeyEnv::live(), &Actor::System)
        .await
        .unwrap();
    let ids = fleet_tests::tenancy::add_devices(app, acme.id, "gw-", 3).await;
    fleet_tests::tenancy::add_devices(app, beta.id, "pi-", 2).await;
    let device = DeviceCredentials::issued(&running.pki().issuing_ca, acme.id, ids[0]);
    running.shutdown().await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("backup.key");
    let file = work.path().join("fleet.backup");
    run(fleetctl(), &["backup", "keygen", "--out", path(&key)])
        .await
        .ok();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let created = on(
        &source,
        &[
            "backup",
            "create",
            "--out",
            path(&file),
            "--key-file",
            path(&key),
        ],
    )
    .await
    .ok();
    assert!(created.starts_with("backup written to "), "{created}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is as secret as the database");
    let dump = std::fs::read(&file).unwrap();
    assert!(
        !dump.windows(4).any(|w| w == b"acme") && !dump.windows(5).any(|w| w == b"PGDMP"),
        "nothing of the dump is in the clear"
    );

    let verified = on(
        &source,
        &["backup", "verify", path(&file), "--key-file", path(&key)],
    )
    .await
    .ok();
    assert!(verified.contains("audit chains intact"), "{verified}");
    for tenant in [acme.id, beta.id] {
        assert!(verified.contains(&tenant.to_string()), "{verified}");
    }
    assert!(
        verified
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["devices", "5", "5", "yes"]),
        "{verified}"
    );
    let recorded = verifications(&source).await;
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].1, "{recorded:?}");
    assert_eq!(recorded[0].0, path(&file));

    let target = TestDb::new().await;
    let restored = on(
        &target,
        &["backup", "restore", path(&file), "--key-file", path(&key)],
    )
    .await
    .ok();
    assert!(restored.contains("start fleetd on it"), "{restored}");
    assert_eq!(contents(&target).await, contents(&source).await);
    assert_eq!(
        privileges(&target).await,
        privileges(&source).await,
        "the application role's privileges, and PUBLIC's, are the source's"
    );
    let again = on(
        &target,
        &["backup", "restore", path(&file), "--key-file", path(&key)],
    )
    .await;
    let line = again.fails(1, "database-not-empty");
    assert!(line.contains("restore needs an empty database"), "{line}");

    // The same data directory (PKI) on the restored database: the device's certificate works.
    let running = fleetd::start(fleetd::Config::on_ephemeral_loopback_ports(
        data_dir.path(),
        target.url().parse().unwrap(),
    ))
    .await
    .expect("fleetd starts on the restored database");
    let addr = running.broker_addr().expect("the embedded broker");
    let options = device.options(
        running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    );
    let topic = wire::topic::ack(device.device_id);
    let (_client, _events) = connect_subscribed(options, topic, Duration::from_secs(20)).await;
    let mut tx = running.database().app.begin(acme.id).await.unwrap();
    let verdict = store::audit::verify(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(
        matches!(verdict, store::audit::ChainVerdict::Intact { .. }),
        "{verdict:?}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_key_a_truncated_or_altered_file_and_a_broken_chain_are_refused_and_recorded() {
    let source = TestDb::new().await;
    on(&source, &["db", "migrate"]).await.ok();
    on(&source, &["tenant", "create", "acme"]).await.ok();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("backup.key");
    let other = work.path().join("other.key");
    let file = work.path().join("fleet.backup");
    run(fleetctl(), &["backup", "keygen", "--out", path(&key)])
        .await
        .ok();
    run(fleetctl(), &["backup", "keygen", "--out", path(&other)])
        .await
        .ok();
    let existing = run(fleetctl(), &["backup", "keygen", "--out", path(&other)]).await;
    existing.fails(1, "backup-key-file");
    on(
        &source,
        &[
            "backup",
            "create",
            "--out",
            path(&file),
            "--key-file",
            path(&key),
        ],
    )
    .await
    .ok();
    let bytes = std::fs::read(&file).unwrap();

    let wrong = on(
        &source,
        &["backup", "verify", path(&file), "--key-file", path(&other)],
    )
    .await;
    assert!(wrong
        .fails(1, "backup-wrong-key")
        .contains("wrong key file"));

    let truncated = work.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 30]).unwrap();
    let cut = on(
        &source,
        &[
            "backup",
            "verify",
            path(&truncated),
            "--key-file",
            path(&key),
        ],
    )
    .await;
    assert!(cut.fails(1, "backup-truncated").contains("truncated"));

    let altered = work.path().join("altered.backup");
    let mut flipped = bytes.clone();
    // Inside the header record's ciphertext (after the 43-byte preamble, the 32-byte key check
    // and the record's 5-byte kind and length).
    flipped[100] ^= 0x40;
    std::fs::write(&altered, &flipped).unwrap();
    let bad = on(
        &source,
        &["backup", "verify", path(&altered), "--key-file", path(&key)],
    )
    .await;
    assert!(bad
        .fails(1, "backup-altered")
        .contains("fails authentication"));

    // A bad file restores nothing: the target stays empty.
    let target = TestDb::new().await;
    let refused = on(
        &target,
        &[
            "backup",
            "restore",
            path(&altered),
            "--key-file",
            path(&key),
        ],
    )
    .await;
    refused.fails(1, "backup-altered");
    assert!(contents(&target).await.is_empty(), "nothing was restored");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = on(
        &source,
        &["backup", "verify", path(&file), "--key-file", path(&key)],
    )
    .await;
    assert!(loose.fails(1, "backup-key-file").contains("chmod 600"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let no_key = on(&source, &["backup", "verify", path(&file)]).await;
    no_key.fails(2, "usage");

    // A backup of a database whose audit chain was altered restores, and is not verified.
    let mut owner = source.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET details = '{\"name\":\"evil\"}' WHERE seq = 1")
        .execute(&mut owner)
        .await
        .unwrap();
    owner.close().await.ok();
    let broken = work.path().join("broken.backup");
    on(
        &source,
        &[
            "backup",
            "create",
            "--out",
            path(&broken),
            "--key-file",
            path(&key),
        ],
    )
    .await
    .ok();
    let unverified = on(
        &source,
        &["backup", "verify", path(&broken), "--key-file", path(&key)],
    )
    .await;
    assert!(
        unverified.stdout.contains("broken"),
        "{}",
        unverified.stdout
    );
    let line = unverified.fails(1, "backup-not-verified");
    assert!(line.contains("1 of 1 audit chains broken"), "{line}");

    let recorded = verifications(&source).await;
    let verdicts: Vec<bool> = recorded.iter().map(|r| r.1).collect();
    assert_eq!(verdicts, [false, false, false, false], "{recorded:?}");
    assert!(recorded[0].2.contains("wrong key"), "{recorded:?}");
    assert!(recorded[1].2.contains("truncated"), "{recorded:?}");
    // The loose key file and the missing key never reached a verification.
    assert!(recorded[3].2.contains("NOT verified"), "{recorded:?}");
    // What the compliance report reads: the latest.
    let database = store::Database::open(&source.settings(), store::Purpose::Tool)
        .await
        .unwrap();
    let last = store::backup::last_verification(&database)
        .await
        .unwrap()
        .expect("recorded");
    database.close().await.unwrap();
    assert!(!last.verified, "{last:?}");
    assert_eq!(last.file_name, path(&broken));
    assert!(
        last.detail.contains("NOT verified") && last.dump_sha256.is_some(),
        "{last:?}"
    );
    assert!(last.checks["chains"][0]["intact"] == false, "{last:?}");
}

#[tokio::test]
async fn a_passphrase_backup_opens_with_its_passphrase_only() {
    let source = TestDb::new().await;
    on(&source, &["db", "migrate"]).await.ok();
    on(&source, &["tenant", "create", "acme"]).await.ok();
    let work = tempfile::tempdir().unwrap();
    let phrase = work.path().join("passphrase");
    std::fs::write(&phrase, "violet harbour lantern forty-two\n").unwrap();
    std::fs::set_permissions(&phrase, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = work.path().join("backup.key");
    run(fleetctl(), &["backup", "keygen", "--out", path(&key)])
        .await
        .ok();
    let file = work.path().join("fleet.backup");
    let create = ["backup", "create", "--out", path(&file)];
    on(
        &source,
        &[&create[..], &["--passphrase-file", path(&phrase)]].concat(),
    )
    .await
    .ok();
    let verified = on(
        &source,
        &[
            "backup",
            "verify",
            path(&file),
            "--passphrase-file",
            path(&phrase),
        ],
    )
    .await
    .ok();
    assert!(verified.contains("audit chains intact"), "{verified}");

    let mut with_env = fleetctl();
    with_env
        .env(
            "FLEETPLANE_BACKUP_PASSPHRASE",
            "violet harbour lantern forty-three",
        )
        .arg("--database-url")
        .arg(source.url());
    let wrong = run(with_env, &["backup", "verify", path(&file)]).await;
    assert!(wrong.fails(1, "backup-wrong-key").contains("wrong key"));
    let keyed = on(
        &source,
        &["backup", "verify", path(&file), "--key-file", path(&key)],
    )
    .await;
    assert!(keyed
        .fails(1, "backup-wrong-key")
        .contains("made with a passphrase"));
    std::fs::set_permissions(&phrase, std::fs::Permissions::from_mode(0o640)).unwrap();
    let loose = on(
        &source,
        &[
            "backup",
            "verify",
            path(&file),
            "--passphrase-file",
            path(&phrase),
        ],
    )
    .await;
    assert!(loose.fails(1, "backup-key-file").contains("chmod 600"));
    let both = on(
        &source,
        &[
            "backup",
            "verify",
            path(&file),
            "--key-file",
            path(&key),
            "--passphrase-file",
            path(&phrase),
        ],
    )
    .await;
    assert_eq!(both.code, 2, "{}", both.stderr);
}

#[tokio::test]
async fn fleetd_makes_scheduled_backups_and_keeps_the_newest() {
    let source = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("backup.key");
    run(fleetctl(), &["backup", "keygen", "--out", path(&key)])
        .await
        .ok();
    let dir = work.path().join("backups");
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), source.url().parse().unwrap());
    config.backup.enabled = true;
    config.backup.interval = Duration::from_millis(300);
    config.backup.key_file = Some(key.clone());
    config.backup.dir = Some(dir.clone());
    config.backup.keep = 2;
    let running = fleetd::start(config).await.expect("fleetd starts");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 4 {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(
            names.len() <= 3,
            "rotation keeps 2 (and the one being rotated): {names:?}"
        );
        seen.extend(names);
        assert!(
            std::time::Instant::now() < deadline,
            "backups made: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    let newest = left.last().unwrap();
    let verified = on(
        &source,
        &["backup", "verify", path(newest), "--key-file", path(&key)],
    )
    .await
    .ok();
    assert!(verified.contains("verified: "), "{verified}");

    // A loose key file refuses the start rather than every run.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), source.url().parse().unwrap());
    config.backup.enabled = true;
    config.backup.key_file = Some(key.clone());
    let err = fleetd::start(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
}
