//! Smooth weighted round robin, the order NGINX uses.
//!
//! NGINX keeps a `current_weight` per backend; each pick adds every backend's
//! weight to its current weight, takes the largest (the first on a tie) and
//! subtracts the total weight from it. Weights 5, 1, 1 give `a a b a c a a`
//! rather than the bursty `a a a a a b c`.
//!
//! Why a precomputed table: NGINX updates the current weights of every
//! backend under the upstream lock, which would put a lock on every worker's
//! hot path. The current weights all come back to zero after
//! one period of `sum of weights` picks, and each backend has been picked
//! exactly `weight` times by then, so the picks repeat with that period. We
//! compute one period when the selector is built (at most
//! 256 × backends entries) and walk it with an atomic cursor: a pick is one
//! `fetch_add` and one table read. The price is memory (two words per entry)
//! and a build of O(entries × backends) steps, paid off the hot path on reload.
//! Dividing the weights by their greatest common divisor first gives the same
//! order (scaling every weight scales every current weight) in a shorter table.
//!
//! Ineligible backends are skipped: the pick takes the first eligible entry at
//! or after the cursor, and then moves the cursor past it, so the eligible
//! backends keep the table's order among themselves and, over one pass of the
//! table, each is picked exactly `weight` times. Finding that entry never walks
//! the table: after a short probe we look up, for each eligible backend, its next
//! entry in a sorted list of its slots, and take the nearest. A pick therefore
//! calls the predicate at most `1 + PROBE + backends` times, and a pick with no
//! backend eligible costs about that many calls.
//!
//! How smooth the order is. Let `p = weight / W` (W the total weight) and the
//! deficit `d(k) = k·p − picks in the first k` of a backend; NGINX's current
//! weight is `W·d`. Deficits sum to zero, and a pick adds `p` to every deficit
//! and then takes one pick away from the largest. Over n backends:
//! - No backend gets ahead by a whole pick: `picks ≤ k·p + 1 − 1/n`. The
//!   largest of n values that sum to 1 is at least 1/n, so the picked backend
//!   lands at ≥ 1/n − 1, and the others only rise.
//! - A backend can fall behind by more than one pick, but by at most
//!   `H(n) − 1` (H the harmonic numbers: 0.5 for 2 backends, 0.83 for 3, 1.08
//!   for 4, 3.5 for 50): `picks ≥ k·p − (H(n) − 1)`. Proof: the sum of the m
//!   largest deficits stays ≤ `B(m) = m·(H(n) − H(m))`. After a pick, take m
//!   backends S. If the picked one s is in S, their sum is at most
//!   `B(m) + Σ_S p − 1 ≤ B(m)`. If not, s had the largest value among S ∪ {s}, so
//!   `Σ_S ≤ m/(m+1) · Σ_{S∪{s}} ≤ m/(m+1) · (B(m+1) + 1) = B(m)`. Take m = 1.
//!   The tests hold both bounds over every prefix of the period, and show
//!   weights (1, 27, 248, 248) where the first backend lags by more than one pick.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// How many table entries after an ineligible one a pick tries in turn before
/// it searches backend by backend. The entries after an ineligible backend
/// are usually other backends, so with one backend down the probe finds the
/// next entry in a step or two without the `backends` predicate calls and
/// binary searches of the search. It is a small constant so that the
/// predicate calls per pick stay `O(backends)`.
const PROBE: usize = 8;

