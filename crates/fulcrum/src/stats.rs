//! Counters the data path bumps and `/metrics` reads: plain atomics, so
//! counting costs a relaxed add and never a lock or a map lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 12] =
    [1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// A latency histogram with fixed buckets (Prometheus style: cumulative when rendered).
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    pub buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    pub sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Counters of one backend.
#[derive(Default)]
pub struct BackendStats {
    /// Requests (http) or sessions (tcp) sent to the backend.
    pub requests: AtomicU64,
    /// Responses by class, 1xx..5xx at 0..4.
    pub responses: [AtomicU64; 5],
    /// Bytes received from the backend.
    pub bytes_in: AtomicU64,
    /// Bytes sent to the backend.
    pub bytes_out: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Requests sent again (to another backend, or on a fresh connection).
    pub retries: AtomicU64,
    /// From the request sent to the response head received (http).
    pub latency: Histogram,
}

impl BackendStats {
    /// Adds `old`'s counts to these: a backend that stays across a reload
    /// keeps its history in `/metrics` and the API.
    pub fn absorb(&self, old: &BackendStats) {
        let add = |a: &AtomicU64, b: &AtomicU64| {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for (a, b) in [
            (&self.requests, &old.requests),
            (&self.bytes_in, &old.bytes_in),
            (&self.bytes_out, &old.bytes_out),
            (&self.connect_errors, &old.connect_errors),
            (&self.retries, &old.retries),
            (&self.latency.sum_micros, &old.latency.sum_micros),
        ] {
            add(a, b);
        }
        for (a, b) in self.responses.iter().zip(&old.responses) {
            add(a, b);
        }
        for (a, b) in self.latency.buckets.iter().zip(&old.latency.buckets) {
            add(a, b);
        }
    }
}

/// Counters of one service.
#[derive(Default)]
pub struct ServiceStats {
    /// Client connections accepted.
    pub sessions: AtomicU64,
    /// Requests received (http).
    pub requests: AtomicU64,
    /// Responses sent, by class 1xx..5xx at 0..4 (Fulcrum's own answers included).
    pub responses: [AtomicU64; 5],
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Sessions refused by limits or policy.
    pub refused: AtomicU64,
}

/// Adds one to the class counter of `status` (ignored outside 100..=599).
pub fn count_status(classes: &[AtomicU64; 5], status: u16) {
    if let Some(c) = classes.get(usize::from(status / 100).wrapping_sub(1)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
