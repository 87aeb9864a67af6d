//! The schema: which keys each table has, their types, ranges and defaults.
//!
//! One entity is read at a time here; what takes two entities (names that
//! must be unique, pools that services name, addresses that must not
//! collide) is checked in `validate`. A reader records every problem in the
//! `Report` and carries on with the default in place of a bad value: the
//! model is built only from a file with no error, so those stand-ins are
//! never seen, and every later key still gets checked. A service's routes,
//! persistence and policy have their own files: `routes`, `persistence`,
//! `policy`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml_edit::{Item, TableLike};

use super::read::{Located, Report, Section};
use super::routes::RouteRead;
use super::{checks, persistence, policy, routes};
use crate::model::{
    Admin, Algorithm, HealthCheck, Limits, Mode, OnLimit, PassiveCheck, Persistence, Policy, ProxyVersion,
    Runtime, TargetState, Timeouts,
};

pub(super) const TOP_KEYS: &[&str] = &["admin", "runtime", "service", "pool", "snat_pool"];
const ADMIN_KEYS: &[&str] = &["listen", "token_file"];
const RUNTIME_KEYS: &[&str] = &["shutdown_grace", "access_log", "limits"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "listen",
    "mode",
    "pool",
    "retries",
    "timeouts",
    "limits",
    "route",
    "persistence",
    "policy",
    "accept_proxy_protocol",
    "trusted_proxies",
];
const TIMEOUT_KEYS: &[&str] =
    &["connect", "client_idle", "backend_idle", "request_headers", "backend_response"];
const LIMIT_KEYS: &[&str] = &["max_connections", "on_limit", "queue_timeout"];
const POOL_KEYS: &[&str] = &[
    "name",
    "algorithm",
    "max_idle_per_backend",
    "slow_start",
    "proxy_protocol",
    "health",
    "passive",
    "backend",
    "snat",
];
const BACKEND_KEYS: &[&str] = &["name", "address", "weight", "state", "max_connections", "agent"];

/// The words of `Mode`, `Algorithm`, `OnLimit`, `TargetState` and
/// `ProxyVersion` as their serde derives spell them.
pub(super) const MODES: &[&str] = &["http", "tcp"];
pub(super) const ALGORITHMS: &[&str] = &[
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "least_load",
    "random_two_choices",
    "source_hash",
    "maglev",
];
pub(super) const ON_LIMITS: &[&str] = &["queue", "refuse"];
pub(super) const TARGET_STATES: &[&str] = &["enabled", "drain", "disabled"];
pub(super) const PROXY_VERSIONS: &[&str] = &["v1", "v2"];

/// Past ten, retries only multiply how long a client waits on a dead pool.
const MAX_RETRIES: i64 = 10;
/// Small weights keep a weighted round robin cycle short.
const MAX_WEIGHT: i64 = 256;

const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const RETRIES: u32 = 2;
const MAX_IDLE_PER_BACKEND: usize = 64;
const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(3),
    client_idle: Duration::from_secs(60),
    backend_idle: Duration::from_secs(60),
    request_headers: Duration::from_secs(10),
    backend_response: Duration::from_secs(30),
};
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// `[admin]`; `None` when absent or wrong.
pub(super) fn admin(r: &mut Report, root: &Section) -> Option<Located<Admin>> {
    let s = r.named_section(root, "admin", ADMIN_KEYS)?;
    r.require(&s, &["listen"]);
    let token_file = token_file(r, &s);
    let listen = r.string(&s, "listen")?;
    let address = socket_addr(r, &s, "listen", listen, None)?;
    Some(Located { value: Admin { listen: address, token_file }, line: listen.line })
}

/// `admin.token_file`, kept as written: the daemon reads it, resolving a
/// relative path against the configuration file's directory.
fn token_file(r: &mut Report, s: &Section) -> Option<PathBuf> {
    let found = r.string(s, "token_file")?;
    if found.value.trim().is_empty() {
        let message = "token_file is empty; give the path of a file of bearer tokens, one a line, or leave it out so the API needs no token";
        r.error(found.line, &s.path, message);
        return None;
    }
    Some(PathBuf::from(found.value))
}

