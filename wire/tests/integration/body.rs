//! A record body on its own, as the ingest ledger stores it: `encode_body`
//! writes exactly what ingest wrote before, and `decode_body` reads it back
//! under the same bounds as a batch.

use std::collections::BTreeMap;

use crate::common::{assert_malformed, assert_refused_fast, raw, HUGE};
use proptest::prelude::*;
use wire::limits::{DEFAULT_MAX_MESSAGE_BYTES, MAX_CUSTOM_METRICS, MAX_NAME_BYTES};
use wire::{
    decode_body, decode_body_with_limit, encode_batch, encode_body, AgentEvent, Body,
    CollectorError, DecodeError, Disk, Started, Telemetry,
};

/// What ingest's ledger wrote before `encode_body` existed.
fn ciborium_bytes(body: &Body) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(body, &mut bytes).unwrap();
    bytes
}

fn every_kind() -> Vec<Body> {
    vec![
        Body::Telemetry(crate::common::full_telemetry()),
        Body::Telemetry(Telemetry::default()),
        Body::PatchStatus(crate::common::one_package_status()),
        Body::Event(AgentEvent::Started(Started {
            agent_version: "0.1.0".into(),
        })),
        Body::Event(AgentEvent::CollectorError(CollectorError {
            collector: "thermal".into(),
            message: "no zones".into(),
        })),
        Body::Event(AgentEvent::Other {
            kind: "newer".into(),
        }),
    ]
}

// --- round trip and compatibility ---------------------------------------------

