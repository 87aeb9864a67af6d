//! `[service.policy]` and the client address keys: `accept_proxy_protocol`,
//! `trusted_proxies` and a pool's `proxy_protocol`; what each reads to, its
//! default, and each error.

use super::{assert_errors, loaded, VALID};
use crate::model::{Auth, Policy, ProxyVersion};

/// `VALID` with `text` after the service's `pool` key: its first line is line 6.
fn with(text: &str) -> String {
    VALID.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{text}"))
}

/// The same in tcp mode.
fn tcp_with(text: &str) -> String {
    with(text).replace("mode = \"http\"", "mode = \"tcp\"")
}

fn policy(text: &str) -> Policy {
    loaded(text).model.services.swap_remove(0).policy
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().expect("a literal CIDR block")
}

#[test]
fn every_policy_key_is_read() {
    let text = r#"[service.policy]
allow = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]
deny = ["10.9.0.0/16"]
auth = "basic"
htpasswd = "users.htpasswd"
realm = "staff"
max_sessions = 1000
rate_per_client = 50
"#;
    let expected = Policy {
        allow: vec![net("10.0.0.0/8"), net("192.168.1.7/32"), net("2001:db8::/32"), net("::1/128")],
        deny: vec![net("10.9.0.0/16")],
        // A relative path is kept as written: the daemon resolves it.
        auth: Auth::Basic { realm: "staff".into(), htpasswd: "users.htpasswd".into() },
        max_sessions: Some(1000),
        rate_per_client: Some(50),
    };
    assert_eq!(policy(&with(text)), expected);
}

#[test]
fn a_policy_gets_its_defaults() {
    assert_eq!(policy(VALID), Policy::default());
    assert_eq!(policy(&with("[service.policy]\nauth = \"none\"\n")), Policy::default());
    assert_eq!(
        policy(&with("policy = { auth = \"bearer\", tokens_file = \"/etc/fulcrum/tokens\" }\n")).auth,
        Auth::Bearer { realm: "fulcrum".into(), tokens_file: "/etc/fulcrum/tokens".into() }
    );
}

#[test]
fn source_lists_hold_addresses_or_cidr_blocks() {
    assert_errors(
        &with("[service.policy]\nallow = []\ndeny = [5, \"10.0.0.0/33\", \"10.1.2.3/8\", \"example.com\"]\n"),
        &[
            r#"line 7: service "web": policy.allow is empty, which would allow every source; leave it out for that, or list the sources to allow"#,
            r#"line 8: service "web": policy.deny must hold only strings, found an integer"#,
            r#"line 8: service "web": policy.deny "10.0.0.0/33" is not an IP address or a CIDR block; write one like "10.0.0.0/8" or "10.0.0.1""#,
            r#"line 8: service "web": policy.deny "10.1.2.3/8" has host bits set; write the network it covers, "10.0.0.0/8""#,
            r#"line 8: service "web": policy.deny "example.com" is not an IP address or a CIDR block; write one like "10.0.0.0/8" or "10.0.0.1""#,
        ],
    );
    // An empty deny list denies nothing, which is what it says.
    assert_eq!(policy(&with("[service.policy]\ndeny = []\n")).deny, []);
}

#[test]
fn limits_start_at_one() {
    assert_errors(
        &with("[service.policy]\nmax_sessions = 0\nrate_per_client = -5\n"),
        &[
            r#"line 7: service "web": policy.max_sessions 0 is below 1; leave it out for no limit"#,
            r#"line 8: service "web": policy.rate_per_client -5 is below 1; leave it out for no limit"#,
        ],
    );
}

