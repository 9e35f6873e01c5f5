//! Things that happened in the agent itself.

use serde::de::{Deserialize, Deserializer, MapAccess};
use serde::{Serialize, Serializer};

use crate::bounded::{self, EmptyPayload, OpenEnum};
use crate::limits::{self, MAX_TEXT_BYTES};
use crate::{DecodeError, UnixMillis};

/// An event in the life of the agent.
///
/// On the wire a one-entry map `{ kind: payload }`, with readable kind names:
/// events are rare, so short keys would save nothing worth the obscurity. A kind
/// this build does not know decodes as [`Other`](Self::Other), so adding an
/// event kind is a minor version change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The agent started. Kind `started`.
    Started(Started),
    /// The outbox was full and the agent dropped records to make room. Kind
    /// `outbox_overflow`.
    OutboxOverflow(OutboxOverflow),
    /// The agent renewed its device certificate. Kind `certificate_renewed`.
    CertificateRenewed(CertificateRenewed),
    /// A metric or inventory collector failed. Kind `collector_error`.
    CollectorError(CollectorError),
    /// The agent started a new sequence space. Kind `epoch_started`.
    EpochStarted(EpochStarted),
    /// An event kind this build does not know; its payload was skipped.
    Other {
        /// The kind as it appeared on the wire.
        kind: String,
    },
}

/// Payload of [`AgentEvent::Started`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Started {
    /// The agent's version, such as `0.3.1`.
    pub agent_version: String,
}

/// Payload of [`AgentEvent::OutboxOverflow`].
///
/// The dropped records' sequence numbers are never sent, so this event is how the
/// server learns of the gap: ingest must not wait for them before advancing the
/// ack watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxOverflow {
    /// How many records were dropped.
    pub dropped: u64,
    /// The lowest dropped sequence number.
    pub first_seq: u64,
    /// The highest dropped sequence number.
    pub last_seq: u64,
}

/// Payload of [`AgentEvent::CertificateRenewed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertificateRenewed {
    /// The expiry of the new certificate.
    pub not_after: UnixMillis,
}

/// Payload of [`AgentEvent::CollectorError`]. (A record of a failure, not a Rust
/// error type.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollectorError {
    /// Which collector failed, such as `thermal` or `apt`.
    pub collector: String,
    /// What went wrong, for humans.
    pub message: String,
}

/// Payload of [`AgentEvent::EpochStarted`]: the server acknowledged sequence numbers this
/// outbox never assigned (`server_watermark > last_appended`), or asked for a new epoch because
/// it holds other records under numbers the outbox used (an outbox restored from an older
/// copy, or someone else published with the device's identity), so the agent numbers its
/// records in a new [`Epoch`](crate::Epoch) instead of having them taken for duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochStarted {
    /// The epoch left behind.
    pub previous: u64,
    /// The new epoch's id.
    pub epoch: u64,
    /// The first sequence number of the new epoch.
    pub first_seq: u64,
    /// The watermark the server acknowledged in the previous epoch.
    pub server_watermark: u64,
    /// The last sequence number the outbox had assigned when that ack came.
    pub last_appended: u64,
}

const STARTED: &str = "started";
const EPOCH_STARTED: &str = "epoch_started";
const OUTBOX_OVERFLOW: &str = "outbox_overflow";
const CERTIFICATE_RENEWED: &str = "certificate_renewed";
const COLLECTOR_ERROR: &str = "collector_error";

impl AgentEvent {
    /// The kind name written on the wire.
    pub fn kind(&self) -> &str {
        match self {
            Self::Started(_) => STARTED,
            Self::OutboxOverflow(_) => OUTBOX_OVERFLOW,
            Self::CertificateRenewed(_) => CERTIFICATE_RENEWED,
            Self::CollectorError(_) => COLLECTOR_ERROR,
            Self::EpochStarted(_) => EPOCH_STARTED,
            Self::Other { kind } => kind,
        }
    }

    /// Checks string lengths and characters against [`limits`](crate::limits).
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Self::Started(started) => {
                limits::check_name("started.agent_version", &started.agent_version)
            }
            Self::CollectorError(error) => {
                limits::check_name("collector_error.collector", &error.collector)?;
                limits::check_len("collector_error.message", &error.message, MAX_TEXT_BYTES)
            }
            Self::Other { kind } => limits::check_name("event.kind", kind),
            Self::OutboxOverflow(_) | Self::CertificateRenewed(_) | Self::EpochStarted(_) => Ok(()),
        }
    }
}

impl Serialize for AgentEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            Self::Started(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::OutboxOverflow(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::CertificateRenewed(payload) => {
                bounded::serialize_tagged(serializer, kind, payload)
            }
            Self::CollectorError(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::EpochStarted(payload) => bounded::serialize_tagged(serializer, kind, payload),
            Self::Other { .. } => bounded::serialize_tagged(serializer, kind, &EmptyPayload {}),
        }
    }
}

impl<'de> Deserialize<'de> for AgentEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bounded::open_enum(deserializer)
    }
}

impl OpenEnum for AgentEvent {
    const EXPECTING: &'static str = "an agent event";

    fn known<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Option<Self>, A::Error> {
        let event = match kind {
            STARTED => Self::Started(map.next_value()?),
            OUTBOX_OVERFLOW => Self::OutboxOverflow(map.next_value()?),
            CERTIFICATE_RENEWED => Self::CertificateRenewed(map.next_value()?),
            COLLECTOR_ERROR => Self::CollectorError(map.next_value()?),
            EPOCH_STARTED => Self::EpochStarted(map.next_value()?),
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    fn unknown(kind: String) -> Self {
        Self::Other { kind }
    }
}
