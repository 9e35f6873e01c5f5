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
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use store::api_keys::Role;

use crate::client_addr::{client_ip, Peer};
use crate::error::{ApiError, ProblemSlug};
use crate::management::{api_keys, audit, devices, enrollment_tokens, groups, patch, tenant};
use crate::people::{accounts, session, sign_in};
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
    /// Which kinds of caller may use it: API keys, session cookies, or both.
    pub callers: Callers,
}

/// Which kinds of caller a route takes. People's sessions and API keys are the same kind of
/// caller (tenant, role, scope) once resolved; some routes are for only one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callers {
    /// API keys and session cookies.
    Both,
    /// API keys only: what a browser never needs (today the live stream, [`LIVE_STREAM`]).
    KeysOnly,
    /// Session cookies only: a person's own session, sign-out, password.
    SessionsOnly,
    /// No caller: the steps of signing in and accepting an invitation, which make one. The
    /// roles of such a row are not checked.
    Anonymous,
}

impl RouteRule {
    /// Whether `role` (with or without a group scope) may use this route.
    pub fn allows(&self, role: Role, scoped: bool) -> bool {
        self.roles.contains(&role) && (self.group_scoped || !scoped)
    }

    /// Whether a caller that is a session (`true`) or a key (`false`) may use this route.
    pub fn takes(&self, session: bool) -> bool {
        match self.callers {
            Callers::Both => true,
            Callers::KeysOnly => !session,
            Callers::SessionsOnly => session,
            Callers::Anonymous => false,
        }
    }
}

const ALL: &[Role] = &[Role::Owner, Role::Admin, Role::Operator, Role::Auditor];
const OPERATE: &[Role] = &[Role::Owner, Role::Admin, Role::Operator];
const ADMINISTER: &[Role] = &[Role::Owner, Role::Admin];
const ADMINISTER_READ: &[Role] = &[Role::Owner, Role::Admin, Role::Auditor];
const OWN: &[Role] = &[Role::Owner];

