//! Source hashing: a session's key (the client address, by default) names
//! its backend, so a client returns to the same one without any table.
//!
//! How: the key seeds a splitmix64 stream; each output is one weighted draw
//! from an alias table (Vose's method, in integers), which hands out backends
//! in exact proportion to weight. The first draw is the key's backend. If that
//! backend is ineligible, the next draw is taken, and so on: a key whose first
//! draw is eligible never moves, so when a backend goes down only its own keys
//! move, and they spread over the others in proportion to weight (each later
//! draw is a fresh weighted draw). When it comes back up, they return.
//!
//! After `REHASHES` ineligible draws (the chance is `f^16` with `f` the
//! ineligible share of the weight: 1.5e-5 at one half) the key goes to weighted
//! rendezvous hashing over the eligible backends, which is deterministic, still
//! weighted, and finds a backend whenever one is eligible, at O(backends).
//!
//! Why not a ring or HAProxy's map: a pick with every backend eligible is one
//! hash and two table reads, the table is two words per backend, and shares are
//! exact rather than approximated by slots. The price: adding or removing a
//! backend rebuilds the alias table and moves most keys. Use `maglev` where
//! the pool's membership changes and keys should stay.
//!
//! Why hand-written: the draws must be the same on every node and in every
//! release (a cluster's nodes must agree where a key goes), which rules out
//! `std`'s `DefaultHasher` (its algorithm is unspecified) and a global RNG;
//! splitmix64 and the alias method are a few lines each and have no crate
//! worth a dependency. `maglev` and `random_two_choices` share these pieces.

use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// Draws after the first before a key falls back to rendezvous hashing.
pub(super) const REHASHES: usize = 16;

/// splitmix64's increment, 2^64 / φ.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function (Stafford's Mix13): a bijection that spreads
/// every input bit over every output bit, so structured keys (consecutive
/// addresses) give unrelated hashes.
pub(super) fn mix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `hash` scaled to `0..n` by its high bits (Lemire's multiply-shift): no
/// division, and a bias of at most n / 2^64.
pub(super) fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// Weighted draws in O(1): Vose's alias method, in integers so that shares
/// are exact. Column `i` holds `own[i]` of `total` for backend `i` and the
/// rest for `alias[i]`; with `n` columns each backend's mass is
/// `weight × n` units of `n × total`, so its share is `weight / total`.
#[derive(Debug)]
pub(super) struct Alias {
    /// A draw landing in column `i` with a coin below this takes backend `i`.
    own: Vec<u64>,
    /// The backend that takes the rest of column `i`.
    alias: Vec<u32>,
    /// The sum of the weights: every column's capacity.
    total: u64,
}

impl Alias {
    /// Builds the table for `weights`, raising any weight of 0 to 1 so that
    /// every backend can be drawn.
    pub(super) fn new(weights: &[u32]) -> Self {
        let n = weights.len() as u64;
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let mut mass: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1)) * n).collect();
        let mut own = vec![total; weights.len()];
        let mut alias: Vec<u32> = (0..weights.len()).map(|i| i as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..weights.len()).partition(|&i| mass[i] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            // Column s: its own mass, topped up from l. What is left of l
            // (still ≥ 0, since l held at least a whole column) is sorted again.
            own[s] = mass[s];
            alias[s] = l as u32;
            mass[l] -= total - mass[s];
            if mass[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // What remains holds exactly one column each (the masses add up to
        // n × total), so it keeps its own column whole: `own` is already total.
        Self { own, alias, total }
    }

    /// The backend drawn by `hash`: its high 32 bits choose the column and
    /// its low 32 bits toss the coin, so the two are independent.
    pub(super) fn draw(&self, hash: u64) -> BackendId {
        let column = reduce(hash & 0xFFFF_FFFF_0000_0000, self.own.len());
        let coin = ((u128::from(hash & 0xFFFF_FFFF) * u128::from(self.total)) >> 32) as u64;
        if coin < self.own[column] {
            BackendId(column)
        } else {
            BackendId(self.alias[column] as usize)
        }
    }
}