/// `[runtime]`, with its defaults when absent.
pub(super) fn runtime(r: &mut Report, root: &Section) -> Runtime {
    match r.named_section(root, "runtime", RUNTIME_KEYS) {
        Some(s) => Runtime {
            shutdown_grace: r.duration(&s, "shutdown_grace", SHUTDOWN_GRACE),
            access_log: r.boolean(&s, "access_log").is_some_and(|a| a.value),
            limits: limits(r, &s),
        },
        None => Runtime { shutdown_grace: SHUTDOWN_GRACE, access_log: false, limits: NO_LIMITS },
    }
}

const NO_LIMITS: Limits =
    Limits { max_connections: None, on_limit: OnLimit::Queue, queue_timeout: QUEUE_TIMEOUT };

/// `[….limits]` of a service, or `[runtime.limits]` for the whole process.
fn limits(r: &mut Report, parent: &Section) -> Limits {
    match r.subsection(parent, "limits", LIMIT_KEYS) {
        Some(l) => Limits {
            max_connections: max_connections(r, &l),
            on_limit: r.choice(&l, "on_limit", ON_LIMITS).unwrap_or(OnLimit::Queue),
            queue_timeout: r.duration(&l, "queue_timeout", QUEUE_TIMEOUT),
        },
        None => NO_LIMITS,
    }
}

/// One `[[service]]` as far as it can be read alone: its pools (its own
/// and its routes') are still names.
pub(super) struct ServiceRead<'d> {
    /// `service "web"`, or `service 2` when it has no name.
    pub path: String,
    pub name: Option<Located<&'d str>>,
    /// The listen addresses that parsed, for the collision check.
    pub listen: Vec<Located<SocketAddr>>,
    /// The default pool; optional in http mode, and in tcp mode with sni routes.
    pub pool: Option<Located<&'d str>>,
    pub mode: Option<Mode>,
    pub routes: Vec<RouteRead<'d>>,
    pub persistence: Persistence,
    pub policy: Policy,
    pub accept_proxy_protocol: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub retries: u32,
}

/// `[[service]]` number `index` (0-based; messages count from 1).
pub(super) fn service<'d>(
    r: &mut Report,
    table: Located<&'d dyn TableLike>,
    index: usize,
) -> ServiceRead<'d> {
    let path = label("service", table.value, index);
    let s = r.section(path, "", table.value, table.line, SERVICE_KEYS);
    r.require(&s, &["name", "listen", "mode"]);
    let name = name(r, &s);

    let mut listen = Vec::new();
    if let Some(list) = r.strings(&s, "listen") {
        if list.value.is_empty() {
            let message = r#"listen is empty; give at least one "IP:port", like ["127.0.0.1:8080"]"#;
            r.error(list.line, &s.path, message);
        }
        for entry in list.value {
            if let Some(address) = socket_addr(r, &s, "listen", entry, None) {
                listen.push(Located { value: address, line: entry.line });
            }
        }
    }
    let pool = r.string(&s, "pool");
    let mode = r.choice(&s, "mode", MODES);
    let retries = bounded(r, &s, "retries", 0, MAX_RETRIES).unwrap_or(RETRIES);

    let timeouts = match r.subsection(&s, "timeouts", TIMEOUT_KEYS) {
        Some(t) => Timeouts {
            connect: r.duration(&t, "connect", DEFAULT_TIMEOUTS.connect),
            client_idle: r.duration(&t, "client_idle", DEFAULT_TIMEOUTS.client_idle),
            backend_idle: r.duration(&t, "backend_idle", DEFAULT_TIMEOUTS.backend_idle),
            request_headers: r.duration(&t, "request_headers", DEFAULT_TIMEOUTS.request_headers),
            backend_response: r.duration(&t, "backend_response", DEFAULT_TIMEOUTS.backend_response),
        },
        None => DEFAULT_TIMEOUTS,
    };
    let limits = limits(r, &s);
    let routes = routes::routes(r, &s, mode);
    default_pool(r, &s, mode, &routes);
    let persistence = persistence::persistence(r, &s, mode);
    let policy = policy::service_policy(r, &s, mode);
    let (accept_proxy_protocol, trusted_proxies) = proxy_protocol(r, &s);
    ServiceRead {
        path: s.path,
        name,
        listen,
        pool,
        mode,
        routes,
        persistence,
        policy,
        accept_proxy_protocol,
        trusted_proxies,
        timeouts,
        limits,
        retries,
    }
}

