//! The envelope: a batch of sequenced, timestamped records.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess};
use serde::{Serialize, Serializer};

use crate::bounded::{self, EmptyPayload, OpenEnum};
use crate::limits::{self, MAX_RECORDS_PER_BATCH};
use crate::{AgentEvent, DecodeError, PatchStatus, SchemaVersion, Telemetry, UnixMillis};

/// The payload of one device → server MQTT message.
///
/// The device and tenant are not in it: they come from the authenticated
/// connection, never from the payload.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Batch {
    /// The schema version the sender wrote. Key `v`.
    #[serde(rename = "v")]
    pub version: SchemaVersion,

    /// The records, in increasing sequence order, at most
    /// [`MAX_RECORDS_PER_BATCH`](crate::limits::MAX_RECORDS_PER_BATCH). Key `r`.
    #[serde(
        rename = "r",
        deserialize_with = "bounded::vec::<_, _, MAX_RECORDS_PER_BATCH>"
    )]
    pub records: Vec<Record>,

    /// The sender's sequence space: see [`Epoch`]. Key `e`; absent (as agents before epochs
    /// send it) means epoch 0 starting at sequence number 1.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// A device's sequence space. Sequence numbers are unique within one epoch. An agent whose
/// state directory was wiped or restored from an older copy cannot know which numbers it
/// already used, so it starts a new epoch (a random id, recorded in its outbox) and says from
/// which sequence number on it counts: ingest keeps one watermark per device, for the epoch it
/// saw last, and starts it afresh at `first_seq - 1` when a new epoch appears. A record of an
/// epoch ingest has already left behind is not stored (the agent sends it again in its new
/// epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Epoch {
    /// Random, chosen by the agent when it starts the epoch; 0 is the epoch of agents and
    /// outboxes from before epochs. Key `i`.
    #[serde(rename = "i")]
    pub id: u64,
    /// The lowest sequence number the epoch uses (at least 1): everything below it counts as
    /// handled in this epoch. Key `f`.
    #[serde(rename = "f")]
    pub first_seq: u64,
}

impl Epoch {
    /// The epoch of senders that name none: 0, from sequence number 1.
    pub const LEGACY: Epoch = Epoch {
        id: 0,
        first_seq: 1,
    };
}

/// One thing the device reports, with its place in the device's sequence.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Record {
    /// The device's sequence number for this record. Sequence numbers start at 1
    /// and strictly increase over the device's life, across all record kinds;
    /// ingest stores each (tenant, device, seq) once, so a replay is harmless.
    /// Key `s`.
    #[serde(rename = "s")]
    pub seq: u64,

    /// When the device produced the record, by its own clock. Key `t`.
    #[serde(rename = "t")]
    pub recorded_at: UnixMillis,

    /// What the record says. Key `b`.
    #[serde(rename = "b")]
    pub body: Body,
}

/// The content of a [`Record`].
///
/// On the wire a one-entry map `{ kind: payload }` with the kinds `tel`, `pat`
/// and `evt`. A kind this build does not know decodes as
/// [`Unknown`](Self::Unknown) instead of failing the batch: ingest refuses that
/// one record (see [`topic::check_record`](crate::topic::check_record)) and
/// keeps the others.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A metrics sample. Kind `tel`.
    Telemetry(Telemetry),
    /// A patch status report. Kind `pat`.
    PatchStatus(PatchStatus),
    /// An agent event. Kind `evt`.
    Event(AgentEvent),
    /// A record kind this build does not know, from a newer minor version. Its
    /// payload was skipped.
    Unknown {
        /// The kind as it appeared on the wire.
        kind: String,
    },
}

/// The kinds of [`Body`] this build knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// [`Body::Telemetry`].
    Telemetry,
    /// [`Body::PatchStatus`].
    PatchStatus,
    /// [`Body::Event`].
    Event,
}

const TELEMETRY: &str = "tel";
const PATCH_STATUS: &str = "pat";
const EVENT: &str = "evt";

