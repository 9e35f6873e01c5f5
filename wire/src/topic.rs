//! The MQTT topic layout, in one place for the broker's gateway, ingest and the
//! agent.
//!
//! ```text
//! fleet/v1/{device_id}/up/telemetry    device → server   Batch of telemetry records
//! fleet/v1/{device_id}/up/patch        device → server   Batch of patch status records
//! fleet/v1/{device_id}/up/events       device → server   Batch of agent event records
//! fleet/v1/{device_id}/up/presence     device → server   Presence (retained; the MQTT will)
//! fleet/v1/{device_id}/down/ack        server → device   Ack
//! fleet/v1/{device_id}/down/cmd        server → device   commands (reserved)
//! ```
//!
//! * `{device_id}` is the device's UUID in canonical form: lowercase, hyphenated.
//!   Any other spelling of the same UUID is refused, so that one device has
//!   exactly one set of topic strings and ACL patterns cannot be sidestepped.
//! * The tenant is not in the topic. The server resolves it from the
//!   authenticated identity. Keeping topics to `{device_id}` lets an external
//!   broker enforce them with one pattern ACL on the certificate's common name
//!   (= the device id), see [`MOSQUITTO_DEVICE_ACL`].
//! * The device's MQTT client id equals its device id.
//! * `v1` versions the topic layout, not the payloads; payloads carry their own
//!   [`SchemaVersion`](crate::SchemaVersion).
//! * Presence sits under `up/` although the broker publishes the will: it is
//!   still the device's statement, and under `up/` the one pattern ACL that lets
//!   a device write only its own `up/` topics covers its will too.

use std::fmt;

use crate::ids::DeviceId;
use uuid::Uuid;

use crate::{Record, RecordError, RecordKind};

/// The first two levels of every fleetplane topic.
pub const ROOT: &str = "fleet/v1";

/// Every device's `up` topics: what ingest consumes (in external mode through a shared
/// subscription; in embedded mode the gateway hands them over directly).
pub const INGEST_FILTER: &str = "fleet/v1/+/up/#";

/// Mosquitto pattern ACL lines confining each device to its own topics, for
/// external mode.
///
/// It relies on `use_identity_as_username true` in the listener, so that `%u`
/// is the certificate's common name, which is the device id. (`%c`, the client
/// id, is chosen by the client and must not be trusted.) Ingest's own identity
/// needs its own `user` block: read on `$share/{group}/fleet/v1/+/up/#`, write
/// on `fleet/v1/+/down/#`.
pub const MOSQUITTO_DEVICE_ACL: &str = "\
pattern write fleet/v1/%u/up/#
pattern read fleet/v1/%u/down/#
";

/// Which way a topic's messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the device to the server (`up`).
    Up,
    /// From the server to the device (`down`).
    Down,
}

/// The topics each device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// `up/telemetry`: batches of [`Telemetry`](crate::Telemetry) records.
    Telemetry,
    /// `up/patch`: batches of [`PatchStatus`](crate::PatchStatus) records.
    PatchStatus,
    /// `up/events`: batches of [`AgentEvent`](crate::AgentEvent) records.
    Events,
    /// `up/presence`: [`Presence`](crate::Presence), retained, also the will.
    Presence,
    /// `down/ack`: [`Ack`](crate::Ack).
    Ack,
    /// `down/cmd`: commands to the device (reserved; no payload defined yet).
    Command,
}

/// A topic of one device, parsed from a topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceTopic {
    /// The device the topic belongs to.
    pub device_id: DeviceId,
    /// Which of the device's topics it is.
    pub kind: TopicKind,
}

/// Why a string is not one of our device topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// It does not start with `fleet/v1/`.
    #[error("not a fleetplane topic")]
    NotFleetTopic,
    /// It contains `+` or `#`: a filter, not a topic name.
    #[error("wildcards are not allowed in a topic name")]
    Wildcard,
    /// The device level is not a UUID in canonical form.
    #[error("the device level is not a canonical (lowercase, hyphenated) UUID")]
    InvalidDeviceId,
    /// Under a device, but not one of its topics (unknown direction or kind,
    /// missing, empty or extra levels).
    #[error("not one of a device's topics")]
    UnknownTopic,
    /// A shared-subscription group name is empty or contains `/`, `+` or `#`.
    #[error("invalid shared subscription group name")]
    InvalidShareGroup,
}

