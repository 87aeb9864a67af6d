//! A generation: the pools, SNAT pools and services one configuration
//! runs as. A reload builds the next generation from the new model, taking
//! over from the current one whatever did not change, so that state
//! survives: a pool whose config is unchanged is the same runtime (health,
//! counters, idle connections, checkers and all); a changed pool is new but
//! its backends that stay (same name and address) keep their health and
//! target state; a service keeps its persistence tables when neither its
//! persistence nor its pools changed. Established sessions hold the runtimes
//! they started with and finish on them.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fulcrum_core::model::{BackendId, Model};
use tokio_util::sync::CancellationToken;

use crate::service::{LoadError, ServiceRuntime};
use crate::snat::SnatRuntime;
use crate::upstream::PoolRuntime;

/// Pool runtimes are numbered for the whole process, so persistence keys of
/// pools from different generations never collide.
static NEXT_POOL: AtomicUsize = AtomicUsize::new(0);

pub struct Generation {
    pub model: Model,
    /// In model order.
    pub pools: Vec<Arc<PoolRuntime>>,
    /// The checkers of each pool, index for index; handed on with a reused pool.
    pool_checks: Vec<CancellationToken>,
    pub snat: Vec<Arc<SnatRuntime>>,
    /// In model order.
    pub services: Vec<Arc<ServiceRuntime>>,
    /// Stops this generation's own tasks (persistence table expiry).
    tasks: CancellationToken,
}

impl Generation {
    /// Builds the generation of `model`, taking over from `old`. Nothing runs
    /// yet: `start` does that once the generation is committed. Returns the
    /// generation and a list of what changed, for the operator.
    pub fn build(
        model: Model,
        base: &Path,
        old: Option<&Generation>,
    ) -> Result<(Generation, Vec<String>), LoadError> {
        let mut changes = Vec::new();
        let snat: Vec<Arc<SnatRuntime>> = model
            .snat_pools
            .iter()
            .map(|s| {
                let same = old.and_then(|o| {
                    let i = o.model.snat_pools.iter().position(|p| p == s)?;
                    o.snat.get(i).cloned()
                });
                same.unwrap_or_else(|| Arc::new(SnatRuntime::new(s)))
            })
            .collect();
        let mut pools = Vec::new();
        let mut pool_checks = Vec::new();
        for pool in &model.pools {
            let snat_of = |m: &Model, p: &fulcrum_core::model::Pool| p.snat.map(|i| m.snat_pools[i].clone());
            let previous = old.and_then(|o| {
                let i = o.model.pools.iter().position(|p| p.name == pool.name)?;
                Some((o, i))
            });
            match previous {
                // Unchanged, down to its SNAT pool: the very same runtime.
                Some((o, i))
                    if o.model.pools[i] == *pool
                        && snat_of(&o.model, &o.model.pools[i]) == snat_of(&model, pool) =>
                {
                    pools.push(o.pools[i].clone());
                    pool_checks.push(o.pool_checks[i].clone());
                }
                previous => {
                    let runtime = PoolRuntime::new(
                        pool,
                        NEXT_POOL.fetch_add(1, Ordering::Relaxed),
                        pool.snat.map(|i| snat[i].clone()),
                    );
                    match previous {
                        Some((o, i)) => {
                            inherit_backends(&runtime, &o.pools[i], &o.model.pools[i]);
                            changes.push(format!("pool {:?} changed", pool.name));
                        }
                        None if old.is_some() => changes.push(format!("pool {:?} added", pool.name)),
                        None => {}
                    }
                    pools.push(Arc::new(runtime));
                    pool_checks.push(CancellationToken::new());
                }
            }
        }
        let mut services = Vec::new();
        for s in &model.services {
            let previous = old.and_then(|o| o.services.iter().find(|x| *x.name == *s.name));
            services.push(Arc::new(ServiceRuntime::new(s, &pools, base, previous.map(|p| p.as_ref()))?));
        }
        if let Some(o) = old {
            for p in o.model.pools.iter().filter(|p| !model.pools.iter().any(|n| n.name == p.name)) {
                changes.push(format!("pool {:?} removed", p.name));
            }
            for s in &model.services {
                match o.model.services.iter().find(|x| x.name == s.name) {
                    None => changes.push(format!("service {:?} added", s.name)),
                    Some(x) if x != s => changes.push(format!("service {:?} changed", s.name)),
                    Some(_) => {}
                }
            }
            for s in o.model.services.iter().filter(|x| !model.services.iter().any(|n| n.name == x.name)) {
                changes.push(format!("service {:?} removed", s.name));
            }
        }
        let generation =
            Generation { model, pools, pool_checks, snat, services, tasks: CancellationToken::new() };
        Ok((generation, changes))
    }

    /// Starts what this generation runs: checkers of pools that are new in
    /// it, and table expiry for its services. Checkers of pools `old` had and
    /// this one does not are stopped.
    pub fn start(&self, old: Option<&Generation>, shutdown: &CancellationToken) {
        // Process-wide switches of `[runtime]`, at start and at every reload alike.
        crate::sessions::set_access_log(self.model.runtime.access_log);
        crate::server::set_global_limits(self.model.runtime.limits.clone());
        // A service's connection count carries over from its previous generation; its limit changes now.
        for service in &self.services {
            service.connections.set(service.limits.clone());
        }
        for (pool, checks) in self.pools.iter().zip(&self.pool_checks) {
            let inherited = old.is_some_and(|o| o.pools.iter().any(|p| Arc::ptr_eq(p, pool)));
            if !inherited {
                let token = shutdown.child_token();
                crate::check::spawn(pool, &token);
                // The pool's own token, cancelled when a later generation drops the pool.
                let stop = checks.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    token.cancel();
                });
            }
        }
        if let Some(o) = old {
            for (pool, checks) in o.pools.iter().zip(&o.pool_checks) {
                if !self.pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
                    checks.cancel();
                }
            }
            o.tasks.cancel();
        }
        for service in &self.services {
            tokio::spawn(crate::server::expire_tables(service.clone(), self.tasks.clone(), shutdown.clone()));
        }
    }

    /// What the admin API shows of this generation.
    pub fn live(&self) -> crate::state::Live {
        crate::state::Live {
            services: self.services.clone(),
            pools: self.pools.clone(),
            snat: self.snat.clone(),
        }
    }
}

/// Hands the state of the backends that stay from `old` to `new`; a target
/// state changed in the config wins over the one the old backend had.
fn inherit_backends(new: &PoolRuntime, old: &PoolRuntime, old_model: &fulcrum_core::model::Pool) {
    for (i, b) in new.model.backends.iter().enumerate() {
        let Some(j) = old_model.backends.iter().position(|o| o.name == b.name && o.address == b.address)
        else {
            continue;
        };
        new.backend(BackendId(i)).inherit(old.backend(BackendId(j)));
        if old_model.backends[j].state != b.state {
            new.set_target(BackendId(i), b.state);
        }
    }
}
