//! `/v1/tenant`: the caller's tenant and its settings.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use store::tenants::{self, SettingsChange, TenantSettings};
use store::users::{self, PeoplePolicy};
use store::TenantId;
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, NoQuery};
use crate::Ctx;

/// The tenant and its settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// The tenant's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: TenantId,
    /// Its display name, unique in the installation.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Days telemetry and other device records are kept.
    pub record_retention_days: i32,
    /// The most devices connected at once on one gateway; a further device's CONNECT is
    /// refused (CONNACK 0x03) until one disconnects. A reconnecting device is never refused.
    pub max_device_connections: i32,
    /// Days audit events are kept; older ones are removed only behind a signed checkpoint
    /// covering them, which the remaining chain then starts from.
    pub audit_retention_days: i32,
    /// A person's session unused this long ends (seconds; 8 hours by default).
    pub session_idle_timeout_secs: i64,
    /// A person's session this old ends, used or not (seconds; 30 days by default).
    pub session_absolute_timeout_secs: i64,
    /// Whether every role must enrol TOTP (owners and admins always must).
    pub totp_required_for_all: bool,
    /// Whether fleetd forwards the tenant's audit trail to the installation's SIEM collector
    /// (syslog over TLS; off by default).
    pub siem_forwarding: bool,
}

impl TenantView {
    fn new(s: TenantSettings, people: PeoplePolicy) -> Self {
        Self {
            id: s.tenant.id,
            name: s.tenant.name,
            created_at: rfc3339(s.tenant.created_at),
            record_retention_days: s.record_retention_days,
            max_device_connections: s.max_device_connections,
            audit_retention_days: s.audit_retention_days,
            session_idle_timeout_secs: people.idle_timeout.whole_seconds(),
            session_absolute_timeout_secs: people.absolute_timeout.whole_seconds(),
            totp_required_for_all: people.totp_required_for_all,
            siem_forwarding: s.siem_forwarding,
        }
    }
}

/// A change of settings; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// Days to keep device records, 1 to 3650.
    #[schema(minimum = 1, maximum = 3650)]
    pub record_retention_days: Option<i32>,
    /// The most devices connected at once on one gateway, 1 to 10,000,000. Applies to new
    /// connections at once; connected devices above a lowered quota stay connected.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub max_device_connections: Option<i32>,
    /// Days to keep audit events, 30 to 36500 (365 by default).
    #[schema(minimum = 30, maximum = 36_500)]
    pub audit_retention_days: Option<i32>,
    /// Seconds a person's session may stay unused, 60 to 2592000.
    #[schema(minimum = 60, maximum = 2_592_000)]
    pub session_idle_timeout_secs: Option<i32>,
    /// Seconds a person's session may last at most, 300 to 31536000.
    #[schema(minimum = 300, maximum = 31_536_000)]
    pub session_absolute_timeout_secs: Option<i32>,
    /// Require TOTP of every role, not only owners and admins.
    pub totp_required_for_all: Option<bool>,
    /// Forward the tenant's audit trail to the installation's SIEM collector.
    pub siem_forwarding: Option<bool>,
}

/// The caller's tenant.
#[utoipa::path(get, path = "/v1/tenant", tag = "tenant",
    responses((status = 200, body = TenantView), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(crate) async fn show(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<TenantView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let settings = tenants::settings(&mut tx).await?;
    let people = users::policy(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(TenantView::new(settings, people)))
}

/// Changes the tenant's name, record or audit retention, connection quota, or people's session lifetimes
/// and TOTP rule.
#[utoipa::path(patch, path = "/v1/tenant", tag = "tenant", request_body = TenantUpdate,
    responses((status = 200, body = TenantView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn update(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(update): ApiJson<TenantUpdate>,
) -> Result<Json<TenantView>, ApiError> {
    let change = SettingsChange {
        name: update.name,
        record_retention_days: update.record_retention_days,
        max_device_connections: update.max_device_connections,
        siem_forwarding: update.siem_forwarding,
        audit_retention_days: update.audit_retention_days,
    };
    let people_change = (
        update.session_idle_timeout_secs,
        update.session_absolute_timeout_secs,
        update.totp_required_for_all,
    );
    let mut tx = caller.begin(&ctx).await?;
    // Each part audits its own change; an empty update still records one (as before people).
    let settings = if change != SettingsChange::default() || people_change == (None, None, None) {
        tenants::update_settings(&mut tx, &change, &ctx.state.app, &caller.actor()).await?
    } else {
        tenants::settings(&mut tx).await?
    };
    let people = if people_change == (None, None, None) {
        users::policy(&mut tx).await?
    } else {
        let (idle, absolute, totp) = people_change;
        users::update_policy(&mut tx, idle, absolute, totp, &caller.actor()).await?
    };
    tx.commit().await?;
    Ok(Json(TenantView::new(settings, people)))
}
