//! TOTP (RFC 6238 over RFC 4226): HMAC-SHA-1, 6 digits, 30-second steps, the step before and
//! after accepted; and the sealing of secrets at rest.
//!
//! Written over `ring` (already the project's one crypto provider, under rustls) rather than
//! with a TOTP crate: the algorithm is twenty lines, checked below against the RFC's own test
//! vectors, and `ring` gives HMAC-SHA-1, the AEAD and the CSPRNG without a new dependency.
//! Replay (a code accepted twice) is refused by the store, which keeps the last step used.
//!
//! # Sealing
//!
//! A secret is stored as `nonce (12 bytes) || ChaCha20-Poly1305(secret)` under a 256-bit key
//! that never enters the database ([`SealKey`]; fleetd keeps it in its data directory), with the
//! tenant and user ids as associated data: a database dump alone reveals no secret, and a sealed
//! secret copied to another user's row does not open.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use store::{TenantId, UserId};
use zeroize::Zeroizing;

/// Seconds per step.
pub const STEP_SECS: i64 = 30;
/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_LEN: usize = 20;

/// A TOTP secret in clear: wiped when dropped; `Debug` hides it.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A fresh secret from the CSPRNG.
    pub fn new_random() -> Result<Self, ring::error::Unspecified> {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        SystemRandom::new().fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// A secret from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// A secret from its base32 text (as an authenticator app reads it), any case, no padding.
    pub fn from_base32(text: &str) -> Option<Self> {
        let mut out = Vec::new();
        let mut buffer: u64 = 0;
        let mut bits = 0;
        for c in text.trim_end_matches('=').bytes() {
            let value = match c.to_ascii_uppercase() {
                c @ b'A'..=b'Z' => c - b'A',
                c @ b'2'..=b'7' => c - b'2' + 26,
                _ => return None,
            };
            buffer = (buffer << 5) | u64::from(value);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
            }
        }
        Some(Self(Zeroizing::new(out)))
    }

    /// The raw bytes (to compute codes, or to check that they are stored nowhere).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Base32 (RFC 4648, no padding), as authenticator apps take it.
    pub fn base32(&self) -> String {
        base32(&self.0)
    }

    /// The `otpauth://` URI an authenticator app reads from a QR code.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
            enc(issuer),
            enc(account),
            self.base32(),
            enc(issuer)
        )
    }

    /// The 6-digit code of `step` (RFC 4226's HOTP of the step counter).
    pub fn code_at(&self, step: i64) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &step.to_be_bytes());
        let mac = tag.as_ref();
        let offset = usize::from(mac[19] & 0x0f);
        let binary = u32::from_be_bytes([
            mac[offset],
            mac[offset + 1],
            mac[offset + 2],
            mac[offset + 3],
        ]) & 0x7fff_ffff;
        binary % 1_000_000
    }

    /// The step of `code` among the one of `now` and its neighbours, if it matches one. Every
    /// candidate is computed and compared, so the time does not tell which matched.
    pub fn matching_step(&self, code: &str, now_unix: i64) -> Option<i64> {
        let typed: u32 = parse_code(code)?;
        let current = now_unix.div_euclid(STEP_SECS);
        let mut found = None;
        for step in [current - 1, current, current + 1] {
            let same: bool = subtle::ConstantTimeEq::ct_eq(
                &self.code_at(step).to_be_bytes()[..],
                &typed.to_be_bytes()[..],
            )
            .into();
            if same && found.is_none() {
                found = Some(step);
            }
        }
        found
    }
}

