//! Health and load, black-box: active checks, failover under load, rejoin,
//! drain through the agent, agent-based health, least_load.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::{config, raw, status_backend, Agent, Backend, Fulcrum};

const WAIT: Duration = Duration::from_secs(20);

fn get(f: &Fulcrum) -> Result<String, String> {
    let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out);
    }
    let name =
        out.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("x-backend: ").map(str::to_owned));
    name.ok_or(out)
}

fn health(kind_lines: &str) -> String {
    format!("[pool.health]\n{kind_lines}\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2")
}

#[test]
fn a_failing_http_check_takes_a_backend_down_with_its_reason() {
    let a = Backend::start("a");
    let sick = status_backend("sick", 503);
    let pool = format!("algorithm = \"round_robin\"\n{}", health("kind = \"http\"\npath = \"/healthz\""));
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1), ("sick", sick, 1)], "", &pool), 1);
    let line = f.proc.wait_log(&["backend is down", "sick"], WAIT);
    assert!(line.contains("HTTP 503 from /healthz"), "{line}");
    for _ in 0..10 {
        assert_eq!(get(&f).as_deref(), Ok("a"));
    }
    assert!(!f.proc.stderr().lines().any(|l| l.contains("backend is down") && l.contains("backend=a")));
}

#[test]
fn killing_a_backend_under_load_fails_no_request_and_it_rejoins() {
    let mut a = Backend::start("a");
    let a_addr = a.addr;
    let b = Backend::start("b");
    // Passive checks (on by default) may see the failures before the active
    // check does; a short ejection lets the rejoin come quickly.
    let pool = format!(
        "algorithm = \"round_robin\"\n{}\n[pool.passive]\nejection = \"300ms\"",
        health("kind = \"tcp\"")
    );
    let f = Fulcrum::start(&config("http", &[("a", a_addr, 1), ("b", b.addr, 1)], "retries = 1", &pool), 1);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        if i == 50 {
            a.proc.child.kill().expect("kill a");
            a.proc.child.wait().expect("reap a");
        }
        let name = get(&f).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        *seen.entry(name).or_default() += 1;
    }
    let line = f.proc.wait_log(&["backend is down", "backend=a"], WAIT);
    assert!(line.to_ascii_lowercase().contains("refused"), "the reason names the failure: {line}");
    assert_eq!(seen["a"], 25, "{seen:?}");
    // After the detection window every request goes to b, none is even retried.
    let before = f.proc.stderr().matches("connect failed").count();
    for _ in 0..20 {
        assert_eq!(get(&f).as_deref(), Ok("b"));
    }
    assert_eq!(f.proc.stderr().matches("connect failed").count(), before, "a down backend is not tried");

    // Bring it back on the same address: it rejoins after `rise` passing checks.
    let _a = Backend::start_at(&a_addr.to_string(), "a");
    f.proc.wait_log(&["backend is up", "backend=a"], WAIT);
    let names: Vec<String> = (0..10).map(|_| get(&f).expect("request")).collect();
    assert!(names.iter().any(|n| n == "a"), "{names:?}");
}

#[test]
fn draining_through_the_agent_lets_sessions_finish_and_takes_no_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state_arg = state.to_str().expect("utf-8").to_owned();
    let agent_a = Agent::start(&["--state-file", &state_arg]);
    let agent_b = Agent::start(&[]);
    let (gated_addr, arrived, release) = common::gated();
    let b = Backend::start("b");
    let mut cfg =
        config("http", &[("gated", gated_addr, 1), ("b", b.addr, 1)], "", "algorithm = \"round_robin\"");
    cfg = cfg.replacen("weight = 1\n", &format!("weight = 1\nagent = \"{}\"\n", agent_a.addr), 1);
    cfg = cfg.replacen(
        &format!("address = \"{}\"\nweight = 1\n", b.addr),
        &format!("address = \"{}\"\nweight = 1\nagent = \"{}\"\n", b.addr, agent_b.addr),
        1,
    );
    cfg.push_str("\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n");
    let f = Fulcrum::start(&cfg, 1);
    f.proc.wait_log(&["agent reachable", "backend=gated"], WAIT);

    // The first pick of round robin is `gated`: a session in flight there.
    let front = f.addr();
    let in_flight =
        std::thread::spawn(move || raw(front, b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    arrived.recv_timeout(WAIT).expect("the first request reached gated");

    std::fs::write(&state, "drain\n").expect("write state");
    f.proc.wait_log(&["agent state changed", "backend=gated", "Drain"], WAIT);
    for _ in 0..10 {
        assert_eq!(get(&f).as_deref(), Ok("b"), "a draining backend takes no new session");
    }
    release.send(()).expect("release");
    let out = in_flight.join().expect("client");
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("finished"), "{out}");
    f.proc.wait_log(&["backend drained", "backend=gated"], WAIT);
}

