//! The validated model: what a checked configuration means, with addresses
//! parsed, names resolved to ids and defaults filled in. The daemon runs on
//! this, never on the raw TOML structs of `config`.

use std::net::SocketAddr;
use std::time::Duration;

/// Index of a backend inside its pool (`Pool::backends[id.0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

/// Index of a pool inside `Model::pools`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub usize);

/// How a service forwards: raw bytes or HTTP/1.x requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Tcp,
    Http,
}

/// The balancing algorithm of a pool (one file each under `select/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastLoad,
    RandomTwoChoices,
    SourceHash,
    Maglev,
}

/// What the operator asked a backend to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Takes new sessions.
    Enabled,
    /// Takes no new sessions; existing ones and sticky clients finish.
    Drain,
    /// Takes nothing new.
    Disabled,
}

/// What a service does with a connection over its `max_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Hold the accepted connection until a slot frees or `queue_timeout` passes.
    Queue,
    /// Refuse at once: 503 in http mode, a close in tcp mode.
    Refuse,
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub admin: Option<Admin>,
    pub runtime: Runtime,
    pub services: Vec<Service>,
    pub pools: Vec<Pool>,
    /// SNAT pools (`[[snat_pool]]`), by index (`Pool.snat`).
    pub snat_pools: Vec<SnatPool>,
}

/// A SNAT pool: the source addresses Fulcrum uses toward backends.
#[derive(Clone, Debug, PartialEq)]
pub struct SnatPool {
    pub name: String,
    pub first_ip: std::net::Ipv4Addr,
    pub last_ip: std::net::Ipv4Addr,
    /// Every address of the range lies in one network of this mask.
    pub netmask: std::net::Ipv4Addr,
    /// Inclusive port range on each address.
    pub ports: (u16, u16),
    /// Ports per connection block.
    pub block_size: u16,
    /// Blocks held from the start.
    pub initial_blocks: u32,
    /// Most blocks held at once.
    pub max_blocks: u32,
    /// How long a new session waits for a free address:port when the pool is
    /// exhausted, before it is refused (503 in http mode).
    pub wait: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Mutating API calls need `Authorization: Bearer` with a token of this file.
    pub token_file: Option<std::path::PathBuf>,
}

/// Process-wide settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Runtime {
    /// How long in-flight sessions may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    /// One structured log line per request (http) or session (tcp); off by default.
    pub access_log: bool,
    /// Connection limits for the whole process (`[runtime.limits]`), checked
    /// before each service's own.
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub mode: Mode,
    /// The default pool: where a request no route matches goes (404 without one;
    /// a tcp service needs one unless it routes by SNI).
    pub pool: Option<PoolId>,
    /// First match wins (`[[service.route]]`).
    pub routes: Vec<Route>,
    pub persistence: Persistence,
    /// Eligibility and limits for the whole service (`[service.policy]`).
    pub policy: Policy,
    /// Read a PROXY protocol header (v1 or v2) first on each connection from a
    /// trusted proxy, and take the client address from it.
    pub accept_proxy_protocol: bool,
    /// Peers whose PROXY headers are believed; others are refused.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// How many further backends to try after a failed connect.
    pub retries: u32,
}

/// A regular expression, compared by its text (for `Model: PartialEq`).
#[derive(Clone, Debug)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// An L7 rule: what a request must match, and what then happens to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// `name` in config, else `route N` (1-based), for logs and errors.
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Extra policy for requests this route takes, checked after the service's.
    pub policy: Option<Policy>,
}

/// Every condition given must hold; none given matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteMatch {
    /// `example.com` exactly, or `*.example.com` for any subdomain (not the
    /// apex); compared case-insensitively, without the port.
    pub host: Option<String>,
    /// The path exactly (without the query).
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<Pattern>,
    /// The method exactly (`GET`).
    pub method: Option<String>,
    /// Each named header must be present with a matching value.
    pub headers: Vec<HeaderMatch>,
    /// tcp mode: the TLS server name, exact or `*.example.com`.
    pub sni: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueMatch {
    Exact(String),
    Regex(Pattern),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    Pool(PoolId),
    /// Answer with a redirect: `status` is 301, 302, 303, 307 or 308.
    Redirect {
        status: u16,
        location: String,
    },
    /// Answer by itself, e.g. a 403 for a blocked path.
    Respond {
        status: u16,
        body: String,
    },
}

