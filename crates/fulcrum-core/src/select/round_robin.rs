//! Round robin: every backend in turn, weights ignored.
//!
//! The whole state is one atomic cursor, so picks from every worker thread
//! share it without a lock. When all backends are eligible a pick is one
//! `fetch_add` and one call of the eligibility predicate.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// Round robin over a pool's backends, skipping the ineligible ones.
///
/// Built from a snapshot of the pool (only its length matters); rebuild it
/// when backends are added or removed. With a fixed set of eligible backends
/// and one caller at a time, picks cycle through the eligible ones in id order,
/// each taking exactly one pick per cycle. Under concurrent picks each call
/// still returns an eligible backend, but a skip past an ineligible one may
/// lose its cursor update to a racing pick, so shares are even only up to
/// those races.
#[derive(Debug)]
pub struct RoundRobin {
    /// Number of backends; ids are `0..len`.
    len: usize,
    /// Ticket of the next pick; the backend to try first is `cursor % len`.
    /// Wrapping at `usize::MAX` costs one out-of-turn pick, once.
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// Builds a round robin over `backends`, whose ids must be their indexes.
    /// The first pick tries backend 0.
    pub fn new(backends: &[Backend]) -> Self {
        debug_assert!(backends.iter().enumerate().all(|(i, b)| b.id == BackendId(i)));
        Self { len: backends.len(), cursor: AtomicUsize::new(0) }
    }
}

