//! Persistence, black-box: a real client keeps to one backend by Fulcrum's
//! cookie (insert mode), by the application's own cookie (learn mode), by its
//! source address, or by a header's value; forged cookies count for nothing;
//! a sticky backend that goes down is replaced and a draining one keeps its
//! clients.
//!
//! Every pool here is `round_robin`, whose picks alternate deterministically
//! (one client at a time): a run of requests that all land on one backend is
//! persistence at work, not luck.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, Agent, Backend, Fulcrum};
use reqwest::cookie::{CookieStore, Jar};

const WAIT: Duration = Duration::from_secs(10);
const RR: &str = "algorithm = \"round_robin\"";
/// A fast active check: a killed backend is down within a few hundred ms.
/// (A loopback connect to a live listener is answered by the kernel, so a
/// busy machine does not fail it.)
const TCP_CHECK: &str =
    "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
/// Agents polled often, with room to answer on a busy machine: an agent that
/// does not answer in time counts as reporting `up`, which would end a drain.
const AGENT_POLL: &str = "[pool.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"";

// ---------------------------------------------------------------------------
// A client by hand: one request per connection, every header in view.

/// One response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header fields in order, names in lowercase.
    headers: Vec<(String, String)>,
    text: String,
}

impl Reply {
    fn parse(text: String) -> Reply {
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply { status, headers, text }
    }

    /// The `X-Backend` of a 200 response; panics with the response otherwise.
    fn backend(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.text);
        self.header("x-backend").unwrap_or_else(|| panic!("no X-Backend: {}", self.text)).to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == "set-cookie").map(|(_, v)| v.as_str()).collect()
    }

    /// The value of the cookie `name` that this response sets, if it does.
    fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            let pair = c.split(';').next()?;
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().to_owned())
        })
    }
}

/// `GET path` with `headers` on a new connection from `source` (an address
/// of 127/8 to bind first, or any), read to the close.
fn send(front: SocketAddr, source: Option<Ipv4Addr>, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = match source {
        None => TcpStream::connect(front).expect("connect"),
        Some(ip) => {
            // std cannot bind a socket before connecting it; socket2 can.
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            s.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into()).expect("bind the source address");
            s.connect_timeout(&front.into(), WAIT).expect("connect");
            s.into()
        }
    };
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    Reply::parse(String::from_utf8_lossy(&out).into_owned())
}

fn get(f: &Fulcrum, cookie: Option<&str>) -> Reply {
    match cookie {
        Some(c) => send(f.addr(), None, "/", &[("Cookie", c)]),
        None => send(f.addr(), None, "/", &[]),
    }
}

