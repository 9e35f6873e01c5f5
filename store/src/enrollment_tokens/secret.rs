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
//! Only `SHA-256(secret)` is stored, as `$sha256$<64 lowercase hex>`, and the presented secret is
//! compared with it in constant time. A fast unkeyed hash is enough here, as GitHub does for its
//! tokens: the secret is 256 bits from the CSPRNG, so there is nothing to guess and nothing for a
//! slow hash (or a key, which would only add a secret to manage) to protect. It costs about a
//! microsecond, so an enrollment attempt costs a row lookup, not 25 ms of CPU, and a token shared
//! by a whole fleet enrolls at the database's pace. The digest is computed when the token is
//! parsed, before any database connection is taken.
//!
//! Tokens created before migration 0008 carry an argon2id PHC string (`$argon2id$…`). They keep
//! working: [`TokenHash::Legacy`] is verified with argon2id off the executor and without a database
//! connection held. They are not re-hashed: the application role may not rewrite hashes.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use crate::credentials::SecretHash;
use crate::credentials::{self, CHECKSUM_LEN};
use crate::{EnrollmentTokenId, TenantId};

/// What every enrollment token starts with.
pub const TOKEN_PREFIX: &str = "fpe_";

/// Bytes of randomness in a secret.
pub const SECRET_LEN: usize = 32;

const ID_HEX_LEN: usize = 32;
const SECRET_B64_LEN: usize = 43;
/// Length of a well-formed token string.
pub const TOKEN_LEN: usize =
    TOKEN_PREFIX.len() + ID_HEX_LEN + 1 + ID_HEX_LEN + 1 + SECRET_B64_LEN + CHECKSUM_LEN;

/// The secret half of a token. Wiped from memory when dropped (every copy); never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
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

/// A token as a device presents it: where to look, the secret, and the secret's digest.
#[derive(Debug)]
pub struct PresentedToken {
    tenant_id: TenantId,
    token_id: EnrollmentTokenId,
    secret: TokenSecret,
    digest: SecretDigest,
}

/// SHA-256 of a secret: what is stored, and what a presented secret is compared as. As hard to
/// invert as the 256-bit secret; still never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    fn of(secret: &TokenSecret) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Equality in constant time.
    fn matches(&self, other: &SecretDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(<redacted>)")
    }
}

/// What the PHC-like text of a SHA-256 hash starts with.
const SHA256_PREFIX: &str = "$sha256$";

/// A token's stored hash.
#[derive(Clone, Debug)]
pub enum TokenHash {
    /// `$sha256$<hex>`: tokens created since migration 0008.
    Sha256(SecretDigest),
    /// An argon2id PHC string: tokens created before (or an unreadable value, which never
    /// verifies).
    Legacy(SecretHash),
}

/// What comparing a presented token with a stored hash found.
#[derive(Debug)]
pub enum HashCheck {
    /// The secret is the token's.
    Matches,
    /// It is not.
    Wrong,
    /// The stored hash is argon2id: run [`verify_legacy`] (off the executor, with no database
    /// connection held) to know.
    NeedsArgon2(SecretHash),
}

impl TokenHash {
    /// The hash of a new token's secret.
    fn of(secret: &TokenSecret) -> Self {
        Self::Sha256(SecretDigest::of(secret))
    }

    /// Reads the stored text.
    pub fn from_stored(text: String) -> Self {
        match text.strip_prefix(SHA256_PREFIX).map(decode_digest) {
            Some(Some(digest)) => Self::Sha256(digest),
            _ => Self::Legacy(SecretHash::from_stored(text)),
        }
    }

    /// The text to store.
    pub(crate) fn to_stored(&self) -> String {
        match self {
            Self::Sha256(digest) => format!("{SHA256_PREFIX}{}", hex::encode(digest.0)),
            Self::Legacy(phc) => phc.as_str().to_owned(),
        }
    }

    /// Compares `presented` with this hash: at once for SHA-256, or says argon2 must decide.
    pub fn check(&self, presented: &PresentedToken) -> HashCheck {
        match self {
            Self::Sha256(stored) if stored.matches(&presented.digest) => HashCheck::Matches,
            Self::Sha256(_) => HashCheck::Wrong,
            Self::Legacy(phc) => HashCheck::NeedsArgon2(phc.clone()),
        }
    }
}

