//! The session table (the access correspondence table): one row per live
//! client connection, what operators list and filter.
//!
//! Sans-io: the table takes times as arguments and never reads a clock.
//! A session's task owns a [`SessionHandle`]; the row lives exactly as long
//! as the handle. Inserting and removing lock one shard of the table, chosen
//! by the session's id, for a slab insert or remove: O(1), and sessions that
//! start at the same moment on different threads land on different shards.
//! Everything that changes while the session runs (state, bytes, requests,
//! last activity) is an atomic the session task bumps without any lock; only
//! the backend side, which an http session changes per request, sits behind
//! a small lock of its own, never the shard's.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use slab::Slab;

use crate::model::Mode;

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SessionState {
    /// Accepted; no backend connection yet.
    Connecting = 0,
    /// Forwarding (for http: it has had a backend connection at least once).
    Established = 1,
    /// Ending: both sides are being closed.
    Closing = 2,
}

impl SessionState {
    fn from_u8(v: u8) -> SessionState {
        match v {
            0 => SessionState::Connecting,
            1 => SessionState::Established,
            _ => SessionState::Closing,
        }
    }
}

/// The backend end of a session: which backend, and the source address
/// Fulcrum used toward it. An http session replaces it per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSide {
    pub pool: Arc<str>,
    pub backend: Arc<str>,
    /// The backend's address.
    pub address: SocketAddr,
    /// Fulcrum's source address:port on the backend connection (the SNAT
    /// address when the pool has a SNAT pool); `None` if unknown.
    pub local: Option<SocketAddr>,
}

/// One live session. The fields set at the start never change; the live ones
/// are atomics (relaxed: each is a counter or a last value, read as a snapshot).
#[derive(Debug)]
pub struct Session {
    /// Assigned by [`SessionTable::insert`], unique within the table's life.
    id: u64,
    pub service: Arc<str>,
    /// The client: the peer, or the address a trusted PROXY header gave.
    pub client: SocketAddr,
    /// The listener the client connected to (the VIP:port).
    pub listener: SocketAddr,
    pub mode: Mode,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// `SessionState` as u8.
    state: AtomicU8,
    /// Bytes received from the client.
    pub bytes_in: AtomicU64,
    /// Bytes sent to the client.
    pub bytes_out: AtomicU64,
    /// Requests served (http); 0 in tcp mode.
    pub requests: AtomicU64,
    /// Wall-clock time of the last byte or request, ms since the Unix epoch.
    pub last_activity_unix_ms: AtomicU64,
    backend: Mutex<Option<BackendSide>>,
}

