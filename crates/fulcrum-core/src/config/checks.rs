//! `[pool.health]`, the active check, and `[pool.passive]`, outlier
//! ejection on real traffic: their keys, defaults, and the rules between
//! keys of one table (a timeout within its interval, an ejection within its
//! maximum). Like `schema`, every reader records what is wrong and carries
//! on with the default in its place.

use std::time::Duration;

use super::read::{Located, Report, Section};
use super::schema::bounded;
use crate::model::{CheckKind, HealthCheck, HttpCheck, PassiveCheck};

const HEALTH_KEYS: &[&str] = &[
    "kind",
    "interval",
    "jitter",
    "timeout",
    "rise",
    "fall",
    "method",
    "path",
    "expect_status",
    "body_contains",
    "host",
];
/// The keys only an http check reads.
const HTTP_KEYS: &[&str] = &["method", "path", "expect_status", "body_contains", "host"];
const PASSIVE_KEYS: &[&str] = &["consecutive_failures", "ejection", "max_ejection", "max_ejected_percent"];

/// The words of `health.kind`, as `Kind`'s serde derive spells them.
pub(super) const CHECK_KINDS: &[&str] = &["none", "tcp", "http", "agent"];

/// `health.kind` as written: `CheckKind` carries the http settings, so it
/// cannot be read from one word by serde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Kind {
    None,
    Tcp,
    Http,
    Agent,
}

const INTERVAL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(1);
const RISE: u32 = 2;
const FALL: u32 = 3;
/// Past a hundred probes, rise and fall stop detecting anything in useful time.
const MAX_RISE_FALL: i64 = 100;
const METHOD: &str = "GET";
const PATH: &str = "/";
const EXPECT_STATUS: (u16, u16) = (200, 399);
const STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// Passive checks are on by default, like Envoy's outlier detection: a
/// backend that fails five sessions in a row is set aside for a while.
const PASSIVE: PassiveCheck = PassiveCheck {
    consecutive_failures: 5,
    ejection: Duration::from_secs(10),
    max_ejection: Duration::from_secs(5 * 60),
    max_ejected_percent: 50,
};

/// The check of a pool with no `[pool.health]`: none, so its backends are up
/// unless passive checks eject them.
fn no_health() -> HealthCheck {
    HealthCheck {
        kind: CheckKind::None,
        interval: INTERVAL,
        jitter: INTERVAL / 10,
        timeout: TIMEOUT,
        rise: RISE,
        fall: FALL,
    }
}

/// `[pool.health]` of the pool table `pool`, with its defaults when absent.
///
/// The timings default to each other where a fixed default could break a
/// rule the operator did not ask to break: jitter is a tenth of the interval,
/// and the timeout is 1s or the interval if that is shorter.
pub(super) fn health(r: &mut Report, pool: &Section) -> HealthCheck {
    let Some(h) = r.subsection(pool, "health", HEALTH_KEYS) else {
        return no_health();
    };
    let kind = match h.has("kind") {
        true => r.choice(&h, "kind", CHECK_KINDS),
        false => Some(Kind::None),
    };

    let interval = r.positive_duration(&h, "interval", INTERVAL);
    // A wrong interval was reported; comparing others to a stand-in would
    // only add errors about keys that may be right.
    let interval_known = interval.is_some() || !h.has("interval");
    let interval_value = interval.map_or(INTERVAL, |i| i.value);

    let jitter = match r.any_duration(&h, "jitter") {
        Some(j) if interval_known && j.value >= interval_value => {
            let message = format!(
                "{} is not shorter than {}; jitter spreads each probe within its interval, \
                 so keep it below (the default is a tenth of the interval)",
                shown(r, &h, "jitter", j.value),
                shown(r, &h, "interval", interval_value)
            );
            r.error(j.line, &h.path, message);
            interval_value / 10
        }
        Some(j) => j.value,
        None => interval_value / 10,
    };
    let timeout = match r.positive_duration(&h, "timeout", TIMEOUT) {
        Some(t) if interval_known && t.value > interval_value => {
            let message = format!(
                "{} is longer than {}; a probe must end before the next one is due, \
                 so make the timeout at most the interval",
                shown(r, &h, "timeout", t.value),
                shown(r, &h, "interval", interval_value)
            );
            r.error(t.line, &h.path, message);
            TIMEOUT.min(interval_value)
        }
        Some(t) => t.value,
        None => TIMEOUT.min(interval_value),
    };
    let rise = bounded(r, &h, "rise", 1, MAX_RISE_FALL).unwrap_or(RISE);
    let fall = bounded(r, &h, "fall", 1, MAX_RISE_FALL).unwrap_or(FALL);

    if kind.is_some_and(|k| k != Kind::Http) {
        only_for_http(r, &h);
    }
    let kind = match kind {
        Some(Kind::Http) => CheckKind::Http(http(r, &h)),
        Some(Kind::Tcp) => CheckKind::Tcp,
        Some(Kind::Agent) => CheckKind::Agent,
        // A kind that is not a word was reported, and which keys it meant
        // to allow is a guess: the http keys are left unread.
        Some(Kind::None) | None => CheckKind::None,
    };
    HealthCheck { kind, interval: interval_value, jitter, timeout, rise, fall }
}

