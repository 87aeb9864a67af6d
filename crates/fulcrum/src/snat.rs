//! SNAT pools as the daemon runs them: the core allocator behind a
//! lock, leases that give their address:port back when dropped, and a
//! bounded wait for one when the pool is exhausted.
//!
//! A lease lives as long as the backend connection bound to it, idle time
//! in the keep-alive pool included (`upstream.rs` keeps the two together).
//! The lock is held for one allocation or release, never across an await.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fulcrum_core::model::SnatPool;
use fulcrum_core::snat::{SnatAllocator, SnatStats};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One `[[snat_pool]]`, shared by every pool that names it.
pub struct SnatRuntime {
    pub name: String,
    /// The configuration it was built from: a reload keeps this runtime
    /// (and so every lease in flight) when the new one is equal.
    pub model: SnatPool,
    allocator: Mutex<SnatAllocator>,
    /// Wakes a session waiting for a free address:port when one is released.
    released: Notify,
    /// Sessions waiting for one now: while any wait, a backend connection
    /// whose exchange ended gives its source back rather than idling on it.
    waiting: AtomicUsize,
    /// Sessions refused because no address:port was free in time.
    pub exhausted: AtomicU64,
    /// Sessions that found the pool exhausted and waited (served or not).
    pub waited: AtomicU64,
    /// Whether the last lease attempt was refused, so that running out and
    /// recovering are each logged once, not once per session.
    refusing: AtomicBool,
}

/// One session counted in `waiting` for as long as it waits, even when its
/// wait is cancelled (the client left, a timeout).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An address:port of a SNAT pool, held until dropped.
pub struct SnatLease {
    snat: Arc<SnatRuntime>,
    address: SocketAddrV4,
}

/// What the admin API shows of a SNAT pool.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SnatView {
    pub name: String,
    #[serde(flatten)]
    pub stats: SnatStats,
    pub wait_ms: u64,
    pub exhausted: u64,
    pub waited: u64,
}

impl SnatRuntime {
    /// The runtime of `pool`, holding its initial blocks.
    pub fn new(pool: &SnatPool) -> Self {
        SnatRuntime {
            name: pool.name.clone(),
            model: pool.clone(),
            allocator: Mutex::new(SnatAllocator::new(pool)),
            released: Notify::new(),
            waiting: AtomicUsize::new(0),
            exhausted: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        }
    }

    /// A free address:port, waiting up to `wait` for one to be released if
    /// none is free now; `None` (counted in `exhausted`) when none came.
    /// `reclaim` frees one held by an idle connection if it can (true when
    /// it did): it runs once the session counts as waiting, so a connection
    /// that went idle just before is found, and one going idle after sees
    /// the waiter ([`SnatRuntime::has_waiters`]) and gives its source back.
    pub async fn lease(self: &Arc<Self>, wait: Duration, reclaim: impl Fn() -> bool) -> Option<SnatLease> {
        if let Some(lease) = self.try_lease() {
            return Some(lease);
        }
        if !wait.is_zero() {
            self.waited.fetch_add(1, Ordering::Relaxed);
            let _waiting = Waiting::count(&self.waiting);
            let leased = self.wait_for_lease(Instant::now() + wait, reclaim).await;
            if leased.is_some() {
                return leased;
            }
        }
        self.refused();
        None
    }