#[test]
fn agent_health_tells_a_listening_service_from_a_live_host() {
    // The agent samples listening sockets each second: start the backend first.
    let live = Backend::start("live");
    let agent = Agent::start(&[]);
    let gone = common::dead_addr();
    let mut cfg =
        config("http", &[("live", live.addr, 1), ("gone", gone, 1)], "", &health("kind = \"agent\""));
    cfg = cfg.replace("weight = 1\n", &format!("weight = 1\nagent = \"{}\"\n", agent.addr));
    let f = Fulcrum::start(&cfg, 1);
    let line = f.proc.wait_log(&["backend is down", "backend=gone"], WAIT);
    assert!(
        line.contains(&format!("port {} is not listening on the backend host (agent)", gone.port())),
        "{line}"
    );
    for _ in 0..10 {
        assert_eq!(get(&f).as_deref(), Ok("live"));
    }
}

/// Serves a fixed agent report with `cpu` as the host's CPU utilisation:
/// this machine has one CPU for every agent on it, so a busy and an idle
/// host are stood in for by their reports. The real agent's readings of
/// /proc are tested in tests/agent.rs; what is tested here is Fulcrum
/// polling reports and balancing by them.
fn host_report(cpu: f64) -> SocketAddr {
    let report = fulcrum_core::agent::AgentReport {
        cpu,
        memory: fulcrum_core::agent::Memory { total_bytes: 1 << 34, available_bytes: 1 << 33 },
        network: fulcrum_core::agent::Network {
            interface: "eth0".into(),
            rx_bytes_per_second: 0.0,
            tx_bytes_per_second: 0.0,
            speed_bytes_per_second: None,
            free_bytes_per_second: None,
        },
        tcp_established: 1,
        listening: Vec::new(),
        capacity: None,
        state: fulcrum_core::agent::AgentState::Up,
        warnings: Vec::new(),
    };
    let body = serde_json::to_string(&report).expect("json");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    addr
}

#[test]
fn least_load_sends_a_busy_host_less() {
    let (busy, idle) = (Backend::start("busy"), Backend::start("idle"));
    let mut cfg =
        config("http", &[("busy", busy.addr, 1), ("idle", idle.addr, 1)], "", "algorithm = \"least_load\"");
    cfg = cfg.replacen("weight = 1\n", &format!("weight = 1\nagent = \"{}\"\n", host_report(0.95)), 1);
    cfg = cfg.replacen(
        &format!("address = \"{}\"\nweight = 1\n", idle.addr),
        &format!("address = \"{}\"\nweight = 1\nagent = \"{}\"\n", idle.addr, host_report(0.05)),
        1,
    );
    cfg.push_str("\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n");
    let f = Fulcrum::start(&cfg, 1);
    f.proc.wait_log(&["agent reachable", "backend=busy"], WAIT);
    f.proc.wait_log(&["agent reachable", "backend=idle"], WAIT);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        *seen.entry(get(&f).expect("request")).or_default() += 1;
    }
    let (b, i) = (seen.get("busy").copied().unwrap_or(0), seen.get("idle").copied().unwrap_or(0));
    assert!(i >= 5 * b.max(1), "busy {b}, idle {i}");
}

#[test]
fn a_backend_at_its_connection_limit_is_passed_over() {
    let (gated_addr, arrived, release) = common::gated();
    let b = Backend::start("b");
    // Weighted 256 to 1, the selector's first two picks are both `gated`.
    let mut cfg = config(
        "http",
        &[("gated", gated_addr, 256), ("b", b.addr, 1)],
        "",
        "algorithm = \"weighted_round_robin\"",
    );
    cfg = cfg.replacen("weight = 256\n", "weight = 256\nmax_connections = 1\n", 1);
    let f = Fulcrum::start(&cfg, 1);
    let front = f.addr();
    let held =
        std::thread::spawn(move || raw(front, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    arrived.recv_timeout(WAIT).expect("the first request reached gated");
    assert_eq!(get(&f).as_deref(), Ok("b"), "gated is at max_connections");
    release.send(()).expect("release");
    assert!(held.join().expect("client").ends_with("finished"));
}
