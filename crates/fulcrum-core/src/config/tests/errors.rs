//! One test (or a few) per error `load` reports, each on a small edit of `VALID`.

use super::{assert_error_contains, assert_errors, errors, loaded, VALID};

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let text = VALID
        .replace("listen =", "listn =")
        .replace("  name = \"web2\"", "  name = \"web2\"\n  colour = \"blue\"");
    assert_errors(
        &format!("servce = 1\n{text}"),
        &[
            r#"line 1: unknown key "servce", did you mean "service"?"#,
            r#"line 2: service "web": missing required key "listen""#,
            r#"line 4: service "web": unknown key "listn", did you mean "listen"?"#,
            r#"line 15: pool "web" backend "web2": unknown key "colour""#,
        ],
    );
}

#[test]
fn unknown_keys_in_nested_tables_are_named_by_their_dotted_key() {
    let text = VALID.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\ntimeouts.conect = \"1s\"\nlimits = { on_limt = \"queue\" }\n",
    );
    assert_errors(
        &text,
        &[
            r#"line 6: service "web": unknown key "timeouts.conect", did you mean "timeouts.connect"?"#,
            r#"line 7: service "web": unknown key "limits.on_limt", did you mean "limits.on_limit"?"#,
        ],
    );
    let text = "[admin]\nlisten = \"127.0.0.1:9900\"\nport = 1\n[runtime]\ngrace = \"1s\"\n";
    let errors = errors(&format!("{text}{VALID}"));
    assert_eq!(errors[0], r#"line 3: admin: unknown key "port""#);
    assert_eq!(errors[1], r#"line 5: runtime: unknown key "grace""#);
}

#[test]
fn missing_required_keys_are_each_reported_at_the_table() {
    let text = "[[service]]\nretries = 1\n\n[[pool]]\nname = \"web\"\n  [[pool.backend]]\n  weight = 2\n";
    assert_errors(
        text,
        &[
            r#"line 1: service 1: missing required key "name""#,
            r#"line 1: service 1: missing required key "listen""#,
            r#"line 1: service 1: missing required key "mode""#,
            r#"line 6: pool "web" backend 1: missing required key "name""#,
            r#"line 6: pool "web" backend 1: missing required key "address""#,
        ],
    );
    // Whether a service needs a pool depends on its mode (see `routes.rs`):
    // a tcp service without sni routes does.
    assert_errors(
        &text.replace("retries = 1", "mode = \"tcp\""),
        &[
            r#"line 1: service 1: missing required key "name""#,
            r#"line 1: service 1: missing required key "listen""#,
            r#"line 1: service 1: missing required key "pool": a tcp service sends every connection to its pool, unless it routes by TLS server name ([[service.route]] tables with sni = "…")"#,
            r#"line 6: pool "web" backend 1: missing required key "name""#,
            r#"line 6: pool "web" backend 1: missing required key "address""#,
        ],
    );
    let text = VALID.replace("[[pool]]\nname = \"web\"\n", "[[pool]]\n");
    assert_error_contains(&text, r#"line 7: pool 1: missing required key "name""#);
}

#[test]
fn an_empty_name_is_an_error() {
    assert_error_contains(
        &VALID.replace("name = \"web\"\nlisten", "name = \"\"\nlisten"),
        r#"line 2: service 1: name is empty"#,
    );
}

#[test]
fn duplicate_names_are_errors() {
    let second_service =
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8081\"]\nmode = \"tcp\"\npool = \"web\"\n";
    assert_errors(
        &format!("{VALID}{second_service}"),
        &[r#"line 16: service "web": name "web" is already used by the service at line 2"#],
    );
    let second_pool = "[[pool]]\nname = \"web\"\nbackend = [{ name = \"x\", address = \"10.0.0.1:80\" }]\n";
    assert_errors(
        &format!("{VALID}{second_pool}"),
        &[r#"line 16: pool "web": name "web" is already used by the pool at line 8"#],
    );
    assert_errors(
        &VALID.replace("name = \"web2\"", "name = \"web1\""),
        &[r#"line 13: pool "web" backend "web1": name "web1" is already used by the backend at line 10"#],
    );
    // The same backend name in two pools is fine: names are unique per pool.
    let other_pool =
        "[[pool]]\nname = \"other\"\nbackend = [{ name = \"web1\", address = \"10.0.0.1:80\" }]\n";
    let text = format!("{}{other_pool}", VALID.replace("mode = \"http\"", "mode = \"http\"\n"));
    assert_eq!(loaded(&text).warnings, [r#"line 16: pool "other" is not used by any service"#]);
}

#[test]
fn a_service_naming_a_missing_pool_is_an_error() {
    assert_errors(
        &VALID.replace("pool = \"web\"", "pool = \"nope\""),
        &[r#"line 5: service "web": pool "nope" is not defined (pools defined: "web")"#],
    );
    let no_pools = &VALID[..VALID.find("[[pool]]").unwrap_or(VALID.len())];
    assert_errors(
        no_pools,
        &[r#"line 5: service "web": pool "web" is not defined (no [[pool]] is defined)"#],
    );
}

#[test]
fn an_address_without_a_port_is_an_error() {
    let text = VALID.replace("  name = \"web2\"\n", "").replace("127.0.0.1:9002", "10.0.0.1");
    assert_errors(
        &text,
        &[
            r#"line 12: pool "web" backend 2: missing required key "name""#,
            r#"line 13: pool "web" backend 2: address "10.0.0.1" has no port; write IP:port, like "10.0.0.1:80""#,
        ],
    );
    assert_error_contains(
        &VALID.replace("127.0.0.1:9002", "::1"),
        r#"address "::1" has no port; write IP:port, like "[::1]:80""#,
    );
    assert_error_contains(
        &VALID.replace("127.0.0.1:8080", "127.0.0.1"),
        r#"line 3: service "web": listen "127.0.0.1" has no port"#,
    );
}

#[test]
fn an_unparseable_address_is_an_error() {
    let cases = [
        (
            "10.0.0.300:80",
            r#"address "10.0.0.300:80" is not an IP:port; write IP:port, like "10.0.0.1:80" or "[::1]:80""#,
        ),
        ("web2.internal:80", r#"address "web2.internal:80" names a host; hostnames are not supported yet"#),
        ("localhost", r#"address "localhost" names a host; hostnames are not supported yet"#),
        (
            "10.0.0.1:99999",
            r#"address "10.0.0.1:99999" has a bad port "99999"; a port is a number from 0 to 65535"#,
        ),
        ("[::1]:http", r#"address "[::1]:http" has a bad port "http""#),
        ("", r#"address "" is not an IP:port"#),
        (
            "::ffff:10.0.0.1:80",
            r#"address "::ffff:10.0.0.1:80" needs brackets around its IPv6 address, like "[::ffff:10.0.0.1]:80""#,
        ),
        ("10.0.0.1:0", r#"address "10.0.0.1:0" has port 0; give the port the backend listens on"#),
    ];
    for (address, message) in cases {
        let text = VALID.replace("127.0.0.1:9002", address);
        assert_error_contains(&text, &format!(r#"line 14: pool "web" backend "web2": {message}"#));
    }
    assert_error_contains(
        &VALID.replace("\"127.0.0.1:9002\"", "9002"),
        r#"address must be a string, found an integer"#,
    );
}

#[test]
fn a_weight_of_zero_points_to_drain() {
    let text =
        VALID.replace("  address = \"127.0.0.1:9002\"", "  address = \"127.0.0.1:9002\"\n  weight = 0");
    assert_errors(
        &text,
        &[
            r#"line 15: pool "web" backend "web2": weight 0 is not allowed (weights run 1..=256); to send a backend no new sessions, set state = "drain" instead"#,
        ],
    );
}

#[test]
fn a_weight_out_of_range_is_an_error() {
    let with = |w: &str| {
        VALID.replace(
            "  address = \"127.0.0.1:9002\"",
            &format!("  address = \"127.0.0.1:9002\"\n  weight = {w}"),
        )
    };
    assert_errors(
        &with("257"),
        &[r#"line 15: pool "web" backend "web2": weight 257 is over the maximum of 256"#],
    );
    assert_errors(
        &with("-1"),
        &[r#"line 15: pool "web" backend "web2": weight -1 is below the minimum of 1"#],
    );
    assert_errors(
        &with("1.5"),
        &[r#"line 15: pool "web" backend "web2": weight must be an integer, found a float"#],
    );
    assert_eq!(loaded(&with("256")).model.pools[0].backends[1].weight, 256);
}

#[test]
fn an_empty_listen_list_is_an_error() {
    assert_errors(
        &VALID.replace("[\"127.0.0.1:8080\"]", "[]"),
        &[r#"line 3: service "web": listen is empty; give at least one "IP:port", like ["127.0.0.1:8080"]"#],
    );
    assert_errors(
        &VALID.replace("[\"127.0.0.1:8080\"]", "\"127.0.0.1:8080\""),
        &[r#"line 3: service "web": listen must be an array of strings, found a string"#],
    );
}

#[test]
fn a_pool_with_no_backends_is_an_error() {
    let text = format!("{}backend = []\n", &VALID[..VALID.find("  [[pool.backend]]").unwrap_or(0)]);
    assert_errors(&text, &[r#"line 7: pool "web" has no backends; add at least one [[pool.backend]] table"#]);
    let text = &VALID[..VALID.find("  [[pool.backend]]").unwrap_or(0)];
    assert_errors(text, &[r#"line 7: pool "web" has no backends; add at least one [[pool.backend]] table"#]);
}

/// `VALID` with a second service listening on `listen`.
fn with_second_service(listen: &str) -> String {
    format!("{VALID}[[service]]\nname = \"api\"\nlisten = {listen}\nmode = \"tcp\"\npool = \"web\"\n")
}

#[test]
fn colliding_listen_addresses_are_errors() {
    assert_errors(
        &with_second_service(r#"["127.0.0.1:8080"]"#),
        &[r#"line 17: service "api": listen 127.0.0.1:8080 is already used by service "web" at line 3"#],
    );
    assert_errors(
        &with_second_service(r#"["0.0.0.0:8080"]"#),
        &[
            r#"line 17: service "api": listen 0.0.0.0:8080 collides with listen 127.0.0.1:8080 of service "web" at line 3"#,
        ],
    );
    assert_errors(
        &with_second_service(r#"["[::]:8080"]"#),
        &[
            r#"line 17: service "api": listen [::]:8080 collides with listen 127.0.0.1:8080 of service "web" at line 3"#,
        ],
    );
    assert_errors(
        &VALID.replace(r#"["127.0.0.1:8080"]"#, "[\"127.0.0.1:8080\",\n  \"127.0.0.1:8080\"]"),
        &[r#"line 4: service "web": listen 127.0.0.1:8080 is given twice (first at line 3)"#],
    );
    let admin = format!("{VALID}[admin]\nlisten = \"127.0.0.1:8080\"\n");
    assert_errors(
        &admin,
        &[r#"line 16: admin: listen 127.0.0.1:8080 is already used by service "web" at line 3"#],
    );
}

#[test]
fn listen_addresses_that_can_share_a_machine_are_fine() {
    loaded(&with_second_service(r#"["127.0.0.1:8081"]"#));
    loaded(&with_second_service(r#"["127.0.0.2:8080"]"#));
    loaded(&with_second_service(r#"["[::1]:8080"]"#));
    // Port 0 asks the OS for a free port, so it never collides.
    let zero = VALID.replace("127.0.0.1:8080", "0.0.0.0:0");
    let zero = format!("{zero}[[service]]\nname = \"api\"\nlisten = [\"0.0.0.0:0\", \"127.0.0.1:0\"]\nmode = \"tcp\"\npool = \"web\"\n");
    assert_eq!(loaded(&zero).model.services[1].listen[0].port(), 0);
}

#[test]
fn unknown_words_list_the_allowed_ones() {
    assert_errors(
        &VALID.replace("mode = \"http\"", "mode = \"udp\""),
        &[r#"line 4: service "web": mode "udp" is not one of "http", "tcp""#],
    );
    assert_errors(
        &VALID.replace("[[pool]]\nname = \"web\"", "[[pool]]\nname = \"web\"\nalgorithm = \"random\""),
        &[
            r#"line 9: pool "web": algorithm "random" is not one of "round_robin", "weighted_round_robin", "least_connections", "least_load", "random_two_choices", "source_hash", "maglev""#,
        ],
    );
    assert_errors(
        &VALID.replace("pool = \"web\"\n", "pool = \"web\"\nlimits.on_limit = \"drop\"\n"),
        &[r#"line 6: service "web": limits.on_limit "drop" is not one of "queue", "refuse""#],
    );
}

#[test]
fn bad_durations_say_what_a_valid_one_looks_like() {
    let with = |line: &str| VALID.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{line}\n"));
    let errors = errors(&with("timeouts.connect = \"3 parsecs\""));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(r#"line 6: service "web": timeouts.connect "3 parsecs" is not a duration ("#),
        "{errors:?}"
    );
    assert!(errors[0].ends_with(r#"write a number and a unit, like "500ms", "2s" or "30m""#), "{errors:?}");
    assert_errors(
        &with("timeouts.connect = 3"),
        &[
            r#"line 6: service "web": timeouts.connect must be a duration string (a number and a unit, like "500ms", "2s" or "30m"), found an integer"#,
        ],
    );
}

#[test]
fn zero_durations_are_errors() {
    let text = VALID.replace("pool = \"web\"\n", "pool = \"web\"\nlimits.queue_timeout = \"0s\"\n");
    assert_errors(
        &text,
        &[
            r#"line 6: service "web": limits.queue_timeout is zero, which is always a mistake; give a positive duration (the default is "5s")"#,
        ],
    );
    let text = format!("[runtime]\nshutdown_grace = \"0ms\"\n{VALID}");
    assert_error_contains(&text, r#"line 2: runtime: shutdown_grace is zero"#);
    let text =
        VALID.replace("pool = \"web\"\n", "pool = \"web\"\n[service.timeouts]\nbackend_response = \"0\"\n");
    assert_error_contains(&text, r#"line 7: service "web": timeouts.backend_response is zero"#);
}

#[test]
fn numbers_out_of_range_are_errors() {
    let with = |line: &str| VALID.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{line}\n"));
    assert_errors(&with("retries = 11"), &[r#"line 6: service "web": retries 11 is over the maximum of 10"#]);
    assert_errors(
        &with("retries = \"2\""),
        &[r#"line 6: service "web": retries must be an integer, found a string"#],
    );
    assert_errors(
        &with("limits.max_connections = 0"),
        &[r#"line 6: service "web": limits.max_connections 0 is below 1; leave it out for no limit"#],
    );
    assert_errors(
        &VALID.replace("[[pool]]\nname = \"web\"", "[[pool]]\nname = \"web\"\nmax_idle_per_backend = -1"),
        &[r#"line 9: pool "web": max_idle_per_backend -1 is below the minimum of 0"#],
    );
}

#[test]
fn wrong_table_shapes_are_errors() {
    assert_errors(
        "[service]\nname = \"web\"\n",
        &[
            r#"line 1: service must be an array of tables, one [[service]] each, found a table"#,
            "no service is defined; add a [[service]] table",
        ],
    );
    assert_errors(
        &VALID.replace("pool = \"web\"\n", "pool = \"web\"\ntimeouts = \"3s\"\n"),
        &[r#"line 6: service "web": timeouts must be a table, found a string"#],
    );
    assert_errors(&format!("admin = 1\n{VALID}"), &["line 1: admin must be a table, found an integer"]);
    let backends = VALID.find("  [[pool.backend]]").unwrap_or(VALID.len());
    assert_errors(
        &format!("{}backend = 1\n", &VALID[..backends]),
        &[
            r#"line 9: pool "web": backend must be an array of tables, one [[pool.backend]] each, found an integer"#,
        ],
    );
    assert_errors("", &["no service is defined; add a [[service]] table"]);
}

#[test]
fn inline_tables_are_read_like_table_headers() {
    let text = r#"
service = [{ name = "web", listen = ["127.0.0.1:8080"], mode = "http", pool = "web" }]
pool = [{ name = "web", backend = [{ name = "a", address = "127.0.0.1:1" }, { address = "127.0.0.1:2", weight = 0 }] }]
"#;
    assert_errors(
        text,
        &[
            r#"line 3: pool "web" backend 2: missing required key "name""#,
            r#"line 3: pool "web" backend 2: weight 0 is not allowed (weights run 1..=256); to send a backend no new sessions, set state = "drain" instead"#,
        ],
    );
}

#[test]
fn a_toml_syntax_error_gives_the_parser_line() {
    let text = VALID.replace("mode = \"http\"", "mode = \"http");
    assert_errors(&text, &["line 4: invalid TOML at column 13: invalid basic string"]);
    let text = VALID.replace("[[pool]]", "[[pool]");
    assert_errors(&text, &["line 7: invalid TOML at column 7: invalid table header; expected `.`, `]]`"]);
    assert_errors("a = ", &["line 1: invalid TOML at column 5: unexpected end of file"]);
    let text = VALID.replace("mode = \"http\"", "mode = \"http\"\nmode = \"tcp\"");
    assert_errors(&text, &["line 5: invalid TOML at column 1: duplicate key `mode` in table `service`"]);
}
