//! fleetplane's HTTPS API: axum over rustls (ring, TLS 1.2 minimum, 1.3 preferred, HSTS on every
//! response), with errors as RFC 7807 `application/problem+json`.
//!
//! Routes (all in [`router`]):
//!
//! | route            | what                                                           |
//! |------------------|----------------------------------------------------------------|
//! | `GET /healthz`   | the process answers                                            |
//! | `GET /readyz`    | the database answers within 2 s, and fleetd's checks pass      |
//! | `POST /v1/enroll`| enrollment token + CSR in, device certificate chain out        |
//! | `POST /v1/renew` | current device certificate (mutual TLS) + CSR in, new chain out |
//! | `GET /v1/pki/crl`| the fleet's CRL (DER), unauthenticated; see the `crl` module   |
//! | `GET /`          | the web console (the `console` module), then the management API |
//!
//! The composition root builds an [`ApiState`], a TLS configuration with
//! [`tls_server_config`], and runs [`serve_tls`] with the [`router`]:
//!
//! ```no_run
//! # async fn run(state: api::ApiState, cert: certs::ServerCertificate, ca: certs::IssuingCa) -> std::io::Result<()> {
//! // Client certificates (for /v1/renew) are checked against the fleet root.
//! let tls = api::tls_server_config_for(&cert, ca.root_der().clone()).expect("usable certificate");
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! api::serve_tls(listener, tls, api::router(state), std::future::pending()).await
//! # }
//! ```
//!
//! `POST /v1/enroll` is described in the `enroll` module, `POST /v1/renew` in the `renew`
//! module, their refusals in [`ApiError`].

mod auth;
mod client_addr;
mod clock;
mod console;
mod crl;
mod device_certificate;
mod enroll;
mod error;
mod extract;
mod health;
mod management;
mod metrics;
mod openapi;
pub mod people;
pub mod permissions;
mod renew;
mod reports;
mod stream_auth;
mod tls;
pub mod views;
// OIDC single sign-on up to a verified identity (issue 13, item 6).
pub mod oidc;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use ipnet::IpNet;
use store::AppDb;
use tokio::sync::Semaphore;

