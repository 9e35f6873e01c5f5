//! Every way decoding refuses input, and proof that lying length headers cost
//! nothing.

use std::collections::BTreeMap;

use crate::common::{assert_malformed, assert_refused_fast, raw, HUGE};
use wire::limits::{
    DEFAULT_MAX_MESSAGE_BYTES, MAX_COMPONENTS, MAX_CONTROL_MESSAGE_BYTES, MAX_CUSTOM_METRICS,
    MAX_NAME_BYTES, MAX_PACKAGES, MAX_RECORDS_PER_BATCH, MAX_TEXT_BYTES,
};
use wire::{
    decode_ack, decode_batch, decode_batch_with_limit, decode_presence, encode_batch, AgentEvent,
    Batch, Body, CollectorError, DecodeError, Disk, Record, Started, Telemetry, UnixMillis,
};

// --- size ---------------------------------------------------------------

#[test]
fn oversize_input_is_refused_before_parsing() {
    // Not CBOR at all: the size check must come first, or this would be
    // reported as malformed.
    let garbage = vec![0xff; DEFAULT_MAX_MESSAGE_BYTES + 1];
    let error = decode_batch(&garbage).unwrap_err();
    assert_eq!(
        error,
        DecodeError::TooLarge {
            len: DEFAULT_MAX_MESSAGE_BYTES + 1,
            max: DEFAULT_MAX_MESSAGE_BYTES
        }
    );
    assert_eq!(error.reason(), "oversize");
}

#[test]
fn the_size_limit_is_configurable_and_inclusive() {
    let bytes = encode_batch(&crate::common::batch_of(
        Body::Telemetry(Default::default()),
    ));
    assert!(decode_batch_with_limit(&bytes, bytes.len()).is_ok());
    assert_eq!(
        decode_batch_with_limit(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        })
    );
}

#[test]
fn control_messages_have_a_tiny_size_limit() {
    let garbage = vec![0; MAX_CONTROL_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode_ack(&garbage),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_presence(&garbage),
        Err(DecodeError::TooLarge { .. })
    ));
}

// --- lying length headers -------------------------------------------------

#[test]
fn a_top_level_array_claiming_four_billion_elements_is_refused_fast() {
    assert_refused_fast(decode_batch, &raw::array(HUGE));
    assert_refused_fast(decode_batch, &raw::array(u64::MAX));
}

#[test]
fn a_records_array_claiming_four_billion_elements_is_refused_fast() {
    assert_refused_fast(
        decode_batch,
        &[raw::batch_prefix(), raw::array(HUGE)].concat(),
    );
    assert_refused_fast(
        decode_batch,
        &[raw::batch_prefix(), raw::array(u64::MAX)].concat(),
    );
}

#[test]
fn a_map_claiming_four_billion_entries_is_refused_fast() {
    assert_refused_fast(decode_batch, &raw::map(HUGE));
    // The custom metrics map of a telemetry body.
    assert_refused_fast(decode_batch, &raw::body_field("tel", "x", raw::map(HUGE)));
}

#[test]
fn nested_lists_claiming_four_billion_elements_are_refused_fast() {
    // Disks, and packages.
    assert_refused_fast(decode_batch, &raw::body_field("tel", "d", raw::array(HUGE)));
    assert_refused_fast(decode_batch, &raw::body_field("pat", "p", raw::array(HUGE)));
}

#[test]
fn a_string_claiming_four_gigabytes_is_refused_fast() {
    let name = [
        raw::map(1),
        raw::text("agent_version"),
        raw::head(3, HUGE),
        b"abc".to_vec(),
    ];
    assert_refused_fast(
        decode_batch,
        &raw::body_field("evt", "started", name.concat()),
    );
    // As a map key, and as the record kind.
    assert_refused_fast(decode_batch, &[raw::map(1), raw::head(3, HUGE)].concat());
    assert_refused_fast(
        decode_batch,
        &[raw::body_prefix(), raw::head(3, HUGE)].concat(),
    );
}

#[test]
fn unknown_fields_claiming_huge_lengths_are_refused_fast() {
    for lie in [
        raw::array(HUGE),
        raw::map(HUGE),
        raw::head(2, HUGE),
        raw::head(3, HUGE),
    ] {
        assert_refused_fast(
            decode_batch,
            &[raw::versioned_map(3), raw::text("new"), lie].concat(),
        );
    }
}

