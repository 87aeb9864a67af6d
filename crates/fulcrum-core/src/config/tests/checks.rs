//! The keys of health and load: `algorithm`, `slow_start`, `[pool.health]`,
//! `[pool.passive]` and a backend's `state`, `max_connections` and `agent`;
//! what each reads to, its default, and each error.

use std::time::Duration;

use super::{assert_error_contains, assert_errors, errors, loaded, VALID};
use crate::config::schema::ALGORITHMS;
use crate::model::{Algorithm, CheckKind, HealthCheck, HttpCheck, PassiveCheck, Pool, TargetState};

/// `VALID` with `text` at the top of its pool table: its first line is line 9.
fn pool_with(text: &str) -> String {
    VALID.replace("[[pool]]\nname = \"web\"\n", &format!("[[pool]]\nname = \"web\"\n{text}"))
}

/// `VALID` with `text` in backend "web2": its first line is line 15.
fn web2_with(text: &str) -> String {
    VALID.replace("  address = \"127.0.0.1:9002\"\n", &format!("  address = \"127.0.0.1:9002\"\n{text}"))
}

fn pool(text: &str) -> Pool {
    loaded(text).model.pools.swap_remove(0)
}

fn health(text: &str) -> HealthCheck {
    pool(&pool_with(text)).health
}

