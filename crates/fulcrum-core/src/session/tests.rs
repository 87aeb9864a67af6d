//! The session table: rows live exactly as long as their handles, ids are
//! unique, listings filter, sort and page; a seeded simulation and a
//! property test drive random insert/drop sequences, the latter from several
//! threads at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;

use super::{BackendSide, Session, SessionFilter, SessionHandle, SessionState, SessionTable};
use crate::model::Mode;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn session(service: &str, client: &str) -> Session {
    Session::new(service.into(), addr(client), addr("10.1.1.1:80"), Mode::Http, 1_000)
}

fn side(pool: &str, backend: &str, address: &str) -> BackendSide {
    BackendSide {
        pool: pool.into(),
        backend: backend.into(),
        address: addr(address),
        local: Some(addr("127.0.0.10:20001")),
    }
}

fn all(t: &SessionTable) -> Vec<u64> {
    t.list(&SessionFilter::default(), usize::MAX, 0).1.iter().map(|r| r.id).collect()
}

fn ids(t: &SessionTable, f: SessionFilter) -> Vec<u64> {
    let (total, rows) = t.list(&f, usize::MAX, 0);
    assert_eq!(total, rows.len());
    rows.iter().map(|r| r.id).collect()
}

#[test]
fn a_row_lives_exactly_as_long_as_its_handle() {
    let t = SessionTable::new(4);
    assert!(t.is_empty());
    let a = t.insert(session("web", "192.0.2.1:5000"));
    let b = t.insert(session("web", "192.0.2.2:5000"));
    assert_ne!(a.id(), b.id());
    assert_eq!(t.len(), 2);
    assert_eq!(all(&t), vec![a.id(), b.id()]);
    let gone = a.id();
    drop(a);
    assert_eq!(t.len(), 1);
    assert!(!all(&t).contains(&gone));
    drop(b);
    assert!(t.is_empty());
    assert_eq!(t.list(&SessionFilter::default(), 10, 0), (0, vec![]));
}

#[test]
fn ids_are_never_reused_even_after_slots_are() {
    let t = SessionTable::new(1);
    let mut seen = Vec::new();
    for _ in 0..10 {
        // Each insert reuses the one slab slot the last drop freed.
        let h = t.insert(session("web", "192.0.2.1:5000"));
        seen.push(h.id());
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids grow: {seen:?}");
}

#[test]
fn a_row_shows_the_live_fields() {
    let t = SessionTable::new(2);
    let h = t.insert(session("web", "192.0.2.1:5000"));
    let row = &t.list(&SessionFilter::default(), 1, 0).1[0];
    assert_eq!(row.state, SessionState::Connecting);
    assert_eq!((row.pool.as_deref(), row.backend.as_deref(), row.local), (None, None, None));
    assert_eq!(row.last_activity_unix_ms, 1_000, "last activity starts at the start");

    h.set_backend(side("web", "web1", "10.0.0.1:8080"));
    h.set_state(SessionState::Established);
    h.bytes_in.fetch_add(100, Ordering::Relaxed);
    h.bytes_out.fetch_add(2_000, Ordering::Relaxed);
    h.request_done(1_500);
    h.request_done(1_700);
    let row = &t.list(&SessionFilter::default(), 1, 0).1[0];
    assert_eq!(row.id, h.id());
    assert_eq!(row.service, "web");
    assert_eq!(row.client, addr("192.0.2.1:5000"));
    assert_eq!(row.listener, addr("10.1.1.1:80"));
    assert_eq!(row.mode, Mode::Http);
    assert_eq!(row.state, SessionState::Established);
    assert_eq!(row.pool.as_deref(), Some("web"));
    assert_eq!(row.backend.as_deref(), Some("web1"));
    assert_eq!(row.backend_address, Some(addr("10.0.0.1:8080")));
    assert_eq!(row.local, Some(addr("127.0.0.10:20001")));
    assert_eq!((row.bytes_in, row.bytes_out, row.requests), (100, 2_000, 2));
    assert_eq!((row.started_unix_ms, row.last_activity_unix_ms), (1_000, 1_700));

    // An http session moves to another backend for its next request.
    let (pool, backend): (Arc<str>, Arc<str>) = ("api".into(), "api2".into());
    h.update_backend(&pool, &backend, addr("10.0.0.2:8080"), None);
    let kept = h.backend().unwrap();
    assert!(Arc::ptr_eq(&kept.backend, &backend));
    // The same again changes nothing; another connection to it does.
    h.update_backend(&pool, &"api2".into(), addr("10.0.0.2:8080"), None);
    assert!(Arc::ptr_eq(&h.backend().unwrap().backend, &backend), "unchanged side kept");
    h.update_backend(&pool, &backend, addr("10.0.0.2:8080"), Some(addr("127.0.0.10:20002")));
    assert_eq!(h.backend().unwrap().local, Some(addr("127.0.0.10:20002")));
    h.set_state(SessionState::Closing);
    let row = &t.list(&SessionFilter::default(), 1, 0).1[0];
    assert_eq!((row.pool.as_deref(), row.backend.as_deref()), (Some("api"), Some("api2")));
    assert_eq!(row.state, SessionState::Closing);
}

#[test]
fn listings_are_sorted_by_id_and_paged() {
    let t = SessionTable::new(3);
    let handles: Vec<SessionHandle> =
        (0..10).map(|i| t.insert(session("web", &format!("192.0.2.{i}:1")))).collect();
    let every: Vec<u64> = handles.iter().map(|h| h.id()).collect();
    assert_eq!(all(&t), every, "sorted by id across shards");
    let (total, rows) = t.list(&SessionFilter::default(), 3, 4);
    assert_eq!(total, 10, "the total counts every match, not the page");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), every[4..7]);
    let (total, rows) = t.list(&SessionFilter::default(), 5, 8);
    assert_eq!((total, rows.len()), (10, 2), "the last page is short");
    let (total, rows) = t.list(&SessionFilter::default(), 5, 50);
    assert_eq!((total, rows.len()), (10, 0), "past the end: nothing, total still known");
    assert_eq!(t.list(&SessionFilter::default(), 0, 0).0, 10, "limit 0 counts only");
}

