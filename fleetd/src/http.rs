//! The HTTP listener: liveness and readiness for now; the API issue turns it into the HTTPS API.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use store::AppDb;

const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The routes, with the application database as their shared state.
pub fn router(app: AppDb) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// Alive: the process answers.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers within two seconds.
async fn readyz(State(app): State<AppDb>) -> Response {
    match tokio::time::timeout(READINESS_TIMEOUT, app.ping()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => not_ready(&format!("database: {e}")),
        Err(_) => not_ready("database did not answer within 2 s"),
    }
}

/// RFC 7807 problem details, as every API error will be.
fn not_ready(detail: &str) -> Response {
    tracing::warn!(detail, "not ready");
    let body = json!({
        "type": "about:blank",
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
