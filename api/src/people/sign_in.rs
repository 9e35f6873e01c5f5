//! Signing in: a password first (`POST /v1/sign-in`), then a TOTP or recovery code
//! (`/v1/sign-in/second-factor`) or, for a user who must and has none yet, TOTP enrolment
//! (`/v1/sign-in/enrol-totp`); and accepting an invitation, which sets the password and goes on
//! as a sign-in.
//!
//! Every refusal of a credential is the one [`ApiError::SignInFailed`], whatever was wrong
//! (tenant, email, password, code, a disabled user), and costs the same: an unknown user's
//! password is verified against a dummy hash of the same parameters, and the failure is counted
//! and audited the same way. Past 5 failures per attempted email in 15 minutes (known or not)
//! or the per-address limit, the answer is 429 with `Retry-After`, before any password is
//! checked, so the right password does not get through either.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::people_tokens::{PeopleToken, TokenKind};
use store::sessions::{self, Stage};
use store::users::{self, Email, Password, RecoveryCode, User};
use store::{TenantId, TenantTx};
use utoipa::ToSchema;

use super::totp::TotpSecret;
use super::{origin_of, start_session, totp_required, verify_password};
use crate::client_addr::{client_ip, Peer};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, NoQuery};
use crate::Ctx;

/// The first step: who and the password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    /// The tenant's name (or id).
    pub tenant: String,
    /// The user's email, any case.
    pub email: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for SignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRequest")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// What comes next, and what it needs.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignInAnswer {
    /// `second_factor`, `enrol_totp` or `done` (the session cookie is set).
    pub next: String,
    /// For `second_factor` and `enrol_totp`: the token to send with the next step (10 minutes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// For `enrol_totp`: the new TOTP secret (base32), shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// For `enrol_totp`: the same as an `otpauth://` URI for a QR code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
    /// For `done`: the CSRF token to send in `X-CSRF-Token` with every state-changing request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// For `done` after enrolment: ten recovery codes, shown this once; each works once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

impl SignInAnswer {
    fn next(next: &str) -> Self {
        Self {
            next: next.into(),
            challenge: None,
            totp_secret: None,
            otpauth_uri: None,
            csrf_token: None,
            recovery_codes: None,
        }
    }
}

/// Signs in with a password. A user with TOTP continues at `/v1/sign-in/second-factor`; an
/// owner or admin without TOTP (or anyone, when the tenant requires it) enrols it first at
/// `/v1/sign-in/enrol-totp`; others are signed in at once.
#[utoipa::path(post, path = "/v1/sign-in", tag = "people", request_body = SignInRequest, security(()),
    responses((status = 200, body = SignInAnswer, description = "Next step; with `done`, `Set-Cookie: __Host-fleet_session=...`"),
              (status = 401, body = Problem), (status = 429, body = Problem)))]
pub(crate) async fn sign_in(
    State(ctx): State<Ctx>,
    peer: Peer,
    headers: HeaderMap,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<SignInRequest>,
) -> Result<Response, ApiError> {
    let password = Password::new(request.password);
    let source = admitted_source(&ctx, &peer, &headers)?;
    let email = Email::parse(&request.email)?;
    let settings = &ctx.state.people;
    let now = settings.clock.now();
    let Some(tenant) = find_tenant(&ctx, &request.tenant).await? else {
        // Nothing to count in: cost the same as a wrong password, then the same answer.
        verify_password(&ctx, None, &password).await?;
        ctx.sign_in_failures.record(source);
        return Err(ApiError::SignInFailed);
    };
    let mut tx = ctx.state.app.begin(tenant).await?;
    let blocked =
        users::sign_in_blocked(&mut tx, email.as_str(), settings.sign_in_limit, now).await?;
    if let Some(retry_after_secs) = blocked {
        return Err(ApiError::TooManyFailures { retry_after_secs });
    }
    let loaded = users::load_for_sign_in(&mut tx, &email).await?;
    // The connection goes back before the hash runs.
    tx.commit().await?;
    let (user, hash) = loaded.map_or((None, None), |(user, hash)| (Some(user), hash));
    let right = verify_password(&ctx, hash, &password).await?;
    let tx = ctx.state.app.begin(tenant).await?;
    let user = match user {
        Some(user) if right && user.disabled_at.is_none() => user,
        user => {
            let reason = match &user {
                None => "unknown_user",
                Some(u) if u.disabled_at.is_some() => "disabled",
                Some(_) => "wrong_password",
            };
            return fail(&ctx, tx, &email, user.map(|u| u.id), reason, source).await;
        }
    };
    after_password(&ctx, tx, &user, source, &headers).await
}

