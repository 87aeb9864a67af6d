//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), weighted after Katran.
//!
//! A lookup table of a prime size `M` maps a key's hash to a backend; a pick
//! with the key's backend eligible is one hash and one table read. Each
//! backend owns a permutation of the slots, `offset + j·skip mod M`, drawn
//! from a hash of its name (so it does not depend on its position in the
//! pool), and backends take turns claiming their next free preferred slot
//! until the table is full. Removing a backend frees its slots, and most other
//! slots keep their owner: about 1/N of the keys move, plus a little. At 100
//! slots per backend that little is at most 3.5 points of all keys for equal
//! weights (every N in 3..=50 measured), more with unequal weights in small
//! pools; `EXTRA_DISRUPTION` in the tests has the figures.
//!
//! Weights: Katran's idea (`MaglevHashV2`), backends taking turns in
//! proportion to weight, with exact turn times: a backend's k-th claim falls
//! due at time `k / weight`, ties going by a hash of the name. Katran counts
//! credits against the largest weight, so removing the heaviest backend
//! reshuffles every other backend's turns; here a backend's turns depend on
//! nothing but its own weight and name, and removing a backend only deletes
//! its turns. A backend's share of the table is its share of the weight to
//! within `2 + 2n·w/T` slots (`slots_follow_the_weights`). With weights far
//! apart and a small table a light backend may own no slot (weight 1 beside
//! weight 256 at 100 slots per backend); it then takes keys only when heavier
//! ones are ineligible.
//!
//! Size: the smallest prime ≥ 100 × backends and ≥ 101 ([`table_size`]), so
//! every backend's share is resolved to about 1% of it. Keys stay only while
//! the size stays: a table of another size sends nearly every key elsewhere.
//! A rebuild after a backend is removed should therefore keep the old size
//! ([`Maglev::with_table_size`]; the old size is still ≥ 100 × the new count).
//!
//! Ineligible backends at pick time: the key rehashes, taking the slot of
//! the next output of a splitmix64 stream seeded by the key, up to 16 times,
//! then weighted rendezvous hashing over the eligible backends (the same
//! machinery as `source_hash`, documented there). Only the keys of the
//! ineligible backend move, and each moved key lands on a fresh random slot,
//! so they spread over the others in proportion to their slots. We did not
//! probe forward from the slot: every key of one slot would land on the same
//! neighbour, and a long run of an ineligible backend's slots would send a
//! lump of keys to whoever follows it.
//!
//! The table is built by a pure function ([`build_table`]) and two tables
//! compare by another ([`table_delta`]), as in Katran's `CHHelpers`: the
//! daemon can report how many slots a change moved, and the future XDP fast
//! path can load the very same table.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::source_hash::{mix64, pick_by_rehash, reduce};
use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// An empty slot while the table fills.
const EMPTY: u32 = u32::MAX;

/// Seeds that make two independent hashes of a backend's name.
const OFFSET_SEED: u64 = 0x6D61_676C_6576_6F66; // "maglevof"
const SKIP_SEED: u64 = 0x6D61_676C_6576_736B; // "maglevsk"

/// The table size for `backends` backends: the smallest prime that is at
/// least `100 × backends` and at least 101.
pub fn table_size(backends: usize) -> usize {
    let mut size = backends.saturating_mul(100).max(101);
    while !is_prime(size) {
        size += 1;
    }
    size
}

fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    (3..).step_by(2).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// FNV-1a, 64 bits: a hash of a name that every node and every release
/// computes alike (unlike `std`'s `DefaultHasher`), finished by `mix64`.
fn name_hash(name: &str, seed: u64) -> u64 {
    let fnv =
        name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3));
    mix64(fnv ^ seed)
}

