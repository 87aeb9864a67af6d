//! The dashboard, black-box, in a real browser: Debian's headless Chromium
//! driven over WebDriver (chromedriver + fantoccini) against a real Fulcrum
//! and real backends. The page must show a backend going down and a drain
//! taking effect, and the API must agree with what it shows.
//!
//! Needs `chromium` and `chromedriver` on the PATH: `scripts/test.sh`
//! installs them (Debian packages `chromium` and `chromium-driver`). Without
//! them this test fails and says so; it never skips.
//!
//! `FULCRUM_SCREENSHOT=1` also writes the page as it looks at the end to
//! `docs/dashboard.png`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, Agent, Backend, Fulcrum};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long anything the page should show may take to show (the page
/// refreshes every 2 s; a tcp check at 100 ms takes a dead backend down in
/// well under a second).
const WAIT: Duration = Duration::from_secs(20);

/// Flags Chromium needs on this kind of machine: as root (no sandbox), no
/// GPU, and none of its own network traffic (the machine has no internet and
/// refuses those connections, many at a time).
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// `name` on the PATH, or a failure that tells how to get it.
fn required_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: the dashboard test drives Debian's headless Chromium. \
             Run scripts/test.sh, which installs chromium and chromium-driver \
             (or: apt-get install -y chromium chromium-driver)"
        )
    })
}

/// A chromedriver process on a free loopback port, killed (by its own pid)
/// when dropped.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let program = required_program("chromedriver");
        let port = common::free_addr().port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let mut driver = Driver { child, port, log };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start ({status}); log:\n{}", driver.log());
            }
            assert!(start.elapsed() < WAIT, "chromedriver did not listen on {port} within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SIGTERM first: chromedriver then ends the browsers it started.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session in headless Chromium with a fresh profile in `profile`.
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let chromium = required_program("chromium");
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push("--window-size=1440,1000".to_owned());
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let serde_json::Value::Object(caps) = caps else { unreachable!("a JSON object") };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("no browser session: {e}; chromedriver log:\n{}", driver.log()))
}

