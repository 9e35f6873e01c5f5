//! The HTTP side of single sign-on: the tenant owner's management of its provider
//! (`/v1/tenant/sso`, in the permission table) and the two browser routes of a sign-in
//! (`/v1/auth/oidc/{tenant}/start` and `.../callback`, open to anyone, like enrollment).

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::api_keys::Role;
use store::sso::{self, OidcProvider, ProviderChange, RoleMapping};
use store::TenantId;
use utoipa::ToSchema;

use super::{Callback, ClientSecret, OidcError, BROWSER_COOKIE};
use crate::auth::Caller;
use crate::client_addr::{client_ip, Peer};
use crate::error::{ApiError, Problem};
use crate::extract::{invalid, ApiJson, NoBody, NoQuery, Query};
use crate::management::rfc3339;
use crate::Ctx;

/// The path of the sign-in start of a tenant.
pub const START_PATH: &str = "/v1/auth/oidc/{tenant}/start";
/// The path the provider sends the browser back to.
pub const CALLBACK_PATH: &str = "/v1/auth/oidc/{tenant}/callback";

/// One claim -> role rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// The ID token claim, e.g. `groups`.
    pub claim: String,
    /// The value (or one of the array's values) that grants the role.
    pub value: String,
    /// `owner`, `admin`, `operator` or `auditor`.
    #[schema(value_type = String)]
    pub role: Role,
}

/// The tenant's identity provider. The client secret is write-only: never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct SsoView {
    /// The issuer URL.
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// Always true: a secret is set (and is never shown).
    pub client_secret_set: bool,
    /// Claim -> role rules; a person gets the highest role among the rules they match.
    pub role_mappings: Vec<RoleRule>,
    /// The role when no rule matches; `null`: such a person is refused.
    #[schema(value_type = Option<String>)]
    pub default_role: Option<Role>,
    /// Email domains whose verified addresses may get a user at first sign-in.
    pub allowed_email_domains: Vec<String>,
    /// Scopes asked for beside `openid email`.
    pub extra_scopes: Vec<String>,
    /// Whether sign-in through the provider is open.
    pub enabled: bool,
    /// The redirect URI to register at the provider, as a path on this API.
    pub callback_path: String,
    /// When the provider was last changed.
    pub updated_at: String,
}

