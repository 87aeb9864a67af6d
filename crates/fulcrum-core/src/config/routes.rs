//! `[[service.route]]`: what a request (http mode) or a TLS server name (tcp
//! mode) must match, and the one thing a route then does: send to a pool,
//! redirect, or answer with a status. Routes are read one at a time like the
//! rest of `schema`; the pools they name are resolved in `validate`, beside
//! the services' own.

use std::net::{Ipv4Addr, Ipv6Addr};

use toml_edit::TableLike;

use super::checks::is_method;
use super::persistence::is_token;
use super::policy;
use super::read::{kind_of, Located, Report, Section};
use super::schema::{bounded, label, name};
use crate::model::{HeaderMatch, Mode, Pattern, Policy, RouteAction, RouteMatch, ValueMatch};

const ROUTE_KEYS: &[&str] = &[
    "name",
    "host",
    "path",
    "path_prefix",
    "path_regex",
    "method",
    "header",
    "sni",
    "pool",
    "redirect",
    "status",
    "body",
    "policy",
];
/// The keys only an http route reads: parts of a request, and answers only
/// HTTP can give.
const HTTP_KEYS: &[&str] =
    &["host", "path", "path_prefix", "path_regex", "method", "header", "redirect", "status", "body"];
/// The keys only a tcp route reads.
const TCP_KEYS: &[&str] = &["sni"];
/// A route does exactly one of these.
const ACTIONS: &[&str] = &["pool", "redirect", "status"];
const REDIRECT_KEYS: &[&str] = &["status", "location"];
const HEADER_KEYS: &[&str] = &["name", "value", "regex"];

const REDIRECT_STATUSES: &[u16] = &[301, 302, 303, 307, 308];
const REDIRECT_STATUS: u16 = 302;

/// One route as far as it can be read alone: its pool is still a name.
pub(super) struct RouteRead<'d> {
    /// `service "web" route "api"`, or `service "web" route 2` without a name.
    pub path: String,
    /// `route "api"` or `route 2`, for messages about another route.
    pub label: String,
    /// The route's table header.
    pub line: Option<usize>,
    /// The `name` key, for the uniqueness check.
    pub given_name: Option<Located<&'d str>>,
    /// `name`, else `route N` (1-based).
    pub name: String,
    pub matcher: RouteMatch,
    /// `None` after an error: no action, several, or a wrong one.
    pub action: Option<ActionRead<'d>>,
    pub policy: Option<Policy>,
    /// Whether the table gives `sni`, right or wrong: a tcp service with sni
    /// routes needs no pool, and a wrong sni was reported already.
    pub sni_given: bool,
}

pub(super) enum ActionRead<'d> {
    Pool(Located<&'d str>),
    /// A redirect or a status answer, complete.
    Answer(RouteAction),
}

/// Every `[[service.route]]` of the service table `service`, in file order.
/// `mode` is `None` when the service's mode is wrong or missing: then no key
/// is held against a mode, and each is read for its own sake.
pub(super) fn routes<'d>(r: &mut Report, service: &Section<'d>, mode: Option<Mode>) -> Vec<RouteRead<'d>> {
    let tables = r.tables(service, "route", "service.route");
    let routes: Vec<RouteRead> =
        tables.into_iter().enumerate().map(|(i, t)| route(r, &service.path, t, i, mode)).collect();
    unreachable(r, &routes);
    routes
}

