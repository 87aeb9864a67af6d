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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub id: BackendId,
    pub name: String,
    pub address: SocketAddr,
    /// 1..=256; a backend that should take nothing is drained, not weighted 0.
    pub weight: u32,
}