/// Whether `v` looks like a cookie id of insert mode: 16 lowercase hex digits.
fn is_id(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `[service.persistence]` table with `lines` in it.
fn persistence(lines: &str) -> String {
    format!("[service.persistence]\n{lines}")
}

/// Gives the backend at `backend` the load agent at `agent`.
fn with_agent(cfg: &str, backend: SocketAddr, agent: SocketAddr) -> String {
    let at = format!("address = \"{backend}\"\nweight = 1\n");
    assert!(cfg.contains(&at), "{cfg}");
    cfg.replacen(&at, &format!("{at}agent = \"{agent}\"\n"), 1)
}

/// An agent whose state is the file it returns the path of.
fn agent_with_state() -> (Agent, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::write(&state, "up\n").expect("write state");
    let agent = Agent::start(&["--state-file", state.to_str().expect("utf-8")]);
    (agent, dir, state)
}

// ---------------------------------------------------------------------------
// Insert mode.

#[tokio::test]
async fn insert_mode_sets_an_opaque_cookie_and_a_cookie_jar_keeps_the_client_on_its_backend() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cfg = config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &persistence("kind = \"cookie\""), RR);
    let f = Fulcrum::start(&cfg, 1);
    let url = reqwest::Url::parse(&f.url("/")).expect("url");
    let client = |jar: &Arc<Jar>| {
        reqwest::Client::builder().no_proxy().cookie_provider(jar.clone()).build().expect("client")
    };

    let jar1 = Arc::new(Jar::default());
    let c1 = client(&jar1);
    let r = c1.get(url.clone()).send().await.expect("request");
    assert_eq!(r.status(), 200);
    let first = r.headers()["x-backend"].to_str().expect("ascii").to_owned();
    let set: Vec<&str> =
        r.headers().get_all("set-cookie").iter().map(|v| v.to_str().expect("ascii")).collect();
    assert_eq!(set.len(), 1, "{set:?}");
    let id1 =
        set[0].strip_prefix("FULCRUM=").and_then(|s| s.split(';').next()).unwrap_or_default().to_owned();
    assert!(is_id(&id1), "an opaque id, not an address or a name: {set:?}");
    // The defaults: path "/", ttl 30m, HttpOnly, no SameSite.
    assert_eq!(set[0], format!("FULCRUM={id1}; Path=/; Max-Age=1800; HttpOnly"));
    let kept = jar1.cookies(&url).expect("the jar took the cookie");
    assert_eq!(kept.to_str().expect("ascii"), format!("FULCRUM={id1}"));

    for i in 0..20 {
        let r = c1.get(url.clone()).send().await.expect("request");
        assert_eq!(r.headers()["x-backend"], first.as_str(), "request {i} left the sticky backend");
        assert!(r.headers().get("set-cookie").is_none(), "a client with the right cookie gets no new one");
    }

    // Another client, with its own jar, is a new pick and gets its own cookie.
    let jar2 = Arc::new(Jar::default());
    let c2 = client(&jar2);
    let r = c2.get(url.clone()).send().await.expect("request");
    let second = r.headers()["x-backend"].to_str().expect("ascii").to_owned();
    assert_ne!(second, first, "round robin's next pick is the other backend");
    let kept = jar2.cookies(&url).expect("the second jar took a cookie");
    let id2 = kept.to_str().expect("ascii").strip_prefix("FULCRUM=").expect("FULCRUM").to_owned();
    assert!(is_id(&id2) && id2 != id1, "{id1} {id2}");
    for _ in 0..5 {
        let r = c2.get(url.clone()).send().await.expect("request");
        assert_eq!(r.headers()["x-backend"], second.as_str());
    }

    // Without a cookie, round robin alternates: the runs above were persistence.
    let names: Vec<String> = (0..4).map(|_| get(&f, None).backend()).collect();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "{names:?}");
    // And each cookie-less answer sets the id of the backend that gave it.
    let r = get(&f, None);
    let expected = if r.backend() == first { &id1 } else { &id2 };
    assert_eq!(r.cookie("FULCRUM").as_ref(), Some(expected));
}

#[test]
fn insert_mode_cookie_carries_the_configured_attributes() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let backends = [("a", a.addr, 1), ("b", b.addr, 1)];
    let custom = persistence(
        "kind = \"cookie\"\ncookie = \"LB\"\npath = \"/app\"\nttl = \"90s\"\nhttp_only = false\nsame_site = \"Strict\"",
    );
    let f = Fulcrum::start(&config("http", &backends, &custom, RR), 1);
    let r = send(f.addr(), None, "/app/page", &[]);
    let id = r.cookie("LB").unwrap_or_else(|| panic!("no LB cookie: {}", r.text));
    assert!(is_id(&id), "{id}");
    assert_eq!(r.set_cookies(), [format!("LB={id}; Path=/app; Max-Age=90; SameSite=Strict")]);
    // The configured name is the one read back.
    let back = send(f.addr(), None, "/app/page", &[("Cookie", &format!("LB={id}"))]);
    assert_eq!(back.backend(), r.backend());
    assert!(back.set_cookies().is_empty(), "{}", back.text);

    let lax = persistence("kind = \"cookie\"\nttl = \"2m\"\nsame_site = \"Lax\"");
    let f = Fulcrum::start(&config("http", &backends, &lax, RR), 1);
    let r = get(&f, None);
    let id = r.cookie("FULCRUM").expect("cookie");
    assert_eq!(r.set_cookies(), [format!("FULCRUM={id}; Path=/; Max-Age=120; HttpOnly; SameSite=Lax")]);
}