#[test]
fn each_auth_needs_its_file_and_no_other() {
    assert_errors(
        &with("policy = { auth = \"basic\" }\n"),
        &[
            r#"line 6: service "web": policy.auth "basic" needs policy.htpasswd: the htpasswd file of user names and bcrypt hashes, like htpasswd = "/etc/fulcrum/htpasswd""#,
        ],
    );
    assert_errors(
        &with("[service.policy]\nauth = \"bearer\"\nhtpasswd = \"users\"\ntokens_file = \"\"\n"),
        &[
            r#"line 8: service "web": policy.htpasswd is only for auth "basic", but policy.auth is "bearer""#,
            r#"line 9: service "web": policy.tokens_file is empty; give the file of accepted tokens, one a line, like tokens_file = "/etc/fulcrum/tokens""#,
        ],
    );
    assert_errors(
        &with("[service.policy]\ntokens_file = \"tokens\"\nrealm = \"api\"\n"),
        &[
            r#"line 7: service "web": policy.tokens_file is only for auth "bearer", but policy.auth is not set (so "none"); add auth = "bearer""#,
            r#"line 8: service "web": policy.realm is only for auth "basic" or "bearer", but policy.auth is not set (so "none"); add auth = "basic" or "bearer""#,
        ],
    );
    assert_errors(
        &with("[service.policy]\nauth = \"basic\"\nhtpasswd = \"users\"\nrealm = 'say \"hi\"'\n"),
        &[
            r#"line 9: service "web": policy.realm "say \"hi\"" has a quote, a backslash or a control character, which the quoted realm of WWW-Authenticate cannot carry"#,
        ],
    );
    // Only the auth is reported when it is not a word it knows.
    assert_errors(
        &with("[service.policy]\nauth = \"digest\"\nhtpasswd = \"users\"\n"),
        &[r#"line 7: service "web": policy.auth "digest" is not one of "none", "basic", "bearer""#],
    );
    assert_errors(
        &with("[service.policy]\nalow = [\"10.0.0.0/8\"]\n"),
        &[r#"line 7: service "web": unknown key "policy.alow", did you mean "policy.allow"?"#],
    );
}

#[test]
fn a_tcp_policy_allows_and_denies_but_asks_no_credentials() {
    let expected = Policy {
        allow: vec![net("10.0.0.0/8")],
        max_sessions: Some(10),
        rate_per_client: Some(5),
        ..Policy::default()
    };
    let text = "[service.policy]\nallow = [\"10.0.0.0/8\"]\nmax_sessions = 10\nrate_per_client = 5\n";
    assert_eq!(policy(&tcp_with(text)), expected);
    assert_errors(
        &tcp_with("[service.policy]\nauth = \"basic\"\nhtpasswd = \"users\"\n"),
        &[
            r#"line 7: service "web": policy.auth is only for mode "http", but the service's mode is "tcp"; a tcp policy can only allow or deny sources"#,
            r#"line 8: service "web": policy.htpasswd is only for mode "http", but the service's mode is "tcp"; a tcp policy can only allow or deny sources"#,
        ],
    );
}

#[test]
fn a_proxy_protocol_header_is_believed_from_trusted_proxies_only() {
    let text = with("accept_proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n");
    let service = loaded(&text).model.services.swap_remove(0);
    assert!(service.accept_proxy_protocol);
    assert_eq!(service.trusted_proxies, [net("10.0.0.0/8"), net("127.0.0.1/32")]);
    let tcp = tcp_with("accept_proxy_protocol = true\ntrusted_proxies = [\"::1\"]\n");
    assert!(loaded(&tcp).model.services[0].accept_proxy_protocol, "both modes accept it");
    assert!(!loaded(&with("accept_proxy_protocol = false\n")).model.services[0].accept_proxy_protocol);

    assert_errors(
        &with("accept_proxy_protocol = true\n"),
        &[
            r#"line 6: service "web": accept_proxy_protocol is true, but trusted_proxies is not set; list the load balancers whose PROXY headers to believe, like trusted_proxies = ["10.0.0.5"]"#,
        ],
    );
    assert_errors(
        &with("accept_proxy_protocol = true\ntrusted_proxies = []\n"),
        &[
            r#"line 7: service "web": trusted_proxies is empty, so no PROXY header would be believed; list the load balancers in front of this service, like ["10.0.0.5", "10.1.0.0/24"]"#,
        ],
    );
    assert_errors(
        &with("trusted_proxies = [\"10.0.0.1\"]\n"),
        &[
            r#"line 6: service "web": trusted_proxies is only for accept_proxy_protocol = true, but accept_proxy_protocol is not set (so false); set it to read a PROXY protocol header from the load balancers listed"#,
        ],
    );
    assert_errors(
        &with("accept_proxy_protocol = false\ntrusted_proxies = [\"10.0.0.1\"]\n"),
        &[
            r#"line 7: service "web": trusted_proxies is only for accept_proxy_protocol = true, but accept_proxy_protocol is false; set it to read a PROXY protocol header from the load balancers listed"#,
        ],
    );
    assert_errors(
        &with("accept_proxy_protocol = \"yes\"\ntrusted_proxies = [\"10.0.0.1\"]\n"),
        &[
            r#"line 6: service "web": accept_proxy_protocol must be a boolean (true or false), found a string"#,
        ],
    );
    assert_errors(
        &with("accept_proxy_protocol = true\ntrusted_proxies = [\"10.0.0.300\"]\n"),
        &[
            r#"line 7: service "web": trusted_proxies "10.0.0.300" is not an IP address or a CIDR block; write one like "10.0.0.0/8" or "10.0.0.1""#,
        ],
    );
}

#[test]
fn a_pool_sends_a_proxy_protocol_header_when_asked() {
    let pool_with = |line: &str| {
        VALID.replace("[[pool]]\nname = \"web\"\n", &format!("[[pool]]\nname = \"web\"\n{line}\n"))
    };
    for (word, version) in [("v1", ProxyVersion::V1), ("v2", ProxyVersion::V2)] {
        let pool = loaded(&pool_with(&format!("proxy_protocol = \"{word}\""))).model.pools.swap_remove(0);
        assert_eq!(pool.proxy_protocol, Some(version));
    }
    assert_errors(
        &pool_with("proxy_protocol = \"v3\""),
        &[r#"line 9: pool "web": proxy_protocol "v3" is not one of "v1", "v2""#],
    );
    assert_errors(
        &pool_with("proxy_protocol = true"),
        &[r#"line 9: pool "web": proxy_protocol must be a string, found a boolean"#],
    );
}