fn decode_digest(text: &str) -> Option<SecretDigest> {
    let lower = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
    lower.then_some(SecretDigest(bytes))
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
        // Hashed here, before anyone holds a database connection for this token.
        let digest = SecretDigest::of(&secret);
        Ok(Self {
            tenant_id,
            token_id,
            secret,
            digest,
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

/// The hash to store for a new token's secret.
pub(crate) fn hash(secret: &TokenSecret) -> TokenHash {
    TokenHash::of(secret)
}

/// Whether `secret` matches the argon2id hash of a token created before migration 0008.
/// CPU-bound (about 25 ms): run it with `spawn_blocking`, bounded, holding no database connection.
pub fn verify_legacy(stored: &SecretHash, secret: &TokenSecret) -> bool {
    credentials::verify(Some(stored), secret.as_bytes())
}

/// The argon2id hash a token got before migration 0008, to test that such tokens still enroll.
#[cfg(feature = "test-support")]
pub fn legacy_argon2_hash(presented: &PresentedToken) -> String {
    credentials::hash(presented.secret.as_bytes())
        .expect("argon2 hashes 32 bytes")
        .as_str()
        .to_owned()
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
    fn new_hashes_are_sha256_text_and_match_only_their_secret() {
        let (tenant, token) = ids();
        let secret = TokenSecret([9; SECRET_LEN]);
        let stored = hash(&secret).to_stored();
        // SHA-256 of 32 bytes of 9, computed independently (Python hashlib).
        assert_eq!(
            stored,
            "$sha256$8c0cc17a04942cc4f8e0fe0b302606d3108860c126428ba2ceeb5f9ed41c2b05"
        );
        let reread = TokenHash::from_stored(stored.clone());
        assert_eq!(reread.to_stored(), stored);
        let right = PresentedToken::parse(format_token(tenant, token, &secret).expose()).unwrap();
        let wrong = format_token(tenant, token, &TokenSecret([8; SECRET_LEN]));
        let wrong = PresentedToken::parse(wrong.expose()).unwrap();
        assert!(matches!(reread.check(&right), HashCheck::Matches));
        assert!(matches!(reread.check(&wrong), HashCheck::Wrong));
    }

    #[test]
    fn argon2_and_unreadable_hashes_are_legacy_and_verify_with_argon2_only() {
        let (tenant, token) = ids();
        let secret = TokenSecret([5; SECRET_LEN]);
        let presented =
            PresentedToken::parse(format_token(tenant, token, &secret).expose()).unwrap();
        let phc = credentials::hash(secret.as_bytes()).unwrap();
        let stored = TokenHash::from_stored(phc.as_str().to_owned());
        let HashCheck::NeedsArgon2(legacy) = stored.check(&presented) else {
            panic!("an argon2id hash needs argon2");
        };
        assert!(verify_legacy(&legacy, presented.secret()));
        assert!(!verify_legacy(&legacy, &TokenSecret([6; SECRET_LEN])));
        for unreadable in ["$sha256$00", "$sha256$ABCD", "", "plain"] {
            let HashCheck::NeedsArgon2(legacy) =
                TokenHash::from_stored(unreadable.into()).check(&presented)
            else {
                panic!("{unreadable:?} is not a SHA-256 hash");
            };
            assert!(
                !verify_legacy(&legacy, presented.secret()),
                "{unreadable:?}"
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
        let digest = hex::encode(Sha256::digest([0x41; SECRET_LEN]));
        for printed in [
            format!("{secret:?}"),
            format!("{text:?}"),
            format!("{parsed:?}"),
            format!("{:?}", hash(&secret)),
        ] {
            assert!(!printed.contains(&digest[..16]), "{printed}");
            assert!(!printed.contains(&encoded), "{printed}");
            assert!(!printed.contains("AAAA"), "{printed}");
        }
    }

    #[test]
    fn the_well_formed_token_seed_parses_and_a_bad_checksum_does_not() {
        let seeds = corpus::seeds("enrollment_token");
        assert!(PresentedToken::parse(std::str::from_utf8(&seeds[0]).unwrap()).is_ok());
        assert!(PresentedToken::parse(std::str::from_utf8(&seeds[1]).unwrap()).is_err());
    }

    corpus::proptest::proptest! {
        #![proptest_config(corpus::config())]

        /// The stable-toolchain fuzzing of token parsing (seeds: corpus/seeds/enrollment_token).
        #[test]
        fn mutated_tokens_are_refused_or_parsed_never_a_panic(
            bytes in corpus::mutated("enrollment_token"),
        ) {
            let _ = PresentedToken::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
