//! `fulcrum ctl`: the admin API from the shell. Reads print aligned tables
//! (or the API's JSON with `--json`); `drain`, `enable`, `disable` and
//! `reload` change things and send the admin token when one is given.
//!
//! Which API: `--admin URL`, else the `[admin] listen` of `-c FILE`, else
//! http://127.0.0.1:9900. Every failure prints one line that says what went
//! wrong (the API's own message when it answered) and exits 1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::Client;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// The admin API ctl talks to without `--admin` or `-c`.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9900";

/// The environment variable holding the admin token (when no `--token-file`).
pub const TOKEN_ENV: &str = "FULCRUM_ADMIN_TOKEN";

/// Longer than the API's own 30 s bound on a reload, so its answer arrives.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The admin API's URL (default: `[admin] listen` of -c FILE, else http://127.0.0.1:9900).
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// The configuration file to take `[admin] listen` (and `token_file`) from.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// A file whose first line is the admin token, for drain/enable/disable/reload
    /// (default: $FULCRUM_ADMIN_TOKEN, else `[admin] token_file` of -c FILE).
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Services and pools at a glance.
    Status,
    /// The server state table: every backend's health, target/current state, sessions, load.
    Backends,
    /// Live sessions, oldest first.
    Sessions {
        /// Only sessions of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only sessions on this backend (NAME or POOL/NAME).
        #[arg(long)]
        backend: Option<String>,
        /// Only sessions from this client (address, address:port, network or prefix).
        #[arg(long)]
        client: Option<String>,
        /// At most this many rows (the API allows up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Skip this many rows first.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// SNAT pools: addresses, blocks and ports in use, exhaustion.
    Snat,
    /// Take no new sessions on a backend; existing ones finish.
    Drain {
        #[arg(value_name = "POOL/BACKEND", value_parser = pool_backend)]
        backend: (String, String),
    },
    /// Let a backend take new sessions again.
    Enable {
        #[arg(value_name = "POOL/BACKEND", value_parser = pool_backend)]
        backend: (String, String),
    },
    /// Take nothing new on a backend, sticky clients included.
    Disable {
        #[arg(value_name = "POOL/BACKEND", value_parser = pool_backend)]
        backend: (String, String),
    },
    /// Reload the configuration file of the running daemon.
    Reload,
}

fn pool_backend(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((pool, backend)) if !pool.is_empty() && !backend.is_empty() => {
            Ok((pool.to_owned(), backend.to_owned()))
        }
        _ => Err(format!("expected POOL/BACKEND (like web/web1), got {s:?}")),
    }
}

/// Why a ctl command failed; `Display` is the line printed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot reach the admin API at {url}: {why}\n\
         is fulcrum running, and is {url} its `[admin] listen`? (pass --admin URL or -c FILE)"
    )]
    Unreachable { url: String, why: String },
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("{0}")]
    Other(String),
}

/// Runs `fulcrum ctl`.
pub fn main(args: Args) -> ExitCode {
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            if let CtlError::Api { status: StatusCode::UNAUTHORIZED, .. } = e {
                eprintln!("hint: pass --token-file PATH or set {TOKEN_ENV}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs one command and returns what to print.
pub fn run(args: &Args) -> Result<String, CtlError> {
    let api = Api::new(args)?;
    let json = |v: &Value| serde_json::to_string_pretty(v).map(|s| s + "\n").unwrap_or_default();
    match &args.command {
        CtlCommand::Status => {
            let services = api.get(&["services"], &[])?;
            let pools = api.get(&["pools"], &[])?;
            if args.json {
                return Ok(json(&serde_json::json!({ "services": services, "pools": pools })));
            }
            Ok(format!("{}\n{}", services_table(&services), pools_table(&pools)))
        }
        CtlCommand::Backends => {
            let pools = api.get(&["pools"], &[])?;
            Ok(if args.json { json(&pools) } else { backends_table(&pools) })
        }
        CtlCommand::Sessions { service, backend, client, limit, offset } => {
            let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
            for (key, value) in [("service", service), ("backend", backend), ("client", client)] {
                if let Some(v) = value {
                    query.push((key, v.clone()));
                }
            }
            let page = api.get(&["sessions"], &query)?;
            Ok(if args.json { json(&page) } else { sessions_table(&page, now_unix_ms()) })
        }
        CtlCommand::Snat => {
            let snat = api.get(&["snat"], &[])?;
            Ok(if args.json { json(&snat) } else { snat_table(&snat) })
        }
        CtlCommand::Drain { backend } => set_state(&api, args, backend, "drain"),
        CtlCommand::Enable { backend } => set_state(&api, args, backend, "enabled"),
        CtlCommand::Disable { backend } => set_state(&api, args, backend, "disabled"),
        CtlCommand::Reload => {
            let answer = api.post(&["reload"], &serde_json::json!({}), args)?;
            if args.json {
                return Ok(json(&answer));
            }
            Ok(format!("reloaded: {}\n", text(&answer["result"])))
        }
    }
}

fn set_state(
    api: &Api,
    args: &Args,
    (pool, backend): &(String, String),
    target: &str,
) -> Result<String, CtlError> {
    let path = ["pools", pool.as_str(), "backends", backend.as_str(), "state"];
    let row = api.post(&path, &serde_json::json!({ "target": target }), args)?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&row).map(|s| s + "\n").unwrap_or_default());
    }
    Ok(format!(
        "{pool}/{backend}: target {}, current {}, {} session(s), health {}\n",
        text(&row["target"]),
        text(&row["current"]),
        text(&row["sessions"]),
        text(&row["health"]),
    ))
}

