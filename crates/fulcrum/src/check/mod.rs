//! Active health checks and agent polling, one task per backend, apart from
//! the data path: a probe never blocks forwarding, it only updates the
//! pool's state, which the data path reads through atomics.

mod probe;

use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::agent::{is_listening, AgentReport, AgentState};
use fulcrum_core::model::{BackendId, CheckKind};
use tokio_util::sync::CancellationToken;

use crate::upstream::PoolRuntime;

/// Starts the checker of every backend of `pool`; they stop on `shutdown`.
pub fn spawn(pool: &Arc<PoolRuntime>, shutdown: &CancellationToken) {
    for id in (0..pool.backends.len()).map(BackendId) {
        tokio::spawn(run(pool.clone(), id, shutdown.clone()));
    }
}

async fn run(pool: Arc<PoolRuntime>, id: BackendId, shutdown: CancellationToken) {
    let check = pool.check.clone();
    let backend = pool.backend(id);
    let (address, agent) = (backend.address, backend.agent);
    let mut first = true;
    loop {
        if !first {
            // Jitter spreads probes of many backends over the interval.
            let jitter = check.jitter.mul_f64(fastrand::f64());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(check.interval + jitter) => {}
            }
        }
        first = false;
        let report = match agent {
            Some(a) => Some(probe::agent(a, check.timeout).await),
            None => None,
        };
        if let Some(r) = &report {
            pool.agent_report(id, r.clone());
        }
        let verdict = match &check.kind {
            CheckKind::None => None,
            CheckKind::Tcp => Some(probe::tcp(address, check.timeout).await),
            CheckKind::Http(http) => {
                Some(probe::http(address, http, check.timeout, pool.model.proxy_protocol).await)
            }
            CheckKind::Agent => Some(agent_verdict(report, address)),
        };
        if let Some(v) = verdict {
            pool.check_result(id, v);
        }
        pool.tick(id);
    }
}

/// Health by the agent: reachable, not `down`, and the backend's port listening.
fn agent_verdict(
    report: Option<Result<AgentReport, String>>,
    address: std::net::SocketAddr,
) -> Result<String, String> {
    match report {
        None => Err("no agent address".into()),
        Some(Err(why)) => Err(format!("agent unreachable: {why}")),
        Some(Ok(r)) if r.state == AgentState::Down => Err("agent reports state down".into()),
        Some(Ok(r)) if !is_listening(&r, address) => {
            Err(format!("port {} is not listening on the backend host (agent)", address.port()))
        }
        Some(Ok(_)) => Ok(format!("agent reports port {} listening", address.port())),
    }
}

/// How long a probe waited before giving up, for reasons.
fn timed_out(after: Duration) -> String {
    format!("timeout after {after:?}")
}
