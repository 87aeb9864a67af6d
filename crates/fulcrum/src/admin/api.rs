//! The JSON API under `/api/v1/`: what the daemon runs (services, pools and
//! the server state table, sessions, SNAT pools) and the two things an
//! operator steers (a backend's target state, a reload).
//!
//! Field names are the lexicon's: service, pool, backend, health, target,
//! current, weight, sessions, load. Views are built per request from the live
//! snapshot; nothing here is on the data path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use fulcrum_core::agent::AgentReport;
use fulcrum_core::health::{CurrentState, Health};
use fulcrum_core::model::{Algorithm, BackendId, Mode, RouteAction, TargetState};
use fulcrum_core::session::{SessionFilter, SessionRow, SessionTable};
use serde::{Deserialize, Serialize};

use super::{authorize, ApiError, AppState};
use crate::service::ServiceRuntime;
use crate::snat::SnatView;
use crate::stats::{BackendStats, ServiceStats};
use crate::upstream::PoolRuntime;

/// How long `POST /api/v1/reload` waits for the runner's answer.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows `GET /api/v1/sessions` returns when no `limit` is given, and at most.
pub const SESSIONS_DEFAULT_LIMIT: usize = 100;
pub const SESSIONS_MAX_LIMIT: usize = 1000;

type ApiResult<T> = Result<Json<T>, ApiError>;

// ---------------------------------------------------------------- services

#[derive(Serialize)]
pub struct ServiceView {
    pub name: String,
    pub mode: Mode,
    pub listen: Vec<SocketAddr>,
    /// The default pool; `null` when unmatched requests get a 404.
    pub pool: Option<String>,
    pub routes: Vec<RouteView>,
    /// Sessions open now (rows of the session table).
    pub sessions: usize,
    /// Client connections open now, counted against `max_connections`:
    /// from admission, so also those not yet a session (a PROXY header
    /// still awaited).
    pub connections: usize,
    /// `[service.limits] max_connections`; `null` when unlimited.
    pub max_connections: Option<u32>,
    pub counters: ServiceCounters,
}

#[derive(Serialize)]
pub struct RouteView {
    pub name: String,
    /// `pool`, `redirect` or `respond`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Serialize)]
pub struct ServiceCounters {
    /// Client connections accepted since start (or since the service appeared).
    pub sessions: u64,
    pub requests: u64,
    pub responses: Classes,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    pub refused: u64,
}

/// Responses by class: `{"1xx": n, "2xx": n, ...}`.
pub type Classes = BTreeMap<&'static str, u64>;

/// The class names, index for index with the stats' `responses` arrays.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn classes(counters: &[AtomicU64; 5]) -> Classes {
    CLASSES.iter().zip(counters).map(|(&c, n)| (c, n.load(Ordering::Relaxed))).collect()
}

/// `GET /api/v1/services`
pub async fn services(State(app): State<AppState>) -> Json<Vec<ServiceView>> {
    let live = app.shared.live.load();
    let table = &app.shared.sessions;
    Json(live.services.iter().map(|s| service_view(s, sessions_of_service(table, &s.name))).collect())
}

/// `s` as the API shows it, with `open` sessions.
fn service_view(s: &ServiceRuntime, open: usize) -> ServiceView {
    let routes = s
        .routes
        .iter()
        .map(|r| {
            let mut view = RouteView {
                name: r.route.name.clone(),
                action: "pool",
                pool: None,
                status: None,
                location: None,
            };
            match &r.route.action {
                RouteAction::Pool(_) => view.pool = r.pool.as_ref().map(|p| p.name.to_string()),
                RouteAction::Redirect { status, location } => {
                    view.action = "redirect";
                    view.status = Some(*status);
                    view.location = Some(location.clone());
                }
                RouteAction::Respond { status, .. } => {
                    view.action = "respond";
                    view.status = Some(*status);
                }
            }
            view
        })
        .collect();
    ServiceView {
        name: s.name.to_string(),
        mode: s.mode,
        listen: s.listen.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        pool: s.pool.as_ref().map(|p| p.name.to_string()),
        routes,
        sessions: open,
        connections: s.connections.open(),
        max_connections: s.limits.max_connections,
        counters: service_counters(&s.stats),
    }
}