proptest! {
    #[test]
    fn bodies_round_trip(body in crate::common::body()) {
        prop_assert_eq!(decode_body(&encode_body(&body)), Ok(body));
    }

    #[test]
    fn the_bytes_are_what_ingest_wrote_before(body in crate::common::body()) {
        prop_assert_eq!(encode_body(&body), ciborium_bytes(&body));
    }

    /// What ingest stores now: each body's bytes as found in the message the device sent.
    #[test]
    fn the_body_spans_of_a_message_are_its_encoded_bodies(batch in crate::common::batch()) {
        for message in [wire::encode_message(&batch), encode_batch(&batch)] {
            let view = wire::decode_message_view(&message, 1 << 20).expect("a view");
            let found: Vec<&[u8]> = view.records.into_iter().map(|r| &message[r.span]).collect();
            let expected: Vec<Vec<u8>> = batch.records.iter().map(|r| encode_body(&r.body)).collect();
            prop_assert_eq!(found, expected.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }
    }
}

#[test]
fn every_kind_round_trips_and_matches_the_old_ledger_bytes() {
    for body in every_kind() {
        let bytes = encode_body(&body);
        assert_eq!(bytes, ciborium_bytes(&body), "{body:?}");
        assert_eq!(decode_body(&bytes), Ok(body));
    }
}

#[test]
fn the_bytes_are_those_of_the_body_inside_a_batch() {
    // The body is the last entry of the last record of the batch map.
    for body in every_kind() {
        let batch = encode_batch(&crate::common::batch_of(body.clone()));
        assert!(batch.ends_with(&encode_body(&body)), "{body:?}");
    }
}

#[test]
fn the_encoding_is_the_documented_one_entry_map() {
    let body = Body::Telemetry(Telemetry {
        cpu_usage_percent: Some(1.5),
        ..Telemetry::default()
    });
    // {"tel": {"c": 1.5}}, 1.5 as a half-precision float.
    let expected = [
        raw::map(1),
        raw::text("tel"),
        raw::map(1),
        raw::text("c"),
        vec![0xf9, 0x3e, 0x00],
    ];
    assert_eq!(encode_body(&body), expected.concat());
}

#[test]
fn an_unknown_kind_decodes_as_unknown() {
    let bytes = [
        raw::map(1),
        raw::text("future"),
        raw::map(1),
        raw::text("x"),
        raw::uint(1),
    ];
    assert_eq!(
        decode_body(&bytes.concat()),
        Ok(Body::Unknown {
            kind: "future".into()
        })
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let bytes = [
        raw::map(1),
        raw::text("tel"),
        raw::map(2),
        raw::text("u"),
        raw::uint(7),
        raw::text("new"),
        raw::array(1),
        raw::uint(0),
    ];
    let expected = Body::Telemetry(Telemetry {
        uptime_secs: Some(7),
        ..Telemetry::default()
    });
    assert_eq!(decode_body(&bytes.concat()), Ok(expected));
}

// --- size -------------------------------------------------------------------

#[test]
fn oversize_input_is_refused_before_parsing() {
    let garbage = vec![0xff; DEFAULT_MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        decode_body(&garbage),
        Err(DecodeError::TooLarge {
            len: DEFAULT_MAX_MESSAGE_BYTES + 1,
            max: DEFAULT_MAX_MESSAGE_BYTES
        })
    );
}

#[test]
fn the_size_limit_is_configurable_and_inclusive() {
    let body = Body::Telemetry(crate::common::full_telemetry());
    let bytes = encode_body(&body);
    assert_eq!(decode_body_with_limit(&bytes, bytes.len()), Ok(body));
    assert_eq!(
        decode_body_with_limit(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        })
    );
}

// --- malformed ---------------------------------------------------------------

#[test]
fn empty_and_non_map_input_is_refused() {
    assert_malformed(decode_body(&[]));
    assert_malformed(decode_body(&[0xff]));
    assert_malformed(decode_body(&raw::text("tel")));
    assert_malformed(decode_body(&raw::array(0)));
}

#[test]
fn a_body_with_no_kind_or_two_kinds_is_refused() {
    assert_malformed(decode_body(&raw::map(0)));
    let two = [
        raw::map(2),
        raw::text("tel"),
        raw::map(0),
        raw::text("pat"),
        raw::map(0),
    ];
    assert_malformed(decode_body(&two.concat()));
}

#[test]
fn a_wrong_type_is_refused() {
    // Uptime as text.
    let bytes = [
        raw::map(1),
        raw::text("tel"),
        raw::map(1),
        raw::text("u"),
        raw::text("7"),
    ];
    assert_malformed(decode_body(&bytes.concat()));
}

#[test]
fn truncated_input_is_refused() {
    let bytes = encode_body(&Body::Telemetry(crate::common::full_telemetry()));
    for len in 0..bytes.len() {
        assert!(
            decode_body(&bytes[..len]).is_err(),
            "prefix of {len} accepted"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_body(&Body::Telemetry(Telemetry::default()));
    bytes.push(0x00);
    let Err(DecodeError::Malformed(message)) = decode_body(&bytes) else {
        panic!("trailing byte accepted");
    };
    assert!(message.contains("1 bytes after"), "{message}");
}

#[test]
fn deep_nesting_is_refused() {
    let mut bytes = [raw::map(1), raw::text("future")].concat();
    bytes.extend(std::iter::repeat_n(0x81, 10_000));
    bytes.push(0x00);
    let Err(DecodeError::Malformed(message)) = decode_body(&bytes) else {
        panic!("deep nesting accepted");
    };
    assert!(message.contains("nested deeper"), "{message}");
}

#[test]
fn lying_length_headers_are_refused_fast() {
    let telemetry = [raw::map(1), raw::text("tel"), raw::map(1)].concat();
    // The body map itself, the custom metrics map, the disks list, a string.
    assert_refused_fast(decode_body, &raw::map(HUGE));
    assert_refused_fast(
        decode_body,
        &[telemetry.clone(), raw::text("x"), raw::map(HUGE)].concat(),
    );
    assert_refused_fast(
        decode_body,
        &[telemetry.clone(), raw::text("d"), raw::array(HUGE)].concat(),
    );
    assert_refused_fast(
        decode_body,
        &[raw::map(1), raw::head(3, HUGE), b"tel".to_vec()].concat(),
    );
    // An unknown kind's payload.
    assert_refused_fast(
        decode_body,
        &[raw::map(1), raw::text("future"), raw::array(HUGE)].concat(),
    );
}

// --- limits -------------------------------------------------------------------

#[test]
fn too_many_custom_metrics_are_refused() {
    let custom: BTreeMap<String, f64> = (0..=MAX_CUSTOM_METRICS)
        .map(|i| (format!("m{i}"), 1.0))
        .collect();
    let body = Body::Telemetry(Telemetry {
        custom,
        ..Telemetry::default()
    });
    assert_eq!(
        decode_body(&encode_body(&body)),
        Err(DecodeError::TooManyEntries {
            field: "telemetry.custom",
            max: MAX_CUSTOM_METRICS
        })
    );
}

#[test]
fn a_name_over_the_limit_is_refused() {
    let body = Body::Telemetry(Telemetry {
        disks: vec![Disk {
            mount: "/".repeat(MAX_NAME_BYTES + 1),
            total_bytes: 1,
            free_bytes: 1,
        }],
        ..Telemetry::default()
    });
    assert_eq!(
        decode_body(&encode_body(&body)),
        Err(DecodeError::FieldTooLong {
            field: "disk.mount",
            len: MAX_NAME_BYTES + 1,
            max: MAX_NAME_BYTES
        })
    );
}
