//! The power of two random choices (Mitzenmacher 2001; Envoy's and NGINX's
//! `random two`): draw two distinct eligible backends at random, in proportion
//! to weight, and take the one with fewer sessions for its weight.
//!
//! Why: least connections reads every backend on every pick and, with several
//! balancers (or workers) reading counters that lag, they all rush the same
//! idle backend. Two random choices reads two backends, so a pick costs the
//! same at 10 backends as at 1000, and the randomness spreads a burst; yet
//! comparing the two keeps the busiest backends out of the way, which pure
//! random choice does not (its worst backend's load grows like log n / log log n
//! over the mean, two choices' like log log n).
//!
//! The draw uses the configured weights through an alias table (built once,
//! O(1) a draw, see `source_hash`); the comparison uses the view's effective
//! weight, `(sessions + 1) / weight` by cross multiplication as in
//! `least_connections`, so a backend in slow start is drawn as often as its
//! weight says but loses comparisons until its weight has ramped up. On a tie
//! the first draw wins: it is random already.
//!
//! Ineligible backends: a draw that lands on one (or, for the second draw,
//! on the first) is redrawn, up to `REDRAWS` times; then one weighted draw
//! over a scan of the eligible backends settles it, at O(backends). With one
//! eligible backend, the second draw finds none and the first is taken.
//! Randomness comes from `view.random()`, one number per draw.

use super::source_hash::{reduce, Alias};
use super::{PoolView, Selector};
use crate::model::{Backend, BackendId};

/// Draws from the alias table before a pick scans the pool. With a fraction
/// `f` of the weight ineligible the scan is needed with probability `f^8`.
const REDRAWS: usize = 8;

/// Two random choices over a pool's backends.
///
/// Built from a snapshot of the pool; rebuild it when backends or weights
/// change. Holds no mutable state: picks share nothing but the view.
#[derive(Debug)]
pub struct RandomTwoChoices {
    /// Configured weights, for the scan.
    weights: Vec<u32>,
    /// Weighted draws in O(1).
    alias: Alias,
}

impl RandomTwoChoices {
    /// Builds the selector over `backends`, whose ids must be their indexes.
    pub fn new(backends: &[Backend]) -> Self {
        debug_assert!(backends.iter().enumerate().all(|(i, b)| b.id == BackendId(i)));
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let alias = Alias::new(&weights);
        Self { weights, alias }
    }

    /// One eligible backend other than `other`, drawn in proportion to
    /// configured weight; `None` when there is none.
    fn draw(&self, view: &dyn PoolView, other: Option<BackendId>) -> Option<BackendId> {
        for _ in 0..REDRAWS {
            let id = self.alias.draw(view.random());
            if Some(id) != other && view.eligible(id) {
                return Some(id);
            }
        }
        self.draw_by_scan(view, other)
    }

    /// The same draw by two passes over the pool: the total weight of the
    /// candidates, then the candidate where a random point of it falls.
    fn draw_by_scan(&self, view: &dyn PoolView, other: Option<BackendId>) -> Option<BackendId> {
        let candidate = |i: usize| Some(BackendId(i)) != other && view.eligible(BackendId(i));
        let total: u64 = (0..self.weights.len())
            .filter(|&i| candidate(i))
            .map(|i| u64::from(self.weights[i].max(1)))
            .sum();
        if total == 0 {
            return None;
        }
        let mut point = reduce(view.random(), total as usize) as u64;
        let mut last = None;
        for (i, &weight) in self.weights.iter().enumerate() {
            if !candidate(i) {
                continue;
            }
            let weight = u64::from(weight.max(1));
            if point < weight {
                return Some(BackendId(i));
            }
            point -= weight;
            last = Some(BackendId(i));
        }
        // Eligibility changed between the passes; any candidate will do.
        last
    }
}

