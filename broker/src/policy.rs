//! What a device may do: the topic rules and the per-device limits.
//!
//! The topic rules themselves live in [`wire::topic`], shared with the agent and with
//! the Mosquitto ACL of external mode; this module applies them to MQTT packets.

use std::collections::{HashMap, HashSet};

use rumqttd::protocol::{Filter, LastWill, QoS};
use tokio::time::Instant;
use wire::DeviceId;

use crate::stats::Refusal;

/// May `device_id` publish to `topic`? Only to its own `up` topics.
pub(crate) fn check_publish_topic(device_id: DeviceId, topic: &[u8]) -> Result<(), Refusal> {
    let allowed = std::str::from_utf8(topic)
        .is_ok_and(|topic| wire::topic::device_may_publish(device_id, topic));
    if allowed {
        Ok(())
    } else {
        Err(Refusal::PublishTopic)
    }
}

/// May `device_id` set this will? Only on one of its own `up` topics, at QoS 0 or 1.
pub(crate) fn check_will(device_id: DeviceId, will: Option<&LastWill>) -> Result<(), Refusal> {
    let Some(will) = will else {
        return Ok(());
    };
    let qos_ok = matches!(will.qos, QoS::AtMostOnce | QoS::AtLeastOnce);
    if qos_ok && check_publish_topic(device_id, &will.topic).is_ok() {
        Ok(())
    } else {
        Err(Refusal::WillTopic)
    }
}

/// May `device_id` subscribe to `filter`? Only within its own `down` topics, which
/// also refuses `#`, `+` and `$share/...` at or above the device level.
pub(crate) fn check_subscribe_filter(device_id: DeviceId, filter: &str) -> Result<(), Refusal> {
    if wire::topic::device_may_subscribe(device_id, filter) {
        Ok(())
    } else {
        Err(Refusal::SubscribeTopic)
    }
}

/// Whether an MQTT `filter` (already checked well formed) covers `topic`.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (level, Some(topic_level)) if level == topic_level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// The subscriptions of one connection, bounded, with the QoS granted to each.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    filters: HashMap<String, QoS>,
    max: usize,
}

