//! Balancing, black-box: weights through the proxy, failover without loss.

mod common;

use common::{config, dead_addr, Backend, Fulcrum};

async fn pick_names(f: &Fulcrum, n: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut names = Vec::new();
    for _ in 0..n {
        let r = client.get(f.url("/")).send().await.expect("request");
        assert_eq!(r.status(), 200);
        names.push(r.headers()["x-backend"].to_str().expect("ascii").to_owned());
    }
    names
}

#[tokio::test]
async fn smooth_weighted_round_robin_interleaves() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let cfg = config(
        "http",
        &[("a", a.addr, 5), ("b", b.addr, 1), ("c", c.addr, 1)],
        "",
        "algorithm = \"weighted_round_robin\"",
    );
    let f = Fulcrum::start(&cfg, 1);
    assert_eq!(pick_names(&f, 7).await, ["a", "a", "b", "a", "c", "a", "a"]);
}

#[tokio::test]
async fn a_dead_backend_costs_no_request() {
    let live = Backend::start("live");
    let cfg = config("http", &[("dead", dead_addr(), 1), ("live", live.addr, 1)], "retries = 1", "");
    let f = Fulcrum::start(&cfg, 1);
    assert!(pick_names(&f, 20).await.iter().all(|n| n == "live"));
}

#[tokio::test]
async fn killing_a_backend_under_load_loses_nothing_not_yet_sent() {
    let mut a = Backend::start("a");
    let b = Backend::start("b");
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], "retries = 2", ""), 1);
    let client = reqwest::Client::new();
    let mut by_backend = std::collections::HashMap::<String, usize>::new();
    for i in 0..200 {
        if i == 100 {
            // Both have pooled idle connections now; a's die with it.
            a.proc.child.kill().expect("kill a");
            a.proc.child.wait().expect("reap a");
        }
        let r = client.get(f.url("/")).send().await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 200, "request {i}");
        *by_backend.entry(r.headers()["x-backend"].to_str().expect("ascii").to_owned()).or_default() += 1;
    }
    assert_eq!(by_backend["a"], 50, "{by_backend:?}");
    assert_eq!(by_backend["b"], 150, "{by_backend:?}");
}

#[tokio::test]
async fn retries_are_bounded() {
    let dead: Vec<_> = (0..4).map(|_| dead_addr()).collect();
    let live = Backend::start("live");
    let list = [
        ("d1", dead[0], 1),
        ("d2", dead[1], 1),
        ("d3", dead[2], 1),
        ("d4", dead[3], 1),
        ("live", live.addr, 1),
    ];
    let f = Fulcrum::start(&config("http", &list, "retries = 1", "algorithm = \"round_robin\""), 1);
    let r = reqwest::get(f.url("/")).await.expect("request");
    // The first pick is d1, the one retry d2: live is never reached.
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("body");
    assert!(body.contains("d1") && body.contains("d2") && !body.contains("d3"), "{body}");
}
