//! `/v1/enrollment-tokens`: create (the token is shown once) with all its limits, list, show,
//! revoke.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use store::device_groups::DEFAULT_GROUP;
use store::enrollment_tokens::{self, EnrollmentToken, NewEnrollmentToken};
use store::EnrollmentTokenId;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{rfc3339, rfc3339_opt};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, NoBody, NoQuery, Page, PathId, Query, Resource};
use crate::Ctx;

/// An enrollment token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenView {
    /// The token's id (the second field of the token text).
    #[schema(value_type = String, format = Uuid)]
    pub id: EnrollmentTokenId,
    /// Display name.
    pub name: String,
    /// `active`, `revoked`, `expired` or `used_up`.
    pub state: String,
    /// Networks enrollments may come from.
    pub allowed_cidrs: Vec<String>,
    /// Enrollments per UTC day.
    pub daily_limit: u32,
    /// Enrollments so far today (UTC).
    pub used_today: u32,
    /// Enrollments in total, when limited.
    pub max_uses: Option<u64>,
    /// Enrollments so far.
    pub uses: u64,
    /// When it stops working.
    pub expires_at: String,
    /// The group enrolled devices join.
    pub device_group: String,
    /// The labels enrolled devices get.
    pub device_labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When it last enrolled a device.
    pub last_used_at: Option<String>,
}

impl From<&EnrollmentToken> for EnrollmentTokenView {
    fn from(t: &EnrollmentToken) -> Self {
        Self {
            id: t.id,
            name: t.name.clone(),
            state: t.state(OffsetDateTime::now_utc()).as_str().into(),
            allowed_cidrs: t.allowed_cidrs.iter().map(ToString::to_string).collect(),
            daily_limit: t.daily_limit,
            used_today: t.used_today,
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at: rfc3339(t.expires_at),
            device_group: t.device_group.clone(),
            device_labels: t.device_labels.clone(),
            created_at: rfc3339(t.created_at),
            created_by: t.created_by.clone(),
            revoked_at: rfc3339_opt(t.revoked_at),
            revoked_by: t.revoked_by.clone(),
            last_used_at: rfc3339_opt(t.last_used_at),
        }
    }
}

/// A new token and, this once, its text.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    /// The complete token (`fpe_…`) for the devices. Shown only in this response.
    pub token: String,
    /// The token as it will be listed.
    #[serde(flatten)]
    pub enrollment_token: EnrollmentTokenView,
}

/// What to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentTokenRequest {
    /// Display name, 1 to 200 bytes.
    pub name: String,
    /// Networks enrollments may come from (1 to 64); `0.0.0.0/0` or `::/0` for anywhere.
    #[schema(value_type = Vec<String>)]
    pub allowed_cidrs: Vec<IpNet>,
    /// Enrollments per UTC day, at least 1.
    #[schema(minimum = 1)]
    pub daily_limit: u32,
    /// When it stops working (RFC 3339, in the future).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Enrollments in total; absent: unlimited until expiry.
    #[schema(minimum = 1)]
    pub max_uses: Option<u64>,
    /// The group enrolled devices join (by name); `default` when absent.
    pub device_group: Option<String>,
    /// Labels enrolled devices get (at most 64).
    #[serde(default)]
    pub device_labels: BTreeMap<String, String>,
}

/// Creates a token. Its text is in this answer only.
#[utoipa::path(post, path = "/v1/enrollment-tokens", tag = "enrollment-tokens",
    request_body = NewEnrollmentTokenRequest,
    responses((status = 201, body = CreatedEnrollmentToken), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<NewEnrollmentTokenRequest>,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), ApiError> {
    let new = NewEnrollmentToken {
        name: request.name,
        allowed_cidrs: request.allowed_cidrs,
        daily_limit: request.daily_limit,
        max_uses: request.max_uses,
        expires_at: request.expires_at,
        device_group: request
            .device_group
            .unwrap_or_else(|| DEFAULT_GROUP.to_owned()),
        device_labels: request.device_labels,
    };
    let mut tx = caller.begin(&ctx).await?;
    let issued = enrollment_tokens::create(&mut tx, &new, &caller.actor()).await?;
    tx.commit().await?;
    tracing::info!(tenant = %caller.tenant(), token = %issued.token.id, "enrollment token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            token: issued.secret.expose().to_owned(),
            enrollment_token: EnrollmentTokenView::from(&issued.token),
        }),
    ))
}

/// The tenant's tokens, by id.
#[utoipa::path(get, path = "/v1/enrollment-tokens", tag = "enrollment-tokens",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<EnrollmentTokenView>), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<EnrollmentTokenView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    query.finish()?;
    let after: Option<EnrollmentTokenId> = page.after()?;
    let mut tx = caller.begin(&ctx).await?;
    let tokens = enrollment_tokens::list(&mut tx, after, page.limit).await?;
    tx.commit().await?;
    let views = tokens.iter().map(EnrollmentTokenView::from).collect();
    Ok(Json(page.page(views, |t: &EnrollmentTokenView| t.id)))
}

/// One token.
#[utoipa::path(get, path = "/v1/enrollment-tokens/{id}", tag = "enrollment-tokens",
    params(("id" = String, Path)),
    responses((status = 200, body = EnrollmentTokenView), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn show(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<EnrollmentTokenId>,
) -> Result<Json<EnrollmentTokenView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let token = enrollment_tokens::get(&mut tx, id)
        .await?
        .ok_or_else(EnrollmentTokenId::not_found)?;
    tx.commit().await?;
    Ok(Json(EnrollmentTokenView::from(&token)))
}

/// Revokes a token: it enrolls nothing more; devices it enrolled stay.
#[utoipa::path(delete, path = "/v1/enrollment-tokens/{id}", tag = "enrollment-tokens",
    params(("id" = String, Path)),
    responses((status = 200, body = EnrollmentTokenView), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<EnrollmentTokenId>,
    _no_body: NoBody,
) -> Result<Json<EnrollmentTokenView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    enrollment_tokens::revoke(&mut tx, id, &caller.actor()).await?;
    let token = enrollment_tokens::get(&mut tx, id)
        .await?
        .ok_or_else(EnrollmentTokenId::not_found)?;
    tx.commit().await?;
    tracing::info!(tenant = %caller.tenant(), token = %id, by = %caller.actor(), "enrollment token revoked");
    Ok(Json(EnrollmentTokenView::from(&token)))
}