/// Builds the Maglev lookup table of `size` slots over `backends`: slot `i`
/// holds the index in `backends` of the backend that owns it.
///
/// Pure: the same names, weights and size give the same table, on any node.
/// Permutations hang on names, not indexes, so a backend keeps its slots when
/// others are added or removed. Weights of 0 count as 1. `size` should be a
/// prime (see [`table_size`]); any other size still fills every slot, since
/// each skip is made coprime with it. Returns an empty table for no backends
/// or a size of 0. Costs `size` turns taken from a heap (O(size × log
/// backends)) plus the slot probes, O(size × log size) in all (about 13 ms
/// at 1000 backends in a release build, off the hot path).
pub fn build_table(backends: &[Backend], size: usize) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    // (next preferred slot, skip) per backend.
    let mut cursor: Vec<(usize, usize)> = backends
        .iter()
        .map(|b| {
            let offset = (name_hash(&b.name, OFFSET_SEED) % size as u64) as usize;
            let mut skip =
                if size > 1 { (name_hash(&b.name, SKIP_SEED) % (size as u64 - 1)) as usize + 1 } else { 1 };
            while gcd(skip, size) != 1 {
                skip = skip % (size - 1) + 1;
            }
            (offset, skip)
        })
        .collect();
    let mut turns: BinaryHeap<Reverse<Turn>> = backends
        .iter()
        .enumerate()
        .map(|(index, b)| {
            Reverse(Turn {
                claims: 1,
                weight: u64::from(b.weight.max(1)),
                order: name_hash(&b.name, 0),
                index,
            })
        })
        .collect();
    let mut table = vec![EMPTY; size];
    for _ in 0..size {
        let Some(Reverse(turn)) = turns.pop() else { break };
        // The permutation visits every slot (skip is coprime with size), so a
        // free one turns up while the table is not full.
        let (slot, skip) = &mut cursor[turn.index];
        while table[*slot] != EMPTY {
            *slot = (*slot + *skip) % size;
        }
        table[*slot] = turn.index as u32;
        *slot = (*slot + *skip) % size;
        turns.push(Reverse(Turn { claims: turn.claims + 1, ..turn }));
    }
    table
}

/// A backend's next turn to claim a slot while a table fills: its `claims`-th
/// claim falls due at time `claims / weight`, so over any stretch of time
/// backends claim in proportion to weight. Turns are ordered by that time,
/// exactly (by cross multiplication), then by a hash of the name, then by
/// position: a backend's turns never depend on another's weight or place.
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    /// Which claim this is, from 1.
    claims: u64,
    weight: u64,
    /// Breaks ties in time the same way whatever the order of the backends.
    order: u64,
    /// Position in the backends, the last resort between equal names.
    index: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.claims) * u128::from(other.weight))
            .cmp(&(u128::from(other.claims) * u128::from(self.weight)))
            .then(self.order.cmp(&other.order))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The slots whose owner differs between `old` and `new`, ascending; slots
/// that only one table has count as changed. Both tables must name backends
/// the same way: tables built over different backend lists are compared by
/// mapping their indexes to names (or addresses) first.
pub fn table_delta<T: PartialEq>(old: &[T], new: &[T]) -> Vec<usize> {
    (0..old.len().max(new.len())).filter(|&slot| old.get(slot) != new.get(slot)).collect()
}

/// Maglev consistent hashing over a pool's backends, weighted by their
/// configured weight.
///
/// Built from a snapshot of the pool; rebuild it when backends or weights
/// change. The view's effective weight is not used: a key's backend must not
/// change while slow start ramps a weight up.
#[derive(Debug)]
pub struct Maglev {
    /// Configured weights, for the rendezvous fallback.
    weights: Vec<u32>,
    /// The lookup table: slot → index of the backend.
    table: Vec<u32>,
}

impl Maglev {
    /// Builds the selector over `backends`, whose ids must be their indexes,
    /// with a table of [`table_size`]`(backends.len())` slots.
    pub fn new(backends: &[Backend]) -> Self {
        Self::with_table_size(backends, table_size(backends.len()))
    }

