//! A session's registration: its entry in the registry, its presence events and its
//! place in the active-session counter, all undone by one guard.
//!
//! [`Registration`] is made when the session registers (before the admission hook,
//! see [`super::admission`]) and undoes everything in its `Drop`, so no way out of a
//! session (a refusal at CONNECT, an error, revocation, replacement, a timeout,
//! shutdown, the task being dropped, a panic unwinding) can leave a registry entry
//! behind, skip the offline event or keep the session counted as active.

use std::net::SocketAddr;
use std::sync::Arc;

use certs::DeviceIdentity;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::info;

use super::Shared;
use crate::hooks::{DisconnectReason, PresenceEvent};
use crate::registry::{Registry, SessionControl, TenantQuotaReached};
use crate::stats::Counters;

/// A registered session. Dropping it removes the registry entry (unless a newer
/// session of the device has taken it) and, if the session went [online], reports it
/// offline and counts it as ended.
///
/// [online]: Registration::online
pub(super) struct Registration {
    control: Arc<SessionControl>,
    identity: DeviceIdentity,
    remote_addr: SocketAddr,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    presence: Option<mpsc::UnboundedSender<PresenceEvent>>,
    online: bool,
    reason: Option<DisconnectReason>,
}

impl Registration {
    /// Registers a new session of `identity`'s device; a session already registered
    /// for it is asked to close as [`DisconnectReason::Replaced`].
    pub(super) fn register(
        shared: &Shared,
        identity: DeviceIdentity,
        remote_addr: SocketAddr,
    ) -> Self {
        Self::new(
            Arc::clone(&shared.registry),
            Arc::clone(&shared.counters),
            shared.presence.clone(),
            identity,
            remote_addr,
        )
    }

    fn new(
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        presence: Option<mpsc::UnboundedSender<PresenceEvent>>,
        identity: DeviceIdentity,
        remote_addr: SocketAddr,
    ) -> Self {
        let control = registry.register(identity.device_id, identity.tenant_id);
        Self {
            control,
            identity,
            remote_addr,
            registry,
            counters,
            presence,
            online: false,
            reason: None,
        }
    }

    /// The session's control block: how a revocation or a newer session reaches it.
    pub(super) fn control(&self) -> &SessionControl {
        &self.control
    }

    /// Takes one of the tenant's `quota` places for this session (kept from the session it
    /// replaces, if that one held one); the drop gives it back.
    pub(super) fn take_tenant_place(&self, quota: u32) -> Result<(), TenantQuotaReached> {
        self.registry
            .take_tenant_place(self.identity.device_id, self.control.session(), quota)
    }

    /// CONNACK 0x00 was sent: counts the session as started and reports it online.
    /// From now on the drop reports it offline.
    pub(super) fn online(&mut self) {
        if self.online {
            return;
        }
        self.online = true;
        self.counters.session_started();
        self.emit_presence(None);
        let (identity, remote_addr) = (self.identity, self.remote_addr);
        info!(tenant = %identity.tenant_id, device = %identity.device_id, %remote_addr, session = self.control.session(), "device connected");
    }

    /// Why the session ended, for its offline event. A session dropped without one
    /// (its task panicked or was dropped) is reported as
    /// [`DisconnectReason::ConnectionLost`].
    pub(super) fn ended(&mut self, reason: DisconnectReason) {
        self.reason = Some(reason);
    }

