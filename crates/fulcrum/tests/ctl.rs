//! `fulcrum ctl`, black-box: the command against a real `fulcrum run`'s
//! admin API — tables, `--json`, state changes, the token, and errors.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};

use common::{admin_config as config, bin, Backend, Fulcrum};
use serde_json::Value;

struct Lb {
    f: Fulcrum,
    admin: SocketAddr,
}

impl Lb {
    fn start(config: &str) -> Lb {
        let f = Fulcrum::start(config, 2);
        let admin = *f.addrs.last().expect("admin address");
        Lb { f, admin }
    }

    /// `fulcrum ctl --admin URL ARGS...`
    fn ctl(&self, args: &[&str]) -> Output {
        let url = format!("http://{}", self.admin);
        ctl(&[&["--admin", url.as_str()], args].concat(), &[])
    }

    fn request(&self) -> String {
        let out = common::raw(self.f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        out.lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-backend: ").map(str::to_owned))
            .unwrap_or_else(|| panic!("no x-backend in {out}"))
    }
}

/// Runs `fulcrum ctl ARGS...` with `env` set and `FULCRUM_ADMIN_TOKEN` unset unless given.
fn ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("ctl").args(args).env_remove("FULCRUM_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fulcrum ctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "ctl failed: {}\n{}", stderr(&o), stdout(&o));
    stdout(&o)
}

#[test]
fn backends_prints_an_aligned_server_state_table() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr), ("b", b.addr)], ""));
    let out = ok(lb.ctl(&["backends"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("POOL  BACKEND  ADDRESS"), "{out}");
    let health = lines[0].find("HEALTH").expect("HEALTH column");
    let target = lines[0].find("TARGET").expect("TARGET column");
    for (line, backend) in lines[1..].iter().zip([&a, &b]) {
        assert!(line.starts_with(&format!("web   {}        {}", backend.name, backend.addr)), "{out}");
        assert_eq!(&line[health..health + 2], "up", "{out}");
        assert_eq!(&line[target..target + 7], "enabled", "{out}");
    }
    // Text columns start under their header word; number columns end under it.
    for line in &lines[1..] {
        for word in ["BACKEND", "ADDRESS", "HEALTH", "TARGET", "CURRENT", "REASON"] {
            let at = lines[0].find(word).expect("header word");
            assert!(line.as_bytes()[at] != b' ' && line.as_bytes()[at - 1] == b' ', "{word}:\n{out}");
        }
        for word in ["WEIGHT", "SESSIONS", "REQUESTS"] {
            let end = lines[0].find(word).expect("header word") + word.len();
            assert!(line.as_bytes()[end - 1] != b' ' && line.as_bytes()[end] == b' ', "{word}:\n{out}");
        }
    }
}

#[test]
fn json_prints_what_the_api_answers() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let pools: Value = serde_json::from_str(&ok(lb.ctl(&["--json", "backends"]))).expect("JSON");
    assert_eq!(pools[0]["name"], "web");
    assert_eq!(pools[0]["backends"][0]["name"], "a");
    assert_eq!(pools[0]["backends"][0]["health"], "up");
    // Flags may follow the subcommand.
    let status: Value = serde_json::from_str(&ok(lb.ctl(&["status", "--json"]))).expect("JSON");
    assert_eq!(status["services"][0]["name"], "web");
    assert_eq!(status["pools"][0]["name"], "web");
    let snat: Value = serde_json::from_str(&ok(lb.ctl(&["snat", "--json"]))).expect("JSON");
    assert_eq!(snat, serde_json::json!([]));
}

#[test]
fn status_shows_services_and_pools() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    lb.request();
    let out = ok(lb.ctl(&["status"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SERVICE  MODE  LISTEN"), "{out}");
    assert!(lines[1].starts_with("web      http"), "{out}");
    let pools = lines.iter().position(|l| l.starts_with("POOL")).expect("pools table");
    assert!(lines[pools + 1].starts_with("web   round_robin"), "{out}");
}

#[test]
fn drain_and_enable_steer_the_backend() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr), ("b", b.addr)], ""));
    let out = ok(lb.ctl(&["drain", "web/a"]));
    assert!(out.starts_with("web/a: target drain, current drain"), "{out}");
    assert!((0..4).all(|_| lb.request() == "b"), "a drained backend took new requests");
    let table = ok(lb.ctl(&["backends"]));
    let row = table.lines().find(|l| l.starts_with("web   a ")).expect("row of a");
    assert!(row.contains(" drain "), "{table}");

    let out = ok(lb.ctl(&["disable", "web/a"]));
    assert!(out.contains("target disabled, current disabled"), "{out}");
    let out = ok(lb.ctl(&["enable", "web/a"]));
    assert!(out.contains("target enabled, current enabled"), "{out}");
    assert!((0..4).any(|_| lb.request() == "a"), "enabled again but never picked");
}

