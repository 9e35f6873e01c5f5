//! What API keys and enrollment tokens share: the checksum that lets a scanner (or a typo check)
//! recognise a credential offline, random base62 text, and the argon2id hash of a secret.
//!
//! # Checksum
//!
//! The last 6 characters of a credential are the CRC32 (IEEE) of everything before them, written
//! as a fixed-width base62 number (62^6 > 2^32), as GitHub's tokens do. A mistyped or truncated
//! credential is refused before any lookup, and a secret scanner can tell a real fleetplane
//! credential from a look-alike without asking the server. The checksum is not a secret and
//! proves nothing about authenticity.
//!
//! # Hash
//!
//! Only `argon2id(secret)` is stored, as a PHC string with a fresh 16-byte salt and the argon2
//! crate's default parameters: m = 19456 KiB, t = 2, p = 1 (OWASP's minimum recommendation),
//! about 25 ms per verification on one core. Verification compares in constant time (the
//! `password-hash` crate's `Output` equality). [`verify`] against `None` runs a verification of
//! a dummy hash, so "no such credential" can cost what a wrong secret costs where that matters.

use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::{OsRng, RngCore};

use crate::StoreError;

/// The base62 alphabet, in ASCII order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Characters of the checksum at the end of every credential.
pub const CHECKSUM_LEN: usize = 6;

/// The checksum of `body`, the credential text before the checksum.
pub fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Appends the checksum of `text` to it.
pub(crate) fn push_checksum(text: &mut String) {
    let sum = checksum(text);
    text.extend(sum.iter().map(|&b| char::from(b)));
}

/// Splits `text` into its body and checksum and checks the checksum; `None` when it does not
/// match or `text` is too short.
pub fn split_checksum(text: &str) -> Option<&str> {
    let split = text.len().checked_sub(CHECKSUM_LEN)?;
    if !text.is_char_boundary(split) {
        return None;
    }
    let (body, sum) = text.split_at(split);
    (checksum(body) == sum.as_bytes()).then_some(body)
}

/// Whether every character of `text` is base62.
pub fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `len` base62 characters from the operating system's CSPRNG, uniformly (rejection sampling:
/// a byte is used only below 248 = 4 × 62, so every character is equally likely).
pub(crate) fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut buf);
        for &b in &buf {
            if out.len() == len {
                break;
            }
            if b < 248 {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    out
}

/// The stored argon2id hash of a secret, as a PHC string.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but of no use in a log either.
        f.write_str("SecretHash(argon2id)")
    }
}

impl SecretHash {
    pub(crate) fn from_stored(phc: String) -> Self {
        Self(phc)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hashes a secret with argon2id and a fresh salt. CPU-bound (about 25 ms): call it off the
/// async executor.
pub(crate) fn hash(secret: &[u8]) -> Result<SecretHash, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret, &salt)
        .map(|phc| SecretHash(phc.to_string()))
        .map_err(|e| StoreError::Invalid {
            field: "secret",
            reason: format!("argon2: {e}"),
        })
}

/// [`hash`] on the blocking pool.
pub(crate) async fn hash_off_executor(secret: Vec<u8>) -> Result<SecretHash, StoreError> {
    let secret = zeroize::Zeroizing::new(secret);
    tokio::task::spawn_blocking(move || hash(&secret))
        .await
        .map_err(|e| StoreError::Invalid {
            field: "secret",
            reason: format!("hashing task failed: {e}"),
        })?
}

/// Whether `secret` matches `stored`. With `stored = None` it verifies against a dummy hash and
/// returns false, so both cases cost the same. CPU-bound (about 25 ms): run it with
/// `spawn_blocking` and bound how many run at once.
pub fn verify(stored: Option<&SecretHash>, secret: &[u8]) -> bool {
    match stored {
        Some(stored) => verify_phc(stored.as_str(), secret),
        None => {
            let _ = verify_phc(dummy_hash().as_str(), secret);
            false
        }
    }
}

fn verify_phc(phc: &str, secret: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(secret, &parsed).is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored secret hash does not parse");
            false
        }
    }
}

/// A hash with the same parameters as real ones, of a secret nobody knows.
fn dummy_hash() -> &'static SecretHash {
    static DUMMY: OnceLock<SecretHash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash(random_base62(43).as_bytes())
            .expect("argon2 hashes 43 bytes with its default parameters")
    })
}

