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

/// A balancing algorithm over one pool, with HAProxy's feedback hooks.
pub trait Selector: Send + Sync {
    /// Picks a backend for a new session.
    ///
    /// `key` is the session's hash key where the algorithm uses one (source
    /// address, header value); `eligible` says whether a backend may take a new
    /// session now (health up, state enabled, under its connection limit).
    /// Returns `None` only when no backend is eligible.
    fn pick(&self, key: u64, eligible: &dyn Fn(BackendId) -> bool) -> Option<BackendId>;

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
    }
}
