//! Row-level security as the application role: one tenant never sees or changes another's rows.

use std::collections::BTreeMap;

use fleet_tests::tenancy::set_tenant;
use fleet_tests::TestDb;
use sqlx::{Connection, PgConnection, Row};
use store::devices::{self, NewDevice};
use store::{tenants, TenantId};

fn device(name: &str) -> NewDevice {
    NewDevice {
        name: name.into(),
        group: "default".into(),
        labels: BTreeMap::new(),
    }
}

/// Two tenants with two devices each; returns (a, b).
async fn two_tenants(db: &store::Database) -> (TenantId, TenantId) {
    let a = tenants::create(&db.app, "tenant-a", &store::audit::Actor::System)
        .await
        .unwrap()
        .id;
    let b = tenants::create(&db.app, "tenant-b", &store::audit::Actor::System)
        .await
        .unwrap()
        .id;
    for tenant in [a, b] {
        let mut tx = db.app.begin(tenant).await.unwrap();
        devices::create(&mut tx, &device("d1"), &store::audit::Actor::System)
            .await
            .unwrap();
        devices::create(&mut tx, &device("d2"), &store::audit::Actor::System)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    (a, b)
}

/// Every table with a `tenant_id` column, from the catalog.
async fn tenant_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn reads_updates_and_deletes_never_reach_another_tenant() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let (a, b) = two_tenants(&db).await;
    let mut app = test_db.connect_as_app().await;
    set_tenant(&mut app, a).await;

    let seen: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT tenant_id FROM devices")
        .fetch_all(&mut app)
        .await
        .unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|t| *t == a.0), "tenant A saw {seen:?}");

    // No WHERE clause at all: only A's rows may change.
    let updated = sqlx::query("UPDATE devices SET name = 'renamed'")
        .execute(&mut app)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 2);
    let updated = sqlx::query("UPDATE devices SET name = 'renamed' WHERE tenant_id = $1")
        .bind(b)
        .execute(&mut app)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM devices WHERE tenant_id = $1")
        .bind(b)
        .execute(&mut app)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    let tenants_seen: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(tenants_seen, 1);

    // B's rows are untouched, seen from B.
    let mut tx = db.app.begin(b).await.unwrap();
    let b_devices = devices::list(
        &mut tx,
        &store::device_groups::GroupScope::All,
        &Default::default(),
        None,
        100,
    )
    .await
    .unwrap();
    assert_eq!(b_devices.len(), 2);
    assert!(b_devices
        .iter()
        .all(|d| d.name != "renamed" && d.tenant_id == b));
    tx.rollback().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn inserting_a_row_for_another_tenant_fails_the_policy_check() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let (a, b) = two_tenants(&db).await;
    let mut app = test_db.connect_as_app().await;
    set_tenant(&mut app, a).await;
    let err = sqlx::query(
        "INSERT INTO devices (tenant_id, device_id, name) VALUES ($1, gen_random_uuid(), 'x')",
    )
    .bind(b)
    .execute(&mut app)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    // Moving one's own row to another tenant is refused too.
    let err = sqlx::query("UPDATE devices SET tenant_id = $1")
        .bind(b)
        .execute(&mut app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    let err = sqlx::query("INSERT INTO audit_events (tenant_id, seq, occurred_at, actor, action, target, details, prev_hash, hash)
                           VALUES ($1, 99, now(), 'x', 'x', 'x', '{}', decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'))")
        .bind(b)
        .execute(&mut app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    db.close().await.unwrap();
}

#[tokio::test]
async fn with_no_tenant_set_every_tenant_table_reads_empty() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    two_tenants(&db).await;
    let mut app = test_db.connect_as_app().await;
    let tables = tenant_tables(&mut app).await;
    assert!(tables.len() >= 4, "{tables:?}");

    // Never set on this connection (NULL), then set and ended with its transaction ('').
    for phase in ["never set", "ended transaction-local setting"] {
        for table in &tables {
            let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut app)
                .await
                .unwrap_or_else(|e| panic!("{table} ({phase}): {e}"));
            assert_eq!(count, 0, "{table} is not empty with no tenant ({phase})");
        }
        let mut tx = app.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', gen_random_uuid()::text, true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let setting: String = sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
            .fetch_one(&mut app)
            .await
            .unwrap();
        assert_eq!(
            setting, "",
            "a pooled connection reads '' after a local setting"
        );
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_tenant_transaction_does_not_leak_its_tenant_into_the_pool() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let (a, _) = two_tenants(&db).await;
    // Run many tenant transactions and check each is scoped, on a pool of a few connections.
    for _ in 0..20 {
        let mut tx = db.app.begin(a).await.unwrap();
        assert_eq!(
            devices::list(
                &mut tx,
                &store::device_groups::GroupScope::All,
                &Default::default(),
                None,
                100
            )
            .await
            .unwrap()
            .len(),
            2
        );
        tx.commit().await.unwrap();
    }
    let mut app = test_db.connect_as_app().await;
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(leaked, 0);
    db.close().await.unwrap();
}

#[tokio::test]
async fn the_application_role_is_powerless_and_every_tenant_table_forces_rls() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let mut owner = test_db.connect_as_owner().await;

    let role = sqlx::query("SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'fleet_app'")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    for attribute in ["rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb"] {
        assert!(!role.get::<bool, _>(attribute), "fleet_app has {attribute}");
    }
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE r.rolname = 'fleet_app' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(owned, 0, "fleet_app owns relations");

    let tables = tenant_tables(&mut owner).await;
    assert!(
        tables.contains(&"devices".to_string()) && tables.contains(&"audit_events".to_string())
    );
    for table in &tables {
        let row = sqlx::query(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass",
        )
        .bind(table)
        .fetch_one(&mut owner)
        .await
        .unwrap();
        assert!(
            row.get::<bool, _>("relrowsecurity"),
            "{table}: row-level security not enabled"
        );
        assert!(
            row.get::<bool, _>("relforcerowsecurity"),
            "{table}: row-level security not forced"
        );
        let policies: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT policyname::text, qual, with_check FROM pg_policies WHERE schemaname = 'public' AND tablename = $1",
        )
        .bind(table)
        .fetch_all(&mut owner)
        .await
        .unwrap();
        assert_eq!(
            policies.len(),
            1,
            "{table}: expected exactly one policy, got {policies:?}"
        );
        let (_, using, check) = &policies[0];
        for clause in [using, check] {
            let clause = clause.as_deref().unwrap_or_default();
            assert!(
                clause.contains("fleet_current_tenant()"),
                "{table}: policy clause {clause:?}"
            );
        }
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    db.admin.migrate().await.unwrap();
    db.close().await.unwrap();
    // A second start on the same database applies nothing new and succeeds.
    let again = test_db.open().await;
    again.close().await.unwrap();
}