impl Selector for RandomTwoChoices {
    /// Returns the less loaded of two distinct random eligible backends, the
    /// only one when one is eligible, `None` when none is. `key` is unused.
    fn pick(&self, _key: u64, view: &dyn PoolView) -> Option<BackendId> {
        if self.weights.is_empty() {
            return None;
        }
        let first = self.draw(view, None)?;
        let Some(second) = self.draw(view, Some(first)) else {
            return Some(first);
        };
        let cost = |id| u128::from(view.sessions(id)) + 1;
        let weight = |id| u128::from(view.weight(id).max(1));
        if cost(second) * weight(first) < cost(first) * weight(second) {
            Some(second)
        } else {
            Some(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::super::testkit::{self, SimView};
    use super::*;

    /// A view that hands out chosen random numbers, then zeros.
    struct Scripted<'a> {
        inner: &'a SimView,
        numbers: Vec<u64>,
        next: Cell<usize>,
    }

    impl PoolView for Scripted<'_> {
        fn eligible(&self, id: BackendId) -> bool {
            self.inner.eligible(id)
        }
        fn sessions(&self, id: BackendId) -> u64 {
            self.inner.sessions(id)
        }
        fn weight(&self, id: BackendId) -> u32 {
            self.inner.weight(id)
        }
        fn random(&self) -> u64 {
            let i = self.next.get();
            self.next.set(i + 1);
            self.numbers.get(i).copied().unwrap_or(0)
        }
    }

    /// The random number whose alias draw is backend `i` of `n` equal weights.
    fn number_for(i: u64, n: u64) -> u64 {
        // High 32 bits pick the column; equal weights never use the alias.
        ((i << 32) / n + 1) << 32
    }

    #[test]
    fn takes_the_less_loaded_of_the_two_drawn() {
        let rtc = RandomTwoChoices::new(&testkit::pool(&[1; 4]));
        let mut inner = SimView::new(&[1; 4], 1);
        inner.sessions = vec![0, 9, 3, 1];
        for (a, b, expected) in [(1, 2, 2), (2, 1, 2), (3, 1, 3), (0, 3, 0)] {
            let view = Scripted {
                inner: &inner,
                numbers: vec![number_for(a, 4), number_for(b, 4)],
                next: Cell::new(0),
            };
            assert_eq!(rtc.pick(0, &view), Some(BackendId(expected)), "drew {a} and {b}");
        }
    }

    #[test]
    fn tie_goes_to_the_first_drawn() {
        let rtc = RandomTwoChoices::new(&testkit::pool(&[1, 2]));
        let mut inner = SimView::new(&[1, 2], 1);
        // 2/1 = 4/2.
        inner.sessions = vec![1, 3];
        let alias = Alias::new(&[1, 2]);
        let numbers: Vec<u64> = (0..64u64).map(|i| i << 58 | i).collect();
        let zero = numbers.iter().copied().find(|&r| alias.draw(r) == BackendId(0)).unwrap();
        let one = numbers.iter().copied().find(|&r| alias.draw(r) == BackendId(1)).unwrap();
        let view = Scripted { inner: &inner, numbers: vec![zero, one], next: Cell::new(0) };
        assert_eq!(rtc.pick(0, &view), Some(BackendId(0)));
        let view = Scripted { inner: &inner, numbers: vec![one, zero], next: Cell::new(0) };
        assert_eq!(rtc.pick(0, &view), Some(BackendId(1)));
    }

    #[test]
    fn the_two_are_distinct() {
        let rtc = RandomTwoChoices::new(&testkit::pool(&[1; 3]));
        let mut inner = SimView::new(&[1; 3], 1);
        inner.sessions = vec![5, 0, 9];
        // Backend 0 is drawn again and again for the second choice: it is
        // redrawn, and the scan settles on another backend, never 0 twice.
        let mut numbers = vec![number_for(0, 3); 1 + REDRAWS];
        numbers.push(0);
        let view = Scripted { inner: &inner, numbers, next: Cell::new(0) };
        assert_eq!(rtc.pick(0, &view), Some(BackendId(1)));
    }

    #[test]
    fn single_backend_takes_every_pick_while_eligible() {
        let rtc = RandomTwoChoices::new(&testkit::pool(&[2]));
        let mut view = SimView::new(&[2], 1);
        view.sessions = vec![100];
        for _ in 0..10 {
            assert_eq!(rtc.pick(0, &view), Some(BackendId(0)));
        }
        view.mask = vec![false];
        assert_eq!(rtc.pick(0, &view), None);
    }

    #[test]
    fn one_eligible_of_many_is_taken() {
        let rtc = RandomTwoChoices::new(&testkit::pool(&[5; 10]));
        let mut view = SimView::new(&[5; 10], 1);
        view.mask = (0..10).map(|i| i == 7).collect();
        for _ in 0..50 {
            assert_eq!(rtc.pick(0, &view), Some(BackendId(7)));
        }
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let rtc = RandomTwoChoices::new(&[]);
        assert_eq!(rtc.pick(0, &|_: BackendId| true), None);
    }

    #[test]
    fn a_busy_backend_is_avoided() {
        let rtc = RandomTwoChoices::new(&testkit::pool(&[1; 10]));
        let mut view = SimView::new(&[1; 10], 9);
        view.sessions = vec![1; 10];
        view.sessions[3] = 50;
        let mut picks = [0u32; 10];
        for _ in 0..10_000 {
            if let Some(id) = rtc.pick(0, &view) {
                picks[id.0] += 1;
            }
        }
        // Backend 3 wins only when drawn with itself, which never happens.
        assert_eq!(picks[3], 0);
        assert!(picks.iter().enumerate().all(|(i, &p)| i == 3 || p > 800), "{picks:?}");
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_backend_and_none_iff_none_eligible(
            (weights, mask) in testkit::weights_and_mask(50, 256),
            seed in any::<u64>(),
        ) {
            let rtc = RandomTwoChoices::new(&testkit::pool(&weights));
            testkit::check_eligibility(&rtc, &weights, &mask, seed)?;
        }

        /// The scan draws in proportion to weight like the alias table.
        #[test]
        fn scan_draws_follow_the_weights(
            weights in proptest::collection::vec(1u32..=256, 2..=20),
            seed in any::<u64>(),
        ) {
            let rtc = RandomTwoChoices::new(&testkit::pool(&weights));
            let view = SimView::new(&weights, seed);
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..50_000 {
                if let Some(id) = rtc.draw_by_scan(&view, None) {
                    counts[id.0] += 1;
                }
            }
            testkit::check_shares(&counts, &weights, testkit::sampling_tolerance(50_000))?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// See `testkit::simulate` for the model and the tolerance.
        #[test]
        fn simulated_picks_follow_the_weights(
            weights in proptest::collection::vec(1u32..=10, 1..=8),
            seed in any::<u64>(),
        ) {
            let rtc = RandomTwoChoices::new(&testkit::pool(&weights));
            let counts = testkit::simulate(&rtc, &mut SimView::new(&weights, seed), 400_000);
            testkit::check_shares(&counts, &weights, testkit::SIMULATION_TOLERANCE)?;
        }
    }
}
