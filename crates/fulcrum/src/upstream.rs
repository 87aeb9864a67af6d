//! Connections to backends: pick by the pool's selector, connect (trying the
//! next backend after a failure) from a source address of the pool's client
//! NAT pool if it has one, and keep idle keep-alive connections for reuse.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_core::agent::{AgentReport, AgentState};
use fulcrum_core::health::{current_state, BackendHealth, Change, CurrentState, Health};
use fulcrum_core::model::{BackendId, HealthCheck, PassiveCheck, Pool, ProxyVersion, TargetState};
use fulcrum_core::select::{self, PoolView, Selector};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::snat::{SnatLease, SnatRuntime};

/// A pool as the data path sees it: the selector plus live per-backend state.
pub struct PoolRuntime {
    pub name: Arc<str>,
    /// Position in the configuration's pools: persistence keys carry it.
    pub index: usize,
    /// The configuration this runtime was built from.
    pub model: Pool,
    pub backends: Vec<BackendRuntime>,
    /// The SNAT pool backend connections take their source address
    /// from; `None` lets the kernel pick.
    pub snat: Option<Arc<SnatRuntime>>,
    selector: Box<dyn Selector>,
    /// A consistent-hash ring over the same backends, for header persistence.
    ring: Box<dyn Selector>,
    /// Most idle connections kept per backend; beyond it a finished one is closed.
    max_idle: usize,
    /// The active check the checker runs (`check.rs`).
    pub check: HealthCheck,
    passive: PassiveCheck,
    slow_start: Option<Duration>,
}

/// One backend's live state; owned by the pool so it outlives selector rebuilds.
/// The data path reads only atomics; the health machine behind them is locked
/// by the checker and by failed sessions, never by a successful pick.
pub struct BackendRuntime {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub weight: u32,
    pub max_connections: Option<u32>,
    /// The load agent on this backend's host.
    pub agent: Option<SocketAddr>,
    /// Sessions (tcp connections, http exchanges) now open on this backend.
    pub sessions: AtomicU64,
    pub stats: crate::stats::BackendStats,
    /// `health` says up (and not ejected).
    up: AtomicBool,
    /// The operator's target state (`TargetState` as u8).
    target: AtomicU8,
    /// The agent's reported state (`AgentState` as u8): drain or down stop new sessions.
    agent_state: AtomicU8,
    /// The weight to balance with now (slow start), refreshed by the checker.
    effective_weight: AtomicU32,
    /// The agent's load score as f64 bits; NaN without a report.
    load: AtomicU64,
    /// A failed session is on record, so a success must take the lock to reset it.
    failing: AtomicBool,
    /// Whether the agent answered last time (0 not yet asked, 1 yes, 2 no), to log changes once.
    agent_reachable: AtomicU8,
    health: Mutex<BackendHealth>,
    /// The agent's last report, for operators.
    report: Mutex<Option<AgentReport>>,
    /// Idle keep-alive connections, most recently used last. A short lock:
    /// a push or pop per request, never held across an await.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    /// The connection with its SNAT lease, held while it idles.
    up: Upstream,
    since: Instant,
    /// The worker whose runtime watches the connection: it is reused there.
    worker: usize,
}

/// A connection to a backend, for one session.
pub struct Upstream {
    pub backend: BackendId,
    pub stream: TcpStream,
    /// Taken from the idle pool: the backend may have closed it meanwhile,
    /// so a request that failed on it without any response may be retried.
    pub reused: bool,
    /// The SNAT address:port `stream` is bound to: released when this
    /// drops, so it goes wherever the stream goes.
    pub snat: Option<SnatLease>,
    /// Fulcrum's source address:port on this connection, read once at connect.
    pub local: Option<SocketAddr>,
}

/// Why no backend connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no backend available in pool {pool:?}")]
    NoBackend { pool: String },
    #[error("no backend of pool {pool:?} could be reached: {attempts}")]
    ConnectFailed { pool: String, attempts: String },
    #[error("snat pool {snat:?} of pool {pool:?} is exhausted: no source address:port is free")]
    SnatExhausted { pool: String, snat: String },
    #[error(
        "pool {pool:?}: cannot bind source address {source_address} of snat pool {snat:?}: {error}; \
         its addresses must be configured on this host"
    )]
    SnatBind { pool: String, snat: String, source_address: SocketAddrV4, error: std::io::Error },
}

