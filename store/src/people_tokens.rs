//! The display-once secrets of people: session ids and invitation tokens.
//!
//! # Format
//!
//! ```text
//! <prefix>_<tenant id: 32 hex>_<secret: 43 base62>
//! ```
//!
//! `fps` for a session (the `__Host-fleet_session` cookie), `fpi` for an invitation. The secret
//! is 43 characters from the CSPRNG (256 bits). The tenant id is not secret: it tells the server
//! which tenant's transaction to look the token up in, so no cross-tenant lookup exists. Only
//! `SHA-256(domain || whole text)` is stored; SHA-256 suffices for 256 random bits (no guess
//! can be cheaper than the search). The CSRF token of a session is another digest of the same
//! text ([`PeopleToken::csrf_token`]), under another domain: the stored hash does not reveal it,
//! and a page on another origin, which cannot read the cookie, cannot compute it.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{credentials, TenantId};

/// Characters of a token's secret.
pub const SECRET_LEN: usize = 43;

/// What a token is for, and its prefix and hash domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A session (the cookie).
    Session,
    /// An invitation (the link).
    Invitation,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Session => "fps_",
            TokenKind::Invitation => "fpi_",
        }
    }

    fn domain(self) -> &'static [u8] {
        match self {
            TokenKind::Session => b"fleetplane.session.v1\0",
            TokenKind::Invitation => b"fleetplane.invitation.v1\0",
        }
    }
}

/// A session id or invitation token: wiped when dropped, and `Debug` hides it.
pub struct PeopleToken {
    kind: TokenKind,
    tenant: TenantId,
    text: Zeroizing<String>,
}

impl fmt::Debug for PeopleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeopleToken")
            .field("kind", &self.kind)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// The text is not a token of the expected kind. Without detail: it is answered as a wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed token")]
pub struct MalformedToken;

impl PeopleToken {
    /// A fresh token of `kind` for `tenant`.
    pub(crate) fn new_random(kind: TokenKind, tenant: TenantId) -> Self {
        let secret = Zeroizing::new(credentials::random_base62(SECRET_LEN));
        let text = Zeroizing::new(format!(
            "{}{}_{}",
            kind.prefix(),
            tenant.0.simple(),
            secret.as_str()
        ));
        Self { kind, tenant, text }
    }

    /// Parses the exact format above.
    pub fn parse(kind: TokenKind, text: &str) -> Result<Self, MalformedToken> {
        let body = text.strip_prefix(kind.prefix()).ok_or(MalformedToken)?;
        let (tenant, secret) = body.split_once('_').ok_or(MalformedToken)?;
        let tenant_ok = tenant.len() == 32
            && tenant
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !tenant_ok || secret.len() != SECRET_LEN || !credentials::is_base62(secret) {
            return Err(MalformedToken);
        }
        let tenant = uuid::Uuid::try_parse(tenant).map_err(|_| MalformedToken)?;
        Ok(Self {
            kind,
            tenant: TenantId(tenant),
            text: Zeroizing::new(text.to_owned()),
        })
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The whole text, to hand over once (a cookie, a link).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// What is stored: `SHA-256(domain || text)`.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.kind.domain())
            .chain_update(self.text.as_bytes())
            .finalize()
            .into()
    }

    /// The CSRF token bound to this session: 43 base64url characters of another digest of it.
    pub fn csrf_token(&self) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let digest = Sha256::new()
            .chain_update(b"fleetplane.csrf.v1\0")
            .chain_update(self.text.as_bytes())
            .finalize();
        URL_SAFE_NO_PAD.encode(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_parses_back_and_digests_differ_by_kind_and_purpose() {
        let tenant = TenantId::new_random();
        let token = PeopleToken::new_random(TokenKind::Session, tenant);
        let parsed = PeopleToken::parse(TokenKind::Session, token.expose()).unwrap();
        assert_eq!(parsed.tenant(), tenant);
        assert_eq!(parsed.digest(), token.digest());
        assert!(PeopleToken::parse(TokenKind::Invitation, token.expose()).is_err());
        assert_ne!(hex::encode(token.digest()), token.csrf_token());
        assert!(!format!("{token:?}").contains(&token.expose()[37..]));
    }

    #[test]
    fn anything_else_is_malformed() {
        let good = PeopleToken::new_random(TokenKind::Invitation, TenantId::new_random());
        let text = good.expose().to_owned();
        for bad in [
            String::new(),
            text.replacen("fpi_", "fps_", 1),
            text[..text.len() - 1].to_owned(),
            format!("{text}x"),
            text.replacen('_', "-", 2),
            text.to_uppercase(),
        ] {
            assert!(
                PeopleToken::parse(TokenKind::Invitation, &bad).is_err(),
                "{bad}"
            );
        }
    }
}