/// The client's address, unless it is past its limit of failed sign-ins (429).
fn admitted_source(ctx: &Ctx, peer: &Peer, headers: &HeaderMap) -> Result<IpAddr, ApiError> {
    let source = client_ip(peer.addr.ip(), headers, &ctx.state.trusted_proxies)?;
    match ctx.sign_in_failures.blocked(source) {
        Some(retry_after_secs) => Err(ApiError::TooManyFailures { retry_after_secs }),
        None => Ok(source),
    }
}

/// Opens a sealed TOTP secret of `user`; a secret that does not open is a server fault (the
/// sealing key changed), logged, never a wrong code.
fn unseal(ctx: &Ctx, sealed: Option<&[u8]>, user: &User) -> Result<Option<TotpSecret>, ApiError> {
    sealed
        .map(|sealed| {
            ctx.state
                .people
                .seal_key
                .open(sealed, user.tenant_id, user.id)
        })
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Counts and audits a failed sign-in, then answers it.
async fn fail(
    ctx: &Ctx,
    mut tx: TenantTx,
    email: &Email,
    user: Option<store::UserId>,
    reason: &str,
    source: IpAddr,
) -> Result<Response, ApiError> {
    let settings = &ctx.state.people;
    users::record_sign_in_failure(
        &mut tx,
        email.as_str(),
        user,
        reason,
        settings.sign_in_limit,
        settings.clock.now(),
    )
    .await?;
    tx.commit().await?;
    ctx.sign_in_failures.record(source);
    tracing::info!(%source, reason, "sign-in refused");
    Err(ApiError::SignInFailed)
}

/// A tenant by id or name.
async fn find_tenant(ctx: &Ctx, text: &str) -> Result<Option<TenantId>, ApiError> {
    if let Some(id) = TenantId::parse_canonical(text) {
        return Ok(Some(id));
    }
    Ok(users::tenant_by_name(&ctx.state.app, text).await?)
}

/// The step after a right password: a challenge for the second factor or enrolment, or the
/// session.
async fn after_password(
    ctx: &Ctx,
    mut tx: TenantTx,
    user: &User,
    source: IpAddr,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let settings = &ctx.state.people;
    let now = settings.clock.now();
    let origin = origin_of(source, headers);
    let policy = users::policy(&mut tx).await?;
    if user.totp_enabled_at.is_some() {
        let challenge =
            sessions::start(&mut tx, user.id, Stage::SecondFactor, &origin, "", now).await?;
        tx.commit().await?;
        let mut answer = SignInAnswer::next("second_factor");
        answer.challenge = Some(challenge.expose().to_owned());
        return Ok(Json(answer).into_response());
    }
    if totp_required(user.role, &policy) {
        let secret =
            TotpSecret::new_random().map_err(|_| ApiError::Internal("the CSPRNG failed".into()))?;
        let sealed = settings
            .seal_key
            .seal(&secret, user.tenant_id, user.id)
            .map_err(|_| ApiError::Internal("sealing a TOTP secret failed".into()))?;
        users::set_pending_totp(&mut tx, user.id, &sealed).await?;
        let challenge =
            sessions::start(&mut tx, user.id, Stage::EnrolTotp, &origin, "", now).await?;
        tx.commit().await?;
        let mut answer = SignInAnswer::next("enrol_totp");
        answer.challenge = Some(challenge.expose().to_owned());
        answer.otpauth_uri = Some(secret.otpauth_uri(&settings.totp_issuer, &user.email));
        answer.totp_secret = Some(secret.base32());
        return Ok(Json(answer).into_response());
    }
    let started = start_session(&mut tx, user, &origin, "password", settings).await?;
    tx.commit().await?;
    Ok(done(started, None))
}

fn done(started: super::StartedSession, recovery_codes: Option<Vec<String>>) -> Response {
    let mut answer = SignInAnswer::next("done");
    answer.csrf_token = Some(started.csrf_token.clone());
    answer.recovery_codes = recovery_codes;
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, started.set_cookie);
    response
}

