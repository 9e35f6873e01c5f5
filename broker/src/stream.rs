//! Live streams for integrations: what an API-key subscriber may subscribe to, and the
//! in-process hub that fans committed records out to the subscribers of their tenant.
//!
//! Topics: `fleet/v1/stream/{tenant_id}/{device_id}/{telemetry|patch|events}`. A subscriber
//! may subscribe only below its own tenant, with `+` or `#` at the device and kind levels.
//!
//! The hub, not rumqttd, does this fan-out: each subscriber has its own bounded queue, filled
//! with `try_send`, so a full queue drops (and counts, per key) that subscriber's message only.
//! rumqttd would keep a log per filter that rolls over silently and uncounted, and would put the
//! stream's volume through the one uplink thread every device publish goes through. Messages are
//! keyed by tenant from the start: a subscriber's queue only ever sees its own tenant's records.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use wire::topic::TopicKind;
use wire::{DeviceId, TenantId};

/// The first levels of every stream topic.
pub const STREAM_ROOT: &str = "fleet/v1/stream";

/// The stream topic of one device's records of `kind`.
pub fn stream_topic(tenant: TenantId, device: DeviceId, kind: TopicKind) -> String {
    format!("{STREAM_ROOT}/{tenant}/{device}/{}", kind.as_str())
}

/// The record kinds a stream carries, by their topic level.
const STREAM_KINDS: [TopicKind; 3] = [
    TopicKind::Telemetry,
    TopicKind::PatchStatus,
    TopicKind::Events,
];

/// Live-stream settings; [`BrokerConfig::live_streams`](crate::BrokerConfig::live_streams)
/// `None` turns streams off (the handshake then requires a client certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveStreams {
    /// How often a subscriber's key is checked again (revoked, expired) and its group scope
    /// re-read: the bound on how long a revoked key keeps streaming and how stale group
    /// membership may be.
    pub recheck_interval: Duration,
    /// Messages queued per subscriber toward its socket; beyond, messages are dropped and
    /// counted.
    pub queue_capacity: usize,
    /// Connections without a certificate from one source address between the handshake and
    /// CONNACK (each holds a key check).
    pub max_pending_connects_per_address: usize,
}

/// Default [`LiveStreams::recheck_interval`].
pub const DEFAULT_STREAM_RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Default [`LiveStreams::queue_capacity`].
pub const DEFAULT_STREAM_QUEUE_CAPACITY: usize = 1024;
/// Default [`LiveStreams::max_pending_connects_per_address`].
pub const DEFAULT_MAX_PENDING_STREAM_CONNECTS_PER_ADDRESS: usize = 8;

impl Default for LiveStreams {
    fn default() -> Self {
        Self {
            recheck_interval: DEFAULT_STREAM_RECHECK_INTERVAL,
            queue_capacity: DEFAULT_STREAM_QUEUE_CAPACITY,
            max_pending_connects_per_address: DEFAULT_MAX_PENDING_STREAM_CONNECTS_PER_ADDRESS,
        }
    }
}

impl LiveStreams {
    /// The first field out of range, with what it must be.
    pub(crate) fn invalid(&self) -> Option<(&'static str, &'static str)> {
        if self.recheck_interval.is_zero() {
            return Some(("live_streams.recheck_interval", "must be positive"));
        }
        if self.queue_capacity == 0 {
            return Some(("live_streams.queue_capacity", "must be at least 1"));
        }
        if self.max_pending_connects_per_address == 0 {
            return Some((
                "live_streams.max_pending_connects_per_address",
                "must be at least 1",
            ));
        }
        None
    }
}

/// What a connection without a client certificate presented in CONNECT.
pub struct StreamCredentials {
    /// The username: the API key's public id.
    pub key_id: String,
    /// The password: the whole key. Never in `Debug`.
    pub key: String,
    /// Where the connection comes from.
    pub remote_addr: SocketAddr,
}

impl fmt::Debug for StreamCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCredentials")
            .field("key_id", &self.key_id)
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

/// Which devices' records a subscriber may receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamScope {
    /// Every device of the tenant.
    Tenant,
    /// Only these (the devices of the key's groups when they were last read).
    Devices(HashSet<DeviceId>),
}

