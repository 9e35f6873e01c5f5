//! The signed-in person's own routes: the session, signing out (here or everywhere), the list
//! of sessions, and changing the password. Cookie sessions only.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::audit::Action;
use store::sessions;
use store::users::{self, Password};
use utoipa::ToSchema;

use super::accounts::UserView;
use super::{clear_cookie, verify_password, Person};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, NoBody, NoQuery};
use crate::management::rfc3339;
use crate::Ctx;

fn person(caller: &Caller) -> Result<&Person, ApiError> {
    caller.person().ok_or(ApiError::SessionRequired)
}

/// The session's user and its CSRF token.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Who is signed in.
    pub user: UserView,
    /// The token to send in `X-CSRF-Token` with every state-changing request.
    pub csrf_token: String,
}

/// Who is signed in, and the CSRF token (for a console reloaded after sign-in).
#[utoipa::path(get, path = "/v1/session", tag = "people",
    responses((status = 200, body = SessionView), (status = 401, body = Problem)))]
pub(crate) async fn show(
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<SessionView>, ApiError> {
    let person = person(&caller)?;
    Ok(Json(SessionView {
        user: UserView::from(&person.user),
        csrf_token: person.session.csrf_token(),
    }))
}

/// Signs out: this session ends and the cookie is removed.
#[utoipa::path(delete, path = "/v1/session", tag = "people",
    responses((status = 204, description = "Signed out"), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn sign_out(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    _no_body: NoBody,
) -> Result<Response, ApiError> {
    let person = person(&caller)?;
    let mut tx = caller.begin(&ctx).await?;
    sessions::sign_out(&mut tx, &person.session, person.user.id).await?;
    tx.commit().await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, clear_cookie())],
    )
        .into_response())
}

/// How many sessions ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsEnded {
    /// Sessions ended, this one included.
    pub sessions_ended: u64,
}

/// Signs out everywhere: every session of this user ends, this one included.
#[utoipa::path(post, path = "/v1/session/sign-out-everywhere", tag = "people",
    responses((status = 200, body = SessionsEnded), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn sign_out_everywhere(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    _no_body: NoBody,
) -> Result<Response, ApiError> {
    let person = person(&caller)?;
    let mut tx = caller.begin(&ctx).await?;
    let ended = sessions::sign_out_everywhere(&mut tx, person.user.id).await?;
    tx.commit().await?;
    let body = Json(SessionsEnded {
        sessions_ended: ended,
    });
    Ok(([(header::SET_COOKIE, clear_cookie())], body).into_response())
}

/// One of the user's sessions. Never its id.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// A short name for it: 16 hex characters of its stored digest (not the id).
    pub handle: String,
    /// Whether it is the session of this request.
    pub current: bool,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it was last used.
    pub last_used_at: String,
    /// The address it signed in from.
    pub address: Option<String>,
    /// The user agent it signed in with.
    pub user_agent: Option<String>,
}

/// The user's sessions, most recently used first.
#[utoipa::path(get, path = "/v1/sessions", tag = "people",
    responses((status = 200, body = Vec<SessionInfo>), (status = 401, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let person = person(&caller)?;
    let mut tx = caller.begin(&ctx).await?;
    let infos = session_infos(&mut tx, person.user.id, Some(person)).await?;
    tx.commit().await?;
    Ok(Json(infos))
}

/// The signed-in sessions of `user`, most recently used first, without their ids; `current`
/// marks the one of `viewer`'s request, when the viewer is a person.
pub(super) async fn session_infos(
    tx: &mut store::TenantTx,
    user: store::UserId,
    viewer: Option<&Person>,
) -> Result<Vec<SessionInfo>, ApiError> {
    let current = match viewer {
        Some(person) => sessions::find(tx, &person.session).await?.map(|s| s.handle),
        None => None,
    };
    let all = sessions::list(tx, user).await?;
    Ok(all
        .into_iter()
        .map(|s| SessionInfo {
            current: current.as_deref() == Some(s.handle.as_str()),
            handle: s.handle,
            created_at: rfc3339(s.created_at),
            last_used_at: rfc3339(s.last_used_at),
            address: s.address.map(|a| a.to_string()),
            user_agent: s.user_agent,
        })
        .collect())
}

/// A password change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password.
    pub current_password: String,
    /// The new one: at least 12 characters, not a common one.
    pub new_password: String,
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordChange(<redacted>)")
    }
}

