//! Enrollment tokens as devices present them: refused or parsed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = store::enrollment_tokens::PresentedToken::parse(&String::from_utf8_lossy(bytes));
});