/// A service without `pool`: an error in tcp mode unless it routes by sni
/// (a connection needs somewhere to go before any byte is read), and a
/// warning in http mode without routes, where every request would get 404.
fn default_pool(r: &mut Report, s: &Section, mode: Option<Mode>, routes: &[RouteRead]) {
    if s.has("pool") {
        return;
    }
    match mode {
        Some(Mode::Tcp) if !routes.iter().any(|route| route.sni_given) => {
            let message = r#"missing required key "pool": a tcp service sends every connection to its pool, unless it routes by TLS server name ([[service.route]] tables with sni = "…")"#;
            r.error(s.line, &s.path, message);
        }
        Some(Mode::Http) if routes.is_empty() && !s.has("route") => {
            let message = r#"has no pool and no routes, so it answers every request with 404; add pool = "NAME" or [[service.route]] tables"#;
            r.warn_on(s.line, &s.path, message);
        }
        _ => {}
    }
}

/// `accept_proxy_protocol` and the `trusted_proxies` it needs: believing a
/// PROXY header from anyone would let any client claim any address.
fn proxy_protocol(r: &mut Report, s: &Section) -> (bool, Vec<ipnet::IpNet>) {
    let accept = r.boolean(s, "accept_proxy_protocol");
    let actual = match accept {
        Some(a) if a.value => None,
        Some(_) => Some("accept_proxy_protocol is false"),
        // Not a boolean (reported): whether it meant true is a guess.
        None if s.has("accept_proxy_protocol") => return (false, Vec::new()),
        None => Some("accept_proxy_protocol is not set (so false)"),
    };
    if let Some(actual) = actual {
        if let Some(found) = r.get(s, "trusted_proxies") {
            let message = format!(
                "trusted_proxies is only for accept_proxy_protocol = true, but {actual}; \
                 set it to read a PROXY protocol header from the load balancers listed"
            );
            r.error(found.line, &s.path, message);
        }
        return (false, Vec::new());
    }
    if !s.has("trusted_proxies") {
        let message = r#"accept_proxy_protocol is true, but trusted_proxies is not set; list the load balancers whose PROXY headers to believe, like trusted_proxies = ["10.0.0.5"]"#;
        r.error(accept.and_then(|a| a.line), &s.path, message);
    }
    let empty = r#"trusted_proxies is empty, so no PROXY header would be believed; list the load balancers in front of this service, like ["10.0.0.5", "10.1.0.0/24"]"#;
    let trusted = policy::nets(r, s, "trusted_proxies", Some(empty));
    (true, trusted.unwrap_or_default())
}

fn max_connections(r: &mut Report, l: &Section) -> Option<u32> {
    limit(r, l, "max_connections")
}

/// A limit that is off when left out: an integer from 1, where 0 is an
/// error rather than "none" so that none is written one way.
pub(super) fn limit(r: &mut Report, s: &Section, key: &str) -> Option<u32> {
    let n = r.integer(s, key)?;
    if n.value < 1 {
        let message = format!("{} {} is below 1; leave it out for no limit", s.key(key), n.value);
        r.error(n.line, &s.path, message);
        return None;
    }
    bounded(r, s, key, 1, i64::from(u32::MAX))
}

