//! The device message decoders (CBOR after the sequence header): ingest's one-pass view decoder
//! and the full decoder must agree on what they accept, and never panic; whatever decodes must
//! encode and decode again to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

const LIMIT: usize = wire::limits::DEFAULT_MAX_MESSAGE_BYTES;

fuzz_target!(|bytes: &[u8]| {
    let full = wire::decode_message_with_limit(bytes, LIMIT);
    let view = wire::decode_message_view(bytes, LIMIT);
    assert_eq!(
        full.is_ok(),
        view.is_ok(),
        "the decoders disagree: full {:?}, view {:?}",
        full.as_ref().err(),
        view.as_ref().err()
    );
    if let Ok((_, batch)) = full {
        let encoded = wire::encode_batch(&batch);
        let again = wire::decode_batch(&encoded).expect("a decoded batch re-encodes validly");
        assert_eq!(wire::encode_batch(&again), encoded);
    }
    if let Ok(body) = wire::decode_body(bytes) {
        let encoded = wire::encode_body(&body);
        let again = wire::decode_body(&encoded).expect("a decoded body re-encodes validly");
        assert_eq!(wire::encode_body(&again), encoded);
    }
    let _ = wire::decode_ack(bytes);
    let _ = wire::decode_presence(bytes);
});
