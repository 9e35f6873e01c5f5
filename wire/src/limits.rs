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

/// Refuses free text longer than `max` bytes, or holding a character the server cannot store
/// or display safely: NUL (PostgreSQL refuses it in text) or a control character other than
/// tab, line feed and carriage return (error messages may span lines).
pub(crate) fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    check_length(field, value, max)?;
    check_characters(field, value, |c| matches!(c, '\t' | '\n' | '\r'))
}

/// Refuses a name longer than [`MAX_NAME_BYTES`], or holding any control character (C0, DEL
/// or C1; NUL among them): names are single-line identifiers.
pub(crate) fn check_name(field: &'static str, value: &str) -> Result<(), DecodeError> {
    check_length(field, value, MAX_NAME_BYTES)?;
    check_characters(field, value, |_| false)
}

fn check_length(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// Refuses the first control character of `value` that `allowed` does not admit.
fn check_characters(
    field: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), DecodeError> {
    match value
        .char_indices()
        .find(|&(_, c)| c.is_control() && !allowed(c))
    {
        Some((at, c)) => Err(DecodeError::ForbiddenCharacter {
            field,
            code: u32::from(c),
            at,
        }),
        None => Ok(()),
    }
}

/// Refuses a collection of more than `max` entries.
pub(crate) fn check_count(field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::TooManyEntries { field, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AgentEvent, Batch, Body, CollectorError, Package, PackageManager, PatchStatus, Record,
        UnixMillis,
    };

    fn patch_with_package(name: &str) -> Record {
        Record {
            seq: 1,
            recorded_at: UnixMillis(1),
            body: Body::PatchStatus(PatchStatus {
                os_id: "debian".into(),
                os_version: "12".into(),
                package_manager: PackageManager::Apt,
                packages: vec![Package {
                    name: name.into(),
                    installed: "1.0".into(),
                    candidate: None,
                    security: false,
                }],
                reboot_required: false,
                lists_refreshed_at: None,
            }),
        }
    }

    fn collector_error(message: &str) -> Record {
        Record {
            seq: 1,
            recorded_at: UnixMillis(1),
            body: Body::Event(AgentEvent::CollectorError(CollectorError {
                collector: "apt".into(),
                message: message.into(),
            })),
        }
    }

    fn decoded(record: Record) -> Result<Batch, DecodeError> {
        crate::decode_batch(&crate::encode_batch(&Batch::new(vec![record])))
    }

    #[test]
    fn a_nul_in_a_package_name_is_refused_with_its_field_and_place() {
        let record = patch_with_package("lib\0c6");
        let expected = DecodeError::ForbiddenCharacter {
            field: "package.name",
            code: 0,
            at: 3,
        };
        assert_eq!(record.validate(), Err(expected.clone()));
        assert_eq!(decoded(record), Err(expected.clone()));
        assert_eq!(expected.reason(), "forbidden_character");
        assert_eq!(
            expected.to_string(),
            "package.name contains the control character U+0000 at byte 3"
        );
    }

    #[test]
    fn names_refuse_every_control_character() {
        for c in [
            '\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}',
        ] {
            let name = format!("pkg{c}");
            assert!(
                matches!(
                    decoded(patch_with_package(&name)),
                    Err(DecodeError::ForbiddenCharacter { at: 3, .. })
                ),
                "U+{:04X}",
                u32::from(c)
            );
        }
        // Printable Unicode is a name like any other.
        assert!(decoded(patch_with_package("libäöü-€")).is_ok());
    }

    #[test]
    fn free_text_keeps_line_breaks_and_tabs_but_no_other_control_character() {
        assert!(decoded(collector_error("apt failed:\n\tline 2\r\n")).is_ok());
        for c in ['\0', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}'] {
            let message = format!("bad{c}");
            assert!(
                matches!(
                    decoded(collector_error(&message)),
                    Err(DecodeError::ForbiddenCharacter {
                        field: "collector_error.message",
                        ..
                    })
                ),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }
}
