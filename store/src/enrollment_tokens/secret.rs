//! The token string, its secret and the secret's argon2id hash.
//!
//! # Format
//!
//! ```text
//! fpe_<tenant id: 32 lowercase hex>_<token id: 32 lowercase hex>_<secret: 43 base64url chars>
//! ```
//!
//! 113 ASCII characters. The prefix makes a leaked token recognisable to secret scanners and
//! people. The tenant id and token id are public (they also appear in listings, the audit trail
//! and, for the tenant, in every device certificate): carrying them in clear lets enrollment open
//! a transaction for exactly that tenant and find the row under row-level security, so there is
//! no lookup across tenants, no index over secrets, and a forged tenant id only ever reaches the
//! forged tenant's rows. The secret is 32 bytes from the operating system's CSPRNG, encoded
//! base64url without padding (its alphabet contains `_`, so the fields are located by position,
//! not by splitting on `_`).
//!
//! # Hash
//!
//! Only `argon2id(secret)` is stored, as a PHC string with a fresh 16-byte salt and the argon2
//! crate's default parameters: m = 19456 KiB, t = 2, p = 1 (OWASP's minimum recommendation),
//! about 25 ms per verification on one core. Verification compares in constant time (the
//! `password-hash` crate's `Output` equality), and [`verify`] runs a verification against a
//! dummy hash when the token row does not exist, so an unknown token costs what a wrong secret
//! costs.

use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{EnrollmentTokenId, StoreError, TenantId};

/// What every enrollment token starts with.
pub const TOKEN_PREFIX: &str = "fpe_";

/// Bytes of randomness in a secret.
pub const SECRET_LEN: usize = 32;

const ID_HEX_LEN: usize = 32;
const SECRET_B64_LEN: usize = 43;
/// Length of a well-formed token string.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + ID_HEX_LEN + 1 + ID_HEX_LEN + 1 + SECRET_B64_LEN;

/// The secret half of a token. Wiped from memory when dropped; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct TokenSecret([u8; SECRET_LEN]);

impl TokenSecret {
    /// A fresh secret from the operating system's CSPRNG.
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// A complete token string, shown to the operator once at creation. Wiped when dropped; its
/// `Debug` does not print it: use [`TokenString::expose`] where the text is really needed.
pub struct TokenString(Zeroizing<String>);

impl TokenString {
    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenString(<redacted>)")
    }
}

/// A token as a device presents it: where to look, and the secret to check.
#[derive(Debug)]
pub struct PresentedToken {
    tenant_id: TenantId,
    token_id: EnrollmentTokenId,
    secret: TokenSecret,
}

/// The text is not an enrollment token. Deliberately without detail: a caller answers it
/// exactly as it answers a wrong secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed enrollment token")]
pub struct MalformedToken;

impl PresentedToken {
    /// Parses the exact format above; anything else (other length, upper-case hex, padding,
    /// whitespace) is refused.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let bytes = text.as_bytes();
        if bytes.len() != TOKEN_LEN || !text.starts_with(TOKEN_PREFIX) {
            return Err(MalformedToken);
        }
        let tenant_start = TOKEN_PREFIX.len();
        let token_start = tenant_start + ID_HEX_LEN + 1;
        let secret_start = token_start + ID_HEX_LEN + 1;
        if bytes[token_start - 1] != b'_' || bytes[secret_start - 1] != b'_' {
            return Err(MalformedToken);
        }
        let tenant_id = TenantId(parse_id(&text[tenant_start..token_start - 1])?);
        let token_id = EnrollmentTokenId(parse_id(&text[token_start..secret_start - 1])?);
        let secret = decode_secret(&text[secret_start..])?;
        Ok(Self {
            tenant_id,
            token_id,
            secret,
        })
    }

    /// The tenant the token claims to belong to (checked only by finding the token there).
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    /// The token's public id.
    pub fn token_id(&self) -> EnrollmentTokenId {
        self.token_id
    }

    /// The secret to verify.
    pub fn secret(&self) -> &TokenSecret {
        &self.secret
    }
}

fn parse_id(hex: &str) -> Result<Uuid, MalformedToken> {
    let canonical = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !canonical {
        return Err(MalformedToken);
    }
    Uuid::try_parse(hex).map_err(|_| MalformedToken)
}

fn decode_secret(text: &str) -> Result<TokenSecret, MalformedToken> {
    let decoded = Zeroizing::new(URL_SAFE_NO_PAD.decode(text).map_err(|_| MalformedToken)?);
    let bytes: [u8; SECRET_LEN] = decoded.as_slice().try_into().map_err(|_| MalformedToken)?;
    let secret = TokenSecret(bytes);
    // Refuse non-canonical encodings (trailing bits set), so one secret has one spelling.
    let reencoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(secret.as_bytes()));
    if reencoded.as_str() != text {
        return Err(MalformedToken);
    }
    Ok(secret)
}

