//! Connection limits that live across reloads: the process's
//! (`[runtime.limits]`) and each service's (`[service.limits]`). A reload
//! may change a limit while connections admitted under the old one are
//! still open: they go on counting against the new one until they close.
//!
//! Places are permits of a fair semaphore, so queued connections are let in
//! in arrival order and a newcomer never takes a place a queued one waits
//! for. The semaphore is handed on across reloads and resized: a raised
//! limit adds permits; a lowered one withdraws the free ones at once and
//! the rest as connections close (`owed`). Without a maximum there are
//! `UNLIMITED` permits, so the connections open are counted all the same.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fulcrum_core::model::{Limits, OnLimit};
use tokio::sync::Semaphore;

/// The places of a limit without a maximum: more than descriptors can ever hold.
const UNLIMITED: usize = Semaphore::MAX_PERMITS / 2;

pub struct ConnectionLimit {
    places: Semaphore,
    /// Places withdrawn by a lowered limit that connections still hold:
    /// each one closing while this is above zero gives its place up.
    owed: AtomicUsize,
    /// The limits in force; read when a connection has to wait or be
    /// refused, and on reload.
    limits: Mutex<Limits>,
}

fn places_of(limits: &Limits) -> usize {
    limits.max_connections.map_or(UNLIMITED, |n| n as usize)
}

impl ConnectionLimit {
    pub fn new(limits: Limits) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            places: Semaphore::new(places_of(&limits)),
            owed: AtomicUsize::new(0),
            limits: Mutex::new(limits),
        })
    }

    /// Puts `limits` in force (at start, and when a reload commits).
    pub fn set(&self, limits: Limits) {
        let mut current = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let (old, new) = (places_of(&current), places_of(&limits));
        if new > old {
            // Places still owed are cancelled first; what is left is added.
            // One atomic step: a closing connection may settle a debt meanwhile.
            let more = new - old;
            let owed = self
                .owed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n - n.min(more)))
                .unwrap_or_else(|n| n);
            self.places.add_permits(more - owed.min(more));
        } else if new < old {
            let fewer = old - new;
            let withdrawn = self.places.forget_permits(fewer);
            self.owed.fetch_add(fewer - withdrawn, Ordering::Relaxed);
        }
        *current = limits;
    }

    /// Connections counted now.
    pub fn open(&self) -> usize {
        let places = places_of(&self.limits.lock().unwrap_or_else(|p| p.into_inner()));
        (places + self.owed.load(Ordering::Relaxed)).saturating_sub(self.places.available_permits())
    }

    /// Takes a place under the limit: at once, after a bounded wait in
    /// arrival order (`on_limit = "queue"`), or not at all.
    pub async fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        if let Ok(permit) = self.places.try_acquire() {
            permit.forget();
            return Some(ConnectionSlot(self.clone()));
        }
        let (on_limit, queue_timeout) = {
            let limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            (limits.on_limit, limits.queue_timeout)
        };
        if on_limit == OnLimit::Refuse {
            return None;
        }
        match Box::pin(tokio::time::timeout(queue_timeout, self.places.acquire())).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Some(ConnectionSlot(self.clone()))
            }
            _ => None,
        }
    }
}

/// One connection counted against a limit until dropped.
pub struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let limit = &self.0;
        let settled =
            limit.owed.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if !settled {
            limit.places.add_permits(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: Option<u32>, on_limit: OnLimit) -> Limits {
        Limits { max_connections: max, on_limit, queue_timeout: Duration::from_secs(5) }
    }

    /// Spawns an admission and lets it run until it waits (the runtime of
    /// these tests is one thread, so the yield runs it).
    async fn queue_one(limit: &Arc<ConnectionLimit>) -> tokio::task::JoinHandle<Option<ConnectionSlot>> {
        let task = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "it waits");
        task
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

    // Paused time: a lost wake-up would run into the 5 s queue timeout at
    // once and fail the test, rather than pass it late.
    #[tokio::test(start_paused = true)]
    async fn queued_connections_get_freed_places_in_arrival_order() {
        let limit = ConnectionLimit::new(limits(Some(1), OnLimit::Queue));
        let holder = limit.admit().await.expect("holder");
        let first = queue_one(&limit).await;
        let second = queue_one(&limit).await;
        drop(holder);
        // The freed place went to the first in the queue, not to a newcomer.
        assert!(limit.places.try_acquire().is_err(), "a newcomer finds no place");
        let first = first.await.expect("task").expect("the first queued is admitted");
        assert!(!second.is_finished());
        drop(first);
        assert!(second.await.expect("task").is_some(), "then the second");
        assert_eq!(limit.open(), 0);
    }

    #[tokio::test]
    async fn a_lowered_limit_takes_its_places_back_as_connections_close() {
        let limit = ConnectionLimit::new(limits(Some(3), OnLimit::Refuse));
        let mut held: Vec<_> = futures_util::future::join_all((0..3).map(|_| limit.admit())).await;
        limit.set(limits(Some(1), OnLimit::Refuse));
        assert_eq!(limit.open(), 3);
        held.pop();
        assert!(limit.admit().await.is_none(), "two open, one allowed");
        held.pop();
        assert!(limit.admit().await.is_none(), "one open, one allowed");
        held.pop();
        assert_eq!(limit.open(), 0);
        let _one = limit.admit().await.expect("none open");
        assert!(limit.admit().await.is_none(), "and only one");
    }

    #[tokio::test]
    async fn a_raised_limit_first_cancels_what_a_lowered_one_is_still_owed() {
        let limit = ConnectionLimit::new(limits(Some(3), OnLimit::Refuse));
        let mut held: Vec<_> = futures_util::future::join_all((0..3).map(|_| limit.admit())).await;
        limit.set(limits(Some(1), OnLimit::Refuse)); // two places owed
        limit.set(limits(Some(2), OnLimit::Refuse)); // one of them cancelled, none added
        assert_eq!(limit.open(), 3);
        assert!(limit.admit().await.is_none(), "three open, two allowed");
        held.pop();
        assert!(limit.admit().await.is_none(), "two open, two allowed");
        held.pop();
        assert!(limit.admit().await.is_some(), "one open, two allowed");
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_limit_admits_queued_connections() {
        let limit = ConnectionLimit::new(limits(Some(1), OnLimit::Queue));
        let _holder = limit.admit().await.expect("holder");
        let waiting = queue_one(&limit).await;
        limit.set(limits(Some(2), OnLimit::Queue));
        let admitted = waiting.await.expect("task");
        assert!(admitted.is_some(), "admitted beside the holder");
        assert_eq!(limit.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_connection_gives_up_after_the_queue_timeout() {
        let limit = ConnectionLimit::new(limits(Some(1), OnLimit::Queue));
        let holder = limit.admit().await.expect("holder");
        assert!(limit.admit().await.is_none(), "5 s in the queue, then refused");
        drop(holder);
        assert!(limit.admit().await.is_some(), "the place it gave up is free");
    }
}
