//! The key that seals OIDC client secrets at rest, and the secrets themselves.
//!
//! The key is fleetd's sealing key (32 random bytes in a file of its data directory, mode 0600,
//! shared with the TOTP secrets under other labels), never in the database: a copy of the
//! database or of its backups does not give the secrets. Two keys are derived from it with
//! HKDF-SHA256, one per use:
//!
//! - AES-256-GCM for the client secrets; each sealed secret is a random 96-bit nonce, then the
//!   ciphertext and tag, with `fleetplane.oidc.client-secret.v1` and the tenant id as associated
//!   data, so a sealed secret copied to another tenant's row does not open;
//! - HMAC-SHA256 for the PKCE code verifier of an attempt, computed from its `state`: the verifier
//!   is never stored, and only this fleetd installation can compute it.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use store::TenantId;
use zeroize::Zeroizing;

const SEAL_LABEL: &[u8] = b"fleetplane.oidc.client-secret.v1";
const PKCE_LABEL: &[u8] = b"fleetplane.oidc.pkce-verifier.v1";
const KEY_LEN: usize = 32;

/// Why the key could not be loaded, or a secret sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A sealed secret does not open with this key for this tenant (another key, another
    /// tenant's row, or altered bytes).
    #[error("the stored client secret does not open with this fleetd's key")]
    DoesNotOpen,
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
}

/// The sealing key (derived keys only; the file's bytes are dropped after derivation).
pub struct SsoKey {
    seal: LessSafeKey,
    pkce: hmac::Key,
}

impl std::fmt::Debug for SsoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SsoKey(..)")
    }
}

impl SsoKey {
    /// The keys derived from fleetd's sealing key `master` (its file is fleetd's concern).
    pub fn from_bytes(master: &[u8; KEY_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(master);
        let mut seal = Zeroizing::new([0u8; KEY_LEN]);
        let mut pkce = Zeroizing::new([0u8; KEY_LEN]);
        for (label, out) in [(SEAL_LABEL, &mut seal), (PKCE_LABEL, &mut pkce)] {
            prk.expand(&[label], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(out.as_mut()))
                .expect("32 bytes is a valid HKDF-SHA256 output length");
        }
        let seal =
            UnboundKey::new(&aead::AES_256_GCM, seal.as_ref()).expect("32 bytes is an AES-256 key");
        Self {
            seal: LessSafeKey::new(seal),
            pkce: hmac::Key::new(hmac::HMAC_SHA256, pkce.as_ref()),
        }
    }

    /// Seals `secret` for `tenant`'s row.
    pub fn seal(&self, tenant: TenantId, secret: &ClientSecret) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = secret.0.as_bytes().to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant)),
                &mut sealed,
            )
            .map_err(|_| SecretError::DoesNotOpen)?;
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        Ok(out)
    }

    /// Opens a secret sealed for `tenant`.
    pub fn open(&self, tenant: TenantId, sealed: &[u8]) -> Result<ClientSecret, SecretError> {
        if sealed.len() < NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Err(SecretError::DoesNotOpen);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::DoesNotOpen)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(aad(tenant)), &mut buffer)
            .map_err(|_| SecretError::DoesNotOpen)?;
        let text = std::str::from_utf8(plain).map_err(|_| SecretError::DoesNotOpen)?;
        Ok(ClientSecret::new(text.to_owned()))
    }

    /// The PKCE code verifier of the attempt with this `state`: 43 base64url characters of
    /// HMAC-SHA256(state), as RFC 7636 allows.
    pub(crate) fn pkce_verifier(&self, state: &str) -> Zeroizing<String> {
        use base64::Engine;
        let tag = hmac::sign(&self.pkce, state.as_bytes());
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }
}

fn aad(tenant: TenantId) -> Vec<u8> {
    let mut aad = SEAL_LABEL.to_vec();
    aad.extend_from_slice(tenant.0.as_bytes());
    aad
}

/// An OIDC client secret in clear: wiped from memory when dropped, and its `Debug` prints
/// nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(Zeroizing<String>);

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(Zeroizing::new(secret))
    }

    /// The secret, for the token request only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

impl<'de> serde::Deserialize<'de> for ClientSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Random bytes as base64url text: `state`, `nonce` and the browser cookie (32 bytes, 256 bits).
pub(crate) fn random_token() -> Result<String, SecretError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecretError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new_random()
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_tenant_with_its_key() {
        let key = SsoKey::from_bytes(&[7; 32]);
        let a = tenant();
        let secret = ClientSecret::new("s3cret-value".into());
        let sealed = key.seal(a, &secret).unwrap();
        assert!(!sealed.windows(b"s3cret".len()).any(|w| w == b"s3cret"));
        assert_eq!(key.open(a, &sealed).unwrap(), secret);
        assert!(matches!(
            key.open(tenant(), &sealed),
            Err(SecretError::DoesNotOpen)
        ));
        let other = SsoKey::from_bytes(&[8; 32]);
        assert!(matches!(
            other.open(a, &sealed),
            Err(SecretError::DoesNotOpen)
        ));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            key.open(a, &altered),
            Err(SecretError::DoesNotOpen)
        ));
        assert!(matches!(
            key.open(a, &sealed[..20]),
            Err(SecretError::DoesNotOpen)
        ));
        // Two seals of one secret differ (a fresh nonce each).
        assert_ne!(key.seal(a, &secret).unwrap(), sealed);
    }

    #[test]
    fn debug_shows_no_secret_and_verifiers_are_rfc7636_length() {
        let secret = ClientSecret::new("hunter2-hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
        let key = SsoKey::from_bytes(&[1; 32]);
        let verifier = key.pkce_verifier("state");
        assert_eq!(verifier.len(), 43);
        assert_ne!(*verifier, *key.pkce_verifier("other state"));
        assert_eq!(random_token().unwrap().len(), 43);
    }
}
