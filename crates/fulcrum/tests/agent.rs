//! `fulcrum agent`, black-box: the report describes this very host, read
//! back through the core's report type.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::Agent;
use fulcrum_core::agent::{is_listening, load_score, AgentReport, AgentState};

/// GETs `path` and returns the report both as the core type and as raw JSON.
async fn get(client: &reqwest::Client, agent: &Agent, path: &str) -> (AgentReport, serde_json::Value) {
    let r = client.get(agent.url(path)).send().await.expect("get report");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.expect("body");
    let report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a report ({e}): {text}"));
    (report, serde_json::from_str(&text).expect("json"))
}

/// GETs /report until `done` holds of it (the sampler runs every second), or
/// panics with the last report after 10 s.
async fn until(
    client: &reqwest::Client,
    agent: &Agent,
    done: impl Fn(&AgentReport) -> bool,
) -> (AgentReport, serde_json::Value) {
    let start = Instant::now();
    loop {
        let (report, json) = get(client, agent, "/report").await;
        if done(&report) {
            return (report, json);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "condition never held; last report: {json:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm").expect("comm").trim_end().to_owned()
}

#[tokio::test]
async fn reports_this_host() {
    let agent = Agent::start(&[]);
    let client = reqwest::Client::new();
    // A listener of this test process and a connection it holds open.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mine: SocketAddr = listener.local_addr().expect("addr");
    let _client_end = TcpStream::connect(mine).expect("connect");
    let _server_end = listener.accept().expect("accept");

    let (report, json) = until(&client, &agent, |r| r.listening.iter().any(|s| s.address == mine)).await;

    assert!((0.0..=1.0).contains(&report.cpu), "{json:#}");
    assert!(report.memory.total_bytes > report.memory.available_bytes, "{json:#}");
    assert!(report.memory.available_bytes > 0, "{json:#}");
    // Both ends of the held connection are established on this host.
    assert!(report.tcp_established >= 2, "{json:#}");
    assert!(!report.network.interface.is_empty());
    assert!(report.network.rx_bytes_per_second >= 0.0 && report.network.tx_bytes_per_second >= 0.0);
    match report.network.speed_bytes_per_second {
        Some(speed) => assert!(report.network.free_bytes_per_second.is_some_and(|f| f <= speed)),
        None => assert_eq!(report.network.free_bytes_per_second, None),
    }
    assert_eq!(report.capacity, None);
    assert_eq!(report.state, AgentState::Up);
    assert!(report.warnings.is_empty(), "{json:#}");

    let socket = report.listening.iter().find(|s| s.address == mine).expect("our listener");
    assert_eq!(socket.pid, Some(std::process::id()), "{json:#}");
    assert_eq!(socket.command.as_deref(), Some(own_comm().as_str()), "{json:#}");
    assert!(socket.rss_bytes.is_some_and(|b| b > 0), "{json:#}");
    assert!(socket.cpu.is_none_or(|c| (0.0..=1.0).contains(&c)), "{json:#}");

    let own = report.listening.iter().find(|s| s.address == agent.addr).expect("the agent's own listener");
    assert_eq!(own.pid, Some(agent.proc.child.id()), "{json:#}");
    assert_eq!(own.command.as_deref(), Some("fulcrum"), "{json:#}");

    assert!(is_listening(&report, mine));
    assert!(is_listening(&report, agent.addr));
    let score = load_score(&report);
    assert!((0.0..=1.0).contains(&score), "{score}");

    // The wire names an operator or another poller reads.
    for key in ["cpu", "memory", "network", "tcp_established", "listening", "capacity", "state", "warnings"] {
        assert!(json.get(key).is_some(), "no {key:?} in {json:#}");
    }
    assert_eq!(json["state"], "up");
    assert!(json["capacity"].is_null());

    // The listener closes: the report follows, and the balancer would call it down.
    drop(listener);
    let (report, _) = until(&client, &agent, |r| !r.listening.iter().any(|s| s.address == mine)).await;
    assert!(!is_listening(&report, mine));
}

#[tokio::test]
async fn the_state_file_switches_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state");
    let agent = Agent::start(&["--state-file", path.to_str().expect("utf-8 path")]);
    let client = reqwest::Client::new();

    // No file yet: up.
    let (report, _) = get(&client, &agent, "/report").await;
    assert_eq!(report.state, AgentState::Up);
    assert!(report.warnings.is_empty());

    // Read on every report: no waiting for a sample.
    std::fs::write(&path, "drain\n").expect("write");
    let (report, json) = get(&client, &agent, "/report").await;
    assert_eq!(report.state, AgentState::Drain);
    assert_eq!(json["state"], "drain");

    std::fs::write(&path, "down for maintenance\n").expect("write");
    assert_eq!(get(&client, &agent, "/report").await.0.state, AgentState::Down);

    std::fs::write(&path, "sleepy\n").expect("write");
    let (report, _) = get(&client, &agent, "/report").await;
    assert_eq!(report.state, AgentState::Up);
    assert!(report.warnings.iter().any(|w| w.contains("sleepy")), "{:?}", report.warnings);

    std::fs::write(&path, "up\n").expect("write");
    let (report, _) = get(&client, &agent, "/report").await;
    assert_eq!(report.state, AgentState::Up);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    std::fs::write(&path, "drain\n").expect("write");
    assert_eq!(get(&client, &agent, "/report").await.0.state, AgentState::Drain);
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(get(&client, &agent, "/report").await.0.state, AgentState::Up);
}

#[tokio::test]
async fn capacity_is_reported_and_scored() {
    let agent = Agent::start(&["--capacity", "1"]);
    let client = reqwest::Client::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _held = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (report, json) = until(&client, &agent, |r| r.tcp_established >= 1).await;
    assert_eq!(report.capacity, Some(1));
    assert_eq!(json["capacity"], 1);
    // At least one established connection against a capacity of one: full.
    assert_eq!(load_score(&report), 1.0);
}

#[tokio::test]
async fn paths() {
    let agent = Agent::start(&[]);
    let client = reqwest::Client::new();
    let (root, _) = get(&client, &agent, "/").await;
    assert_eq!(root.network.interface, get(&client, &agent, "/report").await.0.network.interface);
    for path in ["/nope", "/report/", "/reports", "/healthz"] {
        assert_eq!(client.get(agent.url(path)).send().await.expect("get").status(), 404, "{path}");
    }
    let r = client.post(agent.url("/report")).send().await.expect("post");
    assert_eq!(r.status(), 405);
}

#[test]
fn exits_cleanly_on_sigterm() {
    let mut agent = Agent::start(&[]);
    assert!(agent.proc.terminate().success());
}

#[test]
fn an_unknown_interface_is_an_error() {
    let out = std::process::Command::new(common::bin())
        .args(["agent", "--listen", "127.0.0.1:0", "--interface", "nosuch0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nosuch0") && stderr.contains("lo"), "{stderr}");
}
