//! The sticky table under paused time: `now` is advanced by hand.

use std::time::Duration;

use proptest::prelude::*;

use super::StickyTable;
use crate::model::BackendId;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const A: BackendId = BackendId(0);
const B: BackendId = BackendId(1);
const C: BackendId = BackendId(2);

/// Keys from most to least recently used, with their backends.
fn order(t: &StickyTable<&'static str>) -> Vec<(&'static str, BackendId)> {
    t.entries.iter().map(|(k, e)| (*k, e.backend)).collect()
}

#[test]
fn an_entry_expires_ttl_after_its_last_use() {
    let fresh = || {
        let mut t = StickyTable::new(secs(10), 100);
        t.insert("client", A, secs(100));
        t
    };
    let mut t = fresh();
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(&"client", secs(110) - Duration::from_nanos(1)), Some(A), "alive just before ttl");
    let mut t = fresh();
    assert_eq!(t.get(&"client", secs(110)), None, "dead at ttl exactly");
    assert_eq!(t.len(), 0, "the expired entry is removed by the lookup");
    assert_eq!(t.get(&"client", secs(110)), None);
}

#[test]
fn each_hit_slides_the_expiry() {
    let mut t = StickyTable::new(secs(10), 100);
    t.insert("client", A, secs(0));
    // Touched every 8 s: never 10 s idle, so never expires.
    for i in 1..=20 {
        assert_eq!(t.get(&"client", secs(8 * i)), Some(A), "hit {i}");
    }
    assert_eq!(t.expire(secs(169)), 0);
    assert_eq!(t.get(&"client", secs(170)), None, "10 s after the last hit at 160");
}

#[test]
fn insert_refreshes_and_replaces() {
    let mut t = StickyTable::new(secs(10), 100);
    t.insert("client", A, secs(0));
    t.insert("client", B, secs(8));
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(&"client", secs(17)), Some(B), "the insert at 8 refreshed the entry");
    // Re-inserting after expiry, before anyone looked: a fresh entry.
    t.insert("client", C, secs(40));
    assert_eq!(t.get(&"client", secs(49)), Some(C));
}

#[test]
fn a_miss_does_not_refresh_others() {
    let mut t = StickyTable::new(secs(10), 100);
    t.insert("a", A, secs(0));
    assert_eq!(t.get(&"b", secs(5)), None);
    assert_eq!(t.get(&"a", secs(10)), None);
}

#[test]
fn the_least_recently_used_is_evicted_at_the_bound() {
    let mut t = StickyTable::new(secs(60), 3);
    t.insert("a", A, secs(1));
    t.insert("b", B, secs(2));
    t.insert("c", C, secs(3));
    assert_eq!(t.get(&"a", secs(4)), Some(A), "a is now the most recent");
    assert_eq!(order(&t), [("a", A), ("c", C), ("b", B)]);

    t.insert("d", A, secs(5));
    assert_eq!(t.len(), 3);
    assert_eq!(order(&t), [("d", A), ("a", A), ("c", C)], "b, the least recent, went");

    t.insert("e", B, secs(6));
    assert_eq!(order(&t), [("e", B), ("d", A), ("a", A)], "then c");
    assert_eq!(t.get(&"b", secs(7)), None);
    assert_eq!(t.get(&"c", secs(7)), None);

    // Writing a key already held evicts nothing, and makes it the most recent.
    t.insert("a", C, secs(8));
    assert_eq!(order(&t), [("a", C), ("e", B), ("d", A)]);
}

#[test]
fn expire_drops_exactly_the_expired_entries() {
    let mut t = StickyTable::new(secs(10), 100);
    t.insert("a", A, secs(0));
    t.insert("b", B, secs(3));
    t.insert("c", C, secs(6));
    assert_eq!(t.get(&"a", secs(7)), Some(A), "a now lives to 17");
    assert_eq!(t.expire(secs(12)), 0);
    assert_eq!(t.expire(secs(13)), 1, "b, untouched since 3");
    assert_eq!(order(&t), [("a", A), ("c", C)]);
    assert_eq!(t.expire(secs(13)), 0, "nothing twice");
    assert_eq!(t.expire(secs(100)), 2);
    assert!(t.is_empty());
    assert_eq!(t.expire(secs(200)), 0);
}

#[test]
fn remove_and_remove_backend() {
    let mut t = StickyTable::new(secs(10), 100);
    t.insert("a", A, secs(0));
    t.insert("b", B, secs(0));
    t.insert("c", A, secs(0));
    t.insert("d", C, secs(0));
    assert_eq!(t.remove_backend(A), 2);
    assert_eq!(order(&t), [("d", C), ("b", B)]);
    assert_eq!(t.remove_backend(A), 0);
    assert_eq!(t.get(&"a", secs(1)), None);
    assert_eq!(t.get(&"b", secs(1)), Some(B));
    t.remove(&"b");
    t.remove(&"nothing");
    assert_eq!(order(&t), [("d", C)]);
}

#[test]
fn a_stale_now_counts_as_the_latest_seen() {
    let mut t = StickyTable::new(secs(10), 100);
    t.insert("a", A, secs(100));
    // A reading from before 100 (another worker's, taken earlier) must not
    // give "b" an expiry before "a"'s while "b" is the more recent.
    t.insert("b", B, secs(95));
    assert_eq!(t.expire(secs(109)), 0);
    assert_eq!(t.expire(secs(110)), 2);
}

