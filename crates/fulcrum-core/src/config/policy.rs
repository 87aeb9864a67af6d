//! `[service.policy]` and a route's `policy = { … }`: which sources are
//! eligible, what authorization is required, and (per service) how many
//! sessions. Also the address lists other keys share (`trusted_proxies`).
//! Like `schema`, every reader records what is wrong and carries on.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::read::{Report, Section};
use super::schema::limit;
use crate::model::{Auth, Mode, Policy};

const POLICY_KEYS: &[&str] =
    &["allow", "deny", "auth", "htpasswd", "tokens_file", "realm", "max_sessions", "rate_per_client"];
/// The keys of authorization, which only HTTP can ask for.
const AUTH_KEYS: &[&str] = &["auth", "htpasswd", "tokens_file", "realm"];
/// Limits count all of a service's sessions, so a route's policy has none.
const SERVICE_ONLY_KEYS: &[&str] = &["max_sessions", "rate_per_client"];

/// The words of `policy.auth`, as `AuthKind`'s serde derive spells them.
pub(super) const AUTH_KINDS: &[&str] = &["none", "basic", "bearer"];

/// `policy.auth` as written: `Auth` carries its file and realm, so it
/// cannot be read from one word by serde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum AuthKind {
    None,
    Basic,
    Bearer,
}

const REALM: &str = "fulcrum";

/// `[service.policy]` of the service table `service`; the default (no
/// restriction) when absent.
pub(super) fn service_policy(r: &mut Report, service: &Section, mode: Option<Mode>) -> Policy {
    policy(r, service, mode, false).unwrap_or_default()
}

/// A route's `policy = { … }`, checked after the service's; `None` when absent.
pub(super) fn route_policy(r: &mut Report, route: &Section, mode: Option<Mode>) -> Option<Policy> {
    policy(r, route, mode, true)
}

fn policy(r: &mut Report, owner: &Section, mode: Option<Mode>, route: bool) -> Option<Policy> {
    let p = r.subsection(owner, "policy", POLICY_KEYS)?;
    let allow_empty = "policy.allow is empty, which would allow every source; \
                       leave it out for that, or list the sources to allow";
    let allow = nets(r, &p, "allow", Some(allow_empty)).unwrap_or_default();
    let deny = nets(r, &p, "deny", None).unwrap_or_default();
    let auth = match mode {
        Some(Mode::Tcp) => {
            for key in AUTH_KEYS {
                if let Some(found) = r.get(&p, key) {
                    let message = format!(
                        r#"{} is only for mode "http", but the service's mode is "tcp"; a tcp policy can only allow or deny sources"#,
                        p.key(key)
                    );
                    r.error(found.line, &p.path, message);
                }
            }
            Auth::None
        }
        _ => auth(r, &p),
    };
    let (max_sessions, rate_per_client) = match route {
        true => {
            for key in SERVICE_ONLY_KEYS {
                if let Some(found) = r.get(&p, key) {
                    let message = format!(
                        "{} is only for [service.policy]: limits count all of a service's sessions, \
                         so a route's policy has allow, deny and auth only",
                        p.key(key)
                    );
                    r.error(found.line, &p.path, message);
                }
            }
            (None, None)
        }
        false => (limit(r, &p, "max_sessions"), limit(r, &p, "rate_per_client")),
    };
    Some(Policy { allow, deny, auth, max_sessions, rate_per_client })
}

