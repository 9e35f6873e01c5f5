//! Feeds arbitrary bytes to every decoder of the wire crate.
//!
//! The decoders must never panic, abort or allocate without bound; and a batch
//! that decodes must encode to bytes that decode to the same batch.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_ack(data);
    let _ = wire::decode_presence(data);
    if let Ok(batch) = wire::decode_batch(data) {
        let encoded = wire::encode_batch(&batch);
        let again = wire::decode_batch(&encoded).expect("a decoded batch re-encodes validly");
        assert_eq!(wire::encode_batch(&again), encoded);
    }
});