/// Source address:ports tried per connect when the ones leased turn out to
/// be busy (bound by another process, or still in TIME_WAIT toward the
/// same backend) before the session is refused as if the pool were exhausted.
const SOURCE_TRIES: usize = 8;
/// The first pause before trying busy source address:ports again, doubling
/// up to `BUSY_PAUSE_MAX` while the snat pool's `wait` lasts.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// What a session needs to connect: its hash key and the service's bounds.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    pub key: u64,
    /// The backend persistence stuck the client to: tried first while it is
    /// up and not disabled (a draining backend keeps its sticky clients).
    pub prefer: Option<BackendId>,
    /// Pick on the pool's consistent-hash ring with this key (header persistence).
    pub ring_key: Option<u64>,
    /// The client and listener addresses to send in a PROXY header first, when
    /// the pool wants one; such connections are the client's own, never pooled.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
    /// Further backends to try after a failed connect.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// Take an idle pooled connection when one is alive and younger than this.
    pub reuse_within: Option<Duration>,
}

impl PoolRuntime {
    /// Builds the runtime of `pool`; `index` is unique in the process (it keys
    /// persistence tables); `snat` is its SNAT pool, if any.
    pub fn new(pool: &Pool, index: usize, snat: Option<Arc<SnatRuntime>>) -> Self {
        PoolRuntime {
            name: pool.name.as_str().into(),
            index,
            model: pool.clone(),
            snat,
            ring: select::build(fulcrum_core::model::Algorithm::Maglev, &pool.backends),
            backends: pool
                .backends
                .iter()
                .map(|b| BackendRuntime {
                    name: b.name.as_str().into(),
                    address: b.address,
                    weight: b.weight,
                    max_connections: b.max_connections,
                    agent: b.agent,
                    sessions: AtomicU64::new(0),
                    stats: crate::stats::BackendStats::default(),
                    up: AtomicBool::new(true),
                    target: AtomicU8::new(b.state as u8),
                    agent_state: AtomicU8::new(AgentState::Up as u8),
                    effective_weight: AtomicU32::new(b.weight),
                    load: AtomicU64::new(f64::NAN.to_bits()),
                    failing: AtomicBool::new(false),
                    agent_reachable: AtomicU8::new(0),
                    health: Mutex::new(BackendHealth::new(&pool.health, &pool.passive)),
                    report: Mutex::new(None),
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            selector: select::build(pool.algorithm, &pool.backends),
            max_idle: pool.max_idle_per_backend,
            check: pool.health.clone(),
            passive: pool.passive.clone(),
            slow_start: pool.slow_start,
        }
    }

    /// The health clock's reading: the process-wide clock, so health state
    /// handed from one generation of a pool to the next (ejections, slow
    /// start) keeps its meaning across a reload.
    fn now(&self) -> Duration {
        crate::clock::now()
    }

    /// Whether `id` may take a new session now.
    pub fn eligible(&self, id: BackendId) -> bool {
        let b = self.backend(id);
        b.up.load(Ordering::Relaxed)
            && b.target.load(Ordering::Relaxed) == TargetState::Enabled as u8
            && b.agent_state.load(Ordering::Relaxed) == AgentState::Up as u8
            && b.max_connections.is_none_or(|m| b.sessions.load(Ordering::Relaxed) < u64::from(m))
    }

    /// Whether `id` may keep a client that stuck to it: up, not disabled (a
    /// draining one may), under its connection limit.
    pub fn sticky_eligible(&self, id: BackendId) -> bool {
        let b = self.backend(id);
        b.up.load(Ordering::Relaxed)
            && b.target.load(Ordering::Relaxed) != TargetState::Disabled as u8
            && b.agent_state.load(Ordering::Relaxed) != AgentState::Down as u8
            && b.max_connections.is_none_or(|m| b.sessions.load(Ordering::Relaxed) < u64::from(m))
    }

    /// An active check's verdict on `id` (`Err` says why it failed).
    pub fn check_result(&self, id: BackendId, result: Result<String, String>) {
        let now = self.now();
        let change = self.backend(id).lock_health().check_result(result, now);
        self.apply(id, change);
    }

    /// Time passes for `id`: ends ejections, moves slow start on.
    pub fn tick(&self, id: BackendId) {
        let now = self.now();
        let b = self.backend(id);
        let (change, weight) = {
            let mut h = b.lock_health();
            let change = h.tick(now);
            (change, h.effective_weight(b.weight, self.slow_start, now))
        };
        b.effective_weight.store(weight, Ordering::Relaxed);
        self.apply(id, change);
    }

    /// A real session on `id` went well.
    pub fn session_ok(&self, id: BackendId) {
        let b = self.backend(id);
        if b.failing.load(Ordering::Relaxed) && b.failing.swap(false, Ordering::Relaxed) {
            b.lock_health().session_ok();
        }
    }

    /// A real session on `id` failed (connect failure, reset, 5xx, timeout).
    pub fn session_failed(&self, id: BackendId, why: &str) {
        let b = self.backend(id);
        b.failing.store(true, Ordering::Relaxed);
        let down = self.backends.iter().filter(|b| !b.up.load(Ordering::Relaxed)).count();
        let cap = self.backends.len() * self.passive.max_ejected_percent as usize / 100;
        let now = self.now();
        let change = b.lock_health().session_failed(why, now, down < cap);
        self.apply(id, change);
    }

    /// Records the agent's report (`Err`: why the agent could not be read).
    pub fn agent_report(&self, id: BackendId, report: Result<AgentReport, String>) {
        let b = self.backend(id);
        let reachable = if report.is_ok() { 1 } else { 2 };
        if b.agent_reachable.swap(reachable, Ordering::Relaxed) != reachable {
            match &report {
                Ok(r) => {
                    tracing::info!(pool = %self.name, backend = %b.name, load = fulcrum_core::agent::load_score(r), "agent reachable")
                }
                Err(why) => {
                    tracing::warn!(pool = %self.name, backend = %b.name, error = %why, "agent unreachable")
                }
            }
        }
        let report = report.ok();
        // An agent that misses a poll keeps its last word on the state: a
        // drain is not undone by one lost report (health checks catch a dead host).
        let (state, load) = match &report {
            Some(r) => (Some(r.state), fulcrum_core::agent::load_score(r)),
            None => (None, f64::NAN),
        };
        if let Some(state) = state {
            let old = b.agent_state.swap(state as u8, Ordering::Relaxed);
            if old != state as u8 {
                tracing::info!(pool = %self.name, backend = %b.name, agent_state = ?state, "agent state changed");
            }
        }
        b.load.store(load.to_bits(), Ordering::Relaxed);
        *b.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }

    /// Sets what the operator wants of `id`.
    pub fn set_target(&self, id: BackendId, target: TargetState) {
        let b = self.backend(id);
        let old = b.target.swap(target as u8, Ordering::Relaxed);
        if old != target as u8 {
            tracing::info!(pool = %self.name, backend = %b.name, target = ?target, "target state changed");
        }
    }

    /// The backend's state as operators see it: health and why, current state.
    pub fn status(&self, id: BackendId) -> (Health, String, CurrentState) {
        let b = self.backend(id);
        let (health, reason) = {
            let h = b.lock_health();
            (h.health(), h.reason().to_owned())
        };
        (health, reason, current_state(b.target_state(), b.sessions.load(Ordering::Relaxed)))
    }

    /// Publishes a health change: the atomic the data path reads, one log
    /// line with the reason, and the selector's feedback hook.
    fn apply(&self, id: BackendId, change: Option<Change>) {
        let Some(change) = change else { return };
        let b = self.backend(id);
        b.up.store(change.health == Health::Up, Ordering::Relaxed);
        match change.health {
            Health::Up => {
                tracing::info!(pool = %self.name, backend = %b.name, reason = %change.reason, "backend is up");
                self.selector.backend_up(id);
            }
            Health::Down => {
                tracing::warn!(pool = %self.name, backend = %b.name, reason = %change.reason, "backend is down");
                self.selector.backend_down(id);
            }
        }
    }

    pub fn backend(&self, id: BackendId) -> &BackendRuntime {
        &self.backends[id.0]
    }

    /// Picks a backend and connects to it; after a failed connect, tries the
    /// next pick that has not failed yet, `retries` more times at most.
    pub async fn connect(&self, opts: ConnectOptions) -> Result<Upstream, UpstreamError> {
        let mut failed: Vec<BackendId> = Vec::new();
        let mut attempts = String::new();
        for attempt in 0..=opts.retries {
            let view = View { pool: self, failed: &failed };
            let sticky = opts.prefer.filter(|&b| attempt == 0 && self.sticky_eligible(b));
            let picked = match (sticky, opts.ring_key) {
                (Some(b), _) => Some(b),
                (None, Some(key)) => self.ring.pick(key, &view),
                (None, None) => self.selector.pick(opts.key, &view),
            };
            let Some(id) = picked else {
                break;
            };
            let proxy = self.model.proxy_protocol.zip(opts.proxy);
            if let Some(within) = opts.reuse_within.filter(|_| proxy.is_none()) {
                if let Some(up) = self.checkout(id, within) {
                    return Ok(up);
                }
            }
            let backend = self.backend(id);
            match self.connect_from_source(backend.address, opts.connect_timeout, proxy).await? {
                Ok((stream, snat)) => {
                    let local = match &snat {
                        Some(lease) => Some(SocketAddr::V4(lease.address())),
                        None => stream.local_addr().ok(),
                    };
                    return Ok(Upstream { backend: id, stream, reused: false, snat, local });
                }
                Err(e) => {
                    tracing::warn!(pool = %self.name, backend = %backend.name, address = %backend.address, error = %e, "connect failed");
                    backend.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                    self.session_failed(id, &format!("connect: {e}"));
                    if !attempts.is_empty() {
                        attempts.push_str("; ");
                    }
                    attempts.push_str(&format!("{} ({}): {e}", backend.name, backend.address));
                    failed.push(id);
                }
            }
        }
        if failed.is_empty() {
            Err(UpstreamError::NoBackend { pool: self.name.to_string() })
        } else {
            Err(UpstreamError::ConnectFailed { pool: self.name.to_string(), attempts })
        }
    }

    /// Marks a session open on `id` until the guard drops.
    pub fn open_session(&self, id: BackendId) -> SessionGuard<'_> {
        self.backend(id).sessions.fetch_add(1, Ordering::Relaxed);
        self.selector.session_opened(id);
        SessionGuard { pool: self, id }
    }

    /// Connects to `address`, bound to an address:port of the pool's client
    /// NAT pool when it has one (waiting up to the snat pool's `wait` for a
    /// free one). The outer error ends the session, since no backend would
    /// do better: no source address:port to be had. The inner one is a
    /// failed connect to this backend.
    async fn connect_from_source(
        &self,
        address: SocketAddr,
        timeout: Duration,
        proxy: Option<(ProxyVersion, (SocketAddr, SocketAddr))>,
    ) -> Result<std::io::Result<(TcpStream, Option<SnatLease>)>, UpstreamError> {
        let Some(snat) = &self.snat else {
            return Ok(connect(address, timeout, proxy, None)
                .await
                .map(|s| (s, None))
                .map_err(Failure::into_io));
        };
        let exhausted =
            || UpstreamError::SnatExhausted { pool: self.name.to_string(), snat: snat.name.clone() };
        let deadline = Instant::now() + snat.model.wait;
        // Busy ones stay leased while others are tried, so the allocator
        // does not hand the same address:port straight back.
        let mut busy = Vec::new();
        let mut tries = 0;
        let mut pause = BUSY_PAUSE;
        while tries < SOURCE_TRIES {
            let lease = match snat.try_lease() {
                Some(lease) => lease,
                // Idle keep-alive connections hold sources too: closing one
                // beats refusing a session, which may want another backend.
                None if self.close_oldest_idle() => continue,
                None if busy.is_empty() => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    snat.lease(wait, || self.close_oldest_idle()).await.ok_or_else(exhausted)?
                }
                None => {
                    // Only busy ones are free. One in TIME_WAIT toward this
                    // backend comes clear in time (on loopback the kernel
                    // reuses it after a second), so a session that may wait
                    // gives them back and tries again shortly.
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        break;
                    }
                    busy.clear();
                    tokio::time::sleep(pause.min(wait)).await;
                    pause = (pause * 2).min(BUSY_PAUSE_MAX);
                    continue;
                }
            };
            tries += 1;
            let source = lease.address();
            match connect(address, timeout, proxy, Some(source)).await {
                Ok(stream) => return Ok(Ok((stream, Some(lease)))),
                Err(Failure::SourceBusy(e)) => {
                    tracing::debug!(pool = %self.name, snat_pool = %snat.name, source = %source, error = %e, "source address busy; trying another");
                    busy.push(lease);
                }
                Err(Failure::Bind(error)) => {
                    let (pool, snat) = (self.name.to_string(), snat.name.clone());
                    return Err(UpstreamError::SnatBind { pool, snat, source_address: source, error });
                }
                Err(Failure::Connect(e)) => return Ok(Err(e)),
            }
        }
        snat.refused();
        Err(exhausted())
    }

    /// Returns a connection whose exchange ended cleanly to the idle pool
    /// with the SNAT address:port it is bound to (released when the
    /// connection is closed), closing pooled ones idle for `within` or longer.
    pub fn release(&self, up: Upstream, within: Duration) {
        if self.max_idle == 0 || self.model.proxy_protocol.is_some() {
            return; // pooling off, or a client's own connection: dropping it closes it
        }
        let mut idle = self.backend(up.backend).idle.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock a waiter's reclaim takes too: either it sees
        // this connection idle, or this sees it waiting.
        if up.snat.as_ref().is_some_and(|lease| lease.pool().has_waiters()) {
            return; // dropped: its source goes to a session waiting for one
        }
        // Oldest first: expired ones would otherwise sit in CLOSE_WAIT under
        // fresher ones until traffic stops.
        let expired = idle.iter().take_while(|c| c.since.elapsed() >= within).count();
        idle.drain(..expired);
        let here = crate::workers::current();
        if idle.len() >= self.max_idle {
            // Drop the oldest, the likeliest to be closed by the backend: this
            // worker's own if it has one, so that a worker's release does not
            // take another worker's last idle connection.
            let oldest = idle.iter().position(|c| c.worker == here).unwrap_or(0);
            idle.remove(oldest);
        }
        idle.push(Idle { up, since: Instant::now(), worker: here });
    }

    /// Closes the pool's oldest idle connection, giving back its SNAT
    /// address:port; false when none idles.
    fn close_oldest_idle(&self) -> bool {
        let oldest = self
            .backends
            .iter()
            .filter_map(|b| Some((b.idle.lock().unwrap_or_else(|p| p.into_inner()).first()?.since, b)))
            .min_by_key(|(since, _)| *since);
        let Some((_, backend)) = oldest else { return false };
        let mut idle = backend.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Another session may have taken it meanwhile: then there is nothing to close here.
        if idle.is_empty() {
            return false;
        }
        let closed = idle.remove(0);
        drop(idle);
        drop(closed);
        true
    }

    /// The freshest idle connection to `id` that is still open and younger
    /// than `within`, marked reused.
    fn checkout(&self, id: BackendId, within: Duration) -> Option<Upstream> {
        let mut idle = self.backend(id).idle.lock().unwrap_or_else(|p| p.into_inner());
        let here = crate::workers::current();
        // Searched from the freshest down, each search starting below the
        // last one: one pass however many turn out closed.
        let mut below = idle.len();
        while let Some(at) = idle[..below].iter().rposition(|c| c.worker == here) {
            below = at;
            let conn = idle.remove(at);
            if conn.since.elapsed() >= within {
                // Everything older than this one is older still.
                idle.drain(..at);
                return None;
            }
            // An idle connection must have nothing to read: data or EOF means
            // the backend closed it or misbehaved.
            let mut probe = [0u8; 1];
            match conn.up.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Some(Upstream { reused: true, ..conn.up });
                }
                _ => continue,
            }
        }
        None
    }
}

