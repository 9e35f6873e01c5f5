//! The broker's side of the store: who may connect, who is online, and closing the sessions of
//! revoked devices on every fleetd instance (Postgres LISTEN/NOTIFY carries revocations).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use broker::{Admission, AdmissionCheck, PresenceEvent, RunningBroker};
use certs::{DeviceIdentity, SerialNumber};
use store::revocations::{Revocation, RevocationListener};
use store::{device_certificates, device_directory, devices, tenants, AppDb, DeviceId, StoreError};
use tokio::sync::mpsc;

/// Sessions of this instance whose presence was recorded: device id → session number (so that
/// the `offline` of a replaced session does not mark the device offline).
#[derive(Clone, Default)]
pub struct OnlineDevices(Arc<Mutex<HashMap<DeviceId, u64>>>);

impl OnlineDevices {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, u64>> {
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
            online.insert(device, event.session);
            return true;
        }
        match online.get(&device) {
            Some(session) if *session == event.session => {
                online.remove(&device);
                true
            }
            _ => false,
        }
    }
}

/// The broker's admission hook: the device must exist in its tenant and be active, and its
/// certificate must not have been superseded by a renewal more than `superseded_grace` ago; the
/// tenant's connection quota comes with the verdict. Not cached: it is one primary-key read in
/// the transaction the certificate check opens anyway, and a changed quota applies to the very
/// next CONNECT.
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
) -> Result<Admission, StoreError> {
    let mut tx = app.begin(identity.tenant_id).await?;
    let serial = serial.to_string();
    let admitted =
        device_certificates::admits(&mut tx, identity.device_id, &serial, superseded_grace).await?;
    let verdict = if admitted {
        let quota = tenants::max_device_connections(&mut tx).await?;
        Admission::Admit {
            // The schema keeps it between 1 and 10,000,000.
            tenant_session_quota: u32::try_from(quota).unwrap_or(0),
        }
    } else {
        Admission::Refuse
    };
    tx.rollback().await?;
    Ok(verdict)
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

/// Closes the live session of every device revoked anywhere. A notification only says which
/// device to re-check (any role that can connect may send one); once the listener is listening,
/// first and after every reconnect (notifications may have been missed), every live session is
/// re-checked.
pub async fn enforce_revocations(app: AppDb, broker: Arc<RunningBroker>) {
    let mut listener = loop {
        match RevocationListener::connect(&app).await {
            Ok(listener) => break listener,
            Err(e) => {
                tracing::error!("revocation listener: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // Sessions admitted before the listener listened were covered by no notification.
    recheck_sessions(&app, &broker).await;
    loop {
        match listener.recv().await {
            Revocation::Device { device_id, .. } => {
                close_if_revoked(&app, &broker, device_id).await;
            }
            Revocation::MaybeMissed => recheck_sessions(&app, &broker).await,
        }
    }
}

/// Closes `device`'s session unless the database says it is an existing, active device. The
/// notification's tenant is not trusted: the directory answers by device id (unique across
/// tenants) with the device's real tenant and status.
async fn close_if_revoked(app: &AppDb, broker: &RunningBroker, device: DeviceId) {
    let active = match device_directory::lookup(app, &[device]).await {
        Ok(entries) => entries.first().is_some_and(|entry| !entry.revoked),
        Err(e) => {
            // Fail closed: the device's reconnect goes through the admission check.
            tracing::warn!(%device, "re-checking a revocation: {e}");
            false
        }
    };
    if active {
        tracing::warn!(%device, "ignored a revocation notification for an active device");
    } else if broker.disconnect(device) {
        tracing::info!(%device, "revoked device disconnected");
    }
}

/// Re-checks every session the broker holds (its registry, not the presence map, which lags
/// behind admissions) against the directory, in one lookup per 1,000 devices.
async fn recheck_sessions(app: &AppDb, broker: &RunningBroker) {
    let live = broker.live_devices();
    if live.is_empty() {
        return;
    }
    let active: HashSet<DeviceId> = match device_directory::lookup(app, &live).await {
        Ok(entries) => entries
            .into_iter()
            .filter(|entry| !entry.revoked)
            .map(|entry| entry.device_id)
            .collect(),
        // Fail closed: a session whose status cannot be read now is dropped, and the device's
        // reconnect goes through the admission check.
        Err(e) => {
            tracing::warn!("re-checking live sessions: {e}");
            HashSet::new()
        }
    };
    for device in live {
        if !active.contains(&device) && broker.disconnect(device) {
            tracing::info!(%device, "session closed after re-checking revocations");
        }
    }
}
