//! Hot reload, black-box: SIGHUP applies a new configuration whole or not at
//! all, keeps listeners, health, persistence and the counts limits are held
//! against, and loses no request.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backend_counters, config, held_connection, raw, read_response, wait_until, Backend, Fulcrum};

const WAIT: Duration = Duration::from_secs(20);

fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let out = raw(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out);
    }
    out.lines().find_map(|l| l.strip_prefix("x-backend: ").map(str::to_owned)).ok_or(out)
}

fn names(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|i| get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"))).collect()
}

#[test]
fn sighup_applies_a_new_configuration_on_the_same_listener() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1)], "", ""), 1);
    assert!(names(f.addr(), 4).iter().all(|n| n == "a"));
    let verdict = f.reload(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], "", ""));
    assert!(verdict.contains("pool \"web\" changed"), "{verdict}");
    // Same address, no new listening line needed: the socket stayed bound.
    let seen = names(f.addr(), 4);
    assert!(seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()), "{seen:?}");
}

#[test]
fn an_invalid_configuration_changes_nothing() {
    let a = Backend::start("a");
    let good = config("http", &[("a", a.addr, 1)], "", "");
    let f = Fulcrum::start(&good, 1);
    let verdict = f.reload(&good.replace("mode = \"http\"", "mode = \"htp\""));
    assert!(verdict.contains("reload refused") && verdict.contains("mode \"htp\""), "{verdict}");
    assert_eq!(get(f.addr(), "/").as_deref(), Ok("a"));
    // A file the configuration names that cannot be read also refuses the reload.
    let bad = good.replace(
        "pool = \"web\"",
        "pool = \"web\"\n[service.policy]\nauth = \"basic\"\nhtpasswd = \"/nonexistent/users\"",
    );
    let verdict = f.reload(&bad);
    assert!(verdict.contains("reload refused") && verdict.contains("/nonexistent/users"), "{verdict}");
    assert_eq!(get(f.addr(), "/").as_deref(), Ok("a"));
}

#[test]
fn listeners_are_added_and_removed() {
    let a = Backend::start("a");
    let one = config("http", &[("a", a.addr, 1)], "", "");
    let mut f = Fulcrum::start(&one, 1);
    // On an address of its own: between the listener's close and its
    // re-bind below, no other test's connection can take its port.
    let second = format!(
        "{one}\n[[service]]\nname = \"extra\"\nlisten = [\"127.0.0.77:0\"]\nmode = \"http\"\npool = \"web\"\n"
    );
    let verdict = f.reload(&second);
    assert!(verdict.contains("service \"extra\" added"), "{verdict}");
    let extra = f.proc.more_listening(1)[0];
    assert_eq!(get(extra, "/").as_deref(), Ok("a"));
    assert_eq!(get(f.addr(), "/").as_deref(), Ok("a"), "the first listener stays");
    let verdict = f.reload(&one);
    assert!(verdict.contains("service \"extra\" removed"), "{verdict}");
    // Closed by the time the reload is reported, so its address can come straight back.
    let refused = std::net::TcpStream::connect(extra).map_err(|e| e.kind());
    assert_eq!(
        refused.err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the removed listener still accepts"
    );
    let again = format!(
        "{one}\n[[service]]\nname = \"extra\"\nlisten = [\"{extra}\"]\nmode = \"http\"\npool = \"web\"\n"
    );
    let verdict = f.reload(&again);
    assert!(verdict.contains("service \"extra\" added"), "{verdict}");
    assert_eq!(f.proc.more_listening(1)[0], extra);
    assert_eq!(get(extra, "/").as_deref(), Ok("a"), "the same address serves again");
}