#[test]
fn the_cookie_id_names_the_backend_not_its_address_and_survives_a_restart() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cookie = persistence("kind = \"cookie\"");
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &cookie, RR), 1);
    let (ra, rb) = (get(&f, None), get(&f, None));
    assert_eq!((ra.backend().as_str(), rb.backend().as_str()), ("a", "b"));
    let (id_a, id_b) = (ra.cookie("FULCRUM").expect("id of a"), rb.cookie("FULCRUM").expect("id of b"));
    drop(f);

    // Another Fulcrum, the same names on swapped addresses: the first pick,
    // backend "a", now lives at b's address, and its id is unchanged.
    let swapped = config("http", &[("a", b.addr, 1), ("b", a.addr, 1)], &cookie, RR);
    let g = Fulcrum::start(&swapped, 1);
    let r = get(&g, None);
    assert_eq!(r.backend(), "b", "backend \"a\" of this config is the process named b");
    assert_eq!(r.cookie("FULCRUM"), Some(id_a.clone()), "the id depends on the names only");
    // A client's cookie from the first Fulcrum still names the same backend.
    for _ in 0..3 {
        let r = get(&g, Some(&format!("FULCRUM={id_b}")));
        assert_eq!(r.backend(), "a", "backend \"b\" of this config is the process named a");
        assert!(r.set_cookies().is_empty(), "{}", r.text);
    }
}

#[test]
fn a_forged_cookie_counts_as_no_cookie() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // A second pool with the same backend names: its ids are not the web pool's.
    let mut cfg = config(
        "http",
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        &format!(
            "[[service.route]]\npath_prefix = \"/other/\"\npool = \"other\"\n\n{}",
            persistence("kind = \"cookie\"")
        ),
        RR,
    );
    cfg.push_str(&format!(
        "\n[[pool]]\nname = \"other\"\n{RR}\n\n[[pool.backend]]\nname = \"a\"\naddress = \"{}\"\n\n[[pool.backend]]\nname = \"b\"\naddress = \"{}\"\n",
        a.addr, b.addr
    ));
    let f = Fulcrum::start(&cfg, 1);
    let mut ids = HashMap::new();
    for _ in 0..2 {
        let r = get(&f, None);
        ids.insert(r.backend(), r.cookie("FULCRUM").expect("cookie"));
    }
    let (id_a, id_b) = (ids["a"].clone(), ids["b"].clone());
    let other = send(f.addr(), None, "/other/x", &[]);
    assert_eq!(other.backend(), "a");
    let other_a = other.cookie("FULCRUM").expect("the other pool sets its cookie");
    assert!(is_id(&other_a) && other_a != id_a && other_a != id_b, "{other_a} {id_a} {id_b}");

    let forged = [
        "0123456789abcdef".to_owned(),
        "ffffffffffffffff".to_owned(),
        "garbage!".to_owned(),
        String::new(),
        id_a.to_uppercase(),
        format!("{id_a}0"),
        id_a[..15].to_owned(),
        other_a.clone(),
        a.addr.to_string(),
        "a".to_owned(),
    ];
    let mut seen = HashMap::<String, usize>::new();
    for value in &forged {
        let r = get(&f, Some(&format!("FULCRUM={value}")));
        let name = r.backend();
        let fresh = if name == "a" { id_a.clone() } else { id_b.clone() };
        // One cookie serves both pools: the other pool's genuine id is kept
        // beside this pool's fresh one; anything forged is dropped.
        let expected = if value == &other_a { format!("{other_a}.{fresh}") } else { fresh };
        assert_eq!(r.cookie("FULCRUM"), Some(expected), "cookie {value:?}: {}", r.text);
        *seen.entry(name).or_default() += 1;
    }
    // Normal picks: round robin went on alternating.
    assert_eq!((seen.get("a"), seen.get("b")), (Some(&5), Some(&5)), "{seen:?}");

    // The web pool's id means nothing to the other pool either, while the
    // other pool's own id sticks there.
    let r = send(f.addr(), None, "/other/x", &[("Cookie", &format!("FULCRUM={id_a}"))]);
    let fresh = r.cookie("FULCRUM").expect("a fresh cookie");
    assert!(fresh != id_a && fresh != id_b, "{}", r.text);
    for _ in 0..3 {
        let r = send(f.addr(), None, "/other/x", &[("Cookie", &format!("x=1; FULCRUM={other_a}; y=2"))]);
        assert_eq!(r.backend(), "a");
        assert!(r.set_cookies().is_empty(), "{}", r.text);
    }
}

