//! Nanoseconds per pick for every selector at 10, 100 and 1000 backends.
//!
//! Every backend is eligible; the view reads sessions (and, for least load,
//! load reports) from plain arrays and draws randomness from a splitmix64
//! counter, so the figures are the selectors' own cost plus dynamic calls
//! into the view, as in the daemon, whose view reads atomics instead.
//! Weights cycle through 1..=4 and sessions through 0..97; counters do not
//! move between picks. The key changes on every pick so the hashing
//! selectors read the table at random places, as real clients make them.
//!
//! Run: `cargo bench -p fulcrum-core --bench select`.

use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum_core::model::{Algorithm, Backend, BackendId, TargetState};
use fulcrum_core::select::{self, PoolView};

const SIZES: [usize; 3] = [10, 100, 1000];

const ALGORITHMS: [(&str, Algorithm); 7] = [
    ("round_robin", Algorithm::RoundRobin),
    ("weighted_round_robin", Algorithm::WeightedRoundRobin),
    ("least_connections", Algorithm::LeastConnections),
    ("least_load", Algorithm::LeastLoad),
    ("random_two_choices", Algorithm::RandomTwoChoices),
    ("source_hash", Algorithm::SourceHash),
    ("maglev", Algorithm::Maglev),
];

/// A pool's live state as arrays.
struct View {
    sessions: Vec<u64>,
    weights: Vec<u32>,
    loads: Vec<Option<f64>>,
    seed: Cell<u64>,
}

impl PoolView for View {
    fn eligible(&self, _id: BackendId) -> bool {
        true
    }
    fn sessions(&self, id: BackendId) -> u64 {
        self.sessions[id.0]
    }
    fn weight(&self, id: BackendId) -> u32 {
        self.weights[id.0]
    }
    fn load(&self, id: BackendId) -> Option<f64> {
        self.loads[id.0]
    }
    fn random(&self) -> u64 {
        let state = self.seed.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.seed.set(state);
        mix(state)
    }
}

fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pool(len: usize) -> Vec<Backend> {
    (0..len)
        .map(|i| Backend {
            id: BackendId(i),
            name: format!("b{i}"),
            address: SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 80)),
            weight: (i % 4) as u32 + 1,
            state: TargetState::Enabled,
            max_connections: None,
            agent: None,
        })
        .collect()
}

fn view(backends: &[Backend], with_loads: bool) -> View {
    View {
        sessions: (0..backends.len()).map(|i| (i as u64 * 37) % 97).collect(),
        weights: backends.iter().map(|b| b.weight).collect(),
        loads: (0..backends.len()).map(|i| with_loads.then(|| ((i * 13) % 100) as f64 / 100.0)).collect(),
        seed: Cell::new(1),
    }
}

fn picks(c: &mut Criterion) {
    for (name, algorithm) in ALGORITHMS {
        let mut group = c.benchmark_group(name);
        for size in SIZES {
            let backends = pool(size);
            let selector = select::build(algorithm, &backends);
            let view = view(&backends, algorithm == Algorithm::LeastLoad);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    black_box(selector.pick(black_box(mix(key)), &view))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
