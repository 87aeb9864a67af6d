//! `fulcrum check -c FILE`, run as a user would: the exit code, the summary
//! on stdout, every error and warning on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `fulcrum check -c path`.
fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("the fulcrum binary runs")
}

/// Writes `text` to `name` in `dir` and runs `fulcrum check` on it.
fn check_text(dir: &Path, name: &str, text: &str) -> (Output, PathBuf) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("the config file is written");
    (check(&path), path)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const VALID: &str = r#"
[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"
pool = "web"

[[pool]]
name = "web"
algorithm = "weighted_round_robin"
backend = [
  { name = "web1", address = "127.0.0.1:9001", weight = 2 },
  { name = "web2", address = "127.0.0.1:9002" },
  { name = "web3", address = "127.0.0.1:9003" },
]
"#;

#[test]
fn a_valid_file_passes_with_its_summary() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, path) = check_text(dir.path(), "fulcrum.toml", VALID);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let expected = format!("{}: ok, 1 service, 1 pool, 3 backends", path.display());
    assert_eq!(stdout(&output).trim(), expected);
    assert_eq!(stderr(&output), "", "a clean file prints no warning");
}

#[test]
fn every_error_is_reported_with_its_key_path_and_line() {
    let text = r#"[[service]]
name = "api"
listn = ["127.0.0.1:8080"]
mode = "http"
pool = "nope"

[[pool]]
name = "web"
  [[pool.backend]]
  name = "web1"
  address = "10.0.0.1:80"
  [[pool.backend]]
  address = "10.0.0.1"
  weight = 0
"#;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, path) = check_text(dir.path(), "broken.toml", text);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "no summary for a broken file");
    let stderr = stderr(&output);
    let expected = [
        r#"error: line 1: service "api": missing required key "listen""#,
        r#"error: line 3: service "api": unknown key "listn", did you mean "listen"?"#,
        r#"error: line 5: service "api": pool "nope" is not defined (pools defined: "web")"#,
        r#"error: line 12: pool "web" backend 2: missing required key "name""#,
        r#"error: line 13: pool "web" backend 2: address "10.0.0.1" has no port"#,
        r#"error: line 14: pool "web" backend 2: weight 0 is not allowed"#,
        r#"set state = "drain" instead"#,
    ];
    for part in expected {
        assert!(stderr.contains(part), "stderr lacks {part:?}:\n{stderr}");
    }
    let total = format!("{}: 6 error(s)", path.display());
    assert!(stderr.contains(&total), "stderr lacks {total:?}:\n{stderr}");
}

#[test]
fn health_and_load_errors_come_out_together() {
    let text = r#"[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"
pool = "web"

[[pool]]
name = "web"
algorithm = "least_conn"
  [pool.health]
  kind = "agent"
  timeout = "5s"
  path = "/healthz"
  [pool.passive]
  max_ejected_percent = 150
  [[pool.backend]]
  name = "web1"
  address = "127.0.0.1:9001"
  state = "drained"
  [[pool.backend]]
  name = "web2"
  address = "127.0.0.1:9002"
  agent = "127.0.0.1:0"
  max_conections = 10
"#;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, path) = check_text(dir.path(), "health.toml", text);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "no summary for a broken file");
    let stderr = stderr(&output);
    let expected = [
        r#"error: line 9: pool "web": algorithm "least_conn" is not one of "round_robin", "weighted_round_robin", "least_connections", "#,
        r#"error: line 12: pool "web": health.timeout "5s" is longer than health.interval "2s" (the default)"#,
        r#"error: line 13: pool "web": health.path is only for kind "http", but health.kind is "agent""#,
        r#"error: line 15: pool "web": passive.max_ejected_percent 150 is over the maximum of 100"#,
        r#"error: line 16: pool "web" backend "web1": health kind "agent" needs an agent address"#,
        r#"error: line 19: pool "web" backend "web1": state "drained" is not one of "enabled", "drain", "disabled""#,
        r#"error: line 23: pool "web" backend "web2": agent "127.0.0.1:0" has port 0"#,
        r#"error: line 24: pool "web" backend "web2": unknown key "max_conections", did you mean "max_connections"?"#,
    ];
    let mut from = 0;
    for part in expected {
        let at = stderr[from..].find(part).map(|i| from + i);
        assert!(at.is_some(), "stderr lacks {part:?} after byte {from}, in file order:\n{stderr}");
        from = at.unwrap_or(from) + part.len();
    }
    let total = format!("{}: 8 error(s)", path.display());
    assert!(stderr.contains(&total), "stderr lacks {total:?}:\n{stderr}");
}

