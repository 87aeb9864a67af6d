//! `[[snat_pool]]`, a pool's `snat`, and the admin and runtime keys of
//! issue 5 (`admin.token_file`, `runtime.access_log`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::{assert_error_contains, assert_errors, loaded, VALID};

/// `VALID` with its pool using a snat pool of 2 addresses × 4 ports in
/// blocks of 2, plus `extra` lines in the snat pool table (from line 23).
fn with_snat(extra: &str) -> String {
    let pool =
        VALID.replace("[[pool]]\nname = \"web\"\n", "[[pool]]\nname = \"web\"\nsnat = \"to-servers\"\n");
    format!(
        "{pool}[[snat_pool]]\nname = \"to-servers\"\nfirst_ip = \"127.0.0.10\"\nlast_ip = \"127.0.0.11\"\n\
         netmask = \"255.0.0.0\"\nports = \"40000-40003\"\nblock_size = 2\n{extra}"
    )
}

#[test]
fn a_snat_pool_gets_its_defaults_and_its_pool_points_at_it() {
    let loaded = loaded(&with_snat(""));
    assert_eq!(loaded.warnings, Vec::<String>::new());
    let model = loaded.model;
    assert_eq!(model.pools[0].snat, Some(0));
    let snat = &model.snat_pools[0];
    assert_eq!(snat.name, "to-servers");
    assert_eq!((snat.first_ip, snat.last_ip), (Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 11)));
    assert_eq!(snat.netmask, Ipv4Addr::new(255, 0, 0, 0));
    assert_eq!(snat.ports, (40000, 40003));
    assert_eq!(snat.block_size, 2);
    assert_eq!(snat.initial_blocks, 1);
    assert_eq!(snat.max_blocks, 4, "every block: 2 addresses × 2 blocks");
    assert_eq!(snat.wait, Duration::ZERO, "refused at once when exhausted");
    assert_eq!(model.summary(), "1 service, 1 pool, 2 backends, 1 snat pool");
}

#[test]
fn every_snat_key_is_read_and_the_admin_and_runtime_keys_too() {
    let head =
        "[admin]\nlisten = \"127.0.0.1:9900\"\ntoken_file = \"admin.tokens\"\n[runtime]\naccess_log = true\n";
    let text = format!("{head}{}", with_snat("initial_blocks = 2\nmax_blocks = 3\nwait = \"150ms\"\n"));
    let model = loaded(&text).model;
    let snat = &model.snat_pools[0];
    assert_eq!((snat.initial_blocks, snat.max_blocks, snat.wait), (2, 3, Duration::from_millis(150)));
    assert_eq!(model.admin.and_then(|a| a.token_file), Some(PathBuf::from("admin.tokens")));
    assert!(model.runtime.access_log);

    let plain = loaded(&format!("[admin]\nlisten = \"127.0.0.1:9900\"\n{VALID}")).model;
    assert_eq!(plain.admin.and_then(|a| a.token_file), None);
    assert!(!plain.runtime.access_log, "access logs are off by default");
}