impl Selector for RoundRobin {
    /// Returns the next eligible backend in turn, or `None` when none is
    /// eligible. Calls `eligible` at most once per backend; `key` is unused.
    fn pick(&self, _key: u64, view: &dyn PoolView) -> Option<BackendId> {
        let eligible = &|id| view.eligible(id);
        if self.len == 0 {
            return None;
        }
        let ticket = self.cursor.fetch_add(1, Ordering::Relaxed);
        let start = ticket % self.len;
        for distance in 0..self.len {
            let id = BackendId((start + distance) % self.len);
            if !eligible(id) {
                continue;
            }
            if distance > 0 {
                // Without this, the backend after an ineligible one would take
                // the ineligible one's turns as well as its own (with b down,
                // a c c a c c). Moving the cursor past the backend we took makes
                // the next pick start after it. If another pick raced us the
                // cursor has moved on and we leave it: a lost skip costs one
                // uneven pick, a retry loop would cost every caller.
                let _ = self.cursor.compare_exchange(
                    ticket.wrapping_add(1),
                    ticket.wrapping_add(distance + 1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            return Some(id);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn pool(len: usize) -> Vec<Backend> {
        (0..len)
            .map(|i| Backend::new(i, &format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], 9000)), 1))
            .collect()
    }

    fn picks(rr: &RoundRobin, count: usize, eligible: &dyn Fn(BackendId) -> bool) -> Vec<usize> {
        (0..count).map(|_| rr.pick(0, &eligible).map_or(usize::MAX, |id| id.0)).collect()
    }

    #[test]
    fn cycles_through_backends_in_id_order() {
        let rr = RoundRobin::new(&pool(3));
        assert_eq!(picks(&rr, 7, &|_| true), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn single_backend_takes_every_pick_while_eligible() {
        let rr = RoundRobin::new(&pool(1));
        assert_eq!(picks(&rr, 3, &|_| true), [0, 0, 0]);
        assert_eq!(rr.pick(0, &|_: BackendId| false), None);
        assert_eq!(rr.pick(0, &|_: BackendId| true), Some(BackendId(0)));
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let rr = RoundRobin::new(&[]);
        assert_eq!(rr.pick(0, &|_: BackendId| true), None);
    }

    #[test]
    fn skipped_backend_turns_are_shared_not_inherited() {
        let rr = RoundRobin::new(&pool(3));
        // b1 down: without the cursor skip this would be 0 2 2 0 2 2.
        assert_eq!(picks(&rr, 6, &|id| id.0 != 1), [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn all_eligible_pick_calls_the_predicate_once() {
        let rr = RoundRobin::new(&pool(50));
        let calls = Cell::new(0);
        for _ in 0..100 {
            rr.pick(0, &|_: BackendId| {
                calls.set(calls.get() + 1);
                true
            });
        }
        assert_eq!(calls.get(), 100);
    }

    #[test]
    fn concurrent_picks_each_backend_equally() {
        const THREADS: usize = 4;
        const PICKS: usize = 10_000;
        const BACKENDS: usize = 5;
        let rr = Arc::new(RoundRobin::new(&pool(BACKENDS)));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let rr = Arc::clone(&rr);
                std::thread::spawn(move || {
                    let mut counts = [0usize; BACKENDS];
                    for _ in 0..PICKS {
                        if let Some(id) = rr.pick(0, &|_: BackendId| true) {
                            counts[id.0] += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut total = [0usize; BACKENDS];
        for worker in workers {
            let counts = worker.join().expect("picking thread panicked");
            for (sum, count) in total.iter_mut().zip(counts) {
                *sum += count;
            }
        }
        // All eligible: every ticket maps to one backend, so the shares are
        // exact however the threads interleave.
        assert_eq!(total, [THREADS * PICKS / BACKENDS; BACKENDS]);
    }

    /// A pool size and an eligibility mask of that size.
    fn pool_and_mask() -> impl Strategy<Value = (usize, Vec<bool>)> {
        (1usize..=50).prop_flat_map(|len| (Just(len), proptest::collection::vec(any::<bool>(), len)))
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_backend(
            (len, mask) in pool_and_mask(),
            warmup in 0usize..100,
        ) {
            let rr = RoundRobin::new(&pool(len));
            picks(&rr, warmup, &|_| true);
            for _ in 0..2 * len {
                if let Some(id) = rr.pick(0, &|id: BackendId| mask[id.0]) {
                    prop_assert!(mask[id.0], "picked ineligible {id:?}");
                }
            }
        }

        #[test]
        fn picks_nothing_iff_nothing_is_eligible(
            (len, mask) in pool_and_mask(),
            warmup in 0usize..100,
        ) {
            let rr = RoundRobin::new(&pool(len));
            picks(&rr, warmup, &|_| true);
            let any_eligible = mask.iter().any(|&e| e);
            for _ in 0..2 * len {
                prop_assert_eq!(rr.pick(0, &|id: BackendId| mask[id.0]).is_some(), any_eligible);
            }
        }

        #[test]
        fn all_eligible_each_backend_once_per_len_picks(
            len in 1usize..=50,
            warmup in 0usize..100,
        ) {
            let rr = RoundRobin::new(&pool(len));
            picks(&rr, warmup, &|_| true);
            let mut counts = vec![0usize; len];
            for id in picks(&rr, len, &|_| true) {
                counts[id] += 1;
            }
            prop_assert_eq!(counts, vec![1; len]);
        }

        /// With one caller the cursor skip never loses a race, so each eligible
        /// backend takes exactly one pick per round of `eligible count` picks:
        /// the tolerance is zero, whatever the mask and the starting cursor.
        #[test]
        fn ineligible_subset_leaves_even_shares_among_the_rest(
            (len, mask) in pool_and_mask(),
            warmup in 0usize..100,
            rounds in 1usize..20,
        ) {
            let rr = RoundRobin::new(&pool(len));
            picks(&rr, warmup, &|_| true);
            let eligible_count = mask.iter().filter(|&&e| e).count();
            prop_assume!(eligible_count > 0);
            let mut counts = vec![0usize; len];
            for id in picks(&rr, rounds * eligible_count, &|id| mask[id.0]) {
                counts[id] += 1;
            }
            let expected: Vec<usize> = mask.iter().map(|&e| if e { rounds } else { 0 }).collect();
            prop_assert_eq!(counts, expected);
        }
    }
}
