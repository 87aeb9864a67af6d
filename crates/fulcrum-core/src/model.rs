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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// Process-wide settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Runtime {
    /// How long in-flight sessions may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub mode: Mode,
    pub pool: PoolId,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// How many further backends to try after a failed connect.
    pub retries: u32,
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
