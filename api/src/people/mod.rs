//! People: sign-in with a password and a second factor, sessions in a cookie, CSRF, and the
//! routes that manage users and invitations.
//!
//! # The session cookie
//!
//! `__Host-fleet_session=<session id>; HttpOnly; Secure; SameSite=Strict; Path=/`, with
//! `Max-Age` the tenant's absolute session lifetime. The id is a [`PeopleToken`] (256 random
//! bits, only its SHA-256 stored). A session resolves to the same [`Caller`] as an API key
//! (tenant, role, group scope) before any handler runs, and the one permission table decides;
//! its `callers` column says which routes a cookie may not use ([`crate::permissions::Callers`]).
//!
//! # CSRF
//!
//! A request with the cookie whose method changes state (anything but GET and HEAD) must carry
//! the session's CSRF token in `X-CSRF-Token`: a synchronizer token bound to the session
//! ([`PeopleToken::csrf_token`]), given at sign-in and by `GET /v1/session`. A page on another
//! origin cannot read it, so it cannot forge the request even where a browser would send the
//! cookie (SameSite=Strict is the first defence, this the second).
//!
//! # Seams for single sign-on
//!
//! [`start_session`] starts a full session for a user already verified (the password path calls
//! it after the second factor; OIDC after the ID token) and returns the `Set-Cookie` value and
//! the CSRF token. `store::users::find_or_create_verified` creates the user just in time.

pub(crate) mod accounts;
pub(crate) mod session;
pub(crate) mod sign_in;
pub mod totp;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method};
use store::api_keys::Role;
use store::device_groups::GroupScope;
use store::people_tokens::{PeopleToken, TokenKind};
use store::sessions::{self, Origin, Stage};
use store::users::{self, SignInLimit, User};
use store::{DeviceGroupId, TenantTx};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::Ctx;

pub use totp::SealKey;

/// The cookie's name. `__Host-`: the browser keeps it only if Secure, Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-fleet_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What the API needs for people, from the composition root.
#[derive(Clone, Debug)]
pub struct PeopleSettings {
    /// The clock that decides expiry (tests advance it).
    pub clock: crate::Clock,
    /// Seals TOTP secrets at rest; kept outside the database (fleetd: a file in its data
    /// directory).
    pub seal_key: Arc<SealKey>,
    /// Failed sign-ins per attempted email (default 5 per 15 minutes).
    pub sign_in_limit: SignInLimit,
    /// Failed sign-ins one source address may make per `sign_in_source_window`.
    pub sign_in_failures_per_source: u32,
    /// The window of `sign_in_failures_per_source`.
    pub sign_in_source_window: Duration,
    /// Password verifications (argon2id, 64 MiB each) running at once.
    pub password_verify_concurrency: usize,
    /// How long an invitation link works.
    pub invitation_ttl: Duration,
    /// The issuer shown in authenticator apps.
    pub totp_issuer: String,
}

impl Default for PeopleSettings {
    /// System clock, a random sealing key (secrets then do not survive a restart: fleetd
    /// passes its own), 5 failures per account and 50 per address per 15 minutes, invitations
    /// valid 7 days.
    fn default() -> Self {
        Self {
            clock: crate::Clock::system(),
            seal_key: Arc::new(SealKey::random()),
            sign_in_limit: SignInLimit::default(),
            sign_in_failures_per_source: 50,
            sign_in_source_window: Duration::from_secs(15 * 60),
            password_verify_concurrency: 2,
            invitation_ttl: Duration::from_secs(7 * 86_400),
            totp_issuer: "fleetplane".into(),
        }
    }
}

/// A signed-in person: the user and the session id it came with.
#[derive(Debug)]
pub(crate) struct Person {
    pub(crate) user: User,
    pub(crate) session: PeopleToken,
}

/// The session id in the request's cookie.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

/// Resolves the session of `text` into a caller, or [`ApiError::SessionRequired`]. Ends an
/// expired session; records the use of a live one. A state-changing `method` needs the CSRF
/// token.
pub(crate) async fn authenticate_session(
    ctx: &Ctx,
    text: &str,
    source: IpAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    if let Some(retry_after_secs) = ctx.failures.blocked(source) {
        return Err(ApiError::TooManyFailures { retry_after_secs });
    }
    let refused = |reason: &'static str| {
        ctx.failures.record(source);
        ctx.metrics.auth_refusal(reason);
        ApiError::SessionRequired
    };
    let token = PeopleToken::parse(TokenKind::Session, text).map_err(|_| refused("malformed"))?;
    let now = ctx.state.people.clock.now();
    let mut tx = ctx.state.app.begin(token.tenant()).await?;
    let Some(session) = sessions::find(&mut tx, &token).await? else {
        return Err(refused("unknown_session"));
    };
    let policy = users::policy(&mut tx).await?;
    let user = users::get(&mut tx, session.user_id).await?;
    let live_user = user.filter(|u| u.disabled_at.is_none());
    if session.stage != Stage::Full || session.expired(&policy, now) || live_user.is_none() {
        if session.stage == Stage::Full {
            sessions::delete(&mut tx, &token).await?;
            tx.commit().await?;
        }
        // Not counted against the address: a browser with an old cookie is not an attacker.
        ctx.metrics.auth_refusal("session_ended");
        return Err(ApiError::SessionRequired);
    }
    sessions::touch(&mut tx, &token, now).await?;
    tx.commit().await?;
    if method != Method::GET && method != Method::HEAD {
        check_csrf(&token, headers)?;
    }
    let user = live_user.ok_or(ApiError::SessionRequired)?;
    Ok(Caller::from_person(
        Person {
            user,
            session: token,
        },
        source,
    ))
}