#[tokio::test]
async fn a_client_of_two_pools_keeps_its_backend_in_each() {
    // examples/routing.toml's shape: one service, a route to pool "api",
    // cookie persistence. A browser that loads a page and then calls the
    // API must come back to the same page backend, and to the same API
    // backend: one cookie has to name a backend of each pool, since either
    // pool reads the other's id as forged.
    let (w1, w2) = (Backend::start("w1"), Backend::start("w2"));
    let (p1, p2) = (Backend::start("p1"), Backend::start("p2"));
    let service = format!(
        "[[service.route]]\npath_prefix = \"/api/\"\npool = \"api\"\n\n{}",
        persistence("kind = \"cookie\"")
    );
    let mut cfg = config("http", &[("w1", w1.addr, 1), ("w2", w2.addr, 1)], &service, RR);
    cfg.push_str(&format!(
        "\n[[pool]]\nname = \"api\"\n{RR}\n\n[[pool.backend]]\nname = \"p1\"\naddress = \"{}\"\n\n[[pool.backend]]\nname = \"p2\"\naddress = \"{}\"\n",
        p1.addr, p2.addr
    ));
    let f = Fulcrum::start(&cfg, 1);
    let client = reqwest::Client::builder().no_proxy().cookie_store(true).build().expect("client");
    let name = |r: &reqwest::Response| r.headers()["x-backend"].to_str().expect("ascii").to_owned();
    let page = name(&client.get(f.url("/")).send().await.expect("request"));
    let api = name(&client.get(f.url("/api/users")).send().await.expect("request"));
    let mut journey = Vec::new();
    for _ in 0..3 {
        journey.push(name(&client.get(f.url("/")).send().await.expect("request")));
        journey.push(name(&client.get(f.url("/api/users")).send().await.expect("request")));
    }
    let expected: Vec<String> = (0..3).flat_map(|_| [page.clone(), api.clone()]).collect();
    assert_eq!(journey, expected, "first page {page}, first api {api}");
}

