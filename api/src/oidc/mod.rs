//! OIDC single sign-on: the authorization code flow with PKCE against a tenant's own identity
//! provider, up to a verified identity.
//!
//! # The flow
//!
//! 1. `GET /v1/auth/oidc/{tenant}/start` ([`start`]): a fresh `state`, `nonce` and browser
//!    cookie (256 random bits each) are made; their SHA-256 hashes are stored as an attempt
//!    (`store::sso`), good for [`ATTEMPT_TTL`]; the browser is sent to the provider's
//!    authorization endpoint with the `state`, the `nonce` and the S256 challenge of a PKCE
//!    verifier that is HMAC-SHA256(`state`) under fleetd's key (never stored anywhere).
//! 2. `GET /v1/auth/oidc/{tenant}/callback` ([`complete`]): the attempt of the `state` is taken
//!    out of the database (deleted as it is read, so a replayed state finds nothing on any
//!    fleetd), the cookie must be the one this browser got at `start`, the code is exchanged at
//!    the token endpoint with the client secret and the verifier, and the ID token is verified:
//!    signature ([`jws`]), `iss`, `aud` (and `azp`), `exp`, `iat`, and `nonce`, whose hash must
//!    be the attempt's. The email must be verified by the provider; the role comes from the
//!    tenant's claim rules.
//!
//! # Why the state is kept on the server, with a cookie beside it
//!
//! A row per attempt, not a signed cookie alone: deleting the row is what makes a state good
//! once, on every fleetd behind a load balancer, which a stateless cookie cannot promise. The
//! cookie (`__Host-fleet-oidc`, `HttpOnly; Secure; SameSite=Lax`, a random value whose hash is in
//! the row) binds the attempt to the browser that started it, so a callback URL planted in
//! someone else's browser (login CSRF) does not sign them in as the attacker. `Lax`, not `Strict`:
//! the callback is a top-level navigation from the provider's site, which `Strict` cookies are
//! not sent with.
//!
//! # What is not here yet
//!
//! Users and sessions: [`complete`] ends at a [`VerifiedIdentity`]. The callback route answers it
//! as JSON until sessions exist, when it becomes "find or create the user by verified email,
//! then start a session" ([`VerifiedIdentity::may_create_user`] says whether a user may be
//! created just in time).

pub(crate) mod jws;
mod provider;
pub(crate) mod routes;
mod secret;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use store::api_keys::Role;
use store::sso::{self, NewAttempt, OidcProvider};
use store::{AppDb, StoreError, TenantId};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

pub use jws::{JwkSet, JwsError, ALLOWED_ALGORITHMS};
pub use provider::{checked_url, Discovery, Providers, Published, CACHE_TTL, MIN_REFETCH_INTERVAL};
pub use secret::{ClientSecret, SecretError, SsoKey};

/// How long a started sign-in may take to come back.
pub const ATTEMPT_TTL: Duration = Duration::from_secs(600);
/// Clock difference with the provider tolerated on `exp` and `iat`.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(60);
/// Oldest `iat` accepted: the token was just issued by the token endpoint.
pub const MAX_TOKEN_AGE: Duration = Duration::from_secs(600);
/// Sign-ins one source address may start per [`START_WINDOW`] (each stores an attempt, and the
/// start route is open to anyone); past it, 429 with `Retry-After`.
pub const MAX_STARTS_PER_SOURCE: u32 = 60;
/// The window of [`MAX_STARTS_PER_SOURCE`].
pub const START_WINDOW: Duration = Duration::from_secs(60);
/// The cookie that binds an attempt to its browser.
pub const BROWSER_COOKIE: &str = "__Host-fleet-oidc";

/// What single sign-on needs from the composition root. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct OidcSettings {
    /// The key that seals client secrets (fleetd's data directory); `None`: single sign-on
    /// cannot be configured or used.
    pub key: Option<Arc<SsoKey>>,
    /// The HTTP client for providers and their cached documents (and whether providers on
    /// loopback HTTP are allowed: [`Providers::with_loopback_http`]).
    pub providers: Providers,
}

