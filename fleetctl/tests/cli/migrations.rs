//! Migrations that heal themselves (issue 17, item 3): applying them again changes nothing, and
//! a migrator killed in the middle of a migration leaves a database the next run completes.
//! sqlx's migrator applies each migration and records it in `_sqlx_migrations` in one
//! transaction, under a session advisory lock: a killed run commits neither.

use std::time::{Duration, Instant};

use fleet_tests::TestDb;
use sqlx::{Connection, PgConnection};

use super::{fleetctl, run};

/// The schema as the catalog describes it: relations with their columns and types, policies,
/// functions with their definitions, and privileges, one line each.
async fn schema(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || ' ' || coalesce(c.relacl::text, '')
           FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
          WHERE c.relnamespace = 'public'::regnamespace
         UNION ALL
         SELECT 'policy ' || tablename || '.' || policyname || ' ' || coalesce(qual, '')
           FROM pg_policies WHERE schemaname = 'public'
         UNION ALL
         SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc)
                || ' ' || coalesce(p.proacl::text, '')
           FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn applied(conn: &mut PgConnection) -> Vec<(i64, bool, Vec<u8>)> {
    sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
        .fetch_all(conn)
        .await
        .unwrap()
}

async fn migrate(db: &TestDb) -> String {
    let mut command = fleetctl();
    command.arg("--database-url").arg(db.url());
    run(command, &["db", "migrate"]).await.ok()
}

#[tokio::test]
async fn applying_the_migrations_again_changes_nothing() {
    let db = TestDb::new().await;
    let expected = store::expected_schema_version();
    assert_eq!(
        migrate(&db).await,
        format!("database schema is at version {expected}\n")
    );
    let mut owner = db.connect_as_owner().await;
    let (schema_once, applied_once) = (schema(&mut owner).await, applied(&mut owner).await);
    assert!(applied_once.iter().all(|(_, success, _)| *success));
    assert_eq!(applied_once.last().map(|m| m.0), Some(expected));

    assert_eq!(
        migrate(&db).await,
        format!("database schema is at version {expected}\n")
    );
    // fleetd's start migrates as well: a third run, through the store.
    db.open().await.close().await.unwrap();
    assert_eq!(schema(&mut owner).await, schema_once);
    assert_eq!(applied(&mut owner).await, applied_once);
    owner.close().await.ok();
}

#[tokio::test]
async fn a_migrator_killed_in_the_middle_of_a_migration_is_completed_by_the_next_run() {
    let db = TestDb::new().await;
    let expected = store::expected_schema_version();
    // A transaction of ours creates, uncommitted, the table the newest migration creates: that
    // migration blocks on it, midway, after every earlier one has committed.
    let mut blocker = db.connect_as_owner().await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("CREATE TABLE public.backup_verifications (blocked int)")
        .execute(&mut blocker)
        .await
        .unwrap();

    let mut child = fleetctl()
        .arg("--database-url")
        .arg(db.url())
        .args(["db", "migrate"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut watcher = db.connect_as_owner().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'fleetd-admin'
                AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the migrator ended unblocked"
        );
        assert!(Instant::now() < deadline, "the migrator never blocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    let found: i64 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut watcher)
            .await
            .unwrap();
    assert!(
        found > 0 && found < expected,
        "killed midway: {found} of {expected}"
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    blocker.close().await.ok();

    // The next run (it waits for the dead run's session and its advisory lock to end).
    assert_eq!(
        migrate(&db).await,
        format!("database schema is at version {expected}\n")
    );
    let migrations = applied(&mut watcher).await;
    assert!(
        migrations.iter().all(|(_, success, _)| *success),
        "{migrations:?}"
    );
    assert_eq!(migrations.last().map(|m| m.0), Some(expected));
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = 'public.backup_verifications'::regclass AND attnum > 0
            AND NOT attisdropped ORDER BY attnum",
    )
    .fetch_all(&mut watcher)
    .await
    .unwrap();
    assert_eq!(
        columns[0], "verification_id",
        "the migration's table, not ours"
    );
    watcher.close().await.ok();
    // And fleetd starts on it.
    db.open().await.close().await.unwrap();
}
