//! `[[service.route]]`: each match key and action, their defaults, the
//! default pool rule of each mode, the keys of the other mode, and each error.

use super::{assert_error_contains, assert_errors, loaded, VALID};
use crate::model::{
    Auth, HeaderMatch, Pattern, Policy, PoolId, Route, RouteAction, RouteMatch, Service, ValueMatch,
};

/// A second pool for routes to name, after `VALID`'s.
const API_POOL: &str =
    "[[pool]]\nname = \"api\"\nbackend = [{ name = \"api1\", address = \"127.0.0.1:9101\" }]\n";

/// `VALID`'s http service with `text` after its `pool` key (its first line
/// is line 6), and pool "api".
fn http_with(text: &str) -> String {
    format!("{}{API_POOL}", VALID.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{text}")))
}

/// The same in tcp mode.
fn tcp_with(text: &str) -> String {
    http_with(text).replace("mode = \"http\"", "mode = \"tcp\"")
}

/// The same without the service's `pool` key: `text` starts on line 5.
fn no_pool(text: &str) -> String {
    format!("{}{API_POOL}", VALID.replace("pool = \"web\"\n", text))
}

fn service(text: &str) -> Service {
    loaded(text).model.services.swap_remove(0)
}

fn routes(text: &str) -> Vec<Route> {
    service(text).routes
}

fn regex(text: &str) -> Pattern {
    Pattern(regex::Regex::new(text).expect("a valid regular expression"))
}

fn respond(status: u16, body: &str) -> RouteAction {
    RouteAction::Respond { status, body: body.into() }
}

fn redirect(status: u16, location: &str) -> RouteAction {
    RouteAction::Redirect { status, location: location.into() }
}

#[test]
fn every_match_key_is_read() {
    let text = http_with(
        r#"  [[service.route]]
  name = "api"
  host = "API.Example.com"
  path = "/exact"
  path_prefix = "/api/"
  path_regex = "^/v[0-9]+/"
  method = "POST"
  header = [{ name = "X-Env", value = "beta" }, { name = "X-Version", regex = "^2\\." }]
  pool = "api"
"#,
    );
    let loaded = loaded(&text);
    assert_eq!(loaded.warnings, Vec::<String>::new(), "a pool a route names is used");
    let matcher = RouteMatch {
        host: Some("api.example.com".into()),
        path: Some("/exact".into()),
        path_prefix: Some("/api/".into()),
        path_regex: Some(regex("^/v[0-9]+/")),
        method: Some("POST".into()),
        headers: vec![
            HeaderMatch { name: "x-env".into(), value: ValueMatch::Exact("beta".into()) },
            HeaderMatch { name: "x-version".into(), value: ValueMatch::Regex(regex(r"^2\.")) },
        ],
        sni: None,
    };
    let expected = Route { name: "api".into(), matcher, action: RouteAction::Pool(PoolId(1)), policy: None };
    assert_eq!(loaded.model.services[0].routes, [expected]);
    assert_eq!(loaded.model.services[0].pool, Some(PoolId(0)));
}

#[test]
fn each_action_is_read_with_its_defaults() {
    let text = http_with(
        r#"[[service.route]]
path_prefix = "/old/"
redirect = { location = "https://example.com/new/" }
[[service.route]]
path = "/admin"
status = 403
[[service.route]]
path = "/ping"
status = 200
body = "pong\n"
[[service.route]]
path = "/empty"
status = 204
[[service.route]]
path = "/odd"
status = 299
[[service.route]]
redirect = { status = 308, location = "/elsewhere" }
"#,
    );
    let routes = routes(&text);
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["route 1", "route 2", "route 3", "route 4", "route 5", "route 6"]);
    let actions: Vec<&RouteAction> = routes.iter().map(|r| &r.action).collect();
    assert_eq!(
        actions,
        [
            &redirect(302, "https://example.com/new/"),
            &respond(403, "Forbidden\n"),
            &respond(200, "pong\n"),
            &respond(204, ""),
            &respond(299, "299\n"),
            &redirect(308, "/elsewhere"),
        ],
        "redirects default to 302; a body defaults to the reason phrase, none for 204"
    );
    assert_eq!(routes[5].matcher, RouteMatch::default(), "no condition matches every request");
}