#[tokio::test]
async fn a_sticky_backend_that_goes_down_is_replaced_and_the_cookie_follows() {
    let (mut a, b) = (Backend::start("a"), Backend::start("b"));
    let a_addr = a.addr;
    let cfg = config(
        "http",
        &[("a", a_addr, 1), ("b", b.addr, 1)],
        &persistence("kind = \"cookie\""),
        &format!("{RR}\n{TCP_CHECK}"),
    );
    let f = Fulcrum::start(&cfg, 1);
    let url = reqwest::Url::parse(&f.url("/")).expect("url");
    let jar = Arc::new(Jar::default());
    let client = reqwest::Client::builder().no_proxy().cookie_provider(jar.clone()).build().expect("client");
    let jar_id = || {
        let v = jar.cookies(&url).expect("a cookie in the jar");
        v.to_str().expect("ascii").strip_prefix("FULCRUM=").expect("FULCRUM").to_owned()
    };

    let r = client.get(url.clone()).send().await.expect("request");
    assert_eq!(r.headers()["x-backend"], "a");
    let id_a = jar_id();
    for _ in 0..3 {
        let r = client.get(url.clone()).send().await.expect("request");
        assert_eq!(r.headers()["x-backend"], "a");
    }

    a.proc.child.kill().expect("kill a");
    a.proc.child.wait().expect("reap a");
    f.proc.wait_log(&["backend is down", "backend=a"], WAIT);

    let r = client.get(url.clone()).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "b", "the sticky backend is down: another serves");
    let set = r.headers().get("set-cookie").expect("the cookie is replaced").to_str().expect("ascii");
    let id_b = jar_id();
    assert!(is_id(&id_b) && id_b != id_a, "{id_a} -> {id_b}");
    assert!(set.starts_with(&format!("FULCRUM={id_b};")), "{set}");
    for _ in 0..10 {
        let r = client.get(url.clone()).send().await.expect("request");
        assert_eq!(r.headers()["x-backend"], "b");
        assert!(r.headers().get("set-cookie").is_none());
    }
    // A client that still holds the old cookie is moved the same way.
    let r = get(&f, Some(&format!("FULCRUM={id_a}")));
    assert_eq!(r.backend(), "b");
    assert_eq!(r.cookie("FULCRUM"), Some(id_b.clone()));

    // a comes back: the moved client stays where its cookie now says.
    let _a = Backend::start_at(&a_addr.to_string(), "a");
    f.proc.wait_log(&["backend is up", "backend=a"], WAIT);
    assert_eq!(get(&f, None).backend(), "a", "a takes new clients again");
    for _ in 0..5 {
        let r = client.get(url.clone()).send().await.expect("request");
        assert_eq!(r.headers()["x-backend"], "b");
    }
}

#[test]
fn a_sticky_backend_found_dead_on_connect_is_replaced_at_once() {
    // No health check: the first sign of death is the failed connect, and
    // the retry's backend serves the client and takes over its cookie.
    let (mut a, b) = (Backend::start("a"), Backend::start("b"));
    let service = format!("retries = 1\n{}", persistence("kind = \"cookie\""));
    let cfg = config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &service, RR);
    let f = Fulcrum::start(&cfg, 1);
    let id_a = get(&f, None).cookie("FULCRUM").expect("cookie");
    let id_b = get(&f, None).cookie("FULCRUM").expect("cookie");
    a.proc.child.kill().expect("kill a");
    a.proc.child.wait().expect("reap a");
    let r = get(&f, Some(&format!("FULCRUM={id_a}")));
    assert_eq!(r.backend(), "b", "{}", r.text);
    assert_eq!(r.cookie("FULCRUM"), Some(id_b.clone()));
    let r = get(&f, Some(&format!("FULCRUM={id_b}")));
    assert_eq!(r.backend(), "b");
    assert!(r.set_cookies().is_empty(), "{}", r.text);
}

#[test]
fn a_draining_backend_keeps_its_sticky_clients_and_a_down_one_loses_them() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (agent_a, _dir_a, state_a) = agent_with_state();
    let (agent_b, _dir_b, _state_b) = agent_with_state();
    let mut cfg = config(
        "http",
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        &persistence("kind = \"cookie\""),
        &format!("{RR}\n{AGENT_POLL}"),
    );
    cfg = with_agent(&cfg, a.addr, agent_a.addr);
    cfg = with_agent(&cfg, b.addr, agent_b.addr);
    let f = Fulcrum::start(&cfg, 1);
    f.proc.wait_log(&["agent reachable", "backend=a"], WAIT);
    f.proc.wait_log(&["agent reachable", "backend=b"], WAIT);

    let ra = get(&f, None);
    assert_eq!(ra.backend(), "a");
    let id_a = ra.cookie("FULCRUM").expect("cookie");
    let id_b = get(&f, None).cookie("FULCRUM").expect("cookie");

    std::fs::write(&state_a, "drain\n").expect("write state");
    f.proc.wait_log(&["agent state changed", "backend=a", "Drain"], WAIT);
    for i in 0..10 {
        let r = get(&f, Some(&format!("FULCRUM={id_a}")));
        assert_eq!(r.backend(), "a", "request {i}: a draining backend keeps its sticky clients");
        assert!(r.set_cookies().is_empty(), "{}", r.text);
    }
    for i in 0..10 {
        let r = get(&f, None);
        assert_eq!(r.backend(), "b", "request {i}: a draining backend takes no new client");
        assert_eq!(r.cookie("FULCRUM"), Some(id_b.clone()));
    }
    let r = get(&f, Some("FULCRUM=0123456789abcdef"));
    assert_eq!(r.backend(), "b", "a forged cookie is no way into a draining backend");

    // Down is not drain: the sticky clients move, and their cookies with them.
    std::fs::write(&state_a, "down\n").expect("write state");
    f.proc.wait_log(&["agent state changed", "backend=a", "Down"], WAIT);
    let r = get(&f, Some(&format!("FULCRUM={id_a}")));
    assert_eq!(r.backend(), "b");
    assert_eq!(r.cookie("FULCRUM"), Some(id_b));
}