/// A person the tenant's provider vouches for, and the role the tenant's rules give them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VerifiedIdentity {
    /// The tenant signed in to.
    pub tenant: TenantId,
    /// The provider (`iss`).
    pub issuer: String,
    /// The provider's id for the person (`sub`): with `issuer`, the stable key of the person.
    pub subject: String,
    /// Their email address, verified by the provider (`email_verified`).
    pub email: String,
    /// The role from the tenant's claim rules.
    pub role: Role,
    /// Whether the address is in a domain the tenant opened to just-in-time users: a person
    /// without a user may get one at this sign-in only if so.
    pub may_create_user: bool,
}

/// Why a sign-in did not produce an identity.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The tenant has no provider, or sign-in through it is disabled (or the tenant does not
    /// exist: the same answer).
    #[error("single sign-on is not configured for this tenant")]
    NotConfigured,
    /// This fleetd has no key to open client secrets with.
    #[error("single sign-on is unavailable: fleetd has no OIDC secret key")]
    NoKey,
    /// The sign-in is refused; the reason says why.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The provider's token endpoint refused the code (its OAuth error code).
    #[error("the provider refused the authorization code: {0}")]
    TokenRequestRefused(String),
    /// The provider could not be reached or answered something unusable.
    #[error("the identity provider is unavailable: {0}")]
    ProviderUnavailable(String),
    /// A provider URL is not one fleetd may use.
    #[error("provider URL {0}")]
    InvalidProviderUrl(String),
    /// Sealing or opening the client secret failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The refusals of a callback and of an ID token, each with its own reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The provider answered the authorization request with an error (e.g. `access_denied`).
    #[error("the provider refused the sign-in: {0}")]
    ProviderError(String),
    /// A parameter of the callback is missing.
    #[error("the callback has no {0}")]
    MissingParameter(&'static str),
    /// No attempt has this state: unknown, already used (a replay), or another tenant's.
    #[error("unknown or already used state")]
    UnknownState,
    /// The attempt is older than [`ATTEMPT_TTL`].
    #[error("the sign-in attempt has expired; start again")]
    ExpiredState,
    /// The browser does not hold the cookie of the attempt it completes.
    #[error("this browser did not start this sign-in")]
    OtherBrowser,
    /// The callback's `iss` (RFC 9207) or the token's is not the tenant's provider.
    #[error("issued by {0:?}, not the tenant's provider")]
    WrongIssuer(String),
    /// The token endpoint answered without an ID token.
    #[error("the token endpoint answered without an ID token")]
    NoIdToken,
    /// The signature does not verify (or its algorithm or key is not accepted).
    #[error(transparent)]
    Signature(#[from] JwsError),
    /// The token is not for this client (`aud`).
    #[error("the ID token is for another client")]
    WrongAudience,
    /// The token has several audiences and `azp` is not this client.
    #[error("the ID token's authorized party is not this client")]
    WrongAuthorizedParty,
    /// The token has expired.
    #[error("the ID token has expired")]
    Expired,
    /// `iat` is in the future or older than [`MAX_TOKEN_AGE`].
    #[error("the ID token's issue time is not recent")]
    NotRecent,
    /// The token's nonce is not this attempt's (a token replayed from another sign-in).
    #[error("the ID token's nonce is not this sign-in's")]
    WrongNonce,
    /// A required claim is missing or of the wrong type.
    #[error("the ID token has no valid {0} claim")]
    MissingClaim(&'static str),
    /// The provider has not verified the email address.
    #[error("the provider has not verified the email address")]
    EmailNotVerified,
    /// No claim rule matches and the tenant has no default role.
    #[error("no role rule of the tenant matches this person")]
    NoRole,
}

/// A started sign-in: where to send the browser, and the cookie to set.
pub struct Started {
    /// The provider's authorization URL with this attempt's parameters.
    pub authorization_url: String,
    /// The browser-binding cookie's value.
    pub browser_cookie: String,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

/// The parameters of a callback, as the provider sent the browser back. Its `Debug` shows
/// neither the code nor the state.
#[derive(Clone, Default)]
pub struct Callback {
    /// `code`.
    pub code: Option<String>,
    /// `state`.
    pub state: Option<String>,
    /// `iss` (RFC 9207), when the provider sends it.
    pub iss: Option<String>,
    /// `error`, when the provider refused.
    pub error: Option<String>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("iss", &self.iss)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The tenant's provider, if sign-in through it is open.
async fn enabled_provider(app: &AppDb, tenant: TenantId) -> Result<OidcProvider, OidcError> {
    let mut tx = app.begin(tenant).await?;
    let provider = sso::provider(&mut tx).await?;
    tx.commit().await?;
    provider
        .filter(|p| p.enabled)
        .ok_or(OidcError::NotConfigured)
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Starts a sign-in for `tenant`; the provider will send the browser back to `redirect_uri`.
pub async fn start(
    app: &AppDb,
    oidc: &OidcSettings,
    tenant: TenantId,
    redirect_uri: &str,
) -> Result<Started, OidcError> {
    let key = oidc.key.as_ref().ok_or(OidcError::NoKey)?;
    let provider = enabled_provider(app, tenant).await?;
    let published = oidc.providers.published(tenant, &provider.issuer).await?;
    let state = secret::random_token()?;
    let nonce = secret::random_token()?;
    let browser_cookie = secret::random_token()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(key.pkce_verifier(&state).as_bytes()));
    let mut url = oidc
        .providers
        .checked_url(&published.discovery.authorization_endpoint)?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &scope(&provider))
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let expires_at = OffsetDateTime::now_utc() + ATTEMPT_TTL;
    let mut tx = app.begin(tenant).await?;
    sso::record_attempt(
        &mut tx,
        &NewAttempt {
            state_hash: sha256(&state),
            nonce_hash: sha256(&nonce),
            browser_hash: sha256(&browser_cookie),
            redirect_uri,
            expires_at,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Started {
        authorization_url: url.into(),
        browser_cookie,
    })
}

/// What the authorization request asks for: `openid email` and the tenant's extra scopes.
fn scope(provider: &OidcProvider) -> String {
    let mut scope = String::from("openid email");
    for extra in &provider.extra_scopes {
        scope.push(' ');
        scope.push_str(extra);
    }
    scope
}

/// Completes a sign-in for `tenant` from the provider's callback and the browser's cookie: the
/// one function the callback route calls.
pub async fn complete(
    app: &AppDb,
    oidc: &OidcSettings,
    tenant: TenantId,
    callback: &Callback,
    browser_cookie: Option<&str>,
) -> Result<VerifiedIdentity, OidcError> {
    let key = oidc.key.as_ref().ok_or(OidcError::NoKey)?;
    let state = callback
        .state
        .as_deref()
        .ok_or(Refusal::MissingParameter("state"))?;
    // The attempt is spent here, whatever follows: a state completes at most one sign-in.
    let mut tx = app.begin(tenant).await?;
    let provider = sso::provider(&mut tx).await?;
    let attempt = sso::consume_attempt(&mut tx, &sha256(state)).await?;
    tx.commit().await?;
    let provider = provider
        .filter(|p| p.enabled)
        .ok_or(OidcError::NotConfigured)?;
    let attempt = attempt.ok_or(Refusal::UnknownState)?;
    if attempt.expires_at <= OffsetDateTime::now_utc() {
        return Err(Refusal::ExpiredState.into());
    }
    let same_browser = browser_cookie
        .is_some_and(|cookie| bool::from(sha256(cookie).ct_eq(&attempt.browser_hash)));
    if !same_browser {
        return Err(Refusal::OtherBrowser.into());
    }
    if let Some(error) = &callback.error {
        return Err(Refusal::ProviderError(printable(error)).into());
    }
    if let Some(iss) = &callback.iss {
        if *iss != provider.issuer {
            return Err(Refusal::WrongIssuer(printable(iss)).into());
        }
    }
    let code = callback
        .code
        .as_deref()
        .ok_or(Refusal::MissingParameter("code"))?;
    let published = oidc.providers.published(tenant, &provider.issuer).await?;
    let secret = key.open(tenant, &provider.client_secret_sealed)?;
    let verifier = key.pkce_verifier(state);
    let id_token = oidc
        .providers
        .exchange_code(
            &published.discovery,
            &provider.client_id,
            &secret,
            code,
            &attempt.redirect_uri,
            &verifier,
        )
        .await?;
    let claims = verify_id_token(
        &oidc.providers,
        tenant,
        &provider,
        &id_token,
        &attempt.nonce_hash,
        OffsetDateTime::now_utc(),
    )
    .await?;
    Ok(identity(tenant, &provider, &claims)?)
}

/// Verifies an ID token for the tenant's provider: the signature with the provider's keys
/// (fetched once more when the token's `kid` is not among them), then the claims
/// ([`check_claims`]). Returns the claims.
pub async fn verify_id_token(
    providers: &Providers,
    tenant: TenantId,
    provider: &OidcProvider,
    token: &str,
    nonce_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<Map<String, Value>, OidcError> {
    let published = providers.published(tenant, &provider.issuer).await?;
    let claims = match jws::verify(token, &published.keys) {
        Err(JwsError::UnknownKey(Some(kid))) if !published.keys.has_kid(&kid) => {
            match providers.refetch_keys(tenant, &published).await? {
                Some(keys) => jws::verify(token, &keys).map_err(Refusal::from)?,
                None => return Err(Refusal::Signature(JwsError::UnknownKey(Some(kid))).into()),
            }
        }
        other => other.map_err(Refusal::from)?,
    };
    check_claims(&claims, provider, nonce_hash, now)?;
    Ok(claims)
}

/// The claim checks of OpenID Connect Core 1.0, section 3.1.3.7, on a token whose signature
/// verified: `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`.
pub fn check_claims(
    claims: &Map<String, Value>,
    provider: &OidcProvider,
    nonce_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<(), Refusal> {
    let iss = text_claim(claims, "iss")?;
    if iss != provider.issuer {
        return Err(Refusal::WrongIssuer(printable(iss)));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => return Err(Refusal::MissingClaim("aud")),
    };
    if !audiences.contains(&provider.client_id.as_str()) {
        return Err(Refusal::WrongAudience);
    }
    let azp = claims.get("azp").and_then(Value::as_str);
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(provider.client_id.as_str()) {
        return Err(Refusal::WrongAuthorizedParty);
    }
    let now = now.unix_timestamp();
    let leeway = CLOCK_LEEWAY.as_secs() as i64;
    let exp = time_claim(claims, "exp")?;
    if exp + leeway <= now {
        return Err(Refusal::Expired);
    }
    let iat = time_claim(claims, "iat")?;
    if iat > now + leeway || iat < now - MAX_TOKEN_AGE.as_secs() as i64 - leeway {
        return Err(Refusal::NotRecent);
    }
    let nonce = text_claim(claims, "nonce")?;
    if !bool::from(sha256(nonce).ct_eq(nonce_hash)) {
        return Err(Refusal::WrongNonce);
    }
    Ok(())
}

/// The identity in verified claims: `sub`, a verified `email`, and the role of the tenant's
/// rules.
pub fn identity(
    tenant: TenantId,
    provider: &OidcProvider,
    claims: &Map<String, Value>,
) -> Result<VerifiedIdentity, Refusal> {
    let subject = text_claim(claims, "sub")?;
    let email = text_claim(claims, "email")?;
    let (_, domain) = email
        .rsplit_once('@')
        .filter(|(local, domain)| !local.is_empty() && !domain.is_empty())
        .ok_or(Refusal::MissingClaim("email"))?;
    if claims.get("email_verified") != Some(&Value::Bool(true)) {
        return Err(Refusal::EmailNotVerified);
    }
    let role = mapped_role(provider, claims).ok_or(Refusal::NoRole)?;
    let domain = domain.to_ascii_lowercase();
    Ok(VerifiedIdentity {
        tenant,
        issuer: provider.issuer.clone(),
        subject: subject.to_owned(),
        email: email.to_owned(),
        role,
        may_create_user: provider.allowed_email_domains.contains(&domain),
    })
}

/// The highest role among the rules the claims match, else the default role.
fn mapped_role(provider: &OidcProvider, claims: &Map<String, Value>) -> Option<Role> {
    let matches = |claim: &str, value: &str| match claims.get(claim) {
        Some(Value::String(one)) => one == value,
        Some(Value::Array(many)) => many.iter().any(|v| v.as_str() == Some(value)),
        _ => false,
    };
    provider
        .role_mappings
        .iter()
        .filter(|rule| matches(&rule.claim, &rule.value))
        .map(|rule| rule.role)
        .max_by_key(|role| role.rank())
        .or(provider.default_role)
}

fn text_claim<'a>(claims: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Refusal> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .ok_or(Refusal::MissingClaim(name))
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<i64, Refusal> {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .ok_or(Refusal::MissingClaim(name))
}

/// Text from the provider or the browser, safe to echo in a refusal: printable ASCII, clipped.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use store::sso::RoleMapping;

    fn provider() -> OidcProvider {
        OidcProvider {
            issuer: "https://idp.example.com".into(),
            client_id: "fleet".into(),
            client_secret_sealed: Vec::new(),
            role_mappings: vec![
                RoleMapping {
                    claim: "groups".into(),
                    value: "ops".into(),
                    role: Role::Operator,
                },
                RoleMapping {
                    claim: "groups".into(),
                    value: "admins".into(),
                    role: Role::Admin,
                },
                RoleMapping {
                    claim: "dept".into(),
                    value: "audit".into(),
                    role: Role::Auditor,
                },
            ],
            default_role: None,
            allowed_email_domains: vec!["example.com".into()],
            extra_scopes: vec!["groups".into()],
            enabled: true,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn good(now: i64) -> Value {
        json!({
            "iss": "https://idp.example.com", "aud": "fleet", "exp": now + 300, "iat": now,
            "nonce": "n-1", "sub": "alice", "email": "Alice@Example.com", "email_verified": true,
            "groups": ["ops", "admins"],
        })
    }

    #[test]
    fn each_claim_is_checked_with_its_own_reason() {
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let p = provider();
        let nonce = sha256("n-1");
        let check = |change: Value| {
            let mut c = good(t);
            for (k, v) in change.as_object().unwrap() {
                c[k] = v.clone();
            }
            check_claims(&claims(c), &p, &nonce, now)
        };
        assert_eq!(check(json!({})), Ok(()));
        assert_eq!(
            check(json!({"iss": "https://evil.example"})),
            Err(Refusal::WrongIssuer("https://evil.example".into()))
        );
        assert_eq!(check(json!({"aud": "other"})), Err(Refusal::WrongAudience));
        assert_eq!(
            check(json!({"aud": ["other", "fleet"]})),
            Err(Refusal::WrongAuthorizedParty)
        );
        assert_eq!(
            check(json!({"aud": ["other", "fleet"], "azp": "fleet"})),
            Ok(())
        );
        assert_eq!(
            check(json!({"azp": "other"})),
            Err(Refusal::WrongAuthorizedParty)
        );
        assert_eq!(check(json!({"exp": t - 61})), Err(Refusal::Expired));
        assert_eq!(check(json!({"exp": t - 30})), Ok(()), "within the leeway");
        assert_eq!(check(json!({"iat": t + 120})), Err(Refusal::NotRecent));
        assert_eq!(check(json!({"iat": t - 3600})), Err(Refusal::NotRecent));
        assert_eq!(check(json!({"nonce": "n-2"})), Err(Refusal::WrongNonce));
        assert_eq!(
            check(json!({"exp": "soon"})),
            Err(Refusal::MissingClaim("exp"))
        );
        assert_eq!(
            check(json!({"nonce": null})),
            Err(Refusal::MissingClaim("nonce"))
        );
    }

    #[test]
    fn the_extra_scopes_follow_openid_and_email() {
        assert_eq!(scope(&provider()), "openid email groups");
    }

    #[test]
    fn the_highest_matching_role_wins_and_the_email_must_be_verified() {
        let tenant = TenantId::new_random();
        let mut p = provider();
        let t = OffsetDateTime::now_utc().unix_timestamp();
        let id = identity(tenant, &p, &claims(good(t))).unwrap();
        assert_eq!(id.role, Role::Admin);
        assert!(id.may_create_user, "the domain is compared without case");
        assert_eq!(id.subject, "alice");
        let mut c = good(t);
        c["groups"] = json!("ops");
        assert_eq!(
            identity(tenant, &p, &claims(c.clone())).unwrap().role,
            Role::Operator
        );
        c["groups"] = json!([]);
        assert_eq!(
            identity(tenant, &p, &claims(c.clone())),
            Err(Refusal::NoRole)
        );
        p.default_role = Some(Role::Auditor);
        assert_eq!(
            identity(tenant, &p, &claims(c.clone())).unwrap().role,
            Role::Auditor
        );
        c["email"] = json!("eve@elsewhere.test");
        assert!(
            !identity(tenant, &p, &claims(c.clone()))
                .unwrap()
                .may_create_user
        );
        c["email_verified"] = json!("true");
        assert_eq!(
            identity(tenant, &p, &claims(c.clone())),
            Err(Refusal::EmailNotVerified)
        );
        c["email"] = json!("no-at-sign");
        assert_eq!(
            identity(tenant, &p, &claims(c)),
            Err(Refusal::MissingClaim("email"))
        );
    }
}
