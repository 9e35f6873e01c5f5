//! Audit retention and erasure that keep the chain (migration 0017): tombstones keep every hash,
//! pruning removes events only behind a signed checkpoint and verification starts from it.

use fleet_tests::TestDb;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::audit::{self, Actor, ChainBreak, ChainVerdict, OperatorName};
use store::audit_checkpoints::{self, Checkpoint, CheckpointKey};
use store::{tenants, StoreError, TenantId};

fn alice() -> Actor {
    Actor::Operator(OperatorName::new("alice").unwrap())
}

fn key() -> CheckpointKey {
    CheckpointKey::from_seed(&[3; 32]).unwrap()
}

async fn tenant_with_events(db: &store::Database, events: usize) -> TenantId {
    let name = format!("kept-{}", uuid::Uuid::new_v4().simple());
    let tenant = tenants::create(&db.app, &name, &Actor::System)
        .await
        .unwrap()
        .id;
    let mut tx = db.app.begin(tenant).await.unwrap();
    for i in 0..events {
        audit::append_for_tests(
            &mut tx,
            "operator:alice",
            "user.invite",
            &format!("user:{i}"),
            &json!({ "email": format!("person{i}@example.com") }),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    tenant
}

async fn checkpoint(
    db: &store::Database,
    tenant: TenantId,
    dir: &std::path::Path,
) -> Option<Checkpoint> {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let written = audit_checkpoints::write(&mut tx, &key()).await.unwrap();
    tx.commit().await.unwrap();
    if let Some(c) = &written {
        audit_checkpoints::push_to_dir(dir, c).unwrap();
    }
    written
}

async fn events(db: &store::Database, tenant: TenantId) -> Vec<audit::AuditEvent> {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let events = audit::list_after(&mut tx, 0, 100_000).await.unwrap();
    tx.rollback().await.unwrap();
    events
}

/// The plain verdict and the one against the checkpoints pushed to `dir`.
async fn verdicts(
    db: &store::Database,
    tenant: TenantId,
    dir: &std::path::Path,
) -> (ChainVerdict, ChainVerdict) {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let plain = audit::verify(&mut tx).await.unwrap();
    let checkpoints = audit_checkpoints::read_dir(dir, tenant).unwrap();
    let signed = audit::verify_with_checkpoints(&mut tx, checkpoints, &key().public_key())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    (plain, signed)
}

async fn erase(
    db: &store::Database,
    tenant: TenantId,
    seq: i64,
    reason: &str,
) -> Result<audit::AuditEvent, StoreError> {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let erased = audit::erase(&mut tx, seq, reason, &alice()).await;
    if erased.is_ok() {
        tx.commit().await.unwrap();
    }
    erased
}

/// Runs `statement` as the superuser with triggers disabled (an attacker with database access).
async fn as_superuser_without_triggers(test_db: &TestDb, statement: &str, tenant: TenantId) -> u64 {
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query(statement)
        .bind(tenant)
        .execute(&mut owner)
        .await
        .unwrap()
        .rows_affected()
}

#[tokio::test]
async fn an_erased_event_loses_its_details_and_the_chain_and_checkpoints_still_verify() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let tenant = tenant_with_events(&db, 5).await;
    checkpoint(&db, tenant, dir.path()).await.unwrap();
    let before = events(&db, tenant).await;
    assert!(before.iter().all(|e| e.canonical_version == 2));
    let original = before[2].clone();
    assert!(original.details.contains("person1@example.com"));

    let erasure = erase(&db, tenant, 3, "GDPR art. 17 request #42")
        .await
        .unwrap();
    assert_eq!(erasure.seq, 7);
    assert_eq!(erasure.action, "audit.erase");
    assert_eq!(erasure.target, "audit_event:3");
    assert_eq!(erasure.actor, "operator:alice@fleetctl");
    let digest = hex::encode(Sha256::digest(original.details.as_bytes()));
    let details: Value = serde_json::from_str(&erasure.details).unwrap();
    assert_eq!(details["reason"], "GDPR art. 17 request #42");
    assert_eq!(details["details_sha256"], digest);

    let after = events(&db, tenant).await;
    let erased = &after[2];
    assert_eq!(erased.hash, original.hash);
    assert_eq!(erased.erased_by, Some(7));
    assert!(!erased.details.contains("person1"));
    assert_eq!(
        serde_json::from_str::<Value>(&erased.details).unwrap(),
        json!({ "erased": true, "details_sha256": digest, "by_event": 7 })
    );
    // Checkpoint covers 1..6; the erasure event 7 is after it.
    assert_eq!(
        verdicts(&db, tenant, dir.path()).await,
        (
            ChainVerdict::Intact { events: 7 },
            ChainVerdict::Intact { events: 7 }
        )
    );
    // A new checkpoint over the erasure signs, and everything still verifies.
    checkpoint(&db, tenant, dir.path()).await.unwrap();
    assert_eq!(
        verdicts(&db, tenant, dir.path()).await.1,
        ChainVerdict::Intact { events: 7 }
    );
    // An export re-verifies with its tombstone.
    let mut jsonl = String::new();
    for event in &after {
        jsonl.push_str(&audit::jsonl_event_line(event));
    }
    let parsed = audit::parse_jsonl(&jsonl).unwrap();
    assert_eq!(parsed.events, after);
    db.close().await.unwrap();
}

#[tokio::test]
async fn erasing_twice_a_missing_event_a_v1_event_or_without_a_reason_is_refused() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenant_with_events(&db, 3).await;
    erase(&db, tenant, 2, "request").await.unwrap();
    assert!(matches!(
        erase(&db, tenant, 2, "again").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        erase(&db, tenant, 99, "request").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        erase(&db, tenant, 3, "  ").await,
        Err(StoreError::Invalid {
            field: "reason",
            ..
        })
    ));
    // A row written before version 2 (made so here by the superuser, rehashed as v1).
    let v1 = &events(&db, tenant).await[3];
    let mut as_v1 = v1.clone();
    as_v1.canonical_version = 1;
    let v1_hash = as_v1.recompute_hash();
    as_v1.hash = v1_hash;
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET canonical_version = 1, hash = $3 WHERE tenant_id = $1 AND seq = $2")
        .bind(tenant)
        .bind(4_i64)
        .bind(&v1_hash[..])
        .execute(&mut owner)
        .await
        .unwrap();
    match erase(&db, tenant, 4, "request").await {
        Err(StoreError::Invalid {
            field: "seq",
            reason,
        }) => {
            assert!(reason.contains("canonical version 1"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The database function refuses it too, whoever calls it, and the app cannot UPDATE at all.
    let mut app = test_db.connect_as_app().await;
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(&mut app)
        .await
        .unwrap();
    for statement in [
        "SELECT fleet_audit_erase(4, 5)",
        "SELECT fleet_audit_erase(2, 5)",
        "UPDATE audit_events SET details = '{}' WHERE seq = 3",
    ] {
        let refused = sqlx::query(statement).execute(&mut app).await.unwrap_err();
        assert!(
            refused.to_string().contains("cannot be erased")
                || refused.to_string().contains("permission denied"),
            "{statement}: {refused}"
        );
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_forged_tombstone_is_refused_by_the_trigger_and_detected_when_forced() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let tenant = tenant_with_events(&db, 4).await;
    erase(&db, tenant, 2, "request").await.unwrap(); // event 6
    checkpoint(&db, tenant, dir.path()).await.unwrap();
    let forged = format!(
        r#"{{"erased":true,"details_sha256":"{}","by_event":6}}"#,
        "ab".repeat(32)
    );
    // With its trigger on, even the owner may only write the true tombstone of a v2 row.
    let mut owner = test_db.connect_as_owner().await;
    for (seq, details, by) in [
        (3_i64, forged.as_str(), 6_i64), // wrong digest
        (2, forged.as_str(), 6),         // erased already
    ] {
        let refused = sqlx::query(
            "UPDATE audit_events SET details = $3, erased_by = $4 WHERE tenant_id = $1 AND seq = $2",
        )
        .bind(tenant)
        .bind(seq)
        .bind(details)
        .bind(by)
        .execute(&mut owner)
        .await
        .unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{refused}");
    }
    // The true tombstone of event 3, but naming an event that is not its erasure.
    let refused = sqlx::query(
        "UPDATE audit_events SET details = fleet_audit_tombstone(details, 6), erased_by = 6 \
         WHERE tenant_id = $1 AND seq = 3",
    )
    .bind(tenant)
    .execute(&mut owner)
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // With triggers off, a forged digest breaks the event's hash.
    let statement = format!(
        "UPDATE audit_events SET details = '{forged}', erased_by = 6 WHERE tenant_id = $1 AND seq = 3"
    );
    assert_eq!(
        as_superuser_without_triggers(&test_db, &statement, tenant).await,
        1
    );
    let broken = ChainVerdict::Broken {
        seq: 3,
        reason: ChainBreak::ContentChanged,
    };
    assert_eq!(verdicts(&db, tenant, dir.path()).await, (broken, broken));
    db.close().await.unwrap();
}

/// As the superuser with triggers off: moves events `from..=through` `days` into the past and
/// rechains every hash and the head, as if they had been written then (the hashes before `from`
/// come out the same).
async fn age(test_db: &TestDb, db: &store::Database, tenant: TenantId, from: i64, through: i64) {
    let mut events = events(db, tenant).await;
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    let mut prev = audit::GENESIS_HASH;
    for event in &mut events {
        if (from..=through).contains(&event.seq) {
            event.occurred_at -= time::Duration::days(400);
        }
        event.prev_hash = prev;
        event.hash = event.recompute_hash();
        prev = event.hash;
        sqlx::query("UPDATE audit_events SET occurred_at = $3, prev_hash = $4, hash = $5 WHERE tenant_id = $1 AND seq = $2")
            .bind(tenant)
            .bind(event.seq)
            .bind(event.occurred_at)
            .bind(&event.prev_hash[..])
            .bind(&event.hash[..])
            .execute(&mut owner)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_chain_heads SET last_hash = $2 WHERE tenant_id = $1")
        .bind(tenant)
        .bind(&prev[..])
        .execute(&mut owner)
        .await
        .unwrap();
}

async fn prune(db: &store::Database, tenant: TenantId) -> audit::PruneOutcome {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let outcome = audit::prune(&mut tx, &Actor::System).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

#[tokio::test]
async fn pruning_removes_old_events_only_behind_a_checkpoint_and_verification_starts_there() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    // Events 1..=6, 400 days old.
    let tenant = tenant_with_events(&db, 5).await;
    let nothing = prune(&db, tenant).await;
    assert_eq!((nothing.anchor_seq, nothing.deleted), (0, 0));
    age(&test_db, &db, tenant, 1, 6).await;
    // Older than the retention (365 days), but no checkpoint covers them: all kept.
    assert_eq!(prune(&db, tenant).await.deleted, 0);
    let anchor = checkpoint(&db, tenant, dir.path()).await.unwrap();
    assert_eq!(anchor.seq, 6);
    // Events 7..=9 old too but after the newest checkpoint, 10..=11 new.
    let mut tx = db.app.begin(tenant).await.unwrap();
    for i in 0..5 {
        audit::append_for_tests(&mut tx, "system", "test.event", "x", &json!({ "i": i }))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    age(&test_db, &db, tenant, 7, 9).await;

    let pruned = prune(&db, tenant).await;
    assert_eq!(
        pruned,
        audit::PruneOutcome {
            anchor_seq: 6,
            deleted: 6,
            event_seq: Some(12),
        }
    );
    let left = events(&db, tenant).await;
    assert_eq!(left.first().unwrap().seq, 7);
    assert_eq!(left.first().unwrap().prev_hash, anchor.last_hash);
    let prune_event = left.last().unwrap();
    assert_eq!(
        (prune_event.seq, prune_event.action.as_str()),
        (12, "audit.prune")
    );
    let details: Value = serde_json::from_str(&prune_event.details).unwrap();
    assert_eq!(
        details,
        json!({ "through_seq": 6, "deleted": 6, "audit_retention_days": 365 })
    );
    assert_eq!(
        verdicts(&db, tenant, dir.path()).await,
        (
            ChainVerdict::Intact { events: 6 },
            ChainVerdict::Intact { events: 6 }
        )
    );
    let mut tx = db.app.begin(tenant).await.unwrap();
    assert_eq!(
        audit::verify_tail(&mut tx, 100).await.unwrap(),
        ChainVerdict::Intact { events: 6 }
    );
    tx.rollback().await.unwrap();
    // An export of what is left verifies from the signed anchor, and not without it.
    let mut verifier = audit_checkpoints::CheckpointVerifier::new(
        tenant,
        audit_checkpoints::read_dir(dir.path(), tenant).unwrap(),
        &key().public_key(),
    )
    .unwrap();
    assert_eq!(
        audit::verify_exported(left.clone(), &mut verifier),
        ChainVerdict::Intact { events: 6 }
    );
    let mut without_anchor =
        audit_checkpoints::CheckpointVerifier::new(tenant, Vec::new(), &key().public_key())
            .unwrap();
    assert_eq!(
        audit::verify_exported(left.clone(), &mut without_anchor),
        ChainVerdict::Broken {
            seq: 6,
            reason: ChainBreak::AnchorUnsigned
        }
    );
    // A checkpoint now covers 7..=12, some of them new: nothing more is due.
    checkpoint(&db, tenant, dir.path()).await.unwrap();
    assert_eq!(prune(&db, tenant).await.deleted, 0);
    // Even the owner, triggers on, may delete only behind the anchor.
    let mut owner = test_db.connect_as_owner().await;
    let refused = sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 7")
        .bind(tenant)
        .execute(&mut owner)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // A superuser moving the anchor to a seq no checkpoint ends at, and deleting up to it, passes
    // the plain check (the database trusts its anchor) but not the signed one.
    let eighth = &left[1];
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("UPDATE audit_chain_anchors SET seq = 8, last_hash = $2 WHERE tenant_id = $1")
        .bind(tenant)
        .bind(&eighth.hash[..])
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= 8")
        .bind(tenant)
        .execute(&mut owner)
        .await
        .unwrap();
    let (plain, signed) = verdicts(&db, tenant, dir.path()).await;
    assert_eq!(plain, ChainVerdict::Intact { events: 4 });
    assert_eq!(
        signed,
        ChainVerdict::Broken {
            seq: 8,
            reason: ChainBreak::AnchorUnsigned
        }
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn events_deleted_by_a_superuser_without_an_anchor_are_detected() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let tenant = tenant_with_events(&db, 5).await;
    checkpoint(&db, tenant, dir.path()).await.unwrap();
    // Triggers on, no anchor: the trigger refuses even the owner.
    let mut owner = test_db.connect_as_owner().await;
    let refused = sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= 3")
        .bind(tenant)
        .execute(&mut owner)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let deleted = as_superuser_without_triggers(
        &test_db,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= 3",
        tenant,
    )
    .await;
    assert_eq!(deleted, 3);
    let missing = ChainVerdict::Broken {
        seq: 1,
        reason: ChainBreak::RowMissing,
    };
    assert_eq!(verdicts(&db, tenant, dir.path()).await, (missing, missing));
    db.close().await.unwrap();
}

#[tokio::test]
async fn audit_retention_is_a_tenant_setting_of_at_least_30_days_and_its_change_is_audited() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenant_with_events(&db, 0).await;
    let change = |days| tenants::SettingsChange {
        audit_retention_days: Some(days),
        ..tenants::SettingsChange::default()
    };
    let mut tx = db.app.begin(tenant).await.unwrap();
    assert_eq!(
        tenants::settings(&mut tx)
            .await
            .unwrap()
            .audit_retention_days,
        365
    );
    for days in [29, 0, -1, 36_501] {
        assert!(matches!(
            tenants::update_settings(&mut tx, &change(days), &db.app, &alice()).await,
            Err(StoreError::Invalid {
                field: "audit_retention_days",
                ..
            })
        ));
    }
    tx.rollback().await.unwrap();
    let mut tx = db.app.begin(tenant).await.unwrap();
    let after = tenants::update_settings(&mut tx, &change(30), &db.app, &alice())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(after.audit_retention_days, 30);
    let last = events(&db, tenant).await.pop().unwrap();
    assert_eq!(last.action, "tenant.settings_update");
    let details: Value = serde_json::from_str(&last.details).unwrap();
    assert_eq!(
        details["audit_retention_days"],
        json!({ "from": 365, "to": 30 })
    );
    db.close().await.unwrap();
}

/// Polls until `tenant`'s chain is anchored at `seq` (fleetd's retention task pruned it).
async fn wait_for_anchor(db: &store::Database, tenant: TenantId, seq: i64) {
    for _ in 0..100 {
        let mut tx = db.app.begin(tenant).await.unwrap();
        let anchor = audit::anchor(&mut tx).await.unwrap();
        tx.rollback().await.unwrap();
        if anchor.seq == seq {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("fleetd did not prune {tenant} up to seq {seq} within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetd_prunes_past_retention_at_start_and_its_export_re_verifies_with_python_from_the_anchor(
) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let (created, owner_key) = tenants::create_with_owner_key(
        &db.app,
        "retained",
        &store::api_keys::KeyEnv::live(),
        &Actor::System,
    )
    .await
    .unwrap();
    let tenant = created.id;
    let mut tx = db.app.begin(tenant).await.unwrap();
    for i in 0..4 {
        audit::append_for_tests(
            &mut tx,
            "operator:alice",
            "user.invite",
            "x",
            &json!({ "i": i }),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let old = events(&db, tenant).await.len() as i64;
    age(&test_db, &db, tenant, 1, old).await;
    // fleetd signs with the test's key and writes where the test reads.
    let data_dir = fleet_tests::data_dir();
    let checkpoint_dir = tempfile::tempdir().unwrap();
    let anchor = checkpoint(&db, tenant, checkpoint_dir.path())
        .await
        .unwrap();
    assert_eq!(anchor.seq, old);
    let mut tx = db.app.begin(tenant).await.unwrap();
    audit::append_for_tests(&mut tx, "operator:alice", "device.revoke", "y", &json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let key_file = data_dir.path().join("audit-checkpoint.key");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_file)
        .unwrap()
        .write_all(&[3; 32])
        .unwrap();
    let mut config = fleetd::Config::on_ephemeral_loopback_ports(
        data_dir.path(),
        test_db.url().parse().unwrap(),
    );
    config.audit.checkpoint_dir = Some(checkpoint_dir.path().to_owned());

    let running = fleetd::start(config).await.unwrap();
    wait_for_anchor(&db, tenant, anchor.seq).await;
    let left = events(&db, tenant).await;
    assert_eq!(left.first().unwrap().seq, anchor.seq + 1);
    let pruned = left.last().unwrap();
    assert_eq!(
        (pruned.actor.as_str(), pruned.action.as_str()),
        ("system", "audit.prune")
    );
    let details: Value = serde_json::from_str(&pruned.details).unwrap();
    assert_eq!(details["through_seq"], anchor.seq);
    assert_eq!(details["deleted"], anchor.seq);

    let request = |method: &'static str, path: &'static str| {
        let auth = format!("Bearer {}", owner_key.secret.expose());
        let running = &running;
        async move {
            fleet_tests::https::https_request(
                running.api_addr(),
                &running.pki().issuing_ca,
                method,
                path,
                &[("Authorization", &auth)],
                b"",
            )
            .await
        }
    };
    request("POST", "/v1/audit-checkpoints")
        .await
        .assert_status(201);
    let export = request("GET", "/v1/audit-events.jsonl").await;
    export.assert_status(200);
    let text = export.text();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["record"], "anchor", "{text}");
    assert_eq!(first["checkpoint"]["seq"], anchor.seq);
    // The store's reader takes the anchor too, and the export verifies against the pushed files.
    let parsed = audit::parse_jsonl(&text).unwrap();
    assert_eq!(parsed.anchor.as_ref().map(|c| c.seq), Some(anchor.seq));
    let mut verifier = audit_checkpoints::CheckpointVerifier::new(
        tenant,
        audit_checkpoints::read_dir(checkpoint_dir.path(), tenant).unwrap(),
        &key().public_key(),
    )
    .unwrap();
    let after = parsed.events.len() as i64;
    assert_eq!(
        audit::verify_exported(parsed.events, &mut verifier),
        ChainVerdict::Intact { events: after }
    );

    // Outside fleetplane: the standalone script, with the pinned key.
    let work = tempfile::tempdir().unwrap();
    let pem = work.path().join("checkpoint.pem");
    std::fs::write(&pem, key().public_key().to_pem()).unwrap();
    let file = work.path().join("audit.jsonl");
    std::fs::write(&file, &text).unwrap();
    let (code, out) = fleet_tests::audit_export::python_verify(&file, &pem);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!(
            "intact: {after} events, from the signed anchor at seq {}, signed checkpoint through seq",
            anchor.seq
        )),
        "{out}"
    );
    // Without the anchor, the first link is vouched for by nothing.
    let (_, rest) = text.split_once('\n').unwrap();
    std::fs::write(&file, rest).unwrap();
    assert_eq!(
        fleet_tests::audit_export::python_verify(&file, &pem),
        (
            1,
            format!("broken at seq {}: anchor_unsigned\n", anchor.seq)
        )
    );
    // A forged anchor (its last hash changed, so the first event no longer links) is refused.
    let mut forged: Value = first.clone();
    let hash = forged["checkpoint"]["last_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = format!(
        "{}{}",
        if hash.starts_with('0') { '1' } else { '0' },
        &hash[1..]
    );
    forged["checkpoint"]["last_hash"] = json!(flipped);
    std::fs::write(&file, format!("{forged}\n{rest}")).unwrap();
    assert_eq!(
        fleet_tests::audit_export::python_verify(&file, &pem),
        (
            1,
            format!(
                "broken at seq {}: checkpoint_signature_invalid\n",
                anchor.seq
            )
        )
    );
    running.shutdown().await.unwrap();
    db.close().await.unwrap();
}