#[test]
fn a_disabled_backend_loses_its_sticky_clients() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cookie = persistence("kind = \"cookie\"");
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &cookie, RR), 1);
    let (id_a, id_b) =
        (get(&f, None).cookie("FULCRUM").expect("a"), get(&f, None).cookie("FULCRUM").expect("b"));
    drop(f);
    // The operator restarts with a disabled: ids are stable, so the clients
    // still hold a's, and are moved off it.
    let mut cfg = config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &cookie, RR);
    cfg = cfg.replacen("weight = 1\n", "weight = 1\nstate = \"disabled\"\n", 1);
    let f = Fulcrum::start(&cfg, 1);
    for _ in 0..3 {
        let r = get(&f, Some(&format!("FULCRUM={id_a}")));
        assert_eq!(r.backend(), "b");
        assert_eq!(r.cookie("FULCRUM"), Some(id_b.clone()));
    }
}

// ---------------------------------------------------------------------------
// Learn mode.

/// An application server that keeps sessions: a request without a
/// `JSESSIONID` cookie gets `Set-Cookie: JSESSIONID=NAME-N; Path=/;
/// HttpOnly` (N counts from 1); every answer has `X-Backend: NAME`.
/// Keep-alive, as Fulcrum reuses backend connections.
fn session_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let issued = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let issued = issued.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        seen.drain(..end + 4);
                        let has_session = head
                            .lines()
                            .filter_map(|l| l.strip_prefix("cookie:"))
                            .any(|v| v.split(';').any(|p| p.trim().starts_with("jsessionid=")));
                        let set = match has_session {
                            true => String::new(),
                            false => {
                                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                                format!("Set-Cookie: JSESSIONID={name}-{n}; Path=/; HttpOnly\r\n")
                            }
                        };
                        let reply =
                            format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\n{set}Content-Length: 0\r\n\r\n");
                        if s.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn learn() -> String {
    persistence("kind = \"cookie\"\nlearn = true\ncookie = \"JSESSIONID\"")
}

#[test]
fn learn_mode_keeps_a_client_on_the_backend_that_issued_its_session_cookie() {
    let (s1, s2) = (session_backend("s1"), session_backend("s2"));
    let f = Fulcrum::start(&config("http", &[("s1", s1, 1), ("s2", s2, 1)], &learn(), RR), 1);

    let r1 = get(&f, None);
    assert_eq!(r1.backend(), "s1");
    assert_eq!(
        r1.set_cookies(),
        ["JSESSIONID=s1-1; Path=/; HttpOnly"],
        "passed on as is, no cookie of Fulcrum's"
    );
    let r2 = get(&f, None);
    assert_eq!(r2.backend(), "s2");
    assert_eq!(r2.cookie("JSESSIONID").as_deref(), Some("s2-1"));

    for (session, backend) in [("s1-1", "s1"), ("s2-1", "s2")] {
        for i in 0..10 {
            let r = get(&f, Some(&format!("JSESSIONID={session}")));
            assert_eq!(r.backend(), backend, "request {i} with session {session}");
            assert!(r.set_cookies().is_empty(), "{}", r.text);
        }
    }
    let r = get(&f, Some("theme=dark; JSESSIONID=s2-1; lang=en"));
    assert_eq!(r.backend(), "s2", "the session cookie among others");

    // A session no backend issued is served by a normal pick, which round robin alternates.
    let names: Vec<String> = (0..4).map(|_| get(&f, Some("JSESSIONID=nobody-7")).backend()).collect();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "{names:?}");
}

