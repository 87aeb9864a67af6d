//! The admin router driven in-process: a `Shared` built by hand from a
//! configuration, requests through `tower::ServiceExt::oneshot`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fulcrum_core::model::{BackendId, Mode};
use fulcrum_core::session::{BackendSide, Session, SessionHandle, SessionTable};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::generation::Generation;
use crate::state::{Live, ReloadReply};

const CONFIG: &str = r#"
[[service]]
name = "web"
listen = ["127.0.0.1:0"]
mode = "http"
pool = "web"

  [[service.route]]
  name = "api"
  path_prefix = "/api/"
  pool = "api"

  [[service.route]]
  name = "old"
  path = "/old"
  redirect = { location = "/new" }

[[service]]
name = "db"
listen = ["127.0.0.1:0"]
mode = "tcp"
pool = "api"

[[pool]]
name = "web"
algorithm = "round_robin"
  [pool.health]
  kind = "none"
  [[pool.backend]]
  name = "a"
  address = "127.0.0.1:9001"
  weight = 2
  [[pool.backend]]
  name = "b"
  address = "127.0.0.1:9002"
  max_connections = 10

[[pool]]
name = "api"
  [pool.health]
  kind = "none"
  [[pool.backend]]
  name = "x"
  address = "127.0.0.1:9003"
"#;

struct Fixture {
    shared: Arc<Shared>,
    live: Arc<Live>,
    reload: Option<mpsc::Receiver<ReloadReply>>,
}

fn fixture(tokens: &[&str]) -> Fixture {
    let loaded = fulcrum_core::config::load(CONFIG).unwrap_or_else(|e| panic!("config: {e:?}"));
    let (generation, _) =
        Generation::build(loaded.model, std::path::Path::new("."), None).expect("generation");
    let (tx, rx) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(generation.live()),
        sessions: Arc::new(SessionTable::new(4)),
        reload: tx,
        admin_tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
    });
    let live = shared.live.load_full();
    Fixture { shared, live, reload: Some(rx) }
}

impl Fixture {
    fn pool(&self, name: &str) -> &crate::upstream::PoolRuntime {
        self.live.pools.iter().find(|p| *p.name == *name).expect("pool")
    }

    /// Opens a session row on `service` from `client`, on `pool/backend` when given.
    fn session(&self, service: &str, client: &str, backend: Option<(&str, &str)>) -> SessionHandle {
        let client: SocketAddr = client.parse().expect("client");
        let listener: SocketAddr = "127.0.0.1:8080".parse().expect("listener");
        let handle =
            self.shared.sessions.insert(Session::new(service.into(), client, listener, Mode::Http, 1_000));
        if let Some((pool, name)) = backend {
            handle.set_backend(BackendSide {
                pool: pool.into(),
                backend: name.into(),
                address: "127.0.0.1:9001".parse().expect("address"),
                local: None,
            });
        }
        handle
    }

    async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        let (status, _, text) = self.raw(method, uri, token, body).await;
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {text}"));
        (status, value)
    }

    async fn raw(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Body::from(body.to_owned())).expect("request");
        let response = router(self.shared.clone()).oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, headers, String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[tokio::test]