impl TopicError {
    /// A stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFleetTopic => "not_fleet_topic",
            Self::Wildcard => "wildcard",
            Self::InvalidDeviceId => "invalid_device_id",
            Self::UnknownTopic => "unknown_topic",
            Self::InvalidShareGroup => "invalid_share_group",
        }
    }
}

impl Direction {
    /// The topic level: `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl TopicKind {
    /// Every topic kind.
    pub const ALL: [Self; 6] = [
        Self::Telemetry,
        Self::PatchStatus,
        Self::Events,
        Self::Presence,
        Self::Ack,
        Self::Command,
    ];

    /// Which way messages on this topic travel.
    pub fn direction(self) -> Direction {
        match self {
            Self::Telemetry | Self::PatchStatus | Self::Events | Self::Presence => Direction::Up,
            Self::Ack | Self::Command => Direction::Down,
        }
    }

    /// The last topic level, such as `telemetry`; also a stable metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::PatchStatus => "patch",
            Self::Events => "events",
            Self::Presence => "presence",
            Self::Ack => "ack",
            Self::Command => "cmd",
        }
    }

    /// The record kind a batch on this topic may carry; `None` for topics that
    /// carry no batches.
    pub fn record_kind(self) -> Option<RecordKind> {
        match self {
            Self::Telemetry => Some(RecordKind::Telemetry),
            Self::PatchStatus => Some(RecordKind::PatchStatus),
            Self::Events => Some(RecordKind::Event),
            Self::Presence | Self::Ack | Self::Command => None,
        }
    }

    /// Whether a batch on this topic may carry records of `kind`.
    pub fn carries(self, kind: RecordKind) -> bool {
        self.record_kind() == Some(kind)
    }

    /// The topic of this kind for `device_id`.
    pub fn topic(self, device_id: DeviceId) -> String {
        DeviceTopic {
            device_id,
            kind: self,
        }
        .to_string()
    }

    fn from_levels(direction: &str, leaf: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.direction().as_str() == direction && kind.as_str() == leaf)
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeviceTopic {
    /// Which way messages on this topic travel.
    pub fn direction(&self) -> Direction {
        self.kind.direction()
    }
}

/// Formats the topic name, `fleet/v1/{device_id}/{direction}/{kind}`.
impl fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ROOT}/{}/{}/{}",
            self.device_id,
            self.kind.direction().as_str(),
            self.kind.as_str()
        )
    }
}

/// `fleet/v1/{device_id}/up/telemetry`.
pub fn telemetry(device_id: DeviceId) -> String {
    TopicKind::Telemetry.topic(device_id)
}

/// `fleet/v1/{device_id}/up/patch`.
pub fn patch_status(device_id: DeviceId) -> String {
    TopicKind::PatchStatus.topic(device_id)
}

/// `fleet/v1/{device_id}/up/events`.
pub fn events(device_id: DeviceId) -> String {
    TopicKind::Events.topic(device_id)
}

/// `fleet/v1/{device_id}/up/presence`.
pub fn presence(device_id: DeviceId) -> String {
    TopicKind::Presence.topic(device_id)
}

/// `fleet/v1/{device_id}/down/ack`.
pub fn ack(device_id: DeviceId) -> String {
    TopicKind::Ack.topic(device_id)
}

/// `fleet/v1/{device_id}/down/cmd`.
pub fn command(device_id: DeviceId) -> String {
    TopicKind::Command.topic(device_id)
}

/// The filter the agent subscribes to: `fleet/v1/{device_id}/down/#`.
pub fn device_subscription(device_id: DeviceId) -> String {
    format!("{ROOT}/{device_id}/down/#")
}