/// Keeping a client on the same backend.
#[derive(Clone, Debug, PartialEq)]
pub enum Persistence {
    None,
    Cookie(CookiePersistence),
    /// An affinity table: client address (masked) → backend.
    SourceIp {
        mask_v4: u8,
        mask_v6: u8,
        ttl: Duration,
        max_entries: usize,
    },
    /// Consistent hashing (maglev) of a header's value; no table.
    Header {
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CookiePersistence {
    /// Insert mode: the cookie Fulcrum sets. Learn mode: the application's
    /// cookie (e.g. `JSESSIONID`) learned from the backend's `Set-Cookie`.
    pub name: String,
    pub learn: bool,
    /// Insert mode: the cookie's Path (default `/`).
    pub path: String,
    /// How long a cookie (insert) or a table entry (learn) lives.
    pub ttl: Duration,
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`.
    pub same_site: Option<String>,
    /// Learn mode: most entries in the cookie map table (LRU beyond).
    pub max_entries: usize,
}

/// Who may use a service or route, and how much.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// If not empty, only these sources are eligible.
    pub allow: Vec<ipnet::IpNet>,
    /// These sources are refused (403), even if allowed.
    pub deny: Vec<ipnet::IpNet>,
    pub auth: Auth,
    /// Most concurrent sessions (client connections) of the service.
    pub max_sessions: Option<u32>,
    /// Most new sessions per second from one client address (429 beyond).
    pub rate_per_client: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub enum Auth {
    #[default]
    None,
    /// HTTP Basic against an htpasswd-style file of bcrypt hashes, read by
    /// the daemon at load (the core does no I/O).
    Basic { realm: String, htpasswd: std::path::PathBuf },
    /// `Authorization: Bearer` against a file of tokens, one a line.
    Bearer { realm: String, tokens_file: std::path::PathBuf },
}

/// Every timeout of a service; each bounds one wait, never a whole session.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeouts {
    /// Connecting to a backend (then the next backend is tried).
    pub connect: Duration,
    /// A client connection with nothing to do (between requests, or no bytes in tcp mode).
    pub client_idle: Duration,
    /// A pooled idle backend connection is closed after this long.
    pub backend_idle: Duration,
    /// From the first byte of a request to the end of its headers (then 408).
    pub request_headers: Duration,
    /// From the request sent to the backend's response headers (then 504);
    /// also the longest silence inside a body transfer.
    pub backend_response: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most concurrent client connections of the service; `None` is unlimited.
    pub max_connections: Option<u32>,
    pub on_limit: OnLimit,
    /// How long a queued connection waits for a slot before it is refused.
    pub queue_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub backends: Vec<Backend>,
    /// Most idle keep-alive connections kept per backend for reuse.
    pub max_idle_per_backend: usize,
    /// The active check (`[pool.health]`).
    pub health: HealthCheck,
    /// Passive checks: outlier ejection on real sessions' failures (`[pool.passive]`).
    pub passive: PassiveCheck,
    /// A backend coming up ramps its effective weight over this long; `None` is off.
    pub slow_start: Option<Duration>,
    /// Send a PROXY protocol header first on each backend connection.
    pub proxy_protocol: Option<ProxyVersion>,
    /// The SNAT pool backend connections take their source address from.
    pub snat: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyVersion {
    V1,
    V2,
}

/// How a pool probes its backends.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Time between probes of one backend.
    pub interval: Duration,
    /// Each interval is lengthened by a random share of up to this, so probes spread out.
    pub jitter: Duration,
    /// A probe not answered within this fails.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    /// No active check: backends are up unless ejected by passive checks.
    None,
    /// A TCP connect.
    Tcp,
    Http(HttpCheck),
    /// The backend's load agent (its `agent` address) answers for it.
    Agent,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// Statuses that pass, inclusive (default 200..=399).
    pub expect_status: (u16, u16),
    /// If set, the response body must contain this.
    pub body_contains: Option<String>,
    /// The Host header sent; default the backend's address.
    pub host: Option<String>,
}

/// Outlier detection on real traffic (connect failures and 5xx responses).
#[derive(Clone, Debug, PartialEq)]
pub struct PassiveCheck {
    /// Consecutive failures that eject a backend; 0 turns passive checks off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat offence doubles it.
    pub ejection: Duration,
    /// The longest an ejection grows to.
    pub max_ejection: Duration,
    /// Never eject more than this share of a pool's backends at once.
    pub max_ejected_percent: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub id: BackendId,
    pub name: String,
    pub address: SocketAddr,
    /// 1..=256; a backend that should take nothing is drained, not weighted 0.
    pub weight: u32,
    /// The target state at start (`state` in config, default enabled).
    pub state: TargetState,
    /// Most concurrent sessions; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// The address of the load agent on this backend's host, if any.
    pub agent: Option<SocketAddr>,
}

impl Backend {
    /// A backend with the defaults of an unconfigured key: enabled, no
    /// connection limit, no agent. For tests and built-in configurations.
    pub fn new(id: usize, name: &str, address: SocketAddr, weight: u32) -> Backend {
        Backend {
            id: BackendId(id),
            name: name.to_owned(),
            address,
            weight,
            state: TargetState::Enabled,
            max_connections: None,
            agent: None,
        }
    }
}