/// The admin API at one base URL.
struct Api {
    base: Url,
    client: Client,
}

impl Api {
    fn new(args: &Args) -> Result<Api, CtlError> {
        let base = admin_url(args.admin.as_deref(), args.config.as_deref())?;
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| CtlError::Other(format!("cannot make an HTTP client: {e}")))?;
        Ok(Api { base, client })
    }

    /// `base` + `/api/v1/` + the segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value, CtlError> {
        self.send(self.client.request(Method::GET, self.url(segments)).query(query))
    }

    fn post(&self, segments: &[&str], body: &Value, args: &Args) -> Result<Value, CtlError> {
        let mut request = self.client.request(Method::POST, self.url(segments)).json(body);
        if let Some(token) = token(args)? {
            request = request.bearer_auth(token);
        }
        self.send(request)
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder) -> Result<Value, CtlError> {
        let response = request.send().map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.text().map_err(|e| self.unreachable(&e))?;
        let value: Option<Value> = serde_json::from_str(&body).ok();
        if status.is_success() {
            return value.ok_or_else(|| {
                CtlError::Other(format!("{} answered {status} with a body that is not JSON", self.base))
            });
        }
        let message = value
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{} answered {status}: {}", self.base, body.trim()));
        Err(CtlError::Api { status, message })
    }

    fn unreachable(&self, e: &reqwest::Error) -> CtlError {
        // The innermost cause says it best ("Connection refused (os error 111)").
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            why = s.to_string();
            source = s.source();
        }
        CtlError::Unreachable { url: self.base.to_string(), why }
    }
}

/// The admin API's base URL: `--admin`, else `[admin] listen` of `config`,
/// else [`DEFAULT_ADMIN`].
pub fn admin_url(admin: Option<&str>, config: Option<&Path>) -> Result<Url, CtlError> {
    let text = match (admin, config) {
        (Some(url), _) => url.to_owned(),
        (None, Some(path)) => match admin_section(path)? {
            Some(admin) => format!("http://{}", reachable(admin.listen)),
            None => {
                eprintln!("note: {} has no [admin] section; trying {DEFAULT_ADMIN}", path.display());
                DEFAULT_ADMIN.to_owned()
            }
        },
        (None, None) => DEFAULT_ADMIN.to_owned(),
    };
    let with_scheme = if text.contains("://") { text.clone() } else { format!("http://{text}") };
    Url::parse(&with_scheme).map_err(|e| CtlError::Other(format!("admin URL {text:?} is not a URL: {e}")))
}

/// The `[admin]` table of the configuration file at `path`.
fn admin_section(path: &Path) -> Result<Option<fulcrum_core::model::Admin>, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Other(format!("cannot read {}: {e}", path.display())))?;
    match fulcrum_core::config::load(&text) {
        Ok(loaded) => Ok(loaded.model.admin),
        Err(errors) => Err(CtlError::Other(format!(
            "{} has {} error(s), so its [admin] listen cannot be trusted (see `fulcrum check -c {}`); or pass --admin URL",
            path.display(),
            errors.len(),
            path.display()
        ))),
    }
}

/// A listen address as a client dials it: the wildcard means this host.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The token for mutating calls: `--token-file`, else `$FULCRUM_ADMIN_TOKEN`,
/// else the `[admin] token_file` of `-c FILE` (relative to the file); `None`
/// when none is given (the API may not need one).
fn token(args: &Args) -> Result<Option<String>, CtlError> {
    if let Some(path) = &args.token_file {
        return read_token(path).map(Some);
    }
    if let Ok(token) = std::env::var(TOKEN_ENV) {
        if !token.trim().is_empty() {
            return Ok(Some(token.trim().to_owned()));
        }
    }
    if let (None, Some(config)) = (&args.admin, &args.config) {
        if let Some(file) = admin_section(config)?.and_then(|a| a.token_file) {
            let base = config.parent().unwrap_or(Path::new("."));
            return read_token(&base.join(file)).map(Some);
        }
    }
    Ok(None)
}