#[test]
fn filters_by_service_backend_and_client() {
    let t = SessionTable::new(4);
    let a = t.insert(session("web", "192.0.2.1:5000"));
    let b = t.insert(session("web", "192.0.2.12:5001"));
    let c = t.insert(session("api", "198.51.100.7:6000"));
    let d = t.insert(session("api", "[::ffff:192.0.2.1]:7000"));
    let e = t.insert(session("web", "[2001:db8::1]:443"));
    a.set_backend(side("web", "web1", "10.0.0.1:80"));
    b.set_backend(side("web", "web2", "10.0.0.2:80"));
    c.set_backend(side("api", "web1", "10.0.1.1:80"));
    let f = |service: Option<&str>, backend: Option<&str>, client: Option<&str>| SessionFilter {
        service: service.map(Into::into),
        backend: backend.map(Into::into),
        client: client.map(Into::into),
    };
    let (a, b, c, d, e) = (a.id(), b.id(), c.id(), d.id(), e.id());
    assert_eq!(ids(&t, f(Some("web"), None, None)), vec![a, b, e]);
    assert_eq!(ids(&t, f(Some("nope"), None, None)), vec![]);
    assert_eq!(ids(&t, f(None, Some("web1"), None)), vec![a, c], "a backend name in any pool");
    assert_eq!(ids(&t, f(None, Some("api/web1"), None)), vec![c], "pool/backend is exact");
    assert_eq!(ids(&t, f(Some("web"), Some("web1"), None)), vec![a], "fields combine");
    // A client address matches the address whole, and its IPv4-mapped form.
    assert_eq!(ids(&t, f(None, None, Some("192.0.2.1"))), vec![a, d]);
    assert_eq!(ids(&t, f(None, None, Some("192.0.2.1:5000"))), vec![a]);
    assert_eq!(ids(&t, f(None, None, Some("192.0.2.0/24"))), vec![a, b, d]);
    assert_eq!(ids(&t, f(None, None, Some("192.0.2.1 "))), vec![a, d], "spaces around are ignored");
    assert_eq!(ids(&t, f(None, None, Some("192.0."))), vec![a, b, d], "a text prefix");
    assert_eq!(ids(&t, f(None, None, Some("2001:db8::1"))), vec![e]);
    assert_eq!(ids(&t, f(None, None, Some("2001:db8::"))), vec![], "an IPv6 address is whole: ::0 here");
    assert_eq!(ids(&t, f(None, None, Some("2001:db8"))), vec![e], "an IPv6 text prefix");
    assert_eq!(ids(&t, f(None, None, Some("10."))), vec![], "the listener is not the client");
}

