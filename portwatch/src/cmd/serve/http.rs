//! The HTTP side of `portwatch serve`: /metrics for Prometheus, /healthz
//! and /readyz for the kubelet.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use super::metrics::Metrics;

pub struct Shared {
    pub metrics: Metrics,
    /// Every probe attached.
    pub attached: AtomicBool,
    /// Stopping: not ready any more (the pipelines are draining).
    pub stopping: AtomicBool,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode())
}

/// Alive and attached: every probe is in (a kernel refusing one fails the
/// start-up instead, and the process exits).
async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.attached.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok: every probe attached\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "attaching\n")
    }
}

/// Ready to be scraped: attached and not shutting down.
async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else if s.attached.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "attaching\n")
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}