/// The first line of `path` that is neither blank nor a `#` comment.
fn read_token(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Other(format!("cannot read the token file {}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .ok_or_else(|| CtlError::Other(format!("the token file {} has no token in it", path.display())))
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

// ------------------------------------------------------------------ tables

/// A JSON value as a table cell: strings bare, `null` as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Aligns `rows` under `headers`, two spaces between columns. A column whose
/// every cell is a number is right-aligned; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let mut numeric = vec![!rows.is_empty(); columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
            numeric[i] &= cell == "-" || cell.parse::<f64>().is_ok();
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                l.extend(std::iter::repeat_n(' ', pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                if i + 1 < columns {
                    l.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn services_table(services: &Value) -> String {
    let rows: Vec<Vec<String>> = items(services)
        .iter()
        .map(|s| {
            let c = &s["counters"];
            vec![
                text(&s["name"]),
                text(&s["mode"]),
                text(&s["listen"]),
                text(&s["pool"]),
                text(&s["sessions"]),
                text(&c["sessions"]),
                text(&c["requests"]),
                text(&c["responses"]["5xx"]),
                text(&c["refused"]),
            ]
        })
        .collect();
    table(&["SERVICE", "MODE", "LISTEN", "POOL", "SESSIONS", "TOTAL", "REQUESTS", "5XX", "REFUSED"], &rows)
}

fn pools_table(pools: &Value) -> String {
    let rows: Vec<Vec<String>> = items(pools)
        .iter()
        .map(|p| {
            let backends = items(&p["backends"]);
            let count = |f: &dyn Fn(&Value) -> bool| backends.iter().filter(|b| f(b)).count().to_string();
            let sessions: u64 = backends.iter().filter_map(|b| b["sessions"].as_u64()).sum();
            vec![
                text(&p["name"]),
                text(&p["algorithm"]),
                text(&p["snat"]),
                backends.len().to_string(),
                count(&|b| b["health"] == "up"),
                count(&|b| b["current"] == "enabled"),
                sessions.to_string(),
            ]
        })
        .collect();
    table(&["POOL", "ALGORITHM", "SNAT", "BACKENDS", "UP", "ENABLED", "SESSIONS"], &rows)
}

fn backends_table(pools: &Value) -> String {
    let mut rows = Vec::new();
    for p in items(pools) {
        for b in items(&p["backends"]) {
            let c = &b["counters"];
            let load = b["load"]["score"].as_f64().map_or_else(|| "-".to_owned(), |l| format!("{l:.2}"));
            rows.push(vec![
                text(&p["name"]),
                text(&b["name"]),
                text(&b["address"]),
                text(&b["weight"]),
                text(&b["health"]),
                text(&b["target"]),
                text(&b["current"]),
                text(&b["sessions"]),
                load,
                text(&c["requests"]),
                text(&c["connect_errors"]),
                text(&b["reason"]),
            ]);
        }
    }
    table(
        &[
            "POOL", "BACKEND", "ADDRESS", "WEIGHT", "HEALTH", "TARGET", "CURRENT", "SESSIONS", "LOAD",
            "REQUESTS", "ERRORS", "REASON",
        ],
        &rows,
    )
}

fn sessions_table(page: &Value, now_ms: u64) -> String {
    let list = items(&page["rows"]);
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let age = s["started_unix_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |t| age(now_ms.saturating_sub(t)));
            let backend = match (s["pool"].as_str(), s["backend"].as_str()) {
                (Some(p), Some(b)) => format!("{p}/{b}"),
                _ => "-".to_owned(),
            };
            vec![
                text(&s["id"]),
                text(&s["service"]),
                text(&s["client"]),
                text(&s["listener"]),
                text(&s["local"]),
                backend,
                text(&s["backend_address"]),
                text(&s["state"]),
                age,
                text(&s["bytes_in"]),
                text(&s["bytes_out"]),
                text(&s["requests"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "SERVICE", "CLIENT", "LISTENER", "LOCAL", "BACKEND", "ADDRESS", "STATE", "AGE", "IN",
            "OUT", "REQUESTS",
        ],
        &rows,
    );
    let total = page["total"].as_u64().unwrap_or(0);
    if total as usize != list.len() {
        out.push_str(&format!("({} of {total} sessions shown)\n", list.len()));
    }
    out
}

/// A duration for people: `45s`, `12m03s`, `5h02m`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// SNAT pools, then the addresses holding blocks with their free ports.
fn snat_table(snat: &Value) -> String {
    let range = |v: &Value| match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => format!("{}-{}", text(a), text(b)),
        _ => text(v),
    };
    let pools: Vec<Vec<String>> = items(snat)
        .iter()
        .map(|p| {
            let used = match (p["allocated"].as_f64(), p["capacity"].as_f64()) {
                (Some(a), Some(c)) if c > 0.0 => format!("{:.0}", 100.0 * a / c),
                _ => "-".to_owned(),
            };
            vec![
                text(&p["name"]),
                format!("{}-{}", text(&p["first_ip"]), text(&p["last_ip"])),
                range(&p["ports"]),
                text(&p["pools"]),
                format!("{}/{}", text(&p["blocks_held"]), text(&p["max_blocks"])),
                text(&p["allocated"]),
                text(&p["capacity"]),
                used,
                text(&p["waited"]),
                text(&p["exhausted"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SNAT POOL",
            "ADDRESSES",
            "PORTS",
            "POOLS",
            "BLOCKS",
            "ALLOCATED",
            "CAPACITY",
            "USE%",
            "WAITED",
            "EXHAUSTED",
        ],
        &pools,
    );
    let addresses: Vec<Vec<String>> = items(snat)
        .iter()
        .flat_map(|p| {
            items(&p["per_address"]).iter().map(move |a| {
                let free: Vec<String> = items(&a["free"]).iter().map(range).collect();
                vec![
                    text(&p["name"]),
                    text(&a["address"]),
                    text(&a["blocks_held"]),
                    text(&a["allocated"]),
                    if free.is_empty() { "-".to_owned() } else { free.join(",") },
                ]
            })
        })
        .collect();
    if !addresses.is_empty() {
        out.push('\n');
        out.push_str(&table(&["SNAT POOL", "ADDRESS", "BLOCKS", "ALLOCATED", "FREE"], &addresses));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_text_left_and_numbers_right() {
        let rows = vec![
            vec!["web1".to_owned(), "12".to_owned(), "up".to_owned()],
            vec!["backend-two".to_owned(), "3".to_owned(), "down".to_owned()],
        ];
        let t = table(&["BACKEND", "SESSIONS", "HEALTH"], &rows);
        assert_eq!(
            t,
            "BACKEND      SESSIONS  HEALTH\n\
             web1               12  up\n\
             backend-two         3  down\n"
        );
    }

    #[test]
    fn table_without_rows_is_its_header() {
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn pool_backend_needs_both_halves() {
        assert_eq!(pool_backend("web/web1"), Ok(("web".to_owned(), "web1".to_owned())));
        for bad in ["web", "/web1", "web/", ""] {
            assert!(pool_backend(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_url_prefers_flag_then_config_then_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        let service = "[[service]]\nname = \"w\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"tcp\"\npool = \"p\"\n\
                       [[pool]]\nname = \"p\"\n[[pool.backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\n";
        std::fs::write(&path, format!("[admin]\nlisten = \"0.0.0.0:9911\"\n{service}")).expect("write");
        assert_eq!(admin_url(Some("127.0.0.2:1"), Some(&path)).expect("url").as_str(), "http://127.0.0.2:1/");
        assert_eq!(admin_url(None, Some(&path)).expect("url").as_str(), "http://127.0.0.1:9911/");
        assert_eq!(admin_url(None, None).expect("url").as_str(), "http://127.0.0.1:9900/");
        std::fs::write(&path, service).expect("write");
        assert_eq!(
            admin_url(None, Some(&path)).expect("url").as_str(),
            "http://127.0.0.1:9900/",
            "no [admin]"
        );
        std::fs::write(&path, "[admin]\nlisten = 5\n").expect("write");
        let e = admin_url(None, Some(&path)).expect_err("invalid config");
        assert!(e.to_string().contains("error(s)"), "{e}");
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_names() {
        let api = Api { base: Url::parse("http://127.0.0.1:9/lb/").expect("url"), client: Client::new() };
        assert_eq!(
            api.url(&["pools", "a b", "backends", "x/y", "state"]).as_str(),
            "http://127.0.0.1:9/lb/api/v1/pools/a%20b/backends/x%2Fy/state"
        );
    }

    #[test]
    fn ages_read_like_durations() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(61_000), "1m01s");
        assert_eq!(age(3_725_000), "1h02m");
    }

    #[test]
    fn tokens_skip_blanks_and_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "\n# ops\n  s3cret  \nother\n").expect("write");
        assert_eq!(read_token(&path).expect("token"), "s3cret");
        std::fs::write(&path, "# nothing\n").expect("write");
        assert!(read_token(&path).is_err());
    }
}
