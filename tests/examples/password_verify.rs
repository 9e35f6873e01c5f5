//! What one password verification costs (issue 13, item 2): argon2id with the parameters of
//! people's passwords (store::credentials::PASSWORD_PARAMS), for a known user and for an unknown
//! one (the dummy hash), timed over `ROUNDS` runs each on one core. A program that prints
//! numbers, not a test. argon2 is optimised even in dev builds (the workspace profile), so
//!
//!     cargo run -p fleet-tests --example password_verify
//!
//! measures what a release build does.

use std::time::Instant;

use store::credentials;

const ROUNDS: u32 = 20;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (m, t, p) = credentials::PASSWORD_PARAMS;
    let hash = credentials::hash_password(b"violet-harbour-lantern-42")
        .await
        .expect("hashing works");
    // The dummy hash is made on first use: not part of the timing.
    credentials::verify_password(None, b"warm-up-password");
    for (label, stored) in [("known user", Some(&hash)), ("unknown user", None)] {
        let started = Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(credentials::verify_password(stored, b"a-wrong-password!"));
        }
        let each = started.elapsed() / ROUNDS;
        println!(
            "argon2id m={m} KiB t={t} p={p}, {label}: {each:?} per verification ({ROUNDS} runs)"
        );
    }
}
