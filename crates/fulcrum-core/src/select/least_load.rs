//! Least load: the eligible backend whose host has the most room, by its
//! agent's load reports, falling back to least connections without them.
//!
//! The agent folds CPU, memory, bandwidth and connections against capacity
//! into one score, `load` (0.0 idle ..= 1.0 at capacity, see `agent.rs`). A
//! backend's score here is
//!
//! ```text
//!     (load + ε) × (sessions + 1) / weight        ε = LOAD_FLOOR = 0.05
//! ```
//!
//! and the least wins (the first from a rotating cursor on a tie, as in
//! `least_connections`, whose cursor this selector shares).
//!
//! Why the sessions factor: reports are seconds old, and a score of load
//! alone would send every pick between two reports to the same backend, the
//! one that looked idle last time, and overload it before its next report
//! says so. Sessions move on every pick, so each session a backend takes
//! raises its score at once; the load report sets how many sessions each
//! backend is worth. With equal sessions and weights the backend of lower
//! load wins; with equal loads this is least connections exactly; between
//! backends at 0.1 and 0.9 the first holds (0.9 + ε)/(0.1 + ε) ≈ 6.3 times the
//! sessions of the second before the second gets a pick.
//!
//! Why ε: a host reporting 0.0 would otherwise score 0 whatever its sessions
//! and take every pick until its next report. ε = 0.05 bounds the pull of
//! the idlest host over the busiest at (1 + ε)/ε = 21 sessions to one.
//!
//! Backends without a report (no agent, or none yet) are scored as if they
//! reported the mean load of the eligible backends that did: with no word of
//! their own, they are taken to be as busy as their peers, and compared with
//! them by sessions and weight alone. If no eligible backend has a report,
//! the pick is exactly least connections (same costs, same cursor, integer
//! arithmetic). A report outside 0.0..=1.0 is clamped; a NaN counts as none.
//!
//! Cost: one scan like least connections, reading the load too:
//! O(backends), no lock, no allocation.

use super::least_connections::LeastConnections;
use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// ε: the load a completely idle host counts as, so that its sessions still count.
const LOAD_FLOOR: f64 = 0.05;

/// Least load over a pool's backends.
///
/// Built from a snapshot of the pool (only its length matters: loads,
/// sessions and weights come from the view); rebuild it when backends are
/// added or removed.
#[derive(Debug)]
pub struct LeastLoad {
    /// The fallback without reports, and the tie-breaking cursor for both.
    least_connections: LeastConnections,
}

impl LeastLoad {
    /// Builds the selector over `backends`, whose ids must be their indexes.
    pub fn new(backends: &[Backend]) -> Self {
        Self { least_connections: LeastConnections::new(backends) }
    }
}

/// The factor a report contributes: `load + ε`, with `load` clamped to
/// 0.0..=1.0; `None` for no report or a NaN.
fn load_factor(load: Option<f64>) -> Option<f64> {
    load.filter(|l| !l.is_nan()).map(|l| l.clamp(0.0, 1.0) + LOAD_FLOOR)
}

/// The best backend so far of one kind: (distance from the scan's start,
/// id, cost, weight); the first of least `cost / weight` wins.
type Best<T> = Option<(usize, BackendId, T, T)>;

/// Keeps `best` or takes the candidate, whichever has the lower `cost / weight`
/// (compared by cross multiplication; the earlier keeps a tie).
fn better<T: Copy + PartialOrd + std::ops::Mul<Output = T>>(
    best: &mut Best<T>,
    candidate: (usize, BackendId, T, T),
) {
    let (_, _, cost, weight) = candidate;
    if best.is_none_or(|(_, _, best_cost, best_weight)| cost * best_weight < best_cost * weight) {
        *best = Some(candidate);
    }
}