#[test]
fn learn_mode_moves_the_session_of_a_down_backend_to_one_replacement() {
    let (s1, s2, s3) = (session_backend("s1"), session_backend("s2"), session_backend("s3"));
    let (agent, _dir, state) = agent_with_state();
    let mut cfg = config(
        "http",
        &[("s1", s1, 1), ("s2", s2, 1), ("s3", s3, 1)],
        &learn(),
        &format!("{RR}\n{AGENT_POLL}"),
    );
    cfg = with_agent(&cfg, s1, agent.addr);
    let f = Fulcrum::start(&cfg, 1);
    f.proc.wait_log(&["agent reachable", "backend=s1"], WAIT);
    let r = get(&f, None);
    assert_eq!(r.cookie("JSESSIONID").as_deref(), Some("s1-1"));

    std::fs::write(&state, "down\n").expect("write state");
    f.proc.wait_log(&["agent state changed", "backend=s1", "Down"], WAIT);
    let cookie = "JSESSIONID=s1-1";
    let moved_to = get(&f, Some(cookie)).backend();
    assert_ne!(moved_to, "s1");
    // The table follows the client to its new backend, rather than leaving
    // round robin to scatter its requests over s2 and s3.
    let names: Vec<String> = (0..6).map(|_| get(&f, Some(cookie)).backend()).collect();
    assert!(names.iter().all(|n| *n == moved_to), "moved to {moved_to}, then {names:?}");
}

// ---------------------------------------------------------------------------
// Source address.

const DOT2: Option<Ipv4Addr> = Some(Ipv4Addr::new(127, 0, 0, 2));
const DOT3: Option<Ipv4Addr> = Some(Ipv4Addr::new(127, 0, 0, 3));

fn from(f: &Fulcrum, source: Option<Ipv4Addr>) -> String {
    send(f.addr(), source, "/", &[]).backend()
}

#[test]
fn source_ip_keeps_each_client_address_on_one_backend() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let backends = [("a", a.addr, 1), ("b", b.addr, 1)];
    let f = Fulcrum::start(&config("http", &backends, &persistence("kind = \"source_ip\""), RR), 1);
    let first2 = from(&f, DOT2);
    let first3 = from(&f, DOT3);
    assert_ne!(first2, first3, "two addresses, two picks of round robin");
    for _ in 0..10 {
        assert_eq!(from(&f, DOT2), first2);
        assert_eq!(from(&f, DOT3), first3);
    }

    // With mask = 24 the whole of 127.0.0.0/24 is one client.
    let masked = persistence("kind = \"source_ip\"\nmask = 24");
    let f = Fulcrum::start(&config("http", &backends, &masked, RR), 1);
    let first = from(&f, DOT2);
    for _ in 0..10 {
        assert_eq!(from(&f, DOT3), first);
        assert_eq!(from(&f, DOT2), first);
        assert_eq!(from(&f, None), first);
    }
}

#[test]
fn source_ip_keeps_the_clients_of_a_draining_backend() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (agent, _dir, state) = agent_with_state();
    let mut cfg = config(
        "http",
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        &persistence("kind = \"source_ip\""),
        &format!("{RR}\n{AGENT_POLL}"),
    );
    cfg = with_agent(&cfg, a.addr, agent.addr);
    let f = Fulcrum::start(&cfg, 1);
    f.proc.wait_log(&["agent reachable", "backend=a"], WAIT);
    assert_eq!(from(&f, DOT2), "a");
    std::fs::write(&state, "drain\n").expect("write state");
    f.proc.wait_log(&["agent state changed", "backend=a", "Drain"], WAIT);
    for _ in 0..5 {
        assert_eq!(from(&f, DOT2), "a", "a known client stays on its draining backend");
        assert_eq!(from(&f, DOT3), "b", "a new client does not go there");
    }
}

