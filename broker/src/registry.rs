//! Live device sessions, by device id: how `disconnect(device)` and a newer connection
//! of the same device reach a running session, and how many sessions each tenant holds
//! (its quota, checked at admission), and how a server message reaches one device's session
//! ([`Registry::deliver`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use wire::{DeviceId, TenantId};

use crate::hooks::DisconnectReason;
use crate::stats::Undelivered;

/// Server messages queued for one session before more are dropped. Small: what is sent down
/// (ack watermarks, commands) is superseded by the next message or sent again.
pub(crate) const DOWNLINK_QUEUE: usize = 8;

/// A server message for one device's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Downlink {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
}

/// The control block of one session.
#[derive(Debug)]
pub(crate) struct SessionControl {
    session: u64,
    reason: Mutex<Option<DisconnectReason>>,
    notify: Notify,
    /// Allocated by the first message and freed when the session takes them: an idle session
    /// holds no buffer.
    downlink: Mutex<VecDeque<Downlink>>,
    downlink_ready: Notify,
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

    /// Queues a message for the session, unless [`DOWNLINK_QUEUE`] are waiting already.
    fn push_downlink(&self, message: Downlink) -> Result<(), Undelivered> {
        let mut queue = lock(&self.downlink);
        if queue.len() >= DOWNLINK_QUEUE {
            return Err(Undelivered::QueueFull);
        }
        queue.push_back(message);
        drop(queue);
        self.downlink_ready.notify_one();
        Ok(())
    }

    /// Takes what is still queued, for a session that ends without writing it.
    pub(crate) fn take_downlink(&self) -> usize {
        std::mem::take(&mut *lock(&self.downlink)).len()
    }

    /// Completes once messages are queued, and takes them all.
    pub(crate) async fn downlink(&self) -> VecDeque<Downlink> {
        loop {
            let queued = std::mem::take(&mut *lock(&self.downlink));
            if !queued.is_empty() {
                return queued;
            }
            self.downlink_ready.notified().await;
        }
    }
}

/// The tenant already holds its quota of live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TenantQuotaReached;

/// A registered session and whether it holds one of its tenant's places.
#[derive(Debug)]
struct Entry {
    control: Arc<SessionControl>,
    tenant: TenantId,
    holds_place: bool,
}

#[derive(Debug, Default)]
struct Sessions {
    by_device: HashMap<DeviceId, Entry>,
    /// Per tenant, how many entries hold a place (sessions past the quota check).
    places: HashMap<TenantId, u32>,
}

impl Sessions {
    fn release_place(&mut self, tenant: TenantId) {
        if let Some(count) = self.places.get_mut(&tenant) {
            *count -= 1;
            if *count == 0 {
                self.places.remove(&tenant);
            }
        }
    }
}

/// Every live session, one per device.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<Sessions>,
    next_session: AtomicU64,
}

impl Registry {
    /// Registers a new session for `device_id` of `tenant`; a session already registered for
    /// it is asked to close as [`DisconnectReason::Replaced`] (MQTT's rule for a second
    /// connection with the same client id), and the new one takes over its tenant place.
    pub(crate) fn register(&self, device_id: DeviceId, tenant: TenantId) -> Arc<SessionControl> {
        let control = Arc::new(SessionControl {
            session: self.next_session.fetch_add(1, Ordering::Relaxed) + 1,
            reason: Mutex::new(None),
            notify: Notify::new(),
            downlink: Mutex::new(VecDeque::new()),
            downlink_ready: Notify::new(),
        });
        let mut sessions = lock(&self.sessions);
        let entry = Entry {
            control: Arc::clone(&control),
            tenant,
            holds_place: false,
        };
        let previous = sessions.by_device.insert(device_id, entry);
        if let Some(previous) = previous {
            if previous.holds_place {
                // Device ids are unique across tenants: the place stays with the same tenant.
                if let Some(entry) = sessions.by_device.get_mut(&device_id) {
                    entry.holds_place = true;
                }
            }
            drop(sessions);
            previous.control.close(DisconnectReason::Replaced);
        }
        control
    }

    /// Gives the device's session `session` a place among its tenant's, unless the tenant
    /// already holds `quota` of them. A session that took over a place (a reconnect) keeps it.
    pub(crate) fn take_tenant_place(
        &self,
        device_id: DeviceId,
        session: u64,
        quota: u32,
    ) -> Result<(), TenantQuotaReached> {
        let mut sessions = lock(&self.sessions);
        let Sessions { by_device, places } = &mut *sessions;
        let Some(entry) = by_device
            .get_mut(&device_id)
            .filter(|entry| entry.control.session == session)
        else {
            // Replaced meanwhile: the caller sees the close reason next.
            return Ok(());
        };
        if entry.holds_place {
            return Ok(());
        }
        let held = places.entry(entry.tenant).or_insert(0);
        if *held >= quota {
            return Err(TenantQuotaReached);
        }
        *held += 1;
        entry.holds_place = true;
        Ok(())
    }

    /// Removes a session, unless a newer one has taken its place.
    pub(crate) fn remove(&self, device_id: DeviceId, session: u64) {
        let mut sessions = lock(&self.sessions);
        let current = sessions
            .by_device
            .get(&device_id)
            .filter(|current| current.control.session == session);
        let Some(&Entry {
            tenant,
            holds_place,
            ..
        }) = current
        else {
            return;
        };
        sessions.by_device.remove(&device_id);
        if holds_place {
            sessions.release_place(tenant);
        }
    }

