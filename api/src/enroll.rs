//! `POST /v1/enroll`: an enrollment token and a CSR in, a device certificate out.
//!
//! The request and the answer are the enrollment contract's (`wire::enrollment`: an
//! `EnrollRequest` in, a `CertificateResponse` out, `201 Created`), shared with the agent.
//!
//! Everything happens in one transaction of the tenant named in the token: find the token (row-
//! level security: only that tenant's), verify its secret, check revocation, expiry, source
//! address, and take one use within the daily and total limits, create the device in the
//! token's group with its labels, sign the certificate (subject decided by the server), record
//! the certificate, append the audit event, commit. Any refusal rolls everything back.
//! Refusals are listed on [`ApiError`].
//!
//! A source address whose enrollments were refused `failures_per_window` times in the window
//! ([`crate::EnrollLimits`]) is answered 429 `too-many-failures` with `Retry-After` until the window
//! ends, before its request reaches the database. Only that address: the count is per address.

use std::net::IpAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use certs::{DeviceCsr, DeviceIdentity};
use store::devices;
use store::enrollment_tokens::{
    self, secret, EnrollmentCandidate, EnrollmentToken, HashCheck, PresentedToken, Refusal,
    SecretHash, TokenHash,
};
use store::{DeviceId, TenantTx};
use time::OffsetDateTime;
use wire::enrollment::{CertificateResponse, EnrollRequest};
use zeroize::Zeroizing;

use crate::client_addr::{client_ip, Peer};
use crate::device_certificate;
use crate::error::ApiError;
use crate::Ctx;

pub(crate) async fn enroll(
    State(ctx): State<Ctx>,
    Peer { addr: peer, .. }: Peer,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CertificateResponse>), ApiError> {
    let source = client_ip(peer.ip(), &headers, &ctx.state.trusted_proxies)?;
    // Taken before the work, so concurrent attempts cannot overshoot the limit; handed back
    // unless the attempt is refused.
    ctx.enroll_failures
        .try_take(source)
        .map_err(|retry_after_secs| ApiError::TooManyFailures { retry_after_secs })?;
    let answer = enroll_from(&ctx, source, body).await;
    if !answer.as_ref().is_err_and(ApiError::is_refused_attempt) {
        ctx.enroll_failures.give_back(source);
    }
    answer
}

/// The enrollment itself, once the source address may try.
async fn enroll_from(
    ctx: &Ctx,
    source: IpAddr,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CertificateResponse>), ApiError> {
    let Json(EnrollRequest { token, csr }) = body?;
    // The token's heap buffer is wiped when this goes out of scope.
    let token = Zeroizing::new(token);
    // Cheap checks first: a malformed CSR or token reaches no database.
    let csr = DeviceCsr::from_pem(csr.as_bytes())?;
    let presented = PresentedToken::parse(&token).map_err(|_| ApiError::InvalidToken)?;
    drop(token);

    let tenant_id = presented.tenant_id();
    let (mut tx, token) = verified_token(ctx, &presented).await?;
    let admission = enrollment_tokens::admit(&mut tx, &token, source)
        .await?
        .map_err(refusal)?;

    let device_id = DeviceId::new_random();
    let identity = DeviceIdentity {
        tenant_id,
        device_id,
    };
    let issued = device_certificate::issue(ctx, &csr, identity)?;
    devices::enroll(
        &mut tx,
        device_id,
        &token,
        &admission,
        &issued.record,
        source,
    )
    .await?;
    tx.commit().await?;

    tracing::info!(tenant = %tenant_id, device = %device_id, token = %token.id, %source, "enrollment accepted");
    issued.created(ctx)
}

/// Opens the transaction of the token's tenant, finds the token there and checks the secret.
/// Unknown tenant, unknown token and wrong secret are one answer.
///
/// The presented secret's SHA-256 was computed at parsing, so the common case hashes nothing
/// while the connection is held. A token from before migration 0008 (argon2id) is verified after
/// the first transaction has ended, at most `max_concurrent_verifications` at once (requests
/// waiting their turn hold no connection); its row is then read again in a new transaction.
async fn verified_token(
    ctx: &Ctx,
    presented: &PresentedToken,
) -> Result<(TenantTx, EnrollmentToken), ApiError> {
    let (tx, candidate) = begin_with_token(ctx, presented).await?;
    match candidate.hash.check(presented) {
        HashCheck::Matches => Ok((tx, candidate.token)),
        HashCheck::Wrong => Err(ApiError::InvalidToken),
        HashCheck::NeedsArgon2(legacy) => {
            tx.rollback().await?;
            verify_legacy(ctx, &legacy, presented).await?;
            let (tx, candidate) = begin_with_token(ctx, presented).await?;
            // Hashes are never rewritten; this one must still be the one just verified.
            match &candidate.hash {
                TokenHash::Legacy(stored) if *stored == legacy => Ok((tx, candidate.token)),
                _ => Err(ApiError::InvalidToken),
            }
        }
    }
}

/// The transaction of the token's tenant and the token's row, if the token exists there.
async fn begin_with_token(
    ctx: &Ctx,
    presented: &PresentedToken,
) -> Result<(TenantTx, EnrollmentCandidate), ApiError> {
    let mut tx = ctx.state.app.begin(presented.tenant_id()).await?;
    match enrollment_tokens::load_for_enrollment(&mut tx, presented.token_id()).await? {
        Some(candidate) => Ok((tx, candidate)),
        None => Err(ApiError::InvalidToken),
    }
}

/// argon2id for a legacy token, on the blocking pool, within the verification permits.
async fn verify_legacy(
    ctx: &Ctx,
    legacy: &SecretHash,
    presented: &PresentedToken,
) -> Result<(), ApiError> {
    let _permit = tokio::time::timeout(
        ctx.state.enroll_limits.max_wait,
        ctx.verify_permits.acquire(),
    )
    .await
    .map_err(|_| ApiError::Busy)?
    .map_err(|_| ApiError::Internal("verification permits closed".into()))?;
    let hash = legacy.clone();
    let secret = presented.secret().clone();
    let matches =
        tokio::task::spawn_blocking(move || secret::verify_legacy(&hash, &secret)).await?;
    if matches {
        Ok(())
    } else {
        Err(ApiError::InvalidToken)
    }
}

fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Revoked => ApiError::TokenRevoked,
        Refusal::Expired => ApiError::TokenExpired,
        Refusal::SourceNotAllowed => ApiError::SourceNotAllowed,
        Refusal::UseLimitReached => ApiError::TokenUsedUp,
        Refusal::DailyLimitReached { resets_at } => ApiError::DailyLimitReached {
            retry_after_secs: seconds_until(resets_at),
        },
    }
}

/// Whole seconds from now until `at`, rounded up, at least 1.
fn seconds_until(at: OffsetDateTime) -> u64 {
    let remaining = at - OffsetDateTime::now_utc();
    let secs = remaining.whole_seconds() + i64::from(remaining.subsec_nanoseconds() > 0);
    u64::try_from(secs).unwrap_or(0).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(seconds_until(now - time::Duration::seconds(5)), 1);
        let soon = seconds_until(now + time::Duration::milliseconds(90_500));
        assert!((90..=91).contains(&soon), "{soon}");
    }

    #[test]
    fn requests_do_not_print_their_token() {
        let request: EnrollRequest =
            serde_json::from_str(r#"{"token":"fpe_secret","csr":"x","extra":1}"#).unwrap();
        assert!(!format!("{request:?}").contains("fpe_secret"));
    }
}