macro_rules! permission_table {
    ($($method:ident $path:literal => $handler:path, $roles:expr, $scoped:expr $(, $callers:expr)?;)*) => {
        /// Every management route with who may use it.
        pub const ROUTES: &[RouteRule] = &[
            $(RouteRule {
                method: method_name!($method),
                path: $path,
                roles: $roles,
                group_scoped: $scoped,
                callers: callers_or_both!($($callers)?),
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

/// The `callers` column: `Callers::Both` unless the row says otherwise.
macro_rules! callers_or_both {
    () => {
        Callers::Both
    };
    ($callers:expr) => {
        $callers
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
    (put) => {
        "PUT"
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
    // Sessions too (issue 14): the console's download link. It was keys-only only because no
    // browser needed it then; a GET changes nothing, the cookie is SameSite=Strict, and every
    // page of the stream re-checks the session as it does a key.
    get "/v1/audit-events.csv" => audit::export_csv, ADMINISTER_READ, TENANT_WIDE;
    get "/v1/audit-events.jsonl" => audit::export_jsonl, ADMINISTER_READ, TENANT_WIDE;
    get "/v1/audit-checkpoints" => audit::list_checkpoints, ADMINISTER_READ, TENANT_WIDE;
    post "/v1/audit-checkpoints" => audit::create_checkpoint, ADMINISTER, TENANT_WIDE;
    post "/v1/audit-events/{seq}/erase" => audit::erase, ADMINISTER, TENANT_WIDE;

    post "/v1/sign-in" => sign_in::sign_in, ALL, SCOPED, ANONYMOUS;
    post "/v1/sign-in/second-factor" => sign_in::second_factor, ALL, SCOPED, ANONYMOUS;
    post "/v1/sign-in/enrol-totp" => sign_in::enrol_totp, ALL, SCOPED, ANONYMOUS;
    post "/v1/invitations/accept" => sign_in::accept_invitation, ALL, SCOPED, ANONYMOUS;
    get "/v1/session" => session::show, ALL, SCOPED, SESSIONS_ONLY;
    delete "/v1/session" => session::sign_out, ALL, SCOPED, SESSIONS_ONLY;
    post "/v1/session/sign-out-everywhere" => session::sign_out_everywhere, ALL, SCOPED, SESSIONS_ONLY;
    post "/v1/session/password" => session::change_password, ALL, SCOPED, SESSIONS_ONLY;
    get "/v1/sessions" => session::list, ALL, SCOPED, SESSIONS_ONLY;

    get "/v1/users" => accounts::list, ADMINISTER_READ, TENANT_WIDE;
    get "/v1/users/{id}" => accounts::show, ADMINISTER_READ, TENANT_WIDE;
    patch "/v1/users/{id}" => accounts::update, ADMINISTER, TENANT_WIDE;
    post "/v1/users/{id}/disable" => accounts::disable, ADMINISTER, TENANT_WIDE;
    post "/v1/users/{id}/enable" => accounts::enable, ADMINISTER, TENANT_WIDE;
    delete "/v1/users/{id}" => accounts::remove, ADMINISTER, TENANT_WIDE;
    get "/v1/invitations" => accounts::list_invitations, ADMINISTER_READ, TENANT_WIDE;
    post "/v1/invitations" => accounts::invite, ADMINISTER, TENANT_WIDE;
    post "/v1/session/totp" => session::start_totp, ALL, SCOPED, SESSIONS_ONLY;
    post "/v1/session/totp/confirm" => session::confirm_totp, ALL, SCOPED, SESSIONS_ONLY;

    put "/v1/tenant/sso" => crate::oidc::routes::set, OWN, TENANT_WIDE;
    get "/v1/tenant/sso" => crate::oidc::routes::show, OWN, TENANT_WIDE;
    delete "/v1/tenant/sso" => crate::oidc::routes::delete, OWN, TENANT_WIDE;

    get "/v1/devices/{id}/telemetry/chart.svg" => devices::telemetry_chart, ALL, SCOPED;
    get "/v1/devices/{id}/presence" => devices::presence, ALL, SCOPED;
    get "/v1/users/{id}/sessions" => accounts::list_sessions, ADMINISTER_READ, TENANT_WIDE;
    delete "/v1/users/{id}/sessions" => accounts::end_sessions, ADMINISTER, TENANT_WIDE;

    // Issue 15: the compliance evidence report; it reads what the auditor may read already.
    get "/v1/reports/evidence" => crate::reports::evidence::evidence, ADMINISTER_READ, TENANT_WIDE;
}

const SESSIONS_ONLY: Callers = Callers::SessionsOnly;
const ANONYMOUS: Callers = Callers::Anonymous;

/// Who may read the live stream of decoded device messages (an MQTT subscription on the
/// broker, `fleet/v1/stream/{tenant_id}/#`, see broker/README.md): whoever may read telemetry,
/// group-scoped keys included (they receive their groups' devices only). Not a route of
/// [`ROUTES`]: no HTTP handler serves it.
pub const LIVE_STREAM: RouteRule = RouteRule {
    method: "MQTT SUBSCRIBE",
    path: "fleet/v1/stream/{tenant_id}/#",
    roles: ALL,
    group_scoped: SCOPED,
    callers: Callers::KeysOnly,
};

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
    let anonymous = rule_for(&method, &route).is_some_and(|r| r.callers == Callers::Anonymous);
    let (response, role) = if anonymous {
        (next.run(request).await, "none")
    } else {
        match admit(&ctx, &route, &method, &peer, &headers).await {
            Ok(caller) => {
                let role = caller.role().as_str();
                // Only a key's CORS origins open answers to other origins; a session's console
                // is on the API's own origin.
                let key_caller = caller.key().is_some();
                request.extensions_mut().insert(caller);
                let mut response = next.run(request).await;
                if from_browser && key_caller {
                    response.extensions_mut().insert(crate::auth::OriginAllowed);
                }
                (response, role)
            }
            Err(e) => (e.into_response(), "none"),
        }
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
    let cookie = crate::people::session_cookie(headers);
    let caller = match cookie {
        Some(text) if crate::auth::bearer(headers).is_none() => {
            crate::people::authenticate_session(ctx, text, source, method, headers).await?
        }
        None if rule.callers == Callers::SessionsOnly && crate::auth::bearer(headers).is_none() => {
            return Err(ApiError::SessionRequired)
        }
        _ => crate::auth::authenticate(ctx, headers, source).await?,
    };
    let session = caller.person().is_some();
    if !rule.takes(session) {
        let why = if session {
            format!("{method} {route} takes an API key, not a session")
        } else {
            format!("{method} {route} takes a signed-in session, not an API key")
        };
        return Err(ApiError::Forbidden(why));
    }
    let scoped = caller.is_scoped();
    if !rule.allows(caller.role(), scoped) {
        // A revoked key is told so (401), not that its role is short (403).
        if let Some(key) = caller.key() {
            let mut tx = ctx.state.app.begin(caller.tenant()).await?;
            let live = store::api_keys::check_live(&mut tx, &key.id).await?;
            tx.rollback().await?;
            if !live {
                ctx.key_cache.purge(&key.id);
                return Err(ApiError::InvalidApiKey);
            }
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
    fn the_live_stream_is_open_to_whoever_reads_telemetry() {
        let telemetry = rule_for(&Method::GET, "/v1/devices/{id}/telemetry").unwrap();
        assert_eq!(LIVE_STREAM.roles, telemetry.roles);
        assert_eq!(LIVE_STREAM.group_scoped, telemetry.group_scoped);
    }

    #[test]
    fn auditors_change_nothing() {
        // A person's own session routes (signing out, the password) change only that person.
        for rule in ROUTES.iter().filter(|r| {
            r.roles.contains(&Role::Auditor)
                && matches!(r.callers, Callers::Both | Callers::KeysOnly)
        }) {
            assert_eq!(rule.method, "GET", "{rule:?}");
        }
    }
}
