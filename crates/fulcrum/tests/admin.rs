//! The admin API and /metrics, black-box: a real `fulcrum run` with
//! `[admin] listen = "127.0.0.1:0"`, real backends, and an HTTP client.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{admin_config as config, admin_config_with, wait_until, Backend, Fulcrum};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A running Fulcrum and its admin address (the last listening line).
struct Lb {
    f: Fulcrum,
    admin: SocketAddr,
    http: reqwest::blocking::Client,
}

impl Lb {
    fn start(config: &str) -> Lb {
        let f = Fulcrum::start(config, 2);
        let admin = *f.addrs.last().expect("admin address");
        let http = reqwest::blocking::Client::builder().timeout(WAIT).build().expect("client");
        Lb { f, admin, http }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().expect("GET");
        let status = r.status().as_u16();
        (status, r.json().expect("JSON"))
    }

    fn post(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        let mut r =
            self.http.post(self.url(path)).header("content-type", "application/json").body(body.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().expect("POST");
        let status = r.status().as_u16();
        (status, r.json().expect("JSON"))
    }

    fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().expect("GET /metrics");
        assert_eq!(r.status().as_u16(), 200);
        r.text().expect("text")
    }

    /// One request through the load balancer; the backend that answered.
    fn request(&self) -> String {
        let r = self.http.get(self.f.url("/")).send().expect("request through fulcrum");
        assert_eq!(r.status().as_u16(), 200);
        r.headers()["x-backend"].to_str().expect("name").to_owned()
    }

    fn backend(&self, pool: &str, name: &str) -> Value {
        let (_, pools) = self.get("/api/v1/pools");
        let p = pools.as_array().expect("pools").iter().find(|p| p["name"] == pool).expect("pool").clone();
        p["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .find(|b| b["name"] == name)
            .expect("backend")
            .clone()
    }
}

/// The value of the series `series` (name and labels, exactly as printed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[test]
fn services_and_pools_show_the_running_configuration() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr), ("b", b.addr)], ""));
    let (status, services) = lb.get("/api/v1/services");
    assert_eq!(status, 200);
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["mode"], "http");
    assert_eq!(services[0]["pool"], "web");
    assert_eq!(services[0]["routes"], json!([]));
    assert_eq!(services[0].get("max_connections"), Some(&Value::Null), "no limit configured");

    for _ in 0..4 {
        lb.request();
    }
    let (status, pools) = lb.get("/api/v1/pools");
    assert_eq!(status, 200);
    assert_eq!(pools[0]["name"], "web");
    assert_eq!(pools[0]["algorithm"], "round_robin");
    let backends = pools[0]["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    for (row, backend) in backends.iter().zip([&a, &b]) {
        assert_eq!(row["name"], backend.name.as_str());
        assert_eq!(row["address"], backend.addr.to_string());
        assert_eq!(row["health"], "up");
        assert_eq!(row["target"], "enabled");
        assert_eq!(row["current"], "enabled");
        assert_eq!(row["weight"], 1);
        assert_eq!(row["load"], Value::Null);
        assert_eq!(row["counters"]["requests"], 2, "round robin: {row}");
        assert_eq!(row["counters"]["responses"]["2xx"], 2);
    }
    let (_, services) = lb.get("/api/v1/services");
    assert_eq!(services[0]["counters"]["requests"], 4);
}

