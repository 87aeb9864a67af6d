//! Checks that take more than one entity — unique names, pools that exist
//! (named by services and by their routes), listen addresses that do not
//! collide, pools that are used, agent checks with an agent to ask, snat
//! pools that exist, are used and can reach their pools' backends — and the
//! assembly of the model once nothing is wrong.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::read::{Located, Report};
use super::routes::{ActionRead, RouteRead};
use super::schema::{PoolRead, ServiceRead};
use super::snat::SnatPoolRead;
use crate::model::{
    Admin, Backend, BackendId, CheckKind, Model, Pool, PoolId, Route, RouteAction, Runtime, Service,
};

/// Cross-checks what `schema` read and, when the whole file is free of
/// errors, builds the model from it.
pub(super) fn model(
    r: &mut Report,
    admin: Option<Located<Admin>>,
    runtime: Runtime,
    services: Vec<ServiceRead>,
    pools: Vec<PoolRead>,
    snat_pools: Vec<SnatPoolRead>,
) -> Option<Model> {
    if services.is_empty() {
        r.error(None, "", "no service is defined; add a [[service]] table");
    }
    unique_names(r, "service", services.iter().map(|s| (s.path.as_str(), s.name)));
    unique_names(r, "pool", pools.iter().map(|p| (p.path.as_str(), p.name)));
    unique_names(r, "snat pool", snat_pools.iter().map(|p| (p.path.as_str(), p.name)));
    for pool in &pools {
        unique_names(r, "backend", pool.backends.iter().map(|b| (b.path.as_str(), b.name)));
    }
    for service in &services {
        unique_names(r, "route", service.routes.iter().map(|route| (route.path.as_str(), route.given_name)));
    }
    let pool_ids = pool_ids(&pools);
    resolve_pools(r, &services, &pools, &pool_ids);
    let snat_ids = snat_ids(&snat_pools);
    resolve_snat_pools(r, &pools, &snat_pools, &snat_ids);
    agents_present(r, &pools);
    listen_collisions(r, admin.as_ref(), &services);
    if r.has_errors() {
        return None;
    }
    Some(Model {
        admin: admin.map(|a| a.value),
        runtime,
        services: services.into_iter().map(|s| build_service(s, &pool_ids)).collect::<Option<_>>()?,
        pools: pools.into_iter().map(|p| build_pool(p, &snat_ids)).collect::<Option<_>>()?,
        snat_pools: snat_pools.into_iter().map(|p| p.pool).collect::<Option<_>>()?,
    })
}

/// Reports every name already used by an earlier entity of the same kind.
fn unique_names<'d>(
    r: &mut Report,
    kind: &str,
    names: impl Iterator<Item = (&'d str, Option<Located<&'d str>>)>,
) {
    let mut first: HashMap<&str, Option<usize>> = HashMap::new();
    for (path, name) in names {
        let Some(name) = name else { continue };
        match first.get(name.value) {
            Some(line) => {
                let message = format!("name {:?} is already used by the {kind}{}", name.value, at(*line));
                r.error(name.line, path, message);
            }
            None => {
                first.insert(name.value, name.line);
            }
        }
    }
}

/// Each pool's id by its name (the first pool of a name, if two share one).
fn pool_ids<'d>(pools: &[PoolRead<'d>]) -> HashMap<&'d str, PoolId> {
    let mut ids = HashMap::new();
    for (i, pool) in pools.iter().enumerate() {
        if let Some(name) = pool.name {
            ids.entry(name.value).or_insert(PoolId(i));
        }
    }
    ids
}

