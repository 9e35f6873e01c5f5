//! The per-tenant audit chain: concurrency, tamper detection, append-only enforcement.

use std::time::Duration;

use fleet_tests::TestDb;
use serde_json::json;
use store::audit::{self, ChainBreak, ChainVerdict};
use store::{tenants, StoreError};

#[tokio::test]
async fn eight_concurrent_writers_leave_one_unbroken_chain() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenants::create(&db.app, "busy", &store::audit::Actor::System)
        .await
        .unwrap()
        .id;
    let writers = (0..8).map(|writer| {
        let app = db.app.clone();
        tokio::spawn(async move {
            for i in 0..1_000 {
                let mut tx = app.begin(tenant).await.unwrap();
                audit::append_for_tests(
                    &mut tx,
                    &format!("writer:{writer}"),
                    "test.append",
                    "x",
                    &json!({ "i": i }),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    let mut tx = db.app.begin(tenant).await.unwrap();
    // 8,000 appends plus the tenant's creation event.
    assert_eq!(
        audit::verify(&mut tx).await.unwrap(),
        ChainVerdict::Intact { events: 8_001 }
    );
    tx.rollback().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn appends_to_different_tenants_do_not_block_each_other() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let a = tenants::create(&db.app, "a", &store::audit::Actor::System)
        .await
        .unwrap()
        .id;
    let b = tenants::create(&db.app, "b", &store::audit::Actor::System)
        .await
        .unwrap()
        .id;

    // A's head stays locked by an open transaction.
    let mut holding_a = db.app.begin(a).await.unwrap();
    audit::append_for_tests(&mut holding_a, "test", "hold", "a", &json!({}))
        .await
        .unwrap();

    let append_b = async {
        let mut tx = db.app.begin(b).await.unwrap();
        audit::append_for_tests(&mut tx, "test", "free", "b", &json!({}))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(5), append_b)
        .await
        .expect("tenant B waited for tenant A's lock");

    // The same append to A does wait: the lock is real, so the test above can fail.
    let append_a = async {
        let mut tx = db.app.begin(a).await.unwrap();
        audit::append_for_tests(&mut tx, "test", "queued", "a", &json!({}))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    let blocked = tokio::time::timeout(Duration::from_millis(500), append_a).await;
    assert!(
        blocked.is_err(),
        "an append to A did not wait for A's head lock"
    );
    holding_a.commit().await.unwrap();
    db.close().await.unwrap();
}

async fn tenant_with_events(db: &store::Database, events: usize) -> store::TenantId {
    let name = format!("audited-{}", uuid::Uuid::new_v4().simple());
    let tenant = tenants::create(&db.app, &name, &store::audit::Actor::System)
        .await
        .unwrap()
        .id;
    let mut tx = db.app.begin(tenant).await.unwrap();
    for i in 0..events {
        audit::append_for_tests(
            &mut tx,
            "operator:alice",
            "device.rename",
            &format!("device:{i}"),
            &json!({ "to": i }),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    tenant
}

async fn verdict(db: &store::Database, tenant: store::TenantId) -> ChainVerdict {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let verdict = audit::verify(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    verdict
}

/// Runs `statement` as the superuser with triggers disabled, as an attacker with database access would.
async fn tamper(test_db: &TestDb, statement: &str, tenant: store::TenantId) {
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    let done = sqlx::query(statement)
        .bind(tenant)
        .execute(&mut owner)
        .await
        .unwrap();
    assert!(
        done.rows_affected() >= 1,
        "tamper statement changed nothing: {statement}"
    );
}

#[tokio::test]
async fn a_row_changed_behind_the_applications_back_is_named_by_its_sequence_number() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenant_with_events(&db, 1_500).await;
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Intact { events: 1_501 }
    );

    tamper(
        &test_db,
        "UPDATE audit_events SET details = '{\"to\":\"evil\"}' WHERE tenant_id = $1 AND seq = 1234",
        tenant,
    )
    .await;
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Broken {
            seq: 1234,
            reason: ChainBreak::ContentChanged
        }
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_deleted_row_a_relinked_row_and_a_cut_tail_are_each_detected() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;

    let tenant = tenant_with_events(&db, 20).await;
    tamper(
        &test_db,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 7",
        tenant,
    )
    .await;
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Broken {
            seq: 7,
            reason: ChainBreak::RowMissing
        }
    );

    let tenant = tenant_with_events(&db, 20).await;
    tamper(&test_db, "UPDATE audit_events SET prev_hash = decode(repeat('ab', 32), 'hex') WHERE tenant_id = $1 AND seq = 9", tenant).await;
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Broken {
            seq: 9,
            reason: ChainBreak::LinkBroken
        }
    );

    let tenant = tenant_with_events(&db, 20).await;
    tamper(
        &test_db,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq > 18",
        tenant,
    )
    .await;
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Broken {
            seq: 19,
            reason: ChainBreak::HeadMismatch
        }
    );
    db.close().await.unwrap();
}

async fn tail_verdict(db: &store::Database, tenant: store::TenantId, rows: u32) -> ChainVerdict {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let verdict = audit::verify_tail(&mut tx, rows).await.unwrap();
    tx.rollback().await.unwrap();
    verdict
}

#[tokio::test]
async fn the_tail_check_sees_breaks_inside_its_window_and_only_there() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    // 31 events: tenant.create, then 30 more.
    let tenant = tenant_with_events(&db, 30).await;
    assert_eq!(
        tail_verdict(&db, tenant, 10).await,
        ChainVerdict::Intact { events: 10 }
    );
    assert_eq!(
        tail_verdict(&db, tenant, 1_000).await,
        ChainVerdict::Intact { events: 31 },
        "a window longer than the chain checks all of it"
    );

    // Seq 25 is inside the last 10 (22..=31), seq 5 is not.
    tamper(
        &test_db,
        "UPDATE audit_events SET details = '{\"to\":\"evil\"}' WHERE tenant_id = $1 AND seq = 25",
        tenant,
    )
    .await;
    assert_eq!(
        tail_verdict(&db, tenant, 10).await,
        ChainVerdict::Broken {
            seq: 25,
            reason: ChainBreak::ContentChanged
        }
    );
    let other = tenant_with_events(&db, 30).await;
    tamper(
        &test_db,
        "UPDATE audit_events SET details = '{\"to\":\"evil\"}' WHERE tenant_id = $1 AND seq = 5",
        other,
    )
    .await;
    assert_eq!(
        tail_verdict(&db, other, 10).await,
        ChainVerdict::Intact { events: 10 },
        "the bound: a break before the window is left to the full verify"
    );
    assert!(matches!(
        verdict(&db, other).await,
        ChainVerdict::Broken { seq: 5, .. }
    ));

    // The row just before the window is its anchor: removing it is a break.
    let anchorless = tenant_with_events(&db, 30).await;
    tamper(
        &test_db,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 21",
        anchorless,
    )
    .await;
    assert_eq!(
        tail_verdict(&db, anchorless, 10).await,
        ChainVerdict::Broken {
            seq: 21,
            reason: ChainBreak::RowMissing
        }
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn the_application_role_cannot_update_delete_or_truncate_audit_events() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenant_with_events(&db, 3).await;
    let mut app = test_db.connect_as_app().await;
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(&mut app)
        .await
        .unwrap();
    for statement in [
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_chain_heads",
    ] {
        let err = sqlx::query(statement).execute(&mut app).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: {err}"
        );
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn the_trigger_refuses_changes_even_from_the_owner() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    tenant_with_events(&db, 3).await;
    let mut owner = test_db.connect_as_owner().await;
    for statement in [
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let err = sqlx::query(statement)
            .execute(&mut owner)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_tenant_without_a_chain_head_stops_the_start_up_checks_and_is_named() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenants::create(&db.app, "headless", &store::audit::Actor::System)
        .await
        .unwrap();
    db.close().await.unwrap();
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("DELETE FROM audit_chain_heads WHERE tenant_id = $1")
        .bind(tenant.id)
        .execute(&mut owner)
        .await
        .unwrap();

    let err = store::Database::open(&test_db.settings(), store::Purpose::Server)
        .await
        .err()
        .expect("open must fail");
    assert!(
        matches!(err, StoreError::MissingChainHead { tenant_id, .. } if tenant_id == tenant.id),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&tenant.id.to_string()) && message.contains("headless"),
        "{message}"
    );
}

#[tokio::test]
async fn chain_hashes_survive_a_dump_and_restore_round_trip_of_their_columns() {
    // What a dump preserves is the text form of each column; re-reading rows through that form
    // must give the same hashes.
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let tenant = tenant_with_events(&db, 5).await;
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("CREATE TABLE audit_copy AS SELECT tenant_id::text, seq::text, occurred_at::text, actor, action, target, details, prev_hash::text, hash::text, canonical_version::text, erased_by::text FROM audit_events")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit_events SELECT tenant_id::uuid, seq::bigint, occurred_at::timestamptz, actor, action, target, details, prev_hash::bytea, hash::bytea, canonical_version::smallint, erased_by::bigint FROM audit_copy")
        .execute(&mut owner)
        .await
        .unwrap();
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Intact { events: 6 }
    );
    db.close().await.unwrap();
}

// Signed checkpoints (issue 15): what the plain chain cannot see.

use store::audit_checkpoints::{self, Checkpoint, CheckpointKey};

fn checkpoint_key(seed: u8) -> CheckpointKey {
    CheckpointKey::from_seed(&[seed; 32]).unwrap()
}

/// Writes a checkpoint of the tenant's chain as fleetd does, pushed to `dir`.
async fn checkpoint(
    db: &store::Database,
    tenant: store::TenantId,
    key: &CheckpointKey,
    dir: &std::path::Path,
) -> Checkpoint {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let written = audit_checkpoints::write(&mut tx, key)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    audit_checkpoints::push_to_dir(dir, &written).unwrap();
    written
}

async fn verdict_with_checkpoints(
    db: &store::Database,
    tenant: store::TenantId,
    dir: &std::path::Path,
    key: &CheckpointKey,
) -> ChainVerdict {
    let checkpoints = audit_checkpoints::read_dir(dir, tenant).unwrap();
    assert!(!checkpoints.is_empty());
    let mut tx = db.app.begin(tenant).await.unwrap();
    let verdict = audit::verify_with_checkpoints(&mut tx, checkpoints, &key.public_key())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    verdict
}

/// As a superuser with triggers off: `edit` event `seq`, then recompute every later hash and
/// the head, so that the plain chain verifies again.
async fn rewrite_and_rechain(
    test_db: &TestDb,
    db: &store::Database,
    tenant: store::TenantId,
    seq: i64,
) {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let mut events = audit::list_after(&mut tx, 0, 100_000).await.unwrap();
    tx.rollback().await.unwrap();
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    let mut prev = events[(seq - 2) as usize].hash;
    for event in events.iter_mut().skip((seq - 1) as usize) {
        if event.seq == seq {
            event.details = r#"{"to":"evil"}"#.into();
        }
        event.prev_hash = prev;
        event.hash = event.recompute_hash();
        prev = event.hash;
        sqlx::query("UPDATE audit_events SET details = $3, prev_hash = $4, hash = $5 WHERE tenant_id = $1 AND seq = $2")
            .bind(tenant)
            .bind(event.seq)
            .bind(&event.details)
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

#[tokio::test]
async fn a_rewritten_and_rechained_event_passes_the_plain_check_but_not_the_checkpoints() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let key = checkpoint_key(1);
    let tenant = tenant_with_events(&db, 30).await;
    let first = checkpoint(&db, tenant, &key, dir.path()).await;
    assert_eq!((first.first_seq, first.seq), (1, 31));
    let mut tx = db.app.begin(tenant).await.unwrap();
    for i in 0..10 {
        audit::append_for_tests(&mut tx, "system", "test.more", "x", &json!({ "i": i }))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let second = checkpoint(&db, tenant, &key, dir.path()).await;
    assert_eq!((second.first_seq, second.seq), (32, 41));
    assert_eq!(
        verdict_with_checkpoints(&db, tenant, dir.path(), &key).await,
        ChainVerdict::Intact { events: 41 }
    );

    rewrite_and_rechain(&test_db, &db, tenant, 17).await;
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Intact { events: 41 },
        "the attack the plain chain cannot see"
    );
    assert_eq!(
        verdict_with_checkpoints(&db, tenant, dir.path(), &key).await,
        ChainVerdict::Broken {
            seq: 17,
            reason: ChainBreak::CheckpointMismatch
        }
    );
    // The next checkpoint refuses nothing here (the rewrite re-chained), but a plain edit after
    // the last checkpoint is refused rather than signed.
    let mut tx = db.app.begin(tenant).await.unwrap();
    audit::append_for_tests(&mut tx, "system", "test.more", "x", &json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tamper(
        &test_db,
        "UPDATE audit_events SET actor = 'mallory' WHERE tenant_id = $1 AND seq = 42",
        tenant,
    )
    .await;
    let mut tx = db.app.begin(tenant).await.unwrap();
    let refused = audit_checkpoints::write(&mut tx, &key).await.unwrap_err();
    assert!(matches!(refused, StoreError::Conflict(_)), "{refused}");
    tx.rollback().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_cut_tail_with_a_rewound_head_is_behind_the_checkpoint() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let key = checkpoint_key(1);
    let tenant = tenant_with_events(&db, 20).await;
    checkpoint(&db, tenant, &key, dir.path()).await;
    let mut tx = db.app.begin(tenant).await.unwrap();
    let kept = audit::list_after(&mut tx, 17, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    tx.rollback().await.unwrap();
    tamper(
        &test_db,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq > 18",
        tenant,
    )
    .await;
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("UPDATE audit_chain_heads SET last_seq = 18, last_hash = $2 WHERE tenant_id = $1")
        .bind(tenant)
        .bind(&kept.hash[..])
        .execute(&mut owner)
        .await
        .unwrap();
    assert_eq!(
        verdict(&db, tenant).await,
        ChainVerdict::Intact { events: 18 },
        "the attack the plain chain cannot see"
    );
    assert_eq!(
        verdict_with_checkpoints(&db, tenant, dir.path(), &key).await,
        ChainVerdict::Broken {
            seq: 19,
            reason: ChainBreak::BehindCheckpoint
        }
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_checkpoint_file_with_a_changed_seq_or_another_keys_signature_is_forged() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let key = checkpoint_key(1);
    let tenant = tenant_with_events(&db, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let written = checkpoint(&db, tenant, &key, dir.path()).await;
    assert_eq!(
        verdict_with_checkpoints(&db, tenant, dir.path(), &key).await,
        ChainVerdict::Intact { events: 6 }
    );
    // Never overwritten: the same checkpoint again is a no-op, another one under its name fails.
    audit_checkpoints::push_to_dir(dir.path(), &written).unwrap();
    let mut other = written.clone();
    other.created_at += time::Duration::seconds(1);
    assert!(audit_checkpoints::push_to_dir(dir.path(), &other).is_err());

    let path = audit_checkpoints::file_path(dir.path(), &written);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"seq\": 6", "\"seq\": 5")).unwrap();
    assert_eq!(
        verdict_with_checkpoints(&db, tenant, dir.path(), &key).await,
        ChainVerdict::Broken {
            seq: 5,
            reason: ChainBreak::CheckpointSignatureInvalid
        }
    );

    let other_dir = tempfile::tempdir().unwrap();
    let mut tx = db.app.begin(tenant).await.unwrap();
    audit::append_for_tests(&mut tx, "system", "test.more", "x", &json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Signed by another key, which the verifier does not pin.
    checkpoint(&db, tenant, &checkpoint_key(2), other_dir.path()).await;
    audit_checkpoints::push_to_dir(other_dir.path(), &written).unwrap();
    assert_eq!(
        verdict_with_checkpoints(&db, tenant, other_dir.path(), &key).await,
        ChainVerdict::Broken {
            seq: 7,
            reason: ChainBreak::CheckpointSignatureInvalid
        }
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn checkpoints_are_append_only_tenant_scoped_and_due_only_after_new_events() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let key = checkpoint_key(1);
    let a = tenant_with_events(&db, 3).await;
    let b = tenant_with_events(&db, 3).await;
    let due = audit_checkpoints::tenants_due(&db.app, 100).await.unwrap();
    assert!(due.contains(&a) && due.contains(&b));
    checkpoint(&db, a, &key, dir.path()).await;
    let due = audit_checkpoints::tenants_due(&db.app, 100).await.unwrap();
    assert!(!due.contains(&a) && due.contains(&b));
    // Nothing new: no checkpoint.
    let mut tx = db.app.begin(a).await.unwrap();
    assert!(audit_checkpoints::write(&mut tx, &key)
        .await
        .unwrap()
        .is_none());
    tx.rollback().await.unwrap();
    // B sees none of A's.
    let mut tx = db.app.begin(b).await.unwrap();
    assert!(audit_checkpoints::list(&mut tx, 0, 100)
        .await
        .unwrap()
        .is_empty());
    tx.rollback().await.unwrap();

    let mut app = test_db.connect_as_app().await;
    for statement in [
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
    ] {
        let refused = sqlx::query(statement).execute(&mut app).await.unwrap_err();
        assert!(
            refused.to_string().contains("permission denied"),
            "{statement}: {refused}"
        );
    }
    let mut owner = test_db.connect_as_owner().await;
    for statement in [
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
    ] {
        let refused = sqlx::query(statement)
            .execute(&mut owner)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("append-only"),
            "{statement}: {refused}"
        );
    }
    db.close().await.unwrap();
}