#[test]
fn a_version_array_claiming_four_billion_elements_is_refused_fast() {
    let bytes = [
        raw::map(1),
        raw::text("v"),
        raw::array(HUGE),
        raw::uint(1),
        raw::uint(0),
    ];
    assert_refused_fast(decode_batch, &bytes.concat());
}

// --- structure ------------------------------------------------------------

/// A batch with an unknown field `key` whose value is `head` 10,000 times around a zero.
fn nested_10_000_deep(key: &str, head: u8) -> Vec<u8> {
    let mut bytes = [raw::versioned_map(2), raw::text(key)].concat();
    bytes.extend(std::iter::repeat_n(head, 10_000));
    bytes.push(0x00);
    bytes
}

#[test]
fn deep_nesting_is_refused() {
    // 10,000 nested arrays inside an unknown field: without a limit the skip
    // would recurse 10,000 deep.
    let Err(DecodeError::Malformed(message)) = decode_batch(&nested_10_000_deep("deep", 0x81))
    else {
        panic!("deep nesting accepted");
    };
    assert!(message.contains("nested deeper"), "{message}");
}

#[test]
fn many_nested_tags_are_refused() {
    // Tag 6, 10,000 times.
    assert_malformed(decode_batch(&nested_10_000_deep("tags", 0xc6)));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_batch(&crate::common::batch_of(
        Body::Telemetry(Default::default()),
    ));
    bytes.push(0x00);
    let Err(DecodeError::Malformed(message)) = decode_batch(&bytes) else {
        panic!("trailing byte accepted");
    };
    assert!(message.contains("1 bytes after"), "{message}");
}

#[test]
fn truncated_input_is_refused() {
    let bytes = encode_batch(&crate::common::batch_of(Body::Telemetry(
        crate::common::full_telemetry(),
    )));
    for len in 0..bytes.len() {
        assert!(
            decode_batch(&bytes[..len]).is_err(),
            "prefix of {len} accepted"
        );
    }
}

#[test]
fn empty_input_is_refused() {
    assert_malformed(decode_batch(&[]));
}

#[test]
fn not_a_map_is_refused() {
    assert_malformed(decode_batch(&raw::text("hello")));
    assert_malformed(decode_batch(&raw::array(0)));
}

#[test]
fn a_missing_version_is_refused() {
    let bytes = [raw::map(1), raw::text("r"), raw::array(0)].concat();
    let Err(DecodeError::Malformed(message)) = decode_batch(&bytes) else {
        panic!("versionless batch accepted");
    };
    assert!(message.contains("missing field `v`"), "{message}");
}

#[test]
fn missing_records_are_refused() {
    assert_malformed(decode_batch(&raw::versioned_map(1)));
}

#[test]
fn a_body_with_two_kinds_is_refused() {
    let body = [
        raw::map(2),
        raw::text("tel"),
        raw::map(0),
        raw::text("pat"),
        raw::map(0),
    ];
    assert_malformed(decode_batch(&raw::one_record(raw::uint(1), body.concat())));
}

#[test]
fn an_empty_body_is_refused() {
    assert_malformed(decode_batch(&raw::one_record(raw::uint(1), raw::map(0))));
}

#[test]
fn a_wrong_type_is_refused() {
    // "s" as text instead of an integer.
    let body = [raw::map(1), raw::text("tel"), raw::map(0)].concat();
    assert_malformed(decode_batch(&raw::one_record(raw::text("1"), body)));
}

#[test]
fn a_repeated_field_is_refused() {
    let bytes = [
        raw::versioned_map(3),
        raw::text("r"),
        raw::array(0),
        raw::text("r"),
        raw::array(0),
    ];
    assert_malformed(decode_batch(&bytes.concat()));
}

#[test]
fn a_repeated_custom_metric_name_is_refused() {
    let custom = [
        raw::map(2),
        raw::text("rpm"),
        raw::float(1.0),
        raw::text("rpm"),
        raw::float(2.0),
    ];
    let Err(DecodeError::Malformed(message)) =
        decode_batch(&raw::body_field("tel", "x", custom.concat()))
    else {
        panic!("repeated metric accepted");
    };
    assert!(message.contains("repeated map key"), "{message}");
}