#[test]
fn sessions_list_open_connections_filtered_and_paged() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    // Three keep-alive clients, each with one request answered and the connection left open.
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(lb.f.addr()).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
            common::read_response(&mut s);
            s
        })
        .collect();
    let (status, page) = lb.get("/api/v1/sessions");
    assert_eq!(status, 200);
    assert_eq!(page["total"], 3, "{page}");
    let rows = page["rows"].as_array().expect("rows");
    let ports: Vec<String> = clients.iter().map(|c| c.local_addr().expect("addr").to_string()).collect();
    for row in rows {
        assert_eq!(row["service"], "web");
        assert_eq!(row["listener"], lb.f.addr().to_string());
        assert!(ports.contains(&row["client"].as_str().expect("client").to_owned()), "{row}");
    }
    let one = &ports[1];
    let (_, page) = lb.get(&format!("/api/v1/sessions?client={one}"));
    assert_eq!(page["total"], 1);
    assert_eq!(page["rows"][0]["client"], one.as_str());
    assert_eq!(page["rows"][0]["requests"], 1);
    let (_, page) = lb.get("/api/v1/sessions?limit=2&offset=2");
    assert_eq!((page["total"].clone(), page["rows"].as_array().expect("rows").len()), (json!(3), 1));
    let (_, page) = lb.get("/api/v1/sessions?service=other");
    assert_eq!(page["total"], 0);
    let (_, services) = lb.get("/api/v1/services");
    assert_eq!(services[0]["sessions"], 3);

    let (status, e) = lb.get("/api/v1/sessions?limit=5000");
    assert_eq!(status, 400);
    assert!(e["error"].as_str().expect("message").contains("limit 5000"), "{e}");

    drop(clients);
    wait_until("the rows to go", WAIT, || lb.get("/api/v1/sessions").1["total"] == 0);
}

#[test]
fn drain_via_the_api_takes_the_backend_out_of_rotation() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr), ("b", b.addr)], ""));
    let (status, row) = lb.post("/api/v1/pools/web/backends/a/state", r#"{"target": "drain"}"#, None);
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["name"], "a");
    assert_eq!(row["target"], "drain");
    assert!(row["current"] == "drained" || row["current"] == "draining", "{row}");
    let seen: Vec<String> = (0..6).map(|_| lb.request()).collect();
    assert!(seen.iter().all(|n| n == "b"), "a drained backend took new requests: {seen:?}");
    assert_eq!(lb.backend("web", "a")["target"], "drain");

    let (status, row) = lb.post("/api/v1/pools/web/backends/a/state", r#"{"target": "enabled"}"#, None);
    assert_eq!(status, 200);
    assert_eq!(row["current"], "enabled");
    let seen: Vec<String> = (0..4).map(|_| lb.request()).collect();
    assert!(seen.contains(&"a".to_owned()), "enabled again but never picked: {seen:?}");
}

#[test]
fn errors_are_json_with_the_right_status() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let drain = r#"{"target": "drain"}"#;
    let (status, e) = lb.post("/api/v1/pools/nope/backends/a/state", drain, None);
    assert_eq!((status, e), (404, json!({"error": "no pool named \"nope\""})));
    let (status, e) = lb.post("/api/v1/pools/web/backends/zz/state", drain, None);
    assert_eq!((status, e), (404, json!({"error": "pool \"web\" has no backend named \"zz\""})));
    let (status, e) = lb.post("/api/v1/pools/web/backends/a/state", r#"{"target": "off"}"#, None);
    assert_eq!(status, 400);
    assert!(e["error"].as_str().expect("message").contains("unknown variant `off`"), "{e}");
    let (status, e) = lb.post("/api/v1/pools/web/backends/a/state", "", None);
    assert_eq!(status, 400);
    assert!(e["error"].as_str().expect("message").starts_with("body: "), "{e}");
    let (status, e) = lb.get("/api/v1/nothing");
    assert_eq!((status, e), (404, json!({"error": "no such endpoint: GET /api/v1/nothing"})));
    let (status, e) = lb.get("/api/v1/reload");
    assert_eq!(status, 405);
    assert!(e["error"].is_string());
    assert_eq!(lb.backend("web", "a")["target"], "enabled", "no failed call changed anything");
}

