//! Weighted least connections: the eligible backend with the fewest open
//! sessions for its weight, HAProxy's `leastconn`.
//!
//! A backend's cost is `(sessions + 1) / weight`: the sessions it would have
//! with this one, per unit of weight, so a backend of weight 2 is as busy at
//! 4 sessions as one of weight 1 at 2. Costs are compared by cross
//! multiplication in `u128` (`(s_a + 1) · w_b < (s_b + 1) · w_a`), so there is
//! no rounding and no overflow for any `u64` session count and `u32` weight.
//! The weight is the view's effective weight, so slow start shows at once.
//!
//! Why a scan and not HAProxy's tree: HAProxy keeps servers in an ebtree keyed
//! by cost and moves a server on every session open and close, under the
//! backend lock. Our counters live in the pool (atomics, read through the
//! view) so they survive a selector rebuild, and a tree over them would need
//! a lock or a second copy of every counter. A pick therefore reads every
//! backend once: O(backends), no lock, no allocation; about 5 ns a backend,
//! mostly the three calls into the view (`benches/select.rs`).
//!
//! Ties go to the first tied backend at or after a cursor, and the cursor then
//! moves just past the winner: backends with equal cost take turns in id order,
//! as under round robin, instead of the lowest id winning every tie. The
//! cursor is a plain atomic load and store: two racing picks may start from the
//! same place, which costs only evenness among ties, never correctness.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// Weighted least connections over a pool's backends.
///
/// Built from a snapshot of the pool (only its length matters: sessions and
/// weights come from the view at each pick); rebuild it when backends are
/// added or removed.
#[derive(Debug)]
pub struct LeastConnections {
    /// Number of backends; ids are `0..len`.
    len: usize,
    /// Where the next scan starts (mod `len`): just past the last winner, so
    /// ties rotate.
    cursor: AtomicUsize,
}

impl LeastConnections {
    /// Builds the selector over `backends`, whose ids must be their indexes.
    pub fn new(backends: &[Backend]) -> Self {
        debug_assert!(backends.iter().enumerate().all(|(i, b)| b.id == BackendId(i)));
        Self { len: backends.len(), cursor: AtomicUsize::new(0) }
    }

    /// Whether the pool has no backend.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id where a scan starts; `len` must be non-zero.
    pub(super) fn start(&self) -> usize {
        self.cursor.load(Ordering::Relaxed) % self.len
    }

    /// Makes the next scan start just past `winner`, so it loses the next tie.
    pub(super) fn advance_past(&self, winner: BackendId) {
        self.cursor.store((winner.0 + 1) % self.len, Ordering::Relaxed);
    }

    /// The backends in scan order from `start`: every id once.
    pub(super) fn scan_order(&self, start: usize) -> impl Iterator<Item = BackendId> + '_ {
        (0..self.len).map(move |distance| BackendId((start + distance) % self.len))
    }
}

