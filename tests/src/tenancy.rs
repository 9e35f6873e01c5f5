//! Tenants for tests: a tenant with devices made through the store, and a raw connection's
//! tenant set as the store's transactions set it.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use store::api_keys::{self, KeyEnv, NewApiKey, Role};
use store::devices::{self, NewDevice};
use store::{device_groups, tenants, AppDb, DeviceGroupId, DeviceId, TenantId};

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

/// Creates a device in `tenant`'s group `group`, creating the group first if needed; returns its
/// id.
pub async fn add_device_in_group(app: &AppDb, tenant: TenantId, group: &str) -> DeviceId {
    let mut tx = app.begin(tenant).await.unwrap();
    crate::ensure_group(&mut tx, group).await;
    let new = NewDevice {
        name: format!("{group}-{}", DeviceId::new_random()),
        group: group.into(),
        labels: BTreeMap::new(),
    };
    let device = devices::create(&mut tx, &new, &store::audit::Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    device.id
}

/// A live API key of `tenant` with `role`, limited to the groups named `groups` (`None`: every
/// group), created in the store by the system; named after its role.
pub async fn api_key(
    app: &AppDb,
    tenant: TenantId,
    role: Role,
    groups: Option<&[&str]>,
) -> api_keys::IssuedKey {
    let mut tx = app.begin(tenant).await.unwrap();
    let mut group_scope: Option<Vec<DeviceGroupId>> = None;
    for name in groups.into_iter().flatten() {
        let group = device_groups::find_by_name(&mut tx, name)
            .await
            .unwrap()
            .expect("the group exists");
        group_scope.get_or_insert_with(Vec::new).push(group.id);
    }
    let new = NewApiKey {
        name: format!("{role} key"),
        role,
        group_scope,
        expires_at: None,
        allowed_cidrs: None,
        cors_origins: None,
    };
    let issued = api_keys::create(&mut tx, &new, &KeyEnv::live(), &store::audit::Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    issued
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