    fn emit_presence(&self, reason: Option<DisconnectReason>) {
        if let Some(presence) = &self.presence {
            let event = PresenceEvent {
                identity: self.identity,
                session: self.control.session(),
                online: reason.is_none(),
                at: OffsetDateTime::now_utc(),
                remote_addr: self.remote_addr,
                reason,
            };
            // A closed receiver means fleetd is shutting down; nothing to do.
            let _ = presence.send(event);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .remove(self.identity.device_id, self.control.session());
        if !self.online {
            return;
        }
        let reason = self.reason.unwrap_or(DisconnectReason::ConnectionLost);
        // The event before the counter: once `sessions_active` no longer counts this
        // session, everything it reports has been sent.
        self.emit_presence(Some(reason));
        self.counters.session_ended();
        let (identity, remote_addr) = (self.identity, self.remote_addr);
        info!(tenant = %identity.tenant_id, device = %identity.device_id, %remote_addr, session = self.control.session(), %reason, "device disconnected");
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use wire::{DeviceId, TenantId};

    use super::*;

    struct Book {
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        presence_tx: mpsc::UnboundedSender<PresenceEvent>,
        presence: mpsc::UnboundedReceiver<PresenceEvent>,
        identity: DeviceIdentity,
    }

    impl Book {
        fn new() -> Self {
            let (presence_tx, presence) = mpsc::unbounded_channel();
            Self {
                registry: Arc::default(),
                counters: Arc::default(),
                presence_tx,
                presence,
                identity: DeviceIdentity {
                    tenant_id: TenantId::from(uuid::Uuid::from_u128(7)),
                    device_id: DeviceId::from(uuid::Uuid::from_u128(1)),
                },
            }
        }

        fn register(&self) -> Registration {
            Registration::new(
                Arc::clone(&self.registry),
                Arc::clone(&self.counters),
                Some(self.presence_tx.clone()),
                self.identity,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000)),
            )
        }

        /// Every presence event sent so far.
        fn events(&mut self) -> Vec<PresenceEvent> {
            std::iter::from_fn(|| self.presence.try_recv().ok()).collect()
        }

        fn is_registered(&self) -> bool {
            self.registry
                .disconnect(self.identity.device_id, DisconnectReason::Revoked)
        }
    }

    #[test]
    fn a_session_refused_before_it_went_online_leaves_nothing_behind() {
        let mut book = Book::new();
        let registration = book.register();
        assert!(book.is_registered());
        drop(registration);
        assert!(!book.is_registered());
        assert_eq!(book.events(), []);
        let stats = book.counters.snapshot();
        assert_eq!((stats.sessions_started, stats.sessions_active), (0, 0));
    }

    #[test]
    fn an_ended_session_is_reported_offline_once_with_its_reason() {
        let mut book = Book::new();
        let mut registration = book.register();
        registration.online();
        registration.online();
        assert_eq!(book.counters.snapshot().sessions_active, 1);
        registration.ended(DisconnectReason::KeepAliveTimeout);
        drop(registration);
        let events = book.events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].online);
        assert_eq!(events[0].reason, None);
        assert!(!events[1].online);
        assert_eq!(events[1].session, events[0].session);
        assert_eq!(events[1].reason, Some(DisconnectReason::KeepAliveTimeout));
        assert!(!book.is_registered());
        let stats = book.counters.snapshot();
        assert_eq!((stats.sessions_started, stats.sessions_active), (1, 0));
    }

    #[tokio::test]
    async fn a_session_whose_task_panics_is_still_unregistered_and_reported_offline() {
        let mut book = Book::new();
        let mut registration = book.register();
        let task = tokio::spawn(async move {
            registration.online();
            tokio::task::yield_now().await;
            panic!("a bug in the session loop");
        });
        assert!(task.await.unwrap_err().is_panic());
        let events = book.events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].online);
        assert_eq!(events[1].reason, Some(DisconnectReason::ConnectionLost));
        assert!(!book.is_registered());
        assert_eq!(book.counters.snapshot().sessions_active, 0);
    }

    #[test]
    fn an_older_session_ending_leaves_its_successors_entry() {
        let mut book = Book::new();
        let mut older = book.register();
        older.online();
        let newer = book.register();
        assert_eq!(older.control().reason(), Some(DisconnectReason::Replaced));
        older.ended(DisconnectReason::Replaced);
        drop(older);
        assert_eq!(newer.control().reason(), None);
        assert!(
            book.is_registered(),
            "the newer session is still registered"
        );
        assert_eq!(newer.control().reason(), Some(DisconnectReason::Revoked));
        let offline: Vec<_> = book.events().into_iter().filter(|e| !e.online).collect();
        assert_eq!(offline.len(), 1);
        assert_eq!(offline[0].reason, Some(DisconnectReason::Replaced));
        drop(newer);
        assert!(!book.is_registered());
        assert_eq!(book.events(), [], "the newer session never went online");
    }
}
