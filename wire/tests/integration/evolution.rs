//! The evolution rules of the crate documentation, one test each.

use ciborium::Value;
use serde::Serialize;
use wire::{
    decode_ack, decode_batch, decode_presence, encode_ack, encode_batch, encode_presence, Ack,
    AgentEvent, Batch, Body, DecodeError, PackageManager, Presence, SchemaVersion,
};

fn encode_value(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).unwrap();
    bytes
}

fn to_value<T: Serialize>(message: &T) -> Value {
    Value::serialized(message).unwrap()
}

/// Adds an entry to a CBOR map.
fn insert(map: &mut Value, key: &str, value: Value) {
    map.as_map_mut()
        .expect("a map")
        .push((Value::Text(key.into()), value));
}

/// Walks `path` of map keys and array indexes down from `value`.
fn at<'a>(mut value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    for step in path {
        value = match step.parse::<usize>() {
            Ok(index) => &mut value.as_array_mut().expect("an array")[index],
            Err(_) => {
                let entries = value.as_map_mut().expect("a map");
                let (_, found) = entries
                    .iter_mut()
                    .find(|(key, _)| key.as_text() == Some(step))
                    .unwrap_or_else(|| panic!("no key {step}"));
                found
            }
        };
    }
    value
}

/// Something a newer writer might add: nested, with every CBOR major type.
fn novel_value() -> Value {
    Value::Map(vec![
        (
            Value::Text("list".into()),
            Value::Array(vec![Value::Integer(1.into()), Value::Null]),
        ),
        (Value::Integer(7.into()), Value::Bytes(vec![0xde, 0xad])),
        (Value::Text("f".into()), Value::Float(1.5)),
        (
            Value::Text("t".into()),
            Value::Tag(1, Box::new(Value::Integer(0.into()))),
        ),
        (Value::Text("neg".into()), Value::Integer((-3).into())),
        (Value::Text("b".into()), Value::Bool(true)),
    ])
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    let batch = Batch::new(vec![
        wire::Record {
            seq: 1,
            recorded_at: wire::UnixMillis(1),
            body: Body::Telemetry(crate::common::full_telemetry()),
        },
        wire::Record {
            seq: 2,
            recorded_at: wire::UnixMillis(2),
            body: Body::PatchStatus(crate::common::one_package_status()),
        },
        wire::Record {
            seq: 3,
            recorded_at: wire::UnixMillis(3),
            body: Body::Event(AgentEvent::CollectorError(wire::CollectorError {
                collector: "thermal".into(),
                message: "no zones".into(),
            })),
        },
    ]);
    let mut value = to_value(&batch);
    let struct_maps: &[&[&str]] = &[
        &[],
        &["r", "0"],
        &["r", "0", "b", "tel"],
        &["r", "0", "b", "tel", "m"],
        &["r", "0", "b", "tel", "d", "0"],
        &["r", "0", "b", "tel", "z", "0"],
        &["r", "0", "b", "tel", "l"],
        &["r", "0", "b", "tel", "n", "0"],
        &["r", "1", "b", "pat"],
        &["r", "1", "b", "pat", "p", "0"],
        &["r", "2", "b", "evt", "collector_error"],
    ];
    for path in struct_maps {
        insert(at(&mut value, path), "added_in_1_1", novel_value());
    }
    // Also as the first key, before the ones we know.
    at(&mut value, &[])
        .as_map_mut()
        .unwrap()
        .insert(0, (Value::Text("zz".into()), novel_value()));

    assert_eq!(decode_batch(&encode_value(&value)), Ok(batch));
}

#[test]
fn a_newer_minor_version_with_extra_fields_decodes() {
    // A 1.7 writer, as its own struct: what a future agent would really send.
    #[derive(Serialize)]
    struct BatchV1_7 {
        v: (u16, u16),
        r: Vec<RecordV1_7>,
        sent_at: u64,
    }
    #[derive(Serialize)]
    struct RecordV1_7 {
        s: u64,
        t: u64,
        b: BodyV1_7,
        priority: &'static str,
    }
    #[derive(Serialize)]
    struct BodyV1_7 {
        evt: EventV1_7,
    }
    #[derive(Serialize)]
    struct EventV1_7 {
        started: StartedV1_7,
    }
    #[derive(Serialize)]
    struct StartedV1_7 {
        agent_version: &'static str,
        boot_id: [u8; 4],
    }

    let newer = BatchV1_7 {
        v: (1, 7),
        r: vec![RecordV1_7 {
            s: 5,
            t: 1000,
            b: BodyV1_7 {
                evt: EventV1_7 {
                    started: StartedV1_7 {
                        agent_version: "1.7.0",
                        boot_id: [1, 2, 3, 4],
                    },
                },
            },
            priority: "high",
        }],
        sent_at: 99,
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(&newer, &mut bytes).unwrap();

    let batch = decode_batch(&bytes).unwrap();
    assert_eq!(batch.version, SchemaVersion::new(1, 7));
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].seq, 5);
    assert_eq!(
        batch.records[0].body,
        Body::Event(AgentEvent::Started(wire::Started {
            agent_version: "1.7.0".into()
        }))
    );
}

