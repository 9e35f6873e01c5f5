//! The token string, its secret and the secret's argon2id hash.
//!
//! # Format
//!
//! ```text
//! fpe_<tenant id: 32 lowercase hex>_<token id: 32 lowercase hex>_<secret: 43 base64url chars><checksum: 6 base62 chars>
//! ```
//!
//! 119 ASCII characters, the last 6 the checksum of the rest ([`crate::credentials`]), so a
//! mistyped token is refused before any lookup. The prefix makes a leaked token recognisable to secret scanners and
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

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use crate::credentials::SecretHash;
use crate::credentials::{self, CHECKSUM_LEN};
use crate::{EnrollmentTokenId, StoreError, TenantId};

/// What every enrollment token starts with.
pub const TOKEN_PREFIX: &str = "fpe_";

/// Bytes of randomness in a secret.
pub const SECRET_LEN: usize = 32;

const ID_HEX_LEN: usize = 32;
const SECRET_B64_LEN: usize = 43;
/// Length of a well-formed token string.
pub const TOKEN_LEN: usize =
    TOKEN_PREFIX.len() + ID_HEX_LEN + 1 + ID_HEX_LEN + 1 + SECRET_B64_LEN + CHECKSUM_LEN;

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
        if text.len() != TOKEN_LEN || !text.starts_with(TOKEN_PREFIX) {
            return Err(MalformedToken);
        }
        let text = credentials::split_checksum(text).ok_or(MalformedToken)?;
        let bytes = text.as_bytes();
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
    credentials::push_checksum(&mut text);
    TokenString(text)
}

/// Hashes a secret with argon2id and a fresh salt ([`crate::credentials::hash`]).
pub(crate) fn hash(secret: &TokenSecret) -> Result<SecretHash, StoreError> {
    credentials::hash(secret.as_bytes())
}

/// Whether `secret` matches `stored`, at the same cost when there is no stored hash
/// ([`crate::credentials::verify`]). CPU-bound (about 25 ms): run it with `spawn_blocking`.
pub fn verify(stored: Option<&SecretHash>, secret: &TokenSecret) -> bool {
    credentials::verify(stored, secret.as_bytes())
}

/// Computes the dummy hash now, so the first request for an unknown token does not pay for it.
pub fn warm_up() {
    credentials::warm_up();
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

    fn with_checksum(body: &str) -> String {
        let mut text = body.to_owned();
        credentials::push_checksum(&mut text);
        text
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
            // A typo anywhere: the checksum no longer matches.
            good.replacen("0123", "0124", 1),
            // Non-canonical final secret character (low bits set), with a matching checksum.
            with_checksum(&format!("{}x", &good[..good.len() - CHECKSUM_LEN - 1])),
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
}