fn service_counters(st: &ServiceStats) -> ServiceCounters {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ServiceCounters {
        sessions: n(&st.sessions),
        requests: n(&st.requests),
        responses: classes(&st.responses),
        bytes_in: n(&st.bytes_in),
        bytes_out: n(&st.bytes_out),
        refused: n(&st.refused),
    }
}

// ------------------------------------------------------------------- pools

#[derive(Serialize)]
pub struct PoolView {
    pub name: String,
    pub algorithm: Algorithm,
    /// The SNAT pool backend connections take their source from.
    pub snat: Option<String>,
    pub backends: Vec<BackendView>,
}

/// One row of the server state table.
#[derive(Serialize)]
pub struct BackendView {
    pub pool: String,
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub health: Health,
    /// Why the health is what it is (the last check's verdict, an ejection).
    pub reason: String,
    /// What is asked of the backend: the operator's target, made stricter by its agent.
    pub target: TargetState,
    pub current: CurrentState,
    /// Sessions open on the backend now.
    pub sessions: u64,
    pub max_connections: Option<u32>,
    /// The load agent's address, when the backend has one.
    pub agent: Option<SocketAddr>,
    /// The agent's last report with its load score; `null` without one.
    pub load: Option<LoadView>,
    pub counters: BackendCounters,
}

#[derive(Serialize)]
pub struct LoadView {
    /// 0.0 (idle) to 1.0 (full): the busiest resource of the report.
    pub score: f64,
    #[serde(flatten)]
    pub report: AgentReport,
}

#[derive(Serialize)]
pub struct BackendCounters {
    /// Requests (http) or sessions (tcp) sent to the backend.
    pub requests: u64,
    pub responses: Classes,
    /// Bytes from the backend.
    pub bytes_in: u64,
    /// Bytes to the backend.
    pub bytes_out: u64,
    pub connect_errors: u64,
    pub retries: u64,
}

/// `GET /api/v1/pools`
pub async fn pools(State(app): State<AppState>) -> Json<Vec<PoolView>> {
    let live = app.shared.live.load();
    Json(
        live.pools
            .iter()
            .map(|p| PoolView {
                name: p.name.to_string(),
                algorithm: p.model.algorithm,
                snat: p.model.snat.and_then(|i| live.snat.get(i)).map(|s| s.name.clone()),
                backends: (0..p.backends.len()).map(|i| backend_view(p, BackendId(i))).collect(),
            })
            .collect(),
    )
}

pub fn backend_view(pool: &PoolRuntime, id: BackendId) -> BackendView {
    let b = pool.backend(id);
    let (health, reason, current) = pool.status(id);
    BackendView {
        pool: pool.name.to_string(),
        name: b.name.to_string(),
        address: b.address,
        weight: b.weight,
        health,
        reason,
        target: b.target_state(),
        current,
        sessions: b.sessions.load(Ordering::Relaxed),
        max_connections: b.max_connections,
        agent: b.agent,
        load: b.report().map(|report| LoadView { score: fulcrum_core::agent::load_score(&report), report }),
        counters: backend_counters(&b.stats),
    }
}

fn backend_counters(st: &BackendStats) -> BackendCounters {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    BackendCounters {
        requests: n(&st.requests),
        responses: classes(&st.responses),
        bytes_in: n(&st.bytes_in),
        bytes_out: n(&st.bytes_out),
        connect_errors: n(&st.connect_errors),
        retries: n(&st.retries),
    }
}

// -------------------------------------------------------------- sessions

/// `GET /api/v1/sessions` query: filters (each optional, all must hold) and paging.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    pub service: Option<String>,
    pub backend: Option<String>,
    pub client: Option<String>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// Sessions open now on the service named `name`.
fn sessions_of_service(table: &SessionTable, name: &str) -> usize {
    let filter = SessionFilter { service: Some(name.to_owned()), ..SessionFilter::default() };
    table.list(&filter, 0, 0).0
}

/// `GET /api/v1/sessions` answer: how many match in all, and one page of them.
#[derive(Serialize)]
pub struct SessionsPage {
    pub total: usize,
    pub rows: Vec<SessionRow>,
}

