//! The one permission table: every management route, the roles allowed on it, and whether a
//! group-scoped key may use it. The router, the check before every handler, the OpenAPI
//! document and the permission tests are all made from [`ROUTES`], so a route cannot exist
//! without its entry.
//!
//! Roles: the **owner** does everything, including other owners and the tenant's settings; the
//! **admin** also manages API keys and enrollment tokens; the **operator** manages devices and
//! groups, reads patch and telemetry data and revokes devices; the **auditor** reads everything
//! and exports the audit trail, and changes nothing. A **group-scoped** key sees and acts on only
//! its groups' devices and data; routes about the whole tenant (settings, keys, tokens, groups'
//! creation, the audit trail) are closed to it, since their answers would describe other groups.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::Router;
use store::api_keys::Role;

use crate::client_addr::{client_ip, Peer};
use crate::error::{ApiError, ProblemSlug};
use crate::management::{api_keys, audit, devices, enrollment_tokens, groups, patch, tenant};
use crate::Ctx;

/// One row of the permission table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// The HTTP method.
    pub method: &'static str,
    /// The route template, as in the router and the OpenAPI document.
    pub path: &'static str,
    /// Roles allowed.
    pub roles: &'static [Role],
    /// Whether a group-scoped key may use it.
    pub group_scoped: bool,
}

impl RouteRule {
    /// Whether `role` (with or without a group scope) may use this route.
    pub fn allows(&self, role: Role, scoped: bool) -> bool {
        self.roles.contains(&role) && (self.group_scoped || !scoped)
    }
}

const ALL: &[Role] = &[Role::Owner, Role::Admin, Role::Operator, Role::Auditor];
const OPERATE: &[Role] = &[Role::Owner, Role::Admin, Role::Operator];
const ADMINISTER: &[Role] = &[Role::Owner, Role::Admin];
const ADMINISTER_READ: &[Role] = &[Role::Owner, Role::Admin, Role::Auditor];
const OWN: &[Role] = &[Role::Owner];

macro_rules! permission_table {
    ($($method:ident $path:literal => $handler:path, $roles:expr, $scoped:expr;)*) => {
        /// Every management route with who may use it.
        pub const ROUTES: &[RouteRule] = &[
            $(RouteRule {
                method: method_name!($method),
                path: $path,
                roles: $roles,
                group_scoped: $scoped,
            },)*
        ];

        /// The management routes, each behind [`authorize`].
        pub(crate) fn management_router() -> Router<Ctx> {
            Router::new()$(.route($path, $method($handler)))*
        }

        /// The OpenAPI operations of the management routes (from each handler's
        /// `#[utoipa::path]`).
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($handler),*))]
        pub(crate) struct ManagementPaths;
    };
}

macro_rules! method_name {
    (get) => {
        "GET"
    };
    (post) => {
        "POST"
    };
    (patch) => {
        "PATCH"
    };
    (delete) => {
        "DELETE"
    };
}

const SCOPED: bool = true;
const TENANT_WIDE: bool = false;

permission_table! {
    get "/v1/tenant" => tenant::show, ALL, TENANT_WIDE;
    patch "/v1/tenant" => tenant::update, OWN, TENANT_WIDE;

    get "/v1/api-keys" => api_keys::list, ADMINISTER_READ, TENANT_WIDE;
    post "/v1/api-keys" => api_keys::create, ADMINISTER, TENANT_WIDE;
    get "/v1/api-keys/{id}" => api_keys::show, ADMINISTER_READ, TENANT_WIDE;
    delete "/v1/api-keys/{id}" => api_keys::revoke, ADMINISTER, TENANT_WIDE;

    get "/v1/enrollment-tokens" => enrollment_tokens::list, ADMINISTER_READ, TENANT_WIDE;
    post "/v1/enrollment-tokens" => enrollment_tokens::create, ADMINISTER, TENANT_WIDE;
    get "/v1/enrollment-tokens/{id}" => enrollment_tokens::show, ADMINISTER_READ, TENANT_WIDE;
    delete "/v1/enrollment-tokens/{id}" => enrollment_tokens::revoke, ADMINISTER, TENANT_WIDE;

    get "/v1/device-groups" => groups::list, ALL, SCOPED;
    post "/v1/device-groups" => groups::create, OPERATE, TENANT_WIDE;
    patch "/v1/device-groups/{id}" => groups::rename, OPERATE, SCOPED;
    delete "/v1/device-groups/{id}" => groups::delete, OPERATE, TENANT_WIDE;

    get "/v1/devices" => devices::list, ALL, SCOPED;
    get "/v1/devices/{id}" => devices::show, ALL, SCOPED;
    patch "/v1/devices/{id}" => devices::update, OPERATE, SCOPED;
    post "/v1/devices/{id}/revoke" => devices::revoke, OPERATE, SCOPED;
    get "/v1/devices/{id}/health" => devices::health, ALL, SCOPED;
    get "/v1/devices/{id}/telemetry" => devices::telemetry, ALL, SCOPED;
    get "/v1/devices/{id}/telemetry/aggregate" => devices::telemetry_aggregate, ALL, SCOPED;
    get "/v1/devices/{id}/patch-status" => patch::device, ALL, SCOPED;
    get "/v1/patch-summary" => patch::summary, ALL, SCOPED;

    get "/v1/audit-events" => audit::list, ADMINISTER_READ, TENANT_WIDE;
    get "/v1/audit-events/verify" => audit::verify, ADMINISTER_READ, TENANT_WIDE;
    get "/v1/audit-events.csv" => audit::export_csv, ADMINISTER_READ, TENANT_WIDE;
}