/// Smooth weighted round robin over a pool's backends.
///
/// Built from a snapshot of the pool; rebuild it when backends or weights
/// change. A fresh selector starts where NGINX starts (all current weights
/// zero). Weights are taken as validated (1..=256); a backend of weight 0 is
/// never picked. With every backend eligible, picks follow NGINX's order
/// exactly even when many threads pick at once (each ticket is one table entry).
/// When some are ineligible and one caller picks at a time, the eligible ones
/// keep NGINX's order among themselves and, over any `sum of eligible weights`
/// consecutive picks, each is picked exactly `weight` times. Under concurrent
/// picks each call still returns an eligible backend, but a skip may lose its
/// cursor update to a racing pick, so shares are exact only up to those races.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// One period of NGINX's order: entry `k` is the backend of pick `k`.
    sequence: Vec<BackendId>,
    /// For each backend, the indexes of its entries in `sequence`, ascending:
    /// how an ineligible entry is skipped without walking the table.
    slots: Vec<Vec<usize>>,
    /// Ticket of the next pick; its entry is `cursor % sequence.len()`.
    /// Wrapping at `usize::MAX` costs one out-of-order pick, once.
    cursor: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Builds the selector over `backends`, whose ids must be their indexes.
    pub fn new(backends: &[Backend]) -> Self {
        debug_assert!(backends.iter().enumerate().all(|(i, b)| b.id == BackendId(i)));
        let divisor = backends.iter().fold(0, |g, b| gcd(g, b.weight)).max(1);
        let weights: Vec<u32> = backends.iter().map(|b| b.weight / divisor).collect();
        let sequence = smooth_sequence(&weights);
        let mut slots: Vec<Vec<usize>> = weights.iter().map(|&w| Vec::with_capacity(w as usize)).collect();
        for (slot, id) in sequence.iter().enumerate() {
            slots[id.0].push(slot);
        }
        Self { sequence, slots, cursor: AtomicUsize::new(0) }
    }

    /// The first eligible entry after `slot`, as (backend, distance from `slot`).
    fn next_eligible(&self, slot: usize, eligible: &dyn Fn(BackendId) -> bool) -> Option<(BackendId, usize)> {
        let period = self.sequence.len();
        for distance in 1..=PROBE.min(period - 1) {
            let id = self.sequence[(slot + distance) % period];
            if eligible(id) {
                return Some((id, distance));
            }
        }
        // The nearest next entry over all eligible backends is the first
        // eligible entry of the table walk, found in backends × log(weight).
        // The backend at `slot` itself was ineligible a moment ago; if it has
        // come up since, distance 0 (it keeps its own turn) is right too.
        self.slots
            .iter()
            .enumerate()
            .filter(|&(i, own)| !own.is_empty() && eligible(BackendId(i)))
            .map(|(i, own)| {
                let next = own.partition_point(|&s| s < slot);
                let distance = match own.get(next) {
                    Some(&s) => s - slot,
                    None => own[0] + period - slot,
                };
                (BackendId(i), distance)
            })
            .min_by_key(|&(_, distance)| distance)
    }
}