impl Subscriptions {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            filters: HashMap::new(),
            max,
        }
    }

    /// The QoS a server message on `topic` is written with: the highest granted among the
    /// filters covering it; `None` when no filter does.
    pub(crate) fn qos_for(&self, topic: &str) -> Option<QoS> {
        self.filters
            .iter()
            .filter(|(filter, _)| filter_matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max_by_key(|qos| *qos as u8)
    }

    /// Checks a SUBSCRIBE as a whole: every filter must be allowed and the total must
    /// stay within the limit. On success the filters are recorded and their QoS capped
    /// at 1 (QoS 2 is not offered). On refusal nothing is recorded: the packet is
    /// refused whole.
    pub(crate) fn admit(
        &mut self,
        device_id: DeviceId,
        filters: &mut [Filter],
    ) -> Result<(), Refusal> {
        for filter in filters.iter() {
            check_subscribe_filter(device_id, &filter.path)?;
        }
        let new = filters
            .iter()
            .map(|filter| filter.path.as_str())
            .filter(|path| !self.filters.contains_key(*path))
            .collect::<HashSet<_>>()
            .len();
        if self.filters.len() + new > self.max {
            return Err(Refusal::SubscriptionLimit);
        }
        for filter in filters.iter_mut() {
            if filter.qos == QoS::ExactlyOnce {
                filter.qos = QoS::AtLeastOnce;
            }
            self.filters.insert(filter.path.clone(), filter.qos);
        }
        Ok(())
    }

    /// Forgets unsubscribed filters.
    pub(crate) fn remove(&mut self, filters: &[String]) {
        for filter in filters {
            self.filters.remove(filter);
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token, or says the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rumqttd::protocol::RetainForwardRule;

    use super::*;

    const DEVICE: &str = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94";
    const OTHER: &str = "0b9d7c3e-1a2f-4e5d-8c6b-7a9f0e1d2c3b";

    fn device() -> DeviceId {
        DeviceId::parse_canonical(DEVICE).unwrap()
    }

    fn filter(path: &str) -> Filter {
        Filter {
            path: path.to_owned(),
            qos: QoS::ExactlyOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }
    }

    fn will(topic: &str, qos: QoS) -> LastWill {
        LastWill {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            message: Bytes::from_static(b"offline"),
            qos,
            retain: true,
        }
    }

    #[test]
    fn publish_only_to_own_up_topics() {
        let own = format!("fleet/v1/{DEVICE}/up/telemetry");
        assert_eq!(check_publish_topic(device(), own.as_bytes()), Ok(()));
        for topic in [
            format!("fleet/v1/{OTHER}/up/telemetry"),
            format!("fleet/v1/{DEVICE}/down/ack"),
            format!("fleet/v1/{DEVICE}/up/#"),
            "fleet/v1/+/up/telemetry".to_owned(),
            "anything".to_owned(),
        ] {
            assert_eq!(
                check_publish_topic(device(), topic.as_bytes()),
                Err(Refusal::PublishTopic),
                "{topic}"
            );
        }
        assert_eq!(
            check_publish_topic(device(), b"fleet/v1/\xff/up/telemetry"),
            Err(Refusal::PublishTopic)
        );
    }

    #[test]
    fn will_only_on_own_up_topics_at_qos_0_or_1() {
        let presence = format!("fleet/v1/{DEVICE}/up/presence");
        assert_eq!(check_will(device(), None), Ok(()));
        assert_eq!(
            check_will(device(), Some(&will(&presence, QoS::AtLeastOnce))),
            Ok(())
        );
        assert_eq!(
            check_will(device(), Some(&will(&presence, QoS::ExactlyOnce))),
            Err(Refusal::WillTopic)
        );
        let foreign = format!("fleet/v1/{OTHER}/up/presence");
        assert_eq!(
            check_will(device(), Some(&will(&foreign, QoS::AtMostOnce))),
            Err(Refusal::WillTopic)
        );
    }

    #[test]
    fn a_subscribe_with_one_bad_filter_is_refused_whole() {
        let mut subscriptions = Subscriptions::new(8);
        let mut filters = [filter(&format!("fleet/v1/{DEVICE}/down/#")), filter("#")];
        assert_eq!(
            subscriptions.admit(device(), &mut filters),
            Err(Refusal::SubscribeTopic)
        );
        assert!(subscriptions.filters.is_empty());
        for path in [
            format!("fleet/v1/{OTHER}/down/#"),
            "fleet/v1/+/down/#".to_owned(),
            format!("fleet/v1/{DEVICE}/up/telemetry"),
            format!("$share/g/fleet/v1/{DEVICE}/down/#"),
        ] {
            assert_eq!(
                subscriptions.admit(device(), &mut [filter(&path)]),
                Err(Refusal::SubscribeTopic),
                "{path}"
            );
        }
    }

    #[test]
    fn subscriptions_are_capped_and_qos_2_downgraded() {
        let mut subscriptions = Subscriptions::new(2);
        let ack = format!("fleet/v1/{DEVICE}/down/ack");
        let cmd = format!("fleet/v1/{DEVICE}/down/cmd");
        let all = format!("fleet/v1/{DEVICE}/down/#");
        let mut first = [filter(&ack), filter(&cmd)];
        assert_eq!(subscriptions.admit(device(), &mut first), Ok(()));
        assert!(first.iter().all(|f| f.qos == QoS::AtLeastOnce));
        // Re-subscribing to a held filter does not count twice.
        assert_eq!(subscriptions.admit(device(), &mut [filter(&ack)]), Ok(()));
        assert_eq!(
            subscriptions.admit(device(), &mut [filter(&all)]),
            Err(Refusal::SubscriptionLimit)
        );
        subscriptions.remove(&[cmd]);
        assert_eq!(subscriptions.admit(device(), &mut [filter(&all)]), Ok(()));
    }

    #[test]
    fn a_filter_covers_the_topics_its_wildcards_allow() {
        let ack = format!("fleet/v1/{DEVICE}/down/ack");
        for filter in [
            ack.clone(),
            format!("fleet/v1/{DEVICE}/down/#"),
            format!("fleet/v1/{DEVICE}/down/+"),
            format!("fleet/v1/{DEVICE}/#"),
            "fleet/v1/+/down/ack".to_owned(),
        ] {
            assert!(filter_matches(&filter, &ack), "{filter}");
        }
        for filter in [
            format!("fleet/v1/{DEVICE}/down/cmd"),
            format!("fleet/v1/{DEVICE}/down"),
            format!("fleet/v1/{DEVICE}/down/ack/more"),
            format!("fleet/v1/{DEVICE}/down/+/+"),
            format!("fleet/v1/{OTHER}/down/#"),
        ] {
            assert!(!filter_matches(&filter, &ack), "{filter}");
        }
    }

    #[test]
    fn a_server_message_gets_the_highest_qos_granted_for_its_topic() {
        let mut subscriptions = Subscriptions::new(4);
        let ack = format!("fleet/v1/{DEVICE}/down/ack");
        assert_eq!(subscriptions.qos_for(&ack), None);
        let mut all = filter(&format!("fleet/v1/{DEVICE}/down/#"));
        all.qos = QoS::AtMostOnce;
        assert_eq!(subscriptions.admit(device(), &mut [all]), Ok(()));
        assert_eq!(subscriptions.qos_for(&ack), Some(QoS::AtMostOnce));
        assert_eq!(subscriptions.admit(device(), &mut [filter(&ack)]), Ok(()));
        assert_eq!(subscriptions.qos_for(&ack), Some(QoS::AtLeastOnce));
        subscriptions.remove(std::slice::from_ref(&ack));
        assert_eq!(subscriptions.qos_for(&ack), Some(QoS::AtMostOnce));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
        // Refill stops at the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }
}