/// `GET /api/v1/sessions?service=&backend=&client=&limit=&offset=`: the
/// session table, filtered (`backend` is `NAME` or `POOL/NAME`; `client` an
/// address, address:port, network or address prefix), oldest first.
pub async fn sessions(
    State(app): State<AppState>,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> ApiResult<SessionsPage> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(SESSIONS_DEFAULT_LIMIT);
    if limit > SESSIONS_MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "query: limit {limit} is over the maximum of {SESSIONS_MAX_LIMIT}"
        )));
    }
    let filter = SessionFilter { service: q.service, backend: q.backend, client: q.client };
    let (total, rows) = app.shared.sessions.list(&filter, limit, q.offset.unwrap_or(0));
    Ok(Json(SessionsPage { total, rows }))
}

// -------------------------------------------------------------------- snat

/// A SNAT pool: its allocation state and counters, and the pools using it.
#[derive(Serialize)]
pub struct SnatPoolView {
    #[serde(flatten)]
    pub snat: SnatView,
    /// The pools whose backend connections take their source from it.
    pub pools: Vec<String>,
}

/// `GET /api/v1/snat`: per SNAT pool its addresses, blocks held, free
/// port intervals per address, allocated and capacity, and the counters of
/// sessions that waited for a source address or were refused for want of one.
pub async fn snat(State(app): State<AppState>) -> Json<Vec<SnatPoolView>> {
    let live = app.shared.live.load();
    Json(
        live.snat
            .iter()
            .enumerate()
            .map(|(i, s)| SnatPoolView {
                snat: s.view(),
                pools: live
                    .pools
                    .iter()
                    .filter(|p| p.model.snat == Some(i))
                    .map(|p| p.name.to_string())
                    .collect(),
            })
            .collect(),
    )
}

// ----------------------------------------------------------- state change

/// `POST .../state` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub target: TargetState,
}

/// `POST /api/v1/pools/{pool}/backends/{backend}/state` with
/// `{"target": "enabled" | "drain" | "disabled"}`: answers with the
/// backend's row of the server state table after the change.
pub async fn set_state(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> ApiResult<BackendView> {
    authorize(&app.shared, &headers)?;
    let Path((pool_name, backend_name)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let live = app.shared.live.load();
    let pool = live
        .pools
        .iter()
        .find(|p| *p.name == *pool_name)
        .ok_or_else(|| ApiError::not_found(format!("no pool named {pool_name:?}")))?;
    let id = pool.backends.iter().position(|b| *b.name == *backend_name).map(BackendId).ok_or_else(|| {
        ApiError::not_found(format!("pool {pool_name:?} has no backend named {backend_name:?}"))
    })?;
    let change: StateChange = parse_body(&body)?;
    pool.set_target(id, change.target);
    Ok(Json(backend_view(pool, id)))
}

/// A JSON body, or a 400 that says what is wrong with it.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            r#"body: expected JSON like {"target": "drain"} (one of "enabled", "drain", "disabled"), got nothing"#,
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

// ------------------------------------------------------------------ reload

#[derive(Serialize, Deserialize)]
pub struct ReloadDone {
    /// What changed, in the runner's words.
    pub result: String,
}

/// `POST /api/v1/reload`: asks the runner to reload the configuration file
/// and waits (bounded) for its verdict: 200 with what changed, 400 with why
/// nothing did.
pub async fn reload(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<ReloadDone> {
    authorize(&app.shared, &headers)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.shared.reload.send(tx).await.map_err(|_| reload_unavailable())?;
    reload_verdict(rx, RELOAD_TIMEOUT).await.map(Json)
}

fn reload_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "reload is not available: the runner is not listening (shutting down?)",
    )
}

/// The runner's answer to a reload request, waited for up to `bound`.
pub(super) async fn reload_verdict(
    rx: tokio::sync::oneshot::Receiver<Result<String, String>>,
    bound: Duration,
) -> Result<ReloadDone, ApiError> {
    match tokio::time::timeout(bound, rx).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("reload did not finish within {:?}; it may still complete, check the log", bound),
        )),
        Ok(Err(_)) => Err(reload_unavailable()),
        Ok(Ok(Ok(result))) => Ok(ReloadDone { result }),
        Ok(Ok(Err(error))) => Err(ApiError::bad_request(error)),
    }
}