/// One `[[pool]]` with its backends, as far as it can be read alone.
pub(super) struct PoolRead<'d> {
    /// `pool "web"`, or `pool 2` when it has no name.
    pub path: String,
    pub line: Option<usize>,
    pub name: Option<Located<&'d str>>,
    pub algorithm: Algorithm,
    pub max_idle_per_backend: usize,
    pub slow_start: Option<Duration>,
    pub proxy_protocol: Option<ProxyVersion>,
    pub health: HealthCheck,
    pub passive: PassiveCheck,
    pub backends: Vec<BackendRead<'d>>,
    /// The `[[snat_pool]]` it names, still a name.
    pub snat: Option<Located<&'d str>>,
}

pub(super) struct BackendRead<'d> {
    /// `pool "web" backend "web1"`, or `pool "web" backend 2` when it has no name.
    pub path: String,
    /// The backend's table header.
    pub line: Option<usize>,
    pub name: Option<Located<&'d str>>,
    pub address: Option<SocketAddr>,
    pub weight: u32,
    pub state: TargetState,
    pub max_connections: Option<u32>,
    pub agent: Option<SocketAddr>,
    /// Whether the file gives an `agent` key, right or wrong: a wrong one was
    /// reported already, so a check that needs one says nothing more.
    pub agent_given: bool,
}

/// `[[pool]]` number `index` (0-based; messages count from 1).
pub(super) fn pool<'d>(r: &mut Report, table: Located<&'d dyn TableLike>, index: usize) -> PoolRead<'d> {
    let path = label("pool", table.value, index);
    let s = r.section(path, "", table.value, table.line, POOL_KEYS);
    r.require(&s, &["name"]);
    let name = name(r, &s);
    let algorithm = r.choice(&s, "algorithm", ALGORITHMS).unwrap_or(Algorithm::RoundRobin);
    let max_idle_per_backend =
        bounded(r, &s, "max_idle_per_backend", 0, i64::from(u32::MAX)).unwrap_or(MAX_IDLE_PER_BACKEND);
    let slow_start = slow_start(r, &s);
    let proxy_protocol = r.choice(&s, "proxy_protocol", PROXY_VERSIONS);
    let health = checks::health(r, &s);
    let passive = checks::passive(r, &s);
    let snat = r.string(&s, "snat");

    let reported = r.error_count();
    let tables = r.tables(&s, "backend", "pool.backend");
    if tables.is_empty() && r.error_count() == reported {
        r.error_on(s.line, &s.path, "has no backends; add at least one [[pool.backend]] table");
    }
    let backends = tables.into_iter().enumerate().map(|(i, t)| backend(r, &s.path, t, i)).collect();
    PoolRead {
        path: s.path,
        line: s.line,
        name,
        algorithm,
        max_idle_per_backend,
        slow_start,
        proxy_protocol,
        health,
        passive,
        backends,
        snat,
    }
}

/// `slow_start`: `None` when absent. Zero is an error rather than "off", so
/// that off is written one way: by leaving the key out.
fn slow_start(r: &mut Report, s: &Section) -> Option<Duration> {
    let found = r.any_duration(s, "slow_start")?;
    if found.value.is_zero() {
        r.error(found.line, &s.path, "slow_start is zero; leave it out for no slow start");
        return None;
    }
    Some(found.value)
}

fn backend<'d>(
    r: &mut Report,
    pool: &str,
    table: Located<&'d dyn TableLike>,
    index: usize,
) -> BackendRead<'d> {
    let path = format!("{pool} {}", label("backend", table.value, index));
    let s = r.section(path, "", table.value, table.line, BACKEND_KEYS);
    r.require(&s, &["name", "address"]);
    let name = name(r, &s);
    let address = r.string(&s, "address").and_then(|a| socket_addr(r, &s, "address", a, Some("backend")));
    let weight = match r.integer(&s, "weight") {
        Some(w) if w.value == 0 => {
            let message = format!(
                "weight 0 is not allowed (weights run 1..={MAX_WEIGHT}); \
                 to send a backend no new sessions, set state = \"drain\" instead"
            );
            r.error(w.line, &s.path, message);
            None
        }
        Some(_) => bounded(r, &s, "weight", 1, MAX_WEIGHT),
        None => None,
    };
    let state = r.choice(&s, "state", TARGET_STATES).unwrap_or(TargetState::Enabled);
    let max_connections = max_connections(r, &s);
    let agent_given = s.has("agent");
    let agent = r.string(&s, "agent").and_then(|a| socket_addr(r, &s, "agent", a, Some("agent")));
    BackendRead {
        path: s.path,
        line: s.line,
        name,
        address,
        weight: weight.unwrap_or(1),
        state,
        max_connections,
        agent,
        agent_given,
    }
}