impl Batch {
    /// A batch of `records` in the current schema version.
    pub fn new(records: Vec<Record>) -> Self {
        Self {
            version: SchemaVersion::CURRENT,
            records,
            epoch: None,
        }
    }

    /// A batch of `records` in `epoch`.
    pub fn in_epoch(records: Vec<Record>, epoch: Epoch) -> Self {
        Self {
            epoch: Some(epoch),
            ..Self::new(records)
        }
    }

    /// The batch's epoch ([`Epoch::LEGACY`] when it names none).
    pub fn epoch(&self) -> Epoch {
        self.epoch.unwrap_or(Epoch::LEGACY)
    }

    /// Applies the checks [`decode_batch`](crate::decode_batch) applies after
    /// parsing: the record count, increasing sequence numbers, and each record's
    /// [`validate`](Record::validate).
    ///
    /// The agent runs this before publishing, so that it never sends a batch
    /// ingest would refuse. (It still has to check the encoded size against the
    /// broker's limit.)
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.records.len() > MAX_RECORDS_PER_BATCH {
            return Err(DecodeError::TooManyRecords {
                max: MAX_RECORDS_PER_BATCH,
            });
        }
        let mut previous = 0;
        for record in &self.records {
            if record.seq <= previous {
                return Err(DecodeError::SeqNotIncreasing {
                    previous,
                    seq: record.seq,
                });
            }
            previous = record.seq;
            record.validate()?;
        }
        Ok(())
    }

    /// The highest sequence number in the batch, if it holds any record.
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|record| record.seq)
    }
}

impl Record {
    /// Checks the record's counts and string lengths against
    /// [`limits`](crate::limits).
    ///
    /// The agent must run this before a record enters its outbox: a record that
    /// fails it would be refused by ingest on every retry.
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.body.validate()
    }

    /// The kind of the record, or `None` for [`Body::Unknown`].
    pub fn kind(&self) -> Option<RecordKind> {
        self.body.kind()
    }
}

impl Body {
    /// The kind of the body, or `None` for [`Body::Unknown`].
    pub fn kind(&self) -> Option<RecordKind> {
        match self {
            Self::Telemetry(_) => Some(RecordKind::Telemetry),
            Self::PatchStatus(_) => Some(RecordKind::PatchStatus),
            Self::Event(_) => Some(RecordKind::Event),
            Self::Unknown { .. } => None,
        }
    }

    /// Checks the body's counts and string lengths against
    /// [`limits`](crate::limits): what [`Record::validate`] and
    /// [`decode_body`](crate::decode_body) check.
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Self::Telemetry(telemetry) => telemetry.validate(),
            Self::PatchStatus(status) => status.validate(),
            Self::Event(event) => event.validate(),
            Self::Unknown { kind } => limits::check_name("record.kind", kind),
        }
    }

    fn wire_kind(&self) -> &str {
        match self {
            Self::Telemetry(_) => TELEMETRY,
            Self::PatchStatus(_) => PATCH_STATUS,
            Self::Event(_) => EVENT,
            Self::Unknown { kind } => kind,
        }
    }
}

impl RecordKind {
    /// Every kind, for tests and for registering metrics up front.
    pub const ALL: [Self; 3] = [Self::Telemetry, Self::PatchStatus, Self::Event];

    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::PatchStatus => "patch_status",
            Self::Event => "event",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.wire_kind();
        match self {
            Self::Telemetry(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::PatchStatus(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::Event(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::Unknown { .. } => bounded::serialize_tagged(serializer, kind, &EmptyPayload {}),
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bounded::open_enum(deserializer)
    }
}

impl OpenEnum for Body {
    const EXPECTING: &'static str = "a record body";

    fn known<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Option<Self>, A::Error> {
        let body = match kind {
            TELEMETRY => Self::Telemetry(map.next_value()?),
            PATCH_STATUS => Self::PatchStatus(map.next_value()?),
            EVENT => Self::Event(map.next_value()?),
            _ => return Ok(None),
        };
        Ok(Some(body))
    }

    fn unknown(kind: String) -> Self {
        Self::Unknown { kind }
    }
}
