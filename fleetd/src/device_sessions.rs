//! The broker's side of the store: who may connect, who is online, and closing the sessions of
//! revoked devices on every fleetd instance (Postgres LISTEN/NOTIFY carries revocations).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use broker::{AdmissionCheck, PresenceEvent, RunningBroker};
use certs::{DeviceIdentity, SerialNumber};
use store::revocations::{Revocation, RevocationListener};
use store::{device_certificates, devices, AppDb, DeviceId, StoreError, TenantId};
use tokio::sync::mpsc;

/// Live sessions of this instance: device id → (tenant id, session number).
#[derive(Clone, Default)]
pub struct OnlineDevices(Arc<Mutex<HashMap<DeviceId, (TenantId, u64)>>>);

impl OnlineDevices {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, (TenantId, u64)>> {
        // Plain inserts and removes: the map is consistent whatever panicked.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `event`; false for the `offline` of a session a newer one already replaced.
    fn apply(&self, event: &PresenceEvent) -> bool {
        let device = event.identity.device_id;
        let mut online = self.lock();
        if event.online {
            online.insert(device, (event.identity.tenant_id, event.session));
            return true;
        }
        match online.get(&device) {
            Some((_, session)) if *session == event.session => {
                online.remove(&device);
                true
            }
            _ => false,
        }
    }

    fn snapshot(&self) -> Vec<(TenantId, DeviceId)> {
        self.lock()
            .iter()
            .map(|(device, (tenant, _))| (*tenant, *device))
            .collect()
    }
}

/// The broker's admission hook: the device must exist in its tenant and be active, and its
/// certificate must not have been superseded by a renewal more than `superseded_grace` ago.
pub fn admission_check(app: AppDb, superseded_grace: Duration) -> AdmissionCheck {
    Arc::new(move |identity: DeviceIdentity, serial: SerialNumber| {
        let app = app.clone();
        Box::pin(async move { Ok(admits(&app, identity, &serial, superseded_grace).await?) })
    })
}

async fn admits(
    app: &AppDb,
    identity: DeviceIdentity,
    serial: &SerialNumber,
    superseded_grace: Duration,
) -> Result<bool, StoreError> {
    let mut tx = app.begin(identity.tenant_id).await?;
    let serial = serial.to_string();
    let admitted =
        device_certificates::admits(&mut tx, identity.device_id, &serial, superseded_grace).await?;
    tx.rollback().await?;
    Ok(admitted)
}

async fn is_active(app: &AppDb, tenant: TenantId, device: DeviceId) -> Result<bool, StoreError> {
    let mut tx = app.begin(tenant).await?;
    let active = devices::is_active(&mut tx, device).await?;
    tx.rollback().await?;
    Ok(active)
}

/// Writes presence changes to the store, in the order the broker emits them.
pub async fn record_presence(
    app: AppDb,
    online: OnlineDevices,
    mut events: mpsc::UnboundedReceiver<PresenceEvent>,
) {
    while let Some(event) = events.recv().await {
        if !online.apply(&event) {
            continue;
        }
        tracing::debug!(device = %event.identity.device_id, online = event.online, remote = %event.remote_addr, reason = ?event.reason, "presence");
        if let Err(e) = write_presence(&app, &event).await {
            tracing::warn!(device = %event.identity.device_id, "recording presence: {e}");
        }
    }
}

async fn write_presence(app: &AppDb, event: &PresenceEvent) -> Result<(), StoreError> {
    let mut tx = app.begin(event.identity.tenant_id).await?;
    devices::record_presence(&mut tx, event.identity.device_id, event.online, event.at).await?;
    tx.commit().await
}

/// Closes the live session of every device revoked anywhere; after the listener lost its
/// connection (notifications may have been missed), re-checks every live session.
pub async fn enforce_revocations(app: AppDb, broker: Arc<RunningBroker>, online: OnlineDevices) {
    let mut listener = loop {
        match RevocationListener::connect(&app).await {
            Ok(listener) => break listener,
            Err(e) => {
                tracing::error!("revocation listener: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        match listener.recv().await {
            Revocation::Device { device_id, .. } => {
                if broker.disconnect(device_id) {
                    tracing::info!(device = %device_id, "revoked device disconnected");
                }
            }
            Revocation::MaybeMissed => recheck_sessions(&app, &broker, &online).await,
        }
    }
}

async fn recheck_sessions(app: &AppDb, broker: &RunningBroker, online: &OnlineDevices) {
    for (tenant, device) in online.snapshot() {
        // Fail closed: a session whose status cannot be read now is dropped, and the device's
        // reconnect goes through the admission check.
        if !is_active(app, tenant, device).await.unwrap_or(false) && broker.disconnect(device) {
            tracing::info!(%device, "session closed after re-checking revocations");
        }
    }
}
