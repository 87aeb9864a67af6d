//! Unit tests of `load`: the model a valid file gives (`mod.rs`), each error
//! (`errors.rs`), the health and load keys (`checks.rs`), routes
//! (`routes.rs`), persistence (`persistence.rs`), policy and client
//! addresses (`policy.rs`), SNAT pools and the admin and runtime keys
//! (`snat.rs`), and that no text makes `load` panic (`props.rs`).

mod checks;
mod errors;
mod persistence;
mod policy;
mod props;
mod routes;
mod snat;

use std::time::Duration;

use super::*;
use crate::model::{
    Algorithm, BackendId, CheckKind, Mode, OnLimit, Persistence, Policy, PoolId, ProxyVersion, TargetState,
};

/// The smallest useful file; tests edit it with `str::replace`. Line
/// numbers in expected messages count from its first line.
pub(super) const VALID: &str = r#"[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"
pool = "web"

[[pool]]
name = "web"
  [[pool.backend]]
  name = "web1"
  address = "127.0.0.1:9001"
  [[pool.backend]]
  name = "web2"
  address = "127.0.0.1:9002"
"#;

pub(super) fn loaded(text: &str) -> Loaded {
    match load(text) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected a valid file, got {:#?}", messages(&errors)),
    }
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(loaded) => panic!("expected errors, got a valid model: {}", loaded.model.summary()),
        Err(errors) => messages(&errors),
    }
}