#[test]
fn a_header_is_one_table_or_an_array_of_them() {
    let inline =
        http_with("[[service.route]]\nheader = { name = \"X-Env\", value = \"beta\" }\npool = \"api\"\n");
    let sub = http_with(
        "[[service.route]]\npool = \"api\"\n[service.route.header]\nname = \"x-env\"\nvalue = \"beta\"\n",
    );
    let exact = HeaderMatch { name: "x-env".into(), value: ValueMatch::Exact("beta".into()) };
    assert_eq!(routes(&inline)[0].matcher.headers, std::slice::from_ref(&exact));
    assert_eq!(routes(&sub)[0].matcher.headers, std::slice::from_ref(&exact));
    let array = http_with(
        "[[service.route]]\npool = \"api\"\n  [[service.route.header]]\n  name = \"X-Env\"\n  value = \"beta\"\n  [[service.route.header]]\n  name = \"Cookie\"\n  regex = \"ab+\"\n",
    );
    let cookie = HeaderMatch { name: "cookie".into(), value: ValueMatch::Regex(regex("ab+")) };
    assert_eq!(routes(&array)[0].matcher.headers, [exact, cookie]);
}

#[test]
fn hosts_are_lowercased_and_may_be_wildcards_or_addresses() {
    for (host, read) in [
        ("*.Example.COM", "*.example.com"),
        ("example.com", "example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "[::1]"),
        ("my_host-1.internal", "my_host-1.internal"),
    ] {
        let text = http_with(&format!("[[service.route]]\nhost = {host:?}\npool = \"api\"\n"));
        assert_eq!(routes(&text)[0].matcher.host.as_deref(), Some(read), "{host}");
    }
}

#[test]
fn a_http_service_may_leave_out_its_pool() {
    let text = no_pool("[[service.route]]\npath_prefix = \"/\"\npool = \"web\"\n");
    let routed = loaded(&text);
    let service = &routed.model.services[0];
    assert_eq!(service.pool, None, "unmatched requests get 404");
    assert_eq!(service.routes[0].action, RouteAction::Pool(PoolId(0)));
    assert_eq!(routed.warnings, [r#"line 17: pool "api" is not used by any service"#]);
    // With no routes either, every request gets 404: allowed, but said.
    let bare = loaded(&VALID.replace("pool = \"web\"\n", ""));
    assert_eq!(
        bare.warnings,
        [
            r#"line 1: service "web" has no pool and no routes, so it answers every request with 404; add pool = "NAME" or [[service.route]] tables"#,
            r#"line 6: pool "web" is not used by any service"#,
        ]
    );
}

#[test]
fn a_tcp_service_needs_a_pool_unless_it_routes_by_sni() {
    let text = no_pool(
        "[[service.route]]\nsni = \"A.example.com\"\npool = \"web\"\n[[service.route]]\nsni = \"*.example.org\"\npool = \"api\"\n",
    )
    .replace("mode = \"http\"", "mode = \"tcp\"");
    let service = service(&text);
    assert_eq!(service.pool, None, "unmatched server names are refused");
    let snis: Vec<Option<&str>> = service.routes.iter().map(|r| r.matcher.sni.as_deref()).collect();
    assert_eq!(snis, [Some("a.example.com"), Some("*.example.org")]);
    assert_eq!(service.routes[1].action, RouteAction::Pool(PoolId(1)));
    // With a pool as well: connections no route takes go there.
    assert_eq!(
        self::service(&tcp_with("[[service.route]]\nsni = \"a.example.com\"\npool = \"api\"\n")).pool,
        Some(PoolId(0))
    );
    assert_errors(
        &VALID.replace("mode = \"http\"\npool = \"web\"\n", "mode = \"tcp\"\n"),
        &[
            r#"line 1: service "web": missing required key "pool": a tcp service sends every connection to its pool, unless it routes by TLS server name ([[service.route]] tables with sni = "…")"#,
        ],
    );
}

#[test]
fn a_tcp_route_matches_on_sni_only() {
    assert_errors(
        &tcp_with("[[service.route]]\nname = \"any\"\npool = \"api\"\n"),
        &[
            r#"line 6: service "web" route "any" has no sni; a tcp route matches the TLS server name only, like sni = "a.example.com" (connections no route takes go to the service's pool)"#,
        ],
    );
    assert_errors(
        &tcp_with(
            "[[service.route]]\nsni = \"a.example.com\"\nhost = \"a.example.com\"\npath = \"/\"\nredirect = { location = \"/\" }\n",
        ),
        &[
            r#"line 8: service "web" route 1: host is only for mode "http", but the service's mode is "tcp""#,
            r#"line 9: service "web" route 1: path is only for mode "http", but the service's mode is "tcp""#,
            r#"line 10: service "web" route 1: redirect is only for mode "http", but the service's mode is "tcp""#,
        ],
    );
    assert_errors(
        &http_with("[[service.route]]\nsni = \"a.example.com\"\npool = \"api\"\n"),
        &[r#"line 7: service "web" route 1: sni is only for mode "tcp", but the service's mode is "http""#],
    );
}

#[test]
fn a_bad_regex_is_an_error_naming_the_route() {
    assert_errors(
        &http_with("[[service.route]]\nname = \"api\"\npath_regex = \"(\"\npool = \"api\"\n"),
        &[
            r#"line 8: service "web" route "api": path_regex "(" is not a valid regular expression: unclosed group"#,
        ],
    );
    assert_errors(
        &http_with("[[service.route]]\nheader = { name = \"X-Env\", regex = \"[z-a]\" }\npool = \"api\"\n"),
        &[
            r#"line 7: service "web" route 1: header.regex "[z-a]" is not a valid regular expression: invalid character class range, the start must be <= the end"#,
        ],
    );
}

#[test]
fn a_route_does_exactly_one_thing() {
    assert_errors(
        &http_with("[[service.route]]\nname = \"api\"\npath = \"/x\"\n"),
        &[
            r#"line 6: service "web" route "api" has no action; give it one of pool = "NAME", redirect = { location = "URL" } or status = 403"#,
        ],
    );
    assert_errors(
        &http_with("[[service.route]]\nname = \"api\"\npool = \"api\"\nstatus = 403\n"),
        &[
            r#"line 9: service "web" route "api" has two actions, pool and status; keep one: a route sends to a pool, redirects, or answers with a status"#,
        ],
    );
    assert_error_contains(
        &http_with("[[service.route]]\npool = \"api\"\nredirect = { location = \"/\" }\nstatus = 403\n"),
        r#"line 9: service "web" route 1 has three actions, pool, redirect and status; keep one"#,
    );
}

#[test]
fn a_route_naming_a_missing_pool_is_an_error() {
    assert_errors(
        &http_with("[[service.route]]\nname = \"api\"\npool = \"nope\"\n"),
        &[r#"line 8: service "web" route "api": pool "nope" is not defined (pools defined: "web", "api")"#],
    );
}

#[test]
fn route_names_are_unique_within_their_service() {
    let two = "[[service.route]]\nname = \"api\"\npool = \"api\"\n[[service.route]]\nname = \"api\"\nstatus = 404\n";
    assert_errors(
        &http_with(two),
        &[r#"line 10: service "web" route "api": name "api" is already used by the route at line 7"#],
    );
    assert_error_contains(
        &http_with("[[service.route]]\nname = \"\"\npool = \"api\"\n"),
        r#"line 7: service "web" route 1: name is empty"#,
    );
    // The same route name in two services is fine.
    let other = format!(
        "{}[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:8081\"]\nmode = \"http\"\n[[service.route]]\nname = \"api\"\npool = \"api\"\n",
        http_with("[[service.route]]\nname = \"api\"\npool = \"api\"\n")
    );
    assert_eq!(loaded(&other).model.services[1].routes[0].name, "api");
}

#[test]
fn bad_hosts_and_server_names_say_what_a_good_one_looks_like() {
    const LIKE: &str = r#"write a name like "example.com", or "*.example.com" for its subdomains"#;
    let cases = [
        ("host", "example.com:8080", r#"has a port; routes match the name without its port, write "example.com""#.to_owned()),
        ("host", "a.*.com", format!(r#"has a "*" that is not a leading "*."; {LIKE}"#)),
        ("host", "*", format!(r#"has a "*" that is not a leading "*."; {LIKE}"#)),
        ("host", "exa mple.com", format!("is not a host name; {LIKE}")),
        ("host", "example.com.", format!("is not a host name; {LIKE}")),
        ("host", "::1", r#"needs brackets around its IPv6 address, like "[::1]""#.to_owned()),
        ("sni", "10.0.0.1", format!("is an IP address, which TLS clients never send as a server name, so it would never match; {LIKE}")),
        ("sni", "a.example.com:443", r#"has a port; routes match the name without its port, write "a.example.com""#.to_owned()),
    ];
    for (key, value, problem) in cases {
        let route = format!("[[service.route]]\n{key} = {value:?}\npool = \"api\"\n");
        let text = if key == "sni" { tcp_with(&route) } else { http_with(&route) };
        assert_errors(&text, &[&format!(r#"line 7: service "web" route 1: {key} {value:?} {problem}"#)]);
    }
    assert_errors(
        &http_with("[[service.route]]\nhost = \"\"\npool = \"api\"\n"),
        &[r#"line 7: service "web" route 1: host is empty; leave it out to match every host"#],
    );
}

#[test]
fn paths_and_methods_must_fit_a_request_line() {
    let with = |line: &str| http_with(&format!("[[service.route]]\n{line}\npool = \"api\"\n"));
    assert_errors(
        &with("path = \"api\""),
        &[r#"line 7: service "web" route 1: path "api" must start with "/", like "/api""#],
    );
    assert_errors(
        &with("path_prefix = \"/a b\""),
        &[
            r#"line 7: service "web" route 1: path_prefix "/a b" has a space or control character, which a request line cannot carry; percent-encode it, like "%20""#,
        ],
    );
    assert_errors(
        &with("path = \"/search?q=1\""),
        &[
            r#"line 7: service "web" route 1: path "/search?q=1" has a query ("?"), but routes match the path without its query, so it would never match"#,
        ],
    );
    assert_errors(
        &with("method = \"get\""),
        &[
            r#"line 7: service "web" route 1: method "get" is not an HTTP method; write it in capital letters, like "GET" or "POST""#,
        ],
    );
    assert_errors(
        &with("path_regex = 5"),
        &[r#"line 7: service "web" route 1: path_regex must be a string, found an integer"#],
    );
}

#[test]
fn header_errors_name_the_header() {
    let with = |line: &str| http_with(&format!("[[service.route]]\n{line}\npool = \"api\"\n"));
    let cases = [
        (
            r#"header = { name = "X-Env", value = "a", regex = "a" }"#,
            "header.value and header.regex are both given; a header matches one way, so keep one",
        ),
        (
            r#"header = { name = "X-Env" }"#,
            r#"missing required key "header.value" (the exact value) or "header.regex" (a regular expression)"#,
        ),
        (
            r#"header = { name = "X Env", value = "a" }"#,
            r#"header.name "X Env" is not a header name; use letters, digits and "-", like "X-Env""#,
        ),
        (r#"header = { value = "a" }"#, r#"missing required key "header.name""#),
        ("header = []", "header is empty; leave it out to match any headers"),
        (
            r#"header = "X-Env: beta""#,
            r#"header must be a table, like { name = "X-Env", value = "beta" }, or an array of them; found a string"#,
        ),
        (
            r#"header = { name = "X-Env", valeu = "a" }"#,
            r#"unknown key "header.valeu", did you mean "header.value"?"#,
        ),
    ];
    for (line, message) in cases {
        assert_error_contains(&with(line), &format!(r#"line 7: service "web" route 1: {message}"#));
    }
    // In an array, each header is named by its position.
    assert_errors(
        &with(r#"header = [{ name = "X-A", value = "1" }, { name = "X B", value = "2" }]"#),
        &[
            r#"line 7: service "web" route 1 header 2: name "X B" is not a header name; use letters, digits and "-", like "X-Env""#,
        ],
    );
}

#[test]
fn redirect_and_status_errors() {
    let with = |lines: &str| http_with(&format!("[[service.route]]\n{lines}\n"));
    let cases = [
        (
            r#"redirect = { status = 300, location = "/x" }"#,
            "redirect.status 300 is not a redirect status; use 301, 302, 303, 307 or 308 (the default is 302)",
        ),
        (r#"redirect = { status = 301 }"#, r#"missing required key "redirect.location""#),
        (
            r#"redirect = { location = "" }"#,
            r#"redirect.location is empty; give the URL to send clients to, like "https://example.com/""#,
        ),
        (
            r#"redirect = { location = "/a b" }"#,
            r#"redirect.location "/a b" has a space or control character, which a Location header cannot carry; percent-encode it, like "%20""#,
        ),
        (r#"redirect = "https://example.com/""#, "redirect must be a table, found a string"),
        (
            "status = 301",
            r#"status 301 is a redirect, which needs a Location; write redirect = { status = 301, location = "…" } instead"#,
        ),
        ("status = 600", "status 600 is over the maximum of 599"),
        ("status = 100", "status 100 is below the minimum of 200"),
        ("status = \"403\"", "status must be an integer, found a string"),
    ];
    for (line, message) in cases {
        assert_errors(&with(line), &[&format!(r#"line 7: service "web" route 1: {message}"#)]);
    }
    assert_errors(
        &with("status = 204\nbody = \"nothing\""),
        &[r#"line 8: service "web" route 1: body is given, but a 204 response has no body; leave body out"#],
    );
    assert_errors(
        &with("pool = \"api\"\nbody = \"x\""),
        &[
            r#"line 8: service "web" route 1: body is only for an answer with a status; add status = 200, or leave body out"#,
        ],
    );
}

#[test]
fn unknown_route_keys_get_a_suggestion() {
    assert_errors(
        &http_with("[[service.route]]\npth = \"/x\"\npool = \"api\"\n"),
        &[r#"line 7: service "web" route 1: unknown key "pth", did you mean "path"?"#],
    );
    assert_errors(
        &http_with("[[service.route]]\nredirect = { locaton = \"/\" }\n"),
        &[
            r#"line 7: service "web" route 1: unknown key "redirect.locaton", did you mean "redirect.location"?"#,
            r#"line 7: service "web" route 1: missing required key "redirect.location""#,
        ],
    );
    assert_errors(
        &http_with("route = { pool = \"api\" }\n"),
        &[
            r#"line 6: service "web": route must be an array of tables, one [[service.route]] each, found a table"#,
        ],
    );
}

#[test]
fn a_route_after_a_catch_all_is_a_warning() {
    let text = http_with(
        "[[service.route]]\nname = \"all\"\npool = \"api\"\n[[service.route]]\nname = \"late\"\npath = \"/x\"\nstatus = 404\n",
    );
    assert_eq!(
        loaded(&text).warnings,
        [
            r#"line 9: service "web" route "late" can never match: route "all" at line 6 before it matches every request"#
        ]
    );
}

#[test]
fn a_route_policy_is_read_without_the_service_limits() {
    let text = http_with(
        "[[service.route]]\npath_prefix = \"/admin/\"\npool = \"api\"\npolicy = { allow = [\"10.0.0.0/8\"], auth = \"basic\", htpasswd = \"admin.htpasswd\", realm = \"admin\" }\n",
    );
    let expected = Policy {
        allow: vec!["10.0.0.0/8".parse().expect("literal")],
        auth: Auth::Basic { realm: "admin".into(), htpasswd: "admin.htpasswd".into() },
        ..Policy::default()
    };
    assert_eq!(routes(&text)[0].policy, Some(expected));
    assert_errors(
        &http_with(
            "[[service.route]]\npool = \"api\"\npolicy = { max_sessions = 10, rate_per_client = 5 }\n",
        ),
        &[
            r#"line 8: service "web" route 1: policy.max_sessions is only for [service.policy]: limits count all of a service's sessions, so a route's policy has allow, deny and auth only"#,
            r#"line 8: service "web" route 1: policy.rate_per_client is only for [service.policy]: limits count all of a service's sessions, so a route's policy has allow, deny and auth only"#,
        ],
    );
    // In tcp mode a route's policy may allow or deny sources, nothing more.
    let tcp = tcp_with(
        "[[service.route]]\nsni = \"a.example.com\"\npool = \"api\"\n[service.route.policy]\ndeny = [\"10.0.0.0/8\"]\nauth = \"bearer\"\ntokens_file = \"tokens\"\n",
    );
    assert_errors(
        &tcp,
        &[
            r#"line 11: service "web" route 1: policy.auth is only for mode "http", but the service's mode is "tcp"; a tcp policy can only allow or deny sources"#,
            r#"line 12: service "web" route 1: policy.tokens_file is only for mode "http", but the service's mode is "tcp"; a tcp policy can only allow or deny sources"#,
        ],
    );
    let tcp = tcp.replace("auth = \"bearer\"\ntokens_file = \"tokens\"\n", "");
    let deny = routes(&tcp).swap_remove(0).policy.map(|p| p.deny);
    assert_eq!(deny, Some(vec!["10.0.0.0/8".parse().expect("literal")]));
}

#[test]
fn every_classification_error_comes_out_at_once_in_file_order() {
    let text = r#"[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"
accept_proxy_protocol = true
  [[service.route]]
  name = "api"
  path_regex = "(["
  pool = "api"
  [[service.route]]
  name = "old"
  redirect = { status = 200, location = "/new" }
  [[service.route]]
  name = "api"
  sni = "a.example.com"
  [service.persistence]
  kind = "cookie"
  learn = true
  [service.policy]
  allow = ["10.0.0.0/33"]
  auth = "basic"

[[pool]]
name = "web"
proxy_protocol = "v3"
backend = [{ name = "web1", address = "127.0.0.1:9001" }]
"#;
    assert_errors(
        text,
        &[
            r#"line 5: service "web": accept_proxy_protocol is true, but trusted_proxies is not set; list the load balancers whose PROXY headers to believe, like trusted_proxies = ["10.0.0.5"]"#,
            r#"line 8: service "web" route "api": path_regex "([" is not a valid regular expression: unclosed character class"#,
            r#"line 9: service "web" route "api": pool "api" is not defined (pools defined: "web")"#,
            r#"line 12: service "web" route "old": redirect.status 200 is not a redirect status; use 301, 302, 303, 307 or 308 (the default is 302)"#,
            r#"line 13: service "web" route "api" has no action; give it one of pool = "NAME", redirect = { location = "URL" } or status = 403"#,
            r#"line 14: service "web" route "api": name "api" is already used by the route at line 7"#,
            r#"line 15: service "web" route "api": sni is only for mode "tcp", but the service's mode is "http""#,
            r#"line 18: service "web": persistence.learn is true, but persistence.cookie is not set; name the application's cookie to learn, like cookie = "JSESSIONID""#,
            r#"line 20: service "web": policy.allow "10.0.0.0/33" is not an IP address or a CIDR block; write one like "10.0.0.0/8" or "10.0.0.1""#,
            r#"line 21: service "web": policy.auth "basic" needs policy.htpasswd: the htpasswd file of user names and bcrypt hashes, like htpasswd = "/etc/fulcrum/htpasswd""#,
            r#"line 25: pool "web": proxy_protocol "v3" is not one of "v1", "v2""#,
        ],
    );
}