/// The MQTT v5 shared-subscription filter ingest uses in external mode:
/// `$share/{group}/fleet/v1/+/up/#`. Instances in the same group split the
/// messages between them.
pub fn shared_ingest_filter(group: &str) -> Result<String, TopicError> {
    if group.is_empty() || group.contains(['/', '+', '#', '\0']) {
        return Err(TopicError::InvalidShareGroup);
    }
    Ok(format!("$share/{group}/{INGEST_FILTER}"))
}

/// Parses a topic name as one of a device's topics, refusing anything else.
///
/// Refused: wildcards, another root, a device level that is not a canonical
/// UUID, unknown directions or kinds, empty or extra levels.
pub fn parse_device_topic(topic: &str) -> Result<DeviceTopic, TopicError> {
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    let rest = topic
        .strip_prefix(ROOT)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(TopicError::NotFleetTopic)?;
    let mut levels = rest.split('/');
    let device_level = levels.next().unwrap_or_default();
    let device_id = DeviceId::parse_canonical(device_level).ok_or(TopicError::InvalidDeviceId)?;
    let (Some(direction), Some(leaf), None) = (levels.next(), levels.next(), levels.next()) else {
        return Err(TopicError::UnknownTopic);
    };
    let kind = TopicKind::from_levels(direction, leaf).ok_or(TopicError::UnknownTopic)?;
    Ok(DeviceTopic { device_id, kind })
}

/// Whether a topic name or filter stays within `fleet/v1/{device_id}/`.
///
/// This is the gateway's basic confinement rule. It holds only if the string
/// begins with the device's own prefix literally, so a wildcard at or above the
/// device level (`fleet/v1/+/...`, `fleet/#`) never passes. Below the prefix the
/// string must be a well-formed filter: `+` and `#` only as whole levels, `#`
/// only last, no empty levels.
pub fn is_under_device_prefix(device_id: DeviceId, topic_or_filter: &str) -> bool {
    below_device_prefix(device_id, topic_or_filter).is_some()
}

/// Whether the device `device_id` may publish to `topic`: one of its own `up`
/// topics.
pub fn device_may_publish(device_id: DeviceId, topic: &str) -> bool {
    parse_device_topic(topic)
        .is_ok_and(|parsed| parsed.device_id == device_id && parsed.direction() == Direction::Up)
}

/// Whether the device `device_id` may subscribe to `filter`: a filter within its
/// own `down` topics, such as [`device_subscription`].
pub fn device_may_subscribe(device_id: DeviceId, filter: &str) -> bool {
    below_device_prefix(device_id, filter)
        .is_some_and(|rest| rest.split('/').next() == Some(Direction::Down.as_str()))
}

/// Checks that a record may travel on the topic its batch arrived on.
///
/// Ingest refuses the record (not the batch) on error: a
/// [`Body::Unknown`](crate::Body::Unknown) record, or a record of a kind the
/// topic does not carry.
pub fn check_record(topic: TopicKind, record: &Record) -> Result<(), RecordError> {
    check_kind(topic, record.kind())
}

/// [`check_record`] of a record of `kind` (`None`: a kind this build does not know), as
/// [`BodyView::kind`](crate::BodyView::kind) tells it.
pub fn check_kind(topic: TopicKind, kind: Option<RecordKind>) -> Result<(), RecordError> {
    let kind = kind.ok_or(RecordError::UnknownKind)?;
    if !topic.carries(kind) {
        return Err(RecordError::WrongTopic {
            record: kind,
            topic,
        });
    }
    Ok(())
}

/// The part of `topic_or_filter` after `fleet/v1/{device_id}/`, if it starts
/// so and the rest is a well-formed, non-empty filter.
fn below_device_prefix(device_id: DeviceId, topic_or_filter: &str) -> Option<&str> {
    let mut buffer = Uuid::encode_buffer();
    let device_level = device_id.0.hyphenated().encode_lower(&mut buffer);
    let rest = topic_or_filter
        .strip_prefix(ROOT)?
        .strip_prefix('/')?
        .strip_prefix(&*device_level)?
        .strip_prefix('/')?;
    is_well_formed_filter(rest).then_some(rest)
}