/// Writes the token string for a new token.
pub(crate) fn format_token(
    tenant_id: TenantId,
    token_id: EnrollmentTokenId,
    secret: &TokenSecret,
) -> TokenString {
    let mut text = Zeroizing::new(String::with_capacity(TOKEN_LEN));
    text.push_str(TOKEN_PREFIX);
    text.push_str(&tenant_id.0.simple().to_string());
    text.push('_');
    text.push_str(&token_id.0.simple().to_string());
    text.push('_');
    URL_SAFE_NO_PAD.encode_string(secret.as_bytes(), &mut text);
    TokenString(text)
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
pub(crate) fn hash(secret: &TokenSecret) -> Result<SecretHash, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|phc| SecretHash(phc.to_string()))
        .map_err(|e| StoreError::Invalid {
            field: "enrollment token secret",
            reason: format!("argon2: {e}"),
        })
}

/// Whether `secret` matches `stored`. With `stored = None` (no such token) it verifies against a
/// dummy hash and returns false, so both cases cost the same. CPU-bound (about 25 ms): run it
/// with `spawn_blocking` and bound how many run at once.
pub fn verify(stored: Option<&SecretHash>, secret: &TokenSecret) -> bool {
    match stored {
        Some(stored) => verify_phc(stored.as_str(), secret),
        None => {
            let _ = verify_phc(dummy_hash().as_str(), secret);
            false
        }
    }
}

fn verify_phc(phc: &str, secret: &TokenSecret) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored enrollment token hash does not parse");
            false
        }
    }
}

/// A hash with the same parameters as real ones, of a secret nobody knows.
fn dummy_hash() -> &'static SecretHash {
    static DUMMY: OnceLock<SecretHash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash(&TokenSecret::generate()).expect("argon2 hashes 32 bytes with its default parameters")
    })
}

/// Computes the dummy hash now, so the first request for an unknown token does not pay for it.
pub fn warm_up() {
    let _ = dummy_hash();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, EnrollmentTokenId) {
        (
            TenantId(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
            EnrollmentTokenId(Uuid::from_u128(42)),
        )
    }

    #[test]
    fn a_formatted_token_parses_back() {
        let (tenant, token) = ids();
        let secret = TokenSecret::generate();
        let text = format_token(tenant, token, &secret);
        assert_eq!(text.expose().len(), TOKEN_LEN);
        assert!(text
            .expose()
            .starts_with("fpe_0123456789abcdef0123456789abcdef_"));
        let parsed = PresentedToken::parse(text.expose()).unwrap();
        assert_eq!(parsed.tenant_id(), tenant);
        assert_eq!(parsed.token_id(), token);
        assert_eq!(parsed.secret().as_bytes(), secret.as_bytes());
    }

    #[test]
    fn secrets_with_underscores_still_parse() {
        let (tenant, token) = ids();
        let secret = TokenSecret([0xff; SECRET_LEN]); // encodes as "____..."
        let text = format_token(tenant, token, &secret);
        assert!(text.expose()[70..].starts_with("___"));
        assert!(PresentedToken::parse(text.expose()).is_ok());
    }

    #[test]
    fn anything_but_the_exact_format_is_malformed() {
        let (tenant, token) = ids();
        let good = format_token(tenant, token, &TokenSecret([7; SECRET_LEN]));
        let good = good.expose();
        let bad = [
            String::new(),
            good.replacen("fpe_", "fpk_", 1),
            good.to_uppercase(),
            format!("{good}="),
            format!(" {good}"),
            good[..good.len() - 1].to_string(),
            good.replacen('_', "-", 2),
            // Non-canonical final character (low bits set).
            format!("{}{}", &good[..good.len() - 1], "x"),
        ];
        for text in bad {
            assert_eq!(
                PresentedToken::parse(&text).unwrap_err(),
                MalformedToken,
                "{text:?}"
            );
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let (tenant, token) = ids();
        let secret = TokenSecret([0x41; SECRET_LEN]);
        let text = format_token(tenant, token, &secret);
        let encoded = URL_SAFE_NO_PAD.encode([0x41; SECRET_LEN]);
        let parsed = PresentedToken::parse(text.expose()).unwrap();
        for printed in [
            format!("{secret:?}"),
            format!("{text:?}"),
            format!("{parsed:?}"),
        ] {
            assert!(!printed.contains(&encoded), "{printed}");
            assert!(!printed.contains("AAAA"), "{printed}");
        }
    }

    #[test]
    fn hashes_verify_only_their_secret() {
        let secret = TokenSecret::generate();
        let stored = hash(&secret).unwrap();
        assert!(stored
            .as_str()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(Some(&stored), &secret));
        assert!(!verify(Some(&stored), &TokenSecret::generate()));
        assert!(!verify(None, &secret));
        assert!(!verify(
            Some(&SecretHash("not a phc string".into())),
            &secret
        ));
    }
}