impl Selector for LeastConnections {
    /// Returns the eligible backend of least `(sessions + 1) / weight`, the
    /// first from the cursor on a tie, or `None` when none is eligible. Reads
    /// every backend once; `key` is unused.
    fn pick(&self, _key: u64, view: &dyn PoolView) -> Option<BackendId> {
        if self.len == 0 {
            return None;
        }
        // (id, sessions + 1, weight) of the best so far.
        let mut best: Option<(BackendId, u128, u128)> = None;
        for id in self.scan_order(self.start()) {
            if !view.eligible(id) {
                continue;
            }
            let cost = u128::from(view.sessions(id)) + 1;
            let weight = u128::from(view.weight(id).max(1));
            if best.is_none_or(|(_, best_cost, best_weight)| cost * best_weight < best_cost * weight) {
                best = Some((id, cost, weight));
            }
        }
        let (winner, _, _) = best?;
        self.advance_past(winner);
        Some(winner)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testkit::{self, SimView};
    use super::*;

    fn picks(lc: &LeastConnections, view: &SimView, count: usize) -> Vec<usize> {
        (0..count).map(|_| lc.pick(0, view).map_or(usize::MAX, |id| id.0)).collect()
    }

    #[test]
    fn takes_the_backend_with_fewest_sessions() {
        let lc = LeastConnections::new(&testkit::pool(&[1, 1, 1]));
        let mut view = SimView::new(&[1, 1, 1], 1);
        view.sessions = vec![4, 1, 3];
        assert_eq!(lc.pick(0, &view), Some(BackendId(1)));
    }

    #[test]
    fn sessions_count_per_weight() {
        let lc = LeastConnections::new(&testkit::pool(&[1, 4]));
        let mut view = SimView::new(&[1, 4], 1);
        // (2 + 1) / 1 = 3 against (9 + 1) / 4 = 2.5: the heavier backend,
        // though it has more than four times the sessions.
        view.sessions = vec![2, 9];
        assert_eq!(lc.pick(0, &view), Some(BackendId(1)));
        // (10 + 1) / 4 = 2.75 is still less than 3; (11 + 1) / 4 = 3 ties
        // and the tie goes past the last winner, to backend 0.
        view.sessions = vec![2, 10];
        assert_eq!(lc.pick(0, &view), Some(BackendId(1)));
        view.sessions = vec![2, 11];
        assert_eq!(lc.pick(0, &view), Some(BackendId(0)));
    }

    #[test]
    fn effective_weight_from_the_view_counts_not_the_configured_one() {
        // Configured weight 4, but slow start has it at 1 for now.
        let lc = LeastConnections::new(&testkit::pool(&[4, 1]));
        let mut view = SimView::new(&[1, 1], 1);
        view.sessions = vec![3, 2];
        assert_eq!(lc.pick(0, &view), Some(BackendId(1)));
    }

    #[test]
    fn tied_backends_take_turns() {
        let lc = LeastConnections::new(&testkit::pool(&[1; 5]));
        let mut view = SimView::new(&[1; 5], 1);
        // 1, 2 and 4 tie at the least; without rotation 1 would take them all.
        view.sessions = vec![7, 2, 2, 5, 2];
        assert_eq!(picks(&lc, &view, 7), [1, 2, 4, 1, 2, 4, 1]);
    }

    #[test]
    fn weighted_ties_take_turns_too() {
        let lc = LeastConnections::new(&testkit::pool(&[1, 2, 3]));
        let mut view = SimView::new(&[1, 2, 3], 1);
        // 2/1 = 4/2 = 6/3.
        view.sessions = vec![1, 3, 5];
        assert_eq!(picks(&lc, &view, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn fresh_equal_backends_fill_round_robin() {
        let lc = LeastConnections::new(&testkit::pool(&[1; 4]));
        let mut view = SimView::new(&[1; 4], 1);
        let mut order = Vec::new();
        for _ in 0..8 {
            let id = lc.pick(0, &view).map_or(usize::MAX, |id| id.0);
            view.sessions[id] += 1;
            order.push(id);
        }
        assert_eq!(order, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn single_backend_takes_every_pick_while_eligible() {
        let lc = LeastConnections::new(&testkit::pool(&[3]));
        let mut view = SimView::new(&[3], 1);
        view.sessions = vec![1_000];
        assert_eq!(picks(&lc, &view, 3), [0, 0, 0]);
        view.mask = vec![false];
        assert_eq!(lc.pick(0, &view), None);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let lc = LeastConnections::new(&[]);
        assert_eq!(lc.pick(0, &|_: BackendId| true), None);
    }

    #[test]
    fn huge_session_counts_do_not_overflow() {
        let lc = LeastConnections::new(&testkit::pool(&[256, 1]));
        let mut view = SimView::new(&[256, 1], 1);
        view.sessions = vec![u64::MAX, u64::MAX - 1];
        // (2^64) / 256 against (2^64 − 1) / 1.
        assert_eq!(lc.pick(0, &view), Some(BackendId(0)));
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_backend_and_none_iff_none_eligible(
            (weights, mask) in testkit::weights_and_mask(50, 256),
            seed in any::<u64>(),
        ) {
            let lc = LeastConnections::new(&testkit::pool(&weights));
            testkit::check_eligibility(&lc, &weights, &mask, seed)?;
        }

        /// The pick really is a least-cost backend, whatever the counters.
        #[test]
        fn picks_a_backend_of_least_cost(
            (weights, mask) in testkit::weights_and_mask(50, 256),
            sessions in proptest::collection::vec(0u64..1_000, 50),
        ) {
            let lc = LeastConnections::new(&testkit::pool(&weights));
            let mut view = SimView::new(&weights, 1);
            view.mask = mask.clone();
            view.sessions = sessions[..weights.len()].to_vec();
            let picked = lc.pick(0, &view);
            if let Some(id) = picked {
                for (i, &eligible) in mask.iter().enumerate() {
                    if eligible {
                        // (s_id + 1) / w_id <= (s_i + 1) / w_i
                        prop_assert!(
                            (view.sessions[id.0] + 1) * u64::from(weights[i])
                                <= (view.sessions[i] + 1) * u64::from(weights[id.0]),
                            "picked {:?} over cheaper {}", id, i
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Sessions open on the pick and close at random (each open session
        /// as likely as any other to close next, as with exponential
        /// lifetimes), with about `live` open at once. See
        /// `testkit::simulate` for why picks then follow the weights and
        /// for the tolerance.
        #[test]
        fn simulated_picks_follow_the_weights(
            weights in proptest::collection::vec(1u32..=10, 1..=8),
            seed in any::<u64>(),
        ) {
            let lc = LeastConnections::new(&testkit::pool(&weights));
            let counts = testkit::simulate(&lc, &mut SimView::new(&weights, seed), 20_000);
            testkit::check_shares(&counts, &weights, testkit::SIMULATION_TOLERANCE)?;
        }
    }
}
