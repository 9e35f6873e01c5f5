//! Tenants for tests: a tenant with devices made through the store, and a raw connection's
//! tenant set as the store's transactions set it.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use store::devices::{self, NewDevice};
use store::{tenants, AppDb, DeviceId, TenantId};

/// Sets `app.tenant_id` on `conn` for the session (not only a transaction), as a raw
/// connection must to act as `tenant` under row-level security.
pub async fn set_tenant(conn: &mut PgConnection, tenant: TenantId) {
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(conn)
        .await
        .unwrap();
}

/// Creates `n` devices in `tenant`'s group `default`, named `{prefix}{i}`; returns their ids in
/// order.
pub async fn add_devices(app: &AppDb, tenant: TenantId, prefix: &str, n: usize) -> Vec<DeviceId> {
    let mut tx = app.begin(tenant).await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let new = NewDevice {
            name: format!("{prefix}{i}"),
            group: "default".into(),
            labels: BTreeMap::new(),
        };
        let device = devices::create(&mut tx, &new, &store::audit::Actor::System)
            .await
            .unwrap();
        ids.push(device.id);
    }
    tx.commit().await.unwrap();
    ids
}

/// A new tenant `name`, created by the system; returns its id.
pub async fn tenant(app: &AppDb, name: &str) -> TenantId {
    tenants::create(app, name, &store::audit::Actor::System)
        .await
        .unwrap()
        .id
}

/// A new tenant `name` with `n` devices (named `{name}-d{i}`); returns its id and the device ids.
pub async fn tenant_with_devices(app: &AppDb, name: &str, n: usize) -> (TenantId, Vec<DeviceId>) {
    let tenant = tenant(app, name).await;
    let ids = add_devices(app, tenant, &format!("{name}-d"), n).await;
    (tenant, ids)
}
