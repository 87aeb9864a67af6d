//! `[service.persistence]`: how a service keeps a client on one backend —
//! a cookie (inserted by Fulcrum, or learned from the application), the
//! client's source address, or a header's value. Each kind reads its own
//! keys; a key of another kind is an error, so a forgotten `kind` does not
//! silently turn persistence off. Like `schema`, every reader records what
//! is wrong and carries on with the default in its place.

use std::time::Duration;

use super::read::{Report, Section};
use super::schema::bounded;
use crate::model::{CookiePersistence, Mode, Persistence};

const PERSISTENCE_KEYS: &[&str] = &[
    "kind",
    "cookie",
    "learn",
    "path",
    "ttl",
    "http_only",
    "same_site",
    "max_entries",
    "mask",
    "mask_v6",
    "header",
];

/// The words of `persistence.kind`, as `Kind`'s serde derive spells them.
pub(super) const PERSISTENCE_KINDS: &[&str] = &["none", "cookie", "source_ip", "header"];

/// `persistence.kind` as written: `Persistence` carries each kind's
/// settings, so it cannot be read from one word by serde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Kind {
    None,
    Cookie,
    SourceIp,
    Header,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Cookie => "cookie",
            Kind::SourceIp => "source_ip",
            Kind::Header => "header",
        }
    }
}

/// Each key past `kind`, and the kinds that read it.
const KINDS_OF_KEY: &[(&str, &[&str])] = &[
    ("cookie", &["cookie"]),
    ("learn", &["cookie"]),
    ("path", &["cookie"]),
    ("ttl", &["cookie", "source_ip"]),
    ("http_only", &["cookie"]),
    ("same_site", &["cookie"]),
    ("max_entries", &["cookie", "source_ip"]),
    ("mask", &["source_ip"]),
    ("mask_v6", &["source_ip"]),
    ("header", &["header"]),
];
/// The attributes of the cookie Fulcrum sets, which learn mode does not set.
const INSERT_KEYS: &[&str] = &["path", "http_only", "same_site"];
const SAME_SITES: &[&str] = &["Strict", "Lax", "None"];

const COOKIE: &str = "FULCRUM";
const COOKIE_PATH: &str = "/";
const TTL: Duration = Duration::from_secs(30 * 60);
const MAX_ENTRIES: usize = 100_000;

/// `[service.persistence]` of the service table `service`; none when absent.
pub(super) fn persistence(r: &mut Report, service: &Section, mode: Option<Mode>) -> Persistence {
    let Some(p) = r.subsection(service, "persistence", PERSISTENCE_KEYS) else {
        return Persistence::None;
    };
    let kind = match p.has("kind") {
        true => r.choice(&p, "kind", PERSISTENCE_KINDS),
        false => Some(Kind::None),
    };
    // A kind that is not a word was reported, and which keys it meant to
    // allow is a guess: the other keys are left unread.
    let Some(kind) = kind else {
        return Persistence::None;
    };
    let word = kind.word();
    if mode == Some(Mode::Tcp) && matches!(kind, Kind::Cookie | Kind::Header) {
        let line = r.get(&p, "kind").and_then(|k| k.line);
        let message = format!(
            r#"{} {word:?} is only for mode "http" (it reads HTTP headers), but the service's mode is "tcp"; a tcp service keeps clients by kind = "source_ip""#,
            p.key("kind")
        );
        r.error(line, &p.path, message);
    }
    for (key, kinds) in KINDS_OF_KEY {
        if !kinds.contains(&word) {
            r.only_for(&p, key, "kind", kinds, "none");
        }
    }
    match kind {
        Kind::None => Persistence::None,
        Kind::Cookie => Persistence::Cookie(cookie(r, &p)),
        Kind::SourceIp => Persistence::SourceIp {
            mask_v4: bounded(r, &p, "mask", 0, 32).unwrap_or(32),
            mask_v6: bounded(r, &p, "mask_v6", 0, 128).unwrap_or(128),
            ttl: r.duration(&p, "ttl", TTL),
            max_entries: max_entries(r, &p),
        },
        Kind::Header => {
            r.require(&p, &["header"]);
            let name = match r.string(&p, "header") {
                Some(h) if is_token(h.value) => h.value.to_ascii_lowercase(),
                Some(h) => {
                    let message = format!(
                        r#"{} {:?} is not a header name; use letters, digits and "-", like "X-User""#,
                        p.key("header"),
                        h.value
                    );
                    r.error(h.line, &p.path, message);
                    String::new()
                }
                None => String::new(),
            };
            Persistence::Header { name }
        }
    }
}