/// The second step: the challenge and a code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondFactorRequest {
    /// The challenge of the first step.
    pub challenge: String,
    /// The current 6-digit TOTP code (or `recovery_code`).
    pub code: Option<String>,
    /// One of the recovery codes, instead of `code`; it never works again.
    pub recovery_code: Option<String>,
}

impl std::fmt::Debug for SecondFactorRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecondFactorRequest(<redacted>)")
    }
}

/// A challenge of the first step that is still good (its stage, not expired, its user enabled
/// and not past the failure limit), with its transaction and user.
async fn open_challenge(
    ctx: &Ctx,
    text: &str,
    stage: Stage,
    source: IpAddr,
) -> Result<(TenantTx, PeopleToken, User), ApiError> {
    let opened = open_challenge_unchecked(ctx, text, stage).await;
    if matches!(opened, Err(ApiError::SignInFailed)) {
        // No account to count a bad challenge against: the address pays for it.
        ctx.sign_in_failures.record(source);
    }
    opened
}

async fn open_challenge_unchecked(
    ctx: &Ctx,
    text: &str,
    stage: Stage,
) -> Result<(TenantTx, PeopleToken, User), ApiError> {
    let token = PeopleToken::parse(TokenKind::Session, text).map_err(|_| ApiError::SignInFailed)?;
    let now = ctx.state.people.clock.now();
    let mut tx = ctx.state.app.begin(token.tenant()).await?;
    let session = sessions::find(&mut tx, &token).await?;
    let policy = users::policy(&mut tx).await?;
    let session = session
        .filter(|s| s.stage == stage && !s.expired(&policy, now))
        .ok_or(ApiError::SignInFailed)?;
    let user = users::get(&mut tx, session.user_id)
        .await?
        .filter(|u| u.disabled_at.is_none())
        .ok_or(ApiError::SignInFailed)?;
    let blocked =
        users::sign_in_blocked(&mut tx, &user.email, ctx.state.people.sign_in_limit, now).await?;
    if let Some(retry_after_secs) = blocked {
        return Err(ApiError::TooManyFailures { retry_after_secs });
    }
    Ok((tx, token, user))
}

/// Completes sign-in with a TOTP code (each accepted once) or a recovery code (each works once).
#[utoipa::path(post, path = "/v1/sign-in/second-factor", tag = "people", request_body = SecondFactorRequest, security(()),
    responses((status = 200, body = SignInAnswer, description = "`done`, with `Set-Cookie: __Host-fleet_session=...`"),
              (status = 401, body = Problem), (status = 429, body = Problem)))]
