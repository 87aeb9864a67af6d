//! The URL map: which route of a service a request (http mode) or a TLS
//! server name (tcp mode) belongs to. First match wins, in configuration order.
//!
//! Matching is on the request as received: the path is not percent-decoded
//! or dot-segment-normalised, so a route meant to block `/admin` does not by
//! itself catch `/%61dmin` or `/x/../admin`.

use crate::http::{Header, RequestHead};
use crate::model::{HeaderMatch, Route, RouteMatch, ValueMatch};

/// What the classifier looks at in a request, borrowed from its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    /// The authority's host without the port, as received (case kept; an IPv6
    /// literal keeps its brackets: `[::1]`). `None` when the request names none.
    pub host: Option<&'a str>,
    /// The target's path without query or fragment; `*` for `OPTIONS *`.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a [Header],
}

impl<'a> RequestView<'a> {
    /// The view of a parsed request head.
    ///
    /// The host comes from an absolute-form target (`GET http://h:80/p`) when
    /// there is one, else from the Host header: RFC 9112 §3.2.2 says a server
    /// receiving absolute-form must ignore Host, so matching on Host there would
    /// route by a name the backend will not see. A Host that is not UTF-8 or is
    /// empty gives `None`.
    pub fn of(head: &'a RequestHead) -> Self {
        let (target_host, path) = split_target(&head.target);
        let host = target_host.or_else(|| {
            let field = head.headers.iter().find(|h| h.is("host"))?;
            std::str::from_utf8(&field.value).ok().map(|v| strip_port(v.trim()))
        });
        RequestView {
            host: host.filter(|h| !h.is_empty()),
            path,
            method: &head.method,
            headers: &head.headers,
        }
    }
}