/// The settings of `kind = "cookie"`: insert mode by default, learn mode
/// with `learn = true`; each mode's own keys are errors in the other.
fn cookie(r: &mut Report, p: &Section) -> CookiePersistence {
    let learn = r.boolean(p, "learn");
    // A learn that is not a boolean was reported; which mode it meant is a
    // guess, so the keys of each mode are not held against it.
    let learn_known = learn.is_some() || !p.has("learn");
    let learning = learn.is_some_and(|l| l.value);
    if learn_known && learning {
        for key in INSERT_KEYS {
            if let Some(found) = r.get(p, key) {
                let message = format!(
                    "{} is only for insert mode (it is an attribute of the cookie Fulcrum sets), \
                     but {} is true: the application sets its own cookie",
                    p.key(key),
                    p.key("learn")
                );
                r.error(found.line, &p.path, message);
            }
        }
    }
    if learn_known && !learning {
        if let Some(found) = r.get(p, "max_entries") {
            let message = format!(
                "{} sizes the cookie map table of learn mode, but {} is not true; insert mode keeps no table",
                p.key("max_entries"),
                p.key("learn")
            );
            r.error(found.line, &p.path, message);
        }
    }

    let name = match r.string(p, "cookie") {
        Some(c) if is_token(c.value) => c.value.to_owned(),
        Some(c) => {
            let message = format!(
                r#"{} {:?} is not a cookie name; use letters, digits, "-" and "_", like "FULCRUM""#,
                p.key("cookie"),
                c.value
            );
            r.error(c.line, &p.path, message);
            COOKIE.to_owned()
        }
        None if learning && !p.has("cookie") => {
            let message = format!(
                r#"{} is true, but {} is not set; name the application's cookie to learn, like cookie = "JSESSIONID""#,
                p.key("learn"),
                p.key("cookie")
            );
            r.error(learn.and_then(|l| l.line), &p.path, message);
            COOKIE.to_owned()
        }
        None => COOKIE.to_owned(),
    };
    let path = match r.string(p, "path") {
        Some(v) if !v.value.starts_with('/') => {
            let message = format!(r#"{} {:?} must start with "/", like "/""#, p.key("path"), v.value);
            r.error(v.line, &p.path, message);
            COOKIE_PATH.to_owned()
        }
        Some(v) if v.value.contains(|c: char| c == ';' || c.is_whitespace() || c.is_control()) => {
            let message = format!(
                r#"{} {:?} has a ";", a space or a control character, which a cookie's Path cannot carry"#,
                p.key("path"),
                v.value
            );
            r.error(v.line, &p.path, message);
            COOKIE_PATH.to_owned()
        }
        Some(v) => v.value.to_owned(),
        None => COOKIE_PATH.to_owned(),
    };
    let ttl = r.duration(p, "ttl", TTL);
    let http_only = r.boolean(p, "http_only").is_none_or(|h| h.value);
    let same_site = same_site(r, p);
    let max_entries = max_entries(r, p);
    CookiePersistence { name, learn: learning, path, ttl, http_only, same_site, max_entries }
}

/// `same_site`, spelt as the `SameSite` attribute is.
fn same_site(r: &mut Report, p: &Section) -> Option<String> {
    let found = r.string(p, "same_site")?;
    if !SAME_SITES.contains(&found.value) {
        let allowed: Vec<String> = SAME_SITES.iter().map(|a| format!("{a:?}")).collect();
        let message =
            format!("{} {:?} is not one of {}", p.key("same_site"), found.value, allowed.join(", "));
        r.error(found.line, &p.path, message);
        return None;
    }
    if found.value == "None" {
        // Browsers drop a SameSite=None cookie that is not Secure, and
        // Fulcrum sets Secure only once it terminates TLS itself.
        let message = format!(
            r#"{} "None" makes browsers drop the cookie, since Fulcrum does not mark it Secure (it does not terminate TLS); use "Lax" or "Strict""#,
            p.key("same_site")
        );
        r.warn(found.line, &p.path, message);
    }
    Some(found.value.to_owned())
}

fn max_entries(r: &mut Report, p: &Section) -> usize {
    bounded(r, p, "max_entries", 1, i64::from(u32::MAX)).unwrap_or(MAX_ENTRIES)
}

/// Whether `text` is an HTTP token (RFC 9110), as cookie and header names
/// must be: visible ASCII without separators.
pub(super) fn is_token(text: &str) -> bool {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={}";
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b))
}