impl SsoView {
    fn new(tenant: TenantId, p: OidcProvider) -> Self {
        Self {
            issuer: p.issuer,
            client_id: p.client_id,
            client_secret_set: true,
            role_mappings: p
                .role_mappings
                .into_iter()
                .map(|m| RoleRule {
                    claim: m.claim,
                    value: m.value,
                    role: m.role,
                })
                .collect(),
            default_role: p.default_role,
            allowed_email_domains: p.allowed_email_domains,
            extra_scopes: p.extra_scopes,
            enabled: p.enabled,
            callback_path: CALLBACK_PATH.replace("{tenant}", &tenant.to_string()),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

/// The provider to set. Everything is replaced; `client_secret` may be left out to keep the
/// current one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoUpdate {
    /// The issuer URL: `https://...`, or `http://` to a loopback address.
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret; stored sealed with a key outside the database, never shown again.
    #[schema(value_type = Option<String>, write_only)]
    pub client_secret: Option<ClientSecret>,
    /// Claim -> role rules (at most 64).
    #[serde(default)]
    pub role_mappings: Vec<RoleRule>,
    /// The role when no rule matches; absent: such a person is refused.
    #[schema(value_type = Option<String>)]
    pub default_role: Option<Role>,
    /// Email domains open to just-in-time users (at most 64).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Scopes to ask for beside `openid email` (at most 16), e.g. `groups` for providers that
    /// put group claims in the ID token only when asked.
    #[serde(default)]
    pub extra_scopes: Vec<String>,
    /// Whether sign-in is open; true when absent.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// The tenant's single sign-on provider.
#[utoipa::path(get, path = "/v1/tenant/sso", tag = "sso",
    responses((status = 200, body = SsoView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn show(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<SsoView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let provider = sso::provider(&mut tx).await?;
    tx.commit().await?;
    let provider = provider.ok_or(ApiError::ResourceNotFound("OIDC provider"))?;
    Ok(Json(SsoView::new(caller.tenant(), provider)))
}

/// Sets the tenant's single sign-on provider.
#[utoipa::path(put, path = "/v1/tenant/sso", tag = "sso", request_body = SsoUpdate,
    responses((status = 200, body = SsoView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn set(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    ApiJson(update): ApiJson<SsoUpdate>,
) -> Result<Json<SsoView>, ApiError> {
    let key = ctx.state.oidc.key.as_ref().ok_or(OidcError::NoKey)?;
    let issuer = ctx
        .state
        .oidc
        .providers
        .checked_url(&update.issuer)
        .map_err(|e| invalid("issuer", &e.to_string()))?;
    if issuer.query().is_some() {
        return Err(invalid("issuer", "must have no query"));
    }
    let tenant = caller.tenant();
    let sealed = match &update.client_secret {
        Some(secret) if secret.expose().is_empty() || secret.expose().len() > 1024 => {
            return Err(invalid("client_secret", "must be 1 to 1024 bytes"))
        }
        Some(secret) => Some(key.seal(tenant, secret).map_err(OidcError::from)?),
        None => None,
    };
    let mappings: Vec<RoleMapping> = update
        .role_mappings
        .into_iter()
        .map(|r| RoleMapping {
            claim: r.claim,
            value: r.value,
            role: r.role,
        })
        .collect();
    let change = ProviderChange {
        issuer: &update.issuer,
        client_id: &update.client_id,
        client_secret_sealed: sealed,
        role_mappings: &mappings,
        default_role: update.default_role,
        allowed_email_domains: &update.allowed_email_domains,
        extra_scopes: &update.extra_scopes,
        enabled: update.enabled,
    };
    let mut tx = caller.begin(&ctx).await?;
    let provider = sso::set_provider(&mut tx, &change, &caller.actor()).await?;
    tx.commit().await?;
    ctx.state.oidc.providers.forget(tenant);
    tracing::info!(%tenant, issuer = %provider.issuer, by = %caller.actor(), "OIDC provider set");
    Ok(Json(SsoView::new(tenant, provider)))
}

/// Removes the tenant's single sign-on provider; sign-ins under way fail.
#[utoipa::path(delete, path = "/v1/tenant/sso", tag = "sso",
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn delete(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    _no_body: NoBody,
) -> Result<StatusCode, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    sso::delete_provider(&mut tx, &caller.actor()).await?;
    tx.commit().await?;
    ctx.state.oidc.providers.forget(caller.tenant());
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/auth/oidc/{tenant}/start`: 302 to the tenant's provider, with the browser cookie.
pub(crate) async fn start(
    State(ctx): State<Ctx>,
    Path(tenant): Path<String>,
    Peer { addr: peer, .. }: Peer,
    headers: HeaderMap,
    _no_query: NoQuery,
) -> Result<Response, ApiError> {
    let source = client_ip(peer.ip(), &headers, &ctx.state.trusted_proxies)?;
    ctx.oidc_starts
        .try_take(source)
        .map_err(|retry_after_secs| ApiError::TooManySignInStarts { retry_after_secs })?;
    let tenant = tenant_of(&tenant)?;
    let redirect_uri = redirect_uri(&headers, tenant)?;
    let started = super::start(&ctx.state.app, &ctx.state.oidc, tenant, &redirect_uri)
        .await
        .inspect_err(|e| refused(tenant, e))?;
    let location = HeaderValue::try_from(started.authorization_url)
        .map_err(|_| ApiError::Internal("authorization URL is not a header value".into()))?;
    let cookie = browser_cookie(&started.browser_cookie, super::ATTEMPT_TTL.as_secs())?;
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
    )
        .into_response())
}

/// `GET /v1/auth/oidc/{tenant}/callback`: the person the provider vouched for is signed in
/// (the session cookie is set and the answer is the password sign-in's `done`), or the refusal;
/// the browser cookie is cleared either way.
pub(crate) async fn callback(
    State(ctx): State<Ctx>,
    Path(tenant): Path<String>,
    Peer { addr: peer, .. }: Peer,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let cleared = browser_cookie("", 0);
    let signed_in = async {
        let source = client_ip(peer.ip(), &headers, &ctx.state.trusted_proxies)?;
        let identity = finish(&ctx, &tenant, &headers, raw.as_deref()).await?;
        tracing::info!(tenant = %identity.tenant, issuer = %identity.issuer, subject = %identity.subject,
            role = %identity.role, "OIDC sign-in verified");
        crate::people::sign_in::sign_in_verified(&ctx, &identity, source, &headers).await
    };
    let mut response = answer_for(&headers, signed_in.await);
    if let Ok(cleared) = cleared {
        response.headers_mut().append(header::SET_COOKIE, cleared);
    }
    response
}

/// The console's page a browser lands on once signed in.
pub(crate) const CONSOLE_AFTER_SIGN_IN: &str = "/#/fleet";

/// The console's sign-in page, told why single sign-on was refused.
const CONSOLE_SIGN_IN_REFUSED: &str = "/#/sign-in?sso_error=";

/// A browser (it asks for HTML) is sent on to the console: to its fleet page when signed in
/// (the session cookie rides on this answer; the console then reads its CSRF token from
/// `GET /v1/session`), to its sign-in page with the reason otherwise. Other clients get the
/// JSON answer.
fn answer_for(headers: &HeaderMap, outcome: Result<Response, ApiError>) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if !wants_html {
        return outcome.unwrap_or_else(IntoResponse::into_response);
    }
    match outcome {
        Ok(signed_in) => {
            let mut redirect = Redirect::to(CONSOLE_AFTER_SIGN_IN).into_response();
            for cookie in signed_in.headers().get_all(header::SET_COOKIE) {
                redirect
                    .headers_mut()
                    .append(header::SET_COOKIE, cookie.clone());
            }
            redirect
        }
        Err(refused) => {
            refused.log_if_internal();
            let reason: String =
                form_urlencoded::byte_serialize(refused.detail().as_bytes()).collect();
            Redirect::to(&format!("{CONSOLE_SIGN_IN_REFUSED}{reason}")).into_response()
        }
    }
}

async fn finish(
    ctx: &Ctx,
    tenant: &str,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<super::VerifiedIdentity, ApiError> {
    let tenant = tenant_of(tenant)?;
    // Providers add parameters of their own (session_state, error_description): the four
    // fleetd reads are taken, the rest ignored.
    let mut query = Query::parse(raw);
    let callback = Callback {
        code: query.text("code")?,
        state: query.text("state")?,
        iss: query.text("iss")?,
        error: query.text("error")?,
    };
    let cookie = cookie_value(headers, BROWSER_COOKIE);
    let verified = super::complete(
        &ctx.state.app,
        &ctx.state.oidc,
        tenant,
        &callback,
        cookie.as_deref(),
    )
    .await;
    match verified {
        Ok(identity) => Ok(identity),
        Err(e) => {
            refused(tenant, &e);
            if matches!(e, OidcError::Refused(_) | OidcError::TokenRequestRefused(_)) {
                // A refused person is a failed sign-in: audited, as a wrong password is.
                crate::people::sign_in::audit_sso_refusal(ctx, tenant, &e.to_string()).await?;
            }
            Err(e.into())
        }
    }
}

/// Logs a refused or failed sign-in with its reason (never a token, code or state).
fn refused(tenant: TenantId, e: &OidcError) {
    tracing::info!(%tenant, reason = %e, "OIDC sign-in refused");
}

/// A tenant id from the path; a malformed one names no tenant, so it is "not configured".
fn tenant_of(text: &str) -> Result<TenantId, ApiError> {
    text.parse::<uuid::Uuid>()
        .map(TenantId)
        .map_err(|_| OidcError::NotConfigured.into())
}

/// The callback URL on this API, from the `Host` the browser used: the provider redirects only
/// to URIs registered for the client, so a forged `Host` gets the sign-in refused there.
fn redirect_uri(headers: &HeaderMap, tenant: TenantId) -> Result<String, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .filter(|a| !a.as_str().contains('@'))
        .ok_or_else(|| ApiError::InvalidRequest("a Host header is required".into()))?;
    let path = CALLBACK_PATH.replace("{tenant}", &tenant.to_string());
    Ok(format!("https://{host}{path}"))
}

fn browser_cookie(value: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(format!(
        "{BROWSER_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .map_err(|_| ApiError::Internal("cookie is not a header value".into()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_the_redirect_uri_needs_a_sane_host() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            "a=1; __Host-fleet-oidc=xyz".parse().unwrap(),
        );
        assert_eq!(
            cookie_value(&headers, BROWSER_COOKIE).as_deref(),
            Some("xyz")
        );
        assert_eq!(cookie_value(&headers, "b"), None);
        let tenant = TenantId::new_random();
        assert!(redirect_uri(&headers, tenant).is_err());
        headers.insert(header::HOST, "fleet.example:8443".parse().unwrap());
        assert_eq!(
            redirect_uri(&headers, tenant).unwrap(),
            format!("https://fleet.example:8443/v1/auth/oidc/{tenant}/callback")
        );
        headers.insert(header::HOST, "evil.example/x?".parse().unwrap());
        assert!(redirect_uri(&headers, tenant).is_err());
    }
}