/// Splits a request target into the host of an absolute-form target (if any)
/// and the path without query or fragment.
fn split_target(target: &str) -> (Option<&str>, &str) {
    let rest =
        strip_prefix_ignore_case(target, "http://").or_else(|| strip_prefix_ignore_case(target, "https://"));
    let Some(rest) = rest else {
        return (None, until_query(target));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // userinfo is deprecated in http(s) URIs but still parses; the host follows the last '@'.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = until_query(path);
    (Some(strip_port(host_port)), if path.is_empty() { "/" } else { path })
}

fn strip_prefix_ignore_case<'t>(s: &'t str, prefix: &str) -> Option<&'t str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn until_query(path: &str) -> &str {
    path.find(['?', '#']).map_or(path, |i| &path[..i])
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`. A bare name, a bare IPv6 address
/// (more than one ':' without brackets) or anything malformed is returned as is.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => authority,
    }
}

/// Whether `host` is what `pattern` names: the same name (ASCII case-insensitive,
/// one trailing dot of a fully qualified name ignored), or for `*.example.com`
/// any name under `example.com` at any depth, but not `example.com` itself.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    match pattern.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => {
            // `suffix` is `.example.com`: the host must end with it and have a
            // non-empty label in front.
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        _ => host.eq_ignore_ascii_case(pattern),
    }
}

/// The first route (http mode) whose every given condition holds for `req`,
/// or `None` (then the service's default pool, or 404).
///
/// Conditions: `host` (see [`host_matches`]), `path` exactly, `path_prefix`,
/// `path_regex` (searched in the path; anchor it to match the whole),
/// `method` exactly (methods are case-sensitive), and every header condition:
/// some field of that name whose whole value equals / matches. A route with
/// `sni` set is a tcp-mode route and never matches here.
pub fn classify<'r>(routes: &'r [Route], req: &RequestView) -> Option<&'r Route> {
    routes.iter().find(|r| matches_request(&r.matcher, req))
}

fn matches_request(m: &RouteMatch, req: &RequestView) -> bool {
    m.sni.is_none()
        && m.host.as_deref().is_none_or(|p| req.host.is_some_and(|h| host_matches(p, h)))
        && m.path.as_deref().is_none_or(|p| req.path == p)
        && m.path_prefix.as_deref().is_none_or(|p| req.path.starts_with(p))
        && m.path_regex.as_ref().is_none_or(|re| re.0.is_match(req.path))
        && m.method.as_deref().is_none_or(|meth| req.method == meth)
        && m.headers.iter().all(|cond| header_matches(cond, req.headers))
}

fn header_matches(cond: &HeaderMatch, headers: &[Header]) -> bool {
    headers.iter().filter(|h| h.is(&cond.name)).any(|h| match &cond.value {
        ValueMatch::Exact(want) => h.value == want.as_bytes(),
        // A value that is not UTF-8 cannot match a text pattern.
        ValueMatch::Regex(re) => std::str::from_utf8(&h.value).is_ok_and(|v| re.0.is_match(v)),
    })
}

/// The first route (tcp mode) whose `sni` matches the TLS server name (see
/// [`host_matches`]); a route without `sni` matches any connection, with or
/// without a server name, so it serves as a catch-all. Other conditions are
/// http-only and ignored here.
pub fn classify_sni<'r>(routes: &'r [Route], server_name: Option<&str>) -> Option<&'r Route> {
    routes.iter().find(|r| match r.matcher.sni.as_deref() {
        None => true,
        Some(pattern) => server_name.is_some_and(|name| host_matches(pattern, name)),
    })
}

/// The path as routes compare it: percent-encoded unreserved characters
/// decoded (`%61` → `a`, `%2E` → `.`), dot-segments resolved (RFC 3986
/// §5.2.4) and repeated slashes folded, so one resource has one spelling
/// and a route guarding it cannot be stepped around. Encoded reserved
/// characters (`%2F`) stay encoded: decoding them would change the path.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let clean =
        !path.contains('%') && !path.contains("//") && !path.split('/').any(|s| s == "." || s == "..");
    if clean {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c as char);
                    i += 3;
                    continue;
                }
                // Reserved or non-ASCII: keep the escape, with upper-case hex.
                decoded.push('%');
                decoded.push((bytes[i + 1] as char).to_ascii_uppercase());
                decoded.push((bytes[i + 2] as char).to_ascii_uppercase());
                i += 3;
                continue;
            }
        }
        if bytes[i] == b'%' {
            // A `%` that starts no escape is escaped itself: left bare, the
            // characters decoded after it could form a new escape
            // (`%2%65` → `%2e`), and a second decoding would see a path this
            // one did not — normalising must be idempotent.
            decoded.push_str("%25");
            i += 1;
            continue;
        }
        // `path` is a str: copy whole characters.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        decoded.push(ch);
        i += ch.len_utf8();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // A trailing slash or dot-segment names a directory: keep the slash.
    if decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..") || out.is_empty() {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_normalised_for_matching() {
        use super::normalize_path as n;
        assert_eq!(n("/a/b"), "/a/b");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/x/../admin"), "/admin");
        assert_eq!(n("/x/%2e%2E/admin"), "/admin");
        assert_eq!(n("//admin//x"), "/admin/x");
        assert_eq!(n("/./admin/."), "/admin/");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/caf%C3%A9/"), "/caf%C3%A9/");
        assert_eq!(n("/%"), "/%25");
        assert_eq!(n("/%4"), "/%254");
        // Found by fuzzing: decoding must not form a new escape.
        assert_eq!(n("%%663"), "/%25f3");
        assert_eq!(n("/a/%2%65%2%65/x"), "/a/%252e%252e/x");
        for p in ["%%663", "/a/%2%65%2%65/x", "/%%2e%2e/", "/%25%32%65"] {
            assert_eq!(n(&n(p)), n(p), "{p}");
        }
        assert_eq!(n("/é/./x"), "/é/x");
    }

    use super::*;
    use crate::http::{BodyKind, Version};
    use crate::model::{Pattern, PoolId, RouteAction};
    use proptest::prelude::*;

    fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.to_owned(),
            target: target.to_owned(),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header { name: (*n).to_owned(), value: v.as_bytes().to_vec() })
                .collect(),
            body: BodyKind::None,
            keep_alive: true,
            upgrade: None,
            expect_continue: false,
            head_len: 0,
        }
    }

    fn route(name: &str, matcher: RouteMatch) -> Route {
        Route { name: name.to_owned(), matcher, action: RouteAction::Pool(PoolId(0)), policy: None }
    }

    fn re(s: &str) -> Pattern {
        Pattern(regex::Regex::new(s).expect("test regex"))
    }

    /// The name of the route `routes` picks for the request, if any.
    fn pick(routes: &[Route], method: &str, target: &str, headers: &[(&str, &str)]) -> Option<String> {
        let h = head(method, target, headers);
        classify(routes, &RequestView::of(&h)).map(|r| r.name.clone())
    }

    #[test]
    fn view_takes_host_from_header_without_port() {
        let h = head("GET", "/a/b?x=1#f", &[("Host", "Example.COM:8080")]);
        let v = RequestView::of(&h);
        assert_eq!(v.host, Some("Example.COM"));
        assert_eq!(v.path, "/a/b");
        assert_eq!(v.method, "GET");
        assert_eq!(v.headers.len(), 1);
    }

    #[test]
    fn view_keeps_ipv6_brackets_and_strips_port() {
        for (raw, want) in
            [("[::1]:80", "[::1]"), ("[::1]", "[::1]"), ("::1", "::1"), ("10.0.0.1:443", "10.0.0.1")]
        {
            let h = head("GET", "/", &[("host", raw)]);
            assert_eq!(RequestView::of(&h).host, Some(want), "{raw}");
        }
    }

    #[test]
    fn view_prefers_absolute_form_target_over_host_header() {
        let h = head("GET", "http://a.example:80/p/q?x", &[("Host", "b.example")]);
        let v = RequestView::of(&h);
        assert_eq!(v.host, Some("a.example"));
        assert_eq!(v.path, "/p/q");

        let h = head("GET", "HTTPS://user@[2001:db8::1]:8443?q", &[]);
        let v = RequestView::of(&h);
        assert_eq!(v.host, Some("[2001:db8::1]"));
        assert_eq!(v.path, "/");
    }

    #[test]
    fn view_of_asterisk_and_missing_host() {
        let h = head("OPTIONS", "*", &[]);
        let v = RequestView::of(&h);
        assert_eq!(v.path, "*");
        assert_eq!(v.host, None);
        let h = head("GET", "/", &[("Host", "")]);
        assert_eq!(RequestView::of(&h).host, None);
    }

    #[test]
    fn host_exact_is_case_insensitive_and_ignores_trailing_dot() {
        assert!(host_matches("example.com", "EXAMPLE.com"));
        assert!(host_matches("example.com", "example.com."));
        assert!(!host_matches("example.com", "www.example.com"));
        assert!(!host_matches("example.com", "example.org"));
    }

    #[test]
    fn host_wildcard_matches_subdomains_not_apex() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.EXAMPLE.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(!host_matches("*.example.com", "ü.com"));
    }

    #[test]
    fn host_condition() {
        let routes = [route("r", RouteMatch { host: Some("*.example.com".into()), ..Default::default() })];
        assert_eq!(pick(&routes, "GET", "/", &[("Host", "api.example.com:8080")]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "/", &[("Host", "example.com")]), None);
        assert_eq!(pick(&routes, "GET", "/", &[]), None, "no host never matches a host condition");
    }

    #[test]
    fn path_exact_ignores_query() {
        let routes = [route("r", RouteMatch { path: Some("/login".into()), ..Default::default() })];
        assert_eq!(pick(&routes, "GET", "/login?next=/", &[]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "/login/", &[]), None);
        assert_eq!(pick(&routes, "GET", "/LOGIN", &[]), None);
    }

    #[test]
    fn path_prefix() {
        let routes = [route("r", RouteMatch { path_prefix: Some("/api/".into()), ..Default::default() })];
        assert_eq!(pick(&routes, "GET", "/api/v1/x", &[]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "http://h/api/", &[]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "/api", &[]), None);
        assert_eq!(pick(&routes, "GET", "/x?/api/", &[]), None, "the query is not the path");
    }

    #[test]
    fn path_regex() {
        let routes = [route("r", RouteMatch { path_regex: Some(re(r"^/users/\d+$")), ..Default::default() })];
        assert_eq!(pick(&routes, "GET", "/users/42?x", &[]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "/users/me", &[]), None);
    }

    #[test]
    fn method_exact() {
        let routes = [route("r", RouteMatch { method: Some("POST".into()), ..Default::default() })];
        assert_eq!(pick(&routes, "POST", "/", &[]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "/", &[]), None);
    }

    #[test]
    fn header_exact_and_regex_any_field() {
        let routes = [route(
            "r",
            RouteMatch {
                headers: vec![
                    HeaderMatch { name: "x-tenant".into(), value: ValueMatch::Exact("blue".into()) },
                    HeaderMatch { name: "user-agent".into(), value: ValueMatch::Regex(re("(?i)curl")) },
                ],
                ..Default::default()
            },
        )];
        let both = [("X-Tenant", "red"), ("X-TENANT", "blue"), ("User-Agent", "CURL/8")];
        assert_eq!(pick(&routes, "GET", "/", &both).as_deref(), Some("r"), "any field of the name may match");
        assert_eq!(
            pick(&routes, "GET", "/", &[("X-Tenant", "blue")]),
            None,
            "every header condition must hold"
        );
        assert_eq!(
            pick(&routes, "GET", "/", &[("X-Tenant", "Blue"), ("User-Agent", "curl")]),
            None,
            "exact is exact"
        );
        assert_eq!(pick(&routes, "GET", "/", &[("X-Tenant-Id", "blue"), ("User-Agent", "curl")]), None);
    }

    #[test]
    fn header_regex_on_non_utf8_value_does_not_match() {
        let routes = [route(
            "r",
            RouteMatch {
                headers: vec![HeaderMatch { name: "x".into(), value: ValueMatch::Regex(re(".*")) }],
                ..Default::default()
            },
        )];
        let mut h = head("GET", "/", &[]);
        h.headers.push(Header { name: "X".into(), value: vec![0xff, 0xfe] });
        assert!(classify(&routes, &RequestView::of(&h)).is_none());
    }

    #[test]
    fn all_conditions_together() {
        let m = RouteMatch {
            host: Some("shop.example".into()),
            path_prefix: Some("/cart".into()),
            method: Some("PUT".into()),
            ..Default::default()
        };
        let routes = [route("r", m)];
        assert_eq!(pick(&routes, "PUT", "/cart/1", &[("Host", "shop.example")]).as_deref(), Some("r"));
        assert_eq!(pick(&routes, "GET", "/cart/1", &[("Host", "shop.example")]), None);
        assert_eq!(pick(&routes, "PUT", "/other", &[("Host", "shop.example")]), None);
        assert_eq!(pick(&routes, "PUT", "/cart/1", &[("Host", "other.example")]), None);
    }

    #[test]
    fn first_match_wins() {
        let routes = [
            route("api-v2", RouteMatch { path_prefix: Some("/api/v2/".into()), ..Default::default() }),
            route("api", RouteMatch { path_prefix: Some("/api/".into()), ..Default::default() }),
            route("all", RouteMatch::default()),
            route("never", RouteMatch { path_prefix: Some("/api/".into()), ..Default::default() }),
        ];
        assert_eq!(pick(&routes, "GET", "/api/v2/x", &[]).as_deref(), Some("api-v2"));
        assert_eq!(pick(&routes, "GET", "/api/v1/x", &[]).as_deref(), Some("api"));
        assert_eq!(pick(&routes, "GET", "/", &[]).as_deref(), Some("all"));
        assert_eq!(pick(&[], "GET", "/", &[]), None);
    }

    #[test]
    fn sni_routes_never_match_in_http_mode() {
        let routes = [
            route("sni", RouteMatch { sni: Some("a.example".into()), ..Default::default() }),
            route("rest", RouteMatch::default()),
        ];
        assert_eq!(pick(&routes, "GET", "/", &[("Host", "a.example")]).as_deref(), Some("rest"));
    }

    #[test]
    fn classify_sni_first_match_and_catch_all() {
        let routes = [
            route("exact", RouteMatch { sni: Some("a.example.com".into()), ..Default::default() }),
            route("wild", RouteMatch { sni: Some("*.example.com".into()), ..Default::default() }),
            route("any", RouteMatch { path: Some("/ignored".into()), ..Default::default() }),
        ];
        let name = |sni: Option<&str>| classify_sni(&routes, sni).map(|r| r.name.as_str());
        assert_eq!(name(Some("A.Example.com")), Some("exact"));
        assert_eq!(name(Some("b.example.com")), Some("wild"));
        assert_eq!(name(Some("example.com")), Some("any"));
        assert_eq!(name(None), Some("any"));
        assert_eq!(classify_sni(&routes[..2], None), None);
        assert_eq!(classify_sni(&routes[..2], Some("example.org")), None);
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        (
            proptest::option::of("\\PC{0,12}"),
            proptest::option::of("\\PC{0,8}"),
            proptest::option::of("\\PC{0,8}"),
            proptest::option::of("[A-Z]{1,7}"),
            proptest::option::of(("[a-z-]{1,8}", "\\PC{0,8}")),
        )
            .prop_map(|(host, path, path_prefix, method, header)| {
                let headers = header
                    .map(|(name, v)| vec![HeaderMatch { name, value: ValueMatch::Exact(v) }])
                    .unwrap_or_default();
                route("p", RouteMatch { host, path, path_prefix, method, headers, ..Default::default() })
            })
    }

    proptest! {
        #[test]
        fn classify_never_panics(
            routes in proptest::collection::vec(arb_route(), 0..6),
            target in "\\PC{0,40}",
            host in proptest::option::of("\\PC{0,30}"),
            method in "\\PC{0,8}",
        ) {
            let headers: Vec<(&str, &str)> = host.as_deref().map(|h| ("Host", h)).into_iter().collect();
            let h = head(&method, &target, &headers);
            let _ = classify(&routes, &RequestView::of(&h));
            let _ = classify_sni(&routes, host.as_deref());
        }

        #[test]
        fn absolute_targets_never_panic(authority in "\\PC{0,30}", path in "\\PC{0,20}") {
            let h = head("GET", &format!("http://{authority}{path}"), &[]);
            let _ = RequestView::of(&h);
        }

        #[test]
        fn a_route_without_conditions_always_matches(
            target in "\\PC{0,40}",
            host in proptest::option::of("\\PC{0,30}"),
            method in "\\PC{0,8}",
        ) {
            let headers: Vec<(&str, &str)> = host.as_deref().map(|h| ("Host", h)).into_iter().collect();
            let h = head(&method, &target, &headers);
            let routes = [route("all", RouteMatch::default())];
            prop_assert!(classify(&routes, &RequestView::of(&h)).is_some());
            prop_assert!(classify_sni(&routes, host.as_deref()).is_some());
        }
    }
}
