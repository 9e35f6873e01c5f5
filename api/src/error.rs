//! Every error the API answers, mapped to HTTP in one place as RFC 7807 problem details.
//!
//! The `type` of each problem is a stable URN (`urn:fleetplane:problem:<slug>`) that clients may
//! match on. No detail ever names another tenant, and database or internal failures answer 500
//! without detail (the cause is logged).

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An RFC 7807 problem document, as every error answers (for the OpenAPI document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URN, `urn:fleetplane:problem:<slug>`, to match on.
    #[schema(example = "urn:fleetplane:problem:invalid-field")]
    pub r#type: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// For `invalid-field`: the field (a JSON path or a query parameter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A refusal or failure, as the API answers it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the token is malformed, unknown, of an unknown tenant, or its secret is wrong. One
    /// answer for all, so nothing tells which.
    #[error("invalid enrollment token")]
    InvalidToken,
    /// 401: renewal without a valid device certificate: none was presented, or it is not a
    /// device certificate of this fleet, or it is outside its validity period. (A certificate
    /// that does not chain to the fleet root, or has expired, already fails the TLS handshake.)
    #[error("a valid device certificate is required")]
    DeviceCertificateRequired,
    /// 403: renewal for a device that is unknown or revoked, or with a certificate the server
    /// did not issue to that device.
    #[error("this device is not allowed to renew its certificate")]
    DeviceNotAllowed,
    /// 429 with `Retry-After`: the device renewed less than the configured minimum interval ago
    /// and its newest certificate is not yet within its renewal window.
    #[error("this device renewed its certificate recently; retry later")]
    RenewalTooSoon {
        /// Seconds until the device may renew again.
        retry_after_secs: u64,
    },
    /// 403: the client address is not in the token's allowed CIDRs.
    #[error("enrollment from this address is not allowed by the token")]
    SourceNotAllowed,
    /// 429 with `Retry-After`: the token's enrollments for this UTC day are used up.
    #[error("the token's daily enrollment limit is reached")]
    DailyLimitReached {
        /// Seconds until the next UTC day.
        retry_after_secs: u64,
    },
    /// 410: the token has expired.
    #[error("the enrollment token has expired")]
    TokenExpired,
    /// 410: the token was revoked.
    #[error("the enrollment token was revoked")]
    TokenRevoked,
    /// 410: the token's total enrollments are used up (for good, so not 429).
    #[error("the enrollment token's total use limit is reached")]
    TokenUsedUp,
    /// 401 with `WWW-Authenticate: Bearer`: no API key, a malformed one, an unknown one, a
    /// wrong secret, a revoked or expired key, or a source address the key does not allow. One
    /// answer for all, so nothing tells which (the log and the metrics do).
    #[error("a valid API key is required (Authorization: Bearer fpk_...)")]
    InvalidApiKey,
    /// 429 with `Retry-After`: too many failed authentications or enrollments from this address.
    #[error("too many failed attempts from this address; retry later")]
    TooManyFailures {
        /// Seconds until the address may try again.
        retry_after_secs: u64,
    },
    /// 403: the caller's role (or group scope) does not allow this route or this change.
    #[error("{0}")]
    Forbidden(String),
    /// 403: the request's `Origin` is not one of the key's CORS origins.
    #[error("this API key may not be used from origin {0:?}")]
    OriginNotAllowed(String),
    /// 404: no such resource, or not visible to the caller (another tenant, another group).
    #[error("{0} not found")]
    ResourceNotFound(&'static str),
    /// 409: the change conflicts with the current state.
    #[error("{0}")]
    Conflict(&'static str),
    /// 422: a field of the request is refused; `field` names it.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field (a JSON path such as `group_ids[2]`, or a query parameter).
        field: String,
        /// Why.
        reason: String,
    },
    /// 400: the `cursor` parameter is not one this server gave out.
    #[error("cursor: not a cursor from a previous page of this list")]
    InvalidCursor,
    /// 400: the CSR was refused; the detail says why (e.g. the key type found).
    #[error("{0}")]
    InvalidCsr(#[from] certs::CsrError),
    /// 400: the request is not what the route expects (malformed JSON, missing field, bad
    /// `X-Forwarded-For` from a trusted proxy).
    #[error("{0}")]
    InvalidRequest(String),
    /// 413: the body is larger than [`crate::MAX_BODY_LEN`].
    #[error("request body is larger than {} bytes", crate::MAX_BODY_LEN)]
    BodyTooLarge,
    /// 415: the body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503 with `Retry-After`: too many token verifications are queued.
    #[error("too many enrollments in progress; retry shortly")]
    Busy,
    /// 404.
    #[error("no such route")]
    NotFound,
    /// 405.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 500: logged with its cause, answered without detail.
    #[error("internal error: {0}")]
    Internal(String),
    /// 401: sign-in refused: unknown tenant or email, wrong password, wrong or replayed code,
    /// disabled user, expired challenge. One answer for all, so nothing tells which (the audit
    /// trail does).
    #[error("sign-in failed: wrong tenant, email, password or code")]
    SignInFailed,
    /// 401: no session cookie, or one that is unknown, signed out, expired, or of a disabled user.
    #[error("a valid session is required (sign in again)")]
    SessionRequired,
    /// 403: a state-changing request with a session cookie but without the session's CSRF token
    /// in `X-CSRF-Token`.
    #[error("this request needs the session's CSRF token in the X-CSRF-Token header")]
    CsrfTokenRequired,
    /// 404: the tenant has no single sign-on provider, or sign-in through it is disabled (an
    /// unknown tenant answers the same).
    #[error("single sign-on is not configured for this tenant")]
    SsoNotConfigured,
    /// 401: a sign-in through the tenant's provider is refused; the detail says why (a replayed
    /// state, a token for another client, an unverified email, ...).
    #[error("single sign-on refused: {0}")]
    SsoRefused(String),
    /// 502: the tenant's identity provider could not be reached, or answered something unusable.
    #[error("{0}")]
    SsoProviderUnavailable(String),
    /// 429 with `Retry-After`: this address started more single sign-ons than
    /// `oidc::MAX_STARTS_PER_SOURCE` in the window.
    #[error("too many sign-ins started from this address; retry later")]
    TooManySignInStarts {
        /// Seconds until the address may start again.
        retry_after_secs: u64,
    },
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::NotFound(what) => Self::ResourceNotFound(what),
            store::StoreError::Conflict(why) => Self::Conflict(why),
            store::StoreError::Invalid { field, reason } => Self::InvalidField {
                field: field.to_owned(),
                reason,
            },
            other => Self::Internal(format!("store: {other}")),
        }
    }
}

