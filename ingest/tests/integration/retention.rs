//! Retention removes only records older than the tenant's setting, only for that tenant; whole
//! partitions go only when older than every tenant's retention.

use std::time::Duration;
use store::audit::Actor;
use store::tenants::{self, SettingsChange};

use crate::common::*;
use ingest::{Metrics, Retention, RetentionConfig};
use store::records::{self, NewRecords, RecordKind};
use store::{DeviceId, TenantId};
use time::OffsetDateTime;

async fn insert_aged(db: &store::Database, tenant: TenantId, device: DeviceId, ages_days: &[i64]) {
    let mut rows = NewRecords::with_capacity(ages_days.len());
    let now = OffsetDateTime::now_utc();
    for (i, age) in ages_days.iter().enumerate() {
        rows.push(
            device,
            i as i64 + 1,
            now - time::Duration::days(*age),
            now,
            RecordKind::Telemetry,
            vec![0xa0],
        );
    }
    let mut tx = db.app.begin(tenant).await.unwrap();
    records::insert(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
}

async fn ages_left(db: &store::Database, tenant: TenantId, device: DeviceId) -> Vec<i64> {
    let now = OffsetDateTime::now_utc();
    let mut tx = db.app.begin(tenant).await.unwrap();
    let rows = records::list_for_device(&mut tx, device, 0, 1000)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.iter()
        .map(|r| (now - r.recorded_at).whole_days())
        .collect()
}

fn retention(days: i32) -> SettingsChange {
    SettingsChange {
        record_retention_days: Some(days),
        ..SettingsChange::default()
    }
}

#[tokio::test]
async fn retention_deletes_only_what_is_older_than_each_tenants_setting() {
    let (_test_db, db) = open().await;
    let (short, short_devices) =
        fleet_tests::tenancy::tenant_with_devices(&db.app, "short", 1).await;
    let (default, default_devices) =
        fleet_tests::tenancy::tenant_with_devices(&db.app, "default", 1).await;
    let ages = [1, 5, 9, 20, 45, 400];
    insert_aged(&db, short, short_devices[0], &ages).await;
    insert_aged(&db, default, default_devices[0], &ages).await;
    let mut tx = db.app.begin(short).await.unwrap();
    tenants::update_settings(&mut tx, &retention(7), &db.app, &Actor::System)
        .await
        .unwrap();
    assert_eq!(records::retention_days(&mut tx).await.unwrap(), 7);
    assert!(
        tenants::update_settings(&mut tx, &retention(0), &db.app, &Actor::System)
            .await
            .is_err()
    );
    tx.commit().await.unwrap();

    let metrics = Metrics::default();
    let config = RetentionConfig {
        step_rows: 1,
        step_pause: Duration::ZERO,
        ..RetentionConfig::default()
    };
    let job = Retention::new(db.app.clone(), config, metrics);
    let report = job.run_once().await.unwrap();
    assert_eq!(report.records_deleted, 4 + 2, "{report:?}");
    assert_eq!(ages_left(&db, short, short_devices[0]).await, vec![1, 5]);
    assert_eq!(
        ages_left(&db, default, default_devices[0]).await,
        vec![1, 5, 9, 20]
    );
    // A second run finds nothing more.
    assert_eq!(job.run_once().await.unwrap().records_deleted, 0);
    db.close().await.unwrap();
}

#[tokio::test]
async fn partitions_are_created_ahead_and_dropped_only_past_every_retention() {
    let (test_db, db) = open().await;
    let mut owner = test_db.connect_as_owner().await;
    // An old partition, as if created two years ago.
    sqlx::query("CREATE TABLE device_records_w20200106 PARTITION OF device_records FOR VALUES FROM ('2020-01-06 00:00+00') TO ('2020-01-13 00:00+00')")
        .execute(&mut owner).await.unwrap();
    let (tenant, _) = fleet_tests::tenancy::tenant_with_devices(&db.app, "long", 1).await;
    let mut tx = db.app.begin(tenant).await.unwrap();
    tenants::update_settings(&mut tx, &retention(3650), &db.app, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        records::drop_expired_partitions(&db.app, 10).await.unwrap(),
        0,
        "one tenant keeps 10 years"
    );
    let mut tx = db.app.begin(tenant).await.unwrap();
    tenants::update_settings(&mut tx, &retention(30), &db.app, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        records::drop_expired_partitions(&db.app, 10).await.unwrap(),
        1
    );
    // The weekly partitions ahead exist already (created by the migration); asking again is a no-op.
    assert_eq!(records::ensure_partitions(&db.app, 4).await.unwrap(), 0);
    assert!(records::ensure_partitions(&db.app, 8).await.unwrap() >= 4);
    db.close().await.unwrap();
}