#[test]
fn the_next_major_version_is_refused_with_the_version_found() {
    let mut batch = crate::common::batch_of(Body::Telemetry(crate::common::full_telemetry()));
    batch.version = SchemaVersion::new(SchemaVersion::CURRENT.major + 1, 0);
    let error = decode_batch(&encode_batch(&batch)).unwrap_err();
    assert_eq!(
        error,
        DecodeError::UnsupportedMajorVersion {
            got: 2,
            supported: 1
        }
    );
    assert_eq!(error.reason(), "unsupported_version");
    assert!(error.to_string().contains("major version 2"), "{error}");
}

#[test]
fn an_older_major_version_is_refused_too() {
    let mut batch = crate::common::batch_of(Body::Telemetry(Default::default()));
    batch.version = SchemaVersion::new(0, 9);
    assert_eq!(
        decode_batch(&encode_batch(&batch)),
        Err(DecodeError::UnsupportedMajorVersion {
            got: 0,
            supported: 1
        })
    );
}

#[test]
fn a_newer_major_version_is_refused_whatever_its_body_looks_like() {
    // Version 2 may reshape everything after "v"; the decoder must not even try.
    let bytes = [
        crate::common::raw::map(2),
        crate::common::raw::text("v"),
        crate::common::raw::version(2, 0),
        crate::common::raw::text("r"),
        crate::common::raw::text("a v2 body that v1 cannot parse"),
    ]
    .concat();
    assert!(matches!(
        decode_batch(&bytes),
        Err(DecodeError::UnsupportedMajorVersion { got: 2, .. })
    ));
}

#[test]
fn the_version_is_found_wherever_it_is_in_the_map() {
    let batch = crate::common::batch_of(Body::Telemetry(Default::default()));
    let mut value = to_value(&batch);
    value.as_map_mut().unwrap().reverse(); // "r" first, then "v"
    assert_eq!(decode_batch(&encode_value(&value)), Ok(batch));
}

#[test]
fn extra_elements_in_the_version_are_ignored() {
    let batch = crate::common::batch_of(Body::Telemetry(Default::default()));
    let mut value = to_value(&batch);
    at(&mut value, &["v"])
        .as_array_mut()
        .unwrap()
        .push(Value::Integer(3.into()));
    assert_eq!(decode_batch(&encode_value(&value)), Ok(batch));
}

#[test]
fn an_unknown_record_kind_decodes_as_unknown_and_keeps_its_neighbours() {
    let bytes = [
        crate::common::raw::batch_prefix(),
        crate::common::raw::array(2),
        // { "s": 1, "t": 0, "b": { "inventory": { "cpus": [1, 2] } } }
        crate::common::raw::map(3),
        crate::common::raw::text("s"),
        crate::common::raw::uint(1),
        crate::common::raw::text("t"),
        crate::common::raw::uint(0),
        crate::common::raw::text("b"),
        crate::common::raw::map(1),
        crate::common::raw::text("inventory"),
        crate::common::raw::map(1),
        crate::common::raw::text("cpus"),
        crate::common::raw::array(2),
        crate::common::raw::uint(1),
        crate::common::raw::uint(2),
        // { "s": 2, "t": 0, "b": { "tel": {} } }
        crate::common::raw::map(3),
        crate::common::raw::text("s"),
        crate::common::raw::uint(2),
        crate::common::raw::text("t"),
        crate::common::raw::uint(0),
        crate::common::raw::text("b"),
        crate::common::raw::map(1),
        crate::common::raw::text("tel"),
        crate::common::raw::map(0),
    ]
    .concat();
    let batch = decode_batch(&bytes).unwrap();
    assert_eq!(
        batch.records[0].body,
        Body::Unknown {
            kind: "inventory".into()
        }
    );
    assert_eq!(batch.records[0].kind(), None);
    assert_eq!(batch.records[1].body, Body::Telemetry(Default::default()));
}