fn http(text: &str) -> HttpCheck {
    match health(text).kind {
        CheckKind::Http(http) => http,
        other => panic!("expected an http check, got {other:?}"),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn every_algorithm_word_is_read() {
    let expected = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::LeastLoad,
        Algorithm::RandomTwoChoices,
        Algorithm::SourceHash,
        Algorithm::Maglev,
    ];
    assert_eq!(ALGORITHMS.len(), expected.len());
    for (word, algorithm) in ALGORITHMS.iter().zip(expected) {
        assert_eq!(pool(&pool_with(&format!("algorithm = \"{word}\"\n"))).algorithm, algorithm);
    }
    assert_errors(
        &pool_with("algorithm = \"leastconn\"\n"),
        &[
            r#"line 9: pool "web": algorithm "leastconn" is not one of "round_robin", "weighted_round_robin", "least_connections", "least_load", "random_two_choices", "source_hash", "maglev""#,
        ],
    );
}

#[test]
fn a_pool_without_check_tables_gets_no_active_check_and_passive_checks_on() {
    let pool = pool(VALID);
    let none = HealthCheck {
        kind: CheckKind::None,
        interval: secs(2),
        jitter: ms(200),
        timeout: secs(1),
        rise: 2,
        fall: 3,
    };
    assert_eq!(pool.health, none);
    let passive = PassiveCheck {
        consecutive_failures: 5,
        ejection: secs(10),
        max_ejection: secs(300),
        max_ejected_percent: 50,
    };
    assert_eq!(pool.passive, passive);
    assert_eq!(pool.slow_start, None);
    // An empty table is the same as none.
    assert_eq!(health("[pool.health]\n"), none);
    assert_eq!(self::pool(&pool_with("[pool.passive]\n")).passive, passive);
}

#[test]
fn slow_start_is_read_and_never_zero() {
    assert_eq!(pool(&pool_with("slow_start = \"30s\"\n")).slow_start, Some(secs(30)));
    assert_errors(
        &pool_with("slow_start = \"0s\"\n"),
        &[r#"line 9: pool "web": slow_start is zero; leave it out for no slow start"#],
    );
    assert_error_contains(
        &pool_with("slow_start = \"soon\"\n"),
        r#"line 9: pool "web": slow_start "soon" is not a duration"#,
    );
    assert_errors(
        &pool_with("slow_start = 30\n"),
        &[
            r#"line 9: pool "web": slow_start must be a duration string (a number and a unit, like "500ms", "2s" or "30m"), found an integer"#,
        ],
    );
}

#[test]
fn every_health_key_is_read() {
    let text = r#"[pool.health]
kind = "http"
interval = "5s"
jitter = "1s"
timeout = "5s"
rise = 100
fall = 1
method = "HEAD"
path = "/healthz?full=1"
expect_status = "204"
body_contains = "ok"
host = "example.com"
"#;
    let health = health(text);
    let http = HttpCheck {
        method: "HEAD".into(),
        path: "/healthz?full=1".into(),
        expect_status: (204, 204),
        body_contains: Some("ok".into()),
        host: Some("example.com".into()),
    };
    let expected = HealthCheck {
        kind: CheckKind::Http(http),
        interval: secs(5),
        jitter: secs(1),
        timeout: secs(5),
        rise: 100,
        fall: 1,
    };
    assert_eq!(health, expected);
}

#[test]
fn an_http_check_gets_its_defaults() {
    let health = health("[pool.health]\nkind = \"http\"\n");
    let http = HttpCheck {
        method: "GET".into(),
        path: "/".into(),
        expect_status: (200, 399),
        body_contains: None,
        host: None,
    };
    let expected = HealthCheck {
        kind: CheckKind::Http(http),
        interval: secs(2),
        jitter: ms(200),
        timeout: secs(1),
        rise: 2,
        fall: 3,
    };
    assert_eq!(health, expected);
}

#[test]
fn each_kind_word_is_read() {
    assert_eq!(health("[pool.health]\nkind = \"none\"\n").kind, CheckKind::None);
    assert_eq!(health("[pool.health]\nkind = \"tcp\"\n").kind, CheckKind::Tcp);
    let agent = web2_with("  agent = \"127.0.0.1:9950\"\n")
        .replace("127.0.0.1:9001\"\n", "127.0.0.1:9001\"\n  agent = \"127.0.0.1:9951\"\n")
        .replace("[[pool]]\nname = \"web\"\n", "[[pool]]\nname = \"web\"\nhealth = { kind = \"agent\" }\n");
    assert_eq!(pool(&agent).health.kind, CheckKind::Agent);
    assert_errors(
        &pool_with("[pool.health]\nkind = \"https\"\n"),
        &[r#"line 10: pool "web": health.kind "https" is not one of "none", "tcp", "http", "agent""#],
    );
}

#[test]
fn jitter_and_timeout_follow_a_short_interval() {
    let short = health("[pool.health]\nkind = \"tcp\"\ninterval = \"500ms\"\n");
    assert_eq!((short.jitter, short.timeout), (ms(50), ms(500)), "the timeout is cut to the interval");
    let long = health("[pool.health]\nkind = \"tcp\"\ninterval = \"30s\"\n");
    assert_eq!((long.jitter, long.timeout), (secs(3), secs(1)));
    // No jitter is a choice, not a mistake: probes go out in step.
    assert_eq!(health("[pool.health]\njitter = \"0s\"\n").jitter, Duration::ZERO);
    // A timeout equal to the interval is allowed.
    assert_eq!(health("[pool.health]\ninterval = \"1s\"\ntimeout = \"1s\"\n").timeout, secs(1));
}

#[test]
fn a_timeout_longer_than_the_interval_is_an_error_naming_both() {
    assert_errors(
        &pool_with("[pool.health]\ninterval = \"1s\"\ntimeout = \"1500ms\"\n"),
        &[
            r#"line 11: pool "web": health.timeout "1500ms" is longer than health.interval "1s"; a probe must end before the next one is due, so make the timeout at most the interval"#,
        ],
    );
    assert_error_contains(
        &pool_with("[pool.health]\ntimeout = \"3s\"\n"),
        r#"line 10: pool "web": health.timeout "3s" is longer than health.interval "2s" (the default);"#,
    );
    // A wrong interval is reported alone, not compared with.
    assert_errors(
        &pool_with("[pool.health]\ninterval = \"0s\"\ntimeout = \"3s\"\n"),
        &[
            r#"line 10: pool "web": health.interval is zero, which is always a mistake; give a positive duration (the default is "2s")"#,
        ],
    );
}

#[test]
fn a_jitter_as_long_as_the_interval_is_an_error() {
    assert_errors(
        &pool_with("[pool.health]\ninterval = \"1s\"\njitter = \"1s\"\n"),
        &[
            r#"line 11: pool "web": health.jitter "1s" is not shorter than health.interval "1s"; jitter spreads each probe within its interval, so keep it below (the default is a tenth of the interval)"#,
        ],
    );
    assert_error_contains(
        &pool_with("[pool.health]\njitter = \"5s\"\n"),
        r#"health.jitter "5s" is not shorter than health.interval "2s" (the default);"#,
    );
}

#[test]
fn rise_and_fall_run_from_1_to_100() {
    assert_errors(
        &pool_with("[pool.health]\nrise = 0\nfall = 101\n"),
        &[
            r#"line 10: pool "web": health.rise 0 is below the minimum of 1"#,
            r#"line 11: pool "web": health.fall 101 is over the maximum of 100"#,
        ],
    );
    assert_errors(
        &pool_with("[pool.health]\nrise = \"2\"\n"),
        &[r#"line 10: pool "web": health.rise must be an integer, found a string"#],
    );
}

#[test]
fn unknown_health_and_passive_keys_get_a_suggestion() {
    assert_errors(
        &pool_with("[pool.health]\nkind = \"http\"\npth = \"/\"\n[pool.passive]\nejections = \"1s\"\n"),
        &[
            r#"line 11: pool "web": unknown key "health.pth", did you mean "health.path"?"#,
            r#"line 13: pool "web": unknown key "passive.ejections", did you mean "passive.ejection"?"#,
        ],
    );
    assert_errors(
        &pool_with("helth = { kind = \"tcp\" }\n"),
        &[r#"line 9: pool "web": unknown key "helth", did you mean "health"?"#],
    );
    assert_errors(
        &pool_with("health = \"http\"\n"),
        &[r#"line 9: pool "web": health must be a table, found a string"#],
    );
}

#[test]
fn a_method_must_be_a_capital_token() {
    for method in ["get", "", "GET /", "M-SEARCH"] {
        let text = pool_with(&format!("[pool.health]\nkind = \"http\"\nmethod = {method:?}\n"));
        assert_errors(
            &text,
            &[&format!(
                r#"line 11: pool "web": health.method {method:?} is not an HTTP method; write it in capital letters, like "GET" or "HEAD""#
            )],
        );
    }
    assert_eq!(http("[pool.health]\nkind = \"http\"\nmethod = \"OPTIONS\"\n").method, "OPTIONS");
}

#[test]
fn a_path_must_start_with_a_slash_and_fit_a_request_line() {
    assert_errors(
        &pool_with("[pool.health]\nkind = \"http\"\npath = \"healthz\"\n"),
        &[r#"line 11: pool "web": health.path "healthz" must start with "/", like "/healthz""#],
    );
    assert_errors(
        &pool_with("[pool.health]\nkind = \"http\"\npath = \"/health check\"\n"),
        &[
            r#"line 11: pool "web": health.path "/health check" has a space or control character, which a request line cannot carry; percent-encode it, like "%20""#,
        ],
    );
}

#[test]
fn expect_status_is_a_status_or_a_range() {
    let status = |value: &str| {
        http(&format!("[pool.health]\nkind = \"http\"\nexpect_status = {value}\n")).expect_status
    };
    assert_eq!(status("\"200-299\""), (200, 299));
    assert_eq!(status("\"200\""), (200, 200));
    assert_eq!(status("\"100-599\""), (100, 599));
    assert_eq!(status("204"), (204, 204), "an integer is a single status");
    let error = |value: &str| {
        errors(&pool_with(&format!("[pool.health]\nkind = \"http\"\nexpect_status = {value}\n")))
    };
    assert_eq!(
        error("\"2xx\""),
        [
            r#"line 11: pool "web": health.expect_status "2xx" is not a status or a range of statuses; write one like "200" or "200-399""#
        ]
    );
    assert_eq!(
        error("\"200-600\""),
        [
            r#"line 11: pool "web": health.expect_status "200-600": 600 is not an HTTP status (statuses run 100..=599)"#
        ]
    );
    assert_eq!(
        error("99"),
        [
            r#"line 11: pool "web": health.expect_status 99: 99 is not an HTTP status (statuses run 100..=599)"#
        ]
    );
    assert_eq!(
        error("\"399-200\""),
        [
            r#"line 11: pool "web": health.expect_status "399-200" runs backwards; write the lower status first, like "200-399""#
        ]
    );
    assert_eq!(
        error("[200]"),
        [r#"line 11: pool "web": health.expect_status must be a string, found an array"#]
    );
}

#[test]
fn body_contains_and_host_must_not_be_empty() {
    let http = http("[pool.health]\nkind = \"http\"\nbody_contains = \"ok\"\nhost = \"api.example.com\"\n");
    assert_eq!((http.body_contains.as_deref(), http.host.as_deref()), (Some("ok"), Some("api.example.com")));
    assert_errors(
        &pool_with("[pool.health]\nkind = \"http\"\nbody_contains = \"\"\nhost = \"\"\n"),
        &[
            r#"line 11: pool "web": health.body_contains is empty, so every body would pass; leave it out to not check the body"#,
            r#"line 12: pool "web": health.host is empty; leave it out to send the backend's address"#,
        ],
    );
    assert_errors(
        &pool_with("[pool.health]\nkind = \"http\"\nhost = \"a b\"\n"),
        &[
            r#"line 11: pool "web": health.host "a b" has a space or control character, which a Host header cannot carry"#,
        ],
    );
}

#[test]
fn http_keys_in_another_kind_of_check_are_errors() {
    assert_errors(
        &pool_with("[pool.health]\nkind = \"tcp\"\npath = \"/healthz\"\nexpect_status = \"200\"\n"),
        &[
            r#"line 11: pool "web": health.path is only for kind "http", but health.kind is "tcp""#,
            r#"line 12: pool "web": health.expect_status is only for kind "http", but health.kind is "tcp""#,
        ],
    );
    // The likely mistake: a path with the kind left out.
    assert_errors(
        &pool_with("[pool.health]\npath = \"/healthz\"\n"),
        &[
            r#"line 10: pool "web": health.path is only for kind "http", but health.kind is not set (so "none"); add kind = "http""#,
        ],
    );
    assert_error_contains(
        &pool_with("[pool.health]\nkind = \"none\"\nmethod = \"GET\"\n"),
        r#"health.method is only for kind "http", but health.kind is "none""#,
    );
    // Only the kind is reported when it is not a kind at all.
    assert_eq!(errors(&pool_with("[pool.health]\nkind = \"htp\"\npath = \"x\"\n")).len(), 1);
}

#[test]
fn every_passive_key_is_read() {
    let text = "[pool.passive]\nconsecutive_failures = 0\nejection = \"30s\"\nmax_ejection = \"30s\"\nmax_ejected_percent = 100\n";
    let expected = PassiveCheck {
        consecutive_failures: 0,
        ejection: secs(30),
        max_ejection: secs(30),
        max_ejected_percent: 100,
    };
    assert_eq!(pool(&pool_with(text)).passive, expected);
    // A first ejection longer than the default longest one raises that default.
    let long = pool(&pool_with("[pool.passive]\nejection = \"10m\"\n")).passive;
    assert_eq!((long.ejection, long.max_ejection), (secs(600), secs(600)));
}

#[test]
fn passive_ranges_and_order_are_checked() {
    assert_errors(
        &pool_with("[pool.passive]\nejection = \"1m\"\nmax_ejection = \"30s\"\n"),
        &[
            r#"line 11: pool "web": passive.max_ejection "30s" is shorter than passive.ejection "1m"; ejections grow from the first up to the longest, so make max_ejection at least ejection"#,
        ],
    );
    assert_error_contains(
        &pool_with("[pool.passive]\nmax_ejection = \"5s\"\n"),
        r#"passive.max_ejection "5s" is shorter than passive.ejection "10s" (the default);"#,
    );
    assert_errors(
        &pool_with(
            "[pool.passive]\nconsecutive_failures = -1\nejection = \"0s\"\nmax_ejected_percent = 101\n",
        ),
        &[
            r#"line 10: pool "web": passive.consecutive_failures -1 is below the minimum of 0"#,
            r#"line 11: pool "web": passive.ejection is zero, which is always a mistake; give a positive duration (the default is "10s")"#,
            r#"line 12: pool "web": passive.max_ejected_percent 101 is over the maximum of 100"#,
        ],
    );
}

#[test]
fn backend_state_max_connections_and_agent_are_read() {
    let text = web2_with("  state = \"drain\"\n  max_connections = 100\n  agent = \"[::1]:9950\"\n");
    let pool = pool(&text);
    let (web1, web2) = (&pool.backends[0], &pool.backends[1]);
    assert_eq!((web1.state, web1.max_connections, web1.agent), (TargetState::Enabled, None, None));
    assert_eq!(web2.state, TargetState::Drain);
    assert_eq!(web2.max_connections, Some(100));
    assert_eq!(web2.agent, Some("[::1]:9950".parse().expect("literal")));
    for (word, state) in [("enabled", TargetState::Enabled), ("disabled", TargetState::Disabled)] {
        let backend = &self::pool(&web2_with(&format!("  state = \"{word}\"\n"))).backends[1];
        assert_eq!(backend.state, state);
    }
}

#[test]
fn backend_state_max_connections_and_agent_errors() {
    assert_errors(
        &web2_with("  state = \"draining\"\n  max_connections = 0\n  agent = \"127.0.0.1\"\n"),
        &[
            r#"line 15: pool "web" backend "web2": state "draining" is not one of "enabled", "drain", "disabled""#,
            r#"line 16: pool "web" backend "web2": max_connections 0 is below 1; leave it out for no limit"#,
            r#"line 17: pool "web" backend "web2": agent "127.0.0.1" has no port; write IP:port, like "127.0.0.1:80""#,
        ],
    );
    assert_errors(
        &web2_with("  agent = \"127.0.0.1:0\"\n"),
        &[
            r#"line 15: pool "web" backend "web2": agent "127.0.0.1:0" has port 0; give the port the agent listens on"#,
        ],
    );
    assert_error_contains(&web2_with("  agent = \"host1:9950\"\n"), r#"agent "host1:9950" names a host"#);
    assert_error_contains(
        &web2_with("  max_connections = 4294967296\n"),
        "max_connections 4294967296 is over the maximum of 4294967295",
    );
    assert_errors(
        &web2_with("  agnet = \"127.0.0.1:9950\"\n"),
        &[r#"line 15: pool "web" backend "web2": unknown key "agnet", did you mean "agent"?"#],
    );
}

#[test]
fn an_agent_check_needs_an_agent_on_every_backend() {
    let text = web2_with("  agent = \"127.0.0.1:9950\"\n")
        .replace("[[pool]]\nname = \"web\"\n", "[[pool]]\nname = \"web\"\n[pool.health]\nkind = \"agent\"\n");
    assert_errors(
        &text,
        &[
            r#"line 11: pool "web" backend "web1": health kind "agent" needs an agent address; add agent = "IP:port" of the fulcrum agent on this backend's host"#,
        ],
    );
    // A backend whose agent is wrong is reported for that alone.
    let text = text
        .replace("127.0.0.1:9950", "127.0.0.1")
        .replace("127.0.0.1:9001\"\n", "127.0.0.1:9001\"\n  agent = \"127.0.0.1:9951\"\n");
    assert_errors(
        &text,
        &[
            r#"line 18: pool "web" backend "web2": agent "127.0.0.1" has no port; write IP:port, like "127.0.0.1:80""#,
        ],
    );
    // Inline tables name the backend by position when it has no name.
    let inline = r#"
service = [{ name = "web", listen = ["127.0.0.1:8080"], mode = "http", pool = "web" }]
pool = [{ name = "web", health = { kind = "agent" }, backend = [{ address = "127.0.0.1:1" }] }]
"#;
    assert_errors(
        inline,
        &[
            r#"line 3: pool "web" backend 1: missing required key "name""#,
            r#"line 3: pool "web" backend 1: health kind "agent" needs an agent address; add agent = "IP:port" of the fulcrum agent on this backend's host"#,
        ],
    );
}

#[test]
fn an_agent_address_is_fine_beside_another_check() {
    let text = web2_with("  agent = \"127.0.0.1:9950\"\n")
        .replace("[[pool]]\nname = \"web\"\n", "[[pool]]\nname = \"web\"\nhealth.kind = \"tcp\"\n");
    let pool = pool(&text);
    assert_eq!(pool.health.kind, CheckKind::Tcp);
    assert_eq!(pool.backends[0].agent, None);
    assert_eq!(pool.backends[1].agent, Some("127.0.0.1:9950".parse().expect("literal")));
}
