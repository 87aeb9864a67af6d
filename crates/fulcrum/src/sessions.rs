//! The process's session table and the switches around it: whether rows are
//! kept at all, whether access log lines are written, and the helpers the
//! data path uses to keep a row and the counters current.
//!
//! Process-wide rather than passed down, so that the accept loop, the admin
//! API and a reload reach the one table without threading it through every
//! signature; the table outlives configuration generations, as sessions do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use fulcrum_core::session::{Session, SessionHandle, SessionState, SessionTable};

use crate::service::ServiceRuntime;
use crate::upstream::{PoolRuntime, Upstream};

/// The session table of this process.
pub fn table() -> &'static Arc<SessionTable> {
    static TABLE: OnceLock<Arc<SessionTable>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // A few shards per core: sessions starting together on different
        // workers rarely meet on a shard lock.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Arc::new(SessionTable::new((cores * 4).max(8)))
    })
}

/// Whether sessions get a row in the table (default: yes).
///
/// A measurement switch, not a setting: `FULCRUM_SESSION_TABLE=0` in the
/// environment, read once, turns rows off so a benchmark can show what the
/// table costs (`bench/run` with and without it). Counters and access logs
/// do not depend on it.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("FULCRUM_SESSION_TABLE").map_or(true, |v| v.trim() != "0"))
}

static ACCESS_LOG: AtomicBool = AtomicBool::new(false);

/// Whether to write one `access` log line per http request and per tcp
/// session (`[runtime] access_log`; off until the runner turns it on).
pub fn access_log() -> bool {
    ACCESS_LOG.load(Ordering::Relaxed)
}

/// Turns access log lines on or off, for the whole process (at start and on reload).
pub fn set_access_log(on: bool) {
    ACCESS_LOG.store(on, Ordering::Relaxed);
}

/// Wall-clock milliseconds since the Unix epoch, as the session table keeps times.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Opens the row of a session of `service` from `client` on `listener`, in
/// state `connecting`; `None` when the table is off. The row goes when the
/// handle drops.
pub fn open(service: &ServiceRuntime, client: SocketAddr, listener: SocketAddr) -> Option<SessionHandle> {
    if !enabled() {
        return None;
    }
    let session = Session::new(service.name.clone(), client, listener, service.mode, unix_ms());
    Some(table().insert(session))
}

/// Counters one stream of bytes adds to as it moves (a body, one way of a
/// tunnel): the session's row, the service's and the backend's counters,
/// the exchange's own tally. Each is a relaxed add per chunk.
#[derive(Clone, Copy, Default)]
pub struct Meter<'a>(pub [Option<&'a AtomicU64>; 4]);

impl Meter<'_> {
    pub fn add(&self, n: u64) {
        for c in self.0.iter().flatten() {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Records on `row` that the session now talks to `up`'s backend of `pool`
/// over `up`, and marks it established. The names are the pool's own,
/// shared: a session allocates nothing for them.
pub fn connected(row: &Session, pool: &PoolRuntime, up: &Upstream) {
    let backend = pool.backend(up.backend);
    row.update_backend(&pool.name, &backend.name, backend.address, up.local);
    row.set_state(SessionState::Established);
}