/// Changes the user's password; every other session of the user ends.
#[utoipa::path(post, path = "/v1/session/password", tag = "people", request_body = PasswordChange,
    responses((status = 204, description = "Changed"), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn change_password(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(change): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let person = person(&caller)?;
    let current = Password::new(change.current_password);
    let new = Password::new(change.new_password);
    new.check_policy()?;
    let email = users::Email::parse(&person.user.email)?;
    let mut tx = caller.begin(&ctx).await?;
    let hash = users::load_for_sign_in(&mut tx, &email)
        .await?
        .and_then(|(_, hash)| hash);
    tx.commit().await?;
    if !verify_password(&ctx, hash, &current).await? {
        return Err(crate::extract::invalid(
            "current_password",
            "is not the current password",
        ));
    }
    let mut tx = caller.begin(&ctx).await?;
    users::set_password(
        &mut tx,
        person.user.id,
        &new,
        Some(&person.session.digest()),
        &caller.actor(),
        Action::UserPasswordChange,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A TOTP secret to enrol, shown this once.
#[derive(Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// The secret, base32.
    pub totp_secret: String,
    /// The same as an `otpauth://` URI for a QR code.
    pub otpauth_uri: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(<redacted>)")
    }
}

/// Starts enrolling TOTP for a user whose role does not require it (or replacing one's
/// authenticator): a new secret, effective once confirmed with `/v1/session/totp/confirm`.
#[utoipa::path(post, path = "/v1/session/totp", tag = "people",
    responses((status = 200, body = TotpEnrolment), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn start_totp(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    _no_body: NoBody,
) -> Result<Json<TotpEnrolment>, ApiError> {
    let person = person(&caller)?;
    let user = &person.user;
    let settings = &ctx.state.people;
    let secret = super::totp::TotpSecret::new_random()
        .map_err(|_| ApiError::Internal("the CSPRNG failed".into()))?;
    let sealed = settings
        .seal_key
        .seal(&secret, user.tenant_id, user.id)
        .map_err(|_| ApiError::Internal("sealing a TOTP secret failed".into()))?;
    let mut tx = caller.begin(&ctx).await?;
    users::set_pending_totp(&mut tx, user.id, &sealed).await?;
    tx.commit().await?;
    Ok(Json(TotpEnrolment {
        otpauth_uri: secret.otpauth_uri(&settings.totp_issuer, &user.email),
        totp_secret: secret.base32(),
    }))
}

/// The first code of the secret being enrolled.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirmation {
    /// The current 6-digit code.
    pub code: String,
}

impl std::fmt::Debug for TotpConfirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpConfirmation(<redacted>)")
    }
}

/// Ten recovery codes, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Each works once in place of a TOTP code.
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCodes(<redacted>)")
    }
}

/// Confirms the secret of `/v1/session/totp` with its current code: from now on sign-in asks
/// for a code. The answer carries new recovery codes (the old ones stop working).
#[utoipa::path(post, path = "/v1/session/totp/confirm", tag = "people", request_body = TotpConfirmation,
    responses((status = 200, body = RecoveryCodes), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn confirm_totp(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(confirmation): ApiJson<TotpConfirmation>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let person = person(&caller)?;
    let user = &person.user;
    let settings = &ctx.state.people;
    let now = settings.clock.now();
    let mut tx = caller.begin(&ctx).await?;
    let pending = users::totp_state(&mut tx, user.id).await?.pending;
    let Some(pending) = pending else {
        return Err(ApiError::Conflict("no TOTP enrolment is in progress"));
    };
    let secret = settings
        .seal_key
        .open(&pending, user.tenant_id, user.id)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(step) = secret.matching_step(&confirmation.code, now.unix_timestamp()) else {
        return Err(crate::extract::invalid(
            "code",
            "is not the current code of the new secret",
        ));
    };
    let codes: Vec<users::RecoveryCode> = (0..users::RECOVERY_CODES)
        .map(|_| users::RecoveryCode::new_random())
        .collect();
    users::confirm_totp(&mut tx, user.id, step, &codes, &caller.actor(), now).await?;
    tx.commit().await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes.iter().map(users::RecoveryCode::display).collect(),
    }))
}
