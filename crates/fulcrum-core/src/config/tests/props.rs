//! `load` never panics, whatever the text, and its lines point inside the file.

use proptest::prelude::*;

use super::super::load;
use super::VALID;

/// Values and lines that push a mutated file toward the schema's corners,
/// so most mutations get past the TOML parser and reach the checks.
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "0", "-1", "11", "257", "1.5", "true", "[]", "{}", "\"\"", "\"x\"", "\"0s\"", "\"3 parsecs\"",
    "\"web\"", "\"tcp\"", "\"queue\"", "\"0.0.0.0:8080\"", "\"127.0.0.1:0\"", "\"::1\"",
    "[\"127.0.0.1:8080\"]", "[\"[::]:9001\", 5]", "\"http\"", "\"agent\"", "\"200-399\"", "\"9s\"",
    "\"(\"", "\"*.example.com\"", "\"/api/\"", "\"cookie\"", "\"source_ip\"", "\"basic\"", "301",
    "[\"10.0.0.0/33\", \"::1\"]", "{ name = \"X\", regex = \"[\" }", "{ status = 200 }", "\"v3\"",
    "\"10.0.0.1\"", "\"255.0.0.0\"", "\"0.255.0.0\"", "\"1-3\"", "\"9-2\"", "\"0-70000\"", "65535",
];
#[rustfmt::skip]
const LINES: &[&str] = &[
    "", "[[pool]]", "[[service]]", "[[pool.backend]]", "[admin]", "[runtime]", "[service.limits]",
    "name = \"web\"", "name = \"spare\"", "weight = 0", "listen = []", "mode = \"udp\"",
    "address = \"10.0.0.1\"", "pool = \"nope\"", "retries = 11", "timeouts.connect = \"0s\"",
    "limits = { max_connections = 0 }", "listn = 1", "backend = []", "é = \"\u{0}\"",
    "[pool.health]", "[pool.passive]", "kind = \"agent\"", "kind = \"http\"", "timeout = \"9s\"",
    "expect_status = \"399-200\"", "path = \"x\"", "agent = \"127.0.0.1:0\"", "state = \"drain\"",
    "max_ejection = \"1s\"", "slow_start = \"0s\"",
    "[[service.route]]", "[service.persistence]", "[service.policy]", "[service.route.policy]",
    "[[service.route.header]]", "sni = \"a.example.com\"", "path_regex = \"(\"", "status = 204",
    "body = \"x\"", "learn = true", "auth = \"bearer\"", "accept_proxy_protocol = true",
    "trusted_proxies = []", "kind = \"header\"", "redirect = { location = \"\" }", "pool = \"web\"",
    "[[snat_pool]]", "first_ip = \"10.0.0.9\"", "last_ip = \"10.0.0.1\"", "netmask = \"255.255.255.0\"",
    "ports = \"1-65535\"", "block_size = 3", "max_blocks = 9", "initial_blocks = 0", "snat = \"web\"",
    "wait = \"1s\"", "token_file = \"t\"", "access_log = true",
];

/// Applies `(position, operation, pick)` edits to `text`, by characters:
/// delete a few characters, duplicate a line, replace a line, replace the
/// value on a line, or insert a value.
fn mutate(text: &str, edits: &[(prop::sample::Index, u8, prop::sample::Index)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, op, pick) in edits {
        let at = at.index(chars.len() + 1);
        let line_start = chars[..at].iter().rposition(|c| *c == '\n').map_or(0, |p| p + 1);
        let line_end = chars[at..].iter().position(|c| *c == '\n').map_or(chars.len(), |p| at + p);
        match op % 5 {
            0 => {
                let end = (at + 1 + pick.index(8)).min(chars.len());
                chars.drain(at..end);
            }
            1 => {
                let line: Vec<char> = chars[line_start..line_end].iter().copied().chain(['\n']).collect();
                chars.splice(line_start..line_start, line);
            }
            2 => {
                chars.splice(line_start..line_end, pick.get(LINES).chars());
            }
            3 => {
                let value_start = chars[line_start..line_end].iter().position(|c| *c == '=');
                let start = value_start.map_or(line_end, |p| line_start + p + 1);
                let value = format!(" {}", pick.get(VALUES));
                chars.splice(start..line_end, value.chars());
            }
            _ => {
                chars.splice(at..at, pick.get(VALUES).chars());
            }
        }
    }
    chars.into_iter().collect()
}

/// Every error of a text points at a line inside it (or at none).
fn assert_lines_inside(text: &str) {
    let lines = text.lines().count() + 1;
    if let Err(errors) = load(text) {
        assert!(!errors.is_empty());
        for error in errors {
            assert!(error.line.is_none_or(|l| (1..=lines).contains(&l)), "{error} in a {lines}-line file");
        }
    }
}

proptest! {
    #[test]
    fn load_never_panics_on_any_text(text in any::<String>()) {
        assert_lines_inside(&text);
    }

    #[test]
    fn load_never_panics_on_toml_like_text(text in "[\\[\\]a-z_.=\" 0-9:\n{},#-]{0,200}") {
        assert_lines_inside(&text);
    }

    #[test]
    fn load_never_panics_on_a_mutated_valid_file(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<prop::sample::Index>()), 1..8)
    ) {
        let full = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart.toml"));
        let routing = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/routing.toml"));
        let sni = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sni.toml"));
        let snat = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/snat.toml"));
        assert_lines_inside(&mutate(VALID, &edits));
        assert_lines_inside(&mutate(full, &edits));
        assert_lines_inside(&mutate(routing, &edits));
        assert_lines_inside(&mutate(sni, &edits));
        assert_lines_inside(&mutate(snat, &edits));
    }
}