#[test]
fn mutating_calls_need_the_token_when_token_file_is_set() {
    let a = Backend::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# operators\ns3cret\n").expect("write tokens");
    let lb =
        Lb::start(&config(&[("a", a.addr)], &format!("token_file = {:?}", tokens.display().to_string())));
    let path = "/api/v1/pools/web/backends/a/state";
    let drain = r#"{"target": "drain"}"#;

    let r = lb.http.post(lb.url(path)).body(drain).send().expect("POST");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let e: Value = r.json().expect("JSON");
    assert!(e["error"].as_str().expect("message").contains("Bearer"), "{e}");
    assert_eq!(lb.post(path, drain, Some("guess")).0, 401);
    assert_eq!(lb.post("/api/v1/reload", "", None).0, 401);
    assert_eq!(lb.backend("web", "a")["target"], "enabled");

    let (status, row) = lb.post(path, drain, Some("s3cret"));
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["target"], "drain");
    // Reads stay open.
    assert_eq!(lb.get("/api/v1/pools").0, 200);
    assert_eq!(lb.http.get(lb.url("/metrics")).send().expect("GET").status().as_u16(), 200);
}

#[test]
fn reload_via_the_api_applies_or_explains() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let file = lb.f.proc.dir.path().join("fulcrum.toml");
    std::fs::write(&file, config(&[("a", a.addr), ("b", b.addr)], "")).expect("rewrite");
    let (status, body) = lb.post("/api/v1/reload", "", None);
    assert_eq!(status, 200, "{body}");
    assert!(body["result"].as_str().expect("result").contains("pool \"web\" changed"), "{body}");
    assert_eq!(lb.get("/api/v1/pools").1[0]["backends"].as_array().expect("backends").len(), 2);

    std::fs::write(&file, config(&[("a", a.addr)], "").replace("mode = \"http\"", "mode = \"htp\""))
        .expect("rewrite");
    let (status, body) = lb.post("/api/v1/reload", "", None);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().expect("error").contains("htp"), "{body}");
    assert_eq!(
        lb.get("/api/v1/pools").1[0]["backends"].as_array().expect("backends").len(),
        2,
        "nothing changed"
    );
}

