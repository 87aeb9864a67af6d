//! What persistence does with a backend's response: the insert-mode cookie
//! that names the backend per pool, and the learn-mode table that maps an
//! application's cookie to the backend that set it.

use std::time::Duration;

use fulcrum_core::http::{Header, ResponseHead};
use fulcrum_core::model::BackendId;
use fulcrum_core::persist;

use crate::service::{PersistRuntime, ServiceRuntime, Sticky};
use crate::upstream::PoolRuntime;

/// What persistence does with a backend's response: insert mode sets its
/// cookie when the client's did not name this backend; learn mode maps the
/// application's cookie to the backend that set it.
pub(super) fn on_response(
    service: &ServiceRuntime,
    pool: &PoolRuntime,
    backend: BackendId,
    sticky: &Sticky,
    response: &mut ResponseHead,
    now: Duration,
) {
    let PersistRuntime::Cookie { config, learned } = &service.persistence else { return };
    match learned {
        None if sticky.cookie_backend != Some(backend) => {
            let id = persist::cookie_id(&pool.name, &pool.backend(backend).name);
            let value = cookie_for_pool(sticky.cookie_value.as_deref(), service, pool, &id);
            let value = persist::set_cookie(config, &value);
            response.headers.push(Header { name: "Set-Cookie".into(), value: value.into_bytes() });
        }
        None => {}
        Some(table) => {
            let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
            // A client whose sticky backend was replaced follows the new one,
            // unless the new one issues its own session cookie just below.
            if let Some(value) = &sticky.learned_value {
                if sticky.prefer.is_some_and(|b| b != backend) {
                    table.insert((pool.index, value.clone()), backend, now);
                }
            }
            for h in response.headers.iter().filter(|h| h.is("set-cookie")) {
                if let Some(v) = persist::learned_cookie(&h.value, &config.name) {
                    table.insert((pool.index, v.to_owned()), backend, now);
                }
            }
        }
    }
}

/// Most pools one persistence cookie remembers a backend for.
const COOKIE_POOLS: usize = 8;

/// The insert-mode cookie value after `pool` chose the backend `id`: the
/// parts the client had for other pools kept (well-formed ids only, at most
/// `COOKIE_POOLS`), this pool's part replaced.
fn cookie_for_pool(old: Option<&str>, service: &ServiceRuntime, pool: &PoolRuntime, id: &str) -> String {
    let others: Vec<&PoolRuntime> = service
        .pool
        .iter()
        .chain(service.routes.iter().filter_map(|r| r.pool.as_ref()))
        .map(|p| p.as_ref())
        .filter(|p| p.index != pool.index)
        .collect();
    // Only a backend id of another pool of this service survives: anything
    // else the client sent is forged or stale, and dropped.
    let mut parts: Vec<&str> = old
        .unwrap_or_default()
        .split('.')
        .filter(|part| others.iter().any(|p| persist::backend_by_cookie(&p.model, part).is_some()))
        .take(COOKIE_POOLS - 1)
        .collect();
    parts.push(id);
    parts.join(".")
}
