//! Connection limits that live across reloads: the process's
//! (`[runtime.limits]`) and each service's (`[service.limits]`). Counters
//! rather than semaphores: a reload may change a limit while connections
//! admitted under the old one are still open, and those go on counting
//! against the new one until they close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fulcrum_core::model::{Limits, OnLimit};
use tokio::sync::Notify;

pub struct ConnectionLimit {
    open: AtomicU64,
    limits: Mutex<Limits>,
    /// Wakes queued connections when one closes or the limit changes.
    released: Notify,
}

impl ConnectionLimit {
    pub fn new(limits: Limits) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            open: AtomicU64::new(0),
            limits: Mutex::new(limits),
            released: Notify::new(),
        })
    }

    /// Puts `limits` in force (at start, and when a reload commits).
    pub fn set(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        self.released.notify_waiters();
    }

    /// Connections counted now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a place under the limit: at once, after a bounded wait
    /// (`on_limit = "queue"`), or not at all. Without a maximum the
    /// connection is still counted, so a limit a reload brings in finds
    /// the connections already open.
    pub async fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        // Each try reads the maximum in force, so a reload that raises or
        // lifts it lets queued connections in at once.
        let try_take = || match self.limits.lock().unwrap_or_else(|p| p.into_inner()).max_connections {
            None => {
                self.open.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => self
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < u64::from(max)).then_some(n + 1))
                .is_ok(),
        };
        if try_take() {
            return Some(ConnectionSlot(self.clone()));
        }
        let (on_limit, queue_timeout) = {
            let limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            (limits.on_limit, limits.queue_timeout)
        };
        if on_limit == OnLimit::Refuse {
            return None;
        }
        let wait = async {
            loop {
                // Registered before the check, so a release in between is not missed.
                let released = self.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if try_take() {
                    return ConnectionSlot(self.clone());
                }
                released.await;
            }
        };
        Box::pin(tokio::time::timeout(queue_timeout, wait)).await.ok()
    }
}

/// One connection counted against a limit until dropped.
pub struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: Option<u32>, on_limit: OnLimit) -> Limits {
        Limits { max_connections: max, on_limit, queue_timeout: Duration::from_secs(5) }
    }

    #[tokio::test]
    async fn refuses_beyond_the_maximum_and_frees_on_drop() {
        let limit = ConnectionLimit::new(limits(Some(2), OnLimit::Refuse));
        let first = limit.admit().await.expect("first");
        let _second = limit.admit().await.expect("second");
        assert!(limit.admit().await.is_none(), "a third is refused");
        drop(first);
        assert!(limit.admit().await.is_some(), "the freed place is taken");
    }

    #[tokio::test]
    async fn connections_admitted_before_a_change_count_against_the_new_limit() {
        // Unlimited at first: counted all the same.
        let limit = ConnectionLimit::new(limits(None, OnLimit::Refuse));
        let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| limit.admit())).await;
        assert_eq!(limit.open(), 3);
        limit.set(limits(Some(2), OnLimit::Refuse));
        assert!(limit.admit().await.is_none(), "three open, two allowed");
        drop(held);
        assert_eq!(limit.open(), 0);
        assert!(limit.admit().await.is_some());
    }

    #[tokio::test]
    async fn a_queued_connection_gets_the_place_a_close_frees() {
        let limit = ConnectionLimit::new(limits(Some(1), OnLimit::Queue));
        let holder = limit.admit().await.expect("holder");
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit().await.is_some() }
        });
        // Not admitted while the holder is open.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(holder);
        assert!(waiting.await.expect("task"), "the queued connection is admitted");
    }

    #[tokio::test]
    async fn raising_the_limit_admits_queued_connections() {
        let limit = ConnectionLimit::new(limits(Some(1), OnLimit::Queue));
        let _holder = limit.admit().await.expect("holder");
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit().await.map(|_slot| ()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "queued behind the holder");
        limit.set(limits(Some(2), OnLimit::Queue));
        assert!(waiting.await.expect("task").is_some(), "admitted beside the holder");
    }
}
