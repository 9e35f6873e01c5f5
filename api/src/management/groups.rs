//! `/v1/device-groups`: create, rename, delete (only when empty), list with counts of devices,
//! online devices and devices with security updates pending.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use store::device_groups::{self, DeviceGroup};
use store::DeviceGroupId;
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, NoBody, NoQuery, Page, PathId, Query};
use crate::Ctx;

/// A device group.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceGroupView {
    /// Its id (what group-scoped keys name).
    #[schema(value_type = String, format = Uuid)]
    pub id: DeviceGroupId,
    /// Its name, unique in the tenant.
    pub name: String,
    /// When it was created.
    pub created_at: String,
    /// Devices in it now.
    pub device_count: i64,
    /// Of them, connected now.
    pub online_count: i64,
    /// Of them, whose newest inventory has security updates pending.
    pub pending_security_count: i64,
}

impl From<DeviceGroup> for DeviceGroupView {
    fn from(g: DeviceGroup) -> Self {
        Self {
            id: g.id,
            name: g.name,
            created_at: rfc3339(g.created_at),
            device_count: g.device_count,
            online_count: g.online_count,
            pending_security_count: g.pending_security_count,
        }
    }
}

/// A group's name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupName {
    /// 1 to 200 bytes, unique in the tenant.
    pub name: String,
}

/// The groups the caller may see, by name.
#[utoipa::path(get, path = "/v1/device-groups", tag = "device-groups",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<DeviceGroupView>), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<DeviceGroupView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    query.finish()?;
    let after: Option<String> = page.after()?;
    let mut tx = caller.begin(&ctx).await?;
    let groups = device_groups::list(&mut tx, caller.scope(), after.as_deref(), page.limit).await?;
    tx.commit().await?;
    let views = groups.into_iter().map(DeviceGroupView::from).collect();
    Ok(Json(page.page(views, |g: &DeviceGroupView| g.name.clone())))
}

/// Creates a group.
#[utoipa::path(post, path = "/v1/device-groups", tag = "device-groups", request_body = GroupName,
    responses((status = 201, body = DeviceGroupView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(body): ApiJson<GroupName>,
) -> Result<(StatusCode, Json<DeviceGroupView>), ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let group = device_groups::create(&mut tx, &body.name, &caller.actor()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

/// Renames a group; its devices and tokens follow.
#[utoipa::path(patch, path = "/v1/device-groups/{id}", tag = "device-groups", request_body = GroupName,
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceGroupView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn rename(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceGroupId>,
    ApiJson(body): ApiJson<GroupName>,
) -> Result<Json<DeviceGroupView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let group =
        device_groups::rename(&mut tx, id, &body.name, caller.scope(), &caller.actor()).await?;
    tx.commit().await?;
    Ok(Json(group.into()))
}

/// Deletes a group that has no devices and no enrollment tokens.
#[utoipa::path(delete, path = "/v1/device-groups/{id}", tag = "device-groups",
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn delete(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceGroupId>,
    _no_body: NoBody,
) -> Result<StatusCode, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    device_groups::delete(&mut tx, id, caller.scope(), &caller.actor()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
