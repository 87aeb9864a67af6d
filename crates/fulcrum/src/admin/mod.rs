//! The admin HTTP server on `[admin] listen`: the JSON API under `/api/v1/`
//! (`api.rs`), Prometheus metrics at `/metrics` (`metrics.rs`) and the
//! dashboard at `/` (`dashboard.rs`).
//!
//! Everything here reads the daemon through one `Arc<Shared>`: snapshots and
//! atomics the data path keeps anyway, so an operator watching costs the
//! sessions nothing. Mutating calls need a bearer token when `[admin]
//! token_file` is set. Every error, unknown paths included, is JSON
//! `{"error": "..."}` with a message that names what is wrong.

pub mod api;
pub mod dashboard;
pub mod metrics;

use std::sync::Arc;

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// What every handler gets: the daemon's shared state and the metrics
/// registry (built once; it renders from the atomics at scrape time).
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub registry: Arc<prometheus_client::registry::Registry>,
}

/// Serves the admin API on `listener` until `shutdown` is cancelled; then
/// stops accepting and lets requests in flight finish. Failures are logged,
/// never fatal to the load balancer.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let app = router(shared);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// The whole admin application: API, metrics, dashboard, JSON 404 and 405.
pub fn router(shared: Arc<Shared>) -> Router {
    let state = AppState { registry: Arc::new(metrics::registry(shared.clone())), shared };
    Router::new()
        .route("/", get(dashboard_page))
        .route("/metrics", get(metrics::handler))
        .route("/api/v1/services", get(api::services))
        .route("/api/v1/pools", get(api::pools))
        .route("/api/v1/sessions", get(api::sessions))
        .route("/api/v1/snat", get(api::snat))
        .route("/api/v1/pools/{pool}/backends/{backend}/state", post(api::set_state))
        .route("/api/v1/reload", post(api::reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn dashboard_page() -> axum::response::Html<&'static str> {
    dashboard::page()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {method}", uri.path()))
}

/// An API failure: the status, and the message for `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme the client should use.
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"fulcrum admin\"")];
            return (self.status, challenge, body).into_response();
        }
        (self.status, body).into_response()
    }
}

/// Lets a mutating call through when no token is configured, or when the
/// request carries `Authorization: Bearer <one of the tokens>`.
pub fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    if shared.admin_tokens.is_empty() {
        return Ok(());
    }
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "this call needs an `Authorization: Bearer <token>` header with a token from [admin] token_file",
        ));
    };
    let value = value.as_bytes();
    let token = match value.iter().position(|&b| b == b' ') {
        Some(i) if value[..i].eq_ignore_ascii_case(b"bearer") => value[i + 1..].trim_ascii(),
        _ => return Err(unauthorized("the Authorization header must use the Bearer scheme")),
    };
    // Every token is compared, each in constant time: how long the answer
    // takes says nothing about which token, or how much of one, matched.
    let matched = shared.admin_tokens.iter().fold(false, |m, t| m | constant_time_eq(t.as_bytes(), token));
    if matched {
        Ok(())
    } else {
        Err(unauthorized("the bearer token is not one of [admin] token_file"))
    }
}

/// Byte equality whose time depends only on the lengths, never on where the
/// inputs differ. (Written here rather than adding `subtle` for ten lines.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests;