/// Six ASCII digits (spaces ignored), or nothing.
fn parse_code(code: &str) -> Option<u32> {
    let digits: String = code.chars().filter(|c| *c != ' ').collect();
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u64 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u64::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The key that seals TOTP secrets at rest: 32 bytes kept outside the database. `Debug` hides
/// it.
pub struct SealKey(LessSafeKey);

/// The HKDF label of the TOTP sealing key.
const SEAL_LABEL: &[u8] = b"fleetplane.people.totp-secret.v1";

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

/// A sealed secret does not open: another key, another user, or changed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sealed TOTP secret does not open with this key for this user")]
pub struct Unsealable;

impl SealKey {
    /// The TOTP sealing key derived from fleetd's sealing key `master` (HKDF-SHA256 under a
    /// label of its own: the same master also seals OIDC client secrets, under another label).
    pub fn from_bytes(master: &[u8; 32]) -> Self {
        let mut derived = Zeroizing::new([0u8; 32]);
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[])
            .extract(master)
            .expand(&[SEAL_LABEL], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(derived.as_mut()))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let key = UnboundKey::new(&CHACHA20_POLY1305, derived.as_ref())
            .expect("32 bytes is the key length");
        Self(LessSafeKey::new(key))
    }

    /// 32 fresh bytes for a new key, from the CSPRNG.
    pub fn new_key_bytes() -> Zeroizing<[u8; 32]> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .expect("the system CSPRNG works");
        bytes
    }

    /// A random key (tests, and an API state made without fleetd).
    pub fn random() -> Self {
        Self::from_bytes(&Self::new_key_bytes())
    }

    fn aad(tenant: TenantId, user: UserId) -> [u8; 32] {
        let mut aad = [0u8; 32];
        aad[..16].copy_from_slice(tenant.0.as_bytes());
        aad[16..].copy_from_slice(user.0.as_bytes());
        aad
    }

    /// Seals `secret` for `user` of `tenant`.
    pub fn seal(
        &self,
        secret: &TotpSecret,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Vec<u8>, ring::error::Unspecified> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce)?;
        let mut data = secret.0.to_vec();
        self.0.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(Self::aad(tenant, user)),
            &mut data,
        )?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Opens what [`Self::seal`] sealed for the same user.
    pub fn open(
        &self,
        sealed: &[u8],
        tenant: TenantId,
        user: UserId,
    ) -> Result<TotpSecret, Unsealable> {
        if sealed.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut data = Zeroizing::new(data.to_vec());
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(Self::aad(tenant, user)), &mut data)
            .map_err(|_| Unsealable)?;
        Ok(TotpSecret::from_bytes(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, the key "12345678901234567890": the last 6 of its 8 digits.
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        for (time, code) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
            (20_000_000_000, 353_130),
        ] {
            assert_eq!(secret.code_at(time / STEP_SECS), code, "at {time}");
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_and_no_further() {
        let secret = TotpSecret::new_random().unwrap();
        let now = 1_700_000_000;
        let step = now / STEP_SECS;
        for (offset, accepted) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = format!("{:06}", secret.code_at(step + offset));
            let expected = accepted.then_some(step + offset);
            // A code of another step may match by chance (1 in a million): compare the step.
            if secret.matching_step(&code, now) != expected {
                assert!(!accepted, "offset {offset}");
            }
        }
        assert_eq!(secret.matching_step("12345", now), None);
        assert_eq!(secret.matching_step("abcdef", now), None);
    }

    #[test]
    fn base32_is_rfc_4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let secret = TotpSecret::new_random().unwrap();
        let back = TotpSecret::from_base32(&secret.base32().to_lowercase()).unwrap();
        assert_eq!(back.0, secret.0);
        assert!(TotpSecret::from_base32("MZ1W").is_none());
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_user_with_its_key() {
        let key = SealKey::random();
        let secret = TotpSecret::new_random().unwrap();
        let (tenant, user) = (TenantId::new_random(), UserId::new_random());
        let sealed = key.seal(&secret, tenant, user).unwrap();
        assert!(!sealed.windows(SECRET_LEN).any(|w| w == secret.0.as_slice()));
        assert_eq!(key.open(&sealed, tenant, user).unwrap().0, secret.0);
        assert!(key.open(&sealed, tenant, UserId::new_random()).is_err());
        assert!(SealKey::random().open(&sealed, tenant, user).is_err());
        assert!(key.open(&sealed[..5], tenant, user).is_err());
        assert!(!format!("{secret:?}{key:?}").contains(&secret.base32()));
    }
}