pub use auth::{AuthLimits, Caller, KeyCache, DEFAULT_KEY_CACHE_CAPACITY, DEFAULT_KEY_CACHE_TTL};
pub use client_addr::{PeerAddr, TlsPeer};
pub use clock::Clock;
pub use crl::{current_crl, CrlError, CRL_PATH};
pub use error::{ApiError, Problem};
pub use extract::{Page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use health::{Readiness, DEFAULT_READY_MAX_INGEST_LAG};
pub use metrics::ApiMetrics;
pub use openapi::openapi;
pub use people::PeopleSettings;
pub use stream_auth::{StreamAuth, StreamCaller, StreamDenial};
pub use tls::{
    serve_tls, serve_tls_observed, serve_tls_with, tls_server_config, tls_server_config_for,
    TlsConnection, TlsLimits, TlsListener, DEFAULT_API_MAX_CONNECTIONS, LINGER_MAX_BYTES,
    LINGER_TIMEOUT,
};

/// Largest request body accepted on every route, in bytes: the enrollment contract's limit
/// (an enrollment request is about 1 KiB; no management body comes near it).
pub const MAX_BODY_LEN: usize = wire::enrollment::MAX_REQUEST_BYTES;

/// The value of the `Strict-Transport-Security` header on every response: one year.
pub const HSTS: &str = "max-age=31536000";

/// What the API needs from the composition root.
#[derive(Clone)]
pub struct ApiState {
    /// The application database.
    pub app: AppDb,
    /// Signs device certificates at enrollment.
    pub issuing_ca: Arc<certs::IssuingCa>,
    /// Where enrolled devices connect, returned to them as is (e.g. `mqtts://fleet.example:8883`).
    pub broker_url: String,
    /// Lifetime of device certificates issued at enrollment and renewal.
    pub device_cert_lifetime: Duration,
    /// Proxies whose `X-Forwarded-For` is believed. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
    /// How often a device may renew, and how long a superseded certificate still renews.
    pub renewal: RenewalPolicy,
    /// Bounds on the CPU that token verification may take.
    pub enroll_limits: EnrollLimits,
    /// Bounds on API key authentication.
    pub auth_limits: AuthLimits,
    /// What new API keys say they are for (`fpk_<env>_…`).
    pub key_env: store::api_keys::KeyEnv,
    /// Where the API counts requests.
    pub metrics: ApiMetrics,
    /// Verified API keys; the composition root keeps it purged of revoked keys
    /// ([`KeyCache::follow_revocations`]).
    pub key_cache: KeyCache,
    /// What `/readyz` checks beside the database.
    pub readiness: Readiness,
    /// People: the clock, the TOTP sealing key, sign-in limits.
    pub people: PeopleSettings,
    /// Single sign-on: the key that seals client secrets, and the providers' client.
    pub oidc: oidc::OidcSettings,
    /// Signs audit checkpoints on request (`POST /v1/audit-checkpoints`); `None`: that route
    /// answers 503.
    pub audit_checkpoints: Option<Arc<store::audit_checkpoints::Checkpointer>>,
}

impl ApiState {
    /// A state with the default certificate lifetime, no trusted proxies and default limits.
    pub fn new(app: AppDb, issuing_ca: Arc<certs::IssuingCa>, broker_url: String) -> Self {
        Self {
            app,
            issuing_ca,
            broker_url,
            device_cert_lifetime: certs::DEFAULT_DEVICE_CERT_LIFETIME,
            trusted_proxies: Vec::new(),
            renewal: RenewalPolicy::default(),
            enroll_limits: EnrollLimits::default(),
            auth_limits: AuthLimits::default(),
            key_env: store::api_keys::KeyEnv::live(),
            metrics: ApiMetrics::default(),
            key_cache: KeyCache::default(),
            readiness: Readiness::default(),
            people: PeopleSettings::default(),
            oidc: oidc::OidcSettings::default(),
            audit_checkpoints: None,
        }
    }
}

pub use renew::{RenewalPolicy, DEFAULT_RENEWAL_MIN_INTERVAL, DEFAULT_SUPERSEDED_GRACE};

/// Bounds on the argon2id verification (about 25 ms of CPU) of enrollment tokens created before
/// migration 0008; newer tokens are SHA-256 and need no bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnrollLimits {
    /// Verifications running at once; the rest wait, holding no database connection.
    pub max_concurrent_verifications: usize,
    /// How long a request waits for its turn before it is answered 503 with `Retry-After`.
    pub max_wait: Duration,
    /// Failed enrollments (refused token, CSR or request) one source address may make per
    /// `failure_window`; past it the address is answered 429 with `Retry-After`, before any
    /// database work, until the window ends. Other addresses are not affected, and successful
    /// enrollments do not count (a factory behind one NAT address enrolls at the token's limits).
    pub failures_per_window: u32,
    /// The window of `failures_per_window`.
    pub failure_window: Duration,
}

impl Default for EnrollLimits {
    /// One verification per core, up to 10 s of waiting, 20 failures a minute per address.
    fn default() -> Self {
        Self {
            max_concurrent_verifications: std::thread::available_parallelism()
                .map_or(2, |n| n.get()),
            max_wait: Duration::from_secs(10),
            failures_per_window: 20,
            failure_window: Duration::from_secs(60),
        }
    }
}

/// What handlers share: the state, and the permits that bound token verification.
#[derive(Clone)]
pub(crate) struct Ctx(Arc<CtxInner>);

pub(crate) struct CtxInner {
    pub(crate) state: ApiState,
    /// Legacy enrollment token verifications (argon2) running at once.
    pub(crate) verify_permits: Semaphore,
    /// API key verifications (argon2) running at once.
    pub(crate) key_verify_permits: Semaphore,
    pub(crate) key_cache: KeyCache,
    pub(crate) failures: auth::FailureLimiter,
    /// Failed enrollments per source address.
    pub(crate) enroll_failures: auth::FailureLimiter,
    pub(crate) metrics: ApiMetrics,
    /// Failed sign-ins per source address.
    pub(crate) sign_in_failures: auth::FailureLimiter,
    /// Password verifications (argon2, 64 MiB each) running at once.
    pub(crate) password_permits: Semaphore,
    /// Single sign-on starts per source address (each records an attempt row).
    pub(crate) oidc_starts: auth::FailureLimiter,
}