#[test]
fn open_connections_show_per_service() {
    let a = Backend::start("a");
    // Connections from 127.0.0.1 open with a PROXY header, so one that sends
    // nothing is admitted (counted) but not yet a session.
    let service = "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                   [service.limits]\nmax_connections = 5";
    let lb = Lb::start(&admin_config_with(&[("a", a.addr)], service, ""));
    let open = |t: &str| sample(t, r#"fulcrum_service_connections{service="web"}"#);
    let in_api = || {
        let (_, services) = lb.get("/api/v1/services");
        (services[0]["connections"].clone(), services[0]["sessions"].clone())
    };
    assert_eq!(open(&lb.metrics()), 0.0);
    assert_eq!(in_api(), (json!(0), json!(0)));
    assert_eq!(lb.get("/api/v1/services").1[0]["max_connections"], 5);
    let silent = TcpStream::connect(lb.f.addr()).expect("connect");
    wait_until("the silent connection to be counted", WAIT, || open(&lb.metrics()) == 1.0);
    assert_eq!(in_api(), (json!(1), json!(0)), "admitted, but no session before its PROXY header");
    drop(silent);
    wait_until("the silent connection to leave the count", WAIT, || open(&lb.metrics()) == 0.0);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.f.addr()).expect("connect");
        s.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        assert!(common::read_response(&mut s).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    assert_eq!(open(&lb.metrics()), 2.0, "two answered keep-alive connections");
    assert_eq!(in_api(), (json!(2), json!(2)));
    drop(held);
    wait_until("the closed connections to leave the count", WAIT, || open(&lb.metrics()) == 0.0);
    assert_eq!(in_api().0, 0);
}

#[test]
fn service_counters_go_on_across_a_reload() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let requests = |t: &str| sample(t, r#"fulcrum_service_requests_total{service="web"}"#);
    for _ in 0..3 {
        lb.request();
    }
    let before = requests(&lb.metrics());
    assert!(before >= 3.0, "{before}");
    let file = lb.f.proc.dir.path().join("fulcrum.toml");
    std::fs::write(&file, config(&[("a", a.addr), ("b", b.addr)], "")).expect("rewrite");
    let (status, body) = lb.post("/api/v1/reload", "", None);
    assert_eq!(status, 200, "{body}");
    assert!(requests(&lb.metrics()) >= before, "a counter went back with the reload");
    lb.request();
    assert!(requests(&lb.metrics()) > before);
}

#[test]
fn metrics_move_with_traffic() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr), ("b", b.addr)], ""));
    let before = lb.metrics();
    assert!(before.ends_with("# EOF\n"));
    let ba = r#"{pool="web",backend="a"}"#;
    assert_eq!(sample(&before, &format!("fulcrum_backend_health{ba}")), 1.0);
    let requests = |t: &str| {
        sample(t, r#"fulcrum_backend_requests_total{pool="web",backend="a"}"#)
            + sample(t, r#"fulcrum_backend_requests_total{pool="web",backend="b"}"#)
    };
    let r0 = requests(&before);
    let ok = |t: &str| sample(t, r#"fulcrum_service_responses_total{service="web",class="2xx"}"#);
    for _ in 0..6 {
        lb.request();
    }
    // A response is counted as its exchange ends, just after the client has read it.
    let mut after = String::new();
    wait_until("the sixth response to be counted", WAIT, || {
        after = lb.metrics();
        ok(&after) - ok(&before) >= 6.0
    });
    assert_eq!(requests(&after) - r0, 6.0);
    let svc = |t: &str, s: &str| sample(t, &format!("{s}{{service=\"web\"}}"));
    assert_eq!(
        svc(&after, "fulcrum_service_requests_total") - svc(&before, "fulcrum_service_requests_total"),
        6.0
    );
    assert!(
        svc(&after, "fulcrum_service_sent_bytes_total") > svc(&before, "fulcrum_service_sent_bytes_total")
    );
    assert_eq!(ok(&after) - ok(&before), 6.0);
    let backend_ok = sample(&after, r#"fulcrum_backend_responses_total{pool="web",backend="a",class="2xx"}"#);
    assert_eq!(backend_ok, 3.0);
    let count = sample(&after, &format!("fulcrum_backend_latency_seconds_count{ba}"));
    assert_eq!(count, 3.0);
    let inf = sample(&after, r#"fulcrum_backend_latency_seconds_bucket{le="+Inf",pool="web",backend="a"}"#);
    assert_eq!(inf, count, "+Inf bucket holds every observation");
    assert!(after.contains("# TYPE fulcrum_backend_latency_seconds histogram"));
    assert_eq!(sample(&after, &format!("fulcrum_backend_sessions{ba}")), 0.0);
}

#[test]
fn snat_pools_show_usage_in_the_api_and_metrics() {
    let a = Backend::start("a");
    let base = config(&[("a", a.addr)], "");
    let with_snat = base.replace("algorithm = \"round_robin\"", "algorithm = \"round_robin\"\nsnat = \"out\"")
        + "\n[[snat_pool]]\nname = \"out\"\nfirst_ip = \"127.0.0.1\"\nlast_ip = \"127.0.0.1\"\n\
           netmask = \"255.0.0.0\"\nports = \"40000-40063\"\nblock_size = 16\ninitial_blocks = 1\nmax_blocks = 4\n";
    let lb = Lb::start(&with_snat);
    assert_eq!(lb.request(), "a");
    let (status, snat) = lb.get("/api/v1/snat");
    assert_eq!(status, 200, "{snat}");
    let out = &snat[0];
    assert_eq!(out["name"], "out");
    assert_eq!(out["pools"], json!(["web"]));
    assert_eq!(out["capacity"], 64);
    assert!(out["exhausted"].is_u64() && out["waited"].is_u64(), "{out}");
    assert_eq!(lb.get("/api/v1/pools").1[0]["snat"], "out");
    let text = lb.metrics();
    assert_eq!(sample(&text, r#"fulcrum_snat_capacity{snat_pool="out"}"#), 64.0);
    assert_eq!(sample(&text, r#"fulcrum_snat_exhausted_total{snat_pool="out"}"#), 0.0);
    // The one backend connection holds its source address:port, in use or idle in the pool.
    assert_eq!(sample(&text, r#"fulcrum_snat_allocated{snat_pool="out"}"#), 1.0);
}

#[test]
fn the_dashboard_is_at_the_root() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let r = lb.http.get(lb.url("/")).send().expect("GET /");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().expect("type").starts_with("text/html"));
}