/// Reports every pool a service or a route names that is not defined, and
/// warns about pools nothing names.
fn resolve_pools(r: &mut Report, services: &[ServiceRead], pools: &[PoolRead], ids: &HashMap<&str, PoolId>) {
    let mut used = HashSet::new();
    for service in services {
        let routes = service.routes.iter().filter_map(|route| match &route.action {
            Some(ActionRead::Pool(name)) => Some((route.path.as_str(), *name)),
            _ => None,
        });
        let named = service.pool.map(|name| (service.path.as_str(), name)).into_iter().chain(routes);
        for (path, wanted) in named {
            match ids.get(wanted.value) {
                Some(id) => {
                    used.insert(*id);
                }
                None => {
                    let names = defined("pools", "pool", pools.iter().filter_map(|p| p.name));
                    let message = format!("pool {:?} is not defined ({names})", wanted.value);
                    r.error(wanted.line, path, message);
                }
            }
        }
    }
    for (i, pool) in pools.iter().enumerate() {
        if pool.name.is_some() && !used.contains(&PoolId(i)) {
            r.warn_on(pool.line, &pool.path, "is not used by any service");
        }
    }
}

/// `pools defined: "web", "api"` (`kinds` and the names), or `no [[pool]] is
/// defined` (`header`), to show what a reference could have said.
fn defined<'d>(kinds: &str, header: &str, given: impl Iterator<Item = Located<&'d str>>) -> String {
    let mut names: Vec<String> = Vec::new();
    for name in given {
        let quoted = format!("{:?}", name.value);
        if !names.contains(&quoted) {
            names.push(quoted);
        }
    }
    if names.is_empty() {
        format!("no [[{header}]] is defined")
    } else {
        format!("{kinds} defined: {}", names.join(", "))
    }
}

/// Each snat pool's index by its name (the first of a name, if two share one).
fn snat_ids<'d>(snat_pools: &[SnatPoolRead<'d>]) -> HashMap<&'d str, usize> {
    let mut ids = HashMap::new();
    for (i, pool) in snat_pools.iter().enumerate() {
        if let Some(name) = pool.name {
            ids.entry(name.value).or_insert(i);
        }
    }
    ids
}

/// Reports every snat pool a pool names that is not defined, and each
/// IPv6 backend of a pool whose snat pool has IPv4 addresses only; warns
/// about snat pools no pool names.
fn resolve_snat_pools(
    r: &mut Report,
    pools: &[PoolRead],
    snat_pools: &[SnatPoolRead],
    ids: &HashMap<&str, usize>,
) {
    let mut used = HashSet::new();
    for pool in pools {
        let Some(wanted) = pool.snat else { continue };
        let Some(&id) = ids.get(wanted.value) else {
            let names = defined("snat pools", "snat_pool", snat_pools.iter().filter_map(|p| p.name));
            let message = format!("snat pool {:?} is not defined ({names})", wanted.value);
            r.error(wanted.line, &pool.path, message);
            continue;
        };
        used.insert(id);
        for backend in &pool.backends {
            if let Some(address @ SocketAddr::V6(_)) = backend.address {
                let message = format!(
                    "address {address} is IPv6, but the pool's snat pool {:?} has IPv4 addresses only; \
                     use an IPv4 backend address or take snat off the pool",
                    wanted.value
                );
                r.error(backend.line, &backend.path, message);
            }
        }
    }
    for (i, snat) in snat_pools.iter().enumerate() {
        if snat.name.is_some() && !used.contains(&i) {
            r.warn_on(snat.line, &snat.path, "is not used by any pool");
        }
    }
}

/// Reports each backend of a pool checked by `kind = "agent"` that has no
/// agent to ask (one whose `agent` is wrong was reported already).
fn agents_present(r: &mut Report, pools: &[PoolRead]) {
    for pool in pools.iter().filter(|p| p.health.kind == CheckKind::Agent) {
        for backend in pool.backends.iter().filter(|b| !b.agent_given) {
            let message = r#"health kind "agent" needs an agent address; add agent = "IP:port" of the fulcrum agent on this backend's host"#;
            r.error(backend.line, &backend.path, message);
        }
    }
}