impl std::ops::Deref for Ctx {
    type Target = CtxInner;
    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

/// Every route of the API, with the HSTS header, a body limit ([`MAX_BODY_LEN`]) and problem+json answers
/// for unknown routes and methods.
///
/// Handlers read the client address and certificate from [`TlsPeer`] connect info: serve the
/// router with [`serve_tls`]. (With `into_make_service_with_connect_info::<PeerAddr>()`,
/// enrollment works and renewal answers 401: there is no client certificate.)
pub fn router(state: ApiState) -> Router {
    router_and_stream_auth(state).0
}

/// [`router`], and the [`StreamAuth`] that checks live-stream keys with the router's own key
/// cache, failure limiter and verification permits.
pub fn router_and_stream_auth(state: ApiState) -> (Router, StreamAuth) {
    let permits = state.enroll_limits.max_concurrent_verifications.max(1);
    let limits = state.auth_limits;
    let enroll_limits = state.enroll_limits;
    let key_cache = state.key_cache.clone();
    let people = state.people.clone();
    let ctx = Ctx(Arc::new(CtxInner {
        sign_in_failures: auth::FailureLimiter::new(
            people.sign_in_failures_per_source,
            people.sign_in_source_window,
        ),
        password_permits: Semaphore::new(people.password_verify_concurrency.max(1)),
        metrics: state.metrics.clone(),
        state,
        verify_permits: Semaphore::new(permits),
        key_verify_permits: Semaphore::new(limits.verify_concurrency.max(1)),
        key_cache,
        failures: auth::FailureLimiter::new(limits.failures_per_window, limits.failure_window),
        enroll_failures: auth::FailureLimiter::new(
            enroll_limits.failures_per_window,
            enroll_limits.failure_window,
        ),
        oidc_starts: auth::FailureLimiter::new(oidc::MAX_STARTS_PER_SOURCE, oidc::START_WINDOW),
    }));
    let management = permissions::management_router().route_layer(middleware::from_fn_with_state(
        ctx.clone(),
        permissions::authorize,
    ));
    let public = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(wire::enrollment::ENROLL_PATH, post(enroll::enroll))
        .route(wire::enrollment::RENEW_PATH, post(renew::renew))
        .route(crl::CRL_PATH, get(crl::serve))
        .route("/v1/openapi.json", get(openapi::serve))
        .route(oidc::routes::START_PATH, get(oidc::routes::start))
        .route(oidc::routes::CALLBACK_PATH, get(oidc::routes::callback))
        .route("/", get(console::page))
        .route("/console/{version}/{*path}", get(console::asset))
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            permissions::count_public,
        ));
    let router = Router::new()
        .merge(public)
        .merge(management)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_LEN))
        .layer(middleware::map_response(security_headers))
        .layer(middleware::from_fn(cors_preflight))
        .with_state(ctx.clone());
    (router, StreamAuth(ctx))
}

/// Answers CORS preflight requests (they carry no credentials, so no key can be checked yet):
/// the methods and headers the API takes. The real request is then allowed only from the
/// key's own origins ([`auth`]), and only then does its answer carry
/// `Access-Control-Allow-Origin`.
async fn cors_preflight(request: axum::extract::Request, next: middleware::Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let is_preflight = request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (is_preflight, &origin) {
        let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-csrf-token"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        return response;
    }
    let mut response = next.run(request).await;
    // A request that passed the key's origin check: let the browser read the answer.
    if let Some(origin) = origin {
        if response.extensions().get::<auth::OriginAllowed>().is_some() {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    response
}

/// Headers every response carries, errors included.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(HSTS),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(console::CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The console's assets are cached for good (their URL changes with them); nothing else is.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