/// Counts one session on a backend for as long as it lives.
pub struct SessionGuard<'a> {
    pool: &'a PoolRuntime,
    id: BackendId,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let b = self.pool.backend(self.id);
        let left = b.sessions.fetch_sub(1, Ordering::Relaxed) - 1;
        self.pool.selector.session_closed(self.id);
        if left == 0 && b.target_state() == TargetState::Drain {
            tracing::info!(pool = %self.pool.name, backend = %b.name, "backend drained: no session left");
        }
    }
}

impl BackendRuntime {
    /// Takes over what a reload must not forget from the same backend (same
    /// name and address) in the previous generation of its pool: health and
    /// its history, target state, the agent's last word and load.
    pub fn inherit(&self, old: &BackendRuntime) {
        *self.lock_health() = old.lock_health().clone();
        for (new, old) in [(&self.up, &old.up), (&self.failing, &old.failing)] {
            new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (new, old) in [(&self.target, &old.target), (&self.agent_state, &old.agent_state)] {
            new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.agent_reachable.store(old.agent_reachable.load(Ordering::Relaxed), Ordering::Relaxed);
        self.stats.absorb(&old.stats);
        self.load.store(old.load.load(Ordering::Relaxed), Ordering::Relaxed);
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = old.report();
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, BackendHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether health says up (and not ejected): the atomic the data path reads.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// What is asked of the backend: the operator's target, made stricter by
    /// its agent's state (an agent saying drain or down drains it).
    pub fn target_state(&self) -> TargetState {
        let agent = self.agent_state.load(Ordering::Relaxed);
        match self.target.load(Ordering::Relaxed) {
            t if t == TargetState::Disabled as u8 => TargetState::Disabled,
            t if t == TargetState::Drain as u8 => TargetState::Drain,
            _ if agent != AgentState::Up as u8 => TargetState::Drain,
            _ => TargetState::Enabled,
        }
    }

    /// The agent's last report, if any.
    pub fn report(&self) -> Option<AgentReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The pool as its selector sees it during one connect: backends that
/// already failed this session are not eligible again.
struct View<'a> {
    pool: &'a PoolRuntime,
    failed: &'a [BackendId],
}

impl PoolView for View<'_> {
    fn eligible(&self, id: BackendId) -> bool {
        !self.failed.contains(&id) && self.pool.eligible(id)
    }

    fn sessions(&self, id: BackendId) -> u64 {
        self.pool.backend(id).sessions.load(Ordering::Relaxed)
    }

    fn weight(&self, id: BackendId) -> u32 {
        self.pool.backend(id).effective_weight.load(Ordering::Relaxed).max(1)
    }

    fn load(&self, id: BackendId) -> Option<f64> {
        let load = f64::from_bits(self.pool.backend(id).load.load(Ordering::Relaxed));
        (!load.is_nan()).then_some(load)
    }

    fn random(&self) -> u64 {
        fastrand::u64(..)
    }
}

/// Why a connect failed: the first two are about the source address:port,
/// not the backend.
enum Failure {
    /// The source address:port is bound by someone else, or its connection
    /// to this backend still exists (TIME_WAIT): another one may work.
    SourceBusy(std::io::Error),
    /// The source address cannot be bound at all (e.g. not on this host).
    Bind(std::io::Error),
    Connect(std::io::Error),
}

impl Failure {
    fn into_io(self) -> std::io::Error {
        match self {
            Failure::SourceBusy(e) | Failure::Bind(e) | Failure::Connect(e) => e,
        }
    }
}

/// Connects to `address`, from `source` if given (bound with SO_REUSEADDR,
/// so a source port whose last connection sits in TIME_WAIT can be bound
/// again for another backend).
async fn connect(
    address: SocketAddr,
    timeout: Duration,
    proxy: Option<(ProxyVersion, (SocketAddr, SocketAddr))>,
    source: Option<SocketAddrV4>,
) -> Result<TcpStream, Failure> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(Failure::Connect)?;
    if let Some(source) = source {
        socket.set_reuseaddr(true).map_err(Failure::Bind)?;
        socket.bind(source.into()).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => Failure::SourceBusy(e),
            _ => Failure::Bind(e),
        })?;
    }
    let connected = tokio::time::timeout(timeout, socket.connect(address)).await.map_err(|_| {
        Failure::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("timed out after {timeout:?}"),
        ))
    })?;
    let mut stream = connected.map_err(|e| match e.kind() {
        // From a bound source, the 4-tuple is taken: a connection from this
        // address:port to this backend still exists.
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::AddrInUse if source.is_some() => {
            Failure::SourceBusy(e)
        }
        _ => Failure::Connect(e),
    })?;
    stream.set_nodelay(true).map_err(Failure::Connect)?;
    if let Some((version, (client, server))) = proxy {
        let header = fulcrum_core::proxy::encode(version, client, server);
        tokio::time::timeout(timeout, tokio::io::AsyncWriteExt::write_all(&mut stream, &header))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "PROXY header not sent in time"))
            .and_then(|r| r)
            .map_err(Failure::Connect)?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests;