/// Reports each listen address that could not be bound beside an earlier one
/// (in file order): the same IP and port, or a wildcard IP (`0.0.0.0`, `[::]`)
/// and any IP on the same port. Port 0 never collides: the OS picks a free one.
fn listen_collisions(r: &mut Report, admin: Option<&Located<Admin>>, services: &[ServiceRead]) {
    // (owner, owner's path, address); owner 0 is the admin API, i + 1 service i.
    let mut listeners: Vec<(usize, &str, Located<SocketAddr>)> = Vec::new();
    if let Some(admin) = admin {
        listeners.push((0, "admin", Located { value: admin.value.listen, line: admin.line }));
    }
    for (i, service) in services.iter().enumerate() {
        listeners.extend(service.listen.iter().map(|l| (i + 1, service.path.as_str(), *l)));
    }
    listeners.sort_by_key(|(_, _, l)| (l.line.is_none(), l.line));

    for (j, (owner, path, this)) in listeners.iter().enumerate() {
        let earlier = listeners[..j].iter().find(|(_, _, other)| collide(this.value, other.value));
        let Some((other_owner, other_path, other)) = earlier else {
            continue;
        };
        let first = at(other.line);
        let message = match (other_owner == owner, this.value == other.value) {
            (true, true) => format!("listen {} is given twice (first{first})", this.value),
            (true, false) => {
                format!("listen {} collides with listen {}{first}", this.value, other.value)
            }
            (false, true) => {
                format!("listen {} is already used by {other_path}{first}", this.value)
            }
            (false, false) => {
                format!("listen {} collides with listen {} of {other_path}{first}", this.value, other.value)
            }
        };
        r.error(this.line, path, message);
    }
}

fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// ` at line 3`, or nothing when the line is unknown.
fn at(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

/// The service of a file with no error; `None` only if a reader left a
/// part out without reporting it (`load` then reports a bug).
fn build_service(s: ServiceRead, ids: &HashMap<&str, PoolId>) -> Option<Service> {
    let pool = match s.pool {
        Some(name) => Some(*ids.get(name.value)?),
        None => None,
    };
    Some(Service {
        name: s.name?.value.to_owned(),
        listen: s.listen.iter().map(|l| l.value).collect(),
        mode: s.mode?,
        pool,
        routes: s.routes.into_iter().map(|route| build_route(route, ids)).collect::<Option<_>>()?,
        persistence: s.persistence,
        policy: s.policy,
        accept_proxy_protocol: s.accept_proxy_protocol,
        trusted_proxies: s.trusted_proxies,
        timeouts: s.timeouts,
        limits: s.limits,
        retries: s.retries,
    })
}

fn build_route(route: RouteRead, ids: &HashMap<&str, PoolId>) -> Option<Route> {
    let action = match route.action? {
        ActionRead::Pool(name) => RouteAction::Pool(*ids.get(name.value)?),
        ActionRead::Answer(answer) => answer,
    };
    Some(Route { name: route.name, matcher: route.matcher, action, policy: route.policy })
}

fn build_pool(p: PoolRead, snat_ids: &HashMap<&str, usize>) -> Option<Pool> {
    let snat = match p.snat {
        Some(name) => Some(*snat_ids.get(name.value)?),
        None => None,
    };
    let backends = p.backends.into_iter().enumerate().map(|(i, b)| {
        Some(Backend {
            id: BackendId(i),
            name: b.name?.value.to_owned(),
            address: b.address?,
            weight: b.weight,
            state: b.state,
            max_connections: b.max_connections,
            agent: b.agent,
        })
    });
    Some(Pool {
        name: p.name?.value.to_owned(),
        algorithm: p.algorithm,
        backends: backends.collect::<Option<_>>()?,
        max_idle_per_backend: p.max_idle_per_backend,
        health: p.health,
        passive: p.passive,
        slow_start: p.slow_start,
        proxy_protocol: p.proxy_protocol,
        snat,
    })
}