impl Selector for LeastLoad {
    /// Returns the eligible backend of least `(load + ε) × (sessions + 1) /
    /// weight`, or `None` when none is eligible; exactly least connections
    /// when no eligible backend has a report. Reads every backend once; `key`
    /// is unused.
    fn pick(&self, _key: u64, view: &dyn PoolView) -> Option<BackendId> {
        let lc = &self.least_connections;
        if lc.is_empty() {
            return None;
        }
        // One pass. Unreported backends all get the same factor (the mean of
        // the reports), so the best of them is the best by least connections,
        // kept in integers; the best reported one is kept by its own score.
        // The mean is known at the end, and the two are compared then.
        let mut reported: Best<f64> = None;
        let mut unreported: Best<u128> = None;
        let (mut reports, mut sum) = (0u32, 0.0);
        for (distance, id) in lc.scan_order(lc.start()).enumerate() {
            if !view.eligible(id) {
                continue;
            }
            let sessions = view.sessions(id);
            let weight = view.weight(id).max(1);
            match load_factor(view.load(id)) {
                Some(factor) => {
                    reports += 1;
                    sum += factor;
                    let cost = factor * (sessions as f64 + 1.0);
                    better(&mut reported, (distance, id, cost, f64::from(weight)));
                }
                None => better(&mut unreported, (distance, id, u128::from(sessions) + 1, u128::from(weight))),
            }
        }
        let winner = match (reported, unreported) {
            (None, None) => return None,
            // No reports: exactly least connections (same costs, same cursor).
            (None, Some((_, id, _, _))) | (Some((_, id, _, _)), None) => id,
            (Some((r_distance, r_id, r_cost, r_weight)), Some((u_distance, u_id, u_cost, u_weight))) => {
                let u_cost = sum / f64::from(reports) * u_cost as f64;
                let (unreported_side, reported_side) = (u_cost * r_weight, r_cost * u_weight as f64);
                if unreported_side < reported_side
                    || (unreported_side == reported_side && u_distance < r_distance)
                {
                    u_id
                } else {
                    r_id
                }
            }
        };
        lc.advance_past(winner);
        Some(winner)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testkit::{self, Rng, SimView};
    use super::*;

    fn picks(ll: &LeastLoad, view: &SimView, count: usize) -> Vec<usize> {
        (0..count).map(|_| ll.pick(0, view).map_or(usize::MAX, |id| id.0)).collect()
    }

    #[test]
    fn equal_sessions_lower_load_wins() {
        let ll = LeastLoad::new(&testkit::pool(&[1; 3]));
        let mut view = SimView::new(&[1; 3], 1);
        view.loads = vec![Some(0.5), Some(0.2), Some(0.9)];
        assert_eq!(picks(&ll, &view, 3), [1, 1, 1]);
    }

    #[test]
    fn sessions_pile_up_on_the_idle_host_only_so_far() {
        let ll = LeastLoad::new(&testkit::pool(&[1; 2]));
        let mut view = SimView::new(&[1; 2], 1);
        view.loads = vec![Some(0.1), Some(0.9)];
        let mut order = Vec::new();
        for _ in 0..8 {
            let id = ll.pick(0, &view).map_or(usize::MAX, |id| id.0);
            view.sessions[id] += 1;
            order.push(id);
        }
        // 0.15 × (s + 1) against 0.95 × 1: the idle host takes six sessions
        // (0.15 × 7 = 1.05 > 0.95) before the busy one takes its first.
        assert_eq!(order, [0, 0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn weight_divides_the_score() {
        let ll = LeastLoad::new(&testkit::pool(&[1, 3]));
        let mut view = SimView::new(&[1, 3], 1);
        // 0.35 / 1 against 0.95 / 3 ≈ 0.32.
        view.loads = vec![Some(0.3), Some(0.9)];
        assert_eq!(ll.pick(0, &view), Some(BackendId(1)));
    }

    #[test]
    fn unreported_backends_count_as_the_mean_of_the_reported() {
        let ll = LeastLoad::new(&testkit::pool(&[1; 3]));
        let mut view = SimView::new(&[1; 3], 1);
        // Mean factor (0.25 + 0.65) / 2 = 0.45: backend 1 scores 0.45 × (s + 1).
        view.loads = vec![Some(0.2), None, Some(0.6)];
        view.sessions = vec![1, 0, 0];
        // 0.25 × 2 = 0.5 against 0.45 × 1 and 0.65 × 1.
        assert_eq!(ll.pick(0, &view), Some(BackendId(1)));
        view.sessions = vec![0, 1, 0];
        // 0.25 against 0.9 and 0.65.
        assert_eq!(ll.pick(0, &view), Some(BackendId(0)));
    }

    #[test]
    fn reports_of_ineligible_backends_do_not_count() {
        let ll = LeastLoad::new(&testkit::pool(&[1; 3]));
        let mut view = SimView::new(&[1; 3], 1);
        view.loads = vec![Some(0.0), None, None];
        view.sessions = vec![0, 3, 1];
        view.mask = vec![false, true, true];
        // Only 0 reported and it is out: least connections over 1 and 2.
        assert_eq!(ll.pick(0, &view), Some(BackendId(2)));
    }

    #[test]
    fn nan_and_out_of_range_reports() {
        let ll = LeastLoad::new(&testkit::pool(&[1; 3]));
        let mut view = SimView::new(&[1; 3], 1);
        view.loads = vec![Some(f64::NAN), Some(-3.0), Some(7.0)];
        view.sessions = vec![0, 0, 0];
        // −3 counts as 0, 7 as 1, NaN as the mean of those two.
        assert_eq!(ll.pick(0, &view), Some(BackendId(1)));
        view.loads = vec![Some(f64::NAN); 3];
        view.sessions = vec![2, 1, 3];
        assert_eq!(ll.pick(0, &view), Some(BackendId(1)));
    }

    #[test]
    fn tied_backends_take_turns() {
        let ll = LeastLoad::new(&testkit::pool(&[1; 4]));
        let mut view = SimView::new(&[1; 4], 1);
        view.loads = vec![Some(0.3), Some(0.8), Some(0.3), Some(0.3)];
        assert_eq!(picks(&ll, &view, 6), [0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn single_backend_takes_every_pick_while_eligible() {
        let ll = LeastLoad::new(&testkit::pool(&[2]));
        let mut view = SimView::new(&[2], 1);
        view.loads = vec![Some(1.0)];
        assert_eq!(picks(&ll, &view, 3), [0, 0, 0]);
        view.mask = vec![false];
        assert_eq!(ll.pick(0, &view), None);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let ll = LeastLoad::new(&[]);
        assert_eq!(ll.pick(0, &|_: BackendId| true), None);
    }

    /// Picks per backend in `testkit::simulate` with fixed load reports.
    fn simulate_with_loads(weights: &[u32], loads: &[Option<f64>], seed: u64) -> Vec<u64> {
        let ll = LeastLoad::new(&testkit::pool(weights));
        let mut view = SimView::new(weights, seed);
        view.loads = loads.to_vec();
        testkit::simulate(&ll, &mut view, 20_000)
    }

    #[test]
    fn a_loaded_host_gets_visibly_fewer_picks() {
        let counts = simulate_with_loads(&[1, 1], &[Some(0.1), Some(0.9)], 5);
        // Sessions settle near the 6.3 : 1 the scores balance at; so do the
        // picks, as sessions close at a rate proportional to their number.
        assert!(counts[0] > 5 * counts[1], "{counts:?}");
        assert!(counts[1] > 0, "{counts:?}");
    }

    #[test]
    fn a_host_whose_load_rises_gets_fewer_picks_from_then_on() {
        // Loads follow sessions, as an agent would see them, but reports lag
        // 50 picks behind. Backend 1 is a host with half the capacity.
        let ll = LeastLoad::new(&testkit::pool(&[1, 1]));
        let mut view = SimView::new(&[1, 1], 3);
        let capacity = [200.0, 100.0];
        let mut rng = Rng(3);
        let mut open: Vec<usize> = Vec::new();
        let mut counts = [0u64; 2];
        for step in 0..20_000 {
            if step % 50 == 0 {
                for ((load, &sessions), capacity) in view.loads.iter_mut().zip(&view.sessions).zip(capacity) {
                    *load = Some(sessions as f64 / capacity);
                }
            }
            if open.len() >= 150 {
                let slot = rng.below(open.len());
                view.sessions[open.swap_remove(slot)] -= 1;
            }
            if let Some(id) = ll.pick(0, &view) {
                view.sessions[id.0] += 1;
                open.push(id.0);
                counts[id.0] += 1;
            }
        }
        assert!(counts[0] > counts[1] + counts[1] / 4, "{counts:?}");
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_backend_and_none_iff_none_eligible(
            (weights, mask) in testkit::weights_and_mask(50, 256),
            seed in any::<u64>(),
        ) {
            let ll = LeastLoad::new(&testkit::pool(&weights));
            testkit::check_eligibility(&ll, &weights, &mask, seed)?;
        }

        /// Without reports, pick for pick the same as least connections,
        /// cursor and all, as counters change.
        #[test]
        fn without_reports_it_is_least_connections(
            (weights, mask) in testkit::weights_and_mask(30, 256),
            seed in any::<u64>(),
        ) {
            let backends = testkit::pool(&weights);
            let (ll, lc) = (LeastLoad::new(&backends), LeastConnections::new(&backends));
            let mut view = SimView::new(&weights, seed);
            view.mask = mask;
            let mut rng = Rng(seed);
            for _ in 0..300 {
                let picked = ll.pick(0, &view);
                prop_assert_eq!(picked, lc.pick(0, &view));
                if let Some(id) = picked {
                    view.sessions[id.0] += 1;
                }
                let i = rng.below(weights.len());
                view.sessions[i] = view.sessions[i].saturating_sub(1);
            }
        }

        /// Reports, including ones from ineligible backends, never make it
        /// pick an ineligible backend.
        #[test]
        fn picks_a_backend_of_least_score(
            (weights, mask) in testkit::weights_and_mask(30, 256),
            loads in proptest::collection::vec(proptest::option::of(0.0f64..=1.0), 30),
            sessions in proptest::collection::vec(0u64..1_000, 30),
        ) {
            let n = weights.len();
            let ll = LeastLoad::new(&testkit::pool(&weights));
            let mut view = SimView::new(&weights, 1);
            view.mask = mask.clone();
            view.loads = loads[..n].to_vec();
            view.sessions = sessions[..n].to_vec();
            let reported: Vec<f64> =
                (0..n).filter(|&i| mask[i]).filter_map(|i| load_factor(view.loads[i])).collect();
            prop_assume!(!reported.is_empty());
            let mean = reported.iter().sum::<f64>() / reported.len() as f64;
            let score = |i: usize| {
                load_factor(view.loads[i]).unwrap_or(mean) * (view.sessions[i] as f64 + 1.0) / f64::from(weights[i])
            };
            let picked = ll.pick(0, &view);
            prop_assert!(picked.is_some());
            if let Some(id) = picked {
                for i in (0..n).filter(|&i| mask[i]) {
                    prop_assert!(score(id.0) <= score(i) * (1.0 + 1e-12), "picked {:?} over {}", id, i);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// With equal reports, picks follow the weights as in least connections.
        #[test]
        fn equal_reports_leave_picks_following_the_weights(
            weights in proptest::collection::vec(1u32..=10, 1..=8),
            load in 0.0f64..=1.0,
            seed in any::<u64>(),
        ) {
            let counts = simulate_with_loads(&weights, &vec![Some(load); weights.len()], seed);
            testkit::check_shares(&counts, &weights, testkit::SIMULATION_TOLERANCE)?;
        }
    }
}