    /// Builds the selector with a table of `size` slots (at least 1): pass the
    /// previous table's size on a rebuild that does not need a larger one, so
    /// that keys stay where they were.
    pub fn with_table_size(backends: &[Backend], size: usize) -> Self {
        debug_assert!(backends.iter().enumerate().all(|(i, b)| b.id == BackendId(i)));
        let weights = backends.iter().map(|b| b.weight).collect();
        Self { weights, table: build_table(backends, size.max(1)) }
    }

    /// The lookup table: slot → index of the backend (for diffs and the daemon).
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl Selector for Maglev {
    /// Returns `key`'s backend: the same one for the same key while the
    /// eligible set is unchanged, `None` only when none is eligible. With the
    /// first choice eligible: one hash, one table read, one predicate call.
    fn pick(&self, key: u64, view: &dyn PoolView) -> Option<BackendId> {
        pick_by_rehash(key, view, &self.weights, |hash| {
            BackendId(self.table[reduce(hash, self.table.len())] as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testkit::{self, Rng, SimView};
    use super::*;

    /// `backends` without the one at `removed`, ids renumbered, names kept.
    fn without(backends: &[Backend], removed: usize) -> Vec<Backend> {
        let mut rest: Vec<Backend> = backends.to_vec();
        rest.remove(removed);
        for (i, b) in rest.iter_mut().enumerate() {
            b.id = BackendId(i);
        }
        rest
    }

    fn names<'a>(table: &[u32], backends: &'a [Backend]) -> Vec<&'a str> {
        table.iter().map(|&i| backends[i as usize].name.as_str()).collect()
    }

    #[test]
    fn table_sizes_are_the_smallest_primes_past_100_per_backend() {
        assert_eq!(table_size(0), 101);
        assert_eq!(table_size(1), 101);
        assert_eq!(table_size(2), 211);
        assert_eq!(table_size(10), 1009);
        assert_eq!(table_size(100), 10007);
        assert_eq!(table_size(1000), 100_003);
    }

    #[test]
    fn table_is_full_and_the_same_every_time() {
        let backends = testkit::pool(&[1, 2, 3, 4, 5, 6, 7]);
        let table = build_table(&backends, table_size(7));
        assert_eq!(table.len(), 701);
        assert!(table.iter().all(|&i| (i as usize) < backends.len()));
        assert_eq!(table, build_table(&backends, 701));
    }

    #[test]
    fn a_composite_size_still_fills() {
        let backends = testkit::pool(&[1, 3]);
        for size in [1, 2, 4, 100, 1000] {
            let table = build_table(&backends, size);
            assert_eq!(table.len(), size);
            assert!(table.iter().all(|&i| i < 2));
        }
    }

    #[test]
    fn the_order_of_the_backends_does_not_matter() {
        // Permutations and ties hang on names, so listing the same backends
        // in another order gives the same owner for every slot.
        let backends = testkit::pool(&[1, 2, 1, 3]);
        let mut reversed: Vec<Backend> = backends.iter().rev().cloned().collect();
        for (i, b) in reversed.iter_mut().enumerate() {
            b.id = BackendId(i);
        }
        assert_eq!(
            names(&build_table(&backends, 401), &backends),
            names(&build_table(&reversed, 401), &reversed)
        );
    }

    #[test]
    fn table_delta_lists_changed_slots() {
        assert_eq!(table_delta(&[0, 1, 2, 3], &[0, 2, 2, 1]), [1, 3]);
        assert_eq!(table_delta(&[0, 1], &[0, 1, 1]), [2]);
        assert!(table_delta::<u32>(&[], &[]).is_empty());
    }

    #[test]
    fn weights_256_and_1_may_leave_the_light_backend_without_slots() {
        let backends = testkit::pool(&[256, 256, 1]);
        let table = build_table(&backends, table_size(3));
        assert!(table.iter().filter(|&&i| i == 2).count() <= 1);
        // It still takes every key once it is the only one eligible.
        let maglev = Maglev::new(&backends);
        let mut view = SimView::new(&[256, 256, 1], 1);
        view.mask = vec![false, false, true];
        for key in 0..200 {
            assert_eq!(maglev.pick(key, &view), Some(BackendId(2)));
        }
    }

    #[test]
    fn single_backend_takes_every_key_while_eligible() {
        let maglev = Maglev::new(&testkit::pool(&[4]));
        let mut view = SimView::new(&[4], 1);
        for key in 0..100 {
            assert_eq!(maglev.pick(key, &view), Some(BackendId(0)));
        }
        view.mask = vec![false];
        assert_eq!(maglev.pick(5, &view), None);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let maglev = Maglev::new(&[]);
        assert!(maglev.table().is_empty());
        assert_eq!(maglev.pick(1, &|_: BackendId| true), None);
    }

    #[test]
    fn same_key_same_backend_whatever_the_counters() {
        let weights = [3u32, 1, 4, 1, 5];
        let maglev = Maglev::new(&testkit::pool(&weights));
        let view = SimView::new(&weights, 1);
        let mut busy = SimView::new(&[1; 5], 2);
        busy.sessions = vec![50, 0, 7, 1, 90];
        let mut rng = Rng(3);
        for _ in 0..1000 {
            let key = rng.next_u64();
            assert_eq!(maglev.pick(key, &view), maglev.pick(key, &busy));
        }
    }

    /// How many slots each backend owns.
    fn slot_counts(table: &[u32], backends: usize) -> Vec<u64> {
        let mut counts = vec![0u64; backends];
        for &i in table {
            counts[i as usize] += 1;
        }
        counts
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_backend_and_none_iff_none_eligible(
            (weights, mask) in testkit::weights_and_mask(50, 256),
            seed in any::<u64>(),
        ) {
            let maglev = Maglev::new(&testkit::pool(&weights));
            testkit::check_eligibility(&maglev, &weights, &mask, seed)?;
        }

        /// When the table fills at time t, a backend has made its claims due
        /// by t, ⌊t·w⌋ or one fewer (a claim due at t exactly may be pending),
        /// so t·w − 2 < count ≤ t·w and t·T − 2n < M ≤ t·T; hence
        /// `count − M·w/T` lies within −2 and 2n·w/T slots.
        #[test]
        fn slots_follow_the_weights(weights in proptest::collection::vec(1u32..=256, 1..=50)) {
            let n = weights.len();
            let size = table_size(n);
            let table = build_table(&testkit::pool(&weights), size);
            let total: u32 = weights.iter().sum();
            for (i, (&count, &w)) in slot_counts(&table, n).iter().zip(&weights).enumerate() {
                let expected = size as f64 * f64::from(w) / f64::from(total);
                let bound = 2.0 + 2.0 * n as f64 * f64::from(w) / f64::from(total);
                prop_assert!((count as f64 - expected).abs() <= bound + 1e-9,
                    "backend {} weight {}: {} slots, expected {:.1} ± {:.1}", i, w, count, expected, bound);
            }
        }

        /// Keys share the table by slots, so their shares are the slot shares
        /// (within (2 + 2n) / M of the weight shares, as above) plus sampling
        /// error (`testkit::sampling_tolerance`).
        #[test]
        fn keys_follow_the_weights(
            weights in proptest::collection::vec(1u32..=256, 1..=20),
            seed in any::<u64>(),
        ) {
            let n = weights.len();
            let maglev = Maglev::new(&testkit::pool(&weights));
            let counts = testkit::key_counts(&maglev, &weights, 50_000, seed);
            let granularity = (2 + 2 * n) as f64 / table_size(n) as f64;
            testkit::check_shares(&counts, &weights, testkit::sampling_tolerance(50_000) + granularity)?;
        }

        /// Going ineligible moves only that backend's keys.
        #[test]
        fn only_the_keys_of_ineligible_backends_move(
            (weights, mask) in testkit::weights_and_mask(20, 256),
            seed in any::<u64>(),
        ) {
            prop_assume!(mask.iter().any(|&e| e));
            let maglev = Maglev::new(&testkit::pool(&weights));
            let all = SimView::new(&weights, seed);
            let mut some = SimView::new(&weights, seed);
            some.mask = mask.clone();
            let mut rng = Rng(seed);
            for _ in 0..10_000 {
                let key = rng.next_u64();
                let before = maglev.pick(key, &all);
                prop_assert!(before.is_some());
                if before.is_some_and(|id| mask[id.0]) {
                    prop_assert_eq!(maglev.pick(key, &some), before);
                }
            }
        }

        /// The Maglev promise, on keys: rebuild the table (same size) without
        /// one of N equally weighted backends and at most 1/N of 10 000
        /// random keys move, plus `EXTRA_DISRUPTION` (see there), plus six
        /// standard deviations of sampling (6·√(p(1 − p)/10 000), p = 1/N:
        /// at most 2.8 points); keys of the surviving backends move only by
        /// the extra disruption.
        #[test]
        fn removing_one_of_n_backends_moves_about_one_nth_of_keys(
            n in 3usize..=50,
            removed_seed in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let backends = testkit::pool(&vec![1; n]);
            let removed = Rng(removed_seed).below(n);
            let rest = without(&backends, removed);
            let size = table_size(n);
            let before = Maglev::with_table_size(&backends, size);
            let after = Maglev::with_table_size(&rest, size);
            let all = SimView::new(&vec![1; n], seed);
            let all_rest = SimView::new(&vec![1; n - 1], seed);
            let mut rng = Rng(seed);
            let (keys, mut moved, mut survivors, mut survivors_moved) = (10_000u32, 0u32, 0u32, 0u32);
            for _ in 0..keys {
                let key = rng.next_u64();
                let (Some(was), Some(is)) = (before.pick(key, &all), after.pick(key, &all_rest)) else {
                    return Err(TestCaseError::fail("no pick"));
                };
                let (was, is) = (&backends[was.0].name, &rest[is.0].name);
                moved += u32::from(was != is);
                if was != &backends[removed].name {
                    survivors += 1;
                    survivors_moved += u32::from(was != is);
                }
            }
            let p = 1.0 / n as f64;
            let sampling = 6.0 * (p * (1.0 - p) / f64::from(keys)).sqrt();
            let bound = p + EXTRA_DISRUPTION + sampling;
            let moved = f64::from(moved) / f64::from(keys);
            prop_assert!(moved <= bound, "{:.4} of keys moved, bound {:.4}", moved, bound);
            // A survivor's key moves with probability at most EXTRA_DISRUPTION.
            let q = EXTRA_DISRUPTION;
            let bound = q + 6.0 * (q * (1.0 - q) / f64::from(survivors)).sqrt();
            let survivors_moved = f64::from(survivors_moved) / f64::from(survivors);
            prop_assert!(survivors_moved <= bound,
                "{:.4} of surviving backends' keys moved, bound {:.4}", survivors_moved, bound);
        }

        /// The same with weights 1..=256: the removed backend's share of the
        /// weight moves, plus `WEIGHTED_EXTRA_DISRUPTION`, measured on slots.
        #[test]
        fn removing_a_weighted_backend_moves_about_its_share(
            weights in proptest::collection::vec(1u32..=256, 3..=50),
            removed_seed in any::<u64>(),
        ) {
            let removed = Rng(removed_seed).below(weights.len());
            let share = f64::from(weights[removed]) / f64::from(weights.iter().sum::<u32>());
            let (moved, survivors_moved) = disruption(&weights, removed);
            prop_assert!(moved <= share + WEIGHTED_EXTRA_DISRUPTION,
                "{:.4} of slots moved removing share {:.4}", moved, share);
            prop_assert!(survivors_moved <= WEIGHTED_EXTRA_DISRUPTION,
                "{:.4} of surviving backends' slots moved", survivors_moved);
        }
    }

    /// How much more than the removed backend's own keys may move when a
    /// backend is removed from N equally weighted ones (N in 3..=50), as a
    /// share of all keys; and how much of the surviving backends' keys may move.
    ///
    /// Maglev does not promise minimal disruption: freeing a backend's slots
    /// changes which free slot later claimants find, so a few slots change
    /// hands between survivors. How many depends on the table's density,
    /// not on N: measured exhaustively (every N in 3..=50, every backend
    /// removed) at 100 slots per backend, at most 3.5 points of all keys and
    /// 3.9% of the survivors' keys (mean 2.2 points); at 1000 slots per
    /// backend it falls to under 1 point. The bound is the worst measured,
    /// rounded up; `removing_any_one_of_3_to_50_equal_backends` checks it on
    /// every case, so it cannot be a lucky draw.
    const EXTRA_DISRUPTION: f64 = 0.04;

    /// The same for weights 1..=256. Unequal weights disrupt more, mostly in
    /// small pools: over 45 000 random pools the worst was 8.5 points of all
    /// keys and 9.4% of survivors' keys, all at N = 3 (a 307-slot table
    /// shared by two survivors); above N = 3 the worst was under 6 points.
    /// The bound leaves 2.5 points over the worst measured.
    const WEIGHTED_EXTRA_DISRUPTION: f64 = 0.12;

    /// Rebuilds the table without backend `removed` at the same size and
    /// returns the share of slots that changed owner and the share of the
    /// surviving backends' slots that did.
    fn disruption(weights: &[u32], removed: usize) -> (f64, f64) {
        let backends = testkit::pool(weights);
        let rest = without(&backends, removed);
        let size = table_size(weights.len());
        let old = names(&build_table(&backends, size), &backends);
        let new = names(&build_table(&rest, size), &rest);
        let delta = table_delta(&old, &new);
        let own = old.iter().filter(|&&name| name == backends[removed].name).count();
        let survivors_moved = (delta.len() - own) as f64 / (size - own) as f64;
        (delta.len() as f64 / size as f64, survivors_moved)
    }

    /// The Maglev promise on the exact key space (slots), every case: removing
    /// any one of N equal backends, N in 3..=50, changes at most 1/N of the
    /// slots plus `EXTRA_DISRUPTION`, and every slot of the removed backend
    /// is among them.
    #[test]
    fn removing_any_one_of_3_to_50_equal_backends() {
        for n in 3..=50 {
            for removed in 0..n {
                let (moved, survivors_moved) = disruption(&vec![1; n], removed);
                let bound = 1.0 / n as f64 + EXTRA_DISRUPTION;
                assert!(
                    moved <= bound,
                    "n {n}, removed {removed}: {moved:.4} of slots moved, bound {bound:.4}"
                );
                assert!(
                    survivors_moved <= EXTRA_DISRUPTION,
                    "n {n}, removed {removed}: {survivors_moved:.4} of survivors' slots moved"
                );
            }
        }
    }

    #[test]
    fn a_rebuild_at_another_size_moves_nearly_every_key() {
        // Why `with_table_size` exists: a 4-backend table resized for 3.
        let backends = testkit::pool(&[1; 4]);
        let rest = without(&backends, 3);
        let old = names(&build_table(&backends, table_size(4)), &backends);
        let new = names(&build_table(&rest, table_size(3)), &rest);
        let (before, after) =
            (Maglev::with_table_size(&backends, old.len()), Maglev::with_table_size(&rest, new.len()));
        let (all, all_rest) = (SimView::new(&[1; 4], 1), SimView::new(&[1; 3], 1));
        let mut rng = Rng(1);
        let moved = (0..10_000)
            .filter(|_| {
                let key = rng.next_u64();
                let was = before.pick(key, &all).map(|id| backends[id.0].name.clone());
                let is = after.pick(key, &all_rest).map(|id| rest[id.0].name.clone());
                was != is
            })
            .count();
        assert!(moved > 5_000, "{moved} of 10000 keys moved");
    }
}
