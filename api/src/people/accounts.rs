//! `/v1/users` and `/v1/invitations`: owners and admins invite people (the link token is shown
//! once), list, disable, enable, change the role of, and remove users. Nobody gives more power
//! than their own or changes a user above them, and the last enabled owner stays an owner.
//! Owners and admins also see and end a user's sessions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use store::api_keys::Role;
use store::sessions;
use store::users::{self, Email, Invitation, NewUser, User};
use store::{DeviceGroupId, InvitationId, UserId};
use utoipa::ToSchema;

use super::session::{session_infos, SessionInfo, SessionsEnded};
use super::{may_grant, may_manage};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, NoBody, NoQuery, PathId};
use crate::management::api_keys::RoleName;
use crate::management::{rfc3339, rfc3339_opt};
use crate::Ctx;

/// A user as listed: never a secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    /// The sign-in name, lower-cased.
    pub email: String,
    /// What the user may do.
    #[schema(value_type = RoleName)]
    pub role: Role,
    /// The groups it is limited to; `null`: every group.
    #[schema(value_type = Option<Vec<String>>)]
    pub group_ids: Option<Vec<DeviceGroupId>>,
    /// Whether TOTP is enrolled.
    pub totp_enrolled: bool,
    /// Whether it has a password (single sign-on users may not).
    pub has_password: bool,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Who created it (audit actor).
    pub created_by: String,
    /// When it was disabled; `null`: it may sign in.
    pub disabled_at: Option<String>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            email: u.email.clone(),
            role: u.role,
            group_ids: u.group_scope.clone(),
            totp_enrolled: u.totp_enabled_at.is_some(),
            has_password: u.has_password,
            created_at: rfc3339(u.created_at),
            created_by: u.created_by.clone(),
            disabled_at: rfc3339_opt(u.disabled_at),
        }
    }
}

impl crate::extract::Resource for UserId {
    const NAME: &'static str = "user";
}

/// The tenant's users, by email.
#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = Vec<UserView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let all = users::list(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(all.iter().map(UserView::from).collect()))
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn show(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let user = users::get(&mut tx, id)
        .await?
        .ok_or(ApiError::ResourceNotFound("user"))?;
    tx.commit().await?;
    Ok(Json(UserView::from(&user)))
}

/// A new role (and group scope) for a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// At most the caller's own role.
    #[schema(value_type = RoleName)]
    pub role: Role,
    /// Limit the user to these device groups; absent or `null`: every group.
    #[schema(value_type = Option<Vec<String>>)]
    pub group_ids: Option<Vec<DeviceGroupId>>,
}

/// Changes a user's role and group scope. The last enabled owner cannot be demoted (409).
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", request_body = RoleChange,
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn update(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
    ApiJson(change): ApiJson<RoleChange>,
) -> Result<Json<UserView>, ApiError> {
    may_grant(&caller, change.role, change.group_ids.as_deref())?;
    let mut tx = caller.begin(&ctx).await?;
    let target = existing(&mut tx, id).await?;
    may_manage(&caller, &target)?;
    let user = users::change_role(
        &mut tx,
        id,
        change.role,
        change.group_ids.as_deref(),
        &caller.actor(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(UserView::from(&user)))
}

async fn existing(tx: &mut store::TenantTx, id: UserId) -> Result<User, ApiError> {
    users::get(tx, id)
        .await?
        .ok_or(ApiError::ResourceNotFound("user"))
}

async fn set_disabled(
    ctx: &Ctx,
    caller: &Caller,
    id: UserId,
    disabled: bool,
) -> Result<Json<UserView>, ApiError> {
    let mut tx = caller.begin(ctx).await?;
    let target = existing(&mut tx, id).await?;
    may_manage(caller, &target)?;
    let now = ctx.state.people.clock.now();
    let user = users::set_disabled(&mut tx, id, disabled, &caller.actor(), now).await?;
    tx.commit().await?;
    Ok(Json(UserView::from(&user)))
}

/// Disables a user: its sessions end and it cannot sign in. Not the last enabled owner (409).
#[utoipa::path(post, path = "/v1/users/{id}/disable", tag = "users",
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn disable(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
    _no_body: NoBody,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(&ctx, &caller, id, true).await
}

/// Enables a disabled user again.
#[utoipa::path(post, path = "/v1/users/{id}/enable", tag = "users",
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn enable(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
    _no_body: NoBody,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(&ctx, &caller, id, false).await
}

/// Removes a user and its sessions. Not the last enabled owner (409).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 204, description = "Removed"), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn remove(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
    _no_body: NoBody,
) -> Result<StatusCode, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let target = existing(&mut tx, id).await?;
    may_manage(&caller, &target)?;
    users::remove(&mut tx, id, &caller.actor()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's signed-in sessions, most recently used first: when each started and was last used,
/// its address and user agent. Never a session id.
#[utoipa::path(get, path = "/v1/users/{id}/sessions", tag = "users",
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, body = Vec<SessionInfo>), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn list_sessions(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let user = existing(&mut tx, id).await?;
    let infos = session_infos(&mut tx, user.id, caller.person()).await?;
    tx.commit().await?;
    Ok(Json(infos))
}

