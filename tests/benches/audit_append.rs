//! Audit appends per second: one tenant (where every append queues on the tenant's head lock)
//! and 16 tenants in parallel (where they should not). A program that prints numbers, not a test.
//!
//!     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo bench -p fleet-tests --bench audit_append
//!
//! Each append is its own transaction (BEGIN; set tenant; lock head; INSERT; UPDATE head;
//! COMMIT), which is how mutations append in production: one commit, one fsync.

use std::time::{Duration, Instant};

use fleet_tests::TestDb;
use serde_json::json;
use store::{audit, tenants, AppDb, TenantId};

const RUN_FOR: Duration = Duration::from_secs(5);

async fn append_for(app: AppDb, tenant: TenantId, until: Instant) -> u64 {
    let mut done = 0;
    while Instant::now() < until {
        let mut tx = app.begin(tenant).await.expect("begin");
        audit::append_for_tests(
            &mut tx,
            "bench",
            "bench.append",
            "bench",
            &json!({ "n": done }),
        )
        .await
        .expect("append");
        tx.commit().await.expect("commit");
        done += 1;
    }
    done
}

/// `writers` tasks, each appending to `tenants[i % tenants.len()]`, for RUN_FOR.
async fn measure(app: &AppDb, tenants: &[TenantId], writers: usize) -> f64 {
    let started = Instant::now();
    let until = started + RUN_FOR;
    let tasks: Vec<_> = (0..writers)
        .map(|i| tokio::spawn(append_for(app.clone(), tenants[i % tenants.len()], until)))
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let test_db = TestDb::new().await;
    let mut settings = test_db.settings();
    settings.max_connections = 32;
    let db = store::Database::open(&settings, store::Purpose::Server)
        .await
        .expect("open");
    let mut all = Vec::new();
    for i in 0..16 {
        all.push(
            tenants::create(&db.app, &format!("bench-{i}"), &store::audit::Actor::System)
                .await
                .expect("tenant")
                .id,
        );
    }
    let server = if std::env::var("TEST_DATABASE_URL").is_ok() {
        "TEST_DATABASE_URL"
    } else {
        "private cluster (fsync off)"
    };
    println!(
        "audit appends, one transaction each, {}s per case, server: {server}",
        RUN_FOR.as_secs()
    );
    println!("{:<44} {:>12}", "case", "appends/s");
    for (label, tenants, writers) in [
        ("1 tenant, 1 writer", &all[..1], 1),
        ("1 tenant, 16 writers (one head lock)", &all[..1], 16),
        ("16 tenants, 16 writers (one each)", &all[..16], 16),
    ] {
        let rate = measure(&db.app, tenants, writers).await;
        println!("{label:<44} {rate:>12.0}");
    }
    for tenant in &all {
        let mut tx = db.app.begin(*tenant).await.expect("begin");
        let verdict = audit::verify(&mut tx).await.expect("verify");
        assert!(
            matches!(verdict, audit::ChainVerdict::Intact { .. }),
            "{verdict:?}"
        );
        tx.rollback().await.expect("rollback");
    }
    println!("every chain verified intact afterwards");
    db.close().await.expect("close");
}