fn check_csrf(token: &PeopleToken, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = token.csrf_token();
    use subtle::ConstantTimeEq;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::CsrfTokenRequired)
    }
}

/// The request's transaction for a signed-in person, after re-reading in it that the session
/// still exists (signed out everywhere from another fleetd, the user disabled).
pub(crate) async fn begin_for(ctx: &Ctx, person: &Person) -> Result<TenantTx, ApiError> {
    let mut tx = ctx.state.app.begin(person.user.tenant_id).await?;
    if sessions::find(&mut tx, &person.session).await?.is_none() {
        return Err(ApiError::SessionRequired);
    }
    Ok(tx)
}

/// A started session: the `Set-Cookie` value and the CSRF token (both shown once).
pub struct StartedSession {
    /// The `Set-Cookie` header value.
    pub set_cookie: HeaderValue,
    /// The CSRF token the console sends back in `X-CSRF-Token`.
    pub csrf_token: String,
}

impl std::fmt::Debug for StartedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartedSession(<redacted>)")
    }
}

/// Starts a full session for `user`, verified by the caller (`how`: `password+totp`,
/// `password`, `oidc`, ...), in `tx`: audited as `user.sign_in`, and the user's failed sign-ins
/// forgotten. The caller commits `tx`, then sends the cookie.
pub async fn start_session(
    tx: &mut TenantTx,
    user: &User,
    origin: &Origin,
    how: &str,
    settings: &PeopleSettings,
) -> Result<StartedSession, ApiError> {
    let now = settings.clock.now();
    let token = sessions::start(tx, user.id, Stage::Full, origin, how, now).await?;
    users::clear_sign_in_failures(tx, &user.email).await?;
    let policy = users::policy(tx).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        token.expose(),
        policy.absolute_timeout.whole_seconds()
    );
    let set_cookie = HeaderValue::from_str(&cookie)
        .map_err(|e| ApiError::Internal(format!("session cookie: {e}")))?;
    Ok(StartedSession {
        set_cookie,
        csrf_token: token.csrf_token(),
    })
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-fleet_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
    )
}

/// Whether `role` must use TOTP: owners and admins always, everyone when the tenant says so.
pub(crate) fn totp_required(role: Role, policy: &users::PeoplePolicy) -> bool {
    matches!(role, Role::Owner | Role::Admin) || policy.totp_required_for_all
}

/// Whether `caller` may give `role` and `scope` (to an invitation or a user): never more power
/// than its own.
pub(crate) fn may_grant(
    caller: &Caller,
    role: Role,
    scope: Option<&[DeviceGroupId]>,
) -> Result<(), ApiError> {
    if role.rank() > caller.role().rank() {
        return Err(ApiError::Forbidden(format!(
            "role {} cannot give role {role}",
            caller.role()
        )));
    }
    if let GroupScope::Only(own) = caller.scope() {
        if !scope.is_some_and(|asked| asked.iter().all(|g| own.contains(g))) {
            return Err(ApiError::Forbidden(
                "a group-scoped caller can only give its own groups".into(),
            ));
        }
    }
    Ok(())
}

/// Whether `caller` may change `target`: only users of a role at most its own, never itself.
pub(crate) fn may_manage(caller: &Caller, target: &User) -> Result<(), ApiError> {
    if target.role.rank() > caller.role().rank() {
        return Err(ApiError::Forbidden(format!(
            "role {} cannot change a user with role {}",
            caller.role(),
            target.role
        )));
    }
    if caller.person().is_some_and(|p| p.user.id == target.id) {
        return Err(ApiError::Forbidden(
            "users cannot change their own role or state".into(),
        ));
    }
    Ok(())
}

/// Verifies a password (or the dummy hash when `stored` is `None`) off the executor, at most
/// `password_verify_concurrency` at once.
pub(crate) async fn verify_password(
    ctx: &Ctx,
    stored: Option<store::credentials::SecretHash>,
    password: &users::Password,
) -> Result<bool, ApiError> {
    let permit = ctx
        .password_permits
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("password permits closed".into()))?;
    let bytes = zeroize::Zeroizing::new(password.as_bytes().to_vec());
    let matches = tokio::task::spawn_blocking(move || {
        store::credentials::verify_password(stored.as_ref(), &bytes)
    })
    .await?;
    drop(permit);
    Ok(matches)
}

/// The origin of a session from its request.
pub(crate) fn origin_of(source: IpAddr, headers: &HeaderMap) -> Origin {
    Origin {
        address: Some(source),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_cookie(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-fleet_session=fps_x ; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("fps_x"));
    }

    #[test]
    fn owners_and_admins_always_need_totp() {
        let mut policy = users::PeoplePolicy {
            idle_timeout: time::Duration::hours(8),
            absolute_timeout: time::Duration::days(30),
            totp_required_for_all: false,
        };
        assert!(totp_required(Role::Owner, &policy) && totp_required(Role::Admin, &policy));
        assert!(!totp_required(Role::Operator, &policy));
        policy.totp_required_for_all = true;
        assert!(totp_required(Role::Auditor, &policy));
    }
}