    /// Closes the device's live session, if any, and says whether there was one.
    pub(crate) fn disconnect(&self, device_id: DeviceId, reason: DisconnectReason) -> bool {
        let control = lock(&self.sessions)
            .by_device
            .get(&device_id)
            .map(|entry| Arc::clone(&entry.control));
        match control {
            Some(control) => {
                control.close(reason);
                true
            }
            None => false,
        }
    }

    /// Queues a server message for the device's live session. The session writes it if it
    /// subscribed to a filter covering `topic`.
    pub(crate) fn deliver(
        &self,
        device_id: DeviceId,
        message: Downlink,
    ) -> Result<(), Undelivered> {
        let control = lock(&self.sessions)
            .by_device
            .get(&device_id)
            .map(|entry| Arc::clone(&entry.control))
            .ok_or(Undelivered::Offline)?;
        control.push_downlink(message)
    }

    /// The devices with a live session now (registered before their admission check, so a
    /// session that is being admitted is included).
    pub(crate) fn devices(&self) -> Vec<DeviceId> {
        lock(&self.sessions).by_device.keys().copied().collect()
    }

    /// Closes every live session.
    pub(crate) fn close_all(&self, reason: DisconnectReason) {
        let all: Vec<_> = lock(&self.sessions)
            .by_device
            .values()
            .map(|entry| Arc::clone(&entry.control))
            .collect();
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

    fn tenant(n: u128) -> TenantId {
        TenantId::from(uuid::Uuid::from_u128(n))
    }

    #[tokio::test]
    async fn a_close_before_waiting_is_not_lost() {
        let registry = Registry::default();
        let device = DeviceId::from(uuid::Uuid::from_u128(1));
        let control = registry.register(device, tenant(7));
        assert!(registry.disconnect(device, DisconnectReason::Revoked));
        tokio::time::timeout(Duration::from_secs(1), control.closed())
            .await
            .unwrap();
        assert_eq!(control.reason(), Some(DisconnectReason::Revoked));
    }

    #[tokio::test]
    async fn a_message_reaches_the_live_session_and_a_full_queue_drops_the_rest() {
        let registry = Registry::default();
        let device = DeviceId::from(uuid::Uuid::from_u128(1));
        let message = |n: u8| Downlink {
            topic: wire::topic::ack(device),
            payload: Bytes::from(vec![n]),
        };
        assert_eq!(
            registry.deliver(device, message(0)),
            Err(Undelivered::Offline)
        );
        let control = registry.register(device, tenant(7));
        for n in 0..DOWNLINK_QUEUE as u8 {
            assert_eq!(registry.deliver(device, message(n)), Ok(()));
        }
        assert_eq!(
            registry.deliver(device, message(99)),
            Err(Undelivered::QueueFull)
        );
        let taken = tokio::time::timeout(Duration::from_secs(1), control.downlink())
            .await
            .unwrap();
        let expected: Vec<_> = (0..DOWNLINK_QUEUE as u8).map(message).collect();
        assert_eq!(Vec::from(taken), expected);
        assert_eq!(registry.deliver(device, message(7)), Ok(()), "room again");
        registry.remove(device, control.session());
        assert_eq!(
            registry.deliver(device, message(8)),
            Err(Undelivered::Offline)
        );
    }

    #[test]
    fn a_newer_session_replaces_and_survives_the_older_ones_removal() {
        let registry = Registry::default();
        let device = DeviceId::from(uuid::Uuid::from_u128(1));
        let old = registry.register(device, tenant(7));
        let new = registry.register(device, tenant(7));
        assert_eq!(old.reason(), Some(DisconnectReason::Replaced));
        assert_eq!(new.reason(), None);
        registry.remove(device, old.session());
        assert!(registry.disconnect(device, DisconnectReason::Revoked));
        assert_eq!(new.reason(), Some(DisconnectReason::Revoked));
        registry.remove(device, new.session());
        assert!(!registry.disconnect(device, DisconnectReason::Revoked));
    }

    #[test]
    fn a_tenant_place_is_freed_by_removal_and_kept_by_replacement() {
        let registry = Registry::default();
        let [a, b, c] = [1, 2, 3].map(|n| DeviceId::from(uuid::Uuid::from_u128(n)));
        let take = |device, control: &SessionControl| {
            registry.take_tenant_place(device, control.session(), 2)
        };
        let a1 = registry.register(a, tenant(7));
        let b1 = registry.register(b, tenant(7));
        let c1 = registry.register(c, tenant(7));
        assert_eq!(take(a, &a1), Ok(()));
        assert_eq!(take(b, &b1), Ok(()));
        assert_eq!(take(c, &c1), Err(TenantQuotaReached));
        let other = DeviceId::from(uuid::Uuid::from_u128(4));
        let other1 = registry.register(other, tenant(8));
        assert_eq!(
            take(other, &other1),
            Ok(()),
            "another tenant has its own count"
        );
        let a2 = registry.register(a, tenant(7));
        assert_eq!(take(a, &a2), Ok(()), "a reconnect keeps its place");
        registry.remove(a, a1.session());
        assert_eq!(take(c, &c1), Err(TenantQuotaReached));
        registry.remove(b, b1.session());
        assert_eq!(take(c, &c1), Ok(()));
    }
}
