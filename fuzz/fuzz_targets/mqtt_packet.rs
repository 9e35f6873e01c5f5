//! The gateway's MQTT packet reader: any byte stream is framed into packets or refused, never a
//! panic, never more packets than bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let packets = broker::fuzzing::read_packets(bytes);
    assert!(packets <= bytes.len());
});