/// `auth` and the keys of each kind; a kind that is not a word was reported,
/// and which keys it meant to allow is a guess, so they are left unread.
fn auth(r: &mut Report, p: &Section) -> Auth {
    let kind = match p.has("auth") {
        true => r.choice(p, "auth", AUTH_KINDS),
        false => Some(AuthKind::None),
    };
    let Some(kind) = kind else {
        return Auth::None;
    };
    if kind != AuthKind::Basic {
        r.only_for(p, "htpasswd", "auth", &["basic"], "none");
    }
    if kind != AuthKind::Bearer {
        r.only_for(p, "tokens_file", "auth", &["bearer"], "none");
    }
    match kind {
        AuthKind::None => {
            r.only_for(p, "realm", "auth", &["basic", "bearer"], "none");
            Auth::None
        }
        AuthKind::Basic => {
            let need = r#"the htpasswd file of user names and bcrypt hashes, like htpasswd = "/etc/fulcrum/htpasswd""#;
            let htpasswd = file(r, p, "htpasswd", need).unwrap_or_default();
            Auth::Basic { realm: realm(r, p), htpasswd }
        }
        AuthKind::Bearer => {
            let need = r#"the file of accepted tokens, one a line, like tokens_file = "/etc/fulcrum/tokens""#;
            let tokens_file = file(r, p, "tokens_file", need).unwrap_or_default();
            Auth::Bearer { realm: realm(r, p), tokens_file }
        }
    }
}

/// A file the daemon reads when it loads the configuration; kept as written
/// (a relative path is resolved there, against the configuration file's
/// directory), since the core does no I/O.
fn file(r: &mut Report, p: &Section, key: &str, need: &str) -> Option<PathBuf> {
    let Some(found) = r.string(p, key) else {
        if !p.has(key) {
            let auth = r.get(p, "auth").and_then(|a| a.value.as_str()).unwrap_or_default();
            let line = r.get(p, "auth").and_then(|a| a.line);
            let message = format!("{} {auth:?} needs {}: {need}", p.key("auth"), p.key(key));
            r.error(line, &p.path, message);
        }
        return None;
    };
    if found.value.trim().is_empty() {
        r.error(found.line, &p.path, format!("{} is empty; give {need}", p.key(key)));
        return None;
    }
    Some(PathBuf::from(found.value))
}

/// `realm`, which goes inside a quoted string of `WWW-Authenticate`.
fn realm(r: &mut Report, p: &Section) -> String {
    match r.string(p, "realm") {
        Some(v) if v.value.is_empty() => {
            let message = format!("{} is empty; leave it out for {REALM:?}", p.key("realm"));
            r.error(v.line, &p.path, message);
            REALM.to_owned()
        }
        Some(v) if v.value.contains(|c: char| c == '"' || c == '\\' || c.is_control()) => {
            let message = format!(
                "{} {:?} has a quote, a backslash or a control character, which the quoted realm of WWW-Authenticate cannot carry",
                p.key("realm"),
                v.value
            );
            r.error(v.line, &p.path, message);
            REALM.to_owned()
        }
        Some(v) => v.value.to_owned(),
        None => REALM.to_owned(),
    }
}

/// A list of CIDR blocks or bare IP addresses (a bare IP is a /32 or /128);
/// `empty`, when given, is the error for an empty list. `None` when absent
/// or not a list.
pub(super) fn nets(r: &mut Report, s: &Section, key: &str, empty: Option<&str>) -> Option<Vec<IpNet>> {
    let list = r.strings(s, key)?;
    if let (true, Some(message)) = (list.value.is_empty(), empty) {
        r.error(list.line, &s.path, message);
    }
    let mut nets = Vec::new();
    for entry in list.value {
        match parse_net(entry.value) {
            Ok(net) => nets.push(net),
            Err(problem) => {
                r.error(entry.line, &s.path, format!("{} {:?} {problem}", s.key(key), entry.value))
            }
        }
    }
    Some(nets)
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address; on failure, says
/// what is wrong in words that follow the quoted text.
fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    match text.parse::<IpNet>() {
        // `10.1.2.3/8` is most likely a typo for one of two things; say
        // which network it covers rather than guess silently.
        Ok(net) if net.trunc() != net => {
            Err(format!("has host bits set; write the network it covers, {:?}", net.trunc().to_string()))
        }
        Ok(net) => Ok(net),
        Err(_) => {
            Err(r#"is not an IP address or a CIDR block; write one like "10.0.0.0/8" or "10.0.0.1""#.into())
        }
    }
}
