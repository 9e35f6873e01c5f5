//! The Prometheus listener: plain HTTP, `/metrics` only, meant for an internal network.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the registry in the OpenMetrics text format until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let registry = Arc::new(registry);
    let router = Router::new().route("/metrics", get(move || render(registry.clone())));
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
}

async fn render(registry: Arc<Registry>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
