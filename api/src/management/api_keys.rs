//! `/v1/api-keys`: create (the key is shown once), list, show, revoke.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use store::api_keys::{self, ApiKey, NewApiKey, Role};
use store::{ApiKeyId, DeviceGroupId};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{rfc3339, rfc3339_opt};
use crate::auth::{may_create_key, may_revoke_key, Caller};
use crate::error::{ApiError, Problem};
use crate::extract::{invalid, ApiJson, NoBody, NoQuery, Page, PathId, Query, Resource};
use crate::Ctx;

/// A key's role, as the API spells [`Role`]: `owner`, `admin`, `operator` or `auditor` (what
/// each may do is in every operation's description). Describes the field in the OpenAPI
/// document only.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum RoleName {
    /// Everything, including other owners and the tenant's settings.
    Owner,
    /// Also API keys and enrollment tokens.
    Admin,
    /// Devices and groups.
    Operator,
    /// Reads everything, changes nothing.
    Auditor,
}

/// An API key as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// The key's public id (the third field of the key text).
    #[schema(value_type = String, example = "AbCdEf123456")]
    pub id: ApiKeyId,
    /// Display name.
    pub name: String,
    /// What the key may do.
    #[schema(value_type = RoleName)]
    pub role: Role,
    /// The groups it is limited to; `null`: every group.
    #[schema(value_type = Option<Vec<String>>)]
    pub group_ids: Option<Vec<DeviceGroupId>>,
    /// When it stops working (RFC 3339); `null`: never.
    pub expires_at: Option<String>,
    /// Networks it may be used from; `null`: anywhere.
    pub allowed_cidrs: Option<Vec<String>>,
    /// Browser origins allowed to use it.
    pub cors_origins: Option<Vec<String>>,
    /// When it was created.
    pub created_at: String,
    /// Who created it (audit actor).
    pub created_by: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When it was last used (recorded at most once a minute).
    pub last_used_at: Option<String>,
    /// From which address.
    pub last_used_ip: Option<String>,
    /// `active`, `revoked` or `expired`.
    pub state: String,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        let state = if k.revoked_at.is_some() {
            "revoked"
        } else if k.is_expired(OffsetDateTime::now_utc()) {
            "expired"
        } else {
            "active"
        };
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role,
            group_ids: k.group_scope.clone(),
            expires_at: rfc3339_opt(k.expires_at),
            allowed_cidrs: k
                .allowed_cidrs
                .as_ref()
                .map(|nets| nets.iter().map(ToString::to_string).collect()),
            cors_origins: k.cors_origins.clone(),
            created_at: rfc3339(k.created_at),
            created_by: k.created_by.clone(),
            revoked_at: rfc3339_opt(k.revoked_at),
            revoked_by: k.revoked_by.clone(),
            last_used_at: rfc3339_opt(k.last_used_at),
            last_used_ip: k.last_used_ip.map(|ip| ip.to_string()),
            state: state.into(),
        }
    }
}

/// A new key and, this once, its text.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The complete key (`fpk_…`). Shown only in this response; store it now.
    pub key: String,
    /// The key as it will be listed.
    #[serde(flatten)]
    pub api_key: ApiKeyView,
}

/// What to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    /// Display name, 1 to 200 bytes.
    pub name: String,
    /// At most the caller's own role.
    #[schema(value_type = RoleName)]
    pub role: Role,
    /// Limit the key to these device groups (at most 64).
    #[schema(value_type = Option<Vec<String>>)]
    pub group_ids: Option<Vec<DeviceGroupId>>,
    /// When it stops working (RFC 3339, in the future).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Networks it may be used from, e.g. `10.0.0.0/8` (at most 64).
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// Browser origins allowed to use it, e.g. `https://console.example.com` (at most 16).
    pub cors_origins: Option<Vec<String>>,
}

/// Creates a key with at most the caller's power. The key text is in this answer only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = NewApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(request): ApiJson<NewApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    may_create_key(&caller, request.role, request.group_ids.as_deref())?;
    if let (Some(own), Some(asked)) = (caller.expires_at(), request.expires_at) {
        if asked > own {
            return Err(invalid(
                "expires_at",
                "must not be later than the expiry of the key creating it",
            ));
        }
    }
    let new = NewApiKey {
        name: request.name,
        role: request.role,
        group_scope: request.group_ids,
        // A key that expires cannot create one that outlives it.
        expires_at: request.expires_at.or(caller.expires_at()),
        allowed_cidrs: request.allowed_cidrs,
        cors_origins: request.cors_origins,
    };
    let mut tx = caller.begin(&ctx).await?;
    let issued = api_keys::create(&mut tx, &new, &ctx.state.key_env, &caller.actor()).await?;
    tx.commit().await?;
    tracing::info!(tenant = %caller.tenant(), key = %issued.key.id, role = %issued.key.role, "API key created");
    let created = CreatedApiKey {
        key: issued.secret.expose().to_owned(),
        api_key: ApiKeyView::from(&issued.key),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// The tenant's keys, by id.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<ApiKeyView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<ApiKeyView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    query.finish()?;
    let after: Option<ApiKeyId> = page.after()?;
    let mut tx = caller.begin(&ctx).await?;
    let keys = api_keys::list(&mut tx, after.as_ref(), page.limit).await?;
    tx.commit().await?;
    let views = keys.iter().map(ApiKeyView::from).collect();
    Ok(Json(page.page(views, |k: &ApiKeyView| k.id.clone())))
}

/// One key.
#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "the key's public id")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn show(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<ApiKeyId>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let key = api_keys::get(&mut tx, &id)
        .await?
        .ok_or_else(ApiKeyId::not_found)?;
    tx.commit().await?;
    Ok(Json(ApiKeyView::from(&key)))
}

/// Revokes a key (of a role at most the caller's): refused from the next request on, on every
/// fleetd. Revoking a revoked key changes nothing.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "the key's public id")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<ApiKeyId>,
    _no_body: NoBody,
) -> Result<Json<ApiKeyView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let target = api_keys::get(&mut tx, &id)
        .await?
        .ok_or_else(ApiKeyId::not_found)?;
    may_revoke_key(&caller, &target)?;
    api_keys::revoke(&mut tx, &id, &caller.actor()).await?;
    let key = api_keys::get(&mut tx, &id)
        .await?
        .ok_or_else(ApiKeyId::not_found)?;
    tx.commit().await?;
    ctx.key_cache.purge(&id);
    tracing::info!(tenant = %caller.tenant(), key = %id, by = %caller.actor(), "API key revoked");
    Ok(Json(ApiKeyView::from(&key)))
}