#[test]
fn a_bad_route_regex_fails_check_naming_the_route() {
    let text = r#"[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"

  [[service.route]]
  name = "api"
  path_regex = "^/v(1|2"
  pool = "api"

  [[service.route]]
  header = { name = "X-Env", regex = "[z-a]" }
  status = 403

[[pool]]
name = "api"
backend = [{ name = "api1", address = "127.0.0.1:9101" }]
"#;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, path) = check_text(dir.path(), "routes.toml", text);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "no summary for a broken file");
    let stderr = stderr(&output);
    let expected = [
        r#"error: line 8: service "web" route "api": path_regex "^/v(1|2" is not a valid regular expression: unclosed group"#,
        r#"error: line 12: service "web" route 2: header.regex "[z-a]" is not a valid regular expression: invalid character class range"#,
    ];
    for part in expected {
        assert!(stderr.contains(part), "stderr lacks {part:?}:\n{stderr}");
    }
    let total = format!("{}: 2 error(s)", path.display());
    assert!(stderr.contains(&total), "stderr lacks {total:?}:\n{stderr}");
}

#[test]
fn snat_pool_errors_come_out_together() {
    let text = r#"[admin]
listen = "127.0.0.1:9900"
token_file = ""

[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"
pool = "web"

[[pool]]
name = "web"
snat = "to-server"
backend = [{ name = "web1", address = "127.0.0.1:9001" }]

[[snat_pool]]
name = "to-servers"
first_ip = "10.0.0.10"
last_ip = "10.1.0.19"
netmask = "255.255.0.0"
ports = "30000-20000"
block_size = 64
wiat = "1s"
"#;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, path) = check_text(dir.path(), "snat.toml", text);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "no summary for a broken file");
    let stderr = stderr(&output);
    let expected = [
        r#"error: line 3: admin: token_file is empty"#,
        r#"error: line 13: pool "web": snat pool "to-server" is not defined (snat pools defined: "to-servers")"#,
        r#"error: line 19: snat pool "to-servers": first_ip 10.0.0.10 and last_ip 10.1.0.19 are not in one network of netmask 255.255.0.0 (10.0.0.0/16 and 10.1.0.0/16)"#,
        r#"error: line 21: snat pool "to-servers": ports "30000-20000" runs backwards; write the lower port first, like "20000-30000""#,
        r#"error: line 23: snat pool "to-servers": unknown key "wiat", did you mean "wait"?"#,
    ];
    let mut from = 0;
    for part in expected {
        let at = stderr[from..].find(part).map(|i| from + i);
        assert!(at.is_some(), "stderr lacks {part:?} after byte {from}, in file order:\n{stderr}");
        from = at.unwrap_or(from) + part.len();
    }
    let total = format!("{}: 5 error(s)", path.display());
    assert!(stderr.contains(&total), "stderr lacks {total:?}:\n{stderr}");
}

#[test]
fn a_snat_pool_is_counted_in_the_summary_and_an_unused_one_warned_about() {
    let snat = "\n[[snat_pool]]\nname = \"spare\"\nfirst_ip = \"127.0.0.10\"\nlast_ip = \"127.0.0.10\"\n\
                netmask = \"255.255.255.255\"\nports = \"20000-20099\"\nblock_size = 10\n";
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, _) = check_text(dir.path(), "spare-snat.toml", &format!("{VALID}{snat}"));
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).contains(": ok, 1 service, 1 pool, 3 backends, 1 snat pool"),
        "{}",
        stdout(&output)
    );
    assert_eq!(stderr(&output).trim(), r#"warning: line 17: snat pool "spare" is not used by any pool"#);
}

#[test]
fn an_unreadable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing.toml");
    let output = check(&missing);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr(&output);
    assert!(stderr.contains(&missing.display().to_string()), "stderr: {stderr}");

    // A directory exists but cannot be read as a file.
    let output = check(dir.path());
    assert_eq!(output.status.code(), Some(1));
    let stderr = self::stderr(&output);
    let expected = format!("error: cannot read {}", dir.path().display());
    assert!(stderr.contains(&expected), "stderr: {stderr}");
}

#[test]
fn an_unused_pool_is_a_warning_and_still_passes() {
    let text = format!(
        "{VALID}\n[[pool]]\nname = \"spare\"\nbackend = [{{ name = \"s1\", address = \"127.0.0.1:9100\" }}]\n"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (output, _) = check_text(dir.path(), "spare.toml", &text);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(stdout(&output).contains(": ok, 1 service, 2 pools, 4 backends"));
    assert_eq!(stderr(&output).trim(), r#"warning: line 17: pool "spare" is not used by any service"#);
}

#[test]
fn every_example_passes_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&examples).expect("the examples directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = check(&path);
            assert!(
                output.status.success() && output.stderr.is_empty(),
                "{} fails check:\n{}",
                path.display(),
                stderr(&output)
            );
            checked.push(path);
        }
    }
    for name in ["quickstart.toml", "tcp.toml", "health.toml", "routing.toml", "sni.toml", "snat.toml"] {
        assert!(checked.iter().any(|p| p.ends_with(name)), "expected examples/{name}, found {checked:?}");
    }
}
