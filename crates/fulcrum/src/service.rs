//! A service as the data path sees it: its default pool and routes resolved
//! to live pools, its policy with the state policy needs (credentials read
//! from their files, the auth cache, the rate limiter, the session count),
//! and its persistence tables.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_core::model::{
    Auth, BackendId, Limits, Mode, Persistence, Policy, Route, RouteAction, Service, Timeouts,
};
use fulcrum_core::persist::{self, StickyTable};
use fulcrum_core::policy::{self, AuthCache, Credentials, RateLimiter, Refusal};

use crate::upstream::PoolRuntime;

pub struct ServiceRuntime {
    pub name: Arc<str>,
    pub mode: Mode,
    /// The addresses its listeners are bound to (port 0 resolved), filled in
    /// when the listeners are committed; for operators.
    pub listen: Mutex<Vec<std::net::SocketAddr>>,
    pub timeouts: Timeouts,
    pub retries: u32,
    /// Where a request no route matches goes; `None` answers 404 (http) or refuses (tcp).
    pub pool: Option<Arc<PoolRuntime>>,
    /// The routes as configured, in order, for the core's classifier.
    route_models: Vec<Route>,
    /// The same routes with their pools and policies, index for index.
    pub routes: Vec<RouteRuntime>,
    pub policy: PolicyRuntime,
    pub persistence: PersistRuntime,
    /// The persistence config, to tell on reload whether the tables can stay.
    persistence_model: Persistence,
    pub accept_proxy_protocol: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: Limits,
    /// Connections open now against `[service.limits]`, carried across reloads.
    pub connections: Arc<crate::limit::ConnectionLimit>,
    pub stats: Arc<crate::stats::ServiceStats>,
}

/// A route with its pool resolved.
pub struct RouteRuntime {
    pub route: Route,
    pub pool: Option<Arc<PoolRuntime>>,
    pub policy: Option<PolicyRuntime>,
}

/// Why a service could not be built from a valid model: a file it names.
#[derive(Debug, thiserror::Error)]
#[error("service {service:?}{route}: {key} {path:?}: {why}")]
pub struct LoadError {
    service: String,
    route: String,
    key: &'static str,
    path: String,
    why: String,
}

impl ServiceRuntime {
    /// Builds the runtime of `s`; relative credential files are read from `base`.
    /// With `old` (the same service before a reload), its persistence tables
    /// are kept when the persistence config and every pool it used are unchanged.
    pub fn new(
        s: &Service,
        pools: &[Arc<PoolRuntime>],
        base: &Path,
        old: Option<&ServiceRuntime>,
    ) -> Result<ServiceRuntime, LoadError> {
        let mut routes = Vec::new();
        for r in &s.routes {
            let pool = match r.action {
                RouteAction::Pool(p) => Some(pools[p.0].clone()),
                _ => None,
            };
            // A route's policy has neither `max_sessions` nor a rate (service-only
            // keys): it has no counts to carry over.
            let policy = match &r.policy {
                Some(p) => Some(PolicyRuntime::new(p, base, None).map_err(|e| e.at(&s.name, Some(&r.name)))?),
                None => None,
            };
            routes.push(RouteRuntime { route: r.clone(), pool, policy });
        }
        Ok(ServiceRuntime {
            name: s.name.as_str().into(),
            mode: s.mode,
            listen: Mutex::new(Vec::new()),
            timeouts: s.timeouts.clone(),
            retries: s.retries,
            pool: s.pool.map(|p| pools[p.0].clone()),
            route_models: s.routes.clone(),
            routes,
            policy: PolicyRuntime::new(&s.policy, base, old.map(|o| &o.policy))
                .map_err(|e| e.at(&s.name, None))?,
            persistence: {
                let fresh = PersistRuntime::new(&s.persistence);
                match old {
                    Some(o) if o.persistence_model == s.persistence && o.same_pools(s, pools) => {
                        fresh.inherit(&o.persistence)
                    }
                    _ => fresh,
                }
            },
            persistence_model: s.persistence.clone(),
            accept_proxy_protocol: s.accept_proxy_protocol,
            trusted_proxies: s.trusted_proxies.clone(),
            limits: s.limits.clone(),
            // The limits themselves are put in force when the generation commits (`Generation::start`).
            connections: match old {
                Some(o) => o.connections.clone(),
                None => crate::limit::ConnectionLimit::new(s.limits.clone()),
            },
            // Counters go on from the previous generation: `/metrics` counters never go back.
            stats: old.map_or_else(Default::default, |o| o.stats.clone()),
        })
    }

