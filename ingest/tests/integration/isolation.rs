//! Tenant isolation of ingest's tables and of the device directory, as the application role.

use std::time::Duration;

use crate::common::*;
use fleet_tests::tenancy::set_tenant;
use sqlx::Connection;
use store::device_directory;

#[tokio::test]
async fn tenant_a_cannot_read_or_change_b_records_state_or_inventory() {
    let (test_db, db) = open().await;
    let (a, a_devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "a", 1).await;
    let (b, b_devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "b", 1).await;
    let (sender, handle, sink, _) = start_recorded(&db, test_config());
    let t = wire::UnixMillis::now();
    for device in [a_devices[0], b_devices[0]] {
        send(&sender, device, vec![telemetry(1)]).await;
        send(
            &sender,
            device,
            vec![patch(2, t, &[("openssl", "3", None)])],
        )
        .await;
    }
    sink.wait_for_watermark(&[a_devices[0], b_devices[0]], 2, Duration::from_secs(5))
        .await;
    handle.shutdown().await;

    let mut app = test_db.connect_as_app().await;
    set_tenant(&mut app, a).await;
    for table in [
        "device_records",
        "device_ingest_state",
        "device_patch_status",
        "device_packages",
        "device_patch_history",
    ] {
        let tenants: Vec<uuid::Uuid> =
            sqlx::query_scalar(&format!("SELECT DISTINCT tenant_id FROM {table}"))
                .fetch_all(&mut app)
                .await
                .unwrap();
        assert_eq!(tenants, vec![a.0], "{table}");
        let changed = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
            .bind(b)
            .execute(&mut app)
            .await;
        if let Ok(done) = changed {
            assert_eq!(done.rows_affected(), 0, "{table}");
        }
    }
    // Partitions read directly are under the same policy.
    let partition: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM device_records LIMIT 1")
            .fetch_one(&mut app)
            .await
            .unwrap();
    let seen: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {partition} WHERE tenant_id = $1"
    ))
    .bind(b)
    .fetch_one(&mut app)
    .await
    .unwrap();
    assert_eq!(seen, 0);
    // Writing into B's ledger is refused by the policy.
    let err = sqlx::query("INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
                           VALUES ($1, $2, 99, now(), now(), 'event', '\\x00')")
        .bind(b).bind(b_devices[0]).execute(&mut app).await.unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    app.close().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn the_directory_answers_only_for_given_ids_and_the_app_role_still_cannot_list_devices() {
    let (test_db, db) = open().await;
    let (a, a_devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "a", 2).await;
    let (b, b_devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "b", 2).await;

    let found = device_directory::lookup(
        &db.app,
        &[a_devices[0], b_devices[1], store::DeviceId::new_random()],
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 2);
    assert!(found
        .iter()
        .any(|e| e.device_id == a_devices[0] && e.tenant_id == a && !e.revoked));
    assert!(found
        .iter()
        .any(|e| e.device_id == b_devices[1] && e.tenant_id == b));

    let mut app = test_db.connect_as_app().await;
    set_tenant(&mut app, a).await;
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(visible, 2, "only A's devices");
    // No listing through the function: it needs ids, and at most 1,000 of them.
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet_device_directory('{}'::uuid[])")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(none, 0);
    let err = sqlx::query("SELECT * FROM fleet_device_directory(array(SELECT gen_random_uuid() FROM generate_series(1, 1001)))")
        .execute(&mut app).await.unwrap_err();
    assert!(err.to_string().contains("at most 1000"), "{err}");
    // The owner-only helpers are not callable by the application role.
    let err = sqlx::query("SELECT fleet_secure_tenant_table('devices')")
        .execute(&mut app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    app.close().await.unwrap();
    db.close().await.unwrap();
}
