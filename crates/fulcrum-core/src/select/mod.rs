//! Selectors: one balancing algorithm per file behind one trait.
//!
//! A selector is built from an immutable snapshot of a pool's backends and
//! answers "which backend next?" among those the caller calls eligible. It
//! keeps only the state its algorithm needs (a cursor, a ring); live counters
//! (sessions, health) belong to the pool, so they survive a selector rebuild.
//! Picks take `&self` and never lock: the daemon calls them from every worker.

use crate::model::{Algorithm, Backend, BackendId};

mod least_connections;
mod least_load;
mod maglev;
mod random_two_choices;
mod round_robin;
mod source_hash;
mod weighted_round_robin;

pub use least_connections::LeastConnections;
pub use least_load::LeastLoad;
pub use maglev::{build_table, table_delta, table_size, Maglev};
pub use random_two_choices::RandomTwoChoices;
pub use round_robin::RoundRobin;
pub use source_hash::SourceHash;
pub use weighted_round_robin::WeightedRoundRobin;

/// What a selector may know of its pool's live state at the moment of a pick.
/// The daemon implements it over the pool's atomics; tests over plain data.
/// Randomness comes in here too, so selectors stay deterministic under test.
pub trait PoolView {
    /// Whether `id` may take a new session now: health up and not ejected,
    /// target state enabled, under its connection limit.
    fn eligible(&self, id: BackendId) -> bool;
    /// Sessions open on `id` now (tcp connections, in-flight http exchanges).
    fn sessions(&self, _id: BackendId) -> u64 {
        0
    }
    /// The effective weight of `id` now: its configured weight, ramped down
    /// during slow start; at least 1.
    fn weight(&self, _id: BackendId) -> u32 {
        1
    }
    /// How loaded `id` is by its agent's last report, from 0.0 (idle) to 1.0
    /// (at capacity); `None` without a report.
    fn load(&self, _id: BackendId) -> Option<f64> {
        None
    }
    /// A fresh random number for algorithms that draw.
    fn random(&self) -> u64 {
        0
    }
}

/// A bare eligibility predicate is a view with no counters.
impl<F: Fn(BackendId) -> bool> PoolView for F {
    fn eligible(&self, id: BackendId) -> bool {
        self(id)
    }
}

/// A balancing algorithm over one pool, with HAProxy's feedback hooks.
pub trait Selector: Send + Sync {
    /// Picks a backend for a new session among those `view` calls eligible.
    ///
    /// `key` is the session's hash key where the algorithm uses one (source
    /// address, header value). Returns `None` only when no backend is eligible.
    fn pick(&self, key: u64, view: &dyn PoolView) -> Option<BackendId>;

    /// A backend came up. Default: nothing, the eligibility predicate covers it.
    fn backend_up(&self, _id: BackendId) {}
    /// A backend went down.
    fn backend_down(&self, _id: BackendId) {}
    /// A session was opened on `id`.
    fn session_opened(&self, _id: BackendId) {}
    /// A session on `id` closed.
    fn session_closed(&self, _id: BackendId) {}
}

/// Builds the selector of `algorithm` over `backends` (ids are their indexes).
pub fn build(algorithm: Algorithm, backends: &[Backend]) -> Box<dyn Selector> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(backends)),
        Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(backends)),
        Algorithm::LeastConnections => Box::new(LeastConnections::new(backends)),
        Algorithm::LeastLoad => Box::new(LeastLoad::new(backends)),
        Algorithm::RandomTwoChoices => Box::new(RandomTwoChoices::new(backends)),
        Algorithm::SourceHash => Box::new(SourceHash::new(backends)),
        Algorithm::Maglev => Box::new(Maglev::new(backends)),
    }
}

/// What the selectors' tests share: pools, a view over plain data, a seeded
/// generator, and the properties every selector must have.
#[cfg(test)]
pub(crate) mod testkit {
    use std::cell::Cell;
    use std::net::SocketAddr;

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::{PoolView, Selector};
    use crate::model::{Backend, BackendId, TargetState};