    /// Whether `s` (the new config of this service) uses exactly the pool
    /// runtimes this one does: the same `Arc`s, default pool and routes alike.
    fn same_pools(&self, s: &Service, pools: &[Arc<PoolRuntime>]) -> bool {
        let same = |old: Option<&Arc<PoolRuntime>>, new: Option<&Arc<PoolRuntime>>| match (old, new) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let route_pools = s.routes.iter().map(|r| match r.action {
            RouteAction::Pool(p) => Some(&pools[p.0]),
            _ => None,
        });
        same(self.pool.as_ref(), s.pool.map(|p| &pools[p.0]))
            && self.routes.len() == s.routes.len()
            && self.routes.iter().zip(route_pools).all(|(o, n)| same(o.pool.as_ref(), n))
    }

    /// The first route an http request matches.
    pub fn classify(&self, request: &fulcrum_core::route::RequestView<'_>) -> Option<&RouteRuntime> {
        let r = fulcrum_core::route::classify(&self.route_models, request)?;
        self.runtime_of(r)
    }

    /// The first route a TLS server name matches (tcp mode).
    pub fn classify_sni(&self, server_name: Option<&str>) -> Option<&RouteRuntime> {
        let r = fulcrum_core::route::classify_sni(&self.route_models, server_name)?;
        self.runtime_of(r)
    }

    fn runtime_of(&self, r: &Route) -> Option<&RouteRuntime> {
        let i = self.route_models.iter().position(|m| std::ptr::eq(m, r))?;
        self.routes.get(i)
    }

    /// Whether `peer` may send a PROXY protocol header to this service.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// Whether a connection from `peer` must start with a PROXY header.
    pub fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        self.accept_proxy_protocol && self.trusts(peer)
    }
}

#[derive(Debug)]
struct FileError {
    key: &'static str,
    path: String,
    why: String,
}

impl FileError {
    fn at(self, service: &str, route: Option<&str>) -> LoadError {
        LoadError {
            service: service.to_owned(),
            route: route.map(|r| format!(" route {r:?} policy")).unwrap_or_else(|| " policy".into()),
            key: self.key,
            path: self.path,
            why: self.why,
        }
    }
}

/// A policy and the live state it needs.
pub struct PolicyRuntime {
    pub policy: Policy,
    credentials: Arc<Credentials>,
    /// Verified `Authorization` values: bcrypt is too slow to run per request.
    cache: Mutex<AuthCache>,
    rate: Option<Arc<Mutex<RateLimiter>>>,
    /// Sessions open now, against `max_sessions`.
    sessions: Arc<AtomicU32>,
}

/// Most client addresses the rate limiter tracks at once.
const RATE_CLIENTS: usize = 100_000;

impl PolicyRuntime {
    /// The runtime of `policy`. With `old` (the same policy's runtime before a
    /// reload) it keeps counting the sessions open now, and keeps each
    /// client's rate if `rate_per_client` did not change: a reload neither
    /// lifts `max_sessions` nor hands every client a fresh allowance.
    fn new(policy: &Policy, base: &Path, old: Option<&PolicyRuntime>) -> Result<PolicyRuntime, FileError> {
        let read = |key: &'static str, file: &Path| {
            let path = base.join(file);
            std::fs::read_to_string(&path).map_err(|e| FileError {
                key,
                path: path.display().to_string(),
                why: format!("cannot read: {e}"),
            })
        };
        let credentials = match &policy.auth {
            Auth::None => Credentials::None,
            Auth::Basic { htpasswd, .. } => {
                let text = read("htpasswd", htpasswd)?;
                Credentials::Basic(policy::parse_htpasswd(&text).map_err(|why| FileError {
                    key: "htpasswd",
                    path: base.join(htpasswd).display().to_string(),
                    why,
                })?)
            }
            Auth::Bearer { tokens_file, .. } => {
                let text = read("tokens_file", tokens_file)?;
                Credentials::Bearer(policy::parse_tokens(&text).map_err(|why| FileError {
                    key: "tokens_file",
                    path: base.join(tokens_file).display().to_string(),
                    why,
                })?)
            }
        };
        Ok(PolicyRuntime {
            policy: policy.clone(),
            credentials: Arc::new(credentials),
            cache: Mutex::new(AuthCache::default()),
            rate: match old {
                Some(o) if o.policy.rate_per_client == policy.rate_per_client => o.rate.clone(),
                _ => policy.rate_per_client.map(|r| Arc::new(Mutex::new(RateLimiter::new(r, RATE_CLIENTS)))),
            },
            sessions: old.map_or_else(|| Arc::new(AtomicU32::new(0)), |o| o.sessions.clone()),
        })
    }

    /// Source eligibility (allow/deny).
    pub fn check_source(&self, client: IpAddr) -> Result<(), Refusal> {
        policy::check_source(&self.policy, client.to_canonical())
    }

    /// Authorization, for http requests. A value verified lately is taken
    /// from the cache; a new one is verified on a blocking thread, because
    /// bcrypt costs tens of milliseconds and would stall every session on
    /// the worker (and serialise all verifications behind the cache lock).
    pub async fn check_auth(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        if self.policy.auth == Auth::None {
            return Ok(());
        }
        let now = crate::clock::now();
        if let Some(value) = authorization {
            if self.cache.lock().unwrap_or_else(|p| p.into_inner()).contains(value, now) {
                return Ok(());
            }
        }
        let (auth, credentials) = (self.policy.auth.clone(), self.credentials.clone());
        let value = authorization.map(<[u8]>::to_vec);
        let verified = tokio::task::spawn_blocking(move || {
            let mut scratch = AuthCache::new(1, AuthCache::DEFAULT_TTL);
            policy::check_auth(&auth, &credentials, value.as_deref(), &mut scratch, now)
        })
        .await;
        let result = match verified {
            Ok(result) => result,
            // The verifying thread panicked: refuse, as for a wrong password.
            Err(_) => policy::check_auth(
                &self.policy.auth,
                &Credentials::None,
                None,
                &mut AuthCache::default(),
                now,
            ),
        };
        if let (Ok(()), Some(value)) = (&result, authorization) {
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(value, now);
        }
        result
    }

    /// Admits a new session: under the rate per client and `max_sessions`.
    /// The guard counts the session until it drops.
    pub fn admit(&self, client: IpAddr) -> Result<SessionSlot, Refusal> {
        let open = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = SessionSlot(self.sessions.clone());
        if self.policy.max_sessions.is_some_and(|max| open > max) {
            // `slot` drops: the count goes back; no rate token was spent.
            return Err(Refusal::TooMany { retry_after_secs: 1 });
        }
        if let Some(rate) = &self.rate {
            rate.lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(client.to_canonical(), crate::clock::now())?;
        }
        Ok(slot)
    }
}