#[test]
fn health_and_persistence_survive_a_reload() {
    let mut a = Backend::start("a");
    let (b, c, d) = (Backend::start("b"), Backend::start("c"), Backend::start("d"));
    let health =
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
    let pool = format!("algorithm = \"round_robin\"\n{health}");
    let sticky = "[service.persistence]\nkind = \"source_ip\"";
    let three = [("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)];
    let before = config("http", &three, sticky, &pool);
    let f = Fulcrum::start(&before, 1);
    a.proc.child.kill().expect("kill a");
    a.proc.child.wait().expect("reap a");
    f.proc.wait_log(&["backend is down", "backend=a"], WAIT);
    let stuck = get(f.addr(), "/").expect("request");

    // An unrelated change (another service): the pool is the same runtime and
    // the affinity table stays, so the client keeps its backend where round
    // robin alone would alternate between b and c.
    let unrelated = format!(
        "{before}\n[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"tcp\"\npool = \"web\"\n"
    );
    let verdict = f.reload(&unrelated);
    assert!(verdict.contains("service \"other\" added") && !verdict.contains("pool"), "{verdict}");
    assert!(names(f.addr(), 10).iter().all(|n| *n == stuck), "the client lost its backend {stuck}");

    // A changed pool (d added): a is still known down. The new pool's table
    // is fresh and its round robin starts at a, so had the reload forgotten
    // that a is down, these requests would try it and log a failed connect.
    let tried_before = f.proc.count_log(&["connect failed", "backend=a"]);
    let four = [("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1), ("d", d.addr, 1)];
    let verdict = f.reload(&config("http", &four, sticky, &pool));
    assert!(verdict.contains("pool \"web\" changed"), "{verdict}");
    names(f.addr(), 20);
    assert_eq!(
        f.proc.count_log(&["connect failed", "backend=a"]),
        tried_before,
        "a was tried after the reload"
    );
}

#[test]
fn connections_open_before_a_reload_count_against_its_limits() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let limits = |n: u32| format!("[service.limits]\nmax_connections = {n}\non_limit = \"refuse\"");
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1)], &limits(2), ""), 1);
    let _held = [held_connection(f.addr()), held_connection(f.addr())];
    let over = || raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let out = over();
    assert!(out.starts_with("HTTP/1.1 503 ") && out.contains("connection limit"), "{out}");
    // A reload that changes the pool, not the limit: the two still count.
    let verdict = f.reload(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &limits(2), ""));
    assert!(verdict.contains("pool \"web\" changed"), "{verdict}");
    let out = over();
    assert!(out.starts_with("HTTP/1.1 503 "), "the reload forgot the open connections: {out}");
    // A raised limit counts them too: one more, not three more.
    let verdict = f.reload(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &limits(3), ""));
    assert!(verdict.contains("service \"web\" changed"), "{verdict}");
    let _third = held_connection(f.addr());
    let out = over();
    assert!(out.starts_with("HTTP/1.1 503 "), "a fourth connection under a limit of three: {out}");
}

#[test]
fn sessions_open_before_a_reload_count_against_max_sessions() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let policy = "[service.policy]\nmax_sessions = 2";
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1)], policy, ""), 1);
    let _held = [held_connection(f.addr()), held_connection(f.addr())];
    let verdict = f.reload(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], policy, ""));
    assert!(verdict.contains("pool \"web\" changed"), "{verdict}");
    let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 429 "), "a third session after the reload: {out}");
}

#[test]
fn reloads_under_load_lose_no_request() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let one = config("http", &[("a", a.addr, 1)], "", "");
    let two = config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], "", "");
    let f = Fulcrum::start(&one, 1);
    let addr = f.addr();
    // A request in flight through every reload: its head reaches backend a
    // before the first one, its body only after the last. No health checks
    // here, so a's requests are this one and the counter reads, each of
    // which counts itself.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    slow.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n").expect("write the head");
    let mut reader = TcpStream::connect(a.addr).expect("connect to a");
    let mut reads = 0;
    wait_until("the slow request's head to reach backend a", Duration::from_secs(30), || {
        reads += 1;
        backend_counters(&mut reader).1 > reads
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for _ in 0..5000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match get(addr, "/") {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            errors.push(e);
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    for i in 0..10 {
        // Each reload under load: some requests answered since the last one.
        let answered = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        let since = answered(&ok) + answered(&failed);
        wait_until(&format!("the clients' answers before reload {i}"), Duration::from_secs(30), || {
            answered(&ok) + answered(&failed) >= since + 20
        });
        f.reload(if i % 2 == 0 { &two } else { &one });
    }
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = clients.into_iter().flat_map(|c| c.join().expect("client")).collect();
    slow.write_all(b"hello").expect("the slow request was cut before its body");
    let answer = read_response(&mut slow);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("a\n"),
        "the slow request was cut: {answer:?}"
    );
    assert!(ok.load(Ordering::SeqCst) > 100, "too few requests to mean anything");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed: {:?}", errors.first());
}

/// Issue 6's promise: a fixed-rate load through a reload every second for
/// 30 seconds: no connection refused, no request failed, and a slow response
/// started before the reloads completes.
#[test]
fn thirty_seconds_of_reloads_at_a_fixed_rate() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let one = config("http", &[("a", a.addr, 1)], "", "");
    let two = config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], "", "");
    let f = Fulcrum::start(&one, 1);
    let addr = f.addr();
    let stop = Arc::new(AtomicBool::new(false));
    // 4 clients × 25 requests/s, each on its own schedule (open loop).
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut sent, mut errors) = (0usize, Vec::new());
                let start = std::time::Instant::now();
                while !stop.load(Ordering::SeqCst) && sent < 25 * 40 {
                    let due = start + Duration::from_millis(40) * sent as u32;
                    if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if let Err(e) = get(addr, "/") {
                        errors.push(e);
                    }
                    sent += 1;
                }
                (sent, errors)
            })
        })
        .collect();
    let slow = std::thread::spawn(move || get(addr, "/delay/5000"));
    for i in 0..30 {
        let tick = std::time::Instant::now();
        f.reload(if i % 2 == 0 { &two } else { &one });
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    let mut errors = Vec::new();
    for c in clients {
        let (n, e) = c.join().expect("client");
        sent += n;
        errors.extend(e);
    }
    assert!(slow.join().expect("slow").is_ok(), "the slow response was cut by a reload");
    assert!(sent >= 2500, "the load ran: {sent} requests");
    assert!(errors.is_empty(), "{} of {sent} failed, first: {:?}", errors.len(), errors.first());
}