/// The trimmed text of the first element matching `css`, `None` when there is none.
async fn text(client: &Client, css: &str) -> Option<String> {
    let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;";
    match client.execute(script, vec![json!(css)]).await {
        Ok(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Polls `probe` until it returns `Ok`, for at most `WAIT`; fails with
/// `what` and the last thing `probe` saw.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) if start.elapsed() > WAIT => panic!("{what}: not within {WAIT:?}; last seen: {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn api_pools(admin: SocketAddr) -> Value {
    let url = format!("http://{admin}/api/v1/pools");
    reqwest::get(&url).await.expect("GET /api/v1/pools").json().await.expect("pools JSON")
}

fn backend_of<'a>(pools: &'a Value, pool: &str, backend: &str) -> &'a Value {
    pools
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["backends"].as_array())
        .and_then(|bs| bs.iter().find(|b| b["name"] == backend))
        .unwrap_or_else(|| panic!("no backend {pool}/{backend} in {pools}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_backend_going_down_and_a_drain_taking_effect() {
    let started = Instant::now();
    // Fail before starting anything when the browser is missing.
    required_program("chromium");
    required_program("chromedriver");

    let web1 = Backend::start("web1");
    let mut web2 = Backend::start("web2");
    let web3 = Backend::start("web3");
    // web1's host runs a load agent, so the load column has a report to show.
    let agent = Agent::start(&[]);
    // A fast tcp check, so a dead backend is down in a few hundred ms; a
    // SNAT pool on addresses no other test uses, for the SNAT panel.
    let pool = "algorithm = \"round_robin\"\nsnat = \"to-servers\"\n\
                [pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
    // Mutating calls need a token: the page must send the one the operator types.
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, "# operators\ndashboard-secret\n").expect("write the token file");
    let mut cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n{}\n\
         [[snat_pool]]\nname = \"to-servers\"\nfirst_ip = \"127.0.0.31\"\nlast_ip = \"127.0.0.34\"\n\
         netmask = \"255.0.0.0\"\nports = \"47000-47127\"\nblock_size = 16\ninitial_blocks = 2\nmax_blocks = 8\n",
        tokens.display(),
        config(
            "http",
            &[("web1", web1.addr, 2), ("web2", web2.addr, 1), ("web3", web3.addr, 1)],
            "[service.limits]\nmax_connections = 100",
            pool
        )
    );
    cfg = cfg.replacen("weight = 2\n", &format!("weight = 2\nagent = \"{}\"\n", agent.addr), 1);
    let f = Fulcrum::start(&cfg, 2);
    let admin = *f.addrs.last().expect("the admin address");

    // Some traffic, and a few clients that stay connected, so the counters
    // and the session table have something to show.
    for _ in 0..24 {
        let out = common::raw(f.addr(), b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(f.addr()).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n").expect("write");
        let _ = common::read_response(&mut s);
        idle.push(s);
    }

    let driver = Driver::start(dir.path());
    let client = browser(&driver, &dir.path().join("profile")).await;

    let scenario = {
        let client = client.clone();
        async move {
            client.goto(&format!("http://{admin}/")).await.expect("load the dashboard");
            assert_eq!(client.title().await.expect("title"), format!("Fulcrum · {admin}"));

            // Every backend appears, up.
            for name in ["web1", "web2", "web3"] {
                let css = format!("#backend-web-{name} .health .badge");
                eventually(&format!("{name} shown up"), || async {
                    match text(&client, &css).await {
                        Some(t) if t == "up" => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await;
            }
            eventually("the counters shown", || async {
                match text(&client, "#backend-web-web1 .requests").await {
                    Some(t) if t != "0" && t != "—" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            eventually("the agent's report shown", || async {
                match text(&client, "#backend-web-web1 .load").await {
                    Some(t) if t.contains("CPU") && t.contains('%') => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            assert_eq!(
                text(&client, "#backend-web-web2 .load").await.as_deref(),
                Some("—"),
                "no agent, no load"
            );
            // The clients still connected hold source ports of the SNAT pool.
            eventually("SNAT usage shown", || async {
                match text(&client, "#snat-to-servers .allocated").await {
                    Some(t) if t.parse::<u32>().is_ok_and(|n| n >= 3) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            assert_eq!(text(&client, "#snat-to-servers .capacity").await.as_deref(), Some("128"));
            eventually("the live sessions shown", || async {
                match text(&client, "#sessions-total").await {
                    Some(t) if t == "3" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            assert_eq!(
                text(&client, "#service-web .connections").await.as_deref(),
                Some("3 / 100"),
                "the three clients still connected, against the limit"
            );

            // A backend dies: the page shows it down, with the reason.
            web2.proc.child.kill().expect("kill web2");
            web2.proc.child.wait().expect("reap web2");
            let health = eventually("web2 shown down", || async {
                match text(&client, "#backend-web-web2 .health").await {
                    Some(t) if t.starts_with("down") => Ok(t),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            let reason = text(&client, "#backend-web-web2 .health .reason").await.unwrap_or_default();
            assert!(!reason.is_empty(), "the reason is shown with the health: {health:?}");
            let row = client.find(Locator::Css("#backend-web-web2")).await.expect("web2 row");
            assert_eq!(row.attr("data-health").await.expect("attr").as_deref(), Some("down"));
            let reason_el = client.find(Locator::Css("#backend-web-web2 .reason")).await.expect("reason");
            assert!(
                reason_el.is_displayed().await.expect("displayed"),
                "the reason of a down backend is visible"
            );
            assert_eq!(text(&client, "#status").await.as_deref(), Some("degraded"));

            // Its neighbour is drained from the page. Without the token the
            // API refuses, the page says why, and nothing changes.
            // A row's buttons are off while its last action is answered; a
            // click on a disabled button would do nothing, so wait it out.
            let click_drain = || async {
                let button = eventually("web3's Drain button enabled", || async {
                    match client.find(Locator::Css("#backend-web-web3 button.drain")).await {
                        Ok(b) if b.is_enabled().await.unwrap_or(false) => Ok(b),
                        Ok(_) => Err("disabled".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .await;
                button.click().await.expect("click Drain");
            };
            click_drain().await;
            let refusal = eventually("the refusal shown", || async {
                match text(&client, "#action-status.error").await {
                    Some(t) if t.contains("401") => Ok(t),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            assert!(refusal.contains("API token"), "the refusal says where the token goes: {refusal}");
            assert_eq!(backend_of(&api_pools(admin).await, "web", "web3")["target"], "enabled");
            // With the token typed in, the drain takes effect; the page and the API agree.
            let field = client.find(Locator::Css("#token")).await.expect("the token field");
            field.send_keys("dashboard-secret").await.expect("type the token");
            click_drain().await;
            let shown = eventually("web3 shown draining", || async {
                match text(&client, "#backend-web-web3 .current").await {
                    Some(t) if t == "draining" || t == "drained" => Ok(t),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            assert_eq!(text(&client, "#backend-web-web3 .target").await.as_deref(), Some("drain"));
            let pools = api_pools(admin).await;
            let web3_api = backend_of(&pools, "web", "web3");
            assert_eq!(web3_api["target"], "drain", "{web3_api}");
            assert!(web3_api["current"] == "draining" || web3_api["current"] == "drained", "{web3_api}");
            assert_eq!(backend_of(&pools, "web", "web2")["health"], "down");
            assert_eq!(backend_of(&pools, "web", "web1")["current"], "enabled");
            let drain = client.find(Locator::Css("#backend-web-web3 button.drain")).await.expect("Drain");
            let enabled = drain.is_enabled().await.expect("enabled?");
            assert!(!enabled, "Drain is greyed out once the target is drain (shown: {shown})");
            eventually("the outcome of the click shown", || async {
                match text(&client, "#action-status:not(.error)").await {
                    Some(t) if t.contains("web/web3: target drain") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;

            if std::env::var("FULCRUM_SCREENSHOT").as_deref() == Ok("1") {
                // The window fitted to the page, so the picture has no empty tail.
                let fit = "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) \
                           + window.outerHeight - window.innerHeight;";
                let height = client.execute(fit, vec![]).await.expect("page height").as_u64().unwrap_or(1000);
                client.set_window_size(1440, height.clamp(400, 2000) as u32).await.expect("resize");
                let png = client.screenshot().await.expect("screenshot");
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
                std::fs::write(&path, png).expect("write docs/dashboard.png");
                eprintln!("wrote {}", path.display());
            }

            // The admin API goes away: the page says so and keeps the last data.
            let mut f = f;
            f.proc.child.kill().expect("kill fulcrum");
            f.proc.child.wait().expect("reap fulcrum");
            eventually("the unreachable banner", || async {
                match text(&client, "#api-error:not([hidden]) .title").await {
                    Some(t) if t == "Admin API unreachable" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            assert_eq!(text(&client, "#status").await.as_deref(), Some("unreachable"));
            assert_eq!(text(&client, "#backend-web-web2 .health .badge").await.as_deref(), Some("down"));
            assert_eq!(text(&client, "#backend-web-web3 .current").await.as_deref(), Some(shown.as_str()));
            assert_eq!(text(&client, "#sessions-total").await.as_deref(), Some("3"), "the last data is kept");
        }
    };
    // Run the scenario on its own task so that, pass or fail, the browser
    // session is closed before chromedriver is stopped.
    let outcome = tokio::spawn(scenario).await;
    let _ = client.close().await;
    drop(driver);
    if let Err(e) = outcome {
        if e.is_panic() {
            // Fulcrum's stderr is printed as its handle drops during the unwind.
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("scenario: {e}");
    }
    eprintln!("dashboard test took {:?}", started.elapsed());
}