pub(crate) async fn second_factor(
    State(ctx): State<Ctx>,
    peer: Peer,
    headers: HeaderMap,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<SecondFactorRequest>,
) -> Result<Response, ApiError> {
    let source = admitted_source(&ctx, &peer, &headers)?;
    let (mut tx, challenge, user) =
        open_challenge(&ctx, &request.challenge, Stage::SecondFactor, source).await?;
    let settings = &ctx.state.people;
    let now = settings.clock.now();
    let (right, how) = match (&request.code, &request.recovery_code) {
        (Some(code), None) => {
            let state = users::totp_state(&mut tx, user.id).await?;
            let secret = unseal(&ctx, state.sealed.as_deref(), &user)?;
            let step = secret.and_then(|s| s.matching_step(code, now.unix_timestamp()));
            let accepted = match step {
                Some(step) => users::accept_totp_step(&mut tx, user.id, step).await?,
                None => false,
            };
            (accepted, "password+totp")
        }
        (None, Some(code)) => {
            let code = RecoveryCode::typed(code);
            let used = users::use_recovery_code(
                &mut tx,
                user.id,
                &code,
                &store::audit::Actor::User(user.id),
                now,
            )
            .await?;
            (used, "password+recovery_code")
        }
        _ => {
            return Err(crate::extract::invalid(
                "code",
                "give exactly one of code and recovery_code",
            ))
        }
    };
    if !right {
        let email = Email::parse(&user.email)?;
        return fail(&ctx, tx, &email, Some(user.id), "wrong_code", source).await;
    }
    sessions::delete(&mut tx, &challenge).await?;
    let started =
        start_session(&mut tx, &user, &origin_of(source, &headers), how, settings).await?;
    tx.commit().await?;
    Ok(done(started, None))
}

/// The enrolment step: the challenge and the first code from the new secret.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The challenge of the first step.
    pub challenge: String,
    /// The current 6-digit code computed from the secret just shown.
    pub code: String,
}

impl std::fmt::Debug for EnrolRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrolRequest(<redacted>)")
    }
}

/// Confirms TOTP enrolment with a first code and completes sign-in; the answer carries ten
/// recovery codes, shown this once.
#[utoipa::path(post, path = "/v1/sign-in/enrol-totp", tag = "people", request_body = EnrolRequest, security(()),
    responses((status = 200, body = SignInAnswer, description = "`done` with `recovery_codes`, and `Set-Cookie`"),
              (status = 401, body = Problem), (status = 429, body = Problem)))]
pub(crate) async fn enrol_totp(
    State(ctx): State<Ctx>,
    peer: Peer,
    headers: HeaderMap,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<EnrolRequest>,
) -> Result<Response, ApiError> {
    let source = admitted_source(&ctx, &peer, &headers)?;
    let (mut tx, challenge, user) =
        open_challenge(&ctx, &request.challenge, Stage::EnrolTotp, source).await?;
    let settings = &ctx.state.people;
    let now = settings.clock.now();
    let state = users::totp_state(&mut tx, user.id).await?;
    let secret = unseal(&ctx, state.pending.as_deref(), &user)?;
    let Some(step) = secret.and_then(|s| s.matching_step(&request.code, now.unix_timestamp()))
    else {
        let email = Email::parse(&user.email)?;
        return fail(
            &ctx,
            tx,
            &email,
            Some(user.id),
            "wrong_enrolment_code",
            source,
        )
        .await;
    };
    let codes: Vec<RecoveryCode> = (0..users::RECOVERY_CODES)
        .map(|_| RecoveryCode::new_random())
        .collect();
    let actor = store::audit::Actor::User(user.id);
    users::confirm_totp(&mut tx, user.id, step, &codes, &actor, now).await?;
    sessions::delete(&mut tx, &challenge).await?;
    let started = start_session(
        &mut tx,
        &user,
        &origin_of(source, &headers),
        "password+totp",
        settings,
    )
    .await?;
    tx.commit().await?;
    Ok(done(
        started,
        Some(codes.iter().map(RecoveryCode::display).collect()),
    ))
}

/// Accepting an invitation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// The invitation token from the link.
    pub token: String,
    /// The password to set: at least 12 characters, not a common one.
    pub password: String,
}

impl std::fmt::Debug for AcceptRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptRequest(<redacted>)")
    }
}