/// Ends every session of a user at once (audited as `user.sign_out_everywhere` by the caller).
/// As for disabling, not a user of a higher role, nor the caller itself (its own are
/// `/v1/session/sign-out-everywhere`).
#[utoipa::path(delete, path = "/v1/users/{id}/sessions", tag = "users",
    params(("id" = String, Path, description = "the user's id")),
    responses((status = 200, body = SessionsEnded), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn end_sessions(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<UserId>,
    _no_body: NoBody,
) -> Result<Json<SessionsEnded>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let target = existing(&mut tx, id).await?;
    may_manage(&caller, &target)?;
    let ended = sessions::end_all(&mut tx, id, &caller.actor()).await?;
    tx.commit().await?;
    Ok(Json(SessionsEnded {
        sessions_ended: ended,
    }))
}

/// An invitation as listed: never its token.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationView {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: InvitationId,
    /// Who is invited.
    pub email: String,
    /// The role the user will have.
    #[schema(value_type = RoleName)]
    pub role: Role,
    /// The groups the user will be limited to.
    #[schema(value_type = Option<Vec<String>>)]
    pub group_ids: Option<Vec<DeviceGroupId>>,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// By whom (audit actor).
    pub created_by: String,
    /// When it stops working.
    pub expires_at: String,
    /// When it was accepted.
    pub accepted_at: Option<String>,
}

impl From<&Invitation> for InvitationView {
    fn from(i: &Invitation) -> Self {
        Self {
            id: i.id,
            email: i.email.clone(),
            role: i.role,
            group_ids: i.group_scope.clone(),
            created_at: rfc3339(i.created_at),
            created_by: i.created_by.clone(),
            expires_at: rfc3339(i.expires_at),
            accepted_at: rfc3339_opt(i.accepted_at),
        }
    }
}

/// Whom to invite.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    /// The person's email.
    pub email: String,
    /// At most the caller's own role.
    #[schema(value_type = RoleName)]
    pub role: Role,
    /// Limit the user to these device groups.
    #[schema(value_type = Option<Vec<String>>)]
    pub group_ids: Option<Vec<DeviceGroupId>>,
}

/// A new invitation and, this once, its token.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedInvitation {
    /// The token for the link (`fpi_...`); accept with `POST /v1/invitations/accept`. Shown
    /// only in this response.
    pub token: String,
    /// The invitation as it will be listed.
    #[serde(flatten)]
    pub invitation: InvitationView,
}

/// Invites a person by email, with at most the caller's power. The token is in this answer only.
#[utoipa::path(post, path = "/v1/invitations", tag = "users", request_body = NewInvitation,
    responses((status = 201, body = CreatedInvitation), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn invite(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<NewInvitation>,
) -> Result<(StatusCode, Json<CreatedInvitation>), ApiError> {
    may_grant(&caller, request.role, request.group_ids.as_deref())?;
    let new = NewUser {
        email: Email::parse(&request.email)?,
        role: request.role,
        group_scope: request.group_ids,
    };
    let settings = &ctx.state.people;
    let ttl = time::Duration::try_from(settings.invitation_ttl)
        .map_err(|e| ApiError::Internal(format!("invitation ttl: {e}")))?;
    let mut tx = caller.begin(&ctx).await?;
    let (invitation, token) =
        users::invite(&mut tx, &new, ttl, &caller.actor(), settings.clock.now()).await?;
    tx.commit().await?;
    let created = CreatedInvitation {
        token: token.expose().to_owned(),
        invitation: InvitationView::from(&invitation),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// The tenant's invitations, newest first.
#[utoipa::path(get, path = "/v1/invitations", tag = "users",
    responses((status = 200, body = Vec<InvitationView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn list_invitations(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<Vec<InvitationView>>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let all = users::list_invitations(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(all.iter().map(InvitationView::from).collect()))
}