/// Whether `filter` is a well-formed MQTT topic filter as fleetplane accepts one:
/// non-empty, `+` and `#` only as whole levels, `#` only as the last level, no
/// empty level and no NUL.
///
/// MQTT itself allows empty levels (`a//b`, `/a`); no fleetplane topic has one, so
/// they are refused. This is the one filter check: the confinement of a device's
/// subscriptions ([`device_may_subscribe`]) and the broker's in-process
/// subscriptions both use it.
///
/// ```
/// use wire::topic::is_well_formed_filter;
///
/// assert!(is_well_formed_filter("fleet/v1/+/up/#"));
/// assert!(!is_well_formed_filter("fleet/#/up"));
/// assert!(!is_well_formed_filter("fleet//up"));
/// ```
pub fn is_well_formed_filter(filter: &str) -> bool {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let well_formed = match level {
            "" => false,
            "+" => true,
            "#" => is_last,
            literal => !literal.contains(['+', '#', '\0']),
        };
        if !well_formed {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentEvent, Body, Started, Telemetry, UnixMillis};

    const DEVICE: &str = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94";
    const OTHER: &str = "0b9d7c3e-1a2f-4e5d-8c6b-7a9f0e1d2c3b";

    fn device() -> DeviceId {
        DeviceId::parse_canonical(DEVICE).unwrap()
    }

    fn other() -> DeviceId {
        DeviceId::parse_canonical(OTHER).unwrap()
    }

    #[test]
    fn builders_write_the_documented_layout() {
        let id = device();
        assert_eq!(telemetry(id), format!("fleet/v1/{DEVICE}/up/telemetry"));
        assert_eq!(patch_status(id), format!("fleet/v1/{DEVICE}/up/patch"));
        assert_eq!(events(id), format!("fleet/v1/{DEVICE}/up/events"));
        assert_eq!(presence(id), format!("fleet/v1/{DEVICE}/up/presence"));
        assert_eq!(ack(id), format!("fleet/v1/{DEVICE}/down/ack"));
        assert_eq!(command(id), format!("fleet/v1/{DEVICE}/down/cmd"));
        assert_eq!(device_subscription(id), format!("fleet/v1/{DEVICE}/down/#"));
    }

    #[test]
    fn every_built_topic_parses_back() {
        for kind in TopicKind::ALL {
            let topic = kind.topic(device());
            let parsed = parse_device_topic(&topic).unwrap();
            assert_eq!(
                parsed,
                DeviceTopic {
                    device_id: device(),
                    kind
                }
            );
            assert_eq!(parsed.direction(), kind.direction());
            assert_eq!(parsed.to_string(), topic);
        }
    }

    #[test]
    fn the_parser_refuses_wildcards() {
        for topic in [
            format!("fleet/v1/{DEVICE}/up/#"),
            format!("fleet/v1/{DEVICE}/up/+"),
            "fleet/v1/+/up/telemetry".to_owned(),
            "fleet/#".to_owned(),
            "#".to_owned(),
        ] {
            assert_eq!(
                parse_device_topic(&topic),
                Err(TopicError::Wildcard),
                "{topic}"
            );
        }
    }

    #[test]
    fn the_parser_refuses_other_roots() {
        for topic in [
            format!("fleet/v2/{DEVICE}/up/telemetry"),
            format!("/fleet/v1/{DEVICE}/up/telemetry"),
            format!("Fleet/v1/{DEVICE}/up/telemetry"),
            format!("$share/g/fleet/v1/{DEVICE}/up/telemetry"),
            "fleet/v1".to_owned(),
            "fleetv1/x".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                parse_device_topic(&topic),
                Err(TopicError::NotFleetTopic),
                "{topic}"
            );
        }
    }

    #[test]
    fn the_parser_refuses_non_canonical_device_ids() {
        let upper = DEVICE.to_uppercase();
        let simple = DEVICE.replace('-', "");
        for device_level in [
            upper.as_str(),
            simple.as_str(),
            &format!("{{{DEVICE}}}"),
            &format!("urn:uuid:{DEVICE}"),
            &DEVICE[1..],
            "",
            "not-a-uuid",
        ] {
            let topic = format!("fleet/v1/{device_level}/up/telemetry");
            assert_eq!(
                parse_device_topic(&topic),
                Err(TopicError::InvalidDeviceId),
                "{topic}"
            );
        }
    }

    #[test]
    fn the_parser_refuses_unknown_extra_and_empty_levels() {
        for rest in [
            "up/telemetry/extra",
            "up/telemetry/",
            "up",
            "up/",
            "",
            "/up/telemetry",
            "up//telemetry",
            "down/telemetry",
            "up/ack",
            "up/Telemetry",
            "sideways/telemetry",
            "up/inventory",
        ] {
            let topic = format!("fleet/v1/{DEVICE}/{rest}");
            assert_eq!(
                parse_device_topic(&topic),
                Err(TopicError::UnknownTopic),
                "{topic}"
            );
        }
        assert_eq!(
            parse_device_topic(&format!("fleet/v1/{DEVICE}")),
            Err(TopicError::UnknownTopic)
        );
    }

    #[test]
    fn topic_errors_have_labels() {
        assert_eq!(TopicError::Wildcard.reason(), "wildcard");
        assert_eq!(TopicError::NotFleetTopic.reason(), "not_fleet_topic");
        assert_eq!(TopicError::InvalidDeviceId.reason(), "invalid_device_id");
        assert_eq!(TopicError::UnknownTopic.reason(), "unknown_topic");
        assert_eq!(
            TopicError::InvalidShareGroup.reason(),
            "invalid_share_group"
        );
    }

    #[test]
    fn a_device_prefix_admits_its_own_topics_and_filters() {
        for filter in [
            format!("fleet/v1/{DEVICE}/up/telemetry"),
            format!("fleet/v1/{DEVICE}/down/#"),
            format!("fleet/v1/{DEVICE}/#"),
            format!("fleet/v1/{DEVICE}/+/ack"),
            format!("fleet/v1/{DEVICE}/up/+"),
        ] {
            assert!(is_under_device_prefix(device(), &filter), "{filter}");
        }
    }

    #[test]
    fn a_device_prefix_refuses_wildcards_at_or_above_the_device_level() {
        for filter in [
            "#".to_owned(),
            "fleet/#".to_owned(),
            "fleet/v1/#".to_owned(),
            "fleet/v1/+/up/telemetry".to_owned(),
            "fleet/+/+/up/telemetry".to_owned(),
            "+/v1/+/down/#".to_owned(),
            format!("$share/g/fleet/v1/{DEVICE}/down/#"),
        ] {
            assert!(!is_under_device_prefix(device(), &filter), "{filter}");
        }
    }

    #[test]
    fn a_device_prefix_refuses_other_devices_and_malformed_filters() {
        for filter in [
            format!("fleet/v1/{OTHER}/up/telemetry"),
            format!("fleet/v1/{}/up/telemetry", DEVICE.to_uppercase()),
            format!("fleet/v1/{DEVICE}"),
            format!("fleet/v1/{DEVICE}/"),
            format!("fleet/v1/{DEVICE}extra/up/telemetry"),
            format!("fleet/v1/{DEVICE}/#/up"),
            format!("fleet/v1/{DEVICE}/up#"),
            format!("fleet/v1/{DEVICE}/up/tele+metry"),
            format!("fleet/v1/{DEVICE}//telemetry"),
            format!("fleet/v1/{DEVICE}/up/\0"),
        ] {
            assert!(!is_under_device_prefix(device(), &filter), "{filter}");
        }
    }

    #[test]
    fn filters_have_wildcards_only_as_whole_levels_and_no_empty_levels() {
        for good in ["#", "+", "a", "a/+/b", "fleet/v1/+/up/#", INGEST_FILTER] {
            assert!(is_well_formed_filter(good), "{good}");
        }
        for bad in [
            "", "a/#/b", "a+", "a/b#", "#/", "a\0", "a//b", "/a", "a/", "/",
        ] {
            assert!(!is_well_formed_filter(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_device_publishes_only_to_its_own_up_topics() {
        assert!(device_may_publish(device(), &telemetry(device())));
        assert!(device_may_publish(device(), &presence(device())));
        assert!(!device_may_publish(device(), &ack(device())));
        assert!(!device_may_publish(device(), &command(device())));
        assert!(!device_may_publish(device(), &telemetry(other())));
        assert!(!device_may_publish(
            device(),
            &format!("fleet/v1/{DEVICE}/up/#")
        ));
        assert!(!device_may_publish(
            device(),
            &format!("fleet/v1/{DEVICE}/up/extra")
        ));
    }

    #[test]
    fn a_device_subscribes_only_within_its_own_down_topics() {
        assert!(device_may_subscribe(
            device(),
            &device_subscription(device())
        ));
        assert!(device_may_subscribe(device(), &ack(device())));
        assert!(!device_may_subscribe(
            device(),
            &format!("fleet/v1/{DEVICE}/#")
        ));
        assert!(!device_may_subscribe(
            device(),
            &format!("fleet/v1/{DEVICE}/+/ack")
        ));
        assert!(!device_may_subscribe(device(), &telemetry(device())));
        assert!(!device_may_subscribe(
            device(),
            &device_subscription(other())
        ));
        assert!(!device_may_subscribe(device(), "fleet/v1/+/down/#"));
    }

    #[test]
    fn the_shared_ingest_filter_has_the_documented_shape() {
        assert_eq!(
            shared_ingest_filter("ingest").unwrap(),
            "$share/ingest/fleet/v1/+/up/#"
        );
        for group in ["", "a/b", "a+", "#"] {
            assert_eq!(
                shared_ingest_filter(group),
                Err(TopicError::InvalidShareGroup),
                "{group:?}"
            );
        }
    }

    #[test]
    fn the_mosquitto_acl_confines_devices_by_identity() {
        assert!(MOSQUITTO_DEVICE_ACL.contains("pattern write fleet/v1/%u/up/#"));
        assert!(MOSQUITTO_DEVICE_ACL.contains("pattern read fleet/v1/%u/down/#"));
        assert!(!MOSQUITTO_DEVICE_ACL.contains("%c"));
    }

    fn record(body: Body) -> Record {
        Record {
            seq: 1,
            recorded_at: UnixMillis(0),
            body,
        }
    }

    #[test]
    fn each_record_kind_travels_on_its_own_topic_only() {
        let telemetry = record(Body::Telemetry(Telemetry::default()));
        let event = record(Body::Event(AgentEvent::Started(Started {
            agent_version: "1".into(),
        })));
        assert_eq!(check_record(TopicKind::Telemetry, &telemetry), Ok(()));
        assert_eq!(check_record(TopicKind::Events, &event), Ok(()));
        let error = check_record(TopicKind::Events, &telemetry).unwrap_err();
        assert_eq!(
            error,
            RecordError::WrongTopic {
                record: RecordKind::Telemetry,
                topic: TopicKind::Events
            }
        );
        assert_eq!(error.reason(), "wrong_topic");
        for topic in [TopicKind::Presence, TopicKind::Ack, TopicKind::Command] {
            assert!(check_record(topic, &telemetry).is_err());
        }
    }

    #[test]
    fn every_record_kind_has_exactly_one_topic() {
        for kind in RecordKind::ALL {
            let topics: Vec<_> = TopicKind::ALL
                .into_iter()
                .filter(|topic| topic.carries(kind))
                .collect();
            assert_eq!(topics.len(), 1, "{kind}");
            assert_eq!(topics[0].direction(), Direction::Up);
        }
    }

    #[test]
    fn an_unknown_record_is_refused_on_every_topic() {
        let unknown = record(Body::Unknown {
            kind: "inventory".into(),
        });
        for topic in TopicKind::ALL {
            let error = check_record(topic, &unknown).unwrap_err();
            assert_eq!(error, RecordError::UnknownKind);
            assert_eq!(error.reason(), "unknown_record_kind");
        }
    }
}
