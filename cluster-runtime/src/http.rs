//! The node's HTTP endpoints: `GET /health` (liveness), `GET /ready`
//! (readiness), `GET /status` (the JSON document of DESIGN §5) and
//! `GET /metrics` (Prometheus text) on the health address, and `GET
//! /metrics` alone on the metrics address when one is configured.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::observe::Metrics;
use crate::platform::{readiness, status, Shared};

/// Binds `addr` and serves; returns the bound address (port 0 picks one).
/// Binds a listener for `setting` (`--health-addr/CLUSTER_HEALTH_ADDR`):
/// done before the platform starts anything, so a port in use fails the
/// start with nothing left running.
pub(crate) async fn bind(
    addr: SocketAddr,
    setting: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config(format!("{setting}: cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(format!("{setting} listener address"), e))?;
    Ok((listener, bound))
}

pub(crate) fn serve(
    (listener, bound): (tokio::net::TcpListener, SocketAddr),
    shared: Arc<Shared>,
) -> (SocketAddr, JoinHandle<()>) {
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status_doc))
        .route(
            "/metrics",
            get(|State(shared): State<Arc<Shared>>| async move {
                metrics_text(&shared.observe.metrics)
            }),
        )
        .with_state(shared);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
    (bound, task)
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match readiness(&shared) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "ready": true }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        ),
    }
}

async fn status_doc(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(status(&shared).await)
}

/// Serves `GET /metrics` alone on `addr` (the `--metrics-addr`).
pub(crate) fn serve_metrics(
    (listener, bound): (tokio::net::TcpListener, SocketAddr),
    metrics: Metrics,
) -> (SocketAddr, JoinHandle<()>) {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move { metrics_text(&m) }),
        )
        .with_state(metrics);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    (bound, task)
}

fn metrics_text(metrics: &Metrics) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}