/// A tiny deterministic generator for the simulation (the core draws from no global RNG).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Seeded simulation: random inserts, drops and updates on one thread, the
/// table checked against a model after every step.
#[test]
fn seeded_simulation_matches_a_model() {
    for seed in 0..50 {
        let mut rng = SplitMix(seed);
        let t = SessionTable::new(1 + rng.below(8) as usize);
        let mut live: Vec<SessionHandle> = Vec::new();
        // id -> (client port, requests) as the model expects them.
        let mut model: BTreeMap<u64, (u16, u64)> = BTreeMap::new();
        for step in 0..400 {
            match rng.below(10) {
                0..=4 => {
                    let port = rng.below(65_536) as u16;
                    let h = t.insert(session("web", &format!("192.0.2.1:{port}")));
                    assert!(model.insert(h.id(), (port, 0)).is_none(), "seed {seed} step {step}: id reused");
                    live.push(h);
                }
                5..=7 if !live.is_empty() => {
                    let h = live.swap_remove(rng.below(live.len() as u64) as usize);
                    model.remove(&h.id());
                }
                _ if !live.is_empty() => {
                    let h = &live[rng.below(live.len() as u64) as usize];
                    h.request_done(step);
                    if let Some(m) = model.get_mut(&h.id()) {
                        m.1 += 1;
                    }
                }
                _ => {}
            }
            assert_eq!(t.len(), model.len(), "seed {seed} step {step}");
            let (total, rows) = t.list(&SessionFilter::default(), usize::MAX, 0);
            assert_eq!(total, model.len());
            let got: Vec<(u64, (u16, u64))> =
                rows.iter().map(|r| (r.id, (r.client.port(), r.requests))).collect();
            let want: Vec<(u64, (u16, u64))> = model.iter().map(|(&id, &m)| (id, m)).collect();
            assert_eq!(got, want, "seed {seed} step {step}");
        }
        drop(live);
        assert!(t.is_empty(), "seed {seed}: every row gone with its handle");
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert,
    /// Drops the live handle at this index (modulo how many there are).
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => Just(Op::Insert), 2 => any::<usize>().prop_map(Op::Drop)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Several threads insert and drop at once: each sees its own rows appear
    /// on insert and vanish on drop, ids are unique across threads, and the
    /// table holds exactly the handles still alive.
    #[test]
    fn concurrent_inserts_and_drops(
        shards in 1usize..8,
        threads in prop::collection::vec(prop::collection::vec(op(), 0..60), 1..5),
    ) {
        let t = Arc::new(SessionTable::new(shards));
        let kept: Vec<(Vec<u64>, Vec<SessionHandle>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = threads
                .iter()
                .enumerate()
                .map(|(n, ops)| {
                    let t = t.clone();
                    scope.spawn(move || {
                        let service = format!("s{n}");
                        let mine = SessionFilter { service: Some(service.clone()), ..SessionFilter::default() };
                        let mut live: Vec<SessionHandle> = Vec::new();
                        let mut every_id = Vec::new();
                        for op in ops {
                            match op {
                                Op::Insert => {
                                    let h = t.insert(session(&service, "192.0.2.1:1"));
                                    every_id.push(h.id());
                                    live.push(h);
                                }
                                Op::Drop(i) if !live.is_empty() => {
                                    let h = live.remove(i % live.len());
                                    let id = h.id();
                                    drop(h);
                                    assert!(!ids(&t, mine.clone()).contains(&id), "row {id} outlived its handle");
                                }
                                Op::Drop(_) => {}
                            }
                            // Other threads' rows come and go; this thread's are exactly its live handles.
                            let want: Vec<u64> = live.iter().map(|h| h.id()).collect();
                            assert_eq!(ids(&t, mine.clone()), want);
                        }
                        (every_id, live)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut every: Vec<u64> = kept.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let inserted = every.len();
        every.sort_unstable();
        every.dedup();
        prop_assert_eq!(every.len(), inserted, "ids unique across threads");
        let mut alive: Vec<u64> = kept.iter().flat_map(|(_, live)| live.iter().map(|h| h.id())).collect();
        alive.sort_unstable();
        prop_assert_eq!(t.len(), alive.len());
        prop_assert_eq!(all(&t), alive);
        drop(kept);
        prop_assert!(t.is_empty());
    }
}