fn route<'d>(
    r: &mut Report,
    service: &str,
    table: Located<&'d dyn TableLike>,
    index: usize,
    mode: Option<Mode>,
) -> RouteRead<'d> {
    let label = label("route", table.value, index);
    let s = r.section(format!("{service} {label}"), "", table.value, table.line, ROUTE_KEYS);
    let given_name = name(r, &s);
    let name = given_name.map_or_else(|| format!("route {}", index + 1), |n| n.value.to_owned());

    // Keys of the other mode are reported and left unread.
    let (other, wanted, actual): (&[&str], _, _) = match mode {
        Some(Mode::Tcp) => (HTTP_KEYS, "http", "tcp"),
        Some(Mode::Http) => (TCP_KEYS, "tcp", "http"),
        None => (&[], "", ""),
    };
    for key in other {
        if let Some(found) = r.get(&s, key) {
            let message =
                format!(r#"{key} is only for mode "{wanted}", but the service's mode is "{actual}""#);
            r.error(found.line, &s.path, message);
        }
    }
    let reads = |key: &str| !other.contains(&key);
    if mode == Some(Mode::Tcp) && !s.has("sni") {
        let message = r#"has no sni; a tcp route matches the TLS server name only, like sni = "a.example.com" (connections no route takes go to the service's pool)"#;
        r.error_on(s.line, &s.path, message);
    }

    let matcher = RouteMatch {
        host: if reads("host") { domain(r, &s, "host") } else { None },
        path: if reads("path") { request_path(r, &s, "path") } else { None },
        path_prefix: if reads("path_prefix") { request_path(r, &s, "path_prefix") } else { None },
        path_regex: if reads("path_regex") { pattern(r, &s, "path_regex") } else { None },
        method: if reads("method") { method(r, &s) } else { None },
        headers: if reads("header") { headers(r, &s) } else { Vec::new() },
        sni: if reads("sni") { domain(r, &s, "sni") } else { None },
    };
    let action = action(r, &s, reads("status"));
    let policy = policy::route_policy(r, &s, mode);
    let sni_given = s.has("sni");
    RouteRead { path: s.path, label, line: s.line, given_name, name, matcher, action, policy, sni_given }
}

/// The one action of a route; `http` says whether the answers (redirect,
/// status and body) are read, i.e. the mode allows them.
fn action<'d>(r: &mut Report, s: &Section<'d>, http: bool) -> Option<ActionRead<'d>> {
    let given: Vec<&str> = ACTIONS.iter().copied().filter(|key| s.has(key)).collect();
    match given.len() {
        0 => {
            let message = r#"has no action; give it one of pool = "NAME", redirect = { location = "URL" } or status = 403"#;
            r.error_on(s.line, &s.path, message);
        }
        1 => {}
        n => {
            let line = r.get(s, given[n - 1]).and_then(|found| found.line);
            let count = if n == 2 { "two" } else { "three" };
            let listed = format!("{} and {}", given[..n - 1].join(", "), given[n - 1]);
            let message = format!(
                "has {count} actions, {listed}; keep one: a route sends to a pool, redirects, or answers with a status"
            );
            r.error_on(line, &s.path, &message);
        }
    }
    let pool = r.string(s, "pool");
    let (redirect, respond) = match http {
        true => (redirect(r, s), respond(r, s)),
        false => (None, None),
    };
    if http && !s.has("status") {
        if let Some(found) = r.get(s, "body") {
            let message = "body is only for an answer with a status; add status = 200, or leave body out";
            r.error(found.line, &s.path, message);
        }
    }
    if given.len() != 1 {
        return None;
    }
    pool.map(ActionRead::Pool).or(redirect.map(ActionRead::Answer)).or(respond.map(ActionRead::Answer))
}

/// `redirect = { status, location }`; `None` when absent or wrong.
fn redirect(r: &mut Report, s: &Section) -> Option<RouteAction> {
    let rd = r.subsection(s, "redirect", REDIRECT_KEYS)?;
    r.require(&rd, &["location"]);
    let status = match r.integer(&rd, "status") {
        Some(n) => match REDIRECT_STATUSES.iter().find(|status| i64::from(**status) == n.value) {
            Some(status) => Some(*status),
            None => {
                let message = format!(
                    "{} {} is not a redirect status; use 301, 302, 303, 307 or 308 (the default is {REDIRECT_STATUS})",
                    rd.key("status"),
                    n.value
                );
                r.error(n.line, &rd.path, message);
                None
            }
        },
        // Not an integer: reported.
        None if rd.has("status") => None,
        None => Some(REDIRECT_STATUS),
    };
    let location = match r.string(&rd, "location") {
        Some(l) if l.value.is_empty() => {
            let message = format!(
                r#"{} is empty; give the URL to send clients to, like "https://example.com/""#,
                rd.key("location")
            );
            r.error(l.line, &rd.path, message);
            None
        }
        Some(l) if l.value.contains(|c: char| c.is_whitespace() || c.is_control()) => {
            let message = format!(
                r#"{} {:?} has a space or control character, which a Location header cannot carry; percent-encode it, like "%20""#,
                rd.key("location"),
                l.value
            );
            r.error(l.line, &rd.path, message);
            None
        }
        l => l.map(|l| l.value.to_owned()),
    };
    Some(RouteAction::Redirect { status: status?, location: location? })
}