#[test]
fn malformed_descriptions_are_truncated() {
    // Serde quotes the offending string; a device must not be able to make its
    // stored "last error" a megabyte long.
    let long = "x".repeat(100_000);
    let bytes = [
        raw::batch_prefix(),
        raw::array(1),
        raw::map(1),
        raw::text("s"),
        raw::text(&long),
    ];
    let Err(DecodeError::Malformed(message)) = decode_batch(&bytes.concat()) else {
        panic!("accepted");
    };
    assert!(message.chars().count() <= 201, "{} chars", message.len());
}

// --- counts ---------------------------------------------------------------

fn telemetry_record(seq: u64) -> Record {
    Record {
        seq,
        recorded_at: UnixMillis(seq),
        body: Body::Telemetry(Telemetry::default()),
    }
}

#[test]
fn too_many_records_are_refused() {
    let at_limit = Batch::new(
        (1..=MAX_RECORDS_PER_BATCH as u64)
            .map(telemetry_record)
            .collect(),
    );
    assert!(decode_batch(&encode_batch(&at_limit)).is_ok());

    let over = Batch::new(
        (1..=MAX_RECORDS_PER_BATCH as u64 + 1)
            .map(telemetry_record)
            .collect(),
    );
    let error = decode_batch(&encode_batch(&over)).unwrap_err();
    assert_eq!(
        error,
        DecodeError::TooManyRecords {
            max: MAX_RECORDS_PER_BATCH
        }
    );
    assert_eq!(error.reason(), "too_many_records");
    assert_eq!(over.validate(), Err(error));
}

#[test]
fn far_too_many_records_are_refused_without_keeping_them() {
    // 50,000 records, every one present in the input: still refused, and the
    // decoder only ever holds the first MAX + 1.
    let over = Batch::new((1..=50_000).map(telemetry_record).collect());
    let bytes = encode_batch(&over);
    assert_eq!(
        decode_batch(&bytes),
        Err(DecodeError::TooManyRecords {
            max: MAX_RECORDS_PER_BATCH
        })
    );
}

fn assert_too_many(body: Body, field: &str, max: usize) {
    let error = decode_batch(&encode_batch(&crate::common::batch_of(body))).unwrap_err();
    let DecodeError::TooManyEntries {
        field: got,
        max: got_max,
    } = error
    else {
        panic!("expected TooManyEntries for {field}, got {error:?}");
    };
    assert_eq!((got, got_max), (field, max));
    assert_eq!(error.reason(), "too_many_entries");
}

#[test]
fn too_many_packages_are_refused() {
    let mut status = crate::common::one_package_status();
    status.packages = vec![status.packages[0].clone(); MAX_PACKAGES + 1];
    assert_too_many(Body::PatchStatus(status), "patch.packages", MAX_PACKAGES);
}

#[test]
fn too_many_custom_metrics_are_refused() {
    let custom: BTreeMap<String, f64> = (0..=MAX_CUSTOM_METRICS)
        .map(|index| (format!("metric_{index}"), index as f64))
        .collect();
    let telemetry = Telemetry {
        custom,
        ..Default::default()
    };
    assert_too_many(
        Body::Telemetry(telemetry),
        "telemetry.custom",
        MAX_CUSTOM_METRICS,
    );
}

#[test]
fn too_many_disks_are_refused() {
    let disk = Disk {
        mount: "/".into(),
        total_bytes: 1,
        free_bytes: 1,
    };
    let telemetry = Telemetry {
        disks: vec![disk; MAX_COMPONENTS + 1],
        ..Default::default()
    };
    assert_too_many(
        Body::Telemetry(telemetry),
        "telemetry.disks",
        MAX_COMPONENTS,
    );
}

// --- strings --------------------------------------------------------------

fn assert_too_long(body: Body, field: &str, len: usize, max: usize) {
    let error = decode_batch(&encode_batch(&crate::common::batch_of(body))).unwrap_err();
    assert_eq!(
        error,
        DecodeError::FieldTooLong {
            field: field_name(field),
            len,
            max
        }
    );
    assert_eq!(error.reason(), "field_too_long");
}

/// The `&'static str` in the error, looked up by value.
fn field_name(field: &str) -> &'static str {
    Box::leak(field.to_owned().into_boxed_str())
}

#[test]
fn a_long_package_name_is_refused() {
    let mut status = crate::common::one_package_status();
    status.packages[0].name = "p".repeat(MAX_NAME_BYTES + 1);
    assert_too_long(
        Body::PatchStatus(status),
        "package.name",
        MAX_NAME_BYTES + 1,
        MAX_NAME_BYTES,
    );
}

