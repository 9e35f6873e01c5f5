//! Live device sessions, by device id: how `disconnect(device)` and a newer connection
//! of the same device reach a running session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use wire::DeviceId;

use crate::hooks::DisconnectReason;

/// The control block of one session.
#[derive(Debug)]
pub(crate) struct SessionControl {
    session: u64,
    reason: Mutex<Option<DisconnectReason>>,
    notify: Notify,
}

impl SessionControl {
    /// This session's number (unique within the broker).
    pub(crate) fn session(&self) -> u64 {
        self.session
    }

    /// Asks the session to close. The first reason wins; the request is remembered
    /// even if the session is not waiting yet.
    pub(crate) fn close(&self, reason: DisconnectReason) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.notify.notify_one();
    }

    /// Why the session was asked to close, if it was.
    pub(crate) fn reason(&self) -> Option<DisconnectReason> {
        *lock(&self.reason)
    }

    /// Completes once [`Self::close`] has been called.
    pub(crate) async fn closed(&self) {
        loop {
            if self.reason().is_some() {
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// Every live session, one per device.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<DeviceId, Arc<SessionControl>>>,
    next_session: AtomicU64,
}

impl Registry {
    /// Registers a new session for `device_id`; a session already registered for it is
    /// asked to close as [`DisconnectReason::Replaced`] (MQTT's rule for a second
    /// connection with the same client id).
    pub(crate) fn register(&self, device_id: DeviceId) -> Arc<SessionControl> {
        let control = Arc::new(SessionControl {
            session: self.next_session.fetch_add(1, Ordering::Relaxed) + 1,
            reason: Mutex::new(None),
            notify: Notify::new(),
        });
        let previous = lock(&self.sessions).insert(device_id, Arc::clone(&control));
        if let Some(previous) = previous {
            previous.close(DisconnectReason::Replaced);
        }
        control
    }

    /// Removes a session, unless a newer one has taken its place.
    pub(crate) fn remove(&self, device_id: DeviceId, session: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&device_id)
            .is_some_and(|current| current.session == session)
        {
            sessions.remove(&device_id);
        }
    }

    /// Closes the device's live session, if any, and says whether there was one.
    pub(crate) fn disconnect(&self, device_id: DeviceId, reason: DisconnectReason) -> bool {
        let control = lock(&self.sessions).get(&device_id).cloned();
        match control {
            Some(control) => {
                control.close(reason);
                true
            }
            None => false,
        }
    }

    /// The devices with a live session now (registered before their admission check, so a
    /// session that is being admitted is included).
    pub(crate) fn devices(&self) -> Vec<DeviceId> {
        lock(&self.sessions).keys().copied().collect()
    }

    /// Closes every live session.
    pub(crate) fn close_all(&self, reason: DisconnectReason) {
        let all: Vec<_> = lock(&self.sessions).values().cloned().collect();
        for control in all {
            control.close(reason);
        }
    }
}

/// Locks a mutex, ignoring poisoning: the guarded values stay consistent whatever
/// panicked (plain inserts and reads).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_close_before_waiting_is_not_lost() {
        let registry = Registry::default();
        let device = DeviceId::from(uuid::Uuid::from_u128(1));
        let control = registry.register(device);
        assert!(registry.disconnect(device, DisconnectReason::Revoked));
        tokio::time::timeout(Duration::from_secs(1), control.closed())
            .await
            .unwrap();
        assert_eq!(control.reason(), Some(DisconnectReason::Revoked));
    }

    #[test]
    fn a_newer_session_replaces_and_survives_the_older_ones_removal() {
        let registry = Registry::default();
        let device = DeviceId::from(uuid::Uuid::from_u128(1));
        let old = registry.register(device);
        let new = registry.register(device);
        assert_eq!(old.reason(), Some(DisconnectReason::Replaced));
        assert_eq!(new.reason(), None);
        registry.remove(device, old.session());
        assert!(registry.disconnect(device, DisconnectReason::Revoked));
        assert_eq!(new.reason(), Some(DisconnectReason::Revoked));
        registry.remove(device, new.session());
        assert!(!registry.disconnect(device, DisconnectReason::Revoked));
    }
}
