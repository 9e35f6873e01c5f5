//! API keys as callers present them: refused or parsed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = store::api_keys::PresentedKey::parse(&String::from_utf8_lossy(bytes));
});