/// `name`, which must not be empty.
pub(super) fn name<'d>(r: &mut Report, s: &Section<'d>) -> Option<Located<&'d str>> {
    let name = r.string(s, "name")?;
    if name.value.is_empty() {
        r.error(name.line, &s.path, "name is empty");
        return None;
    }
    Some(name)
}

/// The words naming a table in messages: by its name when it has a usable
/// one, else by its 1-based position.
pub(super) fn label(kind: &str, table: &dyn TableLike, index: usize) -> String {
    match table.get("name").and_then(Item::as_str).filter(|n| !n.is_empty()) {
        Some(name) => format!("{kind} {name:?}"),
        None => format!("{kind} {}", index + 1),
    }
}

/// An integer key within `lo..=hi`, converted to `T`; `None` when absent or wrong.
pub(super) fn bounded<T: TryFrom<i64>>(
    r: &mut Report,
    s: &Section,
    key: &str,
    lo: i64,
    hi: i64,
) -> Option<T> {
    let n = r.integer(s, key)?;
    if n.value < lo {
        r.error(n.line, &s.path, format!("{} {} is below the minimum of {lo}", s.key(key), n.value));
        return None;
    }
    if n.value > hi {
        r.error(n.line, &s.path, format!("{} {} is over the maximum of {hi}", s.key(key), n.value));
        return None;
    }
    T::try_from(n.value).ok()
}

/// Reads an `IP:port`, reporting what is wrong with it under `key`. Port 0
/// (the OS picks) suits a listener, never an address Fulcrum connects to:
/// `peer` names what listens there (`backend`, `agent`), `None` for a listener.
fn socket_addr(
    r: &mut Report,
    s: &Section,
    key: &str,
    text: Located<&str>,
    peer: Option<&str>,
) -> Option<SocketAddr> {
    match (parse_socket_addr(text.value), peer) {
        (Ok(address), Some(peer)) if address.port() == 0 => {
            let message = format!("{key} {:?} has port 0; give the port the {peer} listens on", text.value);
            r.error(text.line, &s.path, message);
            None
        }
        (Ok(address), _) => Some(address),
        (Err(problem), _) => {
            r.error(text.line, &s.path, format!("{key} {:?} {problem}", text.value));
            None
        }
    }
}

/// Parses `IP:port` (IPv4, or `[IPv6]:port`); on failure, says what is wrong
/// in words that follow the quoted address.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    const LIKE: &str = r#"write IP:port, like "10.0.0.1:80" or "[::1]:80""#;
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let example = SocketAddr::new(ip, 80).to_string();
        return Err(format!("has no port; write IP:port, like {example:?}"));
    }
    let (host, port) = text.rsplit_once(':').unwrap_or((text, ""));
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let is_hostname = host.contains(|c: char| c.is_ascii_alphabetic())
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if is_hostname {
        return Err(format!("names a host; hostnames are not supported yet, {LIKE}"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err(match port {
            "" => format!("has no port; {LIKE}"),
            _ if host.contains(':') && !text.starts_with('[') => {
                format!(r#"needs brackets around its IPv6 address, like "[{host}]:{port}""#)
            }
            _ => format!("has a bad port {port:?}; a port is a number from 0 to 65535"),
        });
    }
    Err(format!("is not an IP:port; {LIKE}"))
}
