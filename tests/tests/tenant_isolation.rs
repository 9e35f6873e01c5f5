//! Row-level security as the application role: one tenant never sees or changes another's rows.

use std::collections::BTreeMap;

use fleet_tests::tenancy::set_tenant;
use fleet_tests::TestDb;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
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

    let app_role = test_db.app_role().await;
    let role = sqlx::query(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
    )
    .bind(&app_role)
    .fetch_one(&mut owner)
    .await
    .unwrap();
    for attribute in ["rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb"] {
        assert!(
            !role.get::<bool, _>(attribute),
            "{app_role} has {attribute}"
        );
    }
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE r.rolname = $1 AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    .bind(&app_role)
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(owned, 0, "{app_role} owns relations");

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
    store::Database::open(&test_db.settings(), store::Purpose::Migrate)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    db.close().await.unwrap();
    // A second start on the same database applies nothing new and succeeds.
    let again = test_db.open().await;
    again.close().await.unwrap();
}

/// A function in `public` that shadows one a definer function calls would run with the owner's
/// rights (CVE-2018-1058): `public.cardinality(uuid[])` is a closer match for
/// `fleet_device_directory`'s `cardinality(device_ids)` than `pg_catalog.cardinality(anyarray)`.
const SHADOW: &str = "CREATE FUNCTION public.cardinality(uuid[]) RETURNS integer LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'hijacked: ran as %', current_user; END $$";

#[tokio::test]
async fn the_application_role_cannot_hijack_a_definer_function_through_public() {
    let test_db = TestDb::new().await;
    let mut owner = test_db.connect_as_owner().await;
    // As in a database created before PostgreSQL 15 or upgraded from one: everyone may create in
    // public.
    sqlx::query("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .execute(&mut owner)
        .await
        .unwrap();
    let db = test_db.open().await;
    let (_, devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "victim", 1).await;

    let mut app = test_db.connect_as_app().await;
    let refused = sqlx::query(SHADOW)
        .execute(&mut app)
        .await
        .expect_err("the application role created a function in public");
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("42501"),
        "{refused}"
    );
    // A shadow that is there anyway (the owner's own, standing for any role that can create in
    // public) is not what the definer function calls.
    sqlx::query(SHADOW).execute(&mut owner).await.unwrap();
    let found = store::device_directory::lookup(&db.app, &devices)
        .await
        .expect("the directory calls pg_catalog.cardinality");
    assert_eq!(found.len(), 1);
    db.close().await.unwrap();
}

#[tokio::test]
async fn every_definer_function_resolves_names_in_pg_catalog_only_and_only_the_app_role_runs_it() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let app_role = test_db.app_role().await;
    let mut owner = test_db.connect_as_owner().await;
    let functions: Vec<(String, Option<Vec<String>>, Vec<String>)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, p.proconfig,
                ARRAY(SELECT coalesce(g.rolname, 'PUBLIC') FROM aclexplode(p.proacl) a
                        LEFT JOIN pg_roles g ON g.oid = a.grantee
                       WHERE a.grantee <> p.proowner ORDER BY 1)
           FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef
          ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert!(
        functions.len() >= 6,
        "definer functions found: {functions:?}"
    );
    for (function, config, grantees) in &functions {
        assert_eq!(
            config.as_deref(),
            Some(&["search_path=pg_catalog, pg_temp".to_string()][..]),
            "{function}"
        );
        assert_eq!(grantees, &vec![app_role.clone()], "{function}");
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn an_application_role_is_refused_by_every_other_fleetplane_database() {
    let staging = TestDb::new().await;
    let production = TestDb::new().await;
    let staging_db = staging.open().await;
    let production_db = production.open().await;
    let staging_role = staging.app_role().await;
    assert_ne!(staging_role, production.app_role().await);

    let options = PgConnectOptions::from_str(production.url())
        .unwrap()
        .username(&staging_role);
    let refused = PgConnection::connect_with(&options)
        .await
        .expect_err("staging's role connected to production");
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("42501"),
        "{refused}"
    );
    // Nor does the server-wide role of earlier releases keep anything here.
    let mut owner = production.connect_as_owner().await;
    let (connect, select): (bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege('fleet_app', current_database(), 'CONNECT'),
                has_table_privilege('fleet_app', 'public.devices', 'SELECT')",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert!(
        !connect && !select,
        "fleet_app: connect {connect}, select {select}"
    );
    staging_db.close().await.unwrap();
    production_db.close().await.unwrap();
}

#[tokio::test]
async fn start_up_refuses_an_application_role_that_is_a_member_of_another_role() {
    let test_db = TestDb::new().await;
    test_db.open().await.close().await.unwrap();
    let app_role = test_db.app_role().await;
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query(&format!("GRANT pg_read_all_data TO \"{app_role}\""))
        .execute(&mut owner)
        .await
        .unwrap();
    let refused = store::Database::open(&test_db.settings(), store::Purpose::Server).await;
    match refused {
        Err(store::StoreError::AppRoleTooPowerful { role, reason }) => {
            assert_eq!(role, app_role);
            assert!(reason.contains("pg_read_all_data"), "{reason}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("opened with an application role that can read every table"),
    }
}

#[tokio::test]
async fn the_server_closes_the_owner_pool_once_started() {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    assert!(matches!(
        db.admin(),
        Err(store::StoreError::OwnerPoolClosed)
    ));
    // Its connections are gone from the server too (a backend leaves pg_stat_activity shortly
    // after its client said goodbye: poll, bounded; the pool of today would idle for 10 minutes).
    let mut owner = test_db.connect_as_owner().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let owner_sessions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'fleetd-admin'",
        )
        .fetch_one(&mut owner)
        .await
        .unwrap();
        if owner_sessions == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{owner_sessions} owner sessions still open after start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    db.close().await.unwrap();
}