/// `health.interval "2000ms"` as the file writes it, or `health.interval
/// "2s" (the default)` when the file does not set it.
fn shown(r: &Report, h: &Section, key: &str, value: Duration) -> String {
    match r.get(h, key).and_then(|found| found.value.as_str()) {
        Some(text) => format!("{} {text:?}", h.key(key)),
        None => {
            let value = humantime::format_duration(value).to_string();
            format!("{} {value:?} (the default)", h.key(key))
        }
    }
}

/// Reports each http-only key in a check of another kind, so a forgotten
/// `kind = "http"` does not silently turn a path check into none.
fn only_for_http(r: &mut Report, h: &Section) {
    for key in HTTP_KEYS {
        r.only_for(h, key, "kind", &["http"], "none");
    }
}

/// Whether `text` is a method as Fulcrum accepts one in config: capital
/// letters only, like `GET` (the registered methods all are).
pub(super) fn is_method(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase())
}

/// The http settings of a `kind = "http"` check.
fn http(r: &mut Report, h: &Section) -> HttpCheck {
    let method = match r.string(h, "method") {
        Some(m) if is_method(m.value) => m.value.to_owned(),
        Some(m) => {
            let message = format!(
                r#"{} {:?} is not an HTTP method; write it in capital letters, like "GET" or "HEAD""#,
                h.key("method"),
                m.value
            );
            r.error(m.line, &h.path, message);
            METHOD.to_owned()
        }
        None => METHOD.to_owned(),
    };
    let path = match r.string(h, "path") {
        Some(p) if !p.value.starts_with('/') => {
            let message = format!(r#"{} {:?} must start with "/", like "/healthz""#, h.key("path"), p.value);
            r.error(p.line, &h.path, message);
            PATH.to_owned()
        }
        Some(p) if p.value.contains(|c: char| c.is_whitespace() || c.is_control()) => {
            let message = format!(
                r#"{} {:?} has a space or control character, which a request line cannot carry; percent-encode it, like "%20""#,
                h.key("path"),
                p.value
            );
            r.error(p.line, &h.path, message);
            PATH.to_owned()
        }
        Some(p) => p.value.to_owned(),
        None => PATH.to_owned(),
    };
    let expect_status = expect_status(r, h).unwrap_or(EXPECT_STATUS);
    let body_contains = match r.string(h, "body_contains") {
        Some(b) if b.value.is_empty() => {
            let message = format!(
                "{} is empty, so every body would pass; leave it out to not check the body",
                h.key("body_contains")
            );
            r.error(b.line, &h.path, message);
            None
        }
        b => b.map(|b| b.value.to_owned()),
    };
    let host = match r.string(h, "host") {
        Some(v) if v.value.is_empty() => {
            let message = format!("{} is empty; leave it out to send the backend's address", h.key("host"));
            r.error(v.line, &h.path, message);
            None
        }
        Some(v) if v.value.contains(|c: char| c.is_whitespace() || c.is_control()) => {
            let message = format!(
                "{} {:?} has a space or control character, which a Host header cannot carry",
                h.key("host"),
                v.value
            );
            r.error(v.line, &h.path, message);
            None
        }
        v => v.map(|v| v.value.to_owned()),
    };
    HttpCheck { method, path, expect_status, body_contains, host }
}

/// `expect_status`: `"200-399"`, `"200"`, or the integer `200`; `None` when
/// absent or wrong (after an error).
fn expect_status(r: &mut Report, h: &Section) -> Option<(u16, u16)> {
    let found = r.get(h, "expect_status")?;
    let (text, written) = match found.value.as_integer() {
        Some(n) => (n.to_string(), n.to_string()),
        None => {
            let s = r.string(h, "expect_status")?;
            (s.value.to_owned(), format!("{:?}", s.value))
        }
    };
    let key = h.key("expect_status");
    let (low, high) = text.split_once('-').unwrap_or((&text, &text));
    let (Ok(low), Ok(high)) = (low.trim().parse::<u16>(), high.trim().parse::<u16>()) else {
        let message = format!(
            r#"{key} {written} is not a status or a range of statuses; write one like "200" or "200-399""#
        );
        r.error(found.line, &h.path, message);
        return None;
    };
    if let Some(bad) = [low, high].into_iter().find(|s| !STATUSES.contains(s)) {
        let message = format!("{key} {written}: {bad} is not an HTTP status (statuses run 100..=599)");
        r.error(found.line, &h.path, message);
        return None;
    }
    if low > high {
        let (first, second) = (high, low);
        let message = format!(
            r#"{key} {written} runs backwards; write the lower status first, like "{first}-{second}""#
        );
        r.error(found.line, &h.path, message);
        return None;
    }
    Some((low, high))
}

/// `[pool.passive]` of the pool table `pool`, with its defaults (on) when
/// absent. `max_ejection` defaults to 5m, or to `ejection` if that is longer.
pub(super) fn passive(r: &mut Report, pool: &Section) -> PassiveCheck {
    let Some(p) = r.subsection(pool, "passive", PASSIVE_KEYS) else {
        return PASSIVE;
    };
    let consecutive_failures = bounded(r, &p, "consecutive_failures", 0, i64::from(u32::MAX))
        .unwrap_or(PASSIVE.consecutive_failures);
    let ejection = r.positive_duration(&p, "ejection", PASSIVE.ejection);
    let ejection_known = ejection.is_some() || !p.has("ejection");
    let ejection_value = ejection.map_or(PASSIVE.ejection, |e| e.value);
    let max_ejection = match r.positive_duration(&p, "max_ejection", PASSIVE.max_ejection) {
        Some(m) if ejection_known && m.value < ejection_value => {
            longest_below_first(r, &p, m, ejection_value);
            ejection_value
        }
        Some(m) => m.value,
        None => PASSIVE.max_ejection.max(ejection_value),
    };
    let max_ejected_percent =
        bounded(r, &p, "max_ejected_percent", 0, 100).unwrap_or(PASSIVE.max_ejected_percent);
    PassiveCheck { consecutive_failures, ejection: ejection_value, max_ejection, max_ejected_percent }
}

fn longest_below_first(r: &mut Report, p: &Section, max: Located<Duration>, ejection: Duration) {
    let message = format!(
        "{} is shorter than {}; ejections grow from the first up to the longest, \
         so make max_ejection at least ejection",
        shown(r, p, "max_ejection", max.value),
        shown(r, p, "ejection", ejection)
    );
    r.error(max.line, &p.path, message);
}
