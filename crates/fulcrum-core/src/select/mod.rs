//! Selectors: one balancing algorithm per file behind one trait.
//!
//! A selector is built from an immutable snapshot of a pool's backends and
//! answers "which backend next?" among those the caller calls eligible. It
//! keeps only the state its algorithm needs (a cursor, a ring); live counters
//! (sessions, health) belong to the pool, so they survive a selector rebuild.
//! Picks take `&self` and never lock: the daemon calls them from every worker.

use crate::model::{Algorithm, Backend, BackendId};

mod round_robin;
mod weighted_round_robin;

pub use round_robin::RoundRobin;
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
        // Being written (issue 3); round robin stands in meanwhile.
        _ => Box::new(RoundRobin::new(backends)),
    }
}