    /// Backends `b0`, `b1`, … with these weights; ids are their indexes.
    pub fn pool(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                id: BackendId(i),
                name: format!("b{i}"),
                address: SocketAddr::from(([127, 0, 0, 1], 9000)),
                weight,
                state: TargetState::Enabled,
                max_connections: None,
                agent: None,
            })
            .collect()
    }

    /// splitmix64: small, seeded, good enough to drive simulations.
    #[derive(Clone, Debug)]
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n` (up to a bias of n / 2^64).
        pub fn below(&mut self, n: usize) -> usize {
            ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
        }
    }

    /// A pool's live state as plain data; `random` draws from a seeded generator.
    #[derive(Debug)]
    pub struct SimView {
        pub mask: Vec<bool>,
        pub sessions: Vec<u64>,
        pub weights: Vec<u32>,
        pub loads: Vec<Option<f64>>,
        rng: Cell<u64>,
    }

    impl SimView {
        /// Every backend eligible, no session, no load report.
        pub fn new(weights: &[u32], seed: u64) -> Self {
            Self {
                mask: vec![true; weights.len()],
                sessions: vec![0; weights.len()],
                weights: weights.to_vec(),
                loads: vec![None; weights.len()],
                rng: Cell::new(seed),
            }
        }
    }

    impl PoolView for SimView {
        fn eligible(&self, id: BackendId) -> bool {
            self.mask[id.0]
        }
        fn sessions(&self, id: BackendId) -> u64 {
            self.sessions[id.0]
        }
        fn weight(&self, id: BackendId) -> u32 {
            self.weights[id.0].max(1)
        }
        fn load(&self, id: BackendId) -> Option<f64> {
            self.loads[id.0]
        }
        fn random(&self) -> u64 {
            let mut rng = Rng(self.rng.get());
            let value = rng.next_u64();
            self.rng.set(rng.0);
            value
        }
    }

    /// Weights in `1..=max_weight` for 1..=`max_len` backends and an
    /// eligibility mask as long.
    pub fn weights_and_mask(max_len: usize, max_weight: u32) -> impl Strategy<Value = (Vec<u32>, Vec<bool>)> {
        proptest::collection::vec(1u32..=max_weight, 1..=max_len).prop_flat_map(|weights| {
            let len = weights.len();
            (Just(weights), proptest::collection::vec(any::<bool>(), len))
        })
    }

    /// The two properties every selector has, over picks with random keys,
    /// random session counts and random load reports (some missing): a pick
    /// is never an ineligible backend, and it is `None` exactly when no
    /// backend is eligible. Checks `mask`, then nothing eligible, then
    /// everything eligible.
    pub fn check_eligibility(
        selector: &dyn Selector,
        weights: &[u32],
        mask: &[bool],
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let mut rng = Rng(seed);
        let mut view = SimView::new(weights, seed);
        for (sessions, load) in view.sessions.iter_mut().zip(&mut view.loads) {
            *sessions = rng.next_u64() % 100;
            *load = (rng.next_u64() % 2 == 0).then(|| (rng.next_u64() % 1001) as f64 / 1000.0);
        }
        let all = vec![true; weights.len()];
        let none = vec![false; weights.len()];
        for mask in [mask, &none, &all] {
            view.mask = mask.to_vec();
            let any_eligible = mask.iter().any(|&e| e);
            for _ in 0..200 {
                let key = rng.next_u64();
                match selector.pick(key, &view) {
                    Some(id) => {
                        prop_assert!(
                            id.0 < mask.len() && mask[id.0],
                            "picked ineligible {:?} of {:?}",
                            id,
                            mask
                        )
                    }
                    None => prop_assert!(!any_eligible, "picked nothing from {:?}", mask),
                }
            }
        }
        Ok(())
    }

    /// Simulates a pool under steady load and returns the picks per backend.
    ///
    /// First `100 × total weight` sessions open (each on the selector's pick),
    /// then for `steps` steps one open session, chosen uniformly, closes and a
    /// new one opens on the next pick; only those picks are counted. Choosing
    /// the session to close uniformly is what exponential lifetimes give, so a
    /// backend's sessions close at a rate proportional to how many it has,
    /// and in a steady state it takes picks at the same rate: a selector that
    /// keeps open sessions proportional to weight gets picks proportional to
    /// weight.
    pub fn simulate(selector: &dyn Selector, view: &mut SimView, steps: usize) -> Vec<u64> {
        let mut rng = Rng(view.random());
        let total: u32 = view.weights.iter().sum();
        let mut open: Vec<usize> = Vec::new();
        for _ in 0..100 * total {
            if let Some(id) = selector.pick(rng.next_u64(), view) {
                view.sessions[id.0] += 1;
                open.push(id.0);
            }
        }
        let mut counts = vec![0u64; view.weights.len()];
        for _ in 0..steps {
            let slot = rng.below(open.len());
            view.sessions[open[slot]] -= 1;
            if let Some(id) = selector.pick(rng.next_u64(), view) {
                view.sessions[id.0] += 1;
                counts[id.0] += 1;
                open[slot] = id.0;
            } else {
                open.swap_remove(slot);
            }
        }
        counts
    }

    /// How far a backend's share of simulated picks may stray from its share
    /// of the weight. Sampling: counted picks follow the closes of 20 000
    /// steps, a share of at most 1/2 with a standard deviation of at most
    /// √(¼ / 20 000) = 0.0035; 6σ is 0.021. The selectors' own bias is far
    /// smaller: least connections holds each backend within about a session
    /// of its weighted share of the 100 × total weight open sessions (a
    /// bias of 1/(100 × total weight)), and over 400 000 steps both it and
    /// two choices stayed within 0.0016 of the weight shares on 20 random
    /// pools (at 20 000 steps the worst of 60 pools was 0.0089: noise).
    /// 0.025 is 6σ plus that bias, rounded up.
    pub const SIMULATION_TOLERANCE: f64 = 0.025;

    /// How far a backend's share of `keys` random hash keys may stray from
    /// its share of the weight by sampling alone: six standard deviations of
    /// a share of 1/2, the worst case, i.e. `3 / √keys` (0.0134 at 50 000).
    /// Past 6σ a false failure is about one in 10^9 per backend.
    pub fn sampling_tolerance(keys: usize) -> f64 {
        3.0 / (keys as f64).sqrt()
    }

    /// Picks for `keys` random keys, all backends eligible, counted per backend.
    pub fn key_counts(selector: &dyn Selector, weights: &[u32], keys: usize, seed: u64) -> Vec<u64> {
        let view = SimView::new(weights, seed);
        let mut rng = Rng(seed);
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..keys {
            if let Some(id) = selector.pick(rng.next_u64(), &view) {
                counts[id.0] += 1;
            }
        }
        counts
    }

    /// Each backend's share of `counts` is its share of `weights` within `tolerance`.
    pub fn check_shares(counts: &[u64], weights: &[u32], tolerance: f64) -> Result<(), TestCaseError> {
        let picks: u64 = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        prop_assert!(picks > 0);
        for (i, (&count, &weight)) in counts.iter().zip(weights).enumerate() {
            let share = count as f64 / picks as f64;
            let expected = f64::from(weight) / f64::from(total);
            prop_assert!(
                (share - expected).abs() <= tolerance,
                "backend {} of weights {:?}: share {:.4}, expected {:.4} ± {:.4} (counts {:?})",
                i,
                weights,
                share,
                expected,
                tolerance,
                counts
            );
        }
        Ok(())
    }
}