/// One admitted session, counted against `max_sessions` until dropped.
pub struct SessionSlot(Arc<AtomicU32>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service's persistence and its tables. Keys carry the pool's index,
/// since routes may send one client to several pools.
/// The cookie map table of learn mode: (pool, application cookie) → backend.
pub type CookieMap = StickyTable<(usize, String)>;

/// Tables are shared (`Arc`) so a reload that changes neither the
/// persistence nor the pools of a service hands them on intact.
pub enum PersistRuntime {
    None,
    Cookie { config: fulcrum_core::model::CookiePersistence, learned: Option<Arc<Mutex<CookieMap>>> },
    SourceIp { mask_v4: u8, mask_v6: u8, table: Arc<Mutex<StickyTable<(usize, IpAddr)>>> },
    Header { name: String },
}

impl PersistRuntime {
    fn new(p: &Persistence) -> PersistRuntime {
        match p {
            Persistence::None => PersistRuntime::None,
            Persistence::Cookie(c) => PersistRuntime::Cookie {
                config: c.clone(),
                learned: c.learn.then(|| Arc::new(Mutex::new(StickyTable::new(c.ttl, c.max_entries)))),
            },
            Persistence::SourceIp { mask_v4, mask_v6, ttl, max_entries } => PersistRuntime::SourceIp {
                mask_v4: *mask_v4,
                mask_v6: *mask_v6,
                table: Arc::new(Mutex::new(StickyTable::new(*ttl, *max_entries))),
            },
            Persistence::Header { name } => PersistRuntime::Header { name: name.clone() },
        }
    }

    /// The same kind with the tables of `old` (which must come from an
    /// identical persistence config).
    fn inherit(&self, old: &PersistRuntime) -> PersistRuntime {
        match (self, old) {
            (PersistRuntime::Cookie { config, .. }, PersistRuntime::Cookie { learned, .. }) => {
                PersistRuntime::Cookie { config: config.clone(), learned: learned.clone() }
            }
            (PersistRuntime::SourceIp { mask_v4, mask_v6, .. }, PersistRuntime::SourceIp { table, .. }) => {
                PersistRuntime::SourceIp { mask_v4: *mask_v4, mask_v6: *mask_v6, table: table.clone() }
            }
            (PersistRuntime::Header { name }, _) => PersistRuntime::Header { name: name.clone() },
            _ => PersistRuntime::None,
        }
    }

    /// Drops expired entries; call now and then (`now` since `epoch`).
    pub fn expire(&self, now: Duration) {
        match self {
            PersistRuntime::Cookie { learned: Some(t), .. } => {
                t.lock().unwrap_or_else(|p| p.into_inner()).expire(now);
            }
            PersistRuntime::SourceIp { table, .. } => {
                table.lock().unwrap_or_else(|p| p.into_inner()).expire(now);
            }
            _ => {}
        }
    }
}

/// What persistence says of a new request or session on a pool.
#[derive(Clone, Debug, Default)]
pub struct Sticky {
    /// Learn mode: the application cookie the client sent, known to the table
    /// or not; if the request lands elsewhere the table follows it there.
    pub learned_value: Option<String>,
    /// The backend the client stuck to, if any.
    pub prefer: Option<BackendId>,
    /// Hash key for a consistent-hash pick (header persistence).
    pub ring_key: Option<u64>,
    /// Insert mode: the client's cookie named this backend already.
    pub cookie_backend: Option<BackendId>,
    /// Insert mode: the cookie as the client sent it (other pools' parts are kept).
    pub cookie_value: Option<String>,
}

impl Sticky {
    pub fn lookup(
        persistence: &PersistRuntime,
        pool: &PoolRuntime,
        client: IpAddr,
        headers: &[fulcrum_core::http::Header],
        now: Duration,
    ) -> Sticky {
        match persistence {
            PersistRuntime::None => Sticky::default(),
            PersistRuntime::Cookie { config, learned: None } => {
                // One cookie serves every pool of the service: `id.id.…`, one
                // part per pool; this pool reads only the part that is its own.
                let value = persist::find_cookie(headers, &config.name);
                let backend = value
                    .and_then(|v| v.split('.').find_map(|id| persist::backend_by_cookie(&pool.model, id)));
                Sticky {
                    prefer: backend,
                    cookie_backend: backend,
                    cookie_value: value.map(str::to_owned),
                    ..Sticky::default()
                }
            }
            PersistRuntime::Cookie { config, learned: Some(table) } => {
                let value = persist::find_cookie(headers, &config.name).map(str::to_owned);
                let prefer = value.as_ref().and_then(|v| {
                    table.lock().unwrap_or_else(|p| p.into_inner()).get(&(pool.index, v.clone()), now)
                });
                Sticky { prefer, learned_value: value, ..Sticky::default() }
            }
            PersistRuntime::SourceIp { mask_v4, mask_v6, table } => {
                let key = (pool.index, persist::source_key(client, *mask_v4, *mask_v6));
                let prefer = table.lock().unwrap_or_else(|p| p.into_inner()).get(&key, now);
                Sticky { prefer, ..Sticky::default() }
            }
            PersistRuntime::Header { name } => {
                let value = headers.iter().find(|h| h.is(name)).map(|h| h.value.as_slice());
                Sticky { ring_key: value.map(persist::header_key), ..Sticky::default() }
            }
        }
    }
}

/// Records where a client went, for the tables that learn it from the pick.
pub fn remember_source(
    persistence: &PersistRuntime,
    pool: &PoolRuntime,
    client: IpAddr,
    backend: BackendId,
    now: Duration,
) {
    if let PersistRuntime::SourceIp { mask_v4, mask_v6, table } = persistence {
        let key = (pool.index, persist::source_key(client, *mask_v4, *mask_v6));
        table.lock().unwrap_or_else(|p| p.into_inner()).insert(key, backend, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate: Option<u32>, max_sessions: Option<u32>) -> Policy {
        Policy { rate_per_client: rate, max_sessions, ..Policy::default() }
    }

    #[test]
    fn a_reloaded_policy_keeps_each_clients_rate_unless_the_rate_changed() {
        // No max_sessions here: a refusal can only be the rate's. One new
        // session a second; the second admission follows at once.
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let old = PolicyRuntime::new(&policy(Some(1), None), Path::new("."), None).unwrap();
        let _first = old.admit(client).expect("first session");
        let same = PolicyRuntime::new(&policy(Some(1), None), Path::new("."), Some(&old)).unwrap();
        assert!(matches!(same.admit(client), Err(Refusal::TooMany { .. })), "the rate was reset");
        let changed = PolicyRuntime::new(&policy(Some(5), None), Path::new("."), Some(&same)).unwrap();
        assert!(changed.admit(client).is_ok(), "a changed rate starts afresh");
    }

    #[test]
    fn a_reloaded_policy_counts_the_sessions_open_before() {
        // No rate here: a refusal can only be max_sessions'.
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let old = PolicyRuntime::new(&policy(None, Some(1)), Path::new("."), None).unwrap();
        let session = old.admit(client).expect("first session");
        let raised = PolicyRuntime::new(&policy(None, Some(2)), Path::new("."), Some(&old)).unwrap();
        let second = raised.admit(client).expect("two allowed now");
        assert!(raised.admit(client).is_err(), "the one opened before the reload counts");
        drop((session, second));
        assert!(raised.admit(client).is_ok(), "closed sessions free their places");
    }
}
