//! fleetplane's HTTPS API: axum over rustls (ring, TLS 1.2 minimum, 1.3 preferred, HSTS on every
//! response), with errors as RFC 7807 `application/problem+json`.
//!
//! Routes (all in [`router`]):
//!
//! | route            | what                                                           |
//! |------------------|----------------------------------------------------------------|
//! | `GET /healthz`   | the process answers                                            |
//! | `GET /readyz`    | the database answers within 2 s                                |
//! | `POST /v1/enroll`| enrollment token + CSR in, device certificate chain out        |
//! | `POST /v1/renew` | current device certificate (mutual TLS) + CSR in, new chain out |
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

mod client_addr;
mod enroll;
mod error;
mod health;
mod renew;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{middleware, Router};
use ipnet::IpNet;
use store::AppDb;
use tokio::sync::Semaphore;

pub use client_addr::{PeerAddr, TlsPeer};
pub use enroll::{EnrollRequest, EnrollResponse};
pub use error::ApiError;
pub use renew::RenewRequest;
pub use tls::{serve_tls, tls_server_config, tls_server_config_for, TlsLimits, TlsListener};

/// Largest request body accepted, in bytes. An enrollment request is about 1 KiB.
pub const MAX_BODY_LEN: usize = 64 * 1024;

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
    /// Bounds on the CPU that token verification may take.
    pub enroll_limits: EnrollLimits,
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
            enroll_limits: EnrollLimits::default(),
        }
    }
}

/// Bounds on enrollment token verification, which costs about 25 ms of CPU (argon2id) per
/// request whether or not the token exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnrollLimits {
    /// Verifications running at once; the rest wait, holding no database connection.
    pub max_concurrent_verifications: usize,
    /// How long a request waits for its turn before it is answered 503 with `Retry-After`.
    pub max_wait: Duration,
}

impl Default for EnrollLimits {
    /// One verification per core, and up to 10 s of waiting.
    fn default() -> Self {
        Self {
            max_concurrent_verifications: std::thread::available_parallelism()
                .map_or(2, |n| n.get()),
            max_wait: Duration::from_secs(10),
        }
    }
}

/// What handlers share: the state, and the permits that bound token verification.
#[derive(Clone)]
pub(crate) struct Ctx(Arc<CtxInner>);

pub(crate) struct CtxInner {
    pub(crate) state: ApiState,
    pub(crate) verify_permits: Semaphore,
}

impl std::ops::Deref for Ctx {
    type Target = CtxInner;
    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

/// Every route of the API, with the HSTS header, a 64 KiB body limit and problem+json answers
/// for unknown routes and methods.
///
/// Handlers read the client address and certificate from [`TlsPeer`] connect info: serve the
/// router with [`serve_tls`]. (With `into_make_service_with_connect_info::<PeerAddr>()`,
/// enrollment works and renewal answers 401: there is no client certificate.) Call it inside a
/// tokio runtime: it starts computing the dummy hash on the blocking pool.
pub fn router(state: ApiState) -> Router {
    let permits = state.enroll_limits.max_concurrent_verifications.max(1);
    let ctx = Ctx(Arc::new(CtxInner {
        state,
        verify_permits: Semaphore::new(permits),
    }));
    // The dummy hash for unknown tokens costs one argon2 run: pay it now, off the executor.
    tokio::task::spawn_blocking(store::enrollment_tokens::secret::warm_up);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/renew", post(renew::renew))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_LEN))
        .layer(middleware::map_response(security_headers))
        .with_state(ctx)
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
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