/// `status` and `body`: the route answers by itself. `None` when absent or wrong.
fn respond(r: &mut Report, s: &Section) -> Option<RouteAction> {
    let status: u16 = bounded(r, s, "status", 200, 599)?;
    if REDIRECT_STATUSES.contains(&status) {
        let line = r.get(s, "status").and_then(|found| found.line);
        let message = format!(
            r#"status {status} is a redirect, which needs a Location; write redirect = {{ status = {status}, location = "…" }} instead"#
        );
        r.error(line, &s.path, message);
        return None;
    }
    let body = match r.string(s, "body") {
        Some(b) if !b.value.is_empty() && !has_body(status) => {
            let message = format!("body is given, but a {status} response has no body; leave body out");
            r.error(b.line, &s.path, message);
            return None;
        }
        Some(b) => b.value.to_owned(),
        None => default_body(status),
    };
    Some(RouteAction::Respond { status, body })
}

/// `host` or `sni`: a name exactly, or `*.` and a domain for its
/// subdomains; lowercased, since names compare without case.
fn domain(r: &mut Report, s: &Section, key: &str) -> Option<String> {
    let found = r.string(s, key)?;
    if found.value.is_empty() {
        let message = format!("{key} is empty; leave it out to match every {key}");
        r.error(found.line, &s.path, message);
        return None;
    }
    match domain_problem(found.value, key == "sni") {
        Some(problem) => {
            r.error(found.line, &s.path, format!("{key} {:?} {problem}", found.value));
            None
        }
        None => Some(found.value.to_ascii_lowercase()),
    }
}

