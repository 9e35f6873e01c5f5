//! Everything we encode decodes to the same value.

use proptest::prelude::*;
use wire::{
    decode_ack, decode_batch, decode_presence, encode_ack, encode_batch, encode_presence, Ack,
    AgentEvent, Batch, Body, Presence, Started,
};

proptest! {
    #[test]
    fn batch_round_trips(batch in crate::common::batch()) {
        let bytes = encode_batch(&batch);
        prop_assert_eq!(decode_batch(&bytes), Ok(batch));
    }

    #[test]
    fn headed_message_round_trips(batch in crate::common::batch()) {
        let message = wire::encode_message(&batch);
        let header = wire::SeqHeader::of(&batch);
        prop_assert_eq!(message.len() - encode_batch(&batch).len(), if header.is_some() { wire::header::HEADER_LEN } else { 0 });
        prop_assert_eq!(wire::decode_message_with_limit(&message, 1 << 20), Ok((header, batch)));
    }

    #[test]
    fn ack_round_trips(ack in crate::common::ack()) {
        prop_assert_eq!(decode_ack(&encode_ack(&ack)), Ok(ack));
    }

    #[test]
    fn presence_round_trips(presence in crate::common::presence()) {
        prop_assert_eq!(decode_presence(&encode_presence(&presence)), Ok(presence));
    }

    #[test]
    fn generated_batches_pass_validation(batch in crate::common::batch()) {
        prop_assert_eq!(batch.validate(), Ok(()));
    }
}

#[test]
fn every_record_kind_round_trips_fully_populated() {
    let batch = Batch::new(vec![
        record(1, Body::Telemetry(crate::common::full_telemetry())),
        record(2, Body::PatchStatus(crate::common::one_package_status())),
        record(
            3,
            Body::Event(AgentEvent::Started(Started {
                agent_version: "0.1.0".into(),
            })),
        ),
    ]);
    assert_eq!(decode_batch(&encode_batch(&batch)), Ok(batch));
}

#[test]
fn an_empty_batch_round_trips() {
    let batch = Batch::new(Vec::new());
    assert_eq!(decode_batch(&encode_batch(&batch)), Ok(batch));
}

#[test]
fn ack_is_tiny() {
    // The ack goes to every device after every commit: keep it a few bytes.
    let bytes = encode_ack(&Ack::new(u64::MAX));
    assert!(bytes.len() <= 20, "ack is {} bytes", bytes.len());
    assert_eq!(encode_presence(&Presence::new(false)).len(), 9);
}

#[test]
fn a_full_telemetry_record_stays_compact() {
    // Short keys are the point of the encoding: guard against a regression to
    // long field names.
    let bytes = encode_batch(&crate::common::batch_of(Body::Telemetry(
        crate::common::full_telemetry(),
    )));
    assert!(
        bytes.len() < 200,
        "telemetry batch is {} bytes",
        bytes.len()
    );
}

#[test]
fn the_encoding_of_a_known_batch_is_stable() {
    // Pins the wire format: if this changes, old agents and new servers (or the
    // reverse) no longer agree. Change it only with a version bump.
    let batch = crate::common::batch_of(Body::Event(AgentEvent::Started(Started {
        agent_version: "1".into(),
    })));
    let expected: Vec<u8> = [
        &[0xa2, 0x61, b'v', 0x82, 0x01, 0x00][..], // {"v": [1, 0],
        &[0x61, b'r', 0x81, 0xa3][..],             //  "r": [{
        &[0x61, b's', 0x01][..],                   //    "s": 1,
        &[0x61, b't', 0x1b][..],                   //    "t": 1700000000000,
        &1_700_000_000_000u64.to_be_bytes()[..],
        &[0x61, b'b', 0xa1, 0x63, b'e', b'v', b't'][..], // "b": {"evt":
        &[0xa1, 0x67][..],
        b"started", //  {"started":
        &[0xa1, 0x6d][..],
        b"agent_version", // {"agent_version": "1"}}}}]}
        &[0x61, b'1'][..],
    ]
    .concat();
    assert_eq!(encode_batch(&batch), expected);
}

fn record(seq: u64, body: Body) -> wire::Record {
    wire::Record {
        seq,
        recorded_at: wire::UnixMillis(seq * 1000),
        body,
    }
}
