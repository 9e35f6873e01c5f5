//! `GET /v1/pki/crl`: the fleet's certificate revocation list, DER (`application/pkix-crl`),
//! signed by the issuing CA, built fresh from the store at every request.
//!
//! Unauthenticated, as CRLs are by design: it is signed (a client verifies it against the
//! issuing CA, so transport adds no trust), and holds serials and dates only, no device or
//! tenant names. An external broker or a relying party fetches it without a credential.
//! [`current_crl`] is also what fleetd writes to `pki.crl_file`.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use certs::{Crl, CrlEntry, CrlReason, IssuingCa};
use store::device_certificates::{self, RevocationCause};
use store::AppDb;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::Ctx;

/// The path of the CRL route.
pub const CRL_PATH: &str = "/v1/pki/crl";

/// Why the CRL could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// Reading the revoked certificates failed.
    #[error("reading revoked certificates: {0}")]
    Store(#[from] store::StoreError),
    /// Signing failed.
    #[error("signing the CRL: {0}")]
    Sign(#[from] certs::IssueError),
}

/// The CRL of the whole fleet now: certificates of revoked devices, and certificates superseded
/// by a renewal longer than `superseded_grace` ago (so a copied key that renewed once is refused
/// by an external broker too), unexpired ones only.
pub async fn current_crl(
    app: &AppDb,
    ca: &IssuingCa,
    superseded_grace: Duration,
) -> Result<Crl, CrlError> {
    let entries: Vec<CrlEntry> = device_certificates::revocation_list(app, superseded_grace)
        .await?
        .into_iter()
        .map(|revoked| CrlEntry {
            serial: revoked.serial,
            revoked_at: revoked.revoked_at,
            reason: match revoked.cause {
                RevocationCause::DeviceRevoked => CrlReason::DeviceRevoked,
                RevocationCause::Superseded => CrlReason::Superseded,
            },
        })
        .collect();
    Ok(ca.sign_crl(&entries, OffsetDateTime::now_utc())?)
}

pub(crate) async fn serve(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let state = &ctx.state;
    let crl = current_crl(
        &state.app,
        &state.issuing_ca,
        state.renewal.superseded_grace,
    )
    .await
    .map_err(|e| match e {
        CrlError::Store(e) => ApiError::from(e),
        CrlError::Sign(e) => ApiError::from(e),
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        crl.der().to_vec(),
    )
        .into_response())
}
