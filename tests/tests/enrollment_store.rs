//! Enrollment tokens, device revocation and its cross-process notification, in the store, as the
//! application role on a real Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_tests::TestDb;
use sqlx::Row;
use store::audit::{self, ChainVerdict};
use store::devices::{self, DeviceRevocation, DeviceStatus, NewDevice};
use store::enrollment_tokens::{self, IssuedToken, NewEnrollmentToken, TokenRevocation};
use store::revocations::{Revocation, RevocationListener};
use store::{tenants, StoreError, TenantId};
use time::OffsetDateTime;

fn new_token() -> NewEnrollmentToken {
    NewEnrollmentToken {
        name: "factory line".into(),
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "::/0".parse().unwrap()],
        daily_limit: 10,
        max_uses: Some(100),
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(7),
        device_group: "line-3".into(),
        device_labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
    }
}

async fn tenant(db: &store::Database, name: &str) -> TenantId {
    tenants::create(&db.app, name, &alice()).await.unwrap().id
}

/// A fresh database and its tenant `a`.
async fn fresh_with_tenant_a() -> (TestDb, store::Database, TenantId) {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let a = tenant(&db, "a").await;
    (test_db, db, a)
}

/// Alice creates [`new_token`] in `tenant`, its group first.
async fn create_token(db: &store::Database, tenant: TenantId) -> IssuedToken {
    let mut tx = db.app.begin(tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, "line-3").await;
    let issued = enrollment_tokens::create(&mut tx, &new_token(), &alice())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    issued
}

/// Alice revokes `device`, in every group, in `tx`.
async fn revoke(
    tx: &mut store::TenantTx,
    device: store::DeviceId,
) -> Result<DeviceRevocation, StoreError> {
    devices::revoke(tx, device, &store::device_groups::GroupScope::All, &alice()).await
}

/// Waits up to 2 s for `listener` to report `device` of `tenant` revoked.
async fn assert_revocation_arrives(
    listener: &mut RevocationListener,
    tenant: TenantId,
    device: store::DeviceId,
    when: &str,
) {
    let got = tokio::time::timeout(Duration::from_secs(2), listener.recv())
        .await
        .unwrap_or_else(|_| panic!("revocation received {when}"));
    assert_eq!(
        got,
        Revocation::Device {
            tenant_id: tenant,
            device_id: device
        }
    );
}