/// What is wrong with a host name, in words that follow it; `None` if
/// nothing. A host may also be an IP address (`[::1]` bracketed, as in a
/// Host header); a server name may not, since TLS clients send none for one.
fn domain_problem(text: &str, sni: bool) -> Option<String> {
    const LIKE: &str = r#"write a name like "example.com", or "*.example.com" for its subdomains"#;
    let bracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    let ip = text.parse::<Ipv4Addr>().is_ok() || bracketed.is_some_and(|b| b.parse::<Ipv6Addr>().is_ok());
    let bare_v6 = text.parse::<Ipv6Addr>().is_ok();
    if sni && (ip || bare_v6) {
        return Some(format!(
            "is an IP address, which TLS clients never send as a server name, so it would never match; {LIKE}"
        ));
    }
    if ip {
        return None;
    }
    if bare_v6 {
        return Some(format!(r#"needs brackets around its IPv6 address, like "[{text}]""#));
    }
    if let Some((name, port)) = text.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') {
            return Some(format!("has a port; routes match the name without its port, write {name:?}"));
        }
    }
    let name = text.strip_prefix("*.").unwrap_or(text);
    if name.contains('*') {
        return Some(format!(r#"has a "*" that is not a leading "*."; {LIKE}"#));
    }
    let valid = name.split('.').all(|label| {
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    match valid {
        true => None,
        false => Some(format!("is not a host name; {LIKE}")),
    }
}

/// `path` or `path_prefix`, which compare with a request's path without its query.
fn request_path(r: &mut Report, s: &Section, key: &str) -> Option<String> {
    let found = r.string(s, key)?;
    let text = found.value;
    let problem = if !text.starts_with('/') {
        Some(format!(r#"must start with "/", like "/{text}""#))
    } else if text.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Some(r#"has a space or control character, which a request line cannot carry; percent-encode it, like "%20""#.to_owned())
    } else if text.contains('?') {
        Some(
            r#"has a query ("?"), but routes match the path without its query, so it would never match"#
                .to_owned(),
        )
    } else {
        None
    };
    match problem {
        Some(problem) => {
            r.error(found.line, &s.path, format!("{} {text:?} {problem}", s.key(key)));
            None
        }
        None => Some(text.to_owned()),
    }
}

/// A regular expression, compiled now so that a bad one stops the file
/// rather than a request.
fn pattern(r: &mut Report, s: &Section, key: &str) -> Option<Pattern> {
    let found = r.string(s, key)?;
    match regex::Regex::new(found.value) {
        Ok(regex) => Some(Pattern(regex)),
        Err(e) => {
            let message = format!(
                "{} {:?} is not a valid regular expression: {}",
                s.key(key),
                found.value,
                regex_problem(&e)
            );
            r.error(found.line, &s.path, message);
            None
        }
    }
}

/// The gist of a regex error on one line. A syntax error's `Display` is a
/// drawing over several lines (the pattern, a caret, then `error: …`); the
/// `error:` line is the one that says what is wrong.
fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    let said = text.lines().find_map(|l| l.trim().strip_prefix("error: "));
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    said.or(first).unwrap_or("unknown error").to_owned()
}

fn method(r: &mut Report, s: &Section) -> Option<String> {
    let found = r.string(s, "method")?;
    if is_method(found.value) {
        return Some(found.value.to_owned());
    }
    let message = format!(
        r#"method {:?} is not an HTTP method; write it in capital letters, like "GET" or "POST""#,
        found.value
    );
    r.error(found.line, &s.path, message);
    None
}

/// `header = { name, value | regex }`, or an array of such tables for
/// several headers (each must match).
fn headers(r: &mut Report, s: &Section) -> Vec<HeaderMatch> {
    let Some(found) = r.get(s, "header") else {
        return Vec::new();
    };
    if found.value.is_table_like() {
        return r.subsection(s, "header", HEADER_KEYS).and_then(|h| header(r, &h)).into_iter().collect();
    }
    if !found.value.is_array() && !found.value.is_array_of_tables() {
        let message = format!(
            r#"header must be a table, like {{ name = "X-Env", value = "beta" }}, or an array of them; found {}"#,
            kind_of(found.value)
        );
        r.error(found.line, &s.path, message);
        return Vec::new();
    }
    let reported = r.error_count();
    let tables = r.tables(s, "header", "service.route.header");
    if tables.is_empty() && r.error_count() == reported {
        r.error(found.line, &s.path, "header is empty; leave it out to match any headers");
    }
    let mut headers = Vec::new();
    for (i, t) in tables.into_iter().enumerate() {
        let h = r.section(format!("{} header {}", s.path, i + 1), "", t.value, t.line, HEADER_KEYS);
        headers.extend(header(r, &h));
    }
    headers
}

/// One header condition; `None` after an error.
fn header(r: &mut Report, h: &Section) -> Option<HeaderMatch> {
    r.require(h, &["name"]);
    let name = match r.string(h, "name") {
        Some(n) if is_token(n.value) => Some(n.value.to_ascii_lowercase()),
        Some(n) => {
            let message = format!(
                r#"{} {:?} is not a header name; use letters, digits and "-", like "X-Env""#,
                h.key("name"),
                n.value
            );
            r.error(n.line, &h.path, message);
            None
        }
        None => None,
    };
    let value = match (h.has("value"), h.has("regex")) {
        (true, true) => {
            let line = r.get(h, "regex").and_then(|found| found.line);
            let message = format!(
                "{} and {} are both given; a header matches one way, so keep one",
                h.key("value"),
                h.key("regex")
            );
            r.error(line, &h.path, message);
            None
        }
        (false, false) => {
            let message = format!(
                r#"missing required key {:?} (the exact value) or {:?} (a regular expression)"#,
                h.key("value"),
                h.key("regex")
            );
            r.error(h.line, &h.path, message);
            None
        }
        (true, false) => r.string(h, "value").map(|v| ValueMatch::Exact(v.value.to_owned())),
        (false, true) => pattern(r, h, "regex").map(ValueMatch::Regex),
    };
    Some(HeaderMatch { name: name?, value: value? })
}

/// Warns about each route after one that matches everything: first match
/// wins, so they never see a request.
fn unreachable(r: &mut Report, routes: &[RouteRead]) {
    let Some(all) = routes.iter().position(|route| route.matcher == RouteMatch::default()) else {
        return;
    };
    let first = &routes[all];
    let at = first.line.map(|l| format!(" at line {l}")).unwrap_or_default();
    for later in &routes[all + 1..] {
        let message = format!("can never match: {}{at} before it matches every request", first.label);
        r.warn_on(later.line, &later.path, &message);
    }
}

/// A 204 or 304 response has no body (RFC 9110), whatever the route says.
fn has_body(status: u16) -> bool {
    !matches!(status, 204 | 304)
}

/// The body of a status answer with no `body`: its reason phrase and a newline.
fn default_body(status: u16) -> String {
    match (has_body(status), crate::http::reason_phrase(status)) {
        (false, _) => String::new(),
        (true, Some(phrase)) => format!("{phrase}\n"),
        (true, None) => format!("{status}\n"),
    }
}