#[test]
fn an_unknown_event_kind_decodes_as_other() {
    let bytes = [
        crate::common::raw::record_prefix("evt"),
        crate::common::raw::map(1),
        crate::common::raw::text("firmware_flashed"),
        crate::common::raw::map(1),
        crate::common::raw::text("slot"),
        crate::common::raw::text("b"),
    ]
    .concat();
    let batch = decode_batch(&bytes).unwrap();
    assert_eq!(
        batch.records[0].body,
        Body::Event(AgentEvent::Other {
            kind: "firmware_flashed".into()
        })
    );
}

#[test]
fn an_unknown_package_manager_decodes_as_other_with_its_name() {
    let mut status = crate::common::one_package_status();
    status.package_manager = PackageManager::Other("pacman".into());
    let batch = crate::common::batch_of(Body::PatchStatus(status));
    let decoded = decode_batch(&encode_batch(&batch)).unwrap();
    assert_eq!(decoded, batch);
}

#[test]
fn ack_and_presence_follow_the_same_version_rules() {
    let ack = Ack {
        version: SchemaVersion::new(2, 0),
        watermark: 1,
        epoch: None,
        new_epoch: false,
        handled_above: Vec::new(),
    };
    assert!(matches!(
        decode_ack(&encode_ack(&ack)),
        Err(DecodeError::UnsupportedMajorVersion { got: 2, .. })
    ));
    let presence = Presence {
        version: SchemaVersion::new(2, 0),
        online: true,
    };
    assert!(matches!(
        decode_presence(&encode_presence(&presence)),
        Err(DecodeError::UnsupportedMajorVersion { got: 2, .. })
    ));

    let mut newer_ack = to_value(&Ack::new(42));
    insert(&mut newer_ack, "ranges", novel_value());
    assert_eq!(decode_ack(&encode_value(&newer_ack)), Ok(Ack::new(42)));
}

#[test]
fn messages_from_before_epochs_are_epoch_zero_and_epochs_round_trip() {
    let old = crate::common::batch_of(Body::Event(AgentEvent::Other {
        kind: "firmware_flashed".into(),
    }));
    let bytes = encode_batch(&old);
    assert!(
        !to_value(&old)
            .as_map()
            .unwrap()
            .iter()
            .any(|(k, _)| k.as_text() == Some("e")),
        "no epoch key unless there is an epoch"
    );
    let decoded = decode_batch(&bytes).unwrap();
    assert_eq!(decoded.epoch(), wire::Epoch::LEGACY);
    let epoch = wire::Epoch {
        id: u64::MAX,
        first_seq: 7,
    };
    let new = Batch::in_epoch(old.records.clone(), epoch);
    assert_eq!(decode_batch(&encode_batch(&new)).unwrap().epoch(), epoch);

    let old_ack = decode_ack(&encode_ack(&Ack::new(9))).unwrap();
    assert_eq!((old_ack.epoch, old_ack.new_epoch), (None, false));
    let mut ack = Ack::in_epoch(9, u64::MAX);
    ack.new_epoch = true;
    assert_eq!(decode_ack(&encode_ack(&ack)), Ok(ack));
}

#[test]
fn an_ack_carries_handled_ranges_above_its_watermark_only_as_far_as_they_fit() {
    let old = decode_ack(&encode_ack(&Ack::new(9))).unwrap();
    assert!(old.handled_above.is_empty(), "absent key: none known");

    let mut ack = Ack::in_epoch(70, u64::MAX);
    let ranges = (0..1000u64).map(|i| (u64::MAX / 2 + 10 * i, u64::MAX / 2 + 10 * i + 5));
    let added = ack.fit_handled_above(ranges);
    let bytes = encode_ack(&ack);
    assert!(bytes.len() <= wire::limits::MAX_CONTROL_MESSAGE_BYTES);
    assert!((5..100).contains(&added), "added {added}");
    assert_eq!(ack.handled_above.len(), added);
    let decoded = decode_ack(&bytes).unwrap();
    assert_eq!(decoded, ack);

    let mut upside_down = Ack::new(1);
    upside_down.handled_above = vec![(9, 3), (5, 6)];
    assert_eq!(upside_down.handled_ranges().collect::<Vec<_>>(), [(5, 6)]);
}