impl From<crate::oidc::OidcError> for ApiError {
    fn from(e: crate::oidc::OidcError) -> Self {
        use crate::oidc::OidcError;
        match e {
            OidcError::NotConfigured => Self::SsoNotConfigured,
            OidcError::Refused(refusal) => Self::SsoRefused(refusal.to_string()),
            e @ OidcError::TokenRequestRefused(_) => Self::SsoRefused(e.to_string()),
            e @ OidcError::ProviderUnavailable(_) => Self::SsoProviderUnavailable(e.to_string()),
            OidcError::InvalidProviderUrl(why) => Self::InvalidField {
                field: "issuer".into(),
                reason: why,
            },
            OidcError::Store(e) => e.into(),
            e @ (OidcError::NoKey | OidcError::Secret(_)) => Self::Internal(e.to_string()),
        }
    }
}

impl From<certs::IssueError> for ApiError {
    fn from(e: certs::IssueError) -> Self {
        Self::Internal(format!("issuing a certificate: {e}"))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("blocking task: {e}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::BodyTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(rejection.body_text()),
            _ => Self::InvalidRequest(rejection.body_text()),
        }
    }
}

impl ApiError {
    /// Whether this answer refuses what the client sent (a 4xx other than "wait and retry"): what
    /// a per-address failure limit counts.
    pub(crate) fn is_refused_attempt(&self) -> bool {
        let status = self.status();
        status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidToken | Self::DeviceCertificateRequired | Self::InvalidApiKey => {
                StatusCode::UNAUTHORIZED
            }
            Self::SourceNotAllowed
            | Self::DeviceNotAllowed
            | Self::Forbidden(_)
            | Self::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::DailyLimitReached { .. }
            | Self::TooManyFailures { .. }
            | Self::RenewalTooSoon { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ResourceNotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidCursor => StatusCode::BAD_REQUEST,
            Self::TokenExpired | Self::TokenRevoked | Self::TokenUsedUp => StatusCode::GONE,
            Self::InvalidCsr(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::SignInFailed | Self::SessionRequired => StatusCode::UNAUTHORIZED,
            Self::CsrfTokenRequired => StatusCode::FORBIDDEN,
            Self::SsoNotConfigured => StatusCode::NOT_FOUND,
            Self::SsoRefused(_) => StatusCode::UNAUTHORIZED,
            Self::SsoProviderUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::TooManySignInStarts { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The last part of the problem type URN.
    pub(crate) fn slug(&self) -> &'static str {
        match self {
            Self::InvalidApiKey => "invalid-api-key",
            Self::TooManyFailures { .. } => "too-many-failures",
            Self::Forbidden(_) => "forbidden",
            Self::OriginNotAllowed(_) => "origin-not-allowed",
            Self::ResourceNotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::InvalidField { .. } => "invalid-field",
            Self::InvalidCursor => "invalid-cursor",
            Self::InvalidToken => "invalid-token",
            Self::SourceNotAllowed => "source-not-allowed",
            Self::DeviceCertificateRequired => "device-certificate-required",
            Self::DeviceNotAllowed => "device-not-allowed",
            Self::DailyLimitReached { .. } => "daily-limit-reached",
            Self::RenewalTooSoon { .. } => "renewal-too-soon",
            Self::TokenExpired => "token-expired",
            Self::TokenRevoked => "token-revoked",
            Self::TokenUsedUp => "token-used-up",
            Self::InvalidCsr(certs::CsrError::UnsupportedKey { .. }) => "unsupported-key",
            Self::InvalidCsr(_) => "invalid-csr",
            Self::InvalidRequest(_) => "invalid-request",
            Self::BodyTooLarge => "body-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::Busy => "busy",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Internal(_) => "internal",
            Self::SignInFailed => "sign-in-failed",
            Self::SessionRequired => "session-required",
            Self::CsrfTokenRequired => "csrf-token-required",
            Self::SsoNotConfigured => "sso-not-configured",
            Self::SsoRefused(_) => "sso-refused",
            Self::SsoProviderUnavailable(_) => "sso-provider-unavailable",
            Self::TooManySignInStarts { .. } => "too-many-sign-in-starts",
        }
    }

    /// What the client is told. Internal errors say nothing of their cause.
    /// What went wrong, for people (an internal cause is logged, never told).
    pub(crate) fn detail(&self) -> String {
        match self {
            Self::Internal(_) => "the server failed; the error was logged".into(),
            other => other.to_string(),
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::DailyLimitReached { retry_after_secs }
            | Self::TooManyFailures { retry_after_secs }
            | Self::RenewalTooSoon { retry_after_secs }
            | Self::TooManySignInStarts { retry_after_secs } => Some(*retry_after_secs),
            Self::Busy => Some(1),
            _ => None,
        }
    }
}

impl ApiError {
    /// An internal cause goes to the log (the answer only says the server failed).
    pub(crate) fn log_if_internal(&self) {
        if let Self::Internal(cause) = self {
            tracing::error!(%cause, "request failed");
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log_if_internal();
        let mut body = json!({
            "type": format!("urn:fleetplane:problem:{}", self.slug()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        if let Self::InvalidField { field, .. } = &self {
            body["field"] = json!(field);
        }
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body.to_string(),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::InvalidApiKey) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Handlers and middleware read this to count refusals by reason.
        response.extensions_mut().insert(ProblemSlug(self.slug()));
        response
    }
}

/// The problem type of an error response, for metrics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProblemSlug(pub(crate) &'static str);

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_answer_without_their_cause() {
        let error = ApiError::Internal("password authentication failed for tenant x".into());
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.detail().contains("tenant"));
    }

    #[test]
    fn only_rate_refusals_carry_retry_after() {
        assert_eq!(
            ApiError::DailyLimitReached {
                retry_after_secs: 7
            }
            .retry_after_secs(),
            Some(7)
        );
        assert_eq!(ApiError::Busy.retry_after_secs(), Some(1));
        assert_eq!(ApiError::InvalidToken.retry_after_secs(), None);
    }
}