    async fn wait_for_lease(
        self: &Arc<Self>,
        deadline: Instant,
        reclaim: impl Fn() -> bool,
    ) -> Option<SnatLease> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the retry, so a release between the two is not missed.
            released.as_mut().enable();
            loop {
                if let Some(lease) = self.try_lease() {
                    return Some(lease);
                }
                if !reclaim() {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }

    /// Whether a session is waiting for a free address:port.
    pub fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// A free address:port now, if any.
    pub fn try_lease(self: &Arc<Self>) -> Option<SnatLease> {
        let address = self.lock().allocate()?;
        if self.refusing.load(Ordering::Relaxed) && self.refusing.swap(false, Ordering::Relaxed) {
            tracing::info!(snat_pool = %self.name, "snat pool has free source addresses again");
        }
        Some(SnatLease { snat: self.clone(), address })
    }

    /// Counts a session turned away for want of a source address:port.
    pub fn refused(&self) {
        self.exhausted.fetch_add(1, Ordering::Relaxed);
        if !self.refusing.swap(true, Ordering::Relaxed) {
            let stats = self.stats();
            tracing::warn!(
                snat_pool = %self.name,
                allocated = stats.allocated,
                capacity = stats.capacity,
                "snat pool exhausted: new sessions are refused until source addresses are released"
            );
        }
    }

    pub fn stats(&self) -> SnatStats {
        self.lock().stats()
    }

    /// The pool's allocation state and counters, for the admin API.
    pub fn view(&self) -> SnatView {
        SnatView {
            name: self.name.clone(),
            stats: self.stats(),
            wait_ms: u64::try_from(self.model.wait.as_millis()).unwrap_or(u64::MAX),
            exhausted: self.exhausted.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SnatAllocator> {
        // The allocator is never left half-changed by a panic (no user code
        // runs under the lock), so a poisoned lock is still sound.
        self.allocator.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SnatLease {
    /// The source address:port to bind to.
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// The SNAT pool it came from.
    pub fn pool(&self) -> &Arc<SnatRuntime> {
        &self.snat
    }
}

impl std::fmt::Debug for SnatLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnatLease({} of {:?})", self.address, self.snat.name)
    }
}

impl Drop for SnatLease {
    fn drop(&mut self) {
        if self.snat.lock().release(self.address) {
            self.snat.released.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn runtime(wait: Duration) -> Arc<SnatRuntime> {
        Arc::new(SnatRuntime::new(&SnatPool {
            name: "s".into(),
            first_ip: Ipv4Addr::new(127, 0, 0, 10),
            last_ip: Ipv4Addr::new(127, 0, 0, 10),
            netmask: Ipv4Addr::new(255, 0, 0, 0),
            ports: (40000, 40001),
            block_size: 1,
            initial_blocks: 1,
            max_blocks: 2,
            wait,
        }))
    }

    #[tokio::test]
    async fn an_exhausted_pool_refuses_at_once_without_a_wait() {
        let snat = runtime(Duration::ZERO);
        let held = (snat.lease(Duration::ZERO, || false).await, snat.lease(Duration::ZERO, || false).await);
        assert!(held.0.is_some() && held.1.is_some());
        assert!(snat.lease(Duration::ZERO, || false).await.is_none());
        assert_eq!(snat.exhausted.load(Ordering::Relaxed), 1);
        assert_eq!(snat.waited.load(Ordering::Relaxed), 0);
        drop(held);
        assert_eq!(snat.stats().allocated, 0, "leases give their address:port back on drop");
    }

    #[tokio::test]
    async fn a_waiting_session_gets_the_next_released_address() {
        let snat = runtime(Duration::from_secs(30));
        let first = snat.lease(Duration::ZERO, || false).await.expect("free");
        let _second = snat.lease(Duration::ZERO, || false).await.expect("free");
        let waiter = tokio::spawn({
            let snat = snat.clone();
            async move { snat.lease(Duration::from_secs(30), || false).await.map(|l| l.address()) }
        });
        // The waiter counts itself before it waits.
        while snat.waited.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let freed = first.address();
        drop(first);
        assert_eq!(waiter.await.expect("the waiter finishes"), Some(freed));
        assert_eq!(snat.exhausted.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_wait_is_bounded() {
        let snat = runtime(Duration::ZERO);
        let _held = (snat.lease(Duration::ZERO, || false).await, snat.lease(Duration::ZERO, || false).await);
        let start = Instant::now();
        assert!(snat.lease(Duration::from_millis(100), || false).await.is_none());
        assert!(start.elapsed() >= Duration::from_millis(100), "refused only after the wait");
        assert_eq!((snat.waited.load(Ordering::Relaxed), snat.exhausted.load(Ordering::Relaxed)), (1, 1));
    }

    #[tokio::test]
    async fn a_waiter_reclaims_an_idle_source_and_a_cancelled_wait_stops_counting() {
        let snat = runtime(Duration::from_secs(30));
        // Both sources held; one by an "idle connection" the reclaim can close.
        let idle = std::sync::Mutex::new(snat.lease(Duration::ZERO, || false).await);
        let _busy = snat.lease(Duration::ZERO, || false).await.expect("free");
        let reclaim = || idle.lock().unwrap().take().is_some();
        let got = snat.lease(Duration::from_secs(30), reclaim).await.expect("the idle one's source");
        assert_eq!(snat.exhausted.load(Ordering::Relaxed), 0);
        assert!(!snat.has_waiters(), "no longer waiting once served");

        // Nothing to reclaim now: a waiter waits, counted, until it is cancelled.
        let waiter = tokio::spawn({
            let snat = snat.clone();
            async move { snat.lease(Duration::from_secs(30), || false).await.is_some() }
        });
        while !snat.has_waiters() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
        assert!(!snat.has_waiters(), "a cancelled wait is not counted");
        drop(got);
    }
}
