//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::Ctx;

const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Alive: the process answers.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers within two seconds.
pub(crate) async fn readyz(State(ctx): State<Ctx>) -> Response {
    match tokio::time::timeout(READINESS_TIMEOUT, ctx.state.app.ping()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => {
            // The cause goes to the log only: the caller is unauthenticated, and database
            // errors can name hosts, roles and databases.
            tracing::warn!(error = %e, "not ready: the database refused or failed the check");
            not_ready("the database is not answering")
        }
        Err(_) => not_ready("the database did not answer within 2 s"),
    }
}

/// 503 as problem details. The detail names the failing dependency, never its error text.
fn not_ready(detail: &str) -> Response {
    tracing::warn!(detail, "not ready");
    let body = json!({
        "type": "urn:fleetplane:problem:not-ready",
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