impl StreamScope {
    fn allows(&self, device: DeviceId) -> bool {
        match self {
            Self::Tenant => true,
            Self::Devices(devices) => devices.contains(&device),
        }
    }
}

/// What a subscriber may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGrant {
    /// Its tenant: the only one whose stream it may subscribe to.
    pub tenant_id: TenantId,
    /// The key's public id (the per-subscriber metrics label).
    pub key_id: String,
    /// Its devices.
    pub scope: StreamScope,
}

/// Why a key may not read the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// Unknown key, wrong secret, malformed, revoked, expired, username not the key's id, or
    /// a source address the key does not allow: CONNACK 0x04.
    BadCredentials,
    /// A good key whose role may not read the stream: CONNACK 0x05.
    NotAuthorized,
}

/// The answer of a [`StreamAuthority`].
pub type StreamVerdict = Result<StreamGrant, StreamRefusal>;

/// The error a [`StreamAuthority`] may return; the broker refuses (fail closed).
pub type StreamAuthError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The future a [`StreamAuthority`] returns.
pub type StreamFuture =
    Pin<Box<dyn Future<Output = Result<StreamVerdict, StreamAuthError>> + Send>>;

/// Decides who may read live streams (fleetd: the management API's own key authentication and
/// permission table). An error or a timeout refuses (CONNACK 0x03 at CONNECT; the session closes
/// on a recheck).
pub trait StreamAuthority: Send + Sync + 'static {
    /// Checks the credentials of a new subscriber.
    fn authenticate(&self, credentials: StreamCredentials) -> StreamFuture;
    /// Checks a live subscriber's key again (revoked, expired) and re-reads its scope, every
    /// [`LiveStreams::recheck_interval`].
    fn recheck(&self, grant: &StreamGrant) -> StreamFuture;
}

/// One accepted stream filter, parsed: `None` is a wildcard level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StreamFilter {
    device: Option<DeviceId>,
    kind: Option<TopicKind>,
}

impl StreamFilter {
    /// Parses `filter` as a stream filter of `tenant`'s stream; `None` if it is anything else
    /// (another tenant, `$share`, a malformed filter, an unknown kind).
    pub(crate) fn parse(tenant: TenantId, filter: &str) -> Option<Self> {
        let rest = filter.strip_prefix(STREAM_ROOT)?.strip_prefix('/')?;
        let (tenant_level, rest) = match rest.split_once('/') {
            Some((tenant_level, rest)) => (tenant_level, Some(rest)),
            None => (rest, None),
        };
        if TenantId::parse_canonical(tenant_level) != Some(tenant) {
            return None;
        }
        let mut levels = rest?.split('/');
        let device = match levels.next()? {
            "#" => return levels.next().is_none().then_some(Self::ALL),
            "+" => None,
            text => Some(DeviceId::parse_canonical(text)?),
        };
        let kind = match levels.next()? {
            "#" | "+" => None,
            text => Some(
                STREAM_KINDS
                    .into_iter()
                    .find(|kind| kind.as_str() == text)?,
            ),
        };
        levels.next().is_none().then_some(Self { device, kind })
    }

    const ALL: Self = Self {
        device: None,
        kind: None,
    };

    fn matches(&self, device: DeviceId, kind: TopicKind) -> bool {
        self.device.is_none_or(|d| d == device) && self.kind.is_none_or(|k| k == kind)
    }
}

/// A message for one subscriber's socket.
#[derive(Debug, Clone)]
pub(crate) struct StreamMessage {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
}

/// A subscriber's place in the hub: what it wants, what it may see, where its messages go.
struct Slot {
    key_id: String,
    filters: Mutex<HashSet<StreamFilter>>,
    scope: RwLock<StreamScope>,
    queue: mpsc::Sender<StreamMessage>,
    dropped: AtomicU64,
    counters: Arc<KeyCounters>,
}

impl Slot {
    fn wants(&self, device: DeviceId, kind: TopicKind) -> bool {
        let filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        if !filters.iter().any(|filter| filter.matches(device, kind)) {
            return false;
        }
        drop(filters);
        self.scope
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .allows(device)
    }
}