#[test]
fn snat_pools_are_numbered_in_file_order() {
    let second = "[[snat_pool]]\nname = \"other\"\nfirst_ip = \"10.0.0.1\"\nlast_ip = \"10.0.0.1\"\n\
                  netmask = \"255.255.255.255\"\nports = \"1-10\"\nblock_size = 10\n";
    let text = format!("{second}{}", with_snat(""));
    let loaded = loaded(&text);
    assert_eq!(loaded.model.pools[0].snat, Some(1));
    assert_eq!(loaded.warnings, [r#"line 1: snat pool "other" is not used by any pool"#]);
}

#[test]
fn addresses_must_be_ipv4_without_a_port() {
    assert_errors(
        &with_snat("").replace("\"127.0.0.10\"", "\"::1\"").replace("\"127.0.0.11\"", "\"127.0.0.11:80\""),
        &[
            r#"line 18: snat pool "to-servers": first_ip "::1" is an IPv6 address; snat pools take IPv4 addresses only for now"#,
            r#"line 19: snat pool "to-servers": last_ip "127.0.0.11:80" has a port; give the address alone, like "10.0.0.10" (the ports go in ports)"#,
        ],
    );
    assert_errors(
        &with_snat("").replace("\"127.0.0.10\"", "\"localhost\""),
        &[
            r#"line 18: snat pool "to-servers": first_ip "localhost" is not an IPv4 address; write one like "10.0.0.10""#,
        ],
    );
}

#[test]
fn the_address_range_runs_upward_inside_one_network() {
    assert_errors(
        &with_snat("").replace("\"127.0.0.10\"", "\"127.0.0.12\""),
        &[
            r#"line 19: snat pool "to-servers": last_ip 127.0.0.11 is below first_ip 127.0.0.12; the range runs from first_ip up to last_ip"#,
        ],
    );
    assert_errors(
        &with_snat("").replace("\"255.0.0.0\"", "\"255.255.255.254\"").replace("127.0.0.11", "127.0.0.12"),
        &[
            r#"line 19: snat pool "to-servers": first_ip 127.0.0.10 and last_ip 127.0.0.12 are not in one network of netmask 255.255.255.254 (127.0.0.10/31 and 127.0.0.12/31); narrow the range or widen the netmask"#,
        ],
    );
}

#[test]
fn a_netmask_is_dotted_with_its_ones_first() {
    let cases = [
        (
            "255.0.255.0",
            r#"netmask "255.0.255.0" is not a netmask: its one bits must all come first, like "255.255.255.0""#,
        ),
        ("/24", r#"netmask "/24" is a prefix length; write the netmask dotted: "255.255.255.0""#),
        ("8", r#"netmask "8" is a prefix length; write the netmask dotted: "255.0.0.0""#),
        ("ffff::", r#"netmask "ffff::" is an IPv6 netmask; snat pools take IPv4 addresses only for now"#),
        ("big", r#"netmask "big" is not a netmask; write one dotted, like "255.255.255.0""#),
    ];
    for (mask, message) in cases {
        let text = with_snat("").replace("\"255.0.0.0\"", &format!("{mask:?}"));
        assert_errors(&text, &[&format!("line 20: snat pool \"to-servers\": {message}")]);
    }
    for mask in ["0.0.0.0", "255.255.255.254"] {
        let text = with_snat("").replace("\"255.0.0.0\"", &format!("{mask:?}"));
        assert_eq!(loaded(&text).model.snat_pools[0].netmask.to_string(), mask);
    }
}

#[test]
fn ports_are_a_range_within_1_to_65535() {
    let cases = [
        ("\"40000\"", r#"ports "40000" is not a port range; write "FIRST-LAST", like "20000-29999""#),
        ("\"a-b\"", r#"ports "a-b" is not a port range; write "FIRST-LAST", like "20000-29999""#),
        ("\"0-3\"", r#"ports "0-3" has a port outside 1..=65535"#),
        ("\"65535-70000\"", r#"ports "65535-70000" has a port outside 1..=65535"#),
        (
            "\"40003-40000\"",
            r#"ports "40003-40000" runs backwards; write the lower port first, like "40000-40003""#,
        ),
        (
            "40000",
            r#"ports must be a range string (write "FIRST-LAST", like "20000-29999"), found an integer"#,
        ),
    ];
    for (ports, message) in cases {
        let text = with_snat("").replace("\"40000-40003\"", ports);
        assert_errors(&text, &[&format!("line 21: snat pool \"to-servers\": {message}")]);
    }
    let spaced = loaded(&with_snat("").replace("\"40000-40003\"", "\"40000 - 40003\"")).model;
    assert_eq!(spaced.snat_pools[0].ports, (40000, 40003));
}

#[test]
fn blocks_fit_the_port_range() {
    assert_errors(
        &with_snat("").replace("block_size = 2", "block_size = 5"),
        &[r#"line 22: snat pool "to-servers": block_size 5 is more than the 4 ports of ports "40000-40003""#],
    );
    assert_errors(
        &with_snat("").replace("block_size = 2", "block_size = 0"),
        &[r#"line 22: snat pool "to-servers": block_size 0 is below the minimum of 1"#],
    );
    let loaded = loaded(&with_snat("").replace("block_size = 2", "block_size = 3"));
    assert_eq!(
        loaded.warnings,
        [
            r#"line 22: snat pool "to-servers": ports "40000-40003" hold 4 ports, not a whole number of blocks of 3: the last 1 on each address are never used"#
        ]
    );
    assert_eq!(loaded.model.snat_pools[0].max_blocks, 2);
}

#[test]
fn block_counts_stay_within_the_pool() {
    assert_errors(
        &with_snat("max_blocks = 5\n"),
        &[
            r#"line 23: snat pool "to-servers": max_blocks 5 is more than the 4 blocks the pool has (2 addresses × 2 blocks of 2 ports)"#,
        ],
    );
    assert_errors(
        &with_snat("initial_blocks = 3\nmax_blocks = 2\n"),
        &[r#"line 23: snat pool "to-servers": initial_blocks 3 is more than max_blocks 2"#],
    );
    assert_errors(
        &with_snat("initial_blocks = 5\n"),
        &[
            r#"line 23: snat pool "to-servers": initial_blocks 5 is more than the 4 blocks the pool has (2 addresses × 2 blocks of 2 ports)"#,
        ],
    );
    assert_errors(
        &with_snat("max_blocks = 0\n"),
        &[r#"line 23: snat pool "to-servers": max_blocks 0 is below the minimum of 1"#],
    );
    let none_held = loaded(&with_snat("initial_blocks = 0\n")).model;
    assert_eq!(none_held.snat_pools[0].initial_blocks, 0, "holding nothing until needed is allowed");
}

#[test]
fn wait_is_a_duration() {
    assert_error_contains(
        &with_snat("wait = \"soon\"\n"),
        r#"line 23: snat pool "to-servers": wait "soon" is not a duration"#,
    );
    assert_error_contains(&with_snat("wait = 5\n"), "wait must be a duration string");
}

#[test]
fn missing_and_unknown_keys_name_the_snat_pool() {
    let text = "[[snat_pool]]\nname = \"s\"\nfirst_ip = \"10.0.0.1\"\nblock_sise = 4\n";
    assert_errors(
        &format!("{VALID}{text}"),
        &[
            r#"line 15: snat pool "s": missing required key "last_ip""#,
            r#"line 15: snat pool "s": missing required key "netmask""#,
            r#"line 15: snat pool "s": missing required key "ports""#,
            r#"line 15: snat pool "s": missing required key "block_size""#,
            r#"line 18: snat pool "s": unknown key "block_sise", did you mean "block_size"?"#,
        ],
    );
    assert_error_contains(
        &format!("snat_pools = 1\n{VALID}"),
        r#"unknown key "snat_pools", did you mean "snat_pool"?"#,
    );
}

#[test]
fn a_pool_names_a_defined_snat_pool() {
    assert_errors(
        &with_snat("").replace("snat = \"to-servers\"", "snat = \"to-server\""),
        &[r#"line 9: pool "web": snat pool "to-server" is not defined (snat pools defined: "to-servers")"#],
    );
    let bare = VALID.replace("[[pool]]\nname = \"web\"\n", "[[pool]]\nname = \"web\"\nsnat = \"x\"\n");
    assert_errors(
        &bare,
        &[r#"line 9: pool "web": snat pool "x" is not defined (no [[snat_pool]] is defined)"#],
    );
}

#[test]
fn snat_pool_names_are_unique() {
    let copy = "[[snat_pool]]\nname = \"to-servers\"\nfirst_ip = \"10.0.0.1\"\nlast_ip = \"10.0.0.1\"\n\
                netmask = \"255.255.255.0\"\nports = \"1-2\"\nblock_size = 1\n";
    assert_errors(
        &with_snat(copy),
        &[
            r#"line 24: snat pool "to-servers": name "to-servers" is already used by the snat pool at line 17"#,
        ],
    );
}

#[test]
fn an_unused_snat_pool_is_a_warning() {
    let text = with_snat("").replace("snat = \"to-servers\"\n", "");
    let loaded = loaded(&text);
    assert_eq!(loaded.warnings, [r#"line 15: snat pool "to-servers" is not used by any pool"#]);
    assert_eq!(loaded.model.pools[0].snat, None);
}

#[test]
fn an_ipv6_backend_cannot_take_an_ipv4_source() {
    assert_errors(
        &with_snat("").replace("127.0.0.1:9002", "[::1]:9002"),
        &[
            r#"line 13: pool "web" backend "web2": address [::1]:9002 is IPv6, but the pool's snat pool "to-servers" has IPv4 addresses only; use an IPv4 backend address or take snat off the pool"#,
        ],
    );
}

#[test]
fn admin_and_runtime_keys_are_checked() {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:9900\"\ntoken_file = \" \"\n[runtime]\naccess_log = \"yes\"\n{VALID}"
    );
    assert_errors(
        &text,
        &[
            r#"line 3: admin: token_file is empty; give the path of a file of bearer tokens, one a line, or leave it out so the API needs no token"#,
            r#"line 5: runtime: access_log must be a boolean (true or false), found a string"#,
        ],
    );
    let text = format!("[admin]\ntoken_file = 7\n{VALID}");
    assert_errors(
        &text,
        &[
            r#"line 1: admin: missing required key "listen""#,
            r#"line 2: admin: token_file must be a string, found an integer"#,
        ],
    );
}