/// Computes the dummy hashes now, so the first request for an unknown credential or user does
/// not pay for making one (which would tell it apart). CPU-bound: run it off the executor.
pub fn warm_up() {
    let _ = dummy_hash();
    let _ = dummy_password_hash();
}

/// argon2id parameters for people's passwords: m = 64 MiB, t = 2, p = 1. Above OWASP's minimum
/// (m = 19 MiB, t = 2, p = 1, what the random 256-bit secrets of keys and tokens use): a password
/// is chosen by a person and is worth more work per guess (3.4 times the minimum's memory × passes).
/// 227 ms per verification measured on the shared 2-core machine under a load of about 7
/// (BENCHMARKS.md, "Password verification"); t = 3 took 450 ms there, too slow for a sign-in.
pub const PASSWORD_PARAMS: (u32, u32, u32) = (65_536, 2, 1);

fn password_hasher() -> Argon2<'static> {
    let (m, t, p) = PASSWORD_PARAMS;
    let params = argon2::Params::new(m, t, p, None).expect("valid argon2 parameters");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password with [`PASSWORD_PARAMS`] and a fresh salt, on the blocking pool.
pub async fn hash_password(password: &[u8]) -> Result<SecretHash, StoreError> {
    let password = zeroize::Zeroizing::new(password.to_vec());
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        password_hasher()
            .hash_password(&password, &salt)
            .map(|phc| SecretHash(phc.to_string()))
            .map_err(|e| StoreError::Invalid {
                field: "password",
                reason: format!("argon2: {e}"),
            })
    })
    .await
    .map_err(|e| StoreError::Invalid {
        field: "password",
        reason: format!("hashing task failed: {e}"),
    })?
}

/// Whether `password` matches `stored` (the parameters are read from the hash). With `None` it
/// verifies against a dummy password hash of the same parameters and returns false, so an
/// unknown user costs what a wrong password costs. CPU-bound: call it with `spawn_blocking`.
pub fn verify_password(stored: Option<&SecretHash>, password: &[u8]) -> bool {
    match stored {
        Some(stored) => verify_phc(stored.as_str(), password),
        None => {
            let _ = verify_phc(dummy_password_hash().as_str(), password);
            false
        }
    }
}

/// A password hash with [`PASSWORD_PARAMS`] of a password nobody knows.
fn dummy_password_hash() -> &'static SecretHash {
    static DUMMY: OnceLock<SecretHash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let phc = password_hasher()
            .hash_password(random_base62(43).as_bytes(), &salt)
            .expect("argon2 hashes 43 bytes");
        SecretHash(phc.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_six_base62_characters_and_catch_typos() {
        let mut text = String::from("fpk_live_abc");
        push_checksum(&mut text);
        assert_eq!(text.len(), 12 + CHECKSUM_LEN);
        assert!(is_base62(&text[12..]));
        assert_eq!(split_checksum(&text), Some("fpk_live_abc"));
        let typo = text.replacen("abc", "abd", 1);
        assert_eq!(split_checksum(&typo), None);
        assert_eq!(split_checksum(&text[..text.len() - 1]), None);
        assert_eq!(split_checksum("short"), None);
        // Multi-byte text never panics at the split.
        assert_eq!(split_checksum("ééééé"), None);
    }

    #[test]
    fn the_checksum_is_crc32_in_fixed_width_base62() {
        // CRC32("") = 0, CRC32("a") = 0xe8b7be43 = 3904355907, computed independently.
        assert_eq!(&checksum(""), b"000000");
        let mut n: u64 = 3_904_355_907;
        let mut expected = [b'0'; 6];
        for slot in expected.iter_mut().rev() {
            *slot = BASE62[(n % 62) as usize];
            n /= 62;
        }
        assert_eq!(checksum("a"), expected);
    }

    #[test]
    fn random_text_is_base62_of_the_asked_length() {
        let a = random_base62(43);
        assert_eq!(a.len(), 43);
        assert!(is_base62(&a));
        assert_ne!(a, random_base62(43));
    }

    #[test]
    fn hashes_verify_only_their_secret() {
        let stored = hash(b"right").unwrap();
        assert!(stored
            .as_str()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(Some(&stored), b"right"));
        assert!(!verify(Some(&stored), b"wrong"));
        assert!(!verify(None, b"right"));
        assert!(!verify(
            Some(&SecretHash("not a phc string".into())),
            b"right"
        ));
    }
}
