//! Enrollment's certificate signing requests, PEM and DER: refused or parsed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = certs::DeviceCsr::from_pem(bytes);
    let _ = certs::DeviceCsr::from_der(bytes);
});