/// The first eligible backend among `lookup`'s answers for the successive
/// outputs of a splitmix64 stream seeded by `key`; after `1 + REHASHES`
/// ineligible answers, weighted rendezvous over `weights`. `None` only when
/// no backend is eligible; `weights` must be non-empty for `lookup` to be
/// called. Deterministic: the same key, table and eligibility give the same
/// backend.
pub(super) fn pick_by_rehash(
    key: u64,
    view: &dyn PoolView,
    weights: &[u32],
    lookup: impl Fn(u64) -> BackendId,
) -> Option<BackendId> {
    if weights.is_empty() {
        return None;
    }
    let mut state = key;
    for _ in 0..=REHASHES {
        state = state.wrapping_add(GOLDEN);
        let id = lookup(mix64(state));
        if view.eligible(id) {
            return Some(id);
        }
    }
    rendezvous(key, weights, view)
}

/// Weighted rendezvous hashing (Schindelhauer and Schomaker's weighted
/// variant): every eligible backend draws `−ln(u) / weight` with `u` uniform
/// in (0, 1] from a hash of (key, backend), and the least wins. These are
/// exponential variables of rate `weight`, so backend `i` wins with
/// probability `weight_i / Σ weights` of the eligible ones; and a backend
/// going ineligible moves only the keys it had won.
pub(super) fn rendezvous(key: u64, weights: &[u32], view: &dyn PoolView) -> Option<BackendId> {
    let mut best: Option<(BackendId, f64)> = None;
    for (i, &weight) in weights.iter().enumerate() {
        let id = BackendId(i);
        if !view.eligible(id) {
            continue;
        }
        let hash = mix64(key ^ mix64((i as u64).wrapping_add(GOLDEN)));
        // 53 random bits, shifted into (0, 1] so the logarithm is finite.
        let unit = ((hash >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let score = -unit.ln() / f64::from(weight.max(1));
        if best.is_none_or(|(_, best_score)| score < best_score) {
            best = Some((id, score));
        }
    }
    best.map(|(id, _)| id)
}

/// Source hashing over a pool's backends, weighted by their configured weight.
///
/// Built from a snapshot of the pool; rebuild it when backends or weights
/// change (which moves most keys). The view's effective weight is not used: a
/// key's backend must not change while slow start ramps a weight up.
#[derive(Debug)]
pub struct SourceHash {
    /// Configured weights, for the rendezvous fallback.
    weights: Vec<u32>,
    /// The first-choice draw of every key.
    alias: Alias,
}

impl SourceHash {
    /// Builds the selector over `backends`, whose ids must be their indexes.
    pub fn new(backends: &[Backend]) -> Self {
        debug_assert!(backends.iter().enumerate().all(|(i, b)| b.id == BackendId(i)));
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let alias = Alias::new(&weights);
        Self { weights, alias }
    }
}

impl Selector for SourceHash {
    /// Returns `key`'s backend: the same one for the same key while the
    /// eligible set is unchanged, `None` only when none is eligible. With the
    /// first choice eligible: one hash, two table reads, one predicate call.
    fn pick(&self, key: u64, view: &dyn PoolView) -> Option<BackendId> {
        pick_by_rehash(key, view, &self.weights, |hash| self.alias.draw(hash))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testkit::{self, Rng, SimView};
    use super::*;

    #[test]
    fn alias_table_holds_every_weight_exactly() {
        let weights = [5u32, 1, 1, 3, 256, 7];
        let alias = Alias::new(&weights);
        let n = weights.len() as u64;
        let mut mass = vec![0u64; weights.len()];
        for (column, (&own, &other)) in alias.own.iter().zip(&alias.alias).enumerate() {
            mass[column] += own;
            mass[other as usize] += alias.total - own;
        }
        let expected: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
        assert_eq!(mass, expected);
    }

    #[test]
    fn same_key_same_backend() {
        let weights = [1u32, 2, 3, 4, 5];
        let sh = SourceHash::new(&testkit::pool(&weights));
        let view = SimView::new(&weights, 1);
        let mut rng = Rng(7);
        for _ in 0..1000 {
            let key = rng.next_u64();
            let first = sh.pick(key, &view);
            assert!(first.is_some());
            assert_eq!(sh.pick(key, &view), first);
            // Sessions and effective weights do not move keys.
            let mut busy = SimView::new(&[1; 5], 1);
            busy.sessions = vec![100, 0, 5, 9, 1];
            assert_eq!(sh.pick(key, &busy), first);
        }
    }

    #[test]
    fn single_backend_takes_every_key_while_eligible() {
        let sh = SourceHash::new(&testkit::pool(&[9]));
        let mut view = SimView::new(&[9], 1);
        for key in 0..100 {
            assert_eq!(sh.pick(key, &view), Some(BackendId(0)));
        }
        view.mask = vec![false];
        assert_eq!(sh.pick(3, &view), None);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let sh = SourceHash::new(&[]);
        assert_eq!(sh.pick(1, &|_: BackendId| true), None);
    }

    #[test]
    fn keys_fall_back_to_rendezvous_when_nearly_all_weight_is_down() {
        // Only the lightest of 3 backends is up: 1/513 of the weight, so
        // nearly every key exhausts its draws and rendezvous must find it.
        let sh = SourceHash::new(&testkit::pool(&[256, 256, 1]));
        let mut view = SimView::new(&[256, 256, 1], 1);
        view.mask = vec![false, false, true];
        for key in 0..1000 {
            assert_eq!(sh.pick(key, &view), Some(BackendId(2)));
        }
    }

    #[test]
    fn rendezvous_follows_the_weights() {
        let weights = [1u32, 2, 5];
        let view = SimView::new(&weights, 1);
        let mut counts = [0u64; 3];
        let mut rng = Rng(11);
        for _ in 0..50_000 {
            if let Some(id) = rendezvous(rng.next_u64(), &weights, &view) {
                counts[id.0] += 1;
            }
        }
        testkit::check_shares(&counts, &weights, testkit::sampling_tolerance(50_000)).unwrap();
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_backend_and_none_iff_none_eligible(
            (weights, mask) in testkit::weights_and_mask(50, 256),
            seed in any::<u64>(),
        ) {
            let sh = SourceHash::new(&testkit::pool(&weights));
            testkit::check_eligibility(&sh, &weights, &mask, seed)?;
        }

        /// The draws are exact shares of a uniform hash, so only sampling
        /// error remains: see `testkit::sampling_tolerance`.
        #[test]
        fn keys_follow_the_weights(
            weights in proptest::collection::vec(1u32..=256, 1..=20),
            seed in any::<u64>(),
        ) {
            let sh = SourceHash::new(&testkit::pool(&weights));
            let counts = testkit::key_counts(&sh, &weights, 50_000, seed);
            testkit::check_shares(&counts, &weights, testkit::sampling_tolerance(50_000))?;
        }

        /// Taking backends out of service moves exactly the keys they held:
        /// every other key stays where it was, and the moved keys spread over
        /// the rest in proportion to weight.
        #[test]
        fn only_the_keys_of_ineligible_backends_move(
            (weights, mask) in testkit::weights_and_mask(20, 256),
            seed in any::<u64>(),
        ) {
            prop_assume!(mask.iter().any(|&e| e));
            let sh = SourceHash::new(&testkit::pool(&weights));
            let all = SimView::new(&weights, seed);
            let mut some = SimView::new(&weights, seed);
            some.mask = mask.clone();
            let mut rng = Rng(seed);
            let mut moved_to = vec![0u64; weights.len()];
            for _ in 0..10_000 {
                let key = rng.next_u64();
                let (before, after) = (sh.pick(key, &all), sh.pick(key, &some));
                let (Some(before), Some(after)) = (before, after) else {
                    return Err(TestCaseError::fail("no pick"));
                };
                if mask[before.0] {
                    prop_assert_eq!(before, after);
                } else {
                    moved_to[after.0] += 1;
                }
            }
            if moved_to.iter().sum::<u64>() >= 5_000 {
                let eligible: Vec<u32> =
                    weights.iter().zip(&mask).map(|(&w, &e)| if e { w } else { 0 }).collect();
                let tolerance = testkit::sampling_tolerance(moved_to.iter().sum::<u64>() as usize);
                testkit::check_shares(&moved_to, &eligible, tolerance)?;
            }
        }
    }
}