async fn actions(db: &store::Database, tenant: TenantId) -> Vec<(String, String, String)> {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let events = audit::list_after(&mut tx, 0, 1_000).await.unwrap();
    assert!(matches!(
        audit::verify(&mut tx).await.unwrap(),
        ChainVerdict::Intact { .. }
    ));
    tx.rollback().await.unwrap();
    events
        .into_iter()
        .map(|e| (e.actor, e.action, e.target))
        .collect()
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_with_audit_events_and_no_stored_secret() {
    let (test_db, db, a) = fresh_with_tenant_a().await;

    let issued = create_token(&db, a).await;
    let text = issued.secret.expose().to_owned();
    assert!(text.starts_with(&format!(
        "fpe_{}_{}_",
        a.0.simple(),
        issued.token.id.0.simple()
    )));
    assert_eq!(issued.token.allowed_cidrs, new_token().allowed_cidrs);
    assert_eq!(issued.token.created_by, "operator:alice@fleetctl");

    // Neither the secret nor the token string is anywhere in the row; the hash is SHA-256.
    let mut owner = test_db.connect_as_owner().await;
    let row = sqlx::query("SELECT row_to_json(t)::text AS j, secret_hash FROM enrollment_tokens t")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    let stored: String = row.get("j");
    assert!(!stored.contains(&text[70..]), "secret stored: {stored}");
    assert!(row.get::<String, _>("secret_hash").starts_with("$sha256$"));

    let mut tx = db.app.begin(a).await.unwrap();
    let listed = enrollment_tokens::list(&mut tx, None, 500).await.unwrap();
    assert_eq!(listed, vec![issued.token.clone()]);
    assert_eq!(
        enrollment_tokens::revoke(&mut tx, issued.token.id, &bob())
            .await
            .unwrap(),
        TokenRevocation::Revoked
    );
    assert_eq!(
        enrollment_tokens::revoke(&mut tx, issued.token.id, &bob())
            .await
            .unwrap(),
        TokenRevocation::AlreadyRevoked
    );
    let revoked = enrollment_tokens::get(&mut tx, issued.token.id)
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.revoked_by.as_deref(), Some("operator:bob@fleetctl"));
    tx.commit().await.unwrap();

    let target = format!("enrollment_token:{}", issued.token.id);
    let events = actions(&db, a).await;
    assert!(events.contains(&(
        "operator:alice@fleetctl".into(),
        "enrollment_token.create".into(),
        target.clone()
    )));
    // One revoke event: the second call changed nothing.
    let revokes: Vec<_> = events
        .iter()
        .filter(|e| e.1 == "enrollment_token.revoke")
        .collect();
    assert_eq!(
        revokes,
        vec![&(
            "operator:bob@fleetctl".into(),
            "enrollment_token.revoke".into(),
            target
        )]
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn another_tenant_can_neither_see_nor_revoke_a_token() {
    let (_test_db, db, a) = fresh_with_tenant_a().await;
    let b = tenant(&db, "b").await;
    let issued = create_token(&db, a).await;

    let mut tx = db.app.begin(b).await.unwrap();
    assert!(enrollment_tokens::list(&mut tx, None, 500)
        .await
        .unwrap()
        .is_empty());
    assert!(
        enrollment_tokens::load_for_enrollment(&mut tx, issued.token.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        enrollment_tokens::revoke(&mut tx, issued.token.id, &alice()).await,
        Err(StoreError::NotFound(_))
    ));
    tx.rollback().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn tokens_are_refused_without_cidrs_or_with_bad_limits() {
    let (_test_db, db, a) = fresh_with_tenant_a().await;
    let mut tx = db.app.begin(a).await.unwrap();
    let mut no_cidrs = new_token();
    no_cidrs.allowed_cidrs.clear();
    fleet_tests::ensure_group(&mut tx, &no_cidrs.device_group).await;
    let err = enrollment_tokens::create(&mut tx, &no_cidrs, &alice())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("0.0.0.0/0"), "{err}");
    let mut no_daily = new_token();
    no_daily.daily_limit = 0;
    assert!(enrollment_tokens::create(&mut tx, &no_daily, &alice())
        .await
        .is_err());
    tx.rollback().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn the_application_role_cannot_delete_tokens_rewrite_hashes_or_certificates() {
    let (test_db, db, a) = fresh_with_tenant_a().await;
    create_token(&db, a).await;
    let mut app = test_db.connect_as_app().await;
    fleet_tests::tenancy::set_tenant(&mut app, a).await;
    for statement in [
        "DELETE FROM enrollment_tokens",
        "UPDATE enrollment_tokens SET secret_hash = '$argon2id$x'",
        "UPDATE enrollment_tokens SET daily_limit = 1000000",
        "UPDATE enrollment_tokens SET expires_at = now() + interval '10 years'",
        "UPDATE device_certificates SET not_after = now()",
        "DELETE FROM device_certificates",
    ] {
        let err = sqlx::query(statement).execute(&mut app).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: {err}"
        );
    }
    db.close().await.unwrap();
}

async fn device(db: &store::Database, tenant: TenantId) -> store::DeviceId {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let device = devices::create(
        &mut tx,
        &NewDevice {
            name: "d".into(),
            group: "default".into(),
            labels: BTreeMap::new(),
        },
        &alice(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    device.id
}

#[tokio::test]
async fn a_revocation_committed_on_one_connection_reaches_a_listener_within_two_seconds() {
    let (test_db, db, a) = fresh_with_tenant_a().await;
    let id = device(&db, a).await;
    let mut listener = RevocationListener::connect(&db.app).await.unwrap();

    // A second, independent process: its own pools.
    let other = test_db.open().await;
    let mut tx = other.app.begin(a).await.unwrap();
    assert!(devices::is_active(&mut tx, id).await.unwrap());
    assert_eq!(
        revoke(&mut tx, id).await.unwrap(),
        DeviceRevocation::Revoked
    );
    // Not delivered before commit.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "notification delivered before commit"
    );
    tx.commit().await.unwrap();
    assert_revocation_arrives(&mut listener, a, id, "within 2 s").await;

    let mut tx = db.app.begin(a).await.unwrap();
    assert!(!devices::is_active(&mut tx, id).await.unwrap());
    assert_eq!(
        devices::get(&mut tx, id).await.unwrap().unwrap().status,
        DeviceStatus::Revoked
    );
    tx.rollback().await.unwrap();
    let events = actions(&db, a).await;
    assert!(events.contains(&(
        "operator:alice@fleetctl".into(),
        "device.revoke".into(),
        format!("device:{id}")
    )));
    other.close().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_rolled_back_revocation_changes_nothing_and_notifies_no_one() {
    let (_test_db, db, a) = fresh_with_tenant_a().await;
    let id = device(&db, a).await;
    let mut listener = RevocationListener::connect(&db.app).await.unwrap();
    let mut tx = db.app.begin(a).await.unwrap();
    revoke(&mut tx, id).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), listener.recv())
            .await
            .is_err()
    );
    let mut tx = db.app.begin(a).await.unwrap();
    assert!(devices::is_active(&mut tx, id).await.unwrap());
    tx.rollback().await.unwrap();
    // Unknown devices (or another tenant's) are not found.
    let b = tenant(&db, "b").await;
    let mut tx = db.app.begin(b).await.unwrap();
    assert!(matches!(
        revoke(&mut tx, id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!devices::is_active(&mut tx, id).await.unwrap());
    tx.rollback().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn after_losing_its_connection_the_listener_says_so_and_keeps_receiving() {
    let (test_db, db, a) = fresh_with_tenant_a().await;
    let id = device(&db, a).await;
    let mut listener = RevocationListener::connect(&db.app).await.unwrap();

    let mut owner = test_db.connect_as_owner().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = 'fleetd-revocations' AND datname = current_database()",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    let got = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("listener noticed the lost connection");
    assert_eq!(got, Revocation::MaybeMissed);

    let mut tx = db.app.begin(a).await.unwrap();
    revoke(&mut tx, id).await.unwrap();
    tx.commit().await.unwrap();
    assert_revocation_arrives(&mut listener, a, id, "after the reconnect").await;
    db.close().await.unwrap();
}

/// The actor these tests change things as.
fn alice() -> store::audit::Actor {
    store::audit::Actor::Operator(store::audit::OperatorName::new("alice").unwrap())
}

fn bob() -> store::audit::Actor {
    store::audit::Actor::Operator(store::audit::OperatorName::new("bob").unwrap())
}
