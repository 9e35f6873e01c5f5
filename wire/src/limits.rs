//! Bounds on what a message may hold.
//!
//! The counts and lengths here are part of the protocol, not deployment
//! settings: the agent must stay under them (it checks with
//! [`Record::validate`](crate::Record::validate) before a record enters its
//! outbox) and ingest refuses anything above them. A limit may be raised only in a
//! new minor version, once every server accepts the new value; it may never be
//! lowered within a major version.
//!
//! Only the byte size of a whole message is configurable, because it must match
//! the broker's maximum packet size, which is deployment configuration.

use crate::DecodeError;

/// Default maximum size of one MQTT payload, in bytes (1 MiB).
///
/// Sized for a full package inventory: [`MAX_PACKAGES`] typical packages (a
/// name and a version, about 35 encoded bytes) take a third of it. Brokers must
/// accept payloads of this size: set rumqttd's `max_payload_size` to match.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Maximum size of an [`Ack`](crate::Ack) or [`Presence`](crate::Presence)
/// message, in bytes. Both are a few bytes long; anything bigger is hostile.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 256;

/// Maximum number of records in one [`Batch`](crate::Batch).
pub const MAX_RECORDS_PER_BATCH: usize = 1024;

/// Maximum number of packages in one [`PatchStatus`](crate::PatchStatus).
pub const MAX_PACKAGES: usize = 10_000;

/// Maximum number of named custom metrics in one [`Telemetry`](crate::Telemetry).
pub const MAX_CUSTOM_METRICS: usize = 64;

/// Maximum number of entries in each per-component list of a
/// [`Telemetry`](crate::Telemetry): disks, thermal zones, network interfaces.
pub const MAX_COMPONENTS: usize = 256;

/// Maximum length in bytes of a name or identifier: package names and versions,
/// mount points, zone and interface names, metric names, OS ids, kinds.
pub const MAX_NAME_BYTES: usize = 256;

/// Maximum length in bytes of free text, such as an error message in an event.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Maximum nesting depth of CBOR arrays, maps and tags. The schema itself nests
/// 7 deep; the rest is headroom for fields added in later minor versions.
/// Deeper input is refused before it can exhaust the stack.
pub(crate) const MAX_NESTING: usize = 32;

/// Refuses a string longer than `max` bytes.
pub(crate) fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// Refuses a name longer than [`MAX_NAME_BYTES`].
pub(crate) fn check_name(field: &'static str, value: &str) -> Result<(), DecodeError> {
    check_len(field, value, MAX_NAME_BYTES)
}

/// Refuses a collection of more than `max` entries.
pub(crate) fn check_count(field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::TooManyEntries { field, max });
    }
    Ok(())
}