#[test]
fn source_ip_moves_a_client_off_a_down_backend_to_one_replacement() {
    let (mut a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let cfg = config(
        "http",
        &[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)],
        &persistence("kind = \"source_ip\""),
        &format!("{RR}\n{TCP_CHECK}"),
    );
    let f = Fulcrum::start(&cfg, 1);
    assert_eq!(from(&f, DOT2), "a");
    a.proc.child.kill().expect("kill a");
    a.proc.child.wait().expect("reap a");
    f.proc.wait_log(&["backend is down", "backend=a"], WAIT);
    let moved_to = from(&f, DOT2);
    assert_ne!(moved_to, "a");
    // The affinity table now names the replacement: round robin does not
    // scatter the client over b and c.
    let names: Vec<String> = (0..6).map(|_| from(&f, DOT2)).collect();
    assert!(names.iter().all(|n| *n == moved_to), "moved to {moved_to}, then {names:?}");
}

#[test]
fn source_ip_keys_on_the_client_a_trusted_proxy_names() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let service = format!(
        "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}",
        persistence("kind = \"source_ip\"")
    );
    let f = Fulcrum::start(&config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], &service, RR), 1);
    // Every connection comes from 127.0.0.1, the upstream load balancer; the
    // client is the one its PROXY header names.
    let via = |client: &str| {
        let request = format!(
            "PROXY TCP4 {client} 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        );
        Reply::parse(common::raw(f.addr(), request.as_bytes())).backend()
    };
    let (first, second) = (via("203.0.113.7"), via("198.51.100.9"));
    assert_ne!(first, second);
    for _ in 0..5 {
        assert_eq!(via("203.0.113.7"), first);
        assert_eq!(via("198.51.100.9"), second);
    }
}

#[test]
fn source_ip_holds_in_tcp_mode_too() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cfg = config("tcp", &[("a", a.addr, 1), ("b", b.addr, 1)], &persistence("kind = \"source_ip\""), RR);
    let f = Fulcrum::start(&cfg, 1);
    let (first2, first3) = (from(&f, DOT2), from(&f, DOT3));
    assert_ne!(first2, first3);
    for _ in 0..5 {
        assert_eq!(from(&f, DOT2), first2);
        assert_eq!(from(&f, DOT3), first3);
    }
}

// ---------------------------------------------------------------------------
// Header.

fn as_user(f: &Fulcrum, user: &str) -> String {
    send(f.addr(), None, "/", &[("X-User", user)]).backend()
}

#[test]
fn header_persistence_hashes_each_user_to_one_backend_and_spreads_users() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cfg = config(
        "http",
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        &persistence("kind = \"header\"\nheader = \"X-User\""),
        RR,
    );
    let f = Fulcrum::start(&cfg, 1);
    let alice = as_user(&f, "alice");
    for _ in 0..10 {
        assert_eq!(as_user(&f, "alice"), alice);
    }
    let lower = send(f.addr(), None, "/", &[("x-user", "alice")]).backend();
    assert_eq!(lower, alice, "header names are case-insensitive");

    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    let placed: Vec<String> = users.iter().map(|u| as_user(&f, u)).collect();
    let on_a = placed.iter().filter(|n| *n == "a").count();
    assert!((1..50).contains(&on_a), "of 50 users, {on_a} on a and {} on b", 50 - on_a);
    let again: Vec<String> = users.iter().map(|u| as_user(&f, u)).collect();
    assert_eq!(placed, again, "every user keeps its backend");

    // Without the header, the pool's own algorithm picks: round robin alternates.
    let names: Vec<String> = (0..4).map(|_| get(&f, None).backend()).collect();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "{names:?}");

    // Another Fulcrum with the same pool hashes every user alike.
    drop(f);
    let g = Fulcrum::start(&cfg, 1);
    let elsewhere: Vec<String> = users.iter().map(|u| as_user(&g, u)).collect();
    assert_eq!(placed, elsewhere);
}
