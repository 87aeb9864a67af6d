//! Process lifecycle, black-box: bind errors, bad config, graceful shutdown, demo.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, config, read_response, Backend, Fulcrum};

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let (addr, arrived, release) = common::gated();
    let mut f = Fulcrum::start(&config("http", &[("g", addr, 1)], "", ""), 1);
    let front = f.addr();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(front).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        let resp = read_response(&mut s);
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest).map(|_| rest.is_empty()).unwrap_or(false);
        (resp, closed)
    });
    arrived.recv_timeout(Duration::from_secs(10)).expect("request reached the backend");
    let pid = f.proc.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // New connections are refused once the listener is gone (bounded wait).
    let refused = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        TcpStream::connect(front).is_err()
    });
    assert!(refused, "listener still open after SIGTERM");
    release.send(()).expect("release");
    let (resp, closed) = client.join().expect("client");
    assert!(resp.ends_with("finished"), "{resp}");
    assert!(resp.contains("Connection: close"), "the last response says the connection ends: {resp}");
    assert!(closed);
    let status = f.proc.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_grace_period_bounds_shutdown() {
    let (addr, arrived, _release) = common::gated();
    let mut f = Fulcrum::start(
        &(config("http", &[("g", addr, 1)], "", "") + "\n[runtime]\nshutdown_grace = \"300ms\"\n"),
        1,
    );
    let front = f.addr();
    let _client = std::thread::spawn(move || common::raw(front, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
    arrived.recv_timeout(Duration::from_secs(10)).expect("request reached the backend");
    let started = std::time::Instant::now();
    let status = f.proc.terminate();
    // The configured 300ms, not the 10s default: the stuck session is cut then.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(f.proc.stderr().contains("grace=300ms"), "{}", f.proc.stderr());
    assert!(f.proc.stderr().contains("grace period over"), "{}", f.proc.stderr());
}

#[test]
fn sighup_reloads_and_does_not_kill() {
    let b = Backend::start("b");
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], "", ""), 1);
    // The file is unchanged: the reload says so, and Fulcrum serves on.
    let verdict = f.reload(&config("http", &[("b", b.addr, 1)], "", ""));
    assert!(verdict.contains("configuration reloaded") && verdict.contains("no change"), "{verdict}");
    assert!(f.proc.stderr().lines().all(|l| !l.contains("panicked")));
    let out = common::raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn idle_connections_do_not_hold_up_shutdown() {
    let b = Backend::start("b");
    let mut f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], "", ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    let status = f.proc.terminate();
    assert!(status.success());
    assert!(!f.proc.stderr().contains("grace period over"), "the idle client was closed at once");
}

#[test]
fn a_failed_bind_names_the_service_and_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let b = Backend::start("b");
    let cfg = config("http", &[("b", b.addr, 1)], "", "").replace("127.0.0.1:0", &addr.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.toml");
    std::fs::write(&path, cfg).expect("write");
    let out = Command::new(bin()).args(["run", "-c"]).arg(&path).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service \"web\"") && err.contains(&addr.to_string()), "{err}");
}

#[test]
fn zero_workers_is_refused_with_the_option_named() {
    let out = Command::new(bin()).args(["run", "-c", "unused.toml", "--workers", "0"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workers"), "{err}");
}

#[test]
fn two_workers_serve_and_shut_down() {
    let b = Backend::start("b");
    let mut f = Fulcrum::start_with(&config("http", &[("b", b.addr, 1)], "", ""), 1, &["--workers", "2"]);
    // Sessions go to the workers in turn: several connections reach both.
    for _ in 0..4 {
        let mut s = TcpStream::connect(f.addr()).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 200 ") && out.ends_with("b\n"), "{out}");
    }
    // Each worker has served a connection by now, so each has named its thread.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", f.proc.child.id()))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    for worker in ["worker-0", "worker-1"] {
        assert!(threads.iter().any(|t| t == worker), "no thread {worker} in {threads:?}");
    }
    // SIGTERM stops the workers too: the process exits, and with 0.
    // SAFETY: kill(2) on the pid of a child this test started and still owns.
    unsafe { libc::kill(f.proc.child.id() as i32, libc::SIGTERM) };
    let status = f.proc.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"nope\"\n",
    )
    .expect("write");
    let out = Command::new(bin()).args(["run", "-c"]).arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn demo_serves_three_backends_and_stops_on_ctrl_c() {
    let mut child = Command::new(bin())
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut printed = String::new();
    while !line.starts_with("listening service=") {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "demo exited: {printed}");
        printed.push_str(&line);
    }
    assert!(line.contains("127.0.0.1:8080"), "{line}");
    assert!(printed.contains("curl -i http://127.0.0.1:8080/"), "{printed}");
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect("127.0.0.1:8080").expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
        let resp = read_response(&mut s);
        let name = resp.lines().find_map(|l| l.strip_prefix("x-backend: ")).expect("x-backend").to_owned();
        names.insert(name);
    }
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["alpha", "beta", "gamma"]);
    // The admin API and dashboard are on 127.0.0.1:9900.
    let mut s = TcpStream::connect("127.0.0.1:9900").expect("admin API");
    s.write_all(b"GET /api/v1/pools HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let mut pools = String::new();
    s.read_to_string(&mut pools).expect("read");
    assert!(pools.starts_with("HTTP/1.1 200") && pools.contains("\"gamma\""), "{pools}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "demo did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}