/// Per key, for the broker's life: messages delivered to and dropped for its subscribers.
#[derive(Debug, Default)]
struct KeyCounters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// A key's stream counters, for exporting (`fleet_broker_stream_*{key_id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKeyStats {
    /// The key's public id.
    pub key_id: String,
    /// Messages queued toward its subscribers' sockets.
    pub delivered: u64,
    /// Messages dropped because a subscriber's queue was full.
    pub dropped: u64,
}

/// The subscribers of every tenant.
#[derive(Default)]
pub(crate) struct StreamHub {
    tenants: RwLock<HashMap<TenantId, Vec<Arc<Slot>>>>,
    subscribers: AtomicUsize,
    keys: Mutex<HashMap<String, Arc<KeyCounters>>>,
}

impl fmt::Debug for StreamHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHub")
            .field("subscribers", &self.subscriber_count())
            .finish_non_exhaustive()
    }
}

impl StreamHub {
    /// Whether any subscriber is connected at all: one atomic load.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Whether `tenant` has a subscriber now.
    pub(crate) fn has_subscribers_in(&self, tenant: TenantId) -> bool {
        self.has_subscribers()
            && self
                .tenants
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&tenant)
    }

    /// Adds a subscriber with no filters yet; its messages arrive on the receiver. Removed
    /// when the returned handle drops.
    pub(crate) fn join(
        self: &Arc<Self>,
        grant: &StreamGrant,
        capacity: usize,
    ) -> (Subscriber, mpsc::Receiver<StreamMessage>) {
        let (queue, messages) = mpsc::channel(capacity);
        let counters = Arc::clone(
            self.keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(grant.key_id.clone())
                .or_default(),
        );
        let slot = Arc::new(Slot {
            key_id: grant.key_id.clone(),
            filters: Mutex::default(),
            scope: RwLock::new(grant.scope.clone()),
            queue,
            dropped: AtomicU64::new(0),
            counters,
        });
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(grant.tenant_id)
            .or_default()
            .push(Arc::clone(&slot));
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        let subscriber = Subscriber {
            hub: Arc::clone(self),
            tenant: grant.tenant_id,
            slot,
        };
        (subscriber, messages)
    }

    /// Queues a committed record's message for every subscriber of `tenant` that subscribed to
    /// it and may see `device`. Never waits: a full queue drops the message for that subscriber
    /// and counts it. Returns how many subscribers got it.
    pub(crate) fn publish(
        &self,
        tenant: TenantId,
        device: DeviceId,
        kind: TopicKind,
        payload: Bytes,
    ) -> usize {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let Some(slots) = tenants.get(&tenant) else {
            return 0;
        };
        let mut topic: Option<Arc<str>> = None;
        let mut delivered = 0;
        for slot in slots.iter().filter(|slot| slot.wants(device, kind)) {
            let topic = topic
                .get_or_insert_with(|| stream_topic(tenant, device, kind).into())
                .clone();
            let message = StreamMessage {
                topic,
                payload: payload.clone(),
            };
            match slot.queue.try_send(message) {
                Ok(()) => {
                    slot.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    delivered += 1;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.dropped.fetch_add(1, Ordering::Relaxed);
                    slot.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // The session is ending; its slot goes with it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Every key that ever streamed here, with its counters.
    pub(crate) fn key_stats(&self) -> Vec<StreamKeyStats> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats: Vec<StreamKeyStats> = keys
            .iter()
            .map(|(key_id, counters)| StreamKeyStats {
                key_id: key_id.clone(),
                delivered: counters.delivered.load(Ordering::Relaxed),
                dropped: counters.dropped.load(Ordering::Relaxed),
            })
            .collect();
        stats.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        stats
    }

    /// Subscribers connected now.
    pub(crate) fn subscriber_count(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    fn leave(&self, tenant: TenantId, slot: &Arc<Slot>) {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = tenants.get_mut(&tenant) {
            slots.retain(|other| !Arc::ptr_eq(other, slot));
            if slots.is_empty() {
                tenants.remove(&tenant);
            }
        }
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscriber's membership of the hub; leaves it when dropped.
pub(crate) struct Subscriber {
    hub: Arc<StreamHub>,
    tenant: TenantId,
    slot: Arc<Slot>,
}

impl Subscriber {
    /// Adds filters (already checked).
    pub(crate) fn subscribe(&self, filters: impl IntoIterator<Item = StreamFilter>) {
        self.slot
            .filters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(filters);
    }

    /// Removes filters; text that is not a held filter is ignored.
    pub(crate) fn unsubscribe<'a>(&self, filters: impl IntoIterator<Item = &'a str>) {
        let mut held = self.slot.filters.lock().unwrap_or_else(|p| p.into_inner());
        for filter in filters {
            if let Some(parsed) = StreamFilter::parse(self.tenant, filter) {
                held.remove(&parsed);
            }
        }
    }

    /// Filters held now.
    pub(crate) fn filter_count(&self) -> usize {
        self.slot
            .filters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Replaces the scope (after a recheck).
    pub(crate) fn set_scope(&self, scope: StreamScope) {
        *self.slot.scope.write().unwrap_or_else(|p| p.into_inner()) = scope;
    }

    /// Messages dropped for this subscriber so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.slot.dropped.load(Ordering::Relaxed)
    }

    /// The key's public id.
    pub(crate) fn key_id(&self) -> &str {
        &self.slot.key_id
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.leave(self.tenant, &self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "0b9d7c3e-1a2f-4e5d-8c6b-7a9f0e1d2c3b";
    const OTHER_TENANT: &str = "1c8e6d2f-3b4a-4f6e-9d7c-8b0a1f2e3d4c";
    const DEVICE: &str = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94";
    const OTHER_DEVICE: &str = "7a2d3f1b-5c8e-4d2f-8b64-3a9f2e1d0c85";

    fn tenant() -> TenantId {
        TenantId::parse_canonical(TENANT).unwrap()
    }

    fn device(text: &str) -> DeviceId {
        DeviceId::parse_canonical(text).unwrap()
    }

    fn grant(scope: StreamScope) -> StreamGrant {
        StreamGrant {
            tenant_id: tenant(),
            key_id: "fk_test".into(),
            scope,
        }
    }

    #[test]
    fn filters_below_the_own_tenant_are_accepted() {
        for filter in [
            format!("{STREAM_ROOT}/{TENANT}/#"),
            format!("{STREAM_ROOT}/{TENANT}/+/telemetry"),
            format!("{STREAM_ROOT}/{TENANT}/{DEVICE}/#"),
            format!("{STREAM_ROOT}/{TENANT}/{DEVICE}/+"),
            format!("{STREAM_ROOT}/{TENANT}/{DEVICE}/patch"),
            format!("{STREAM_ROOT}/{TENANT}/+/events"),
        ] {
            assert!(StreamFilter::parse(tenant(), &filter).is_some(), "{filter}");
        }
    }

    #[test]
    fn filters_outside_the_own_tenant_or_malformed_are_refused() {
        for filter in [
            "#".to_owned(),
            format!("{STREAM_ROOT}/#"),
            format!("{STREAM_ROOT}/+/#"),
            format!("{STREAM_ROOT}/{OTHER_TENANT}/#"),
            format!("{STREAM_ROOT}/{}/#", TENANT.to_uppercase()),
            format!("{STREAM_ROOT}/{TENANT}"),
            format!("{STREAM_ROOT}/{TENANT}/"),
            format!("{STREAM_ROOT}/{TENANT}/{DEVICE}"),
            format!("{STREAM_ROOT}/{TENANT}/{DEVICE}/ack"),
            format!("{STREAM_ROOT}/{TENANT}/{DEVICE}/telemetry/more"),
            format!("{STREAM_ROOT}/{TENANT}/#/telemetry"),
            format!("{STREAM_ROOT}/{TENANT}/not-a-uuid/#"),
            format!("$share/g/{STREAM_ROOT}/{TENANT}/#"),
            format!("fleet/v1/{DEVICE}/up/telemetry"),
            "fleet/v1/+/up/#".to_owned(),
        ] {
            assert_eq!(StreamFilter::parse(tenant(), &filter), None, "{filter}");
        }
    }

    #[test]
    fn a_filter_matches_its_device_and_kind_only() {
        let parse = |f: String| StreamFilter::parse(tenant(), &f).unwrap();
        let one = parse(format!("{STREAM_ROOT}/{TENANT}/{DEVICE}/telemetry"));
        assert!(one.matches(device(DEVICE), TopicKind::Telemetry));
        assert!(!one.matches(device(DEVICE), TopicKind::Events));
        assert!(!one.matches(device(OTHER_DEVICE), TopicKind::Telemetry));
        let all = parse(format!("{STREAM_ROOT}/{TENANT}/#"));
        assert!(all.matches(device(OTHER_DEVICE), TopicKind::PatchStatus));
    }

    #[test]
    fn the_hub_delivers_within_filters_tenant_and_scope() {
        let hub = Arc::new(StreamHub::default());
        assert!(!hub.has_subscribers());
        let scoped = grant(StreamScope::Devices([device(DEVICE)].into()));
        let (subscriber, mut messages) = hub.join(&scoped, 8);
        assert!(hub.has_subscribers_in(tenant()));
        let publish = |tenant: TenantId, device_id: &str, kind: TopicKind| {
            hub.publish(tenant, device(device_id), kind, Bytes::from_static(b"{}"))
        };
        // No filter yet: nothing.
        assert_eq!(publish(tenant(), DEVICE, TopicKind::Telemetry), 0);
        let all = StreamFilter::parse(tenant(), &format!("{STREAM_ROOT}/{TENANT}/#")).unwrap();
        subscriber.subscribe([all]);
        assert_eq!(publish(tenant(), DEVICE, TopicKind::Telemetry), 1);
        // Out of scope, and another tenant: nothing.
        assert_eq!(publish(tenant(), OTHER_DEVICE, TopicKind::Telemetry), 0);
        let other = TenantId::parse_canonical(OTHER_TENANT).unwrap();
        assert_eq!(publish(other, DEVICE, TopicKind::Telemetry), 0);
        let message = messages.try_recv().unwrap();
        let expected = stream_topic(tenant(), device(DEVICE), TopicKind::Telemetry);
        assert_eq!(&*message.topic, expected);
        assert!(messages.try_recv().is_err());
        // A wider scope after a recheck.
        subscriber.set_scope(StreamScope::Tenant);
        assert_eq!(publish(tenant(), OTHER_DEVICE, TopicKind::Events), 1);
        drop(subscriber);
        assert!(!hub.has_subscribers());
        assert!(!hub.has_subscribers_in(tenant()));
    }

    #[test]
    fn a_full_queue_drops_and_counts_for_that_subscriber_only() {
        let hub = Arc::new(StreamHub::default());
        let all = StreamFilter::parse(tenant(), &format!("{STREAM_ROOT}/{TENANT}/#")).unwrap();
        let (slow, _never_read) = hub.join(&grant(StreamScope::Tenant), 2);
        let mut fast_grant = grant(StreamScope::Tenant);
        fast_grant.key_id = "fk_fast".into();
        let (fast, mut fast_messages) = hub.join(&fast_grant, 16);
        slow.subscribe([all]);
        fast.subscribe([all]);
        for _ in 0..10 {
            hub.publish(tenant(), device(DEVICE), TopicKind::Telemetry, Bytes::new());
        }
        assert_eq!(slow.dropped(), 8);
        assert_eq!(fast.dropped(), 0);
        assert_eq!(
            (0..10).filter(|_| fast_messages.try_recv().is_ok()).count(),
            10
        );
        let stats = hub.key_stats();
        assert_eq!(
            stats,
            vec![
                StreamKeyStats {
                    key_id: "fk_fast".into(),
                    delivered: 10,
                    dropped: 0
                },
                StreamKeyStats {
                    key_id: "fk_test".into(),
                    delivered: 2,
                    dropped: 8
                },
            ]
        );
    }

    #[test]
    fn unsubscribing_removes_the_filter() {
        let hub = Arc::new(StreamHub::default());
        let (subscriber, _messages) = hub.join(&grant(StreamScope::Tenant), 2);
        let text = format!("{STREAM_ROOT}/{TENANT}/+/telemetry");
        subscriber.subscribe([StreamFilter::parse(tenant(), &text).unwrap()]);
        assert_eq!(subscriber.filter_count(), 1);
        subscriber.unsubscribe([text.as_str(), "not/a/filter"]);
        assert_eq!(subscriber.filter_count(), 0);
    }
}