/// The rule of a matched route. HEAD is GET without a body.
pub fn rule_for(method: &Method, path: &str) -> Option<&'static RouteRule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|rule| rule.method == method && rule.path == path)
}

/// Runs before every management handler: authenticates the caller, checks the table, hands the
/// [`crate::auth::Caller`] to the handler, and counts the answer.
pub(crate) async fn authorize(
    State(ctx): State<Ctx>,
    matched: MatchedPath,
    peer: Peer,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.as_str().to_owned();
    let method = request.method().clone();
    let from_browser = request.headers().contains_key(axum::http::header::ORIGIN);
    let headers = request.headers().clone();
    let (response, role) = match admit(&ctx, &route, &method, &peer, &headers).await {
        Ok(caller) => {
            let role = caller.role().as_str();
            request.extensions_mut().insert(caller);
            let mut response = next.run(request).await;
            if from_browser {
                response.extensions_mut().insert(crate::auth::OriginAllowed);
            }
            (response, role)
        }
        Err(e) => (e.into_response(), "none"),
    };
    let status = response.status().as_u16();
    if let Some(ProblemSlug(slug)) = response.extensions().get::<ProblemSlug>() {
        if response.status().is_client_error() {
            ctx.metrics.refusal(&route, slug);
        }
    }
    ctx.metrics.request(
        &route,
        method.as_str(),
        status,
        role,
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Counts the answers of the routes that need no API key (enrollment, renewal, health), with
/// role `none`, and logs refusals of enrollment and renewal (the device's address, the reason) but not
/// the 429s of an address past its failure limit.
pub(crate) async fn count_public(
    State(ctx): State<Ctx>,
    matched: MatchedPath,
    peer: Peer,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.as_str().to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(ProblemSlug(slug)) = response.extensions().get::<ProblemSlug>() {
        if response.status().is_client_error() {
            ctx.metrics.refusal(&route, slug);
            // Each refused attempt once, with its reason (never the token or certificate).
            // Past the per-source failure limit the answer is 429 too-many-failures: counted,
            // not logged, for one address can cause those by the thousand.
            let event = match route.as_str() {
                "/v1/enroll" => Some("enrollment refused"),
                "/v1/renew" => Some("renewal refused"),
                _ => None,
            };
            if let Some(event) = event.filter(|_| *slug != "too-many-failures") {
                tracing::info!(source = %peer.addr.ip(), reason = %slug, status = response.status().as_u16(), "{event}");
            }
        }
    }
    ctx.metrics.request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        "none",
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn admit(
    ctx: &Ctx,
    route: &str,
    method: &Method,
    peer: &Peer,
    headers: &axum::http::HeaderMap,
) -> Result<crate::auth::Caller, ApiError> {
    let rule = rule_for(method, route)
        .ok_or_else(|| ApiError::Internal(format!("no permission rule for {method} {route}")))?;
    let source = client_ip(peer.addr.ip(), headers, &ctx.state.trusted_proxies)?;
    let caller = crate::auth::authenticate(ctx, headers, source).await?;
    let scoped = caller.key().group_scope.is_some();
    if !rule.allows(caller.role(), scoped) {
        // A revoked key is told so (401), not that its role is short (403).
        let mut tx = ctx.state.app.begin(caller.tenant()).await?;
        let live = store::api_keys::check_live(&mut tx, &caller.key().id).await?;
        tx.rollback().await?;
        if !live {
            ctx.key_cache.purge(&caller.key().id);
            return Err(ApiError::InvalidApiKey);
        }
        let why = if rule.roles.contains(&caller.role()) {
            "a group-scoped key may not use this route".to_owned()
        } else {
            format!("role {} may not use {method} {route}", caller.role())
        };
        return Err(ApiError::Forbidden(why));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_appears_once_and_owners_may_use_all() {
        let mut seen = std::collections::HashSet::new();
        for rule in ROUTES {
            assert!(seen.insert((rule.method, rule.path)), "{rule:?} twice");
            assert!(rule.allows(Role::Owner, false), "{rule:?}");
        }
    }

    #[test]
    fn auditors_change_nothing() {
        for rule in ROUTES.iter().filter(|r| r.roles.contains(&Role::Auditor)) {
            assert_eq!(rule.method, "GET", "{rule:?}");
        }
    }
}
