//! `[service.persistence]`: each kind, its keys and defaults, the keys of
//! other kinds and modes, and each error.

use std::time::Duration;

use super::{assert_error_contains, assert_errors, errors, loaded, VALID};
use crate::model::{CookiePersistence, Persistence};

/// `VALID` with `text` after the service's `pool` key: its first line is line 6.
fn with(text: &str) -> String {
    VALID.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{text}"))
}

fn persistence(text: &str) -> Persistence {
    loaded(&with(text)).model.services.swap_remove(0).persistence
}

fn cookie(text: &str) -> CookiePersistence {
    match persistence(text) {
        Persistence::Cookie(cookie) => cookie,
        other => panic!("expected cookie persistence, got {other:?}"),
    }
}

const DEFAULT_COOKIE: CookiePersistence = CookiePersistence {
    name: String::new(),
    learn: false,
    path: String::new(),
    ttl: Duration::from_secs(30 * 60),
    http_only: true,
    same_site: None,
    max_entries: 100_000,
};

#[test]
fn no_table_an_empty_one_or_kind_none_is_no_persistence() {
    assert_eq!(persistence(""), Persistence::None);
    assert_eq!(persistence("[service.persistence]\n"), Persistence::None);
    assert_eq!(persistence("persistence = { kind = \"none\" }\n"), Persistence::None);
}

#[test]
fn an_insert_cookie_gets_its_defaults() {
    let expected = CookiePersistence { name: "FULCRUM".into(), path: "/".into(), ..DEFAULT_COOKIE };
    assert_eq!(cookie("[service.persistence]\nkind = \"cookie\"\n"), expected);
}

#[test]
fn every_insert_cookie_key_is_read() {
    let text = "[service.persistence]\nkind = \"cookie\"\ncookie = \"SRV\"\npath = \"/app\"\nttl = \"1h\"\nhttp_only = false\nsame_site = \"Strict\"\n";
    let expected = CookiePersistence {
        name: "SRV".into(),
        path: "/app".into(),
        ttl: Duration::from_secs(3600),
        http_only: false,
        same_site: Some("Strict".into()),
        ..DEFAULT_COOKIE
    };
    assert_eq!(cookie(text), expected);
    assert_eq!(
        cookie("persistence = { kind = \"cookie\", same_site = \"Lax\" }\n").same_site.as_deref(),
        Some("Lax")
    );
}

#[test]
fn a_learned_cookie_names_the_application_cookie() {
    let text = "persistence = { kind = \"cookie\", cookie = \"JSESSIONID\", learn = true, ttl = \"2h\", max_entries = 5000 }\n";
    let expected = CookiePersistence {
        name: "JSESSIONID".into(),
        learn: true,
        path: "/".into(),
        ttl: Duration::from_secs(2 * 3600),
        max_entries: 5000,
        ..DEFAULT_COOKIE
    };
    assert_eq!(cookie(text), expected);
}