impl Session {
    /// A new session in state `connecting`, its last activity its start.
    /// The id is given by [`SessionTable::insert`].
    pub fn new(
        service: Arc<str>,
        client: SocketAddr,
        listener: SocketAddr,
        mode: Mode,
        started_unix_ms: u64,
    ) -> Self {
        Session {
            id: 0,
            service,
            client,
            listener,
            mode,
            started_unix_ms,
            state: AtomicU8::new(SessionState::Connecting as u8),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_activity_unix_ms: AtomicU64::new(started_unix_ms),
            backend: Mutex::new(None),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn state(&self) -> SessionState {
        SessionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: SessionState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Records that something happened at `now_unix_ms` (ms since the Unix epoch).
    pub fn touch(&self, now_unix_ms: u64) {
        self.last_activity_unix_ms.store(now_unix_ms, Ordering::Relaxed);
    }

    /// Counts one request served, at `now_unix_ms`.
    pub fn request_done(&self, now_unix_ms: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch(now_unix_ms);
    }

    /// Replaces the backend side (a new backend connection).
    pub fn set_backend(&self, side: BackendSide) {
        *self.lock_backend() = Some(side);
    }

    /// Records the backend side unless it is that already: an http session
    /// that stays on one backend connection pays a lock and a compare per
    /// request, not a clone of the names.
    pub fn update_backend(
        &self,
        pool: &Arc<str>,
        backend: &Arc<str>,
        address: SocketAddr,
        local: Option<SocketAddr>,
    ) {
        let mut side = self.lock_backend();
        let same = side.as_ref().is_some_and(|b| {
            b.address == address && b.local == local && b.pool == *pool && b.backend == *backend
        });
        if !same {
            *side = Some(BackendSide { pool: pool.clone(), backend: backend.clone(), address, local });
        }
    }

    /// The backend side now, if the session has had a backend connection.
    pub fn backend(&self) -> Option<BackendSide> {
        self.lock_backend().clone()
    }

    fn lock_backend(&self) -> MutexGuard<'_, Option<BackendSide>> {
        // A panic elsewhere cannot leave an Option half-written: keep going.
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A plain copy of the row as it is now.
    pub fn row(&self) -> SessionRow {
        let backend = self.backend();
        SessionRow {
            id: self.id,
            service: self.service.to_string(),
            client: self.client,
            listener: self.listener,
            local: backend.as_ref().and_then(|b| b.local),
            pool: backend.as_ref().map(|b| b.pool.to_string()),
            backend: backend.as_ref().map(|b| b.backend.to_string()),
            backend_address: backend.as_ref().map(|b| b.address),
            mode: self.mode,
            state: self.state(),
            started_unix_ms: self.started_unix_ms,
            last_activity_unix_ms: self.last_activity_unix_ms.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one session, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SessionRow {
    pub id: u64,
    pub service: String,
    pub client: SocketAddr,
    pub listener: SocketAddr,
    /// Fulcrum's source address:port toward the backend (SNAT address).
    pub local: Option<SocketAddr>,
    pub pool: Option<String>,
    pub backend: Option<String>,
    pub backend_address: Option<SocketAddr>,
    pub mode: Mode,
    pub state: SessionState,
    pub started_unix_ms: u64,
    pub last_activity_unix_ms: u64,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    pub requests: u64,
}

/// Which sessions to list; every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct SessionFilter {
    /// The service's name, exactly.
    pub service: Option<String>,
    /// The backend's name, or `pool/backend`, exactly.
    pub backend: Option<String>,
    /// The client: an address `10.0.0.1`, an address and port `10.0.0.1:5000`,
    /// a network `10.0.0.0/8`, or else a prefix of the address as text (`10.0.`).
    pub client: Option<String>,
}

/// The client part of a filter, parsed once per listing.
enum ClientMatch {
    Ip(IpAddr),
    Socket(SocketAddr),
    Net(ipnet::IpNet),
    Prefix(String),
}

impl ClientMatch {
    fn parse(s: &str) -> ClientMatch {
        let s = s.trim();
        if let Ok(ip) = s.parse() {
            ClientMatch::Ip(ip)
        } else if let Ok(sa) = s.parse() {
            ClientMatch::Socket(sa)
        } else if let Ok(net) = s.parse() {
            ClientMatch::Net(net)
        } else {
            ClientMatch::Prefix(s.to_owned())
        }
    }

    fn matches(&self, client: SocketAddr) -> bool {
        let ip = client.ip().to_canonical();
        match self {
            ClientMatch::Ip(want) => ip == want.to_canonical(),
            ClientMatch::Socket(want) => ip == want.ip().to_canonical() && client.port() == want.port(),
            ClientMatch::Net(net) => net.contains(&ip),
            ClientMatch::Prefix(p) => ip.to_string().starts_with(p.as_str()),
        }
    }
}

impl SessionFilter {
    /// Whether `session` passes this filter (it parses the client part: to
    /// test many sessions, use [`SessionTable::list`]).
    pub fn matches(&self, session: &Session) -> bool {
        Matcher::new(self).matches(session)
    }
}

struct Matcher<'f> {
    service: Option<&'f str>,
    backend: Option<&'f str>,
    client: Option<ClientMatch>,
}

impl<'f> Matcher<'f> {
    fn new(f: &'f SessionFilter) -> Self {
        Matcher {
            service: f.service.as_deref(),
            backend: f.backend.as_deref(),
            client: f.client.as_deref().map(ClientMatch::parse),
        }
    }

    fn matches(&self, s: &Session) -> bool {
        if self.service.is_some_and(|want| *s.service != *want) {
            return false;
        }
        if self.client.as_ref().is_some_and(|c| !c.matches(s.client)) {
            return false;
        }
        if let Some(want) = self.backend {
            let side = s.lock_backend();
            let Some(b) = side.as_ref() else { return false };
            let qualified = want
                .split_once('/')
                .is_some_and(|(pool, backend)| *b.pool == *pool && *b.backend == *backend);
            if !qualified && *b.backend != *want {
                return false;
            }
        }
        true
    }
}

/// One shard: the rows whose id falls on it.
type Shard = Mutex<Slab<Arc<Session>>>;

/// Every live session, in shards.
#[derive(Debug)]
pub struct SessionTable {
    shards: Box<[Arc<Shard>]>,
    /// The next id; ids are never reused while the table lives.
    next_id: AtomicU64,
}

impl SessionTable {
    /// A table of `shards` shards (at least one). A few per core keeps two
    /// sessions starting at once on different threads off each other's lock.
    pub fn new(shards: usize) -> Self {
        SessionTable {
            shards: (0..shards.max(1)).map(|_| Arc::new(Mutex::new(Slab::new()))).collect(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Adds `session` under a fresh id (any id it had is replaced); the row
    /// lives until the returned handle drops.
    pub fn insert(&self, mut session: Session) -> SessionHandle {
        session.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.shards[(session.id % self.shards.len() as u64) as usize].clone();
        let session = Arc::new(session);
        let key = lock(&shard).insert(session.clone());
        SessionHandle { session, shard, key }
    }

    /// Live sessions now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sessions that match `filter`, sorted by id: how many match in
    /// all, and the rows of at most `limit` of them after skipping `offset`.
    /// Each shard is locked only to collect its matches; the rows are copied
    /// after, so a listing never holds up sessions starting or ending.
    pub fn list(&self, filter: &SessionFilter, limit: usize, offset: usize) -> (usize, Vec<SessionRow>) {
        let matcher = Matcher::new(filter);
        let mut found: Vec<Arc<Session>> = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            found.extend(shard.iter().map(|(_, s)| s).filter(|s| matcher.matches(s)).cloned());
        }
        found.sort_unstable_by_key(|s| s.id);
        let total = found.len();
        let rows = found.iter().skip(offset).take(limit).map(|s| s.row()).collect();
        (total, rows)
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, Slab<Arc<Session>>> {
    // A slab insert or remove cannot be left half-done by a panic elsewhere.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session's place in the table: dropping it removes the row. Derefs to
/// the session, whose live fields the session task updates.
#[derive(Debug)]
pub struct SessionHandle {
    session: Arc<Session>,
    /// The shard holding the row (kept alive by the handle, so the handle
    /// needs no reference to the table itself).
    shard: Arc<Shard>,
    key: usize,
}

impl SessionHandle {
    /// The session, shared (for a listing or a task that outlives the handle's borrow).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl std::ops::Deref for SessionHandle {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        lock(&self.shard).try_remove(self.key);
    }
}

#[cfg(test)]
mod tests;
