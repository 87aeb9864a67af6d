//! Routes (the URL map), black-box: which pool a request goes to, and the
//! answers Fulcrum gives by itself.

mod common;

use common::{raw, Backend, Fulcrum};

struct Farm {
    f: Fulcrum,
    _backends: Vec<Backend>,
}

/// An http service over pools `web` (backend web1) and `api` (backend api1),
/// with `routes` (TOML of `[[service.route]]` tables) and `default_pool`.
fn farm(routes: &str, default_pool: Option<&str>) -> Farm {
    let (web, api) = (Backend::start("web1"), Backend::start("api1"));
    let pool = default_pool.map(|p| format!("pool = \"{p}\"\n")).unwrap_or_default();
    let cfg = format!(
        r#"[[service]]
name = "front"
listen = ["127.0.0.1:0"]
mode = "http"
{pool}
{routes}

[[pool]]
name = "web"
  [[pool.backend]]
  name = "web1"
  address = "{}"

[[pool]]
name = "api"
  [[pool.backend]]
  name = "api1"
  address = "{}"
"#,
        web.addr, api.addr
    );
    Farm { f: Fulcrum::start(&cfg, 1), _backends: vec![web, api] }
}

/// Sends one request (`head` lines after the request line) and returns the response.
fn ask(f: &Fulcrum, request_line: &str, head: &str) -> String {
    raw(f.addr(), format!("{request_line}\r\n{head}Connection: close\r\n\r\n").as_bytes())
}

fn backend_of(response: &str) -> Option<&str> {
    response.lines().find_map(|l| l.strip_prefix("x-backend: "))
}

const ROUTES: &str = r#"
  [[service.route]]
  name = "hidden"
  path_regex = "^/\\.(git|env)(/|$)"
  status = 403
  body = "not here\n"

  [[service.route]]
  name = "moved"
  path_prefix = "/old/"
  redirect = { status = 301, location = "http://example.com/new/" }

  [[service.route]]
  name = "api-host"
  host = "*.api.example.com"
  pool = "api"

  [[service.route]]
  name = "exact"
  path = "/status"
  pool = "api"

  [[service.route]]
  name = "prefix-get"
  path_prefix = "/api/"
  method = "GET"
  pool = "api"

  [[service.route]]
  name = "versioned"
  path_regex = "^/v[0-9]+/"
  pool = "api"

  [[service.route]]
  name = "canary"
  header = { name = "X-Canary", regex = "^(yes|1)$" }
  pool = "api"
"#;

#[test]
fn each_condition_sends_to_its_pool() {
    let farm = farm(ROUTES, Some("web"));
    let f = &farm.f;
    let cases = [
        ("GET / HTTP/1.1", "Host: example.com\r\n", "web1"),
        ("GET / HTTP/1.1", "Host: eu.api.example.com:8080\r\n", "api1"),
        ("GET / HTTP/1.1", "Host: API.example.com\r\n", "web1"), // the apex is no subdomain
        ("GET /status HTTP/1.1", "Host: h\r\n", "api1"),
        ("GET /status/x HTTP/1.1", "Host: h\r\n", "web1"),
        ("GET /status?full=1 HTTP/1.1", "Host: h\r\n", "api1"), // the query is not the path
        ("GET /api/users HTTP/1.1", "Host: h\r\n", "api1"),
        ("POST /api/users HTTP/1.1", "Host: h\r\nContent-Length: 0\r\n", "web1"), // GET only
        ("GET /v2/items HTTP/1.1", "Host: h\r\n", "api1"),
        ("GET /vx/items HTTP/1.1", "Host: h\r\n", "web1"),
        ("GET /x HTTP/1.1", "Host: h\r\nX-Canary: yes\r\n", "api1"),
        ("GET /x HTTP/1.1", "Host: h\r\nX-Canary: no\r\n", "web1"),
        ("GET http://a.api.example.com/x HTTP/1.1", "Host: ignored.example.com\r\n", "api1"),
    ];
    for (line, head, expected) in cases {
        let out = ask(f, line, head);
        assert_eq!(backend_of(&out), Some(expected), "{line} {head:?} gave:\n{out}");
    }
}

#[test]
fn routes_answer_by_themselves() {
    let farm = farm(ROUTES, Some("web"));
    let f = &farm.f;
    let out = ask(f, "GET /.git/config HTTP/1.1", "Host: h\r\n");
    assert!(out.starts_with("HTTP/1.1 403 ") && out.ends_with("\r\n\r\nnot here\n"), "{out}");
    assert!(backend_of(&out).is_none());
    let out = ask(f, "GET /old/page HTTP/1.1", "Host: h\r\n");
    assert!(
        out.starts_with("HTTP/1.1 301 ") && out.contains("Location: http://example.com/new/\r\n"),
        "{out}"
    );

    // A fixed answer on a keep-alive connection leaves it usable.
    let mut s = std::net::TcpStream::connect(f.addr()).expect("connect");
    for _ in 0..2 {
        std::io::Write::write_all(&mut s, b"GET /.env HTTP/1.1\r\nHost: h\r\n\r\n").expect("write");
        assert!(common::read_response(&mut s).starts_with("HTTP/1.1 403 "));
    }
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").expect("write");
    assert!(common::read_response(&mut s).ends_with("web1\n"));
}

#[test]
fn a_blocked_path_cannot_be_spelled_around() {
    let farm = farm(ROUTES, Some("web"));
    for target in
        ["/.git/config", "/%2egit/config", "/x/../.git/config", "//.git/config", "/./.git/HEAD", "/%2Egit/"]
    {
        let out = ask(&farm.f, &format!("GET {target} HTTP/1.1"), "Host: h\r\n");
        assert!(out.starts_with("HTTP/1.1 403 "), "{target} gave:\n{out}");
    }
}

#[test]
fn the_first_matching_route_wins() {
    let routes = r#"
  [[service.route]]
  path_prefix = "/a/"
  pool = "api"
  [[service.route]]
  path_prefix = "/a/b/"
  pool = "web"
"#;
    let farm = farm(routes, Some("web"));
    assert_eq!(backend_of(&ask(&farm.f, "GET /a/b/c HTTP/1.1", "Host: h\r\n")), Some("api1"));
}

#[test]
fn no_match_without_a_default_pool_is_404() {
    let routes = r#"
  [[service.route]]
  path_prefix = "/api/"
  pool = "api"
"#;
    let farm = farm(routes, None);
    assert_eq!(backend_of(&ask(&farm.f, "GET /api/x HTTP/1.1", "Host: h\r\n")), Some("api1"));
    let out = ask(&farm.f, "GET /other HTTP/1.1", "Host: h\r\n");
    assert!(out.starts_with("HTTP/1.1 404 ") && out.contains("no route"), "{out}");
}