#[test]
fn errors_print_the_apis_message_and_exit_1() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let o = lb.ctl(&["drain", "web/zz"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), r#"error: pool "web" has no backend named "zz""#);
    assert!(stdout(&o).is_empty());
    let o = lb.ctl(&["enable", "nope/a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(r#"no pool named "nope""#), "{}", stderr(&o));
    let o = lb.ctl(&["sessions", "--limit", "5000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("limit 5000 is over the maximum of 1000"), "{}", stderr(&o));
    // A malformed argument is a usage error, before any request.
    let o = lb.ctl(&["drain", "a"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("POOL/BACKEND"), "{}", stderr(&o));
}

#[test]
fn an_unreachable_api_names_the_url_and_the_setting() {
    let dead = common::dead_addr();
    let url = format!("http://{dead}");
    let o = ctl(&["--admin", &url, "status"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&format!("cannot reach the admin API at {url}/")), "{e}");
    assert!(e.to_ascii_lowercase().contains("connection refused"), "{e}");
    assert!(e.contains("[admin] listen"), "{e}");
}

#[test]
fn the_admin_address_comes_from_the_config_file() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fulcrum.toml");
    // The same configuration with the port the daemon got.
    let pinned = config(&[("a", a.addr)], "")
        .replace("listen = \"127.0.0.1:0\"\n\n", &format!("listen = \"{}\"\n\n", lb.admin));
    assert!(pinned.contains(&lb.admin.to_string()), "{pinned}");
    std::fs::write(&file, pinned).expect("write");
    let out = ok(ctl(&["-c", file.to_str().expect("utf-8"), "backends"], &[]));
    assert!(out.lines().nth(1).expect("a row").starts_with("web   a"), "{out}");
}

#[test]
fn mutating_commands_send_the_token() {
    let a = Backend::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cret\n").expect("write tokens");
    let lb =
        Lb::start(&config(&[("a", a.addr)], &format!("token_file = {:?}", tokens.display().to_string())));
    let url = format!("http://{}", lb.admin);

    let o = lb.ctl(&["drain", "web/a"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("Bearer") && e.contains("--token-file"), "{e}");
    // Reads need none.
    ok(lb.ctl(&["backends"]));

    let tokens_arg = tokens.to_str().expect("utf-8");
    let out = ok(lb.ctl(&["--token-file", tokens_arg, "drain", "web/a"]));
    assert!(out.contains("target drain"), "{out}");
    let out = ok(ctl(&["--admin", &url, "enable", "web/a"], &[("FULCRUM_ADMIN_TOKEN", "s3cret")]));
    assert!(out.contains("target enabled"), "{out}");
    let o = ctl(&["--admin", &url, "enable", "web/a"], &[("FULCRUM_ADMIN_TOKEN", "wrong")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not one of"), "{}", stderr(&o));

    // With -c, the token comes from the configuration's own token_file.
    let file = dir.path().join("fulcrum.toml");
    let pinned = config(&[("a", a.addr)], "token_file = \"tokens\"")
        .replace("listen = \"127.0.0.1:0\"\ntoken_file", &format!("listen = \"{}\"\ntoken_file", lb.admin));
    std::fs::write(&file, pinned).expect("write");
    let out = ok(ctl(&["-c", file.to_str().expect("utf-8"), "drain", "web/a"], &[]));
    assert!(out.contains("target drain"), "{out}");
}

#[test]
fn sessions_lists_open_connections() {
    let a = Backend::start("a");
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    let mut client = TcpStream::connect(lb.f.addr()).expect("connect");
    client.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    common::read_response(&mut client);
    let me = client.local_addr().expect("addr").to_string();
    let out = ok(lb.ctl(&["sessions"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].trim_start().starts_with("ID  SERVICE  CLIENT"), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains(&me) && lines[1].contains("web/a"), "{out}");
    let page: Value =
        serde_json::from_str(&ok(lb.ctl(&["sessions", "--json", "--client", &me]))).expect("JSON");
    assert_eq!(page["total"], 1);
    let out = ok(lb.ctl(&["sessions", "--service", "other"]));
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
}

#[test]
fn reload_prints_what_changed() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(&config(&[("a", a.addr)], ""));
    std::fs::write(lb.f.proc.dir.path().join("fulcrum.toml"), config(&[("a", a.addr), ("b", b.addr)], ""))
        .expect("rewrite");
    let out = ok(lb.ctl(&["reload"]));
    assert!(out.starts_with("reloaded: ") && out.contains("pool \"web\" changed"), "{out}");
    std::fs::write(lb.f.proc.dir.path().join("fulcrum.toml"), "nonsense = 1\n").expect("rewrite");
    let o = lb.ctl(&["reload"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nonsense"), "{}", stderr(&o));
}

#[test]
fn snat_shows_pools_and_their_addresses() {
    let a = Backend::start("a");
    let base = config(&[("a", a.addr)], "");
    let with_snat = base.replace("algorithm = \"round_robin\"", "algorithm = \"round_robin\"\nsnat = \"out\"")
        + "\n[[snat_pool]]\nname = \"out\"\nfirst_ip = \"127.0.0.1\"\nlast_ip = \"127.0.0.1\"\n\
           netmask = \"255.0.0.0\"\nports = \"41000-41063\"\nblock_size = 16\ninitial_blocks = 1\nmax_blocks = 4\n";
    let lb = Lb::start(&with_snat);
    let out = ok(lb.ctl(&["snat"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SNAT POOL  ADDRESSES"), "{out}");
    assert!(lines[1].starts_with("out        127.0.0.1-127.0.0.1  41000-41063  web    1/4"), "{out}");
    let detail = lines.iter().position(|l| l.starts_with("SNAT POOL  ADDRESS ")).expect("address table");
    assert!(lines[detail + 1].starts_with("out        127.0.0.1"), "{out}");
}