#[test]
fn zero_capacity_holds_nothing_and_huge_ttl_does_not_overflow() {
    let mut t = StickyTable::new(secs(10), 0);
    t.insert("a", A, secs(0));
    assert_eq!((t.len(), t.get(&"a", secs(0))), (0, None));

    let mut t = StickyTable::new(Duration::MAX, 2);
    t.insert("a", A, secs(5));
    assert_eq!(t.get(&"a", Duration::MAX - secs(1)), Some(A));
    assert_eq!(t.expire(Duration::MAX - secs(1)), 0);
    assert_eq!((t.ttl(), t.max_entries()), (Duration::MAX, 2));
}

// ---- The table against a reference model ----

#[derive(Clone, Copy, Debug)]
enum Op {
    Get(u8),
    Insert(u8, usize),
    Remove(u8),
    Expire,
    RemoveBackend(usize),
}

/// The obvious implementation: a vector from least to most recently used,
/// each entry with the time of its last use; every operation a scan.
struct Model {
    ttl: Duration,
    max: usize,
    entries: Vec<(u8, BackendId, Duration)>,
}

impl Model {
    fn position(&self, key: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.0 == key)
    }

    fn dead(&self, touched: Duration, now: Duration) -> bool {
        now >= touched.saturating_add(self.ttl)
    }

    fn get(&mut self, key: u8, now: Duration) -> Option<BackendId> {
        let i = self.position(key)?;
        let (k, b, touched) = self.entries.remove(i);
        if self.dead(touched, now) {
            return None;
        }
        self.entries.push((k, b, now));
        Some(b)
    }

    fn insert(&mut self, key: u8, b: BackendId, now: Duration) {
        if self.max == 0 {
            return;
        }
        match self.position(key) {
            Some(i) => {
                self.entries.remove(i);
            }
            None if self.entries.len() >= self.max => {
                self.entries.remove(0);
            }
            None => {}
        }
        self.entries.push((key, b, now));
    }

    fn expire(&mut self, now: Duration) -> usize {
        let before = self.entries.len();
        let (ttl, entries) = (self.ttl, std::mem::take(&mut self.entries));
        self.entries = entries.into_iter().filter(|e| now < e.2.saturating_add(ttl)).collect();
        before - self.entries.len()
    }
}

/// Runs `ops` on a table and on the model, advancing time by each step (in
/// ms), and fails at the first difference: an answer, a length, the bound, or
/// the entries with their order and expiries.
fn check_against_model(ttl_ms: u64, max: usize, ops: &[(u64, Op)]) -> Result<(), TestCaseError> {
    let ttl = Duration::from_millis(ttl_ms);
    let mut table = StickyTable::new(ttl, max);
    let mut model = Model { ttl, max, entries: Vec::new() };
    let mut now = Duration::ZERO;
    for (step, (advance, op)) in ops.iter().enumerate() {
        now += Duration::from_millis(*advance);
        match *op {
            Op::Get(k) => prop_assert_eq!(table.get(&k, now), model.get(k, now), "step {} {:?}", step, op),
            Op::Insert(k, b) => {
                table.insert(k, BackendId(b), now);
                model.insert(k, BackendId(b), now);
            }
            Op::Remove(k) => {
                table.remove(&k);
                if let Some(i) = model.position(k) {
                    model.entries.remove(i);
                }
            }
            Op::Expire => prop_assert_eq!(table.expire(now), model.expire(now), "step {} {:?}", step, op),
            Op::RemoveBackend(b) => {
                let before = model.entries.len();
                model.entries.retain(|e| e.1 != BackendId(b));
                prop_assert_eq!(table.remove_backend(BackendId(b)), before - model.entries.len());
            }
        }
        prop_assert!(table.len() <= max, "step {}: {} entries over a bound of {}", step, table.len(), max);
        let held: Vec<_> = table.entries.iter().map(|(k, e)| (*k, e.backend, e.expires)).collect();
        let expected: Vec<_> =
            model.entries.iter().rev().map(|&(k, b, t)| (k, b, t.saturating_add(ttl))).collect();
        prop_assert_eq!(held, expected, "step {} {:?}", step, op);
    }
    Ok(())
}

fn op(keys: u8, backends: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..keys).prop_map(Op::Get),
        4 => (0..keys, 0..backends).prop_map(|(k, b)| Op::Insert(k, b)),
        1 => (0..keys).prop_map(Op::Remove),
        2 => Just(Op::Expire),
        1 => (0..backends).prop_map(Op::RemoveBackend),
    ]
}

proptest! {
    /// Small key spaces and bounds so that hits, expiries and evictions all
    /// happen; time steps of 0 to twice the ttl so that entries die mid-run.
    #[test]
    fn the_table_behaves_like_the_model(
        ttl_ms in 1u64..50,
        max in 0usize..6,
        ops in proptest::collection::vec((0u64..100, op(10, 4)), 0..200),
    ) {
        check_against_model(ttl_ms, max, &ops)?;
    }
}

/// A long seeded run at a larger size than the property test reaches:
/// thousands of keys through a bound of 64, with bursts and idle gaps.
#[test]
fn a_long_seeded_simulation_matches_the_model() {
    let mut state = 0x5EED_u64;
    let mut next = move |n: u64| {
        // splitmix64: a fixed seed, so the run is the same every time.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    let ops: Vec<(u64, Op)> = (0..20_000)
        .map(|_| {
            let advance = if next(50) == 0 { 500 + next(2000) } else { next(5) };
            let key = next(200) as u8;
            let op = match next(12) {
                0..=4 => Op::Get(key),
                5..=9 => Op::Insert(key, next(8) as usize),
                10 => Op::Expire,
                _ => Op::Remove(key),
            };
            (advance, op)
        })
        .collect();
    if let Err(e) = check_against_model(1000, 64, &ops) {
        panic!("{e}");
    }
}