impl Selector for WeightedRoundRobin {
    /// Returns the next eligible backend in NGINX's smooth order, or `None`
    /// when none is eligible. Calls `eligible` at most `1 + PROBE + backends`
    /// times, once when the backend in turn is eligible; `key` is unused.
    fn pick(&self, _key: u64, view: &dyn PoolView) -> Option<BackendId> {
        let eligible = &|id| view.eligible(id);
        let period = self.sequence.len();
        if period == 0 {
            return None;
        }
        let ticket = self.cursor.fetch_add(1, Ordering::Relaxed);
        let slot = ticket % period;
        let id = self.sequence[slot];
        if eligible(id) {
            return Some(id);
        }
        let (id, distance) = self.next_eligible(slot, eligible)?;
        // Move the cursor past the entry we took, or the backend after a run
        // of ineligible entries would take all their turns. If another pick
        // raced us the cursor has moved on and we leave it: a lost skip costs
        // one out-of-order pick, a retry loop would cost every caller.
        let _ = self.cursor.compare_exchange(
            ticket.wrapping_add(1),
            ticket.wrapping_add(distance + 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        Some(id)
    }
}

/// One period of NGINX's smooth order for `weights`: `sum of weights` backend
/// ids, each id appearing `weight` times. Empty when every weight is 0.
fn smooth_sequence(weights: &[u32]) -> Vec<BackendId> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, &weight) in weights.iter().enumerate() {
                current[i] += i64::from(weight);
                // Strictly greater: the first backend wins a tie, as in NGINX.
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            BackendId(best)
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn pool(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Backend::new(i, &format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], 9000)), weight)
            })
            .collect()
    }

    fn picks(wrr: &WeightedRoundRobin, count: usize, eligible: &dyn Fn(BackendId) -> bool) -> Vec<usize> {
        (0..count).map(|_| wrr.pick(0, &eligible).map_or(usize::MAX, |id| id.0)).collect()
    }

    fn letters(ids: &[usize]) -> String {
        ids.iter().map(|&i| char::from(b'a' + u8::try_from(i).unwrap_or(25))).collect()
    }

    /// NGINX's algorithm as written there, one pick at a time on the full
    /// weights: what the table must reproduce.
    fn nginx_order(weights: &[u32], count: usize) -> Vec<usize> {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        (0..count)
            .map(|_| {
                let mut best: Option<usize> = None;
                for (i, &w) in weights.iter().enumerate() {
                    current[i] += i64::from(w);
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                let best = best.unwrap_or(0);
                current[best] -= total;
                best
            })
            .collect()
    }

    #[test]
    fn weights_5_1_1_pick_in_nginx_smooth_order() {
        let wrr = WeightedRoundRobin::new(&pool(&[5, 1, 1]));
        assert_eq!(letters(&picks(&wrr, 14, &|_| true)), "aabacaaaabacaa");
    }

    #[test]
    fn single_backend_takes_every_pick_while_eligible() {
        let wrr = WeightedRoundRobin::new(&pool(&[7]));
        assert_eq!(picks(&wrr, 10, &|_| true), [0; 10]);
        assert_eq!(wrr.pick(0, &|_: BackendId| false), None);
        assert_eq!(wrr.pick(0, &|_: BackendId| true), Some(BackendId(0)));
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let wrr = WeightedRoundRobin::new(&[]);
        assert_eq!(wrr.pick(0, &|_: BackendId| true), None);
    }

    #[test]
    fn common_factor_of_weights_shortens_the_table_not_the_order() {
        let wrr = WeightedRoundRobin::new(&pool(&[10, 2, 2]));
        assert_eq!(wrr.sequence.len(), 7);
        assert_eq!(picks(&wrr, 14, &|_| true), nginx_order(&[10, 2, 2], 14));
    }

    #[test]
    fn ineligible_backend_leaves_the_others_in_table_order() {
        let wrr = WeightedRoundRobin::new(&pool(&[5, 1, 1]));
        // a down: the table is a a b a c a a, so b and c alternate.
        assert_eq!(letters(&picks(&wrr, 6, &|id| id.0 != 0)), "bcbcbc");
        // b down: a a a c a a per period, never c twice in a row.
        let wrr = WeightedRoundRobin::new(&pool(&[5, 1, 1]));
        assert_eq!(letters(&picks(&wrr, 12, &|id| id.0 != 1)), "aaacaaaaacaa");
    }

    #[test]
    fn a_backend_can_lag_by_more_than_one_pick() {
        // Why the smoothness bound is H(n) − 1 and not one pick: here the
        // weight-1 backend falls behind its share by more than a whole pick.
        let weights = [1u32, 27, 248, 248];
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let wrr = WeightedRoundRobin::new(&pool(&weights));
        let mut counts = [0i64; 4];
        let mut worst_lag = 0i64; // in units of 1/total picks
        for (k, id) in picks(&wrr, 524, &|_| true).into_iter().enumerate() {
            counts[id] += 1;
            let k = i64::try_from(k).unwrap_or(i64::MAX) + 1;
            for (count, &w) in counts.iter().zip(&weights) {
                worst_lag = worst_lag.max(k * i64::from(w) - total * count);
            }
        }
        assert!(worst_lag > total, "worst lag {worst_lag}/{total} picks");
    }

    #[test]
    fn pick_with_nothing_eligible_is_cheap() {
        let weights = [256u32; 50];
        let wrr = WeightedRoundRobin::new(&pool(&weights));
        let calls = Cell::new(0);
        for _ in 0..10 {
            let none = wrr.pick(0, &|_: BackendId| {
                calls.set(calls.get() + 1);
                false
            });
            assert_eq!(none, None);
        }
        assert!(calls.get() <= 10 * (1 + PROBE + 50), "{} calls", calls.get());
    }

    #[test]
    fn concurrent_picks_follow_the_weights_exactly() {
        const THREADS: usize = 4;
        const PERIODS: usize = 1_000;
        let weights = [5u32, 1, 1, 3];
        let total = 10;
        let wrr = Arc::new(WeightedRoundRobin::new(&pool(&weights)));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let wrr = Arc::clone(&wrr);
                std::thread::spawn(move || {
                    let mut counts = [0usize; 4];
                    for _ in 0..PERIODS * total {
                        if let Some(id) = wrr.pick(0, &|_: BackendId| true) {
                            counts[id.0] += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut sums = [0usize; 4];
        for worker in workers {
            let counts = worker.join().expect("picking thread panicked");
            for (sum, count) in sums.iter_mut().zip(counts) {
                *sum += count;
            }
        }
        // All eligible: the tickets 0..THREADS × PERIODS × total are whole
        // periods of the table, however the threads interleave.
        let expected = weights.map(|w| THREADS * PERIODS * w as usize);
        assert_eq!(sums, expected);
    }

    #[test]
    fn concurrent_picks_with_a_backend_down_skip_it() {
        const THREADS: usize = 4;
        const PICKS: usize = 20_000;
        let wrr = Arc::new(WeightedRoundRobin::new(&pool(&[5, 1, 1, 3])));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let wrr = Arc::clone(&wrr);
                std::thread::spawn(move || {
                    let mut counts = [0usize; 4];
                    for _ in 0..PICKS {
                        if let Some(id) = wrr.pick(0, &|id: BackendId| id.0 != 0) {
                            counts[id.0] += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut sums = [0usize; 4];
        for worker in workers {
            let counts = worker.join().expect("picking thread panicked");
            for (sum, count) in sums.iter_mut().zip(counts) {
                *sum += count;
            }
        }
        assert_eq!(sums[0], 0);
        assert_eq!(sums.iter().sum::<usize>(), THREADS * PICKS);
    }

    /// Weights (1..=256) for 1..=50 backends and an eligibility mask as long.
    fn weights_and_mask() -> impl Strategy<Value = (Vec<u32>, Vec<bool>)> {
        proptest::collection::vec(1u32..=256, 1..=50).prop_flat_map(|weights| {
            let len = weights.len();
            (Just(weights), proptest::collection::vec(any::<bool>(), len))
        })
    }

    fn weights() -> impl Strategy<Value = Vec<u32>> {
        proptest::collection::vec(1u32..=256, 1..=50)
    }

    proptest! {
        #[test]
        fn all_eligible_order_is_nginx_order(weights in weights()) {
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            prop_assert_eq!(picks(&wrr, 2 * total, &|_| true), nginx_order(&weights, 2 * total));
        }

        #[test]
        fn never_picks_an_ineligible_backend(
            (weights, mask) in weights_and_mask(),
            warmup in 0usize..1000,
        ) {
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            picks(&wrr, warmup, &|_| true);
            for _ in 0..200 {
                if let Some(id) = wrr.pick(0, &|id: BackendId| mask[id.0]) {
                    prop_assert!(mask[id.0], "picked ineligible {:?}", id);
                }
            }
        }

        #[test]
        fn picks_nothing_iff_nothing_is_eligible(
            (weights, mask) in weights_and_mask(),
            warmup in 0usize..1000,
        ) {
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            picks(&wrr, warmup, &|_| true);
            let any_eligible = mask.iter().any(|&e| e);
            for _ in 0..200 {
                prop_assert_eq!(wrr.pick(0, &|id: BackendId| mask[id.0]).is_some(), any_eligible);
            }
        }

        #[test]
        fn predicate_calls_per_pick_stay_bounded(
            (weights, mask) in weights_and_mask(),
            warmup in 0usize..1000,
        ) {
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            picks(&wrr, warmup, &|_| true);
            for _ in 0..200 {
                let calls = Cell::new(0usize);
                wrr.pick(0, &|id: BackendId| {
                    calls.set(calls.get() + 1);
                    mask[id.0]
                });
                prop_assert!(calls.get() <= 1 + PROBE + weights.len(), "{} calls", calls.get());
            }
        }

        #[test]
        fn all_eligible_each_backend_weight_times_per_period(
            weights in weights(),
            warmup in 0usize..1000,
        ) {
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            picks(&wrr, warmup, &|_| true);
            let mut counts = vec![0u32; weights.len()];
            for id in picks(&wrr, total, &|_| true) {
                counts[id] += 1;
            }
            prop_assert_eq!(counts, weights);
        }

        /// The bounds proved in the module comment, over every prefix of a
        /// period from a fresh selector, in exact integer arithmetic:
        /// n·(W·picks − k·w) ≤ (n − 1)·W, and
        /// L·(k·w − W·picks) ≤ W·(L·H(n) − L) with L = lcm(1..=n), which makes
        /// L·H(n) an integer (L < 2^72 for n ≤ 50; everything fits in i128).
        #[test]
        fn every_prefix_stays_within_the_smoothness_bounds(weights in weights()) {
            let n = weights.len();
            let n_i = i128::try_from(n).unwrap_or(i128::MAX);
            let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
            let lcm = (1..=n_i).fold(1i128, |l, m| l / gcd_i128(l, m) * m);
            let lcm_harmonic: i128 = (1..=n_i).map(|m| lcm / m).sum();
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            let mut counts = vec![0i128; n];
            let mut k = 0i128;
            for id in picks(&wrr, usize::try_from(total).unwrap_or(0), &|_| true) {
                counts[id] += 1;
                k += 1;
                for (&count, &w) in counts.iter().zip(&weights) {
                    let ahead = total * count - k * i128::from(w);
                    prop_assert!(n_i * ahead <= (n_i - 1) * total,
                        "ahead by {}/{} picks after {}", ahead, total, k);
                    prop_assert!(lcm * -ahead <= total * (lcm_harmonic - lcm),
                        "behind by {}/{} picks after {}", -ahead, total, k);
                }
            }
        }

        /// With one caller, the cursor skip never loses a race, so over each
        /// `sum of eligible weights` picks the eligible backends take exactly
        /// their weight: the tolerance is zero, from any starting cursor.
        #[test]
        fn ineligible_subset_leaves_weighted_shares_among_the_rest(
            (weights, mask) in weights_and_mask(),
            warmup in 0usize..1000,
            rounds in 1u32..4,
        ) {
            let eligible_total: u32 =
                weights.iter().zip(&mask).filter(|&(_, &e)| e).map(|(&w, _)| w).sum();
            prop_assume!(eligible_total > 0);
            let wrr = WeightedRoundRobin::new(&pool(&weights));
            picks(&wrr, warmup, &|_| true);
            let mut counts = vec![0u32; weights.len()];
            for id in picks(&wrr, (rounds * eligible_total) as usize, &|id| mask[id.0]) {
                counts[id] += 1;
            }
            let expected: Vec<u32> =
                weights.iter().zip(&mask).map(|(&w, &e)| if e { rounds * w } else { 0 }).collect();
            prop_assert_eq!(counts, expected);
        }
    }

    fn gcd_i128(a: i128, b: i128) -> i128 {
        if b == 0 {
            a
        } else {
            gcd_i128(b, a % b)
        }
    }
}