/// Accepts an invitation: creates the user with the password, then goes on as a sign-in (an
/// owner or admin enrols TOTP next).
#[utoipa::path(post, path = "/v1/invitations/accept", tag = "people", request_body = AcceptRequest, security(()),
    responses((status = 201, body = SignInAnswer), (status = 404, body = Problem, description = "Unknown, used or expired invitation"),
              (status = 422, body = Problem), (status = 429, body = Problem)))]
pub(crate) async fn accept_invitation(
    State(ctx): State<Ctx>,
    peer: Peer,
    headers: HeaderMap,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<AcceptRequest>,
) -> Result<Response, ApiError> {
    let source = admitted_source(&ctx, &peer, &headers)?;
    let password = Password::new(request.password);
    let Ok(token) = PeopleToken::parse(TokenKind::Invitation, &request.token) else {
        ctx.sign_in_failures.record(source);
        return Err(ApiError::ResourceNotFound("invitation"));
    };
    let now = ctx.state.people.clock.now();
    let mut tx = ctx.state.app.begin(token.tenant()).await?;
    let user = match users::accept_invitation(&mut tx, &token, &password, now).await {
        Ok(user) => user,
        Err(store::StoreError::NotFound(what)) => {
            ctx.sign_in_failures.record(source);
            return Err(ApiError::ResourceNotFound(what));
        }
        Err(e) => return Err(e.into()),
    };
    let mut response = after_password(&ctx, tx, &user, source, &headers).await?;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// Signs in a person the tenant's identity provider vouched for (`crate::oidc::complete`): the
/// user with that email, or one created just in time with the mapped role when the email's
/// domain is open to it. A disabled user, or no user and a closed domain, is a failed sign-in
/// (audited, with the email as the actor). The provider owns the second factor: no TOTP here.
pub(crate) async fn sign_in_verified(
    ctx: &Ctx,
    identity: &crate::oidc::VerifiedIdentity,
    source: IpAddr,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let settings = &ctx.state.people;
    let now = settings.clock.now();
    let email = Email::parse(&identity.email)?;
    let mut tx = ctx.state.app.begin(identity.tenant).await?;
    let user = if identity.may_create_user {
        let actor = store::audit::Actor::SignIn(email.as_str().to_owned());
        Some(
            users::find_or_create_verified(&mut tx, &email, identity.role, &actor, now)
                .await?
                .0,
        )
    } else {
        users::get_by_email(&mut tx, &email).await?
    };
    let refusal = match &user {
        None => SsoRefusal::NO_USER,
        Some(user) if user.disabled_at.is_some() => SsoRefusal::DISABLED,
        Some(user) => {
            let started =
                start_session(&mut tx, user, &origin_of(source, headers), "oidc", settings).await?;
            tx.commit().await?;
            return Ok(done(started, None));
        }
    };
    let user_id = user.as_ref().map(|u| u.id);
    users::record_sign_in_failure(
        &mut tx,
        email.as_str(),
        user_id,
        refusal.reason,
        settings.sign_in_limit,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%source, reason = refusal.reason, "single sign-on refused");
    Err(ApiError::SsoRefused(refusal.detail.into()))
}

/// Why a verified identity gets no session: the audited reason and what the person is told.
struct SsoRefusal {
    reason: &'static str,
    detail: &'static str,
}

impl SsoRefusal {
    const NO_USER: Self = Self {
        reason: "sso_no_user",
        detail: "no user has this email, and its domain is not open to new users",
    };
    const DISABLED: Self = Self {
        reason: "disabled",
        detail: "the user is disabled",
    };
}

/// Audits a sign-in through the tenant's provider refused before anyone was identified.
pub(crate) async fn audit_sso_refusal(
    ctx: &Ctx,
    tenant: TenantId,
    reason: &str,
) -> Result<(), ApiError> {
    let mut tx = ctx.state.app.begin(tenant).await?;
    users::record_sso_refusal(&mut tx, reason).await?;
    tx.commit().await?;
    Ok(())
}