fn messages(errors: &[ConfigError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// Asserts that `text` fails with exactly the `expected` messages, in order.
#[track_caller]
pub(super) fn assert_errors(text: &str, expected: &[&str]) {
    assert_eq!(errors(text), expected, "for the file:\n{text}");
}

/// Asserts that one of the errors of `text` contains `part`.
#[track_caller]
pub(super) fn assert_error_contains(text: &str, part: &str) {
    let errors = errors(text);
    assert!(errors.iter().any(|e| e.contains(part)), "no error contains {part:?}: {errors:#?}");
}

#[test]
fn the_minimal_file_gets_every_default() {
    let model = loaded(VALID).model;
    assert_eq!(model.admin, None);
    assert_eq!(model.runtime.shutdown_grace, Duration::from_secs(10));
    let service = &model.services[0];
    assert_eq!(service.name, "web");
    assert_eq!(service.listen, vec!["127.0.0.1:8080".parse().expect("literal")]);
    assert_eq!(service.mode, Mode::Http);
    assert_eq!(service.pool, Some(PoolId(0)));
    assert_eq!(service.routes, []);
    assert_eq!(service.persistence, Persistence::None);
    assert_eq!(service.policy, Policy::default());
    assert!(!service.accept_proxy_protocol);
    assert_eq!(service.trusted_proxies, []);
    assert_eq!(service.retries, 2);
    let t = &service.timeouts;
    assert_eq!(t.connect, Duration::from_secs(3));
    assert_eq!(t.client_idle, Duration::from_secs(60));
    assert_eq!(t.backend_idle, Duration::from_secs(60));
    assert_eq!(t.request_headers, Duration::from_secs(10));
    assert_eq!(t.backend_response, Duration::from_secs(30));
    assert_eq!(service.limits.max_connections, None);
    assert_eq!(service.limits.on_limit, OnLimit::Queue);
    assert_eq!(service.limits.queue_timeout, Duration::from_secs(5));
    let pool = &model.pools[0];
    assert_eq!(pool.algorithm, Algorithm::RoundRobin);
    assert_eq!(pool.max_idle_per_backend, 64);
    let ids: Vec<BackendId> = pool.backends.iter().map(|b| b.id).collect();
    assert_eq!(ids, [BackendId(0), BackendId(1)]);
    assert!(pool.backends.iter().all(|b| b.weight == 1));
    assert!(pool.backends.iter().all(|b| b.state == TargetState::Enabled));
    assert!(pool.backends.iter().all(|b| b.max_connections.is_none() && b.agent.is_none()));
    assert_eq!(pool.slow_start, None);
    assert_eq!(pool.proxy_protocol, None);
    assert_eq!(pool.health.kind, CheckKind::None);
    assert_eq!(pool.passive.consecutive_failures, 5, "passive checks are on by default");
}

#[test]
fn every_key_is_read() {
    let text = r#"
        [admin]
        listen = "127.0.0.1:9900"
        [runtime]
        shutdown_grace = "2s"

        [[service]]
        name = "db"
        listen = ["0.0.0.0:5432", "[::1]:5433"]
        mode = "tcp"
        pool = "db"
        retries = 0
        timeouts = { connect = "500ms", client_idle = "30m", backend_idle = "1m", request_headers = "1s", backend_response = "2m" }
          [service.limits]
          max_connections = 100
          on_limit = "refuse"
          queue_timeout = "1s"

        [[pool]]
        name = "unused"
        backend = [{ name = "u", address = "10.0.0.9:1" }]

        [[pool]]
        name = "db"
        algorithm = "weighted_round_robin"
        max_idle_per_backend = 0
          [[pool.backend]]
          name = "db1"
          address = "[2001:db8::1]:5432"
          weight = 256
    "#;
    let loaded = loaded(text);
    let model = loaded.model;
    assert_eq!(model.admin.map(|a| a.listen), Some("127.0.0.1:9900".parse().expect("literal")));
    assert_eq!(model.runtime.shutdown_grace, Duration::from_secs(2));
    let service = &model.services[0];
    assert_eq!(service.listen.len(), 2);
    assert_eq!(service.mode, Mode::Tcp);
    assert_eq!(service.pool, Some(PoolId(1)), "pools are numbered in file order");
    assert_eq!(service.retries, 0);
    assert_eq!(service.timeouts.connect, Duration::from_millis(500));
    assert_eq!(service.timeouts.client_idle, Duration::from_secs(30 * 60));
    assert_eq!(service.timeouts.backend_idle, Duration::from_secs(60));
    assert_eq!(service.timeouts.request_headers, Duration::from_secs(1));
    assert_eq!(service.timeouts.backend_response, Duration::from_secs(120));
    assert_eq!(service.limits.max_connections, Some(100));
    assert_eq!(service.limits.on_limit, OnLimit::Refuse);
    assert_eq!(service.limits.queue_timeout, Duration::from_secs(1));
    let pool = &model.pools[1];
    assert_eq!(pool.algorithm, Algorithm::WeightedRoundRobin);
    assert_eq!(pool.max_idle_per_backend, 0);
    assert_eq!(pool.backends[0].address, "[2001:db8::1]:5432".parse().expect("literal"));
    assert_eq!(pool.backends[0].weight, 256);
    assert_eq!(loaded.warnings, [r#"line 19: pool "unused" is not used by any service"#]);
}

#[test]
fn summary_counts_with_singular_and_plural() {
    assert_eq!(loaded(VALID).model.summary(), "1 service, 1 pool, 2 backends");
    let two = format!(
        "{VALID}{}",
        r#"
[[service]]
name = "api"
listen = ["127.0.0.1:8081"]
mode = "tcp"
pool = "api"
[[pool]]
name = "api"
backend = [{ name = "api1", address = "127.0.0.1:9101" }]
"#
    );
    assert_eq!(loaded(&two).model.summary(), "2 services, 2 pools, 3 backends");
    let one = VALID.replace("  [[pool.backend]]\n  name = \"web2\"\n  address = \"127.0.0.1:9002\"\n", "");
    assert_eq!(loaded(&one).model.summary(), "1 service, 1 pool, 1 backend");
}

#[test]
fn the_choice_words_match_the_model_spelling() {
    for word in schema::MODES {
        assert!(
            serde::Deserialize::deserialize(StrDeserializer::new(word)).map(|_: Mode| ()).is_ok(),
            "{word}"
        );
    }
    for word in schema::ALGORITHMS {
        let parsed: Result<Algorithm, _> = serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
    for word in schema::ON_LIMITS {
        let parsed: Result<OnLimit, _> = serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
    for word in schema::TARGET_STATES {
        let parsed: Result<TargetState, _> = serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
    for word in schema::PROXY_VERSIONS {
        let parsed: Result<ProxyVersion, _> = serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
    for word in super::persistence::PERSISTENCE_KINDS {
        let parsed: Result<super::persistence::Kind, _> =
            serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
    for word in super::policy::AUTH_KINDS {
        let parsed: Result<super::policy::AuthKind, _> =
            serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
    for word in super::checks::CHECK_KINDS {
        let parsed: Result<super::checks::Kind, _> =
            serde::Deserialize::deserialize(StrDeserializer::new(word));
        assert!(parsed.is_ok(), "{word}");
    }
}

type StrDeserializer<'a> = serde::de::value::StrDeserializer<'a, serde::de::value::Error>;

#[test]
fn an_unused_pool_is_a_warning_not_an_error() {
    let spare =
        "\n[[pool]]\nname = \"spare\"\n  [[pool.backend]]\n  name = \"s1\"\n  address = \"127.0.0.1:9100\"\n";
    let loaded = loaded(&format!("{VALID}{spare}"));
    assert_eq!(loaded.warnings, [r#"line 16: pool "spare" is not used by any service"#]);
    assert_eq!(loaded.model.pools.len(), 2);
}

#[test]
fn every_error_comes_out_at_once_in_file_order() {
    let text = r#"[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "htp"
pool = "nope"
retries = 2
tiemouts.connect = "1s"

[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "tcp"
pool = "web"

[[pool]]
name = "web"
  [[pool.backend]]
  name = "web1"
  address = "10.0.0.1"
  weight = 0
"#;
    assert_errors(
        text,
        &[
            r#"line 4: service "web": mode "htp" is not one of "http", "tcp""#,
            r#"line 5: service "web": pool "nope" is not defined (pools defined: "web")"#,
            r#"line 7: service "web": unknown key "tiemouts", did you mean "timeouts"?"#,
            r#"line 10: service "web": name "web" is already used by the service at line 2"#,
            r#"line 11: service "web": listen 127.0.0.1:8080 is already used by service "web" at line 3"#,
            r#"line 19: pool "web" backend "web1": address "10.0.0.1" has no port; write IP:port, like "10.0.0.1:80""#,
            r#"line 20: pool "web" backend "web1": weight 0 is not allowed (weights run 1..=256); to send a backend no new sessions, set state = "drain" instead"#,
        ],
    );
}

#[test]
fn an_error_keeps_its_parts_apart() {
    let errors = match load(&VALID.replace("pool = \"web\"", "pool = \"nope\"")) {
        Ok(_) => panic!("expected an error"),
        Err(errors) => errors,
    };
    assert_eq!(errors[0].line, Some(5));
    assert_eq!(errors[0].path, r#"service "web""#);
    assert_eq!(errors[0].message, r#"service "web": pool "nope" is not defined (pools defined: "web")"#);
    let whole = ConfigError { line: None, path: String::new(), message: "no service".into() };
    assert_eq!(whole.to_string(), "no service");
}