async fn services_show_mode_pool_routes_and_sessions() {
    let f = fixture(&[]);
    let _s1 = f.session("web", "10.0.0.1:5000", None);
    let _s2 = f.session("web", "10.0.0.2:5000", None);
    f.live.services[0].stats.requests.fetch_add(7, Ordering::Relaxed);
    f.live.services[0].stats.responses[1].fetch_add(6, Ordering::Relaxed);
    let (status, body) = f.call("GET", "/api/v1/services", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let web = &body[0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["mode"], "http");
    assert_eq!(web["pool"], "web");
    assert_eq!(web["sessions"], 2);
    assert_eq!(web["counters"]["requests"], 7);
    assert_eq!(web["counters"]["responses"]["2xx"], 6);
    assert_eq!(web["routes"][0], json!({"name": "api", "action": "pool", "pool": "api"}));
    assert_eq!(web["routes"][1]["action"], "redirect");
    assert_eq!(web["routes"][1]["location"], "/new");
    assert_eq!(body[1]["name"], "db");
    assert_eq!(body[1]["mode"], "tcp");
    assert_eq!(body[1]["sessions"], 0);
}

#[tokio::test]
async fn pools_show_the_server_state_table() {
    let f = fixture(&[]);
    let b = f.pool("web").backend(BackendId(1));
    b.stats.requests.fetch_add(5, Ordering::Relaxed);
    b.stats.responses[4].fetch_add(2, Ordering::Relaxed);
    b.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
    let (status, body) = f.call("GET", "/api/v1/pools", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["name"], "web");
    assert_eq!(body[0]["algorithm"], "round_robin");
    let a = &body[0]["backends"][0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["address"], "127.0.0.1:9001");
    assert_eq!(a["weight"], 2);
    assert_eq!(a["health"], "up");
    assert_eq!(a["target"], "enabled");
    assert_eq!(a["current"], "enabled");
    assert_eq!(a["sessions"], 0);
    assert_eq!(a["load"], Value::Null);
    assert!(a["reason"].is_string());
    let b = &body[0]["backends"][1];
    assert_eq!(b["max_connections"], 10);
    assert_eq!(b["counters"]["requests"], 5);
    assert_eq!(b["counters"]["responses"]["5xx"], 2);
    assert_eq!(b["counters"]["connect_errors"], 1);
    assert_eq!(b["counters"]["retries"], 0);
    assert_eq!(body[1]["backends"][0]["name"], "x");
}

#[tokio::test]
async fn drain_and_enable_change_what_the_selector_may_pick() {
    let f = fixture(&[]);
    let pool = f.pool("web");
    let uri = "/api/v1/pools/web/backends/a/state";
    let (status, body) = f.call("POST", uri, None, r#"{"target": "drain"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "a");
    assert_eq!(body["target"], "drain");
    assert_eq!(body["current"], "drained");
    assert!(!pool.eligible(BackendId(0)));
    assert!(pool.eligible(BackendId(1)), "only the named backend changes");

    let (_, body) = f.call("POST", uri, None, r#"{"target": "disabled"}"#).await;
    assert_eq!(body["current"], "disabled");
    let (status, body) = f.call("POST", uri, None, r#"{"target": "enabled"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["current"], "enabled");
    assert!(pool.eligible(BackendId(0)));
}

#[tokio::test]
async fn unknown_pool_or_backend_is_404_naming_it() {
    let f = fixture(&[]);
    let body = r#"{"target": "drain"}"#;
    let (status, e) = f.call("POST", "/api/v1/pools/nope/backends/a/state", None, body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"], r#"no pool named "nope""#);
    let (status, e) = f.call("POST", "/api/v1/pools/web/backends/zz/state", None, body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"], r#"pool "web" has no backend named "zz""#);
}

#[tokio::test]
async fn a_bad_body_is_400_saying_what_is_wrong() {
    let f = fixture(&[]);
    let uri = "/api/v1/pools/web/backends/a/state";
    for (body, needle) in [
        (r#"{"target": "sleepy"}"#, "unknown variant `sleepy`"),
        (r#"{"target": "drain", "why": 1}"#, "unknown field `why`"),
        (r#"{}"#, "missing field `target`"),
        ("drain", "expected value"),
        ("", "got nothing"),
    ] {
        let (status, e) = f.call("POST", uri, None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = e["error"].as_str().expect("error message");
        assert!(message.starts_with("body: "), "{message}");
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert!(f.pool("web").eligible(BackendId(0)), "nothing changed");
}

#[tokio::test]
async fn mutating_calls_need_a_valid_token_when_configured() {
    let mut f = fixture(&["first", "s3cret"]);
    let uri = "/api/v1/pools/web/backends/a/state";
    let body = r#"{"target": "drain"}"#;
    let (status, headers, text) = f.raw("POST", uri, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("www-authenticate").is_some());
    assert!(text.contains("Authorization: Bearer"), "{text}");
    let (status, e) = f.call("POST", uri, Some("s3cre"), body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(e["error"].as_str().expect("message").contains("not one of"), "{e}");
    assert!(f.pool("web").eligible(BackendId(0)), "refused calls change nothing");
    // The token is checked before the pool: a stranger learns no names.
    let (status, _) = f.call("POST", "/api/v1/pools/nope/backends/a/state", None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = f.call("POST", "/api/v1/reload", Some("wrong"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = f.call("POST", uri, Some("s3cret"), body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!f.pool("web").eligible(BackendId(0)));
    // Any configured token; the scheme's case does not matter.
    let mut request = Request::builder().method("POST").uri(uri).header("authorization", "bearer first");
    request = request.header("content-type", "application/json");
    let response = router(f.shared.clone())
        .oneshot(request.body(Body::from(r#"{"target":"enabled"}"#)).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    // Reads need no token.
    let (status, _) = f.call("GET", "/api/v1/pools", None, "").await;
    assert_eq!(status, StatusCode::OK);
    f.reload.take();
}

#[tokio::test]
async fn reload_answers_with_the_runners_verdict() {
    let mut f = fixture(&["t"]);
    let mut rx = f.reload.take().expect("receiver");
    let runner = tokio::spawn(async move {
        let first = rx.recv().await.expect("first request");
        let _ = first.send(Ok("pool \"web\" changed".into()));
        let second = rx.recv().await.expect("second request");
        let _ = second.send(Err("line 3: service: unknown key \"x\"".into()));
        // Then the runner goes away.
    });
    let (status, body) = f.call("POST", "/api/v1/reload", Some("t"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"result": "pool \"web\" changed"}));
    let (status, body) = f.call("POST", "/api/v1/reload", Some("t"), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "line 3: service: unknown key \"x\""}));
    runner.await.expect("runner");
    let (status, body) = f.call("POST", "/api/v1/reload", Some("t"), "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().expect("message").contains("reload is not available"));
}

#[tokio::test]
async fn reload_gives_up_after_its_bound() {
    // The runner took the request and has not answered.
    let (_reply, rx) = tokio::sync::oneshot::channel();
    let e = api::reload_verdict(rx, Duration::from_millis(20)).await.err().expect("a timeout");
    assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(e.message.contains("did not finish within 20ms"), "{}", e.message);
}

#[tokio::test]
async fn sessions_filter_and_page() {
    let f = fixture(&[]);
    let _rows = [
        f.session("web", "10.0.0.1:5000", Some(("web", "a"))),
        f.session("web", "10.0.0.2:5000", Some(("web", "b"))),
        f.session("db", "10.1.0.1:6000", Some(("api", "x"))),
    ];
    let (status, page) = f.call("GET", "/api/v1/sessions", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 3);
    assert_eq!(page["rows"].as_array().expect("rows").len(), 3);
    assert_eq!(page["rows"][0]["client"], "10.0.0.1:5000");
    assert_eq!(page["rows"][0]["backend"], "a");

    let (_, page) = f.call("GET", "/api/v1/sessions?service=web", None, "").await;
    assert_eq!(page["total"], 2);
    let (_, page) = f.call("GET", "/api/v1/sessions?backend=api/x", None, "").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["rows"][0]["service"], "db");
    let (_, page) = f.call("GET", "/api/v1/sessions?client=10.0.0.0/16", None, "").await;
    assert_eq!(page["total"], 2);
    let (_, page) = f.call("GET", "/api/v1/sessions?limit=1&offset=1", None, "").await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["rows"].as_array().expect("rows").len(), 1);
    assert_eq!(page["rows"][0]["client"], "10.0.0.2:5000");

    drop(_rows);
    let (_, page) = f.call("GET", "/api/v1/sessions", None, "").await;
    assert_eq!(page, json!({"total": 0, "rows": []}));
}

#[tokio::test]
async fn sessions_reject_bad_queries() {
    let f = fixture(&[]);
    for (query, needle) in [
        ("limit=1001", "limit 1001 is over the maximum of 1000"),
        ("limit=many", "limit"),
        ("offset=-1", "offset"),
        ("pool=web", "unknown field `pool`"),
    ] {
        let (status, e) = f.call("GET", &format!("/api/v1/sessions?{query}"), None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let message = e["error"].as_str().expect("message");
        assert!(message.starts_with("query: ") && message.contains(needle), "{query}: {message}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let f = fixture(&[]);
    let (status, e) = f.call("GET", "/api/v1/nothing", None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"], "no such endpoint: GET /api/v1/nothing");
    let (status, e) = f.call("DELETE", "/api/v1/pools", None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(e["error"], "/api/v1/pools does not take DELETE");
    let (status, _) = f.call("GET", "/api/v1/reload", None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root() {
    let f = fixture(&[]);
    let (status, headers, text) = f.raw("GET", "/", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().expect("type").starts_with("text/html"));
    assert!(text.to_ascii_lowercase().contains("<html") || text.contains("<!"), "{text}");
}

/// The value of the series `name{labels}` in a metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_render_the_counters_at_scrape_time() {
    let f = fixture(&[]);
    let (status, headers, text) = f.raw("GET", "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().expect("type").starts_with("application/openmetrics-text"));
    assert!(text.ends_with("# EOF\n"));
    let a = r#"{pool="web",backend="a"}"#;
    assert_eq!(sample(&text, &format!("fulcrum_backend_requests_total{a}")), Some(0.0));
    assert_eq!(sample(&text, &format!("fulcrum_backend_health{a}")), Some(1.0));
    assert_eq!(sample(&text, &format!("fulcrum_backend_weight{a}")), Some(2.0));

    let web = &f.live.services[0];
    web.stats.sessions.fetch_add(4, Ordering::Relaxed);
    web.stats.responses[1].fetch_add(3, Ordering::Relaxed);
    web.stats.bytes_out.fetch_add(1500, Ordering::Relaxed);
    let b = f.pool("web").backend(BackendId(0));
    b.stats.requests.fetch_add(3, Ordering::Relaxed);
    b.stats.responses[4].fetch_add(1, Ordering::Relaxed);
    b.stats.retries.fetch_add(2, Ordering::Relaxed);
    b.stats.latency.observe(Duration::from_micros(800));
    b.stats.latency.observe(Duration::from_millis(20));
    b.stats.latency.observe(Duration::from_secs(9));
    let _guard = f.pool("web").open_session(BackendId(0));
    let _row = f.session("web", "10.0.0.1:1", None);

    let (_, _, text) = f.raw("GET", "/metrics", None, "").await;
    assert_eq!(sample(&text, "fulcrum_sessions"), Some(1.0));
    assert_eq!(sample(&text, r#"fulcrum_service_sessions_total{service="web"}"#), Some(4.0));
    assert_eq!(sample(&text, r#"fulcrum_service_responses_total{service="web",class="2xx"}"#), Some(3.0));
    assert_eq!(sample(&text, r#"fulcrum_service_sent_bytes_total{service="web"}"#), Some(1500.0));
    assert_eq!(sample(&text, r#"fulcrum_service_refused_total{service="db"}"#), Some(0.0));
    assert_eq!(sample(&text, &format!("fulcrum_backend_requests_total{a}")), Some(3.0));
    assert_eq!(
        sample(&text, r#"fulcrum_backend_responses_total{pool="web",backend="a",class="5xx"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, &format!("fulcrum_backend_retries_total{a}")), Some(2.0));
    assert_eq!(sample(&text, &format!("fulcrum_backend_sessions{a}")), Some(1.0));
    // Cumulative buckets in seconds, +Inf equal to the count.
    let bucket = |le: &str| {
        sample(
            &text,
            &format!(r#"fulcrum_backend_latency_seconds_bucket{{le="{le}",pool="web",backend="a"}}"#),
        )
    };
    assert_eq!(bucket("0.001"), Some(1.0));
    assert_eq!(bucket("0.025"), Some(2.0));
    assert_eq!(bucket("5.0"), Some(2.0));
    assert_eq!(bucket("+Inf"), Some(3.0));
    assert_eq!(sample(&text, &format!("fulcrum_backend_latency_seconds_count{a}")), Some(3.0));
    let sum = sample(&text, &format!("fulcrum_backend_latency_seconds_sum{a}")).expect("sum");
    assert!((sum - 9.0208).abs() < 1e-6, "{sum}");
    // One descriptor per family, whatever the number of series.
    assert_eq!(text.matches("# TYPE fulcrum_backend_requests counter").count(), 1);
    assert!(text.contains("# TYPE fulcrum_backend_latency_seconds histogram"));
    assert!(text.contains("# UNIT fulcrum_backend_latency_seconds seconds"));
}

#[test]
fn constant_time_eq_is_equality() {
    assert!(constant_time_eq(b"s3cret", b"s3cret"));
    assert!(constant_time_eq(b"", b""));
    assert!(!constant_time_eq(b"s3cret", b"s3cre"));
    assert!(!constant_time_eq(b"s3cre", b"s3cret"));
    assert!(!constant_time_eq(b"s3cret", b"S3cret"));
    assert!(!constant_time_eq(b"a\0", b"a"));
}