#[test]
fn each_cookie_mode_rejects_the_keys_of_the_other() {
    assert_errors(
        &with("[service.persistence]\nkind = \"cookie\"\nlearn = true\npath = \"/\"\nsame_site = \"Lax\"\n"),
        &[
            r#"line 8: service "web": persistence.learn is true, but persistence.cookie is not set; name the application's cookie to learn, like cookie = "JSESSIONID""#,
            r#"line 9: service "web": persistence.path is only for insert mode (it is an attribute of the cookie Fulcrum sets), but persistence.learn is true: the application sets its own cookie"#,
            r#"line 10: service "web": persistence.same_site is only for insert mode (it is an attribute of the cookie Fulcrum sets), but persistence.learn is true: the application sets its own cookie"#,
        ],
    );
    assert_errors(
        &with("[service.persistence]\nkind = \"cookie\"\nmax_entries = 10\n"),
        &[
            r#"line 8: service "web": persistence.max_entries sizes the cookie map table of learn mode, but persistence.learn is not true; insert mode keeps no table"#,
        ],
    );
    // A learn that is not a boolean is reported alone: which mode it meant is a guess.
    assert_errors(
        &with("[service.persistence]\nkind = \"cookie\"\nlearn = \"yes\"\nmax_entries = 10\n"),
        &[r#"line 8: service "web": persistence.learn must be a boolean (true or false), found a string"#],
    );
}

#[test]
fn cookie_values_are_checked() {
    let with_key = |line: &str| with(&format!("[service.persistence]\nkind = \"cookie\"\n{line}\n"));
    let cases = [
        (
            "cookie = \"my cookie\"",
            r#"persistence.cookie "my cookie" is not a cookie name; use letters, digits, "-" and "_", like "FULCRUM""#,
        ),
        (
            "cookie = \"\"",
            r#"persistence.cookie "" is not a cookie name; use letters, digits, "-" and "_", like "FULCRUM""#,
        ),
        ("path = \"app\"", r#"persistence.path "app" must start with "/", like "/""#),
        (
            "path = \"/a;b\"",
            r#"persistence.path "/a;b" has a ";", a space or a control character, which a cookie's Path cannot carry"#,
        ),
        ("same_site = \"lax\"", r#"persistence.same_site "lax" is not one of "Strict", "Lax", "None""#),
        (
            "ttl = \"0s\"",
            r#"persistence.ttl is zero, which is always a mistake; give a positive duration (the default is "30m")"#,
        ),
        ("http_only = \"yes\"", "persistence.http_only must be a boolean (true or false), found a string"),
        ("cokie = \"X\"", r#"unknown key "persistence.cokie", did you mean "persistence.cookie"?"#),
    ];
    for (line, message) in cases {
        assert_errors(&with_key(line), &[&format!(r#"line 8: service "web": {message}"#)]);
    }
}

#[test]
fn same_site_none_is_a_warning() {
    let loaded = loaded(&with("[service.persistence]\nkind = \"cookie\"\nsame_site = \"None\"\n"));
    assert_eq!(
        loaded.warnings,
        [
            r#"line 8: service "web": persistence.same_site "None" makes browsers drop the cookie, since Fulcrum does not mark it Secure (it does not terminate TLS); use "Lax" or "Strict""#
        ]
    );
}

#[test]
fn source_ip_gets_its_defaults_and_reads_its_keys() {
    assert_eq!(
        persistence("[service.persistence]\nkind = \"source_ip\"\n"),
        Persistence::SourceIp {
            mask_v4: 32,
            mask_v6: 128,
            ttl: Duration::from_secs(1800),
            max_entries: 100_000
        }
    );
    let text = "[service.persistence]\nkind = \"source_ip\"\nmask = 24\nmask_v6 = 64\nttl = \"10m\"\nmax_entries = 1\n";
    assert_eq!(
        persistence(text),
        Persistence::SourceIp { mask_v4: 24, mask_v6: 64, ttl: Duration::from_secs(600), max_entries: 1 }
    );
    assert_errors(
        &with("[service.persistence]\nkind = \"source_ip\"\nmask = 33\nmask_v6 = -1\nmax_entries = 0\n"),
        &[
            r#"line 8: service "web": persistence.mask 33 is over the maximum of 32"#,
            r#"line 9: service "web": persistence.mask_v6 -1 is below the minimum of 0"#,
            r#"line 10: service "web": persistence.max_entries 0 is below the minimum of 1"#,
        ],
    );
}

#[test]
fn header_persistence_needs_a_header_name() {
    assert_eq!(
        persistence("persistence = { kind = \"header\", header = \"X-User\" }\n"),
        Persistence::Header { name: "x-user".into() }
    );
    assert_errors(
        &with("persistence = { kind = \"header\" }\n"),
        &[r#"line 6: service "web": missing required key "persistence.header""#],
    );
    assert_errors(
        &with("[service.persistence]\nkind = \"header\"\nheader = \"X User\"\n"),
        &[
            r#"line 8: service "web": persistence.header "X User" is not a header name; use letters, digits and "-", like "X-User""#,
        ],
    );
}

#[test]
fn keys_of_another_kind_are_errors() {
    assert_errors(
        &with("[service.persistence]\nkind = \"source_ip\"\ncookie = \"X\"\nheader = \"X-User\"\nttl = \"1m\"\n"),
        &[
            r#"line 8: service "web": persistence.cookie is only for kind "cookie", but persistence.kind is "source_ip""#,
            r#"line 9: service "web": persistence.header is only for kind "header", but persistence.kind is "source_ip""#,
        ],
    );
    assert_errors(
        &with("[service.persistence]\nkind = \"header\"\nheader = \"X-User\"\nttl = \"1m\"\n"),
        &[
            r#"line 9: service "web": persistence.ttl is only for kind "cookie" or "source_ip", but persistence.kind is "header""#,
        ],
    );
    // The likely mistake: a cookie with the kind left out.
    assert_errors(
        &with("[service.persistence]\ncookie = \"SRV\"\n"),
        &[
            r#"line 7: service "web": persistence.cookie is only for kind "cookie", but persistence.kind is not set (so "none"); add kind = "cookie""#,
        ],
    );
    // Only the kind is reported when it is not a kind at all.
    assert_errors(
        &with("[service.persistence]\nkind = \"sticky\"\ncookie = \"X\"\n"),
        &[
            r#"line 7: service "web": persistence.kind "sticky" is not one of "none", "cookie", "source_ip", "header""#,
        ],
    );
}

#[test]
fn a_tcp_service_keeps_clients_by_source_ip_only() {
    let tcp = |text: &str| with(text).replace("mode = \"http\"", "mode = \"tcp\"");
    assert_errors(
        &tcp("persistence = { kind = \"cookie\" }\n"),
        &[
            r#"line 6: service "web": persistence.kind "cookie" is only for mode "http" (it reads HTTP headers), but the service's mode is "tcp"; a tcp service keeps clients by kind = "source_ip""#,
        ],
    );
    assert_error_contains(
        &tcp("persistence = { kind = \"header\", header = \"X-User\" }\n"),
        r#"persistence.kind "header" is only for mode "http""#,
    );
    let loaded = loaded(&tcp("persistence = { kind = \"source_ip\", mask = 16 }\n"));
    assert!(matches!(loaded.model.services[0].persistence, Persistence::SourceIp { mask_v4: 16, .. }));
    assert_eq!(
        errors(&tcp("persistence = \"cookie\"\n")),
        [r#"line 6: service "web": persistence must be a table, found a string"#]
    );
}
