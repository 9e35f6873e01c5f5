//! Liveness and readiness.
//!
//! `/readyz` names what is not ready by short names only (`database`, and whatever the
//! composition root registered: `broker`, `ingest_lag`): the caller is unauthenticated, so no
//! error text, host, role or version goes into the answer. The causes go to the log.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::Ctx;

const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Default threshold of the `ingest_lag` check fleetd registers.
pub const DEFAULT_READY_MAX_INGEST_LAG: Duration = Duration::from_secs(30);

/// The checks `/readyz` runs beside the database: each a short name and a probe that answers
/// at once (it reads state, it does no I/O).
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Probe)>,
}

/// Answers whether one dependency is ready.
type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

impl Readiness {
    /// Adds the check `name` (answered in `failing` when `ready` says false).
    pub fn with(
        mut self,
        name: &'static str,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        self.checks.push((name, Arc::new(ready)));
        self
    }

    /// The names of the checks that fail now, in registration order.
    fn failing(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.checks
            .iter()
            .filter(|(_, ready)| !ready())
            .map(|(name, _)| *name)
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Alive: the process answers.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers within two seconds and every registered check passes. 200
/// `{"status":"ready"}`, else 503 `{"status":"not_ready","failing":[...]}`.
pub(crate) async fn readyz(State(ctx): State<Ctx>) -> Response {
    let mut failing = Vec::new();
    match tokio::time::timeout(READINESS_TIMEOUT, ctx.state.app.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database refused or failed the check");
            failing.push("database");
        }
        Err(_) => {
            tracing::warn!("not ready: the database did not answer within 2 s");
            failing.push("database");
        }
    }
    failing.extend(ctx.state.readiness.failing());
    if failing.is_empty() {
        return Json(json!({ "status": "ready" })).into_response();
    }
    tracing::warn!(?failing, "not ready");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(NotReady {
            status: "not_ready",
            failing,
        }),
    )
        .into_response()
}

/// The 503 body; a struct keeps `status` first.
#[derive(serde::Serialize)]
struct NotReady {
    status: &'static str,
    failing: Vec<&'static str>,
}