#[test]
fn a_name_at_the_limit_is_accepted() {
    let mut status = crate::common::one_package_status();
    status.packages[0].name = "p".repeat(MAX_NAME_BYTES);
    let batch = crate::common::batch_of(Body::PatchStatus(status));
    assert_eq!(decode_batch(&encode_batch(&batch)), Ok(batch));
}

#[test]
fn string_limits_count_bytes_not_characters() {
    let mut status = crate::common::one_package_status();
    status.os_id = "é".repeat(MAX_NAME_BYTES / 2 + 1); // 2 bytes each
    assert_too_long(
        Body::PatchStatus(status),
        "patch.os_id",
        MAX_NAME_BYTES + 2,
        MAX_NAME_BYTES,
    );
}

#[test]
fn a_long_custom_metric_name_is_refused() {
    let telemetry = Telemetry {
        custom: BTreeMap::from([("m".repeat(MAX_NAME_BYTES + 1), 1.0)]),
        ..Default::default()
    };
    assert_too_long(
        Body::Telemetry(telemetry),
        "custom.name",
        MAX_NAME_BYTES + 1,
        MAX_NAME_BYTES,
    );
}

#[test]
fn a_long_error_message_is_refused_but_text_gets_more_room_than_names() {
    let event = |message: String| {
        Body::Event(AgentEvent::CollectorError(CollectorError {
            collector: "apt".into(),
            message,
        }))
    };
    let fits = crate::common::batch_of(event("m".repeat(MAX_TEXT_BYTES)));
    assert!(decode_batch(&encode_batch(&fits)).is_ok());
    assert_too_long(
        event("m".repeat(MAX_TEXT_BYTES + 1)),
        "collector_error.message",
        MAX_TEXT_BYTES + 1,
        MAX_TEXT_BYTES,
    );
}

#[test]
fn a_long_unknown_kind_is_refused() {
    let kind = "k".repeat(MAX_NAME_BYTES + 1);
    assert_too_long(
        Body::Unknown { kind: kind.clone() },
        "record.kind",
        kind.len(),
        MAX_NAME_BYTES,
    );
    assert_too_long(
        Body::Event(AgentEvent::Other { kind: kind.clone() }),
        "event.kind",
        kind.len(),
        MAX_NAME_BYTES,
    );
}

// --- sequence numbers -----------------------------------------------------

fn event_record(seq: u64) -> Record {
    Record {
        seq,
        recorded_at: UnixMillis(0),
        body: Body::Event(AgentEvent::Started(Started {
            agent_version: "1".into(),
        })),
    }
}

#[test]
fn sequence_number_zero_is_refused() {
    let batch = Batch::new(vec![event_record(0)]);
    let error = decode_batch(&encode_batch(&batch)).unwrap_err();
    assert_eq!(
        error,
        DecodeError::SeqNotIncreasing {
            previous: 0,
            seq: 0
        }
    );
    assert_eq!(error.reason(), "bad_sequence");
}

#[test]
fn repeated_or_decreasing_sequence_numbers_are_refused() {
    for (first, second) in [(5, 5), (5, 4)] {
        let batch = Batch::new(vec![event_record(first), event_record(second)]);
        assert_eq!(
            decode_batch(&encode_batch(&batch)),
            Err(DecodeError::SeqNotIncreasing {
                previous: first,
                seq: second
            })
        );
    }
}

#[test]
fn gaps_in_sequence_numbers_are_fine() {
    // Records dropped on outbox overflow leave gaps.
    let batch = Batch::new(vec![
        event_record(1),
        event_record(10),
        event_record(u64::MAX),
    ]);
    assert_eq!(decode_batch(&encode_batch(&batch)), Ok(batch.clone()));
    assert_eq!(batch.last_seq(), Some(u64::MAX));
}

#[test]
fn an_integer_where_a_float_is_expected_is_refused() {
    // Documented strictness: floats must be CBOR floats.
    assert_malformed(decode_batch(&raw::body_field("tel", "c", raw::uint(50))));
    assert!(decode_batch(&raw::body_field("tel", "c", raw::float(50.0))).is_ok());
}

#[test]
fn a_non_text_key_in_a_struct_is_refused() {
    let bytes = [raw::versioned_map(2), raw::uint(7), raw::uint(0)];
    assert_malformed(decode_batch(&bytes.concat()));
}
